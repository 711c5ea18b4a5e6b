"""Fused elementwise kernels for the update's layer (forward and backward): RMSNorm, SwiGLU, RoPE.

In eager torch each of these is a chain of kernels over [T, hidden] or [T, intermediate] tensors,
most of them float32 round trips (HF's RMSNorm: cast up, normalise, cast down, scale; SwiGLU: SiLU,
then the product; RoPE on q and k: two products, a negation, a concatenation and a sum), and their
backward passes are longer chains. At the ``seed`` shape the update runs each layer three times
(reference, policy, checkpoint recompute) plus its backward pass, over 6,144 tokens, so those chains
are thousands of launches and a good part of the update's GPU time (``benchmarks/RESULTS.md``).

Each kernel reads its inputs once and writes its output once, in float32 registers, and rounds as the
eager chain's last step rounds:

- :func:`rms_norm`: ``weight * (x.float() * rsqrt(mean(x^2) + eps)).to(x.dtype)`` (HF's
  Llama/Qwen2 RMSNorm). The weight is frozen in LoRA training: no gradient for it (a weight that
  requires one takes the eager path);
- :func:`swiglu`: ``silu(gate) * up`` with ``gate | up`` the two halves of one matmul's output;
- :func:`rope`: ``x * cos + rotate_half(x) * sin`` over the heads of a strided q|k view, into a
  contiguous tensor.

Each takes ``fused``: the caller's decision (:func:`stonklib.kernels.wanted`; the trainer's
``triton_kernels`` switch); without it, or for float64, the eager chain runs. The tests run them on CPU
through Triton's interpreter against the eager chains (``*_reference``), values and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from stonklib.kernels._triton import tl, triton

if triton is not None:

    @triton.jit
    def _rms_fwd_kernel(x_ptr, w_ptr, y_ptr, rstd_ptr, s_x, s_y, N, eps, BLOCK: tl.constexpr):
        r = tl.program_id(0).to(tl.int64)
        c = tl.arange(0, BLOCK)
        ok = c < N
        x = tl.load(x_ptr + r * s_x + c, mask=ok, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, 0) / N + eps)
        xh = (x * rstd).to(y_ptr.dtype.element_ty).to(tl.float32)
        w = tl.load(w_ptr + c, mask=ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + r * s_y + c, (w * xh).to(y_ptr.dtype.element_ty), mask=ok)
        tl.store(rstd_ptr + r, rstd)

    @triton.jit
    def _rms_bwd_kernel(x_ptr, w_ptr, rstd_ptr, g_ptr, dx_ptr, s_x, s_g, s_dx, N, BLOCK: tl.constexpr):
        r = tl.program_id(0).to(tl.int64)
        c = tl.arange(0, BLOCK)
        ok = c < N
        x = tl.load(x_ptr + r * s_x + c, mask=ok, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + r)
        w = tl.load(w_ptr + c, mask=ok, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + r * s_g + c, mask=ok, other=0.0).to(tl.float32)
        gxh = (g * w).to(dx_ptr.dtype.element_ty).to(tl.float32)  # the product's gradient, in the input dtype
        xh = x * rstd
        dx = rstd * (gxh - xh * (tl.sum(gxh * xh, 0) / N))
        tl.store(dx_ptr + r * s_dx + c, dx.to(dx_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _swiglu_fwd_kernel(gu_ptr, h_ptr, s_gu, s_h, N, BLOCK: tl.constexpr):
        r = tl.program_id(0).to(tl.int64)
        c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = c < N
        a = tl.load(gu_ptr + r * s_gu + c, mask=ok, other=0.0).to(tl.float32)
        u = tl.load(gu_ptr + r * s_gu + N + c, mask=ok, other=0.0).to(tl.float32)
        s = (a * tl.sigmoid(a)).to(h_ptr.dtype.element_ty).to(tl.float32)  # silu(gate), rounded as F.silu's output
        tl.store(h_ptr + r * s_h + c, (s * u).to(h_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _swiglu_bwd_kernel(gu_ptr, g_ptr, dgu_ptr, s_gu, s_g, s_dgu, N, BLOCK: tl.constexpr):
        r = tl.program_id(0).to(tl.int64)
        c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = c < N
        a = tl.load(gu_ptr + r * s_gu + c, mask=ok, other=0.0).to(tl.float32)
        u = tl.load(gu_ptr + r * s_gu + N + c, mask=ok, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + r * s_g + c, mask=ok, other=0.0).to(tl.float32)
        sig = tl.sigmoid(a)
        s = (a * sig).to(dgu_ptr.dtype.element_ty).to(tl.float32)
        ds = (g * u).to(dgu_ptr.dtype.element_ty).to(tl.float32)  # the product's gradient for silu(gate)
        da = ds * sig * (1.0 + a * (1.0 - sig))
        tl.store(dgu_ptr + r * s_dgu + c, da.to(dgu_ptr.dtype.element_ty), mask=ok)
        tl.store(dgu_ptr + r * s_dgu + N + c, (g * s).to(dgu_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _rope_kernel(x_ptr, cos_ptr, sin_ptr, y_ptr, s_xt, s_yt, s_cs, HEADS: tl.constexpr, HP: tl.constexpr,
                     D: tl.constexpr, BACKWARD: tl.constexpr):
        """One token, all its heads: ``x * cos + swap(x) * sin_signed`` (forward) or its transpose (backward)."""
        t = tl.program_id(0).to(tl.int64)
        h = tl.arange(0, HP)[:, None]
        d = tl.arange(0, D)[None, :]
        swap = (d + D // 2) % D
        ok = h < HEADS
        cos = tl.load(cos_ptr + t * s_cs + d).to(tl.float32)
        sin = tl.load(sin_ptr + t * s_cs + d).to(tl.float32)
        sin = tl.where(d < D // 2, -sin, sin)  # rotate_half(x) = swap(x) * [-1 ... -1, 1 ... 1]
        x = tl.load(x_ptr + t * s_xt + h * D + d, mask=ok, other=0.0).to(tl.float32)
        if BACKWARD:  # d out_i / d x_j: cos_j on the diagonal, sin_signed_i at j = swap(i); swap is an involution
            sin_s = tl.load(sin_ptr + t * s_cs + swap).to(tl.float32)
            sin_s = tl.where(swap < D // 2, -sin_s, sin_s)
            xs = tl.load(x_ptr + t * s_xt + h * D + swap, mask=ok, other=0.0).to(tl.float32)
            y = x * cos + xs * sin_s
        else:
            xs = tl.load(x_ptr + t * s_xt + h * D + swap, mask=ok, other=0.0).to(tl.float32)
            y = x * cos + xs * sin
        tl.store(y_ptr + t * s_yt + h * D + d, y.to(y_ptr.dtype.element_ty), mask=ok)


def _rows(t: Tensor) -> Tensor:
    """``t`` as [rows, last] with a contiguous last dim (a view when possible)."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        x2 = _rows(x)
        n, N = x2.shape
        y = torch.empty((n, N), dtype=x.dtype, device=x.device)
        rstd = torch.empty(n, dtype=torch.float32, device=x.device)
        block = triton.next_power_of_2(N)
        if n:
            _rms_fwd_kernel[(n,)](x2, weight, y, rstd, x2.stride(0), y.stride(0), N, eps, BLOCK=block,
                                  num_warps=8 if block >= 2048 else 4)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.shape = x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, g: Tensor):
        x2, weight, rstd = ctx.saved_tensors
        n, N = x2.shape
        g2 = _rows(g)
        dx = torch.empty_like(x2)
        block = triton.next_power_of_2(N)
        if n:
            _rms_bwd_kernel[(n,)](x2, weight, rstd, g2, dx, x2.stride(0), g2.stride(0), dx.stride(0), N,
                                  BLOCK=block, num_warps=8 if block >= 2048 else 4)
        return dx.view(ctx.shape), None, None


