"""Dropout whose masks are a pure function of a seed held on the device: the same masks on every recompute.

``torch.nn.functional.dropout`` draws from torch's generator, so activation checkpointing must save
the generator's state before each checkpointed layer and restore it for the recompute. Reading and
setting that state is not allowed while a CUDA graph is being captured, which is what kept the
update's policy pass and its backward out of a graph (:mod:`stonklib.update.graphs`).

:func:`seeded_dropout` draws the keep mask of element ``i`` of copy ``c`` as
``philox(seed + salt * SALT_STRIDE, c * n + i) >= p`` (Triton's ``tl.rand``), where ``seed`` is an int64 tensor
on the device and ``salt`` a per-call constant (layer and projection). The recompute regenerates the
masks from the same numbers, so checkpointing needs no generator state; changing the seed tensor in
place (outside a graph, once per update) gives a captured graph new masks at every replay. The
backward pass regenerates the masks instead of storing them.

Values are rounded as ``F.dropout``'s are: ``x * (1 / (1 - p))`` in float32, cast to ``x``'s dtype
once. Each mask element is an independent Bernoulli(1 - p) draw, as with ``F.dropout``; the draws
differ from torch's generator's, so results match ``F.dropout`` in distribution, not bit for bit.
``copies`` > 1 gives ``copies`` independent masks over one input (the stacked q|k|v adapters), whose
backward sums the copies' gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stonklib.kernels._triton import tl, triton

_BLOCK = 1024
#: Philox keys of neighbouring salts lie this far apart (a prime, so no two salts' streams line up).
SALT_STRIDE = 1_000_003

if triton is not None:

    @triton.jit
    def _dropout_kernel(x_ptr, y_ptr, seed_ptr, key_offset, n, p, scale, COPIES: tl.constexpr, BACKWARD: tl.constexpr,
                        BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < n
        seed = tl.load(seed_ptr) + key_offset  # salt * SALT_STRIDE: neighbouring salts' philox keys far apart
        if BACKWARD:  # x: the copies' gradients [COPIES, n]; y: their masked, scaled sum [n]
            acc = tl.zeros((BLOCK,), dtype=tl.float32)
            for c in tl.static_range(COPIES):
                g = tl.load(x_ptr + c * n + offs, mask=ok, other=0.0).to(tl.float32)
                keep = tl.rand(seed, c * n + offs) >= p
                acc += tl.where(keep, g * scale, 0.0).to(y_ptr.dtype.element_ty).to(tl.float32)
            tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=ok)
        else:  # x: the input [n]; y: COPIES masked copies [COPIES, n]
            x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
            for c in tl.static_range(COPIES):
                keep = tl.rand(seed, c * n + offs) >= p
                tl.store(y_ptr + c * n + offs, tl.where(keep, x * scale, 0.0).to(y_ptr.dtype.element_ty), mask=ok)


def _launch(src: Tensor, dst: Tensor, seed: Tensor, salt: int, n: int, p: float, copies: int, backward: bool) -> None:
    if n:
        _dropout_kernel[(triton.cdiv(n, _BLOCK),)](src, dst, seed, salt * SALT_STRIDE, n, p, 1.0 / (1.0 - p), COPIES=copies,
                                                   BACKWARD=backward, BLOCK=_BLOCK)


class _SeededDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, seed: Tensor, salt: int, p: float, copies: int) -> Tensor:
        xc = x.contiguous()
        n = xc.numel()
        if copies * n >= 2**31:
            raise ValueError(f"seeded_dropout: {copies} x {n} elements overflow the kernel's 32-bit offsets; "
                             "split the input into smaller calls.")
        y = torch.empty((copies, *x.shape), dtype=x.dtype, device=x.device)
        _launch(xc, y, seed, salt, n, p, copies, backward=False)
        ctx.save_for_backward(seed)
        ctx.salt, ctx.p, ctx.copies, ctx.shape = salt, p, copies, x.shape
        return y if copies > 1 else y[0]

    @staticmethod
    def backward(ctx, g: Tensor):
        (seed,) = ctx.saved_tensors
        gc = g.contiguous()
        dx = torch.empty(ctx.shape, dtype=g.dtype, device=g.device)
        _launch(gc, dx, seed, ctx.salt, dx.numel(), ctx.p, ctx.copies, backward=True)
        return dx, None, None, None, None


def seeded_dropout(x: Tensor, seed: Tensor, salt: int, p: float, copies: int = 1) -> Tensor:
    """Dropout of ``x`` with masks drawn from ``(seed, salt)`` (see the module docstring).

    ``seed`` is a one-element int64 tensor on ``x``'s device; ``salt`` a non-negative int that tells
    the calls sharing one seed apart. Returns ``x``'s shape for ``copies == 1``, else
    ``[copies, *x.shape]`` with an independent mask per copy. ``p == 0`` returns ``x`` (or its copies).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability p={p}: use 0 <= p < 1.")
    if seed.numel() != 1 or seed.dtype != torch.int64 or seed.device != x.device:
        raise ValueError(f"seed must be one int64 element on {x.device}, got {seed.dtype} {tuple(seed.shape)} "
                         f"on {seed.device}.")
    if salt < 0 or copies < 1:
        raise ValueError(f"salt={salt}, copies={copies}: use salt >= 0 and copies >= 1.")
    if p == 0.0:
        return x if copies == 1 else x.expand(copies, *x.shape)
    return _SeededDropout.apply(x, seed, salt, p, copies)
