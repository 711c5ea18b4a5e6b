"""Decode attention over the static KV cache: RoPE, cache write and split-KV attention in two kernels."""

from __future__ import annotations

import torch
from torch import Tensor

from stonklib.kernels._triton import tl, triton

if triton is not None:

    @triton.jit
    def _attn_split_kernel(qkv_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, valid_ptr, slot_ptr,
                           m_ptr, l_ptr, acc_ptr,
                           s_qkv, s_cs, s_kn, s_kh, s_kl, s_valid, scale,
                           H: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr, G: tl.constexpr,
                           GP: tl.constexpr, CHUNK: tl.constexpr, BLOCK_L: tl.constexpr, S: tl.constexpr):
        """One (row, kv head, chunk of cache slots): partial softmax state of the G query heads."""
        n = tl.program_id(0)
        kh = tl.program_id(1)
        s = tl.program_id(2)
        slot = tl.load(slot_ptr)
        d = tl.arange(0, D)
        swap = (d + D // 2) % D  # RoPE: x * cos + swap_halves(x) * sin_signed
        cos = tl.load(cos_ptr + n * s_cs + d).to(tl.float32)
        sin = tl.load(sin_ptr + n * s_cs + d).to(tl.float32)
        g = tl.arange(0, GP)
        gm = g < G
        row = qkv_ptr + n * s_qkv
        qh = (kh * G + g)[:, None] * D
        q = (tl.load(row + qh + d[None, :], mask=gm[:, None], other=0.0).to(tl.float32) * cos[None, :]
             + tl.load(row + qh + swap[None, :], mask=gm[:, None], other=0.0).to(tl.float32) * sin[None, :])
        q = q.to(qkv_ptr.dtype.element_ty)
        kb = row + (H + kh) * D
        k_new = (tl.load(kb + d).to(tl.float32) * cos + tl.load(kb + swap).to(tl.float32) * sin).to(qkv_ptr.dtype.element_ty)
        v_new = tl.load(row + (H + KVH + kh) * D + d)
        kc = kc_ptr + n * s_kn + kh * s_kh
        vc = vc_ptr + n * s_kn + kh * s_kh
        start = s * CHUNK
        if (slot >= start) & (slot < start + CHUNK):  # this chunk holds the new token: store it for later steps
            tl.store(kc + slot * s_kl + d, k_new)
            tl.store(vc + slot * s_kl + d, v_new)
        m_i = tl.full([GP], float("-inf"), tl.float32)
        l_i = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, D], tl.float32)
        end = tl.minimum(start + CHUNK, slot + 1)
        for j0 in range(start, end, BLOCK_L):
            j = j0 + tl.arange(0, BLOCK_L)
            inr = j < end
            vis = inr & (tl.load(valid_ptr + n * s_valid + j, mask=inr, other=0) != 0)
            new = (j == slot)[:, None]
            k = tl.load(kc + j[:, None] * s_kl + d[None, :], mask=inr[:, None] & ~new, other=0.0)
            v = tl.load(vc + j[:, None] * s_kl + d[None, :], mask=inr[:, None] & ~new, other=0.0)
            k = tl.where(new, k_new[None, :], k)
            v = tl.where(new, v_new[None, :], v)
            sc = tl.dot(q, tl.trans(k)) * scale  # [GP, BLOCK_L] float32
            sc = tl.where(vis[None, :], sc, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(sc, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(sc - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        base = (n * KVH + kh) * S + s
        tl.store(m_ptr + base * GP + g, m_i, mask=gm)
        tl.store(l_ptr + base * GP + g, l_i, mask=gm)
        tl.store(acc_ptr + (base * GP + g)[:, None] * D + d[None, :], acc, mask=gm[:, None])

    @triton.jit
    def _attn_combine_kernel(m_ptr, l_ptr, acc_ptr, out_ptr, s_out,
                             KVH: tl.constexpr, D: tl.constexpr, G: tl.constexpr, GP: tl.constexpr,
                             S: tl.constexpr, SP: tl.constexpr):
        """Merge the chunks' softmax states of one (row, query head) into its attention output."""
        n = tl.program_id(0)
        h = tl.program_id(1)
        kh = h // G
        g = h % G
        s = tl.arange(0, SP)
        d = tl.arange(0, D)
        idx = ((n * KVH + kh) * S + s) * GP + g
        m = tl.load(m_ptr + idx, mask=s < S, other=float("-inf"))
        l_s = tl.load(l_ptr + idx, mask=s < S, other=0.0)
        acc = tl.load(acc_ptr + idx[:, None] * D + d[None, :], mask=(s < S)[:, None], other=0.0)
        m_max = tl.max(m, 0)
        w = tl.where(m == float("-inf"), 0.0, tl.exp(m - m_max))
        o = tl.sum(acc * w[:, None], 0) / tl.sum(l_s * w, 0)
        tl.store(out_ptr + n * s_out + h * D + d, o.to(out_ptr.dtype.element_ty))


# (chunk, block_l, num_warps): the fastest of benchmarks/decode_kernels.py's sweep on an H100 at the seed shape.
ATTENTION_CONFIG = (64, 32, 4)


def decode_attention(qkv: Tensor, cos: Tensor, sin: Tensor, k_cache: Tensor, v_cache: Tensor, slot_valid: Tensor,
                     slot: Tensor, n_heads: int, n_kv_heads: int, scale: float, chunk: int | None = None,
                     block_l: int | None = None, num_warps: int | None = None) -> Tensor:
    """Attention output [N, H*D] for one new token per row; writes its rotated k and v into slot ``slot``.

    ``qkv`` [N, (H + 2*KVH) * D] is the fused projection before RoPE; ``cos``/``sin`` [N, D] are
    :meth:`Decoder.rope_step`'s (sign-folded sin); ``k_cache``/``v_cache`` [N, KVH, L, D] (last dim
    contiguous); ``slot_valid`` [N, L] bool; ``slot`` a 1-element int64 tensor. Fixed launch shapes
    and no host sync, so it can be captured in a CUDA graph. ``chunk`` (cache slots per program),
    ``block_l`` (slots per inner step) and ``num_warps`` default to :data:`ATTENTION_CONFIG`.
    """
    chunk = chunk or ATTENTION_CONFIG[0]
    block_l = block_l or ATTENTION_CONFIG[1]
    num_warps = num_warps or ATTENTION_CONFIG[2]
    n, kvh, length, d = k_cache.shape
    g = n_heads // n_kv_heads
    gp = max(16, triton.next_power_of_2(g))  # tl.dot needs 16 rows
    s = triton.cdiv(length, chunk)
    m = torch.empty(n, kvh, s, gp, dtype=torch.float32, device=qkv.device)
    l_ = torch.empty_like(m)
    acc = torch.empty(n, kvh, s, gp, d, dtype=torch.float32, device=qkv.device)
    out = torch.empty(n, n_heads * d, dtype=qkv.dtype, device=qkv.device)
    cos, sin = cos.reshape(n, d), sin.reshape(n, d)
    _attn_split_kernel[(n, kvh, s)](
        qkv, cos, sin, k_cache, v_cache, slot_valid, slot, m, l_, acc,
        qkv.stride(0), cos.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), slot_valid.stride(0),
        scale, H=n_heads, KVH=kvh, D=d, G=g, GP=gp, CHUNK=chunk, BLOCK_L=block_l, S=s, num_warps=num_warps)
    _attn_combine_kernel[(n, n_heads)](m, l_, acc, out, out.stride(0), KVH=kvh, D=d, G=g, GP=gp, S=s,
                                       SP=triton.next_power_of_2(s))
    return out


def decode_attention_reference(qkv: Tensor, cos: Tensor, sin: Tensor, k_cache: Tensor, v_cache: Tensor,
                               slot_valid: Tensor, slot: Tensor, n_heads: int, n_kv_heads: int, scale: float) -> Tensor:
    """:func:`decode_attention` in plain torch (float32 softmax), for tests."""
    n, kvh, length, d = k_cache.shape
    g = n_heads // n_kv_heads
    qkv = qkv.view(n, n_heads + 2 * kvh, d)
    cos, sin = cos.reshape(n, 1, d), sin.reshape(n, 1, d)
    qk = qkv[:, : n_heads + kvh]
    qk = (qk.float() * cos.float() + torch.cat([qk[..., d // 2:], qk[..., : d // 2]], -1).float() * sin.float()).to(qkv.dtype)
    q, k, v = qk[:, :n_heads], qk[:, n_heads:], qkv[:, n_heads + kvh:]
    k_cache.index_copy_(2, slot, k.unsqueeze(2))
    v_cache.index_copy_(2, slot, v.unsqueeze(2))
    visible = slot_valid & (torch.arange(length, device=qkv.device) <= slot)
    sc = torch.einsum("nkgd,nkld->nkgl", q.view(n, kvh, g, d).float(), k_cache.float()) * scale
    sc = sc.masked_fill(~visible[:, None, None, :], float("-inf"))
    out = torch.einsum("nkgl,nkld->nkgd", sc.softmax(-1), v_cache.float())
    return out.reshape(n, -1).to(qkv.dtype)
