"""The Triton decode kernels (attention, top-p draw) against plain torch, run on CPU by Triton's interpreter.

The same kernel source runs on the GPU (there in bf16; ``benchmarks/decode_kernels.py`` records
its error on an H100). Here float32 throughout: the interpreter's bf16 ``tl.dot`` is not exact.
Skipped where Triton is not installed.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.test_fastgen import TOK, VOCAB, assert_follows, left_padded, nucleus, rel_err, tiny_model

triton = pytest.importorskip("triton")


@pytest.fixture
def K():
    """stonklib.kernels under Triton's CPU interpreter (tests/conftest.py turns it on before Triton loads)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton's interpreter is off (a CUDA machine): benchmarks/decode_kernels.py checks the kernels there")
    import stonklib.kernels as mod

    return mod


def _rope(pos: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (5000.0 ** (torch.arange(0, d, 2).float() / d))
    ang = pos[:, None].float() * inv
    ang = torch.cat([ang, ang], -1)
    sin = ang.sin()
    return ang.cos(), torch.cat([-sin[:, : d // 2], sin[:, d // 2:]], -1)


@pytest.mark.parametrize(("heads", "kv_heads", "length", "slot", "chunk", "block_l"), [
    (4, 2, 40, 21, 16, 8),    # slot inside the second of three chunks
    (4, 2, 40, 16, 16, 8),    # slot on a chunk boundary
    (4, 2, 40, 0, 16, 16),    # the first token: only itself visible
    (6, 2, 33, 32, 16, 16),   # last slot, a partial last chunk, 3 query heads per KV head
    (2, 2, 24, 10, 64, 64),   # no grouping, one chunk
])
def test_decode_attention_matches_torch(K, heads, kv_heads, length, slot, chunk, block_l):
    n, d = 3, 16
    g = torch.Generator().manual_seed(slot + length)
    qkv = torch.randn(n, (heads + 2 * kv_heads) * d, generator=g)
    cos, sin = _rope(torch.tensor([slot, slot - 2, slot + 5]), d)
    kc, vc = torch.randn(n, kv_heads, length, d, generator=g), torch.randn(n, kv_heads, length, d, generator=g)
    valid = torch.rand(n, length, generator=g) > 0.3
    valid[:, slot] = True
    valid[1, :slot] = False  # a row that sees only the new token
    kc2, vc2 = kc.clone(), vc.clone()
    s = torch.tensor([slot])
    got = K.decode_attention(qkv, cos, sin, kc, vc, valid, s, heads, kv_heads, d ** -0.5, chunk=chunk, block_l=block_l)
    want = K.decode_attention_reference(qkv, cos, sin, kc2, vc2, valid, s, heads, kv_heads, d ** -0.5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kc, kc2, rtol=1e-6, atol=1e-6)  # the new key, rotated, went to `slot`
    torch.testing.assert_close(vc, vc2, rtol=0, atol=0)
    assert not torch.equal(kc[:, :, slot], torch.zeros_like(kc[:, :, slot]))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@torch.no_grad()
def test_decoder_kernel_path_matches_the_plain_path(K, kind):
    from stonklib.sampling import FastSampler

    model = tiny_model(kind, seed=5)
    ids, mask = left_padded()
    plain = FastSampler(model, TOK, max_batch=3, max_len=24, kernels=False)
    fused = FastSampler(model, TOK, max_batch=3, max_len=24, kernels=True)
    assert fused.decoder.kernels and not plain.decoder.kernels
    a = plain.sample(ids, mask, max_new_tokens=10, greedy=True)
    b = fused.sample(ids, mask, max_new_tokens=10, greedy=True)
    assert torch.equal(a, b)
    # One decode step's logits from the same filled cache.
    P = ids.shape[1]
    for fs in (plain, fused):
        fs.decoder.prefill(ids, mask)
    args = (a[:, 0], mask.sum(-1), torch.tensor([P]), plain.state.slot_valid[:3])
    assert rel_err(fused.decoder.decode(*args), plain.decoder.decode(*args)) < 1e-5


def test_top_p_draw_follows_the_nucleus_distribution(K):
    """400 rows of one distribution, vocabulary in 3 chunks: the draw is generate's top-p distribution."""
    g = torch.Generator().manual_seed(21)
    logits = (torch.randn(VOCAB, generator=g) * 2.0).expand(400, -1).clone()
    tok = K.sample_top_p(logits, torch.tensor([0.7]), torch.tensor([0.6]), torch.tensor([123]), k=8, chunk=32)
    target, keep = nucleus(torch.softmax(logits[0] / 0.7, -1), 0.6)
    assert len(keep) > 2
    assert_follows(tok, target, keep)


@pytest.mark.parametrize(("top_p", "temp"), [(1e-6, 1.0), (0.9, 1e-4)])
def test_top_p_draw_degenerates_to_the_argmax(K, top_p, temp):
    logits = torch.randn(6, VOCAB, generator=torch.Generator().manual_seed(3))
    tok = K.sample_top_p(logits, torch.tensor([temp]), torch.tensor([top_p]), torch.tensor([5]), k=4, chunk=64)
    assert torch.equal(tok, logits.argmax(-1))


def test_top_p_draw_is_keyed_by_its_seed(K):
    logits = torch.zeros(16, VOCAB)  # uniform: every token is in the nucleus at top_p = 1
    one, p = torch.tensor([1.0]), torch.tensor([1.0])
    a = K.sample_top_p(logits, one, p, torch.tensor([7]), k=2, chunk=64)
    assert torch.equal(a, K.sample_top_p(logits, one, p, torch.tensor([7]), k=2, chunk=64))
    assert not torch.equal(a, K.sample_top_p(logits, one, p, torch.tensor([8]), k=2, chunk=64))
    assert a.unique().numel() > 8  # rows draw independently


@pytest.mark.parametrize(("temp", "top_p"), [(0.7, 0.9), (1.0, 1.0), (1e-4, 0.5)])
def test_top_p_draw_returns_the_drawn_tokens_log_prob(K, temp, top_p):
    """The fused log-prob is log_softmax(logits / T) at the drawn token, the eager formula, and the draw is unchanged."""
    logits = torch.randn(7, VOCAB, generator=torch.Generator().manual_seed(4)) * 3.0
    logits[2, :10] = float("-inf")  # masked tokens (a suppressed EOS) keep the row's statistics finite
    args = (logits, torch.tensor([temp]), torch.tensor([top_p]), torch.tensor([11]))
    tok, lp = K.sample_top_p(*args, k=8, chunk=64, logprob=True)
    assert torch.equal(tok, K.sample_top_p(*args, k=8, chunk=64))
    expected = torch.log_softmax(logits / temp, -1).gather(1, tok[:, None]).squeeze(1)
    torch.testing.assert_close(lp, expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_sampler_log_probs_with_kernels_match_a_rescoring_of_its_tokens(K):
    """last_logprobs from the draw's statistics equal log_softmax(decoder logits / T) at each kept token."""
    from stonklib.sampling import FastSampler

    ids, mask = left_padded()
    model = tiny_model("qwen2", seed=6)
    fs = FastSampler(model, TOK, max_batch=3, max_len=24, kernels=True, eos_token_id=[])
    torch.manual_seed(1)
    out = fs.sample(ids, mask, max_new_tokens=5, temperature=0.8, top_p=0.95)
    full = torch.cat([ids, out], 1)
    attn = torch.cat([mask, torch.ones_like(out)], 1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=full, attention_mask=attn, position_ids=pos).logits[:, ids.shape[1] - 1:-1].float()
    expected = torch.log_softmax(logits / 0.8, -1).gather(2, out[..., None]).squeeze(2)
    torch.testing.assert_close(fs.last_logprobs, expected, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_sampler_with_kernels_repeats_under_a_seed_and_advances_its_key(K):
    from stonklib.sampling import FastSampler

    ids, mask = left_padded()
    fs = FastSampler(tiny_model("qwen2", seed=5), TOK, max_batch=3, max_len=24, kernels=True)
    kw = dict(max_new_tokens=6, temperature=1.0, top_p=0.95)
    torch.manual_seed(0)
    a = fs.sample(ids, mask, **kw)
    key = int(fs.state.seed)
    torch.manual_seed(0)
    assert torch.equal(a, fs.sample(ids, mask, **kw))
    assert int(fs.state.seed) == key
    b = fs.sample(ids, mask, **kw)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("rows", [1, 5, 16])
@pytest.mark.parametrize(("gate_up", "down"), [
    ((32, 64, 1, 4, 1), (16, 64, 1, 4, 1)),     # whole sums, residual fused into the store
    ((64, 256, 1, 4, 1), (32, 128, 4, 4, 1)),   # split-K through the float32 workspace
    ((64, 128, 1, 4, 1), (16, 64, 3, 4, 1)),    # uneven split of k
])
def test_skinny_mlp_matches_the_plain_decoder_mlp(K, rows, gate_up, down):
    hidden, inter = 128, 320  # 320: partial column and k blocks
    g = torch.Generator().manual_seed(rows)
    w_gu, w_d = torch.randn(2 * inter, hidden, generator=g) * 0.05, torch.randn(hidden, inter, generator=g) * 0.05
    x, h = torch.randn(rows, hidden, generator=g), torch.randn(rows, hidden, generator=g)
    mlp = K.SkinnyMLP(w_gu, w_d, max_rows=16, config={"gate_up": gate_up, "down": down})
    for _ in range(2):  # the split-K workspace is re-zeroed after each use
        torch.testing.assert_close(mlp(x, h), K.skinny_mlp_reference(x, h, w_gu, w_d), rtol=1e-5, atol=1e-5)
    assert not mlp.ws.any()
    with pytest.raises(ValueError, match="split_k must be 1"):
        mlp.gate_up(h, config=(32, 64, 2, 4, 1))
    with pytest.raises(ValueError, match="exceed the workspace"):
        K.SkinnyMLP(w_gu, w_d, max_rows=2)(x.repeat(3, 1)[:3], h.repeat(3, 1)[:3])


@torch.no_grad()
def test_decoder_uses_the_mlp_kernel_only_when_asked(K):
    from stonklib.sampling import FastSampler

    model = tiny_model("llama", seed=8)
    ids, mask = left_padded()
    runs = {}
    for name, kw in {"plain": dict(kernels=False), "attention": dict(kernels=True, mlp_kernel=False),
                     "mlp": dict(kernels=True, mlp_kernel=True)}.items():
        fs = FastSampler(model, TOK, max_batch=3, max_len=24, **kw)
        assert (fs.decoder.mlps is not None) == (name == "mlp")
        runs[name] = fs.sample(ids, mask, max_new_tokens=8, greedy=True)
    assert all(torch.equal(runs["plain"], r) for r in runs.values())


@pytest.mark.parametrize(("n", "V", "temperature", "dtype"), [
    (7, 5000, 1.0, torch.float32),    # two forward blocks, the second partial
    (5, 4096, 0.7, torch.float32),    # exactly one block, a temperature
    (3, 300, 1.3, torch.bfloat16),    # one partial block, bf16 logits (the GPU's case)
])
def test_fused_token_logprobs_match_the_plain_chunk(n, V, temperature, dtype):
    from stonklib.kernels.logp import token_logprobs, token_logprobs_reference

    g = torch.Generator().manual_seed(V)
    logits = (torch.randn(n, V, generator=g) * 4).to(dtype)
    logits[0, :17] = float("-inf")  # masked vocabulary entries
    index = torch.randint(17, V, (n,), generator=g)
    index[1] = logits[1].float().argmax()
    weight = torch.rand(n, generator=g)
    got_in, ref_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    got, ref = token_logprobs(got_in, index, temperature), token_logprobs_reference(ref_in, index, temperature)
    assert got.dtype == torch.float32 and got.shape == (n,)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    (got * weight).sum().backward()
    (ref * weight).sum().backward()
    assert got_in.grad.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-4)
    torch.testing.assert_close(got_in.grad, ref_in.grad, **tol)
    sum_tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16 rounds each entry
    assert (got_in.grad.float().sum(1).abs() < sum_tol).all()  # a softmax's gradient sums to zero


def test_fused_token_logprobs_refuse_bad_shapes_and_dtypes():
    from stonklib.kernels.logp import token_logprobs

    with pytest.raises(ValueError, match=r"logits must be \[n, V\]"):
        token_logprobs(torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="float64"):
        token_logprobs(torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, dtype=torch.long))


@pytest.fixture
def train_kernels():
    """stonklib.kernels.train, whose kernels the tests call with ``fused=True`` on CPU (Triton's interpreter)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton's interpreter is off (a CUDA machine)")
    import stonklib.kernels.train as mod

    return mod


def _fused_vs_eager(fused, eager, inputs, dtype, tol):
    """Run both on copies of ``inputs`` (the first one or two differentiable); compare outputs and gradients."""
    a = [t.clone().requires_grad_(t.is_floating_point() and i < 1) for i, t in enumerate(inputs)]
    b = [t.clone().requires_grad_(t.is_floating_point() and i < 1) for i, t in enumerate(inputs)]
    ya, yb = fused(*a), eager(*b)
    assert ya.dtype == yb.dtype == dtype and ya.shape == yb.shape
    torch.testing.assert_close(ya, yb, **tol)
    g = torch.randn(ya.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(a[0].grad, b[0].grad, **tol)


F32, BF16 = dict(rtol=1e-5, atol=1e-5), dict(rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, F32), (torch.bfloat16, BF16)])
def test_fused_rms_norm_matches_hf_rmsnorm(train_kernels, dtype, tol):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 7, 96, generator=g) * 3).to(dtype)  # 96: a partial block
    w = (1 + torch.randn(96, generator=g) * 0.1).to(dtype)
    _fused_vs_eager(lambda x, w: train_kernels.rms_norm(x, w, 1e-6, fused=True),
                    lambda x, w: train_kernels.rms_norm_reference(x, w, 1e-6), [x, w], dtype, tol)
    assert train_kernels.rms_norm(x, w.clone().requires_grad_(), 1e-6, fused=True).grad_fn.name() != "_RMSNormBackward"


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, F32), (torch.bfloat16, BF16)])
def test_fused_swiglu_matches_silu_gating(train_kernels, dtype, tol):
    gu = (torch.randn(1, 9, 2 * 1100, generator=torch.Generator().manual_seed(2)) * 2).to(dtype)  # 2 blocks per row
    _fused_vs_eager(lambda t: train_kernels.swiglu(t, fused=True), train_kernels.swiglu_reference, [gu], dtype, tol)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, F32), (torch.bfloat16, BF16)])
def test_fused_rope_matches_rotate_half(train_kernels, dtype, tol):
    g = torch.Generator().manual_seed(3)
    T, H, KV, D = 11, 6, 2, 16
    qkv = torch.randn(T, H + 2 * KV, D, generator=g).to(dtype)
    ang = torch.arange(T)[:, None].float() * (1.0 / (100.0 ** (torch.arange(0, D, 2).float() / D)))
    ang = torch.cat([ang, ang], -1)[:, None, :]
    cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)

    def on_view(fn):  # q|k as the strided view the update passes
        return lambda t, c, s: fn(t[:, : H + KV], c, s)

    _fused_vs_eager(on_view(lambda x, c, s: train_kernels.rope(x, c, s, fused=True)), on_view(train_kernels.rope_reference),
                    [qkv, cos, sin], dtype, tol)


def test_dense_update_with_fused_kernels_matches_the_eager_layer(train_kernels):
    """The whole dense update (log-probs and LoRA gradients) with the training kernels on and off."""
    from stonklib.update.dense import DenseLogprobs
    from tests.test_fastgen import grpo_batch, lora, perturb_lora

    policy = lora(tiny_model("qwen2", seed=51, std=0.2))
    perturb_lora(policy, 52, scale=0.1)
    policy.eval()
    ids, attn, cmask = grpo_batch()
    params = [p for p in policy.parameters() if p.requires_grad]
    res = {}
    for on in (True, False):
        dense = DenseLogprobs(policy, kernels=on)
        assert dense.blocks.fused is on
        lp = dense(policy, ids, attn, cmask.shape[1], 0.7)
        res[on] = (lp.detach(), torch.autograd.grad((lp * cmask).sum(), params))
    keep = cmask.bool()
    torch.testing.assert_close(res[True][0][keep], res[False][0][keep], rtol=1e-5, atol=1e-5)
    scale = max(float(g.abs().max()) for g in res[False][1])  # ~23 here: float32 sums in another order
    for a, b in zip(res[True][1], res[False][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)


# --------------------------------------------------------------------------- seeded dropout
def test_seeded_dropout_draws_bernoulli_masks_from_its_seed_and_salt(train_kernels):
    from stonklib.kernels.dropout import seeded_dropout

    x = torch.randn(3, 1000, generator=torch.Generator().manual_seed(4))
    seed = torch.tensor([123456789], dtype=torch.int64)
    y = seeded_dropout(x, seed, 5, 0.3)
    keep = y != 0
    assert abs(keep.float().mean().item() - 0.7) < 0.03  # 3,000 draws: 3.5 standard deviations
    torch.testing.assert_close(y[keep], x[keep] * (1 / 0.7), rtol=1e-6, atol=0)
    torch.testing.assert_close(seeded_dropout(x, seed, 5, 0.3), y, rtol=0, atol=0)  # same seed and salt: same masks

    def agreement(other: torch.Tensor) -> float:
        return ((other != 0) == keep).float().mean().item()

    # Independent masks agree on p^2 + (1 - p)^2 = 58 % of the elements.
    assert agreement(seeded_dropout(x, seed, 6, 0.3)) < 0.65
    assert agreement(seeded_dropout(x, seed + 1, 5, 0.3)) < 0.65
    three = seeded_dropout(x, seed, 5, 0.3, copies=3)
    assert three.shape == (3, 3, 1000)
    torch.testing.assert_close(three[0], y, rtol=0, atol=0)  # copy 0 is the single-copy draw
    assert agreement(three[1]) < 0.65 and agreement(three[2]) < 0.65
    assert seeded_dropout(x, seed, 5, 0.0) is x


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, F32), (torch.bfloat16, BF16)])
def test_seeded_dropout_backward_regenerates_the_forward_masks(train_kernels, dtype, tol):
    from stonklib.kernels.dropout import seeded_dropout

    g = torch.Generator().manual_seed(8)
    x = torch.randn(5, 300, generator=g).to(dtype).requires_grad_()
    seed = torch.tensor([99], dtype=torch.int64)
    for copies in (1, 3):
        y = seeded_dropout(x, seed, 2, 0.25, copies=copies)
        grad = torch.randn(y.shape, generator=g).to(dtype)
        (dx,) = torch.autograd.grad(y, x, grad)
        masks = (y != 0).to(dtype)  # x has no zeros, so a zero output is a dropped element
        want = (grad * masks * (1 / 0.75)).reshape(copies, *x.shape).float().sum(0).to(dtype)
        torch.testing.assert_close(dx, want, **tol)


def test_seeded_dropout_rejects_bad_arguments(train_kernels):
    from stonklib.kernels.dropout import seeded_dropout

    x, seed = torch.ones(4), torch.tensor([1], dtype=torch.int64)
    with pytest.raises(ValueError, match="0 <= p < 1"):
        seeded_dropout(x, seed, 0, 1.0)
    with pytest.raises(ValueError, match="one int64 element"):
        seeded_dropout(x, seed.float(), 0, 0.1)
    with pytest.raises(ValueError, match="salt=-1"):
        seeded_dropout(x, seed, -1, 0.1)
