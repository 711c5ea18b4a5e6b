"""grpo.py against arithmetic done by hand on small literal tensors (float64 throughout)."""

from __future__ import annotations

import math

import pytest
import torch

from stonklib.grpo.loss import group_advantages, grpo_loss
from stonklib.update.head import logprobs_from_hidden, selective_log_softmax

D = torch.float64
LN2 = math.log(2.0)


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=D)


# --------------------------------------------------------------------------- the hand case
# Two completions of three token slots; the second has one padding slot.
#   ratios    seq0 [1.0, 1.5, 0.5]  A = +1   (1.5 is above 1 + eps: clipped high)
#             seq1 [1.1, 0.7, pad]  A = -2   (0.7 is below 1 - eps: clipped low)
#   d = ref - logp   seq0 [0, ln2, -ln2]   seq1 [ln2, 0, pad]
# With eps = 0.2 the surrogates min(r*A, clip(r)*A) are
#   seq0: [1.0, 1.2, 0.5]       seq1: [-2.2, min(-1.4, -1.6) = -1.6]
# so the policy part of the per-token loss is seq0 [-1.0, -1.2, -0.5], seq1 [2.2, 1.6]; sums -2.7 and 3.8.
# k3(d) = e^d - d - 1: k3(0) = 0, k3(ln2) = 1 - ln2, k3(-ln2) = ln2 - 0.5; seq0 sum 0.5, seq1 sum 1 - ln2.
RATIO = [[1.0, 1.5, 0.5], [1.1, 0.7, 0.5]]  # the padding slot would be clipped low if it were counted
D_REF = [[0.0, LN2, -LN2], [LN2, 0.0, 5.0]]
OLD = [[-1.0, -2.0, -0.5], [-0.3, -1.2, -0.9]]
MASK = [[1, 1, 1], [1, 1, 0]]
ADV = [1.0, -2.0]


def hand_inputs(requires_grad: bool = False):
    old = t(OLD)
    logp = (old + torch.log(t(RATIO))).requires_grad_(requires_grad)
    ref = logp.detach() + t(D_REF)
    return logp, old, ref, t(ADV), torch.tensor(MASK)


HAND_NO_KL = {"grpo": (-2.7 / 3 + 3.8 / 2) / 2, "dr_grpo": 1.1 / 6, "dapo": 1.1 / 5}
HAND_KL_01 = {  # beta = 0.1
    "grpo": (-2.7 / 3 + 3.8 / 2) / 2 + 0.1 * (0.5 / 3 + (1 - LN2) / 2) / 2,
    "dr_grpo": (1.1 + 0.1 * (1.5 - LN2)) / 6,
    "dapo": (1.1 + 0.1 * (1.5 - LN2)) / 5,
}


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_loss_matches_hand_arithmetic(loss_type):
    logp, old, ref, adv, mask = hand_inputs()
    loss0, _ = grpo_loss(logp, old, None, adv, mask, beta=0.0, epsilon=0.2, loss_type=loss_type)
    loss1, _ = grpo_loss(logp, old, ref, adv, mask, beta=0.1, epsilon=0.2, loss_type=loss_type)
    assert loss0.item() == pytest.approx(HAND_NO_KL[loss_type], abs=1e-12)
    assert loss1.item() == pytest.approx(HAND_KL_01[loss_type], abs=1e-12)


def test_stats_match_hand_arithmetic():
    logp, old, ref, adv, mask = hand_inputs()
    _, stats = grpo_loss(logp, old, ref, adv, mask, beta=0.1, epsilon=0.2)
    assert all(isinstance(v, float) for v in stats.values())
    assert stats["clip_fraction"] == pytest.approx(2 / 5)  # 1.5 (A>0) and 0.7 (A<0); not 0.5 with A>0, not the pad
    assert stats["clip_high_fraction"] == pytest.approx(1 / 5)
    assert stats["clip_low_fraction"] == pytest.approx(1 / 5)
    assert stats["ratio_mean"] == pytest.approx((1.0 + 1.5 + 0.5 + 1.1 + 0.7) / 5)
    assert stats["kl"] == pytest.approx((1.5 - LN2) / 5)
    assert stats["num_tokens"] == 5.0


