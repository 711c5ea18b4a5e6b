"""Token log-probs from logits in one read: ``log_softmax(logits / T)[index]``, forward and backward.

The plain-torch chunk (``stonklib.update.head._chunk_logp``) casts a chunk's bf16 logits to float32, divides
by the temperature, gathers, and takes ``logsumexp`` (max, subtract, exp, sum, log), each a pass over a
float32 ``[n, V]`` tensor; its backward builds the softmax again. At the ``seed`` shape (V = 151,936,
4,096 completion tokens) the update does that about 16 times per step, for ~2.4 GB of logits a time.

:func:`token_logprobs` reads the logits once in their own dtype: one program per row keeps a running
max and sum of exponentials in float32 and stores the row's log-sum-exp; the backward writes
``(onehot(index) - softmax(logits / T)) * grad / T`` in the logits' dtype (what autograd writes through
the plain chunk's float32 cast) from the logits and that log-sum-exp. The plain chunk is the reference
(:func:`token_logprobs_reference`); the tests compare both on CPU through Triton's interpreter.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stonklib.kernels._triton import tl, triton

FWD_BLOCK, BWD_BLOCK = 4096, 4096

if triton is not None:

    @triton.jit
    def _logp_fwd_kernel(logits_ptr, index_ptr, temp_ptr, logp_ptr, lse_ptr, s_l, V, BLOCK: tl.constexpr):
        """One row: online max and sum of ``exp(z - max)`` over the vocabulary (float32), then logp and lse."""
        n = tl.program_id(0)
        row = logits_ptr + n.to(tl.int64) * s_l
        temp = tl.load(temp_ptr)
        m = tl.full([BLOCK], float("-inf"), tl.float32)
        s = tl.zeros([BLOCK], tl.float32)
        for start in range(0, V, BLOCK):
            j = start + tl.arange(0, BLOCK)
            z = tl.load(row + j, mask=j < V, other=float("-inf")).to(tl.float32) / temp
            m_new = tl.maximum(m, z)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            s = s * tl.exp(m - m_safe) + tl.exp(z - m_safe)
            m = m_new
        mx = tl.max(m, 0)
        mx_safe = tl.where(mx == float("-inf"), 0.0, mx)
        lse = tl.log(tl.sum(s * tl.exp(m - mx_safe), 0)) + mx_safe
        t = tl.load(index_ptr + n)
        tl.store(logp_ptr + n, tl.load(row + t).to(tl.float32) / temp - lse)
        tl.store(lse_ptr + n, lse)

    @triton.jit
    def _logp_bwd_kernel(logits_ptr, index_ptr, temp_ptr, lse_ptr, grad_ptr, out_ptr, s_l, s_o, V,
                         BLOCK: tl.constexpr):
        """One (row, vocabulary block): ``(onehot(index) - exp(z - lse)) * grad / T`` in the logits' dtype."""
        n = tl.program_id(0)
        j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = j < V
        temp = tl.load(temp_ptr)
        z = tl.load(logits_ptr + n.to(tl.int64) * s_l + j, mask=ok, other=0.0).to(tl.float32) / temp
        g = tl.load(grad_ptr + n) / temp
        p = tl.exp(z - tl.load(lse_ptr + n))
        d = tl.where(j == tl.load(index_ptr + n), g - g * p, -g * p)
        tl.store(out_ptr + n.to(tl.int64) * s_o + j, d.to(out_ptr.dtype.element_ty), mask=ok)


def _check(logits: Tensor, index: Tensor) -> None:
    if logits.dim() != 2 or index.shape != logits.shape[:1]:
        raise ValueError(f"logits must be [n, V] and index [n]; got {tuple(logits.shape)} and {tuple(index.shape)}.")
    if logits.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"token_logprobs takes float32/bfloat16/float16 logits, got {logits.dtype}.")


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, index: Tensor, temperature: float) -> Tensor:
        logits = logits if logits.stride(-1) == 1 else logits.contiguous()
        n, V = logits.shape
        index = index.long().contiguous()
        temp = torch.full((1,), float(temperature), dtype=torch.float32, device=logits.device)
        logp = torch.empty(n, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(logp)
        if n:
            _logp_fwd_kernel[(n,)](logits, index, temp, logp, lse, logits.stride(0), V, BLOCK=FWD_BLOCK, num_warps=8)
        ctx.save_for_backward(logits, index, temp, lse)
        return logp

    @staticmethod
    def backward(ctx, grad: Tensor):
        logits, index, temp, lse = ctx.saved_tensors
        n, V = logits.shape
        out = torch.empty_like(logits)
        if n:
            _logp_bwd_kernel[(n, triton.cdiv(V, BWD_BLOCK))](
                logits, index, temp, lse, grad.float().contiguous(), out, logits.stride(0), out.stride(0), V,
                BLOCK=BWD_BLOCK, num_warps=8)
        return out, None, None


def token_logprobs(logits: Tensor, index: Tensor, temperature: float = 1.0) -> Tensor:
    """``log_softmax(logits.float() / temperature)[i, index[i]]`` as float32 [n], differentiable in ``logits``.

    ``logits`` [n, V] (float32, bf16 or fp16; last dim contiguous), ``index`` [n] integer token ids.
    Runs where :func:`stonklib.kernels.available` is true (CUDA, or CPU under Triton's interpreter).
    """
    _check(logits, index)
    return _TokenLogprobs.apply(logits, index, temperature)


def token_logprobs_reference(logits: Tensor, index: Tensor, temperature: float = 1.0) -> Tensor:
    """The plain-torch twin of :func:`token_logprobs` (``stonklib.grpo.loss``'s chunk, float32)."""
    _check(logits, index)
    z = logits.float() / temperature
    return z.gather(-1, index.long()[:, None])[:, 0] - torch.logsumexp(z, dim=-1)
