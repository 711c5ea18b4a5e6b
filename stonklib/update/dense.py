"""The update's forward passes over dense base weights: the same layer, without NF4 or PEFT in the loop.

In the module path (:class:`~stonklib.update.prefix.ModuleBlocks`) each of a layer's seven
projections goes through bitsandbytes (dequantise the NF4 weight, then matmul; in the backward pass
dequantise again) and, for the adapted ones, PEFT (copy the result, cast the input, dropout, A, B,
scale, cast, add). The GRPO update runs the network three times (reference, policy, checkpoint
recompute) plus a backward pass, so that per-call work adds up.

:class:`DenseBlocks` computes the same layer with plain matmuls:

- **base weights** are dense tensors in the compute dtype, dequantised once (NF4 dequantisation is
  deterministic, so the matmul sees exactly the values bitsandbytes would produce each call). Modules
  without an adapter share :class:`~stonklib.sampling.fast.FastSampler`'s dense copy (the MLP: about
  2.3 GB on a 1.5B model, stored once); adapted modules keep their own unmerged base copy (q/k/v/o:
  about 0.3 GB on a 1.5B model);
- **LoRA** is applied unmerged from the adapter's own parameters, as PEFT does: the input cast to the
  matmul dtype, one dropout mask per adapted module (the module's dropout, honouring its training
  flag; with the kernels on, drawn from :attr:`DenseBlocks.seed` by :func:`~stonklib.kernels.dropout.seeded_dropout`,
  so checkpoint recompute and CUDA graphs need no generator state; elsewhere from torch's generator),
  ``B(A(x)) * scaling`` cast back and added. The matmul dtype is the adapter's (float32, PEFT's
  eager numerics) or, with ``lora_matmul_dtype="model"`` (the trainer's default), the base weights'
  (bf16 on GPU, as under autocast); q|k|v's three adapters run as one dropout, one batched matmul and
  one block-diagonal matmul. Gradients reach the same ``lora_A``/``lora_B``
  parameters, so the optimizer, DDP and checkpoints see no difference;
- ``model.disable_adapter()`` is honoured at call time (the reference pass).

``q``, ``k`` and ``v`` are one matmul over the stacked weights. With the kernels on (CUDA, the
``triton_kernels`` switch) the RMSNorms, SwiGLU (over one gate|up matmul) and RoPE are fused Triton
kernels, forward and backward (:mod:`stonklib.kernels.train`); elsewhere gate and up are two matmuls (contiguous outputs keep
SiLU and the product vectorised) and each RMSNorm's float32 part is one ``F.rms_norm``. In bf16 the
results differ from the module path's by rounding only (``benchmarks/RESULTS.md`` has the bf16 figures;
on CPU in bf16 neither path is further from float32 than the other).
:class:`DenseLogprobs` plugs the blocks into :func:`~stonklib.update.prefix.shared_prefix_logprobs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stonklib.kernels import wanted as wanted_kernels
from stonklib.kernels.dropout import seeded_dropout
from stonklib.kernels.train import rms_norm, swiglu
from stonklib.sampling.weights import (
    ArchSpec,
    DecoderWeights,
    FusedLinear,
    _plain_linear,
    block_scale,
    causal_lm,
    lora_parts,
    stacked_dense,
)
from stonklib.update.head import CHUNK_TOKENS
from stonklib.update.prefix import Attention, StreamGeometry, attend_shared_prefix, stream_logprobs
from stonklib.update.refgraph import GraphedStream


class DenseProjection:
    """Linear layers of one input stacked on the output dim: dense base weight and bias, plus each module's LoRA."""

    def __init__(self, modules: list[nn.Module], dtype: torch.dtype, device: torch.device,
                 shared: FusedLinear | None = None):
        self.rows = tuple(_plain_linear(m).out_features for m in modules)
        self.loras = [lora_parts(m) for m in modules]
        usable = (shared is not None and not shared.adapted and shared.weight.dtype == dtype
                  and shared.weight.device == device and tuple(shared.rows) == self.rows)
        if usable:  # FastSampler's copy of base weights without adapters: the same values, stored once
            self.weight, self.bias = shared.weight, shared.bias
            return
        self.weight, self.bias, _ = stacked_dense(modules, dtype, device, own=False)  # frozen: borrow when possible

    def lora_args(self) -> tuple[tuple[tuple, ...], ...] | None:
        """Per stacked module, its active adapters' :meth:`~stonklib.sampling.weights.LoraPart.args`; None when no adapter is active."""
        args = tuple(tuple(p.args() for p in parts if p.active()) for parts in self.loras)
        return args if any(args) else None


