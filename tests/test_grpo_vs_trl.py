"""Our GRPO loss against TRL 1.16's own code, run on identical log-probs, advantages and masks.

How TRL is driven (no reimplementation of its loss here):
- ``GRPOTrainer._compute_loss`` is called unbound on a stand-in ``self`` that carries the attributes
  ``GRPOTrainer.__init__`` copies from a real ``GRPOConfig`` (so TRL's own defaults apply, e.g.
  ``use_bias_correction_kl=True``, ``delta=None``), plus a pass-through accelerator.
- TRL's real ``_get_per_token_logps_and_entropies`` runs too, bound to the stand-in; the fake model
  answers its ``fused_lm_head=True`` call with our chosen log-probs (prompt positions hold zeros).

What TRL does differently, and how each case lines up:
- "grpo": per-sequence mean then batch mean, like ours; TRL divides by the gradient-accumulation
  steps in train mode, set to 1 here.
- "dr_grpo": TRL divides by ``B * max_completion_length`` (a config constant), ours by
  ``B * mask.shape[1]`` unless ``max_completion_length`` is passed; both are exercised.
- "dapo": TRL divides by ``num_items_in_batch`` (masked tokens of the whole generation batch, all
  ranks) / num_processes * grad_accum / steps_per_generation; with one process, one micro-batch
  and one step per generation that is this batch's token count, our default. ``num_items`` covers the rest.
- KL: TRL 1.16 multiplies k3 by the ratio by default (``use_bias_correction_kl``); ours does when
  ``kl_bias_correction=True``. Both settings are compared, values and gradients.
- Stats: ours ``kl``, ``clip_fraction``, ``clip_low_fraction``, ``clip_high_fraction`` are TRL's
  ``kl``, ``clip_ratio/region_mean``, ``clip_ratio/low_mean``, ``clip_ratio/high_mean``.
"""

from __future__ import annotations

import contextlib
import types
from collections import defaultdict

import pytest
import torch

trl = pytest.importorskip("trl")
from trl import GRPOConfig  # noqa: E402
from trl.trainer.grpo_trainer import GRPOTrainer  # noqa: E402
from trl.trainer.utils import nanstd  # noqa: E402
from trl.trainer.utils import selective_log_softmax as trl_selective_log_softmax  # noqa: E402

from stonklib.grpo.loss import group_advantages, grpo_loss  # noqa: E402
from stonklib.update.head import selective_log_softmax  # noqa: E402

B, P, T = 4, 3, 6  # completions, prompt tokens, completion tokens


