"""The dense update path (stonklib.update.dense) computes what the model's own modules compute.

Compared against :func:`shared_prefix_logprobs` over the PEFT modules (itself tested against the
full forward in test_fastgen.py): log-probs and LoRA gradients, adapter on and off, float32 and
NF4 base weights, with gradient checkpointing and with LoRA dropout.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from benchmarks.bench_common import dense_extra_bytes
from stonklib.sampling import FastSampler, UnsupportedModelError
from stonklib.sampling.weights import FusedLinear
from stonklib.update.dense import DenseBlocks, DenseLogprobs
from stonklib.update.head import completion_logprobs
from stonklib.update.pick import pick_logprobs
from stonklib.update.prefix import shared_prefix_logprobs
from tests.test_fastgen import TOK, _dequantised, grpo_batch, lora, perturb_lora, tiny_model


def _interpreted_kernels() -> bool:
    """``kernels=True`` for DenseBlocks on CPU: the fused kernels (and seeded dropout) under Triton's interpreter."""
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton's interpreter is off (a CUDA machine)")
    return True


def _lora_params(policy) -> list[torch.Tensor]:
    return [p for n, p in policy.named_parameters() if p.requires_grad]


def _logp_and_grads(fn, policy, ids, attn, cmask, temperature=0.7, use_backward=False):
    lp = fn(policy, ids, attn, cmask.shape[1], temperature)
    params = _lora_params(policy)
    if not use_backward:
        return lp.detach(), torch.autograd.grad((lp * cmask).sum(), params)
    (lp * cmask).sum().backward()  # reentrant checkpointing supports backward() only
    grads = [p.grad.clone() for p in params]
    policy.zero_grad(set_to_none=True)
    return lp.detach(), grads


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_dense_logprobs_and_gradients_match_the_module_path(kind):
    policy = lora(tiny_model(kind, seed=31, std=0.2))
    perturb_lora(policy, 32, scale=0.1)
    policy.eval()
    ids, attn, cmask = grpo_batch()
    dense = DenseLogprobs(policy)
    got_lp, got = _logp_and_grads(dense, policy, ids, attn, cmask)
    want_lp, want = _logp_and_grads(shared_prefix_logprobs, policy, ids, attn, cmask)
    keep = cmask.bool()
    torch.testing.assert_close(got_lp[keep], want_lp[keep], rtol=1e-5, atol=1e-5)
    assert len(got) == 2 * 4 * 2  # A and B of q/k/v/o in 2 layers: every LoRA parameter gets its gradient
    for a, b in zip(got, want, strict=True):
        assert a.abs().max() > 0
        # float32 sums in another order (one matmul over dense weights against the modules' own): an element
        # near zero may differ by rounding of the tensor's scale, so the absolute tolerance follows that scale.
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
    with torch.no_grad(), policy.disable_adapter():  # the reference policy: the adapters are skipped
        ref = dense(policy, ids, attn, 5, 0.7)
        torch.testing.assert_close(ref[keep], completion_logprobs(policy, ids, attn, 5, 0.7)[keep], rtol=1e-5,
                                   atol=1e-5)
    assert (ref[keep] - got_lp[keep]).abs().max() > 1e-3  # and that differs from the policy


def test_unquantised_weights_are_referenced_not_copied():
    policy = lora(tiny_model("qwen2", seed=33))
    blocks = DenseBlocks(policy)
    layers = policy.base_model.model.model.layers
    assert blocks.layers[0].down.weight.data_ptr() == layers[0].mlp.down_proj.weight.data_ptr()
    # Only stacked projections are copies: q|k|v (weights and biases) and gate|up, per layer.
    want = sum(p.numel() * 4 for layer in layers for m in ("q_proj", "k_proj", "v_proj")
               for p in getattr(layer.self_attn, m).base_layer.parameters())
    want += sum(4 * (layer.mlp.gate_proj.weight.numel() + layer.mlp.up_proj.weight.numel()) for layer in layers)
    assert dense_extra_bytes(blocks, policy) == want


