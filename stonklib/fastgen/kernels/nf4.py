"""The decode step's MLP straight from bitsandbytes' 4-bit weights: a quarter of the bytes of the bf16 copy.

At the ``seed`` shape the MLP is three quarters of the bytes a decode step reads (2.3 of 3.1 GB
for Qwen2.5-1.5B). The MLP carries no LoRA in this project's setup, so its weights are exactly
the NF4 base: :class:`NF4MLP` reads the packed 4-bit codes (0.5 bytes per weight) and the block
scales, and dequantises in registers exactly as ``bitsandbytes.functional.dequantize_4bit`` does
(``code[c] * absmax`` in float32, rounded to the activations' dtype), then multiplies as
:class:`~stonklib.fastgen.kernels.SkinnyMLP` does (gate|up with SiLU-gating, down with the
residual; split-K sums through a float32 workspace).

Layout (bitsandbytes 4-bit, ``Params4bit``): the [N, K] weight flattened row-major, two codes per
byte (the even element in the high nibble), one ``absmax`` per ``blocksize`` consecutive elements
(for double quantisation, itself stored as 8-bit codes; :class:`NF4Weight` dequantises those once,
as ``dequantize_4bit`` does on every call). The kernel needs ``K % blocksize == 0`` (each block
inside one row); :meth:`NF4Weight.from_module` returns None otherwise and the caller keeps the
dense path.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from stonklib.fastgen.kernels._triton import tl, triton
from stonklib.fastgen.kernels.mlp import finish_split_k

if triton is not None:

    @triton.jit
    def _nf4_block_dot(codes_ptr, absmax_ptr, table_ptr, off, blk, cm, xe, xo, acc,
                       W_LEFT: tl.constexpr, PAIR: tl.constexpr):
        """acc + x @ W_block^T for one quantisation block of BLOCK_N weight rows (xe/xo: x's even/odd k).

        ``W_LEFT``: the weight tile is the left operand (acc is [BLOCK_N, BLOCK_M], W @ x^T), so a large
        BLOCK_N fills the MMA's M. ``PAIR``: one lookup per byte in the 256-entry table of code pairs
        (``table_ptr`` int64), else two in the 16-entry code book."""
        byte = tl.load(codes_ptr + off, mask=cm[:, None], other=0).to(tl.int32)
        scale = tl.load(absmax_ptr + blk, mask=cm, other=0.0)[:, None]
        if PAIR:
            v = tl.load(table_ptr + byte)
            even = (v & 0xFFFFFFFF).to(tl.uint32).to(tl.float32, bitcast=True)
            odd = (v >> 32).to(tl.uint32).to(tl.float32, bitcast=True)
        else:
            even = tl.load(table_ptr + (byte >> 4))
            odd = tl.load(table_ptr + (byte & 15))
        hi = (even * scale).to(xe.dtype)  # elements k = 0, 2, 4, ...
        lo = (odd * scale).to(xe.dtype)  # elements k = 1, 3, 5, ...
        if W_LEFT:
            acc = tl.dot(lo, tl.trans(xo), tl.dot(hi, tl.trans(xe), acc))
        else:
            acc = tl.dot(xo, tl.trans(lo), tl.dot(xe, tl.trans(hi), acc))
        return acc

    @triton.jit
    def _nf4_mm_kernel(x_ptr, c1_ptr, a1_ptr, c2_ptr, a2_ptr, table_ptr, res_ptr, ws_ptr, out_ptr, M, N, K,
                       s_x, s_res, s_out, GATED: tl.constexpr, RESIDUAL: tl.constexpr, SPLIT_K: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, QB: tl.constexpr, W_LEFT: tl.constexpr,
                       PAIR: tl.constexpr):
        """x [M, K] @ W^T for a few rows M, W in 4-bit blocks of QB: silu(x W1^T) * (x W2^T) when GATED,
        else x W1^T (+ res). With SPLIT_K > 1 the sums go to the float32 workspace ``ws`` ([M, 2N] when
        GATED: gate, then up) and :func:`~stonklib.fastgen.kernels.mlp.finish_split_k` completes them."""
        pid = tl.program_id(0)
        pk = tl.program_id(1)
        cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        cm = cols < N
        rows = tl.arange(0, BLOCK_M)
        rm = rows < M
        j = tl.arange(0, QB // 2)
        kq = tl.arange(0, QB)
        n_blk = K // QB
        per = tl.cdiv(n_blk, SPLIT_K)
        if W_LEFT:
            acc1 = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
            acc2 = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
        else:
            acc1 = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            acc2 = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for b in range(pk * per, tl.minimum(n_blk, (pk + 1) * per)):
            x = tl.load(x_ptr + rows[:, None] * s_x + (b * QB + kq)[None, :], mask=rm[:, None], other=0.0)
            xe, xo = tl.split(tl.reshape(x, [BLOCK_M, QB // 2, 2]))
            off = cols[:, None] * (K // 2) + (b * (QB // 2) + j)[None, :]
            blk = cols * n_blk + b
            acc1 = _nf4_block_dot(c1_ptr, a1_ptr, table_ptr, off, blk, cm, xe, xo, acc1, W_LEFT, PAIR)
            if GATED:
                acc2 = _nf4_block_dot(c2_ptr, a2_ptr, table_ptr, off, blk, cm, xe, xo, acc2, W_LEFT, PAIR)
        if W_LEFT:
            acc1 = tl.trans(acc1)
            acc2 = tl.trans(acc2)
        om = rm[:, None] & cm[None, :]
        dt = out_ptr.dtype.element_ty
        if SPLIT_K > 1:
            width = 2 * N if GATED else N
            tl.atomic_add(ws_ptr + rows[:, None] * width + cols[None, :], acc1, mask=om)
            if GATED:
                tl.atomic_add(ws_ptr + rows[:, None] * width + N + cols[None, :], acc2, mask=om)
        else:
            if GATED:  # round as the eager ops do: each linear -> dtype, silu -> dtype, product -> dtype
                gate = acc1.to(dt).to(tl.float32)
                out = (gate * tl.sigmoid(gate)).to(dt).to(tl.float32) * acc2.to(dt).to(tl.float32)
            else:
                out = acc1
                if RESIDUAL:
                    out += tl.load(res_ptr + rows[:, None] * s_res + cols[None, :], mask=om, other=0.0).to(tl.float32)
            tl.store(out_ptr + rows[:, None] * s_out + cols[None, :], out.to(dt), mask=om)


@dataclass(frozen=True)
class NF4Weight:
    """One bitsandbytes 4-bit weight [N, K] as the kernel reads it (no copy of the codes)."""

    codes: Tensor   # uint8 [N * K / 2], two codes per byte, the even element in the high nibble
    absmax: Tensor  # float32 [N * K / blocksize]
    table: Tensor   # float32 [16], the 4-bit code book (NF4 or FP4)
    shape: tuple[int, int]
    blocksize: int
    dtype: torch.dtype  # what dequantize_4bit returns for it (the model's compute dtype)

    @classmethod
    def from_module(cls, mod: nn.Module) -> NF4Weight | None:
        """The 4-bit weight of a (PEFT-wrapped) ``bnb.nn.Linear4bit``; None for other layers, biased layers,
        layers with a LoRA adapter, or block layouts the kernel does not take (``K % blocksize``)."""
        if hasattr(mod, "lora_A") and len(mod.lora_A):
            return None
        lin = mod.get_base_layer() if hasattr(mod, "get_base_layer") else mod
        w = lin.weight
        qs = getattr(w, "quant_state", None)
        if qs is None or getattr(lin, "bias", None) is not None or len(qs.shape) != 2 or qs.shape[1] % qs.blocksize:
            return None
        return cls.from_quantized(w.data, qs)

    @classmethod
    def from_quantized(cls, data: Tensor, qs) -> NF4Weight:
        """From ``bitsandbytes.functional.quantize_4bit``'s packed data and ``QuantState``."""
        import bitsandbytes.functional as bnbf

        if getattr(qs, "packing_format_for_cpu", False):  # bitsandbytes' CPU backend repacks at the first forward
            data, qs = bnbf._convert_weight_packed_for_cpu_inverse(data.clone(), copy.deepcopy(qs))
        absmax = qs.absmax
        if qs.nested:  # what dequantize_4bit does on every call, once
            absmax = bnbf.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
        return cls(codes=data.view(torch.uint8).reshape(-1), absmax=absmax.float().contiguous(),
                   table=qs.code.to(device=data.device, dtype=torch.float32).contiguous(),
                   shape=(int(qs.shape[0]), int(qs.shape[1])), blocksize=int(qs.blocksize), dtype=qs.dtype)

    @property
    def pair_table(self) -> Tensor:
        """int64 [256]: for a byte, the float32 bits of its even element's code (low word) and odd one's (high)."""
        b = torch.arange(256, device=self.table.device)
        return torch.stack([self.table[b >> 4], self.table[b & 15]], -1).contiguous().view(torch.int64).view(256)

    def dequantize(self, dtype: torch.dtype) -> Tensor:
        """The dense weight [N, K], computed as the kernel does (and as ``dequantize_4bit``): for tests."""
        idx = torch.stack([self.codes >> 4, self.codes & 15], -1).reshape(-1).long()
        values = self.table[idx].view(-1, self.blocksize) * self.absmax.view(-1, 1)
        return values.view(self.shape).to(dtype)


# (block_n, split_k, num_warps, num_stages, w_left, pair) per matmul; benchmarks/decode_kernels.py --sweep picks them.
NF4_CONFIG = {"gate_up": (64, 2, 4, 2, True, False), "down": (64, 14, 4, 2, True, False)}


class NF4MLP:
    """:class:`~stonklib.fastgen.kernels.SkinnyMLP` over 4-bit weights: ``x + down(silu(gate(h)) * up(h))``."""

    def __init__(self, gate: NF4Weight, up: NF4Weight, down: NF4Weight, max_rows: int, config: dict | None = None):
        if gate.shape != up.shape or down.shape != (gate.shape[1], gate.shape[0]):
            raise ValueError(f"MLP shapes do not fit: gate {gate.shape}, up {up.shape}, down {down.shape}")
        self.gate, self.up, self.down_w = gate, up, down
        self.config = dict(NF4_CONFIG, **(config or {}))
        self.ws = torch.zeros(max_rows, 2 * gate.shape[0], dtype=torch.float32, device=gate.codes.device)

    def gate_up(self, h: Tensor, config: tuple | None = None) -> Tensor:
        return nf4_mm(h, self.gate, self.up, None, self.ws, config or self.config["gate_up"])

    def down(self, act: Tensor, residual: Tensor | None, config: tuple | None = None) -> Tensor:
        return nf4_mm(act, self.down_w, None, residual, self.ws, config or self.config["down"])

    def __call__(self, x: Tensor, h: Tensor) -> Tensor:
        """``x`` the residual stream [M, H], ``h`` its post-attention RMSNorm."""
        return self.down(self.gate_up(h), x)


def nf4_mm(x: Tensor, w1: NF4Weight, w2: NF4Weight | None, res: Tensor | None, ws: Tensor, config: tuple) -> Tensor:
    """``silu(x @ w1^T) * (x @ w2^T)`` (``w2`` given) or ``x @ w1^T + res``, for few rows of ``x``."""
    block_n, split_k, warps, stages, w_left, pair = config
    m, k = x.shape
    n = w1.shape[0]
    if w1.shape[1] != k:
        raise ValueError(f"x has {k} columns, the weight {w1.shape}")
    if m > ws.shape[0] or (w2 is not None and split_k > 1 and ws.shape[1] < 2 * n) or ws.shape[1] < n:
        raise ValueError(f"{m} rows x {n} outputs exceed the workspace {tuple(ws.shape)}")
    x = x.contiguous()
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    res_t = res if res is not None else out
    w2_ = w2 if w2 is not None else w1
    _nf4_mm_kernel[(triton.cdiv(n, block_n), split_k)](
        x, w1.codes, w1.absmax, w2_.codes, w2_.absmax, w1.pair_table if pair else w1.table, res_t, ws, out, m, n, k,
        x.stride(0), res_t.stride(0), out.stride(0), GATED=w2 is not None, RESIDUAL=res is not None,
        SPLIT_K=split_k, BLOCK_M=max(16, triton.next_power_of_2(m)), BLOCK_N=block_n, QB=w1.blocksize,
        W_LEFT=w_left, PAIR=pair, num_warps=warps, num_stages=stages)
    if split_k > 1:
        finish_split_k(ws, res_t if res is not None else None, out, gated=w2 is not None)
    return out


def nf4_mlp_reference(x: Tensor, h: Tensor, gate: NF4Weight, up: NF4Weight, down: NF4Weight) -> Tensor:
    """What the plain decoder computes over the dequantised weights (for tests)."""
    f = torch.nn.functional
    g, u = f.linear(h, gate.dequantize(h.dtype)), f.linear(h, up.dequantize(h.dtype))
    return x + f.linear(f.silu(g) * u, down.dequantize(h.dtype))