def _dropout(h: Tensor, p: float, seed: Tensor | None, salt: int, copies: int = 1) -> Tensor:
    """LoRA dropout of ``h`` (``copies`` independent masks when > 1): torch's generator, or ``(seed, salt)``'s masks."""
    if seed is not None:
        return seeded_dropout(h, seed, salt, p, copies)
    return F.dropout(h.expand(copies, *h.shape) if copies > 1 else h, p, training=True)


def _with_lora(out: Tensor, x: Tensor, lora: tuple | None, rows: tuple[int, ...], dtype: torch.dtype | None = None,
               seed: Tensor | None = None, salt: int = 0) -> Tensor:
    """``out`` plus each stacked module's LoRA output, computed as PEFT does.

    Per adapter: ``x`` cast to the matmul dtype (``dtype``; None: the adapter's, as PEFT), dropout (a
    mask of its own per module, as PEFT draws one per module), ``B(A(.)) * scaling``, cast to
    ``out``'s dtype. ``A`` and ``B`` are cast to that dtype too (differentiably: their gradients
    arrive in their own dtype, as under autocast). Modules without an active adapter add nothing. With
    a ``seed`` tensor the masks come from :func:`~stonklib.kernels.dropout.seeded_dropout`
    (salts ``salt`` to ``salt + 63``), so a checkpoint recompute needs no generator state. The
    usual case (one adapter per module, one rank, dtype and dropout rate) runs as a few batched ops
    (:func:`_stacked_lora_delta`); anything else module by module.
    """
    if lora is None:
        return out
    if all(len(parts) == 1 for parts in lora) and len({(a.dtype, a.shape[0], p) for ((a, _, _, p),) in lora}) == 1:
        return out + _stacked_lora_delta(x, lora, rows, dtype, seed, salt).to(out.dtype)
    deltas, cast, k = [], {}, 0
    for parts, r in zip(lora, rows, strict=True):
        d = None
        for a, b, scaling, p in parts:
            dt = dtype or a.dtype
            h = cast.setdefault(dt, x.to(dt))  # one cast shared by the stacked modules
            if p > 0:
                h = _dropout(h, p, seed, salt + k)
            k += 1
            o = (F.linear(F.linear(h, a.to(dt)), b.to(dt)) * scaling).to(out.dtype)
            d = o if d is None else d + o
        deltas.append(d if d is not None else out.new_zeros(*out.shape[:-1], r))
    return out + (torch.cat(deltas, -1) if len(deltas) > 1 else deltas[0])


def _stacked_lora_delta(x: Tensor, lora: tuple, rows: tuple[int, ...], dtype: torch.dtype | None = None,
                        seed: Tensor | None = None, salt: int = 0) -> Tensor:
    """The ``m`` stacked modules' ``B_i(A_i(dropout_i(x))) * s_i``, side by side [..., sum(rows)], in ``dtype`` (None: the adapters').

    One cast of ``x``; one dropout over ``m`` broadcast copies of it (independent masks, one per
    module) and one batched matmul with the stacked ``A``s (without dropout, one matmul with the
    concatenated ``A``s); then one matmul with the block-diagonal of the scaled ``B``s (built as the
    stacked ``B``s times a cached 0/scaling pattern). The same
    values as module by module (float32 rounding aside), in about a third of the kernels.
    """
    a0, _, _, p = lora[0][0]
    dt = dtype or a0.dtype
    h = x.reshape(-1, x.shape[-1]).to(dt)
    m, r, n = len(lora), a0.shape[0], h.shape[0]
    a_all = torch.cat([a for ((a, _, _, _),) in lora]).to(dt)  # [m * r, in]
    if p > 0 and m > 1:
        z = torch.bmm(_dropout(h, p, seed, salt, copies=m), a_all.view(m, r, -1).transpose(1, 2))
        z = z.transpose(0, 1).reshape(n, m * r)
    else:
        z = F.linear(_dropout(h, p, seed, salt) if p > 0 else h, a_all)
    # The block-diagonal of the scaled Bs, [sum(rows), m * r]: B_i's rows times s_i in column block i.
    b_cat = torch.cat([b for ((_, b, _, _),) in lora]).to(dt)
    scale = block_scale(rows, tuple(s for ((_, _, s, _),) in lora), dt, b_cat.device)
    b_all = (b_cat.unsqueeze(1) * scale).view(sum(rows), m * r)
    return F.linear(z, b_all).view(*x.shape[:-1], sum(rows))