def test_fast_sampler_lends_its_adapter_free_weights():
    policy = lora(tiny_model("qwen2", seed=34))
    fs = FastSampler(policy, TOK, max_batch=6, max_len=24)
    blocks = DenseBlocks(policy, fs.weights)
    for lp, sw in zip(blocks.layers, fs.weights.layers, strict=True):
        assert lp.gate_up.weight is sw.gate_up.weight and lp.down.weight is sw.down.weight  # MLP: shared
        assert lp.qkv.weight.data_ptr() != sw.qkv.weight.data_ptr()  # adapted: its own unmerged base
    att = policy.base_model.model.model.layers[0].self_attn
    # Its own: the stacked q|k|v base (o's dense weight is the model's own tensor, borrowed).
    assert dense_extra_bytes(blocks, policy, fs.weights) == 2 * 4 * sum(p.numel() for m in ("q_proj", "k_proj", "v_proj")
                                               for p in getattr(att, m).base_layer.parameters())


def test_nf4_dense_path_matches_the_exactly_dequantised_model(tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    tiny_model("qwen2", seed=35, std=0.2).save_pretrained(tmp_path)
    q = AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float32, device_map={"": "cpu"},
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32))
    policy = lora(q)
    perturb_lora(policy, 36, scale=0.1)
    policy.eval()
    ids, attn, cmask = grpo_batch(seed=37)
    fs = FastSampler(policy, TOK, max_batch=6, max_len=24)
    fn = pick_logprobs(policy, shared_prefix=True, dense=True, sampler_weights=fs.weights)
    assert isinstance(fn, DenseLogprobs)
    assert pick_logprobs(policy, shared_prefix=True, dense=True) is shared_prefix_logprobs  # NF4, nothing to lend
    got_lp, got = _logp_and_grads(fn, policy, ids, attn, cmask)

    # Exact reference: a float32 model holding the dequantised NF4 values, with the same LoRA, run by its modules.
    dense = tiny_model("qwen2", seed=35, std=0.2)
    with torch.no_grad():
        for name, mod in q.named_modules():
            if hasattr(getattr(mod, "weight", None), "quant_state") and not hasattr(mod, "base_layer"):
                target = name.replace("base_model.model.", "").replace(".base_layer", "")
                dense.get_submodule(target).weight.copy_(_dequantised(mod.weight))
    twin = lora(dense).eval()
    with torch.no_grad():
        for (n, p), (m, t) in zip(policy.named_parameters(), twin.named_parameters(), strict=True):
            assert n == m
            if "lora_" in n:
                t.copy_(p)
    want_lp, want = _logp_and_grads(shared_prefix_logprobs, twin, ids, attn, cmask)
    keep = cmask.bool()
    torch.testing.assert_close(got_lp[keep], want_lp[keep], rtol=1e-5, atol=1e-5)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # bitsandbytes' own CPU 4-bit matmul rounds through bf16, so its modules agree only roughly.
    bnb_lp, _ = _logp_and_grads(shared_prefix_logprobs, policy, ids, attn, cmask)
    assert (bnb_lp[keep] - got_lp[keep]).abs().max() < 0.1