def rms_norm(x: Tensor, weight: Tensor, eps: float, fused: bool = False) -> Tensor:
    """HF's RMSNorm (:func:`rms_norm_reference`), in one kernel each way when ``fused``."""
    if not fused or weight.requires_grad or x.dtype == torch.float64:
        return rms_norm_reference(x, weight, eps)
    return _RMSNorm.apply(x, weight, eps)


def rms_norm_reference(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``weight * rms_norm(x.float()).to(x.dtype)``, the float32 part as one fused op."""
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


_SWIGLU_BLOCK = 1024


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gu: Tensor) -> Tensor:
        gu2 = _rows(gu)
        n, N = gu2.shape[0], gu2.shape[1] // 2
        h = torch.empty((n, N), dtype=gu.dtype, device=gu.device)
        if n:
            _swiglu_fwd_kernel[(n, triton.cdiv(N, _SWIGLU_BLOCK))](gu2, h, gu2.stride(0), h.stride(0), N,
                                                                   BLOCK=_SWIGLU_BLOCK)
        ctx.save_for_backward(gu2)
        ctx.shape = gu.shape
        return h.view(*gu.shape[:-1], N)

    @staticmethod
    def backward(ctx, g: Tensor):
        (gu2,) = ctx.saved_tensors
        n, N = gu2.shape[0], gu2.shape[1] // 2
        g2 = _rows(g)
        dgu = torch.empty_like(gu2)
        if n:
            _swiglu_bwd_kernel[(n, triton.cdiv(N, _SWIGLU_BLOCK))](gu2, g2, dgu, gu2.stride(0), g2.stride(0),
                                                                   dgu.stride(0), N, BLOCK=_SWIGLU_BLOCK)
        return dgu.view(ctx.shape)


def swiglu(gate_up: Tensor, fused: bool = False) -> Tensor:
    """``silu(gate) * up`` for ``gate_up = [gate | up]`` (last dim), in one kernel each way when ``fused``."""
    if not fused or gate_up.dtype == torch.float64:
        return swiglu_reference(gate_up)
    return _SwiGLU.apply(gate_up)


def swiglu_reference(gate_up: Tensor) -> Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        T, heads, D = x.shape
        if x.stride(2) != 1 or x.stride(1) != D:
            x = x.contiguous()
        cos2, sin2 = cos.reshape(T, D), sin.reshape(T, D)
        y = torch.empty((T, heads, D), dtype=x.dtype, device=x.device)
        if T:
            _rope_kernel[(T,)](x, cos2, sin2, y, x.stride(0), y.stride(0), cos2.stride(0), HEADS=heads,
                               HP=triton.next_power_of_2(heads), D=D, BACKWARD=False)
        ctx.save_for_backward(cos2, sin2)
        return y

    @staticmethod
    def backward(ctx, g: Tensor):
        cos2, sin2 = ctx.saved_tensors
        T, heads, D = g.shape
        g = g.contiguous()
        dx = torch.empty_like(g)
        if T:
            _rope_kernel[(T,)](g, cos2, sin2, dx, g.stride(0), dx.stride(0), cos2.stride(0), HEADS=heads,
                               HP=triton.next_power_of_2(heads), D=D, BACKWARD=True)
        return dx, None, None


def rope(x: Tensor, cos: Tensor, sin: Tensor, fused: bool = False) -> Tensor:
    """RoPE over ``x`` [T, heads, D] (any strides, last dim contiguous) with ``cos``/``sin`` [T, 1, D]; contiguous result.

    One kernel each way when ``fused``; otherwise :func:`rope_reference`.
    """
    if not fused or x.dtype == torch.float64 or x.shape[-1] % 2:
        return rope_reference(x, cos, sin)
    return _Rope.apply(x, cos, sin)


def rotate_half(x: Tensor) -> Tensor:
    """HF's RoPE helper: ``[x1, x2] -> [-x2, x1]`` over the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_reference(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``x * cos + rotate_half(x) * sin``, as HF's Llama/Qwen2 apply RoPE."""
    return x * cos + rotate_half(x) * sin