#: Dropout salts per layer: q|k|v's adapters take ``index * SALTS_PER_LAYER + k``, o's ``... + O_SALT + k``.
SALTS_PER_LAYER = 128
O_SALT = 64


@dataclass
class DenseLayer:
    """One layer's projections over dense base weights, plus its two RMSNorm weights."""

    ln_attn: Tensor
    qkv: DenseProjection
    o: DenseProjection
    ln_mlp: Tensor
    gate_up: DenseProjection
    down: DenseProjection


def dense_layer(x: Tensor, att: Attention, w: DenseLayer, *, eps: float, lora_dtype: torch.dtype | None = None,
                dropout_seed: Tensor | None = None, salt: int = 0, fused: bool = False) -> Tensor:
    """One Llama/Qwen2 layer over the flat shared-prefix stream, as a pure function of tensors.

    ``x`` is [1, T, hidden] and ``att`` the pass's :class:`~stonklib.update.prefix.Attention`; the
    LoRA matmuls run in ``lora_dtype`` (None: the adapters'). Its only randomness is the LoRA dropout:
    drawn from torch's generator (activation checkpointing then saves and restores the generator's
    state to replay the same masks), or, with a ``dropout_seed`` tensor, from ``(dropout_seed, salt ...)``
    (q|k|v from ``salt``, o from ``salt + O_SALT``), the same masks on every call. ``fused`` runs the
    RMSNorms, SwiGLU and RoPE as Triton kernels.
    """
    h = rms_norm(x, w.ln_attn, eps, fused)
    qkv = _with_lora(F.linear(h, w.qkv.weight, w.qkv.bias), h, w.qkv.lora_args(), w.qkv.rows, lora_dtype,
                     dropout_seed, salt)
    a = attend_shared_prefix(qkv, att)[None]
    x = x + _with_lora(F.linear(a, w.o.weight, w.o.bias), a, w.o.lora_args(), w.o.rows, lora_dtype, dropout_seed,
                       salt + O_SALT)
    h = rms_norm(x, w.ln_mlp, eps, fused)
    gate_up_w, gate_up_b = w.gate_up.weight, w.gate_up.bias
    if fused:  # one gate|up matmul, SiLU-gating fused (forward and backward)
        act = swiglu(F.linear(h, gate_up_w, gate_up_b), fused=True)
    else:
        # gate and up as two matmuls over the halves of the stacked weight: contiguous outputs, so SiLU,
        # the product and their backward run vectorised (on the column halves of one output they do not).
        w_gate, w_up = gate_up_w.chunk(2)
        b_gate, b_up = gate_up_b.chunk(2) if gate_up_b is not None else (None, None)
        act = F.silu(F.linear(h, w_gate, b_gate)) * F.linear(h, w_up, b_up)
    return x + F.linear(act, w.down.weight, w.down.bias)


