"""A decode step's MLP for few rows: gate|up with SiLU-gating fused, down with the residual fused."""

from __future__ import annotations

import torch
from torch import Tensor

from stonklib.kernels._triton import tl, triton

if triton is not None:

    @triton.jit
    def _skinny_mm_kernel(x_ptr, w1_ptr, w2_ptr, res_ptr, ws_ptr, out_ptr, M, N, K, s_x, s_w, s_res, s_out,
                          GATED: tl.constexpr, RESIDUAL: tl.constexpr, SPLIT_K: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """x [M, K] @ W^T for a few rows M: silu(x W1^T) * (x W2^T) when GATED, else x W1^T (+ res).

        Weight tiles [BLOCK_N, BLOCK_K] are contiguous along k. With SPLIT_K > 1 each program sums a
        slice of k into the float32 workspace ``ws`` (atomics); :func:`_skinny_finish_kernel` adds
        the residual, rounds and re-zeroes the workspace.
        """
        pid = tl.program_id(0)
        pk = tl.program_id(1)
        cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        cm = cols < N
        rows = tl.arange(0, BLOCK_M)
        rm = rows < M
        kk = tl.arange(0, BLOCK_K)
        per = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
        acc1 = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        acc2 = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(pk * per, tl.minimum(K, (pk + 1) * per), BLOCK_K):
            k = k0 + kk
            km = k < K
            x = tl.load(x_ptr + rows[:, None] * s_x + k[None, :], mask=rm[:, None] & km[None, :], other=0.0)
            woff = cols[:, None] * s_w + k[None, :]
            wm = cm[:, None] & km[None, :]
            acc1 = tl.dot(x, tl.trans(tl.load(w1_ptr + woff, mask=wm, other=0.0)), acc1)
            if GATED:
                acc2 = tl.dot(x, tl.trans(tl.load(w2_ptr + woff, mask=wm, other=0.0)), acc2)
        om = rm[:, None] & cm[None, :]
        dt = out_ptr.dtype.element_ty
        if SPLIT_K > 1:
            tl.atomic_add(ws_ptr + rows[:, None] * N + cols[None, :], acc1, mask=om)
        else:
            if GATED:  # round as the eager ops do: each linear -> bf16, silu -> bf16, product -> bf16
                gate = acc1.to(dt).to(tl.float32)
                out = (gate * tl.sigmoid(gate)).to(dt).to(tl.float32) * acc2.to(dt).to(tl.float32)
            else:
                out = acc1
                if RESIDUAL:
                    out += tl.load(res_ptr + rows[:, None] * s_res + cols[None, :], mask=om, other=0.0).to(tl.float32)
            tl.store(out_ptr + rows[:, None] * s_out + cols[None, :], out.to(dt), mask=om)

    @triton.jit
    def _skinny_finish_kernel(ws_ptr, res_ptr, out_ptr, N, s_res, s_out, RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
        """out = (ws + res) rounded to out's dtype; ws back to zero for the next call."""
        r = tl.program_id(0)
        c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        cm = c < N
        y = tl.load(ws_ptr + r * N + c, mask=cm, other=0.0)
        if RESIDUAL:
            y += tl.load(res_ptr + r * s_res + c, mask=cm, other=0.0).to(tl.float32)
        tl.store(out_ptr + r * s_out + c, y.to(out_ptr.dtype.element_ty), mask=cm)
        tl.store(ws_ptr + r * N + c, tl.zeros([BLOCK], tl.float32), mask=cm)


# (block_n, block_k, split_k, num_warps, num_stages) per matmul: benchmarks/decode_kernels.py --sweep on an H100.
MLP_CONFIG = {"gate_up": (32, 64, 1, 4, 4), "down": (32, 128, 8, 4, 3)}


class SkinnyMLP:
    """The decode step's MLP for few rows: ``x + down(silu(gate(h)) * up(h))`` in two or three kernels.

    Reads the same dense bf16 weights as the plain path (``gate_up`` stacked [2I, H], ``down``
    [H, I], no bias); the float32 split-K workspace is allocated once and kept zeroed.
    """

    def __init__(self, w_gate_up: Tensor, w_down: Tensor, max_rows: int, config: dict | None = None):
        self.inter = w_gate_up.shape[0] // 2
        self.w_gate, self.w_up = w_gate_up[: self.inter], w_gate_up[self.inter:]
        self.w_down = w_down
        self.config = dict(MLP_CONFIG, **(config or {}))
        self.ws = torch.zeros(max_rows, w_down.shape[0], dtype=torch.float32, device=w_down.device)

    def gate_up(self, h: Tensor, config: tuple | None = None) -> Tensor:
        return _skinny(h, self.w_gate, self.w_up, None, self.ws, config or self.config["gate_up"])

    def down(self, act: Tensor, residual: Tensor | None, config: tuple | None = None) -> Tensor:
        return _skinny(act, self.w_down, None, residual, self.ws, config or self.config["down"])

    def __call__(self, x: Tensor, h: Tensor) -> Tensor:
        """``x`` the residual stream [M, H], ``h`` its post-attention RMSNorm."""
        return self.down(self.gate_up(h), x)


def _skinny(x: Tensor, w1: Tensor, w2: Tensor | None, res: Tensor | None, ws: Tensor, config: tuple) -> Tensor:
    block_n, block_k, split_k, warps, stages = config
    m, k = x.shape
    n = w1.shape[0]
    if w2 is not None and split_k > 1:
        raise ValueError("the gated matmul needs whole sums: split_k must be 1")
    if m > ws.shape[0]:
        raise ValueError(f"{m} rows exceed the workspace's {ws.shape[0]}")
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    res_t = res if res is not None else out
    _skinny_mm_kernel[(triton.cdiv(n, block_n), split_k)](
        x, w1, w2 if w2 is not None else w1, res_t, ws, out, m, n, k, x.stride(0), w1.stride(0), res_t.stride(0),
        out.stride(0), GATED=w2 is not None, RESIDUAL=res is not None, SPLIT_K=split_k,
        BLOCK_M=max(16, triton.next_power_of_2(m)), BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
        num_stages=stages)
    if split_k > 1:
        _skinny_finish_kernel[(m, triton.cdiv(n, 512))](ws, res_t, out, n, res_t.stride(0), out.stride(0),
                                                        RESIDUAL=res is not None, BLOCK=512)
    return out


def skinny_mlp_reference(x: Tensor, h: Tensor, w_gate_up: Tensor, w_down: Tensor) -> Tensor:
    """What the plain decoder computes for the MLP (``_post_attention``'s second half), for tests."""
    gate, up = torch.nn.functional.linear(h, w_gate_up).chunk(2, dim=-1)
    return x + torch.nn.functional.linear(torch.nn.functional.silu(gate) * up, w_down)