def test_gradient_matches_hand_derivation_grpo():
    # d/dlogp of -r*A is -r*A (unclipped tokens); clipped tokens get 0; k3 adds beta*(1 - e^d).
    # Each token is then divided by |o_i| * B for "grpo" (|o| = 3 and 2, B = 2).
    logp, old, ref, adv, mask = hand_inputs(requires_grad=True)
    loss, _ = grpo_loss(logp, old, None, adv, mask, beta=0.0, epsilon=0.2)
    loss.backward()
    expected = t([[-1.0 / 6, 0.0, -0.5 / 6], [2.2 / 4, 0.0, 0.0]])
    torch.testing.assert_close(logp.grad, expected, rtol=0, atol=1e-12)

    logp.grad = None
    loss, _ = grpo_loss(logp, old, ref, adv, mask, beta=0.1, epsilon=0.2)
    loss.backward()
    expected = t([[-1.0 / 6, 0.1 * (1 - 2) / 6, -0.5 / 6 + 0.1 * (1 - 0.5) / 6], [2.2 / 4 + 0.1 * (1 - 2) / 4, 0.0, 0.0]])
    torch.testing.assert_close(logp.grad, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_gradcheck(loss_type):
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(3, 5, generator=g, dtype=D) * 3
    ref = old + 0.3 * torch.randn(3, 5, generator=g, dtype=D)
    adv = t([0.7, -1.3, 0.2])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    logp = (old + 0.3 * torch.randn(3, 5, generator=g, dtype=D)).requires_grad_()

    def f(lp):
        return grpo_loss(lp, old, ref, adv, mask, beta=0.05, epsilon=0.2, epsilon_high=0.28, loss_type=loss_type)[0]

    assert torch.autograd.gradcheck(f, (logp,))


# --------------------------------------------------------------------------- special cases
@pytest.mark.parametrize("loss_type, per_token_scale", [
    ("grpo", lambda lengths, B, T, N: 1.0 / (lengths * B)),  # -A_i / (|o_i| B)
    ("dr_grpo", lambda lengths, B, T, N: torch.full_like(lengths, 1.0 / (B * T))),
    ("dapo", lambda lengths, B, T, N: torch.full_like(lengths, 1.0 / N)),
])
def test_ratio_one_is_plain_policy_gradient(loss_type, per_token_scale):
    # With logp == old_logp (mu = 1) and beta = 0 nothing is clipped and the surrogate is A * 1, so:
    #   loss = -sum_i A_i * sum_t m_it * s_i   and   dloss/dlogp_it = -A_i * s_i on real tokens, 0 on padding,
    # where s_i is the per-token weight of the loss type (grpo: 1/(|o_i| B), i.e. loss = -mean(A)).
    logp = t([[-0.5, -1.0, -2.0, -0.1], [-0.3, -0.2, -4.0, -9.0], [-1.0, -1.0, -1.0, -1.0]]).requires_grad_()
    adv = t([1.5, -0.5, 2.0])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    lengths = t([4.0, 2.0, 3.0])
    scale = per_token_scale(lengths, 3, 4, 9.0)

    loss, stats = grpo_loss(logp, logp.detach(), None, adv, mask, beta=0.0, loss_type=loss_type)
    loss.backward()
    assert loss.item() == pytest.approx(-(adv * lengths * scale).sum().item(), abs=1e-12)
    if loss_type == "grpo":
        assert loss.item() == pytest.approx(-adv.mean().item(), abs=1e-12)
    torch.testing.assert_close(logp.grad, -(adv * scale)[:, None] * mask, rtol=0, atol=1e-12)
    assert stats["clip_fraction"] == 0.0 and stats["ratio_mean"] == 1.0


def test_beta_zero_removes_kl_term():
    logp, old, ref, adv, mask = hand_inputs(requires_grad=True)
    far_ref = ref - 7.0  # a very different reference must not matter
    loss_none, _ = grpo_loss(logp, old, None, adv, mask, beta=0.0)
    loss_far, stats = grpo_loss(logp, old, far_ref, adv, mask, beta=0.0)
    assert loss_none.item() == loss_far.item() == pytest.approx(HAND_NO_KL["grpo"], abs=1e-12)
    assert "kl" in stats and stats["kl"] > 1.0  # still reported for monitoring when ref_logp is given
    (g_none,) = torch.autograd.grad(loss_none, logp)
    (g_far,) = torch.autograd.grad(loss_far, logp)
    torch.testing.assert_close(g_none, g_far, rtol=0, atol=0)
    _, stats_none = grpo_loss(logp, old, None, adv, mask, beta=0.0)
    assert "kl" not in stats_none


def test_beta_needs_ref_logp():
    logp, old, _, adv, mask = hand_inputs()
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, old, None, adv, mask, beta=0.05)