@pytest.mark.parametrize(("reentrant", "seeded"), [(False, False), (True, False), (True, True)])
def test_dropout_masks_are_replayed_by_gradient_checkpointing(reentrant, seeded, monkeypatch):
    """With LoRA dropout on, checkpointed and plain backward passes see the same masks: identical gradients.

    Both checkpoint variants: the trainer's (reentrant, :func:`stonklib.models.enable_checkpointing`,
    whose gradients come from ``backward()``) and the non-reentrant one; and the GPU's seeded dropout
    (run here by Triton's interpreter), whose recompute regenerates the masks without generator state.
    """
    from peft import LoraConfig, get_peft_model

    from stonklib.models import enable_checkpointing

    kernels = _interpreted_kernels() if seeded else False

    policy = get_peft_model(tiny_model("qwen2", seed=38, std=0.2), LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.3, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM"))
    perturb_lora(policy, 39, scale=0.1)
    policy.train()
    ids, attn, cmask = grpo_batch(G=2, seed=40)
    dense = DenseLogprobs(policy, kernels=kernels)
    assert dense.blocks.rng_free == seeded
    torch.manual_seed(0)
    plain_lp, plain = _logp_and_grads(dense, policy, ids, attn, cmask)
    if reentrant:
        enable_checkpointing(policy)
    else:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy.train()
    if seeded:  # no generator state is saved or restored (a CUDA graph capture forbids it)
        def forbidden(*args, **kwargs):
            raise AssertionError("seeded dropout: checkpointing read the generator state")

        monkeypatch.setattr(torch, "get_rng_state", forbidden)
        monkeypatch.setattr(torch, "set_rng_state", forbidden)
    torch.manual_seed(0)
    ckpt_lp, ckpt = _logp_and_grads(dense, policy, ids, attn, cmask, use_backward=reentrant)
    torch.testing.assert_close(ckpt_lp, plain_lp, rtol=0, atol=0)
    for a, b in zip(ckpt, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    policy.eval()
    assert (dense(policy, ids, attn, 5, 0.7).detach() - plain_lp)[cmask.bool()].abs().max() > 1e-4  # dropout acted


def test_lora_variants_fall_back_to_the_module_path():
    from peft import LoraConfig, get_peft_model

    model = tiny_model("qwen2", seed=41)
    policy = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True,
                                              task_type="CAUSAL_LM"))
    with pytest.raises(UnsupportedModelError, match="DoRA"):
        DenseBlocks(policy)
    assert pick_logprobs(policy, shared_prefix=True, dense=True) is shared_prefix_logprobs



def test_in_bf16_the_dense_path_is_as_close_to_float32_as_the_module_path():
    """On the GPU both paths run in bf16 and differ from each other by bf16 rounding (1e-2 relative); here, on
    CPU in bf16, neither is further from the float32 result than the other (within 1.5x; within 2x with
    the LoRA matmuls in bf16 as well)."""
    import copy

    f32 = lora(tiny_model("qwen2", seed=50, std=0.2))
    perturb_lora(f32, 51, scale=0.1)
    f32.eval()
    bf16 = copy.deepcopy(f32)
    for n, p in bf16.named_parameters():
        if "lora_" not in n:  # the base in bf16, the adapter in float32, as add_lora leaves an NF4 model
            p.data = p.data.bfloat16()
    ids, attn, cmask = grpo_batch(seed=52)
    keep = cmask.bool()

    def run(fn, model):
        lp, grads = _logp_and_grads(fn, model, ids, attn, cmask)
        return lp[keep], torch.cat([g.flatten().float() for g in grads])

    def err(a, b):
        return float((a - b).norm() / b.norm())

    truth = run(shared_prefix_logprobs, f32)
    modules, dense = run(shared_prefix_logprobs, bf16), run(DenseLogprobs(bf16), bf16)
    for m, d, t in zip(modules, dense, truth, strict=True):
        assert 0 < err(m, t) < 0.2 and err(d, t) < 1.5 * err(m, t)
    # LoRA matmuls in bf16 too (lora_matmul_dtype="model", the trainer's default): still bf16-sized errors.
    dense_bf16 = run(DenseLogprobs(bf16, lora_matmul_dtype="model"), bf16)
    for m, d, t in zip(modules, dense_bf16, truth, strict=True):
        assert err(d, t) < 2.0 * err(m, t)


