"""The GRPO options of issue #24 against TRL 1.16's own code, or, where TRL has no code to call, the paper's formula.

TRL is driven as in ``test_grpo_vs_trl.py`` (``GRPOTrainer._compute_loss`` unbound on a stand-in ``self``):

- mu > 1: two optimisation passes over one batch. The old log-probs are fixed at the first pass's
  policy; after each pass both losses' gradient moves the same log-prob tensor, so the second pass has
  ratios away from 1 and the clip acts. Both trainers' loss, gradient and clip stats agree at every pass.
- GSPO (``importance_sampling_level="sequence"``): loss, gradient, clip and KL stats.
- Truncated completions: which completions TRL calls truncated (last token not EOS or pad), and the
  loss with their masks zeroed (TRL's ``mask_truncated_completions``).
- ``scale_rewards="batch"`` and DAPO's soft overlong punishment: TRL's formula and TRL's reward function.
- Truncated importance sampling (``tis_cap``): TRL's loss given the importance-sampling ratio TRL's
  "token_truncate" mode computes, min(exp(old - sampler), cap); and the gap stats by hand.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")
from test_grpo_vs_trl import B, FakeModel, P, T, make_batch, run_ours, run_trl, trl_stand_in  # noqa: E402
from trl.rewards import get_soft_overlong_punishment  # noqa: E402
from trl.trainer.grpo_trainer import GRPOTrainer  # noqa: E402
from trl.trainer.utils import nanstd  # noqa: E402

from stonklib.grpo.lengths import length_stats, overlong_penalty, truncated  # noqa: E402
from stonklib.grpo.loss import batch_reward_std, group_advantages, grpo_loss  # noqa: E402


def _check_same(ours, theirs):
    loss, grad, stats = ours
    trl_loss, trl_grad, trl_stats = theirs
    assert loss == pytest.approx(trl_loss, rel=1e-6, abs=1e-7)
    torch.testing.assert_close(grad, trl_grad, rtol=1e-5, atol=1e-7)
    assert stats["clip_fraction"] == pytest.approx(trl_stats["clip_ratio/region_mean"])
    assert stats["clip_low_fraction"] == pytest.approx(trl_stats["clip_ratio/low_mean"])
    assert stats["clip_high_fraction"] == pytest.approx(trl_stats["clip_ratio/high_mean"])
    if "kl" in trl_stats:
        assert stats["kl"] == pytest.approx(trl_stats["kl"], rel=1e-6)


@pytest.mark.parametrize("mu", [1, 2, 3])
@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_several_passes_over_one_rollout_match_trl(tmp_path, mu, loss_type, level):
    logp, _, ref, adv, mask = make_batch(seed=4)
    old = logp.clone()  # the policy as sampled: pass 1 is on-policy, ratio 1
    clipped_later = 0.0
    for it in range(mu):
        self = trl_stand_in(tmp_path, loss_type=loss_type, beta=0.04, epsilon=0.2, epsilon_high=0.28,
                            importance_sampling_level=level, num_iterations=mu)
        theirs = run_trl(self, logp, old, ref, adv, mask)
        ours = run_ours(logp, old, ref, adv, mask, beta=0.04, epsilon=0.2, epsilon_high=0.28, loss_type=loss_type,
                        kl_bias_correction=True, importance_sampling_level=level)
        _check_same(ours, theirs)
        if it == 0:
            assert ours[2]["ratio_mean"] == pytest.approx(1.0) and ours[2]["clip_fraction"] == 0.0
        else:
            clipped_later += ours[2]["clip_fraction"]
        logp = logp - 40.0 * ours[1] * mask  # one SGD step on the log-probs themselves: the next pass is off-policy
    if mu > 1:
        assert clipped_later > 0  # the later passes exercised the clip


def test_gspo_loss_grad_and_stats_match_trl(tmp_path):
    logp, old, ref, adv, mask = make_batch(seed=5)
    for beta, bias in [(0.0, False), (0.04, True), (0.04, False)]:
        self = trl_stand_in(tmp_path, loss_type="grpo", beta=beta, importance_sampling_level="sequence",
                            use_bias_correction_kl=bias)
        _check_same(run_ours(logp, old, ref, adv, mask, beta=beta, loss_type="grpo", kl_bias_correction=bias,
                             importance_sampling_level="sequence"), run_trl(self, logp, old, ref, adv, mask))


def test_gspo_is_the_papers_sequence_ratio():
    # GSPO (arXiv 2507.18071) eq. 7: s_i = (pi(y_i) / pi_old(y_i))^(1/|y_i|); the clipped objective per completion.
    logp, old, _, adv, mask = make_batch(seed=6)
    loss, _ = grpo_loss(logp, old, None, adv, mask, beta=0.0, epsilon=0.2, importance_sampling_level="sequence")
    n = mask.sum(1)
    s = torch.exp(((logp - old) * mask).sum(1) / n)
    per_seq = -torch.minimum(s * adv, s.clamp(0.8, 1.2) * adv)
    assert float(loss) == pytest.approx(float(per_seq.mean()), rel=1e-6)  # grpo: each sequence's token mean is its value


def _trl_is_truncated(ids: list[list[int]], eos: list[int], pad: int) -> list[bool]:
    return [row[-1] not in [*eos, pad] for row in ids]  # TRL's rule over unpadded completions


def test_truncation_masking_matches_trl(tmp_path):
    eos, pad = 2, 0
    ids = torch.tensor([[5, 6, 7, 8, 9, 4], [5, 6, 7, 2, 0, 0], [5, 2, 0, 0, 0, 0], [5, 6, 7, 8, 9, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    unpadded = [row[: int(m.sum())] for row, m in zip(ids.tolist(), mask, strict=True)]
    cut = truncated(ids, mask, [eos])
    assert cut.tolist() == _trl_is_truncated(unpadded, [eos], pad) == [True, False, False, False]
    masked = mask * (~cut).long().unsqueeze(1)
    logp, old, ref, adv, _ = make_batch(seed=7)
    for loss_type in ("grpo", "dr_grpo", "dapo"):
        self = trl_stand_in(tmp_path, loss_type=loss_type, beta=0.04, mask_truncated_completions=True)
        _check_same(run_ours(logp, old, ref, adv, masked, beta=0.04, loss_type=loss_type, kl_bias_correction=True),
                    run_trl(self, logp, old, ref, adv, masked))
    stats = length_stats(mask.sum(1).tolist(), cut.tolist())
    assert stats["completions/clipped_ratio"] == 0.25 and stats["completions/mean_terminated_length"] == pytest.approx(4.0)
    assert stats["completions/max_length"] == 6 and stats["completions/min_length"] == 2


def test_no_eos_id_means_nothing_is_truncated():
    assert not truncated(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3), []).any()
    assert length_stats([4, 4], [True, True])["completions/mean_terminated_length"] == 0.0  # TRL logs 0 then


def test_batch_scaling_is_trls_formula():
    # TRL's sum_then_normalize with scale_rewards="batch": group means, then one std over the whole batch.
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, -1.0, 0.0, 3.0, 0.2, 0.2, 0.2, 0.2])
    G = 4
    mean = rewards.view(-1, G).mean(1).repeat_interleave(G)
    expected = (rewards - mean) / (nanstd(rewards).expand_as(rewards) + 1e-4)
    torch.testing.assert_close(group_advantages(rewards, G, scale="batch"), expected)
    # Over ranks the std comes from summed moments; it is the same number.
    std = batch_reward_std(rewards.numel(), float(rewards.sum()), float((rewards ** 2).sum()))
    torch.testing.assert_close(group_advantages(rewards, G, scale="batch", batch_std=std), expected)
    assert group_advantages(torch.full((8,), 0.3), G, scale="batch").abs().max() < 1e-5  # no spread: zeros, not NaN


def test_overlong_penalty_is_trls_soft_punishment():
    lengths = [1, 60, 80, 81, 90, 99, 100, 101, 140]
    theirs = get_soft_overlong_punishment(max_completion_len=100, soft_punish_cache=20)([[1] * n for n in lengths])
    ours = overlong_penalty(torch.tensor(lengths), max_len=100, buffer=20)
    torch.testing.assert_close(ours, torch.tensor(theirs))
    torch.testing.assert_close(overlong_penalty(torch.tensor(lengths), 100, 20, penalty=0.5), 0.5 * torch.tensor(theirs))
    assert overlong_penalty(torch.tensor(lengths), 100, 0).abs().sum() == 0  # buffer 0: off
    with pytest.raises(ValueError, match="overlong_buffer"):
        overlong_penalty(torch.tensor(lengths), 10, 20)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_truncated_importance_sampling_matches_trl(tmp_path, loss_type):
    logp, old, ref, adv, mask = make_batch(seed=8)
    g = torch.Generator().manual_seed(9)
    sampler = old + 0.3 * torch.randn(B, T, generator=g)  # the sampler's log-probs of the same tokens
    cap = 1.5
    self = trl_stand_in(tmp_path, loss_type=loss_type, beta=0.04)
    self.use_vllm = self.vllm_importance_sampling_correction = True
    is_ratio = torch.exp((old - sampler) * mask).clamp(max=cap)  # TRL's token_truncate ratio
    inputs = {"prompt_ids": torch.ones(B, P, dtype=torch.long), "prompt_mask": torch.ones(B, P, dtype=torch.long),
              "completion_ids": torch.ones(B, T, dtype=torch.long), "completion_mask": mask, "advantages": adv,
              "old_per_token_logps": old, "ref_per_token_logps": ref, "num_items_in_batch": mask.sum(),
              "importance_sampling_ratio": is_ratio}
    leaf = logp.clone().requires_grad_()
    theirs_loss = GRPOTrainer._compute_loss(self, FakeModel(leaf), inputs)
    (theirs_grad,) = torch.autograd.grad(theirs_loss, leaf)
    leaf2 = logp.clone().requires_grad_()
    loss, stats = grpo_loss(leaf2, old, ref, adv, mask, beta=0.04, loss_type=loss_type, kl_bias_correction=True,
                            sampler_logp=sampler, tis_cap=cap)
    (grad,) = torch.autograd.grad(loss, leaf2)
    assert loss.item() == pytest.approx(theirs_loss.item(), rel=1e-6)
    torch.testing.assert_close(grad, theirs_grad, rtol=1e-5, atol=1e-7)
    keep = mask.bool()
    gap = (old - sampler)[keep]
    assert stats["sampler/logp_gap"] == pytest.approx(float(gap.abs().mean()), rel=1e-5)
    assert stats["sampler/logp_gap_max"] == pytest.approx(float(gap.abs().max()), rel=1e-5)
    assert stats["sampler/tis_capped_fraction"] == pytest.approx(float((gap.exp() > cap).float().mean()))
    assert 0 < stats["sampler/tis_capped_fraction"] < 1


def test_gap_stats_without_a_cap_leave_the_loss_alone():
    logp, old, ref, adv, mask = make_batch(seed=10)
    plain, _ = grpo_loss(logp, old, ref, adv, mask)
    measured, stats = grpo_loss(logp, old, ref, adv, mask, sampler_logp=old + 0.1)
    assert float(plain) == float(measured) and stats["sampler/logp_gap"] == pytest.approx(0.1, rel=1e-5)
    assert "sampler/tis_weight" not in stats
    with pytest.raises(ValueError, match="tis_cap"):
        grpo_loss(logp, old, ref, adv, mask, tis_cap=2.0)
    with pytest.raises(ValueError, match="importance_sampling_level"):
        grpo_loss(logp, old, ref, adv, mask, importance_sampling_level="sentence")