# One token, old_logp = 0, so ratio = exp(logp). eps = 0.2.
# (ratio, A, epsilon_high, surrogate by hand, gradient zero?, clipped-low, clipped-high)
CLIP_TABLE = [
    (1.25, 1.0, None, 1.2, True, 0, 1),     # above 1 + 0.2 with A > 0: clipped, no gradient
    (1.25, 1.0, 0.28, 1.25, False, 0, 0),   # clip-higher (DAPO) lets it through up to 1.28
    (1.30, 1.0, 0.28, 1.28, True, 0, 1),    # ... but not beyond
    (0.75, -1.0, None, -0.8, True, 1, 0),   # below 1 - 0.2 with A < 0: clipped, no gradient
    (0.75, -1.0, 0.28, -0.8, True, 1, 0),   # epsilon_high does not touch the low side
    (0.75, 1.0, None, 0.75, False, 0, 0),   # low ratio with A > 0: the min keeps the unclipped, pessimistic term
    (1.25, -1.0, None, -1.25, False, 0, 0),  # high ratio with A < 0: likewise unclipped
    (1.10, 2.0, None, 2.2, False, 0, 0),    # inside the trust region
]


@pytest.mark.parametrize("ratio, adv, eps_high, surrogate, zero_grad, low, high", CLIP_TABLE)
def test_clipping_table(ratio, adv, eps_high, surrogate, zero_grad, low, high):
    logp = t([[math.log(ratio)]]).requires_grad_()
    loss, stats = grpo_loss(logp, torch.zeros(1, 1, dtype=D), None, t([adv]), torch.ones(1, 1), beta=0.0,
                            epsilon=0.2, epsilon_high=eps_high)
    loss.backward()
    assert loss.item() == pytest.approx(-surrogate, abs=1e-12)
    assert (logp.grad.item() == 0.0) == zero_grad
    if not zero_grad:
        assert logp.grad.item() == pytest.approx(-ratio * adv, abs=1e-12)  # d(-r*A)/dlogp
    assert (stats["clip_low_fraction"], stats["clip_high_fraction"]) == (low, high)
    assert stats["clip_fraction"] == low + high


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("garbage", [0.0, 123.0, -math.inf, math.inf, math.nan])
def test_padding_does_not_change_loss_or_get_gradient(loss_type, garbage):
    logp, old, ref, adv, mask = hand_inputs()
    pad = mask == 0
    dirty = [x.masked_fill(pad, garbage) for x in (logp, old, ref)]
    dirty[0].requires_grad_()
    loss, stats = grpo_loss(*dirty[:3], adv, mask, beta=0.1, loss_type=loss_type)
    loss.backward()
    assert loss.item() == pytest.approx(HAND_KL_01[loss_type], abs=1e-12)
    assert torch.isfinite(dirty[0].grad).all() and (dirty[0].grad[pad] == 0).all()
    assert all(math.isfinite(v) for v in stats.values())


def test_empty_sequence_is_guarded():
    logp, old, ref, adv, mask = hand_inputs()
    mask[1] = 0  # seq1 has no tokens: it contributes 0 to the per-sequence mean but still counts in B
    loss, stats = grpo_loss(logp, old, None, adv, mask, beta=0.0)
    assert loss.item() == pytest.approx((-2.7 / 3 + 0.0) / 2, abs=1e-12)
    loss, stats = grpo_loss(logp, old, ref, adv, torch.zeros_like(mask), beta=0.1, loss_type="dapo")
    assert loss.item() == 0.0 and stats["num_tokens"] == 0.0 and stats["kl"] == 0.0


def test_denominator_overrides():
    logp, old, _, adv, mask = hand_inputs()
    dr, _ = grpo_loss(logp, old, None, adv, mask, beta=0.0, loss_type="dr_grpo", max_completion_length=10)
    dapo, _ = grpo_loss(logp, old, None, adv, mask, beta=0.0, loss_type="dapo", num_items=20)
    assert dr.item() == pytest.approx(1.1 / (2 * 10), abs=1e-12)
    assert dapo.item() == pytest.approx(1.1 / 20, abs=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    ({"loss_type": "bnpo"}, "loss_type"),
    ({"advantages": torch.zeros(3, dtype=D)}, "advantages"),
    ({"mask": torch.ones(2, 4)}, "mask"),
    ({"epsilon": -0.1}, ">= 0"),
])
def test_loss_input_errors(kwargs, match):
    logp, old, ref, adv, mask = hand_inputs()
    args = {"logp": logp, "old_logp": old, "ref_logp": ref, "advantages": adv, "mask": mask} | kwargs
    with pytest.raises(ValueError, match=match):
        grpo_loss(**args)


