"""GRPO as pure tensor functions: group advantages and the clipped surrogate loss with its KL term.

No model, trainer, optimizer or kernel lives here; :mod:`stonklib.grpo.trainer` calls these pieces in
the order of the paper, with per-token log-probs from :mod:`stonklib.update`.

The variant
-----------
* **Advantages** (DeepSeekMath, arXiv 2402.03300, §4.1.2, outcome supervision): each prompt owns a
  group of ``G`` contiguous completions and ``A_i = (r_i - mean(r)) / (std(r) + eps)`` with torch's
  unbiased std and ``eps = 1e-4`` (as TRL). ``scale="none"`` keeps only the mean baseline, as
  Dr. GRPO (arXiv 2503.20783) recommends, because dividing by the std over-weights groups that
  are nearly all right or all wrong. ``scale="batch"`` keeps the group mean but divides by the std
  of the whole batch (TRL's ``scale_rewards="batch"``; "A Tricks-or-Traps" / Lite PPO, arXiv 2508.08221),
  so a nearly-solved group is not blown up to unit scale.
* **Ratio and clipping** (PPO, token level): ``rho = exp(logp - old_logp)`` and the surrogate
  ``min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)``. ``epsilon_high`` is DAPO's
  "clip-higher" (arXiv 2503.14476); by default it equals ``epsilon`` (symmetric PPO clip).
  ``importance_sampling_level="sequence"`` is GSPO (arXiv 2507.18071): one ratio per completion,
  ``s_i = exp(mean_t(logp - old_logp))`` (length-normalised), clipped as a whole and shared by its
  tokens; TRL's ``importance_sampling_level="sequence"``.
* **The sampler/trainer gap** (``sampler_logp``): the log-probs the sampler drew its tokens with
  (bf16 merged weights) are not exactly the trainer's ``old_logp`` (dequantised NF4, LoRA unmerged).
  Given them, the stats report ``|old_logp - sampler_logp|`` and ``tis_cap`` multiplies the policy
  term by the truncated importance weight ``min(exp(old_logp - sampler_logp), tis_cap)``, detached
  (truncated importance sampling; TRL's ``vllm_importance_sampling_correction`` in "token_truncate"
  mode, verl's rollout correction).
* **KL penalty**: Schulman's unbiased, always-positive **k3** estimator of KL(pi || pi_ref),
  ``exp(ref - logp) - (ref - logp) - 1``, added *to the loss* per token with weight ``beta``
  (as in DeepSeekMath), not folded into the reward. ``beta == 0`` drops it entirely.
  Note what its gradient estimates: on-policy, ``grad k3 = (1 - pi_ref/pi) grad log pi``, whose
  expectation is the gradient of the *forward* KL(pi_ref || pi). ``kl_bias_correction=True``
  multiplies k3 by the ratio rho (DeepSeek-V3.2, arXiv 2512.02556; TRL's default
  ``use_bias_correction_kl``); the gradient becomes ``(log pi - log pi_ref) grad log pi``, the
  unbiased score-function gradient of the reverse KL(pi || pi_ref). Off by default, as in DeepSeekMath.
* **Aggregation** (``loss_type``), ``L_t`` the per-token loss and ``m_t`` the completion mask:
    - ``"grpo"``: mean over each sequence's tokens, then mean over sequences (DeepSeekMath eq. 3).
      Long completions get a smaller per-token weight: the length bias Dr. GRPO points out.
    - ``"dr_grpo"``: ``sum(L*m) / (B * T)`` with a constant ``T`` (Dr. GRPO); ``T`` is
      ``mask.shape[1]`` unless ``max_completion_length`` is given (pass it to keep the scale
      constant across batches, as TRL does).
    - ``"dapo"``: token-level mean ``sum(L*m) / sum(m)`` (DAPO); ``num_items`` overrides the
      denominator with a global token count when a batch is split across ranks or micro-batches.

Departures from the textbook: with one optimisation pass per batch (mu = 1), ``old_logp`` equals
``logp.detach()``, so rho == 1, nothing is clipped and the surrogate's gradient is plain
REINFORCE with the group baseline; the clip only matters for mu > 1 or stale samples.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from stonklib.config import ADVANTAGE_SCALES, IS_LEVELS, LOSS_TYPES

LossType = Literal["grpo", "dr_grpo", "dapo"]


# --------------------------------------------------------------------------- advantages
def group_advantages(rewards: Tensor, group_size: int, scale: str = "group", eps: float = 1e-4,
                     batch_std: float | None = None) -> Tensor:
    """Group-relative advantages, shape ``[B*G]``, for rewards laid out as B groups of G contiguous entries.

    ``scale="group"``: ``(r - group_mean) / (group_std + eps)`` (unbiased std); ``scale="batch"``:
    ``(r - group_mean) / (batch_std + eps)``, the unbiased std of every reward of the batch (pass
    ``batch_std`` when the batch is spread over ranks, see :func:`batch_reward_std`); ``scale="none"``:
    ``r - group_mean`` (Dr. GRPO). A group whose rewards are all equal gets advantages of zero
    (up to float rounding of the mean), never NaN.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B*G] (groups contiguous), got shape {tuple(rewards.shape)}; flatten it.")
    if group_size < 2:
        raise ValueError(f"group_size={group_size}: a group needs at least 2 completions for a baseline and a std.")
    if rewards.numel() == 0 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into whole groups of {group_size}; "
                         "pass num_prompts * group_size rewards, each prompt's completions contiguous.")
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"scale={scale!r}: use 'group' (divide by the group std), 'batch' (by the batch std) "
                         "or 'none' (Dr. GRPO).")
    grouped = rewards.view(-1, group_size)
    if not grouped.is_floating_point():
        grouped = grouped.float()
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        std = grouped.std() if batch_std is None else torch.as_tensor(batch_std, dtype=grouped.dtype)
        centred = centred / (std + eps)
    return centred.reshape(-1)


