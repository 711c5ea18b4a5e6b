"""A small pure-torch Llama/Qwen2 decoder over :class:`DecoderWeights` with a static KV cache.

It computes what ``transformers``' Llama/Qwen2 modules compute (RMSNorm in float32, RoPE with
``rotate_half``, grouped-query attention with softmax in float32, SwiGLU MLP, tied or untied LM
head), in the weights' dtype. Two entry points:

- :meth:`Decoder.prefill`: the prompts in one forward (chunked over rows), filling cache slots
  ``0..P-1``; left padding is handled by a per-row key mask and per-row positions
  ``cumsum(mask) - 1``, exactly as ``generate`` assigns them.
- :meth:`Decoder.decode`: one token per row at cache slot ``slot`` (a 1-element device tensor),
  with fixed shapes and no host synchronisation, so it can be captured in a CUDA graph. It attends
  over all ``max_len`` slots with a mask, which keeps the shapes static.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from stonklib.kernels.train import rotate_half
from stonklib.sampling.weights import ArchSpec, DecoderWeights, LayerWeights


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


class KVCache:
    """Keys and values for ``max_batch`` rows of ``max_len`` slots: [layers, rows, kv_heads, slots, head_dim]."""

    def __init__(self, spec: ArchSpec, max_batch: int, max_len: int, dtype: torch.dtype, device: torch.device):
        shape = (spec.n_layers, max_batch, spec.n_kv_heads, max_len, spec.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_batch, self.max_len = max_batch, max_len


class Decoder:
    """``kernels=True`` makes :meth:`decode` run each layer's attention (RoPE, cache write, attention) as
    the Triton kernel of :mod:`stonklib.kernels` (CUDA; on CPU only under Triton's interpreter);
    ``mlp_kernel=True`` also its MLP (:class:`~stonklib.kernels.SkinnyMLP`, bias-free MLPs)."""

    def __init__(self, spec: ArchSpec, weights: DecoderWeights, cache: KVCache, compile: bool | str = False,
                 kernels: bool = False, mlp_kernel: bool = False):
        self.spec, self.w, self.cache = spec, weights, cache
        self.kernels = kernels
        self.mlps = None
        if kernels and mlp_kernel and all(lw.gate_up.bias is None and lw.down.bias is None for lw in weights.layers):
            from stonklib.kernels import SkinnyMLP

            self.mlps = [SkinnyMLP(lw.gate_up.weight, lw.down.weight, cache.max_batch) for lw in weights.layers]
        self._pre, self._post, self._norm_qkv = _pre_attention, _post_attention, _norm_qkv
        self._out_norm = _attention_out_norm
        if compile:  # fuse the elementwise work of each layer (one compiled graph serves every layer)
            mode = compile if isinstance(compile, str) else None  # e.g. "max-autotune-no-cudagraphs"
            self._pre = torch.compile(_pre_attention, fullgraph=True, dynamic=False, mode=mode)
            self._norm_qkv = torch.compile(_norm_qkv, fullgraph=True, dynamic=False, mode=mode)
            self._out_norm = torch.compile(_attention_out_norm, fullgraph=True, dynamic=False, mode=mode)
            self._post = torch.compile(_post_attention_pure, fullgraph=True, dynamic=False, mode=mode)
        self.inv_freq = spec.inv_freq.to(weights.embed.device)
        self.scale = spec.head_dim ** -0.5
        self.slot_ids = torch.arange(cache.max_len, device=weights.embed.device)

    # ------------------------------------------------------------------ pieces
    def _rope(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos/sin [..., head_dim] for integer positions [...] (float32 math, then cast, as HF)."""
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.spec.rope_scale).to(dtype), (emb.sin() * self.spec.rope_scale).to(dtype)

    def _qkv(self, lw: LayerWeights, h: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q [N, H, T, D], k/v [N, KVH, T, D] with RoPE applied, for h [N, T, hidden]; cos/sin [N, T, D]."""
        s = self.spec
        n, t, _ = h.shape
        qkv = lw.qkv(rms_norm(h, lw.ln_attn, s.rms_eps))
        q, k, v = qkv.split([s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim, s.n_kv_heads * s.head_dim], dim=-1)
        q = q.view(n, t, s.n_heads, s.head_dim).transpose(1, 2)
        k = k.view(n, t, s.n_kv_heads, s.head_dim).transpose(1, 2)
        v = v.view(n, t, s.n_kv_heads, s.head_dim).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        return q, k, v

    def _mlp(self, lw: LayerWeights, x: Tensor) -> Tensor:
        gate, up = lw.gate_up(rms_norm(x, lw.ln_mlp, self.spec.rms_eps)).chunk(2, dim=-1)
        return x + lw.down(F.silu(gate) * up)

    def logits(self, h: Tensor) -> Tensor:
        """float32 logits for final hidden states h [N, hidden] (LM head in the weights' dtype, as HF)."""
        return F.linear(rms_norm(h, self.w.norm, self.spec.rms_eps), self.w.lm_head).float()

    # ------------------------------------------------------------------ prefill
    def prefill(self, ids: Tensor, mask: Tensor, rows: Tensor | None = None, chunk_tokens: int = 8192) -> Tensor:
        """Fill cache slots ``0..P-1`` and return float32 logits [N, V] at the last prompt slot.

        ``ids``/``mask`` are [U, P] (left-padded); ``rows`` (optional, [N]) maps each cache row to the
        prompt row it repeats, so G identical copies of a prompt are computed once.
        """
        u, p = ids.shape
        rows = torch.arange(u, device=ids.device) if rows is None else rows
        if p > self.cache.max_len or rows.numel() > self.cache.max_batch:
            raise ValueError(f"prefill of {rows.numel()} rows x {p} tokens does not fit the cache "
                             f"({self.cache.max_batch} rows x {self.cache.max_len} slots); build FastSampler larger.")
        per = max(1, chunk_tokens // max(p, 1))
        last = []
        for start in range(0, u, per):
            sl = slice(start, min(u, start + per))
            last.append(self._prefill_rows(ids[sl], mask[sl], rows, start))
        return self.logits(torch.cat(last))[rows]

    def _prefill_rows(self, ids: Tensor, mask: Tensor, rows: Tensor, start: int) -> Tensor:
        n, p = ids.shape
        mask = mask.bool()
        positions = (mask.long().cumsum(-1) - 1).masked_fill(~mask, 1)
        cos, sin = self._rope(positions, self.w.embed.dtype)
        causal = torch.ones(p, p, dtype=torch.bool, device=ids.device).tril()
        # A padded query row would see no key at all (NaN in SDPA); let it see itself. Its output is never used.
        attn_mask = (causal & mask[:, None, :]) | torch.eye(p, dtype=torch.bool, device=ids.device)
        attn_mask = attn_mask[:, None]
        # Cache rows filled from these prompt rows: rows[j] in [start, start + n).
        targets = ((rows >= start) & (rows < start + n)).nonzero().squeeze(1)
        src = rows[targets] - start
        groups = self.spec.n_heads // self.spec.n_kv_heads
        x = F.embedding(ids, self.w.embed)
        for li, lw in enumerate(self.w.layers):
            q, k, v = self._qkv(lw, x, cos, sin)
            self.cache.k[li, targets, :, :p] = k[src]
            self.cache.v[li, targets, :, :p] = v[src]
            if groups > 1:
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
            x = x + lw.o(a.transpose(1, 2).reshape(n, p, -1))
            x = self._mlp(lw, x)
        return x[:, -1]

    # ------------------------------------------------------------------ one decode step
    def rope_step(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """cos and a sign-folded sin [N, 1, D] for one step: ``x*cos + swap_halves(x)*sin_signed`` is RoPE."""
        cos, sin = self._rope(pos[:, None], self.w.embed.dtype)
        half = sin.shape[-1] // 2
        sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
        return cos, sin

    def attention_bias(self, slot: Tensor, slot_valid: Tensor) -> Tensor:
        """Additive mask [N*KVH, G, L] (0 or -inf) shared by every layer of one step."""
        return cache_bias(slot_valid & (self.slot_ids <= slot), self.spec.n_heads, self.spec.n_kv_heads,
                          self.w.embed.dtype)

    def decode(self, tok: Tensor, pos: Tensor, slot: Tensor, slot_valid: Tensor) -> Tensor:
        """float32 logits [N, V] for one new token per row.

        ``tok``/``pos`` [N] are the token and its position; ``slot`` [1] the cache slot it goes to;
        ``slot_valid`` [N, L] marks the cache slots each row may attend to (prompt padding off).
        Fixed shapes, no host sync: safe to capture in a CUDA graph. Written for few kernels per
        layer (~17): fused RMSNorm, q and k rotated together, mask and scale folded into one batched
        matmul, residual adds folded into the output projections.
        """
        if self.kernels:
            return self._decode_kernels(tok, pos, slot, slot_valid)
        s = self.spec
        n = tok.shape[0]
        cos, sin = self.rope_step(pos)
        bias = self.attention_bias(slot, slot_valid)
        x = F.embedding(tok, self.w.embed)  # [N, hidden]
        for li, lw in enumerate(self.w.layers):
            q, k, v = self._pre(x, lw.ln_attn, lw.qkv.weight, lw.qkv.bias, cos, sin, s.rms_eps,
                                     s.n_heads, s.n_kv_heads, s.head_dim)
            a = attend_static_cache(q, k, v, self.cache.k[li, :n], self.cache.v[li, :n], slot, bias, self.scale)
            x = self._post(x, a, lw.o.weight, lw.o.bias, lw.ln_mlp, lw.gate_up.weight, lw.gate_up.bias,
                                lw.down.weight, lw.down.bias, s.rms_eps)
        return self.logits(x)

    def _decode_kernels(self, tok: Tensor, pos: Tensor, slot: Tensor, slot_valid: Tensor) -> Tensor:
        """:meth:`decode` with each layer's RoPE, cache write and attention as one Triton kernel pair, and
        its MLP as :class:`~stonklib.kernels.SkinnyMLP` when ``mlp_kernel`` was asked for."""
        from stonklib.kernels import decode_attention

        s = self.spec
        n = tok.shape[0]
        cos, sin = self.rope_step(pos)
        x = F.embedding(tok, self.w.embed)
        for li, lw in enumerate(self.w.layers):
            qkv = self._norm_qkv(x, lw.ln_attn, lw.qkv.weight, lw.qkv.bias, s.rms_eps)
            a = decode_attention(qkv, cos, sin, self.cache.k[li, :n], self.cache.v[li, :n], slot_valid, slot,
                                 s.n_heads, s.n_kv_heads, self.scale)
            if self.mlps is not None:
                x, h = self._out_norm(x, a, lw.o.weight, lw.o.bias, lw.ln_mlp, s.rms_eps)
                x = self.mlps[li](x, h)
            else:
                x = self._post(x, a, lw.o.weight, lw.o.bias, lw.ln_mlp, lw.gate_up.weight, lw.gate_up.bias,
                               lw.down.weight, lw.down.bias, s.rms_eps)
        return self.logits(x)


def _attention_out_norm(x: Tensor, a: Tensor, w_o: Tensor, b_o: Tensor | None, ln: Tensor,
                        eps: float) -> tuple[Tensor, Tensor]:
    """Output projection + residual, and the MLP's RMSNorm of the result (the MLP itself is a Triton kernel)."""
    x = x + F.linear(a, w_o, b_o)
    return x, F.rms_norm(x, (x.shape[-1],), ln, eps)


def _norm_qkv(x: Tensor, ln: Tensor, w_qkv: Tensor, b_qkv: Tensor | None, eps: float) -> Tensor:
    """RMSNorm and the fused q|k|v projection (RoPE is left to the attention kernel)."""
    return F.linear(F.rms_norm(x, (x.shape[-1],), ln, eps), w_qkv, b_qkv)


def cache_bias(visible: Tensor, n_heads: int, n_kv: int, dtype: torch.dtype) -> Tensor:
    """Additive attention mask [N*KVH, G, L] (0 or -inf) from the visible cache slots [N, L]."""
    n, g = visible.shape[0], n_heads // n_kv
    bias = torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(~visible, float("-inf"))
    return bias[:, None, None, :].expand(n, n_kv, g, -1).reshape(n * n_kv, g, -1)


def attend_static_cache(q: Tensor, k: Tensor, v: Tensor, kc: Tensor, vc: Tensor, slot: Tensor, bias: Tensor,
                        scale: float) -> Tensor:
    """The plain decoder's attention for one new token per row, [N, H*D].

    Writes k/v [N, KVH, D] into cache slot ``slot`` of kc/vc [N, KVH, L, D], then attends q [N, H, D]
    over the cache with :func:`cache_bias`'s mask: the G query heads of a KV head share its keys,
    so scores are one batched matmul [N*KVH, G, L], softmax in float32.
    """
    n, n_kv, _, d = kc.shape
    kc.index_copy_(2, slot, k.unsqueeze(2))
    vc.index_copy_(2, slot, v.unsqueeze(2))
    scores = torch.baddbmm(bias, q.reshape(n * n_kv, -1, d), kc.flatten(0, 1).transpose(1, 2), alpha=scale)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(vc.dtype)
    return torch.bmm(probs, vc.flatten(0, 1)).view(n, -1)


def rope_qkv(qkv: Tensor, cos: Tensor, sin: Tensor, n_heads: int, n_kv: int,
             head_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """q [N, H, D], k/v [N, KVH, D] from the fused projection [N, (H + 2*KVH) * D], RoPE on q and k together
    (``cos``/``sin`` from :meth:`Decoder.rope_step`)."""
    n = qkv.shape[0]
    qk = qkv[:, : (n_heads + n_kv) * head_dim].view(n, n_heads + n_kv, head_dim)
    v = qkv[:, (n_heads + n_kv) * head_dim:].view(n, n_kv, head_dim)
    half = head_dim // 2
    swapped = torch.cat([qk[..., half:], qk[..., :half]], dim=-1)
    qk = torch.addcmul(qk * cos, swapped, sin)
    return qk[:, :n_heads], qk[:, n_heads:], v


def _pre_attention(x: Tensor, ln: Tensor, w_qkv: Tensor, b_qkv: Tensor | None, cos: Tensor, sin: Tensor, eps: float,
                   n_heads: int, n_kv: int, head_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """RMSNorm, fused q|k|v projection, RoPE on q and k together. x [N, hidden] -> q [N, H, D], k/v [N, KVH, D]."""
    return rope_qkv(_norm_qkv(x, ln, w_qkv, b_qkv, eps), cos, sin, n_heads, n_kv, head_dim)


def _post_attention(x: Tensor, a: Tensor, w_o: Tensor, b_o: Tensor | None, ln: Tensor, w_gu: Tensor,
                    b_gu: Tensor | None, w_d: Tensor, b_d: Tensor | None, eps: float) -> Tensor:
    """Output projection + residual, RMSNorm, SwiGLU MLP + residual (residuals accumulate in the GEMMs)."""
    x = x.addmm_(a, w_o.t()) if b_o is None else x + F.linear(a, w_o, b_o)  # x is this step's own buffer
    gate, up = F.linear(F.rms_norm(x, (x.shape[-1],), ln, eps), w_gu, b_gu).chunk(2, dim=-1)
    act = F.silu(gate) * up
    return x.addmm_(act, w_d.t()) if b_d is None else x + F.linear(act, w_d, b_d)


def _post_attention_pure(x: Tensor, a: Tensor, w_o: Tensor, b_o: Tensor | None, ln: Tensor, w_gu: Tensor,
                         b_gu: Tensor | None, w_d: Tensor, b_d: Tensor | None, eps: float) -> Tensor:
    """:func:`_post_attention` without in-place updates (what ``torch.compile`` wants)."""
    x = x + F.linear(a, w_o, b_o)
    gate, up = F.linear(F.rms_norm(x, (x.shape[-1],), ln, eps), w_gu, b_gu).chunk(2, dim=-1)
    return x + F.linear(F.silu(gate) * up, w_d, b_d)