# --------------------------------------------------------------------------- advantages
def test_group_advantages_by_hand():
    rewards = t([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 3.0, 3.0])
    # group 0: mean 0.25, deviations [.75, -.25, -.25, -.25], unbiased var (.5625 + 3 * .0625) / 3 = .25, std .5
    # group 1: mean 2, deviations [-1, -1, 1, 1], unbiased var 4 / 3, std 2 / sqrt(3)
    dev = t([0.75, -0.25, -0.25, -0.25, -1.0, -1.0, 1.0, 1.0])
    std = t([0.5] * 4 + [2 / math.sqrt(3)] * 4)
    torch.testing.assert_close(group_advantages(rewards, 4), dev / (std + 1e-4), rtol=0, atol=1e-12)
    torch.testing.assert_close(group_advantages(rewards, 4, scale="none"), dev, rtol=0, atol=1e-12)
    torch.testing.assert_close(group_advantages(rewards, 4, eps=0.5), dev / (std + 0.5), rtol=0, atol=1e-12)


def test_zero_variance_groups_give_zero_advantages():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.0, 2.0, 1.0])
    adv = group_advantages(rewards, 3)
    assert torch.isfinite(adv).all()
    assert adv[:6].abs().max().item() < 1e-5  # exact up to the float rounding of the group mean
    assert adv[6:].tolist() == pytest.approx([-1 / (1 + 1e-4), 1 / (1 + 1e-4), 0.0])
    all_flat = group_advantages(torch.zeros(8), 4)
    assert (all_flat == 0).all()
    loss, _ = grpo_loss(torch.zeros(8, 3), torch.zeros(8, 3), None, all_flat, torch.ones(8, 3), beta=0.0)
    assert loss.item() == 0.0


def test_group_advantages_integer_rewards_and_errors():
    assert group_advantages(torch.tensor([1, 0]), 2, scale="none").tolist() == [0.5, -0.5]
    with pytest.raises(ValueError, match="whole groups"):
        group_advantages(torch.zeros(7), 4)
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 4), 4)
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(4), 2, scale="global")


# --------------------------------------------------------------------------- chunked log-probs
def naive_logp(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return logits.double().log_softmax(-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 1e-5), (torch.bfloat16, 1e-5)])
@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
def test_selective_log_softmax_matches_naive(dtype, atol, chunk_size):
    g = torch.Generator().manual_seed(1)
    logits = (4 * torch.randn(2, 5, 97, generator=g)).to(dtype)
    index = torch.randint(0, 97, (2, 5), generator=g)
    out = selective_log_softmax(logits, index, chunk_size=chunk_size)
    assert out.dtype == torch.promote_types(dtype, torch.float32) and out.shape == (2, 5)
    # the reference sees the same (bf16-rounded) logits, so only the float32 logsumexp differs
    torch.testing.assert_close(out.double(), naive_logp(logits, index), rtol=0, atol=atol)


def test_selective_log_softmax_qwen_vocab_and_temperature():
    vocab = 151_936
    g = torch.Generator().manual_seed(2)
    logits = (3 * torch.randn(1, 4, vocab, generator=g)).to(torch.bfloat16)
    index = torch.randint(0, vocab, (1, 4), generator=g)
    out = selective_log_softmax(logits, index, chunk_size=3)
    torch.testing.assert_close(out.double(), naive_logp(logits, index), rtol=0, atol=1e-4)
    out_t = selective_log_softmax(logits, index, chunk_size=3, temperature=0.7)
    torch.testing.assert_close(out_t.double(), naive_logp(logits.double() / 0.7, index), rtol=0, atol=1e-4)


def test_selective_log_softmax_gradient():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 11, generator=g, dtype=D, requires_grad=True)
    index = torch.randint(0, 11, (2, 3), generator=g)
    w = torch.randn(2, 3, generator=g, dtype=D)
    (g_ours,) = torch.autograd.grad((selective_log_softmax(logits, index, chunk_size=2) * w).sum(), logits)
    (g_ref,) = torch.autograd.grad((naive_logp(logits, index) * w).sum(), logits)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-10)


def _hidden_case(dtype, seed=4, B=2, T=5, H=8, V=37, bias=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g).to(dtype)
    weight = torch.randn(V, H, generator=g).to(dtype)
    b = torch.randn(V, generator=g).to(dtype) if bias else None
    index = torch.randint(0, V, (B, T), generator=g)
    return hidden, weight, b, index