class DenseBlocks:
    """A Llama/Qwen2 layer's projections, norms and MLP over dense base weights (see the module docstring).

    ``shared`` is a :class:`~stonklib.sampling.weights.DecoderWeights` (FastSampler's) whose
    adapter-free projections are reused instead of copied. ``lora_matmul_dtype``: ``"adapter"`` runs
    the LoRA matmuls in the adapters' dtype (float32, as PEFT's eager modules), ``"model"`` in the base
    weights' dtype (bf16 on GPU, as under autocast); parameters and gradients keep their dtype.
    """

    def __init__(self, model, shared: DecoderWeights | None = None, lora_matmul_dtype: str = "adapter",
                 kernels: bool | None = None):
        lm = causal_lm(model)
        self.spec = ArchSpec.from_model(model)
        emb = lm.get_input_embeddings().weight
        dtype, device = emb.dtype, emb.device
        if lora_matmul_dtype not in ("model", "adapter"):
            raise ValueError(f"lora_matmul_dtype={lora_matmul_dtype!r}: use model or adapter.")
        self.lora_dtype = dtype if lora_matmul_dtype == "model" else None
        self.fused = wanted_kernels(kernels, device)
        # Seeded dropout where the fused kernels run: checkpoint recompute and CUDA graphs need no
        # generator state. Elsewhere torch's generator, as PEFT draws its masks.
        self.seed = torch.zeros(1, dtype=torch.int64, device=device) if self.fused else None
        self.layers: list[DenseLayer] = []
        for i, layer in enumerate(lm.model.layers):
            att, mlp = layer.self_attn, layer.mlp
            sw = shared.layers[i] if shared is not None else None
            self.layers.append(DenseLayer(
                ln_attn=layer.input_layernorm.weight,
                qkv=DenseProjection([att.q_proj, att.k_proj, att.v_proj], dtype, device, sw and sw.qkv),
                o=DenseProjection([att.o_proj], dtype, device, sw and sw.o),
                ln_mlp=layer.post_attention_layernorm.weight,
                gate_up=DenseProjection([mlp.gate_proj, mlp.up_proj], dtype, device, sw and sw.gate_up),
                down=DenseProjection([mlp.down_proj], dtype, device, sw and sw.down)))
            if sw is not None:  # the sampler's merged copies refresh from this unmerged base (no dequantising)
                for mine, theirs in ((self.layers[-1].qkv, sw.qkv), (self.layers[-1].o, sw.o)):
                    if theirs.adapted and mine.weight is not theirs.weight and theirs.weight.shape == mine.weight.shape \
                            and theirs.weight.dtype == mine.weight.dtype and tuple(theirs.rows) == mine.rows:
                        theirs.base = mine.weight

    def layer(self, index: int, layer, x: Tensor, att: Attention) -> Tensor:
        """Layer ``index``'s output for ``x`` [1, T, hidden] (the interface of ``ModuleBlocks.layer``)."""
        return dense_layer(x, att, self.layers[index], eps=self.spec.rms_eps, lora_dtype=self.lora_dtype,
                           dropout_seed=self.seed, salt=index * SALTS_PER_LAYER, fused=self.fused)

    @property
    def rng_free(self) -> bool:
        """True when the layers draw no numbers from torch's generator (seeded dropout): checkpointing need not save its state."""
        return self.seed is not None

    def reseed(self) -> None:
        """New dropout masks for the next pass: a fresh seed from torch's (CPU) generator, written into the device tensor.

        No host sync, and outside a CUDA graph, so a graph that reads the tensor sees the new seed.
        """
        if self.seed is not None:
            self.seed.fill_(int(torch.randint(0, 2**60, (1,)).item()))

    def adapters_off(self) -> bool:
        """True when no projection has an active adapter (the reference policy): the pass has no LoRA and no dropout."""
        return all(proj.lora_args() is None for lp in self.layers for proj in (lp.qkv, lp.o, lp.gate_up, lp.down))


class DenseLogprobs:
    """:func:`~stonklib.update.prefix.shared_prefix_logprobs` over :class:`DenseBlocks` (same signature).

    ``kernels`` as :class:`DenseBlocks`; ``ref_graphs``: replay the reference pass from a CUDA graph
    once its shape repeats (:mod:`stonklib.update.refgraph`; CUDA only).
    """

    __name__ = "dense_shared_prefix_logprobs"

    def __init__(self, model, shared: DecoderWeights | None = None, lora_matmul_dtype: str = "adapter",
                 kernels: bool | None = None, ref_graphs: bool = True):
        self.blocks = DenseBlocks(model, shared, lora_matmul_dtype, kernels)
        self.graphs = GraphedStream()
        self.ref_graphs = ref_graphs  # off while the whole update runs from a graph (stonklib.update.graphs)

    def __call__(self, model, input_ids: Tensor, attention_mask: Tensor, n_completion: int,
                 temperature: float = 1.0, chunk_tokens: int = CHUNK_TOKENS) -> Tensor:
        """As :func:`~stonklib.update.prefix.shared_prefix_logprobs`; grad-free passes with every adapter
        off (the reference pass) replay a CUDA graph once their shape repeats (:mod:`stonklib.update.refgraph`)."""
        geo = StreamGeometry.of(model, input_ids, attention_mask, n_completion)
        if torch.is_grad_enabled():
            self.blocks.reseed()  # new dropout masks per policy pass (its checkpoint recompute reuses them)
        elif self.ref_graphs and input_ids.is_cuda and self.blocks.adapters_off():
            out = self.graphs(model, geo, temperature, chunk_tokens, self.blocks)
            if out is not None:
                return out
        return stream_logprobs(model, geo, temperature, chunk_tokens, self.blocks)