def batch_reward_std(count: float, total: float, total_sq: float) -> float:
    """The unbiased std of a batch's rewards from their count, sum and sum of squares (summed over ranks)."""
    if count < 2:
        return 0.0
    mean = total / count
    return math.sqrt(max(total_sq - count * mean * mean, 0.0) / (count - 1))


# --------------------------------------------------------------------------- loss
def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    beta: float = 0.05,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "grpo",
    *,
    max_completion_length: int | None = None,
    num_items: float | None = None,
    kl_bias_correction: bool = False,
    entropy_coef: float = 0.0,
    importance_sampling_level: str = "token",
    sampler_logp: Tensor | None = None,
    tis_cap: float | None = None,
    stats_as_tensors: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """The clipped GRPO loss (to minimise) and detached stats; see the module docstring for the variant.

    Shapes: ``logp``, ``old_logp``, ``ref_logp``, ``mask`` are ``[B, T]``, ``advantages`` is ``[B]``.
    Gradient flows through ``logp`` only; ``old_logp`` and ``ref_logp`` are detached. Positions with
    ``mask == 0`` may hold anything (even inf/NaN): they are zeroed before any arithmetic, so they
    neither change the loss nor receive gradient. ``ref_logp`` may be ``None`` when ``beta == 0``.

    ``max_completion_length`` sets ``T`` for ``"dr_grpo"`` (default ``mask.shape[1]``);
    ``num_items`` sets the token count for ``"dapo"`` (default ``mask.sum()``).
    ``kl_bias_correction`` multiplies the k3 term by the (differentiable) ratio, TRL's
    ``use_bias_correction_kl`` (its default); see the module docstring.
    ``entropy_coef`` adds an entropy bonus: minus ``entropy_coef`` times a surrogate whose gradient is the
    score-function estimate of the policy entropy's gradient from the sampled tokens,
    ``-(log pi - b) grad log pi`` with ``b`` the batch's mean log-prob (a baseline, for variance); its value
    is not the entropy, which ``stats["entropy"]`` reports.
    ``importance_sampling_level="sequence"`` is GSPO's length-normalised sequence ratio (module docstring).
    ``sampler_logp`` (``[B, T]``, the sampler's log-probs of the same tokens) adds the gap stats; with it,
    ``tis_cap`` applies truncated importance sampling to the policy term (module docstring).

    ``stats`` (python floats; token-weighted means over the masked tokens, as TRL logs them):
    - ``kl``: the KL term as it enters the loss; present whenever ``ref_logp`` is given, even at ``beta == 0``.
    - ``clip_fraction``: share of tokens whose clipped branch is strictly active, i.e. the surrogate's
      gradient is zero there: ``rho < 1 - eps_low and A < 0`` or ``rho > 1 + eps_high and A > 0``
      (TRL's ``clip_ratio/region_mean``); its two parts ``clip_low_fraction``, ``clip_high_fraction``.
    - ``ratio_mean``, and ``num_tokens`` (the masked token count). At the sequence level the clip
      fractions and ``ratio_mean`` are means over completions (one ratio each), as TRL logs them.
    - with ``sampler_logp``: ``sampler/logp_gap`` and ``sampler/logp_gap_max``, the mean and max of
      ``|old_logp - sampler_logp|`` over the masked tokens; with ``tis_cap`` also ``sampler/tis_weight``
      (the mean weight) and ``sampler/tis_capped_fraction`` (tokens whose weight the cap cut).
    - ``entropy``: the mean negative log-prob of the sampled tokens, an unbiased estimate of the sampling
      distribution's per-token entropy (on-policy; nothing extra is computed).

    ``stats_as_tensors=True`` returns them as 0-dim float32 tensors instead, so the caller can run the
    backward pass before the one device sync that reading them costs (the trainer does).
    """
    _check_loss_inputs(logp, old_logp, ref_logp, advantages, mask, beta, epsilon, epsilon_high, loss_type)
    _check_sampler_inputs(logp, importance_sampling_level, sampler_logp, tis_cap)
    keep = mask.bool()
    weights = keep.to(logp.dtype)
    logp = logp.masked_fill(~keep, 0.0)  # padding may be garbage: zero it before exp()
    old_logp = old_logp.detach().masked_fill(~keep, 0.0)
    adv = advantages.detach().to(logp.dtype).unsqueeze(1)
    eps_high = epsilon if epsilon_high is None else epsilon_high

    log_ratio = logp - old_logp
    if importance_sampling_level == "sequence":  # GSPO: one length-normalised ratio per completion, [B, 1]
        log_ratio = (log_ratio * weights).sum(-1, keepdim=True) / weights.sum(-1, keepdim=True).clamp(min=1.0)
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + eps_high)
    per_token = -torch.minimum(ratio * adv, clipped * adv)
    gap = None
    if sampler_logp is not None:
        gap = old_logp - sampler_logp.detach().masked_fill(~keep, 0.0)
        if tis_cap is not None:  # truncated importance sampling: the sampler drew the tokens, not pi_old
            per_token = per_token * torch.exp(gap).clamp(max=tis_cap)
    kl = None
    if ref_logp is not None:  # with beta == 0 only for the stat: no graph, nothing in the loss
        with torch.set_grad_enabled(torch.is_grad_enabled() and beta != 0):
            kl = k3_kl(logp, ref_logp.detach().masked_fill(~keep, 0.0))
            if kl_bias_correction:
                kl = kl * ratio
    if beta != 0:
        per_token = per_token + beta * kl
    per_token = per_token.expand_as(logp)  # a sequence-level ratio without a KL term is still [B, 1]
    if entropy_coef != 0:
        lp = logp.detach()
        baseline = (lp * weights).sum() / weights.sum().clamp(min=1.0)
        per_token = per_token + entropy_coef * (lp - baseline) * logp  # minus the entropy surrogate's gradient

    loss = _aggregate(per_token, weights, loss_type, max_completion_length, num_items)
    stats = _loss_stats(ratio.detach(), adv, kl, -logp.detach(), weights, epsilon, eps_high)
    if gap is not None:
        stats |= _gap_stats(gap, weights, tis_cap)
    if not stats_as_tensors:
        stats = dict(zip(stats, torch.stack(list(stats.values())).tolist(), strict=True))  # one device sync
    return loss, stats


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) from samples of pi: ``exp(d) - d - 1``, ``d = ref - logp`` (>= 0)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def _aggregate(per_token: Tensor, weights: Tensor, loss_type: str,
               max_completion_length: int | None, num_items: float | None) -> Tensor:
    masked = per_token * weights
    if loss_type == "grpo":
        return (masked.sum(-1) / weights.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "dr_grpo":
        length = weights.shape[1] if max_completion_length is None else max_completion_length
        return masked.sum() / (weights.shape[0] * length)
    count = weights.sum() if num_items is None else torch.as_tensor(num_items, dtype=weights.dtype, device=weights.device)
    return masked.sum() / count.clamp(min=1.0)


@torch.no_grad()
def _loss_stats(ratio: Tensor, adv: Tensor, kl: Tensor | None, neg_logp: Tensor, weights: Tensor,
                eps_low: float, eps_high: float) -> dict[str, Tensor]:
    is_low = (ratio < 1.0 - eps_low) & (adv < 0)
    is_high = (ratio > 1.0 + eps_high) & (adv > 0)
    ratio_parts = {
        "clip_fraction": (is_low | is_high).to(weights.dtype),
        "clip_low_fraction": is_low.to(weights.dtype),
        "clip_high_fraction": is_high.to(weights.dtype),
        "ratio_mean": ratio,
    }
    parts = {"entropy": neg_logp} | ({"kl": kl.detach()} if kl is not None else {})
    count = weights.sum()

    def mean(x: Tensor) -> Tensor:
        if x.shape[1] == 1:  # one value per completion (sequence level): every completion counts once, as in TRL
            return x.float().mean()
        return ((x * weights).sum() / count.clamp(min=1.0)).float()

    out = {k: mean(v) for k, v in ratio_parts.items()}
    out |= {k: mean(v.expand_as(weights)) for k, v in parts.items()}
    return out | {"num_tokens": count.float()}


@torch.no_grad()
def _gap_stats(gap: Tensor, weights: Tensor, tis_cap: float | None) -> dict[str, Tensor]:
    count = weights.sum().clamp(min=1.0)
    size = gap.abs() * weights
    out = {"sampler/logp_gap": (size.sum() / count).float(), "sampler/logp_gap_max": size.max().float()}
    if tis_cap is not None:
        w = torch.exp(gap).clamp(max=tis_cap)
        out["sampler/tis_weight"] = ((w * weights).sum() / count).float()
        out["sampler/tis_capped_fraction"] = (((gap.exp() > tis_cap) * weights).sum() / count).float()
    return out


def _check_sampler_inputs(logp: Tensor, level: str, sampler_logp: Tensor | None, tis_cap: float | None) -> None:
    if level not in IS_LEVELS:
        raise ValueError(f"importance_sampling_level={level!r}: use token (PPO/GRPO) or sequence (GSPO).")
    if sampler_logp is not None and sampler_logp.shape != logp.shape:
        raise ValueError(f"sampler_logp has shape {tuple(sampler_logp.shape)} but logp has {tuple(logp.shape)}; "
                         "they must match.")
    if tis_cap is not None and (sampler_logp is None or not tis_cap > 0):
        raise ValueError(f"tis_cap={tis_cap} needs sampler_logp (the sampler's log-probs) and a cap > 0.")


def _check_loss_inputs(logp: Tensor, old_logp: Tensor, ref_logp: Tensor | None, advantages: Tensor,
                       mask: Tensor, beta: float, epsilon: float, epsilon_high: float | None,
                       loss_type: str) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}: use one of {', '.join(LOSS_TYPES)}.")
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, T] per-token log-probs, got shape {tuple(logp.shape)}.")
    named = {"old_logp": old_logp, "mask": mask} | ({"ref_logp": ref_logp} if ref_logp is not None else {})
    for name, t in named.items():
        if t.shape != logp.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but logp has {tuple(logp.shape)}; they must match.")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be [B]={tuple(logp.shape[:1])} (one per completion), got {tuple(advantages.shape)}.")
    if beta != 0 and ref_logp is None:
        raise ValueError(f"beta={beta} needs ref_logp for the KL penalty; pass it, or set beta=0 to drop the KL term.")
    if beta < 0 or epsilon < 0 or (epsilon_high is not None and epsilon_high < 0):
        raise ValueError(f"beta={beta}, epsilon={epsilon}, epsilon_high={epsilon_high}: all must be >= 0.")