def naive_from_hidden(hidden, weight, bias, index):
    logits = hidden.double() @ weight.double().T + (0 if bias is None else bias.double())
    return naive_logp(logits, index)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 1e-5), (torch.bfloat16, 0.1)])
@pytest.mark.parametrize("chunk_tokens", [1, 4, 64])
def test_logprobs_from_hidden_matches_naive(bias, dtype, atol, chunk_tokens):
    # bf16: the projection itself runs in bf16 (logits up to ~15 round by up to ~0.03), hence the looser atol
    hidden, weight, b, index = _hidden_case(dtype, bias=bias)
    out = logprobs_from_hidden(hidden, weight, index, chunk_tokens=chunk_tokens, bias=b)
    assert out.dtype == torch.promote_types(dtype, torch.float32) and out.shape == index.shape
    torch.testing.assert_close(out.double(), naive_from_hidden(hidden, weight, b, index), rtol=0, atol=atol)


def test_logprobs_from_hidden_gradients_match_naive():
    hidden, weight, b, index = _hidden_case(D)
    leaves = [x.clone().requires_grad_() for x in (hidden, weight, b)]
    w = torch.randn(index.shape, dtype=D, generator=torch.Generator().manual_seed(5))
    ours = torch.autograd.grad((logprobs_from_hidden(leaves[0], leaves[1], index, 3, leaves[2]) * w).sum(), leaves)
    ref = torch.autograd.grad((naive_from_hidden(*leaves, index) * w).sum(), leaves)
    for g_ours, g_ref in zip(ours, ref, strict=True):
        torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-10)


def test_logprobs_from_hidden_gradcheck_and_bf16_grad():
    hidden, weight, _, index = _hidden_case(D, B=1, T=3, H=4, V=6, bias=False)
    hidden.requires_grad_()
    assert torch.autograd.gradcheck(lambda h: logprobs_from_hidden(h, weight, index, 2), (hidden,))
    h16, w16, _, idx16 = _hidden_case(torch.bfloat16, bias=False)
    h16.requires_grad_()
    logprobs_from_hidden(h16, w16, idx16, 4).sum().backward()
    h64 = h16.detach().double().requires_grad_()
    naive_from_hidden(h64, w16, None, idx16).sum().backward()
    assert h16.grad.dtype == torch.bfloat16
    torch.testing.assert_close(h16.grad.double(), h64.grad, rtol=0.05, atol=0.1)


def test_logprobs_from_hidden_keeps_no_logits_for_backward():
    # Without per-chunk recomputation autograd would save every chunk's [chunk, V] logits,
    # which together are the full [B, T, V] tensor. Record everything saved for backward.
    hidden, weight, _, index = _hidden_case(torch.float32, B=2, T=8, H=8, V=37, bias=False)
    hidden.requires_grad_()
    saved_shapes = []

    def pack(x):
        saved_shapes.append(tuple(x.shape))
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = logprobs_from_hidden(hidden, weight, index, chunk_tokens=4)
    assert not [s for s in saved_shapes if s and s[-1] == 37], saved_shapes
    out.sum().backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()


def test_logprob_shape_errors():
    with pytest.raises(ValueError, match="index"):
        selective_log_softmax(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="lm_head_weight"):
        logprobs_from_hidden(torch.zeros(2, 3, 4), torch.zeros(5, 3), torch.zeros(2, 3, dtype=torch.long))


def test_kl_bias_correction_gives_reverse_kl_score_gradient():
    # On-policy (rho = 1 in value) with A = 0 only the KL term has gradient. For "grpo", per token:
    #   plain k3:          beta * (1 - e^d) / (|o_i| B)    (expectation: grad of the forward KL)
    #   rho * k3 (DS-V3.2): beta * (-d) / (|o_i| B)        (= (log pi - log pi_ref): reverse-KL score gradient)
    # The loss value is the same either way, since rho == 1.
    _, _, _, _, mask = hand_inputs()
    logp = t(OLD).requires_grad_()
    ref = logp.detach() + t(D_REF)
    scale = 0.1 / (t([3.0, 2.0]) * 2)[:, None] * mask
    values = []
    for correction, expected in [(False, (1 - torch.exp(t(D_REF))) * scale), (True, -t(D_REF) * scale)]:
        loss, stats = grpo_loss(logp, logp.detach(), ref, torch.zeros(2, dtype=D), mask, beta=0.1,
                                kl_bias_correction=correction)
        (grad,) = torch.autograd.grad(loss, logp)
        torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)
        values.append((loss.item(), stats["kl"]))
    assert values[0] == pytest.approx(values[1], abs=1e-12)
