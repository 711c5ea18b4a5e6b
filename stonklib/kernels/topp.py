"""The sort-free top-p draw in four kernels (exponential race, Philox keyed per step)."""

from __future__ import annotations

import torch
from torch import Tensor

from stonklib.kernels._triton import tl, triton

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
    def _sample_accept_kernel(logits_ptr, temp_ptr, top_p_ptr, stat_ptr, cand_ptr, ahead_ptr, tok_ptr, lp_ptr, s_l,
                              S: tl.constexpr, SP: tl.constexpr, K: tl.constexpr, LOGP: tl.constexpr):
        """One row: the first candidate inside the nucleus, else the most likely token; with LOGP also its
        log-prob under ``softmax(logits / T)``, from the row statistics the pick kernel already merged."""
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
        tok = tl.where(first < K, pick, best)
        tl.store(tok_ptr + n, tok)
        if LOGP:
            z = tl.load(logits_ptr + n * s_l + tok) / tl.load(temp_ptr)
            tl.store(lp_ptr + n, z - tl.load(stat_ptr + n * 3) - tl.log(tl.load(stat_ptr + n * 3 + 1)))


def sample_top_p(logits: Tensor, temperature: Tensor, top_p: Tensor, seed: Tensor, k: int = 8,
                 chunk: int = 1024, logprob: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """One token per row of float32 ``logits`` [N, V], as :func:`stonklib.sampling.fast._sample_top_p` draws it.

    The same rejection scheme (``k`` candidates from the full softmax, the first inside the top-p
    nucleus is taken, else the most likely token), in four kernels that read the logits twice:
    per-chunk statistics and exponential-race candidates, a per-row merge, the mass ahead of each
    candidate, the choice. ``k`` is rounded up to a power of two, at least 4. Randomness is Philox keyed by ``seed`` (a 1-element int64 device
    tensor the caller advances between steps) and each (row, candidate, token), so a captured
    CUDA graph replays fresh draws. ``temperature``/``top_p`` are 1-element device tensors.

    ``logprob=True`` also returns each drawn token's float32 log-prob under ``softmax(logits / T)``
    (before top-p, as the update computes it), ``z_tok - max - log(sum exp(z - max))`` from the row
    maximum and normaliser the draw computes anyway: no further pass over the logits, where the
    eager ``log_softmax``-and-gather would read them three more times in several kernels.
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
    lp = torch.empty(n, **f32) if logprob else pc
    sl = logits.stride(0)
    _sample_chunk_kernel[(n, s)](logits, temperature, seed, m, z, amax, cval, cidx, sl, v, S=s, K=k, CHUNK=chunk)
    _sample_pick_kernel[(n,)](logits, temperature, m, z, amax, cval, cidx, stat, cand, pc, sl, S=s, SP=sp, K=k)
    _sample_mass_kernel[(n, s)](logits, temperature, stat, pc, ahead, sl, v, S=s, K=k, CHUNK=chunk)
    _sample_accept_kernel[(n,)](logits, temperature, top_p, stat, cand, ahead, tok, lp, sl, S=s, SP=sp, K=k,
                                LOGP=logprob)
    return (tok, lp) if logprob else tok
