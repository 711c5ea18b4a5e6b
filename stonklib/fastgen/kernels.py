"""Triton kernels for the CUDA decode step: fused decode attention, and the top-p draw.

Why: at the ``seed`` shape (16 rows, Qwen2.5-1.5B) the plain-torch decoder spends ~0.6 ms of a
3.2 ms decode step in ~9 attention kernels per layer (RoPE, two cache writes, a masked batched
matmul, softmax, casts, a second batched matmul; ``benchmarks/RESULTS.md``, decode profile).

:func:`decode_attention` does RoPE on q and the new k, writes the new k/v into the cache, and
attends over the cache in one split-KV kernel plus one combine kernel per layer. Only cache slots
up to the current one are read (the plain decoder reads all ``max_len`` slots and masks).

:func:`sample_top_p` is the sampler's sort-free nucleus draw (``_sample_top_p``: k candidates from
the full softmax, the first inside the nucleus wins) in four kernels that read the [N, V] logits
twice; the plain-torch version materialises k x N x V noise and spends ~0.4 ms per token step on it.

The attention has a plain-torch twin (:func:`decode_attention_reference`) with the same semantics;
the tests compare them, and check the sampler's distribution, on CPU through Triton's interpreter
(``TRITON_INTERPRET=1``). Triton is optional: without it (or without CUDA) the sampler keeps its
plain-torch path.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:  # optional: only the CUDA fast path needs it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where Triton is absent
    triton = None


def available(device: torch.device) -> bool:
    """True when the Triton kernels can run on ``device`` (CUDA, or CPU under ``TRITON_INTERPRET=1``)."""
    import os

    if triton is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


# ---------------------------------------------------------------------------------------- attention
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


# ---------------------------------------------------------------------------------------- top-p sampling
if triton is not None:

    @triton.jit
    def _sample_chunk_kernel(logits_ptr, temp_ptr, seed_ptr, m_ptr, s_ptr, amax_ptr, cval_ptr, cidx_ptr, s_l, V,
                             S: tl.constexpr, K: tl.constexpr, CHUNK: tl.constexpr):
        """One (row, vocabulary chunk): softmax statistics, the argmax, and K candidates (exponential race).

        Candidate r of a row is ``argmax_j p_j / E_jr`` with E ~ Exp(1), which picks token j with
        probability p_j. Four exponentials come from one Philox call (``rand4x``); each candidate's
        chunk winner is stored as ``log(p_j / E_jr)`` on the row's scale, so chunks compare directly.
        """
        n = tl.program_id(0)
        c = tl.program_id(1)
        j = c * CHUNK + tl.arange(0, CHUNK)
        ok = j < V
        z = tl.load(logits_ptr + n * s_l + j, mask=ok, other=float("-inf")) / tl.load(temp_ptr)
        m = tl.max(z, 0)
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        e = tl.exp(z - m_safe)  # p_j up to the row's normaliser
        out = n * S + c
        tl.store(m_ptr + out, m)
        tl.store(s_ptr + out, tl.sum(e, 0))
        tl.store(amax_ptr + out, tl.argmax(z, 0) + c * CHUNK)
        seed = tl.load(seed_ptr)
        for q in tl.static_range(K // 4):
            u0, u1, u2, u3 = tl.rand4x(seed, ((n * (K // 4) + q) * V + j).to(tl.uint32))
            at = out * K + q * 4
            _race(e, u0, ok, m_safe, cval_ptr + at, cidx_ptr + at, c * CHUNK)
            _race(e, u1, ok, m_safe, cval_ptr + at + 1, cidx_ptr + at + 1, c * CHUNK)
            _race(e, u2, ok, m_safe, cval_ptr + at + 2, cidx_ptr + at + 2, c * CHUNK)
            _race(e, u3, ok, m_safe, cval_ptr + at + 3, cidx_ptr + at + 3, c * CHUNK)

    @triton.jit
    def _race(e, u, ok, m_safe, val_ptr, idx_ptr, first):
        """Store the chunk's winner of ``e / Exp(1)`` (log scale, row-comparable) and its token id."""
        w = tl.where(ok, e / -tl.log(u), -1.0)
        tl.store(val_ptr, tl.log(tl.max(w, 0)) + m_safe)
        tl.store(idx_ptr, tl.argmax(w, 0) + first)

    @triton.jit
    def _sample_pick_kernel(logits_ptr, temp_ptr, m_ptr, s_ptr, amax_ptr, cval_ptr, cidx_ptr, stat_ptr, cand_ptr,
                            pc_ptr, s_l, S: tl.constexpr, SP: tl.constexpr, K: tl.constexpr):
        """One row: merge the chunks into max/normaliser, the K candidates and their probabilities."""
        n = tl.program_id(0)
        c = tl.arange(0, SP)
        cm = c < S
        m = tl.load(m_ptr + n * S + c, mask=cm, other=float("-inf"))
        mx = tl.max(m, 0)
        w = tl.where(m == float("-inf"), 0.0, tl.exp(m - mx))
        z_sum = tl.sum(tl.load(s_ptr + n * S + c, mask=cm, other=0.0) * w, 0)
        tl.store(stat_ptr + n * 3, mx)
        tl.store(stat_ptr + n * 3 + 1, z_sum)
        best_chunk = tl.argmax(m, 0)
        tl.store(stat_ptr + n * 3 + 2, tl.load(amax_ptr + n * S + best_chunk).to(tl.float32))
        k = tl.arange(0, K)
        cv = tl.load(cval_ptr + (n * S + c[:, None]) * K + k[None, :], mask=cm[:, None], other=float("-inf"))
        win = tl.argmax(cv, 0)  # [K]: the chunk holding each candidate's overall maximum
        cand = tl.load(cidx_ptr + (n * S + win) * K + k)
        z = tl.load(logits_ptr + n * s_l + cand) / tl.load(temp_ptr)
        tl.store(cand_ptr + n * K + k, cand)
        tl.store(pc_ptr + n * K + k, tl.exp(z - mx) / z_sum)

    @triton.jit
    def _sample_mass_kernel(logits_ptr, temp_ptr, stat_ptr, pc_ptr, ahead_ptr, s_l, V,
                            S: tl.constexpr, K: tl.constexpr, CHUNK: tl.constexpr):
        """One (row, chunk): for each candidate, the probability mass of tokens strictly more likely than it."""
        n = tl.program_id(0)
        c = tl.program_id(1)
        j = c * CHUNK + tl.arange(0, CHUNK)
        z = tl.load(logits_ptr + n * s_l + j, mask=j < V, other=float("-inf")) / tl.load(temp_ptr)
        p = tl.exp(z - tl.load(stat_ptr + n * 3)) / tl.load(stat_ptr + n * 3 + 1)
        k = tl.arange(0, K)
        pc = tl.load(pc_ptr + n * K + k)
        ahead = tl.sum(tl.where(p[None, :] > pc[:, None], p[None, :], 0.0), 1)
        tl.store(ahead_ptr + (n * S + c) * K + k, ahead)

    @triton.jit
    def _sample_accept_kernel(top_p_ptr, stat_ptr, cand_ptr, ahead_ptr, tok_ptr,
                              S: tl.constexpr, SP: tl.constexpr, K: tl.constexpr):
        """One row: the first candidate inside the nucleus, else the most likely token."""
        n = tl.program_id(0)
        c = tl.arange(0, SP)
        k = tl.arange(0, K)
        ahead = tl.sum(tl.load(ahead_ptr + (n * S + c[:, None]) * K + k[None, :], mask=(c < S)[:, None], other=0.0), 0)
        top_p = tl.load(top_p_ptr)
        ok = ahead < tl.where(top_p >= 1.0, float("inf"), top_p)  # top_p = 1: every candidate
        first = tl.min(tl.where(ok, k, K), 0)
        cand = tl.load(cand_ptr + n * K + k)
        pick = tl.sum(tl.where(k == first, cand, 0), 0)
        best = tl.load(stat_ptr + n * 3 + 2).to(tl.int64)
        tl.store(tok_ptr + n, tl.where(first < K, pick, best))