class PassThroughAccelerator:
    """One process: gather/reduce are the identity; what ``_compute_loss`` and its log-prob helper call."""

    num_processes = 1
    is_main_process = True  # read by TRL's profiling decorator
    sync_gradients = True

    def gather(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x

    def autocast(self):
        return contextlib.nullcontext()


class FakeModel:
    """Answers TRL's ``model(input_ids=..., labels=..., fused_lm_head=True)`` with fixed per-token log-probs."""

    training = True

    def __init__(self, completion_logp: torch.Tensor):
        self.completion_logp = completion_logp

    def __call__(self, input_ids, attention_mask, labels, fused_lm_head):
        assert fused_lm_head and input_ids.shape == (B, P + T)
        prompt = torch.zeros(B, P, dtype=self.completion_logp.dtype)
        return types.SimpleNamespace(log_probs=torch.cat([prompt, self.completion_logp], dim=1),
                                     entropy=torch.zeros(B, P + T))


def trl_stand_in(tmp_path, **config) -> types.SimpleNamespace:
    args = GRPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_train_batch_size=B,
                      num_generations=2, max_completion_length=T, steps_per_generation=1, **config)
    self = types.SimpleNamespace(  # the attributes GRPOTrainer.__init__ sets from args, as it sets them
        args=args, beta=args.beta, loss_type=args.loss_type, epsilon_low=args.epsilon,
        epsilon_high=args.epsilon_high if args.epsilon_high is not None else args.epsilon,
        importance_sampling_level=args.importance_sampling_level, max_completion_length=args.max_completion_length,
        top_entropy_quantile=args.top_entropy_quantile, off_policy_mask_threshold=args.off_policy_mask_threshold,
        use_vllm=args.use_vllm, vllm_importance_sampling_correction=args.vllm_importance_sampling_correction,
        _entropy_bonus_enabled=args.entropy_coef != 0.0 or args.use_adaptive_entropy, aux_loss_enabled=False,
        current_gradient_accumulation_steps=1, accelerator=PassThroughAccelerator(),
        model=types.SimpleNamespace(training=True), _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    self._get_per_token_logps_and_entropies = types.MethodType(GRPOTrainer._get_per_token_logps_and_entropies, self)
    return self


def make_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    old = -3 * torch.rand(B, T, generator=g)
    logp = old + 0.4 * torch.randn(B, T, generator=g)  # ratios from ~0.4 to ~2.5: both clip sides get hit
    ref = logp + 0.5 * torch.randn(B, T, generator=g)
    adv = torch.tensor([1.3, -0.7, 0.4, -1.6])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    return logp, old, ref, adv, mask


def run_trl(self, logp, old, ref, adv, mask):
    leaf = logp.clone().requires_grad_()
    inputs = {
        "prompt_ids": torch.ones(B, P, dtype=torch.long), "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": torch.ones(B, T, dtype=torch.long), "completion_mask": mask,
        "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),  # as _generate_and_score_completions computes it, one process
    }
    if old is None:
        del inputs["old_per_token_logps"]  # TRL's on-policy shortcut: old = per_token_logps.detach()
    loss = GRPOTrainer._compute_loss(self, FakeModel(leaf), inputs)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.item(), grad, {k: v[-1] for k, v in self._metrics["train"].items()}


def run_ours(logp, old, ref, adv, mask, **kwargs):
    leaf = logp.clone().requires_grad_()
    loss, stats = grpo_loss(leaf, leaf.detach() if old is None else old, ref, adv, mask, **kwargs)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.item(), grad, stats


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("epsilon_high", [None, 0.28])
@pytest.mark.parametrize("kl_bias_correction", [False, True])
def test_loss_grad_and_stats_match_trl(tmp_path, loss_type, beta, epsilon_high, kl_bias_correction):
    logp, old, ref, adv, mask = make_batch()
    self = trl_stand_in(tmp_path, loss_type=loss_type, beta=beta, epsilon=0.2, epsilon_high=epsilon_high,
                        use_bias_correction_kl=kl_bias_correction)
    trl_loss, trl_grad, trl_stats = run_trl(self, logp, old, ref, adv, mask)
    loss, grad, stats = run_ours(logp, old, ref, adv, mask, beta=beta, epsilon=0.2, epsilon_high=epsilon_high,
                                 loss_type=loss_type, kl_bias_correction=kl_bias_correction)
    assert loss == pytest.approx(trl_loss, rel=1e-6, abs=1e-7)
    torch.testing.assert_close(grad, trl_grad, rtol=1e-5, atol=1e-7)
    assert 0 < stats["clip_low_fraction"] and 0 < stats["clip_high_fraction"]  # the batch exercises both sides
    assert stats["clip_fraction"] == pytest.approx(trl_stats["clip_ratio/region_mean"])
    assert stats["clip_low_fraction"] == pytest.approx(trl_stats["clip_ratio/low_mean"])
    assert stats["clip_high_fraction"] == pytest.approx(trl_stats["clip_ratio/high_mean"])
    if beta != 0:  # TRL logs no KL when beta == 0
        assert stats["kl"] == pytest.approx(trl_stats["kl"], rel=1e-6)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_on_policy_shortcut_matches_trl(tmp_path, loss_type):
    # No old log-probs: TRL uses per_token_logps.detach() (mu = 1), as our trainer does.
    logp, _, ref, adv, mask = make_batch(seed=1)
    self = trl_stand_in(tmp_path, loss_type=loss_type, beta=0.04)  # TRL defaults otherwise (bias-corrected KL)
    trl_loss, trl_grad, trl_stats = run_trl(self, logp, None, ref, adv, mask)
    loss, grad, stats = run_ours(logp, None, ref, adv, mask, beta=0.04, loss_type=loss_type, kl_bias_correction=True)
    assert loss == pytest.approx(trl_loss, rel=1e-6, abs=1e-7)
    torch.testing.assert_close(grad, trl_grad, rtol=1e-5, atol=1e-7)
    assert stats["clip_fraction"] == trl_stats["clip_ratio/region_mean"] == 0.0


def test_dr_grpo_with_a_longer_max_completion_length(tmp_path):
    # TRL's constant is the config's max_completion_length even when the batch is padded shorter.
    logp, old, ref, adv, mask = make_batch(seed=2)
    self = trl_stand_in(tmp_path, loss_type="dr_grpo", beta=0.0)
    self.max_completion_length = 4 * T
    trl_loss, trl_grad, _ = run_trl(self, logp, old, ref, adv, mask)
    ours_default, _, _ = run_ours(logp, old, ref, adv, mask, beta=0.0, loss_type="dr_grpo")
    loss, grad, _ = run_ours(logp, old, ref, adv, mask, beta=0.0, loss_type="dr_grpo", max_completion_length=4 * T)
    assert loss == pytest.approx(trl_loss, rel=1e-6, abs=1e-7)
    assert ours_default == pytest.approx(4 * trl_loss, rel=1e-6)  # B*T vs B*4T
    torch.testing.assert_close(grad, trl_grad, rtol=1e-5, atol=1e-7)


def test_group_advantage_std_is_trls():
    # TRL computes advantages inline in _generate_and_score_completions (needs generation to drive), as
    # (r - group nanmean) / (nanstd(group) + 1e-4); its std helper is called here, so the Bessel convention is TRL's.
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, -1.0, 0.0, 3.0])
    grouped = rewards.view(-1, 4)
    expected = (grouped - grouped.mean(1, keepdim=True)) / (nanstd(grouped, dim=1).unsqueeze(1) + 1e-4)
    torch.testing.assert_close(group_advantages(rewards, 4), expected.reshape(-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_log_softmax_matches_trl(dtype):
    g = torch.Generator().manual_seed(3)
    logits = (4 * torch.randn(3, 7, 257, generator=g)).to(dtype)
    index = torch.randint(0, 257, (3, 7), generator=g)
    theirs = trl_selective_log_softmax(logits, index, temperature=0.8).double()
    ours = selective_log_softmax(logits, index, chunk_size=5, temperature=0.8).double()
    exact = (logits.double() / 0.8).log_softmax(-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    if dtype == torch.float32:
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    else:  # TRL divides and log-softmaxes in bf16 (a few bf16 ulps off); ours upcasts each chunk to float32
        torch.testing.assert_close(ours, theirs, rtol=2**-6, atol=1e-2)
        assert (ours - exact).abs().max() < 1e-5 < (theirs - exact).abs().max()