def _adapters(m: int, rank: int, width: int, seed: int, p: float) -> tuple:
    g = torch.Generator().manual_seed(seed)
    return tuple(((torch.randn(rank, width, generator=g), torch.randn(o, rank, generator=g), 0.5 + i, p),)
                 for i, o in enumerate((width, 4, 4)[:m]))


@pytest.mark.parametrize("m", [1, 3])
def test_stacked_lora_matches_module_by_module(m):
    from stonklib.update.dense import _stacked_lora_delta, _with_lora

    lora_args = _adapters(m, rank=3, width=6, seed=m, p=0.0)
    rows = tuple(b.shape[0] for ((_, b, _, _),) in lora_args)
    x, out = torch.randn(1, 9, 6), torch.randn(1, 9, sum(rows))
    want = torch.cat([F.linear(F.linear(x, a), b) * s for ((a, b, s, _),) in lora_args], -1)
    torch.testing.assert_close(_stacked_lora_delta(x, lora_args, rows), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_with_lora(out, x, lora_args, rows), out + want, rtol=1e-5, atol=1e-5)
    # Two adapters on one module, or ranks that differ, go module by module: the same sum.
    two = ((lora_args[0][0], lora_args[0][0]),) + lora_args[1:]
    torch.testing.assert_close(_with_lora(out, x, two, rows)[..., :rows[0]], out[..., :rows[0]] + 2 * want[..., :rows[0]],
                               rtol=1e-5, atol=1e-5)


def test_stacked_lora_dropout_draws_one_mask_per_module():
    from stonklib.update.dense import _stacked_lora_delta

    width = 64
    eye = torch.eye(width)
    lora_args = tuple(((eye, eye, 1.0, 0.5),) for _ in range(3))  # delta_i = dropout_i(x)
    torch.manual_seed(0)
    d = _stacked_lora_delta(torch.ones(1, 500, width), lora_args, (width,) * 3).view(500, 3, width)
    kept = d != 0
    assert set(d.unique().tolist()) == {0.0, 2.0}  # inverted dropout at p = 0.5
    assert 0.45 < kept.float().mean() < 0.55
    for i, j in ((0, 1), (0, 2), (1, 2)):  # independent masks agree on about half the entries, not all
        assert 0.45 < (kept[:, i] == kept[:, j]).float().mean() < 0.55