def sample_top_p(logits: Tensor, temperature: Tensor, top_p: Tensor, seed: Tensor, k: int = 8,
                 chunk: int = 1024) -> Tensor:
    """One token per row of float32 ``logits`` [N, V], as :func:`stonklib.fastgen.sampler._sample_top_p` draws it.

    The same rejection scheme (``k`` candidates from the full softmax, the first inside the top-p
    nucleus is taken, else the most likely token), in four kernels that read the logits twice:
    per-chunk statistics and exponential-race candidates, a per-row merge, the mass ahead of each
    candidate, the choice. ``k`` is rounded up to a power of two, at least 4. Randomness is Philox keyed by ``seed`` (a 1-element int64 device
    tensor the caller advances between steps) and each (row, candidate, token), so a captured
    CUDA graph replays fresh draws. ``temperature``/``top_p`` are 1-element device tensors.
    """
    n, v = logits.shape
    k = max(4, triton.next_power_of_2(k))  # candidates come four per Philox call
    s = triton.cdiv(v, chunk)
    sp = triton.next_power_of_2(s)
    dev = logits.device
    f32 = dict(dtype=torch.float32, device=dev)
    m, z = torch.empty(n, s, **f32), torch.empty(n, s, **f32)
    amax = torch.empty(n, s, dtype=torch.int64, device=dev)
    cval, cidx = torch.empty(n, s, k, **f32), torch.empty(n, s, k, dtype=torch.int64, device=dev)
    stat, pc = torch.empty(n, 3, **f32), torch.empty(n, k, **f32)
    cand = torch.empty(n, k, dtype=torch.int64, device=dev)
    ahead = torch.empty(n, s, k, **f32)
    tok = torch.empty(n, dtype=torch.int64, device=dev)
    sl = logits.stride(0)
    _sample_chunk_kernel[(n, s)](logits, temperature, seed, m, z, amax, cval, cidx, sl, v, S=s, K=k, CHUNK=chunk)
    _sample_pick_kernel[(n,)](logits, temperature, m, z, amax, cval, cidx, stat, cand, pc, sl, S=s, SP=sp, K=k)
    _sample_mass_kernel[(n, s)](logits, temperature, stat, pc, ahead, sl, v, S=s, K=k, CHUNK=chunk)
    _sample_accept_kernel[(n,)](top_p, stat, cand, ahead, tok, S=s, SP=sp, K=k)
    return tok