def test_adapters_off_is_peft_disable_adapter_without_its_module_walk():
    from stonklib.models import adapters_off

    policy = lora(tiny_model("qwen2", seed=41))
    perturb_lora(policy, 42, scale=0.5)
    policy.eval()
    ids, attn, _ = grpo_batch()
    with torch.no_grad():
        on = completion_logprobs(policy, ids, attn, 5, 1.0)
        with policy.disable_adapter():
            peft_off = completion_logprobs(policy, ids, attn, 5, 1.0)
        with adapters_off(policy):
            ours_off = completion_logprobs(policy, ids, attn, 5, 1.0)
            dense_off = DenseLogprobs(policy)(policy, ids, attn, 5, 1.0)
        assert torch.equal(ours_off, peft_off) and (ours_off - on).abs().max() > 1e-3
        torch.testing.assert_close(dense_off, peft_off, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(completion_logprobs(policy, ids, attn, 5, 1.0), on)  # restored on exit
        with pytest.raises(RuntimeError, match="boom"), adapters_off(policy):
            raise RuntimeError("boom")
        assert not any(m.disable_adapters for m in policy.modules() if hasattr(m, "lora_A"))  # restored on error
        with adapters_off(tiny_model("qwen2", seed=43)):  # no adapter: nothing to switch off
            pass


def test_sampler_refreshes_its_merged_copy_from_the_dense_update_base():
    """With the dense update built on FastSampler's weights, the sampler's q|k|v and o refresh from
    the update's unmerged base (no dequantising): the same merged weights as merging module by module."""
    policy = lora(tiny_model("qwen2", seed=44))
    fs = FastSampler(policy, TOK, max_batch=2, max_len=16)
    DenseLogprobs(policy, fs.weights)
    assert all(lw.qkv.base is not None and lw.o.base is not None for lw in fs.weights.layers)
    assert all(lw.gate_up.base is None for lw in fs.weights.layers)  # no adapter there: nothing to merge
    perturb_lora(policy, 45, scale=0.5)
    calls = []
    orig = FusedLinear.refresh
    FusedLinear.refresh = lambda self: calls.append(self) or orig(self)
    try:
        fs.refresh(policy)
    finally:
        FusedLinear.refresh = orig
    assert calls == []  # q|k|v and o of every layer in one batched refresh each
    fresh = FastSampler(policy, TOK, max_batch=2, max_len=16)  # merged module by module, base re-read
    for got, want in zip(fs.weights.layers, fresh.weights.layers, strict=True):
        for name in ("qkv", "o"):
            torch.testing.assert_close(getattr(got, name).weight, getattr(want, name).weight, rtol=1e-6, atol=1e-6)
    before = fs.weights.layers[0].qkv.weight.clone()
    with torch.no_grad():
        policy.base_model.model.model.layers[0].self_attn.k_proj.lora_B["default"].weight.add_(1.0)
    fs.refresh(policy)
    changed = (fs.weights.layers[0].qkv.weight != before).any(1)
    q, k = fs.weights.layers[0].qkv.rows[:2]
    assert not changed[:q].any() and changed[q:q + k].all() and not changed[q + k:].any()  # only k's rows moved


def test_reference_graphs_capture_on_the_second_sight_of_a_shape_and_follow_new_inputs(monkeypatch):
    """GraphedStream's bookkeeping, on CPU with a stand-in for the CUDA graph (a replay that recomputes
    into the captured output): first sight of a shape runs eagerly, the second captures, later calls
    copy their inputs into the captured buffers; at most max_graphs shapes are kept."""
    from stonklib.update.prefix import StreamGeometry, stream_logprobs
    from stonklib.update.refgraph import GraphedStream

    class FakeGraph:
        def __init__(self, fn, out):
            self.fn, self.out = fn, out

        def replay(self):
            self.out.copy_(self.fn())

    def fake_record(fn):
        out = fn()
        return FakeGraph(fn, out), out

    monkeypatch.setattr(GraphedStream, "_record", staticmethod(fake_record))
    policy = lora(tiny_model("qwen2", seed=61))
    dense = DenseLogprobs(policy)
    graphs = GraphedStream(max_graphs=1)
    ids, attn, _ = grpo_batch(seed=62)
    ids2, attn2, _ = grpo_batch(seed=63)
    with torch.no_grad():
        geo, geo2 = StreamGeometry.of(policy, ids, attn, 5), StreamGeometry.of(policy, ids2, attn2, 5)
        eager, eager2 = (stream_logprobs(policy, g, 0.7, 1024, dense.blocks) for g in (geo, geo2))
        assert graphs(policy, geo, 0.7, 1024, dense.blocks) is None and graphs.captures == 0  # first sight
        torch.testing.assert_close(graphs(policy, geo, 0.7, 1024, dense.blocks), eager)  # captured, replayed
        torch.testing.assert_close(graphs(policy, geo2, 0.7, 1024, dense.blocks), eager2)  # same shape, new inputs
        assert graphs.captures == 1 and graphs.replays == 2
        short = StreamGeometry.of(policy, ids[:, :-1], attn[:, :-1], 4)  # another shape: eager, then its own graph
        assert graphs(policy, short, 0.7, 1024, dense.blocks) is None
        graphs(policy, short, 0.7, 1024, dense.blocks)
        assert graphs.captures == 2 and len(graphs.graphs) == 1  # max_graphs=1: the first shape's graph went


class _FakeGraph:
    """A CPU stand-in for the CUDA graph of :class:`~stonklib.update.graphs.GraphedUpdate`: a replay reruns
    the captured work and writes its loss, stats and gradients into the captured tensors."""

    def __init__(self, run, out, grads, params):
        self.run, self.out, self.grads, self.params = run, out, grads, params

    def replay(self):
        for p in self.params:
            p.grad = None
        out, _ = self.run()
        self.out.copy_(out)
        for g, p in zip(self.grads, self.params, strict=True):
            g.copy_(p.grad)


def fake_update_record(run, params):
    """Stands in for ``GraphedUpdate._record`` on CPU (same return value: graph, run's output, the gradients)."""
    for p in params:
        p.grad = None
    out, keys = run()
    grads = [p.grad for p in params]
    return _FakeGraph(run, out, grads, params), (out, keys), grads


def test_graphed_update_equals_the_eager_update_with_the_same_seed(monkeypatch):
    """GraphedUpdate's bookkeeping and captured work, on CPU (seeded dropout through Triton's interpreter, a stand-in
    graph): the first sight of a shape runs eagerly, the second captures; each replay takes new inputs and a new
    dropout seed, and gives the loss, stats and gradients of the eager passes drawn with that seed."""
    from peft import LoraConfig, get_peft_model

    from stonklib.grpo.loss import grpo_loss
    from stonklib.models import adapters_off, enable_checkpointing
    from stonklib.update.graphs import GraphedUpdate

    kernels = _interpreted_kernels()
    monkeypatch.setattr(GraphedUpdate, "_record", staticmethod(fake_update_record))
    policy = get_peft_model(tiny_model("qwen2", seed=71, std=0.2), LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.3, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM"))
    perturb_lora(policy, 72, scale=0.1)
    enable_checkpointing(policy)
    policy.train()
    ids, attn, cmask = grpo_batch(G=2, seed=73)
    C, params, dense = cmask.shape[1], _lora_params(policy), DenseLogprobs(policy, kernels=kernels)
    assert not GraphedUpdate.usable(dense, torch.device("cpu"), micro_batches=1, distributed=False)  # CUDA only
    update = GraphedUpdate(dense, params)
    assert dense.ref_graphs is False  # the reference pass runs inside the update's graph

    def loss_fn(logp, ref, adv, mask):
        return grpo_loss(logp, logp.detach(), ref, adv, mask, beta=0.05, stats_as_tensors=True)

    def eager(adv):
        for p in params:
            p.grad = None
        with torch.no_grad(), adapters_off(policy):
            ref = dense(policy, ids, attn, C, 0.7)
        loss, stats = loss_fn(dense(policy, ids, attn, C, 0.7), ref, adv, cmask.float())
        loss.backward()
        return loss.detach(), stats, [p.grad.clone() for p in params]

    def graphed(adv):
        for p in params:
            p.grad = None
        res = update(policy, ids, attn, C, 0.7, (adv, cmask.float()), loss_fn, with_ref=True)
        return None if res is None else (*res, [p.grad.clone() for p in params])

    advs = torch.randn(3, ids.shape[0], generator=torch.Generator().manual_seed(74))
    assert graphed(advs[0]) is None and update.captures == 0  # first sight: the caller runs it eagerly
    for i in (1, 2):
        torch.manual_seed(10 + i)
        want = eager(advs[i])
        torch.manual_seed(10 + i)
        got = graphed(advs[i])
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-6)
        assert set(got[1]) == set(want[1])
        for k, v in want[1].items():
            torch.testing.assert_close(got[1][k], v, rtol=0, atol=1e-6)
        for a, b in zip(got[2], want[2], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert update.captures == 1 and update.replays == 2
    torch.manual_seed(99)  # another seed, other dropout masks: other gradients
    other = graphed(advs[2])
    assert max(float((a - b).abs().max()) for a, b in zip(other[2], got[2], strict=True)) > 1e-4


def test_graphed_update_needs_seeded_dropout():
    from stonklib.update.graphs import GraphedUpdate

    policy = lora(tiny_model("qwen2", seed=75))
    dense = DenseLogprobs(policy)  # on CPU the kernels are off by default: torch's generator
    with pytest.raises(ValueError, match="seeded LoRA dropout"):
        GraphedUpdate(dense, _lora_params(policy))


def test_graphed_update_pads_shorter_batches_and_grows_for_longer_ones(monkeypatch):
    """A graph captured for prompt length P and completion length C replays shorter batches padded up to them
    (the loss, stats and gradients of the unpadded eager passes; dropout off, as padding moves the seeded masks),
    and a longer batch runs eagerly until the second one, which triggers a capture covering both."""
    from stonklib.grpo.loss import grpo_loss
    from stonklib.models import adapters_off, enable_checkpointing
    from stonklib.update.graphs import GraphedUpdate

    kernels = _interpreted_kernels()
    monkeypatch.setattr(GraphedUpdate, "_record", staticmethod(fake_update_record))
    policy = lora(tiny_model("qwen2", seed=81, std=0.2))
    perturb_lora(policy, 82, scale=0.1)
    enable_checkpointing(policy)
    policy.train()
    params, dense = _lora_params(policy), DenseLogprobs(policy, kernels=kernels)
    update = GraphedUpdate(dense, params)
    ids, attn, cmask = grpo_batch(G=2, seed=83)  # prompts of 7, completions of 5 (one ends early)
    adv = torch.randn(ids.shape[0], generator=torch.Generator().manual_seed(84))

    def loss_fn(logp, ref, a, mask):
        return grpo_loss(logp, logp.detach(), ref, a, mask, beta=0.1, stats_as_tensors=True)

    def run(graphed: bool, ids, attn, cmask):
        for p in params:
            p.grad = None
        C = cmask.shape[1]
        if graphed:
            res = update(policy, ids, attn, C, 0.7, (adv, cmask.float()), loss_fn, with_ref=True)
            if res is None:
                return None
            loss, stats = res
        else:
            with torch.no_grad(), adapters_off(policy):
                ref = dense(policy, ids, attn, C, 0.7)
            loss, stats = loss_fn(dense(policy, ids, attn, C, 0.7), ref, adv, cmask.float())
            loss.backward()
        return float(loss), {k: float(v) for k, v in stats.items()}, [p.grad.clone() for p in params]

    def assert_same(got, want):
        assert abs(got[0] - want[0]) < 1e-5 and got[1].keys() == want[1].keys()
        assert all(abs(got[1][k] - want[1][k]) < 1e-5 for k in want[1])
        for a, b in zip(got[2], want[2], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

    # A shorter batch: prompts without their first column (6 long), completions without their last (4 long).
    short = (torch.cat([ids[:, 1:7], ids[:, 7:11]], 1), torch.cat([attn[:, 1:7], attn[:, 7:11]], 1), cmask[:, :4])
    assert run(True, ids, attn, cmask) is None  # first batch: eager
    assert_same(run(True, ids, attn, cmask), run(False, ids, attn, cmask))  # second: captured at (7, 5)
    assert (update.captures, update.replays) == (1, 1)
    assert_same(run(True, *short), run(False, *short))  # shorter batch: padded replay, same numbers
    assert (update.captures, update.replays) == (1, 2)
    longer = (torch.cat([ids, ids[:, -1:]], 1), torch.cat([attn, attn[:, -1:]], 1), torch.cat([cmask, cmask[:, -1:]], 1))
    assert run(True, *longer) is None  # not covered: eager, once
    assert_same(run(True, *longer), run(False, *longer))  # the second one: a new capture at (7, 6)
    assert update.captures == 2 and len(update.graphs) == 1
    assert_same(run(True, ids, attn, cmask), run(False, ids, attn, cmask))  # the old shape, padded into the new graph
    assert update.captures == 2
