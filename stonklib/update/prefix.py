"""Completion log-probs with each group's shared prompt computed once (GRPO's G copies).

:func:`shared_prefix_logprobs` is a drop-in for :func:`stonklib.update.head.completion_logprobs` (same
arguments, same result up to float rounding, gradients included). In a GRPO batch the ``G``
completions of a prompt share that prompt, so the full forward repeats every prompt token ``G``
times. Here the prompts go through the network once (``B x P`` tokens) and the completions
(``B*G x C`` tokens) attend to the prompts' keys and values, expanded per row; the gradient of
each prompt position is the sum over its ``G`` rows, exactly as in the full forward. At 512-token
prompts and 256-token completions with G = 4 that is half the tokens; with G = 8, 2.4x fewer.

Each layer is run by a ``blocks`` object around the attention core written here
(:func:`attend_shared_prefix`: RoPE, SDPA over prompt + completion keys): :class:`ModuleBlocks`
runs the model's own modules (norms, q/k/v/o projections with their LoRA and NF4 layers, the MLP),
:class:`stonklib.update.dense.DenseBlocks` the same layer over dense base weights. Either way
``model.disable_adapter()`` gives the reference policy. With gradient checkpointing on (and
autograd active) each layer is checkpointed by the model's own checkpoint function (the trainer
configures the reentrant one: :func:`stonklib.models.enable_checkpointing`).
:func:`stonklib.update.pick.pick_logprobs` chooses what the trainer runs.

One difference from the full forward, in training mode only: LoRA dropout draws one mask per
prompt token, shared by the group's rows, instead of one per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from stonklib.kernels.train import rope
from stonklib.sampling.weights import ArchSpec, causal_lm
from stonklib.update.head import CHUNK_TOKENS, logprobs_from_hidden


def prompt_groups(prompt_ids: Tensor, prompt_mask: Tensor) -> Tensor:
    """For each row, the index of its run of identical (left-padded) prompts: [0, 0, 0, 0, 1, 1, ...]."""
    if prompt_ids.shape[0] < 2:
        return torch.zeros(prompt_ids.shape[0], dtype=torch.long, device=prompt_ids.device)
    same = (((prompt_ids[1:] == prompt_ids[:-1]) | (prompt_mask[1:] == 0)).all(1)
            & (prompt_mask[1:] == prompt_mask[:-1]).all(1))
    return torch.cat([same.new_zeros(1), ~same]).long().cumsum(0)


def group_mask(mask: Tensor, groups: int, dtype: torch.dtype) -> Tensor:
    """A boolean [B, 1, L, S] mask (True: attend) as :func:`attend_shared_prefix` takes it.

    Repeated for the query layout there ([B, 1, groups*L, S]) and additive in ``dtype`` (0 or -inf),
    made once per forward: given the boolean mask, SDPA would build the additive one in every call.
    """
    mask = mask if groups == 1 else mask.repeat(1, 1, groups, 1)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


@dataclass(frozen=True)
class Attention:
    """What every layer's attention core reads in one pass over the stream (see :func:`attend_shared_prefix`).

    ``cos``/``sin`` [T, 1, D] (T = U*P + N*C), ``rows`` [N] each completion's prompt, ``mask_p``
    [U, 1, g*P, P] and ``mask_c`` [N, 1, g*C, P + C] the additive masks of :func:`group_mask`
    (g = n_heads / n_kv; their shapes give U, P, N, C), and ``fused``: RoPE as one Triton kernel.
    """

    cos: Tensor
    sin: Tensor
    rows: Tensor
    mask_p: Tensor
    mask_c: Tensor
    n_heads: int
    n_kv: int
    head_dim: int
    fused: bool = False


def attend_shared_prefix(qkv: Tensor, att: Attention) -> Tensor:
    """RoPE and attention of one layer over the flat stream (prompts once, then completions).

    ``qkv`` is [..., T, (n_heads + 2 * n_kv) * D] (q, k and v side by side). Returns the attention
    output [T, n_heads * D].

    Grouped-query attention without copying keys and values per query head: each KV head's ``g``
    query heads travel as ``g`` blocks of query rows (one SDPA "head" per KV head, ``g * L`` rows),
    which is the same attention as repeating the keys and values ``g`` times. q and k get RoPE in one
    pass (they are adjacent in ``qkv``; one fused kernel with ``att.fused``, :func:`stonklib.kernels.train.rope`).
    """
    mask_p, mask_c, rows, n_heads, n_kv = att.mask_p, att.mask_c, att.rows, att.n_heads, att.n_kv
    u, n, g, D = mask_p.shape[0], mask_c.shape[0], n_heads // n_kv, att.head_dim
    P = mask_p.shape[3]
    C = mask_c.shape[3] - P
    Tp = u * P
    qkv = qkv.reshape(-1, n_heads + 2 * n_kv, D)
    qk = rope(qkv[:, : n_heads + n_kv], att.cos, att.sin, att.fused)
    q, k, v = qk[:, :n_heads], qk[:, n_heads:], qkv[:, n_heads + n_kv:]

    def queries(t: Tensor, b: int, length: int) -> Tensor:
        """[b * length, n_heads, D] -> [b, n_kv, g * length, D]: a KV head's query heads as blocks of rows."""
        return t.reshape(b, length, n_kv, g, D).permute(0, 2, 3, 1, 4).reshape(b, n_kv, g * length, D)

    def heads_back(t: Tensor, b: int, length: int) -> Tensor:
        return t.view(b, n_kv, g, length, D).permute(0, 3, 1, 2, 4).reshape(b * length, n_heads * D)

    def keys(t: Tensor) -> tuple[Tensor, Tensor]:
        """[T, n_kv, D] -> prompt [U, n_kv, P, D], completion [N, n_kv, C, D]."""
        return t[:Tp].view(u, P, n_kv, D).transpose(1, 2), t[Tp:].view(n, C, n_kv, D).transpose(1, 2)

    (kp, kc), (vp, vc) = keys(k), keys(v)
    scale = D ** -0.5
    ap = F.scaled_dot_product_attention(queries(q[:Tp], u, P), kp, vp, attn_mask=mask_p, scale=scale)
    k_all, v_all = torch.cat([kp[rows], kc], dim=2), torch.cat([vp[rows], vc], dim=2)
    ac = F.scaled_dot_product_attention(queries(q[Tp:], n, C), k_all, v_all, attn_mask=mask_c, scale=scale)
    return torch.cat([heads_back(ap, u, P), heads_back(ac, n, C)])


class ModuleBlocks:
    """One layer run by the model's own modules (PEFT LoRA, bitsandbytes NF4), attention core aside.

    ``fused`` runs RoPE and the log-prob head as Triton kernels (:func:`stonklib.kernels.wanted`).
    """

    rng_free = False  # dropout draws from torch's generator: checkpointing must save its state

    def __init__(self, fused: bool = False):
        self.fused = fused

    def layer(self, index: int, layer, x: Tensor, att: Attention) -> Tensor:
        """The layer's output [1, T, hidden] for its input ``x`` [1, T, hidden]."""
        sa = layer.self_attn
        h = layer.input_layernorm(x)
        qkv = torch.cat([sa.q_proj(h), sa.k_proj(h), sa.v_proj(h)], dim=-1)
        x = x + sa.o_proj(attend_shared_prefix(qkv, att)[None])
        return x + layer.mlp(layer.post_attention_layernorm(x))


MODULE_BLOCKS = ModuleBlocks()


def shared_prefix_logprobs(model, input_ids: Tensor, attention_mask: Tensor, n_completion: int,
                           temperature: float = 1.0, chunk_tokens: int = CHUNK_TOKENS, blocks=MODULE_BLOCKS) -> Tensor:
    """Per-token log-probs [N, n_completion] (float32) of the last ``n_completion`` tokens of each row.

    Same contract as :func:`stonklib.update.head.completion_logprobs`: prompts left-padded, positions
    ``cumsum(mask) - 1``, logits divided by ``temperature``, gradients flow outside ``torch.no_grad``.
    ``blocks`` runs each layer (:class:`ModuleBlocks`: the model's modules;
    :class:`stonklib.update.dense.DenseBlocks`: dense base weights plus the LoRA parameters).
    """
    return stream_logprobs(model, StreamGeometry.of(model, input_ids, attention_mask, n_completion), temperature,
                           chunk_tokens, blocks)


@dataclass
class StreamGeometry:
    """The flat stream of :func:`shared_prefix_logprobs` (each group's prompt once, then the completions).

    All tensors, of shapes fixed by the batch's (rows, prompt length, completion length, distinct
    prompts): ``ids``/``positions`` [T] (T = U*P + N*C), ``rows`` [N] each completion's prompt,
    ``mask_p`` [U, 1, g*P, P] and ``mask_c`` [N, 1, g*C, P + C] the additive masks of
    :func:`group_mask`, ``c_ids`` [N, C] the completion tokens. Building it needs a host sync (the
    distinct prompts); running the network on it (:func:`stream_logprobs`) does not.
    """

    ids: Tensor
    positions: Tensor
    rows: Tensor
    mask_p: Tensor
    mask_c: Tensor
    c_ids: Tensor

    @classmethod
    def of(cls, model, input_ids: Tensor, attention_mask: Tensor, n_completion: int) -> StreamGeometry:
        spec = ArchSpec.from_model(model)  # checks the architecture is one we implement
        dtype = causal_lm(model).get_input_embeddings().weight.dtype
        P = input_ids.shape[1] - n_completion
        p_ids, p_mask = input_ids[:, :P], attention_mask[:, :P]
        c_ids, c_mask = input_ids[:, P:], attention_mask[:, P:]
        rows = prompt_groups(p_ids, p_mask)
        first = torch.cat([rows.new_ones(1), (rows[1:] != rows[:-1]).long()]).bool()
        u_ids, u_mask = p_ids[first], p_mask[first]
        # Positions as completion_logprobs assigns them: cumsum of the full mask, minus one, clamped.
        pos_p = (u_mask.long().cumsum(-1) - 1).clamp(min=0)
        pos_c = (u_mask.long().sum(-1)[rows, None] + c_mask.long().cumsum(-1) - 1).clamp(min=0)
        dev, n, C = input_ids.device, c_ids.shape[0], n_completion
        pm, cm = u_mask.bool(), c_mask.bool()
        eye_p = torch.eye(P, dtype=torch.bool, device=dev)
        # A query that would see no key (a left pad) sees itself, so SDPA never returns NaN; unused.
        mask_p = ((torch.ones(P, P, dtype=torch.bool, device=dev).tril() & pm[:, None, :]) | eye_p)[:, None]
        causal_c = torch.ones(C, C, dtype=torch.bool, device=dev).tril()
        # Completion queries see the valid prompt keys (never none) and the valid completion keys up to themselves.
        mask_c = torch.cat([pm[rows][:, None, :].expand(n, C, P), causal_c & cm[:, None, :]], dim=2)[:, None]
        groups = spec.n_heads // spec.n_kv_heads
        # Prompt and completion tokens travel as one flat [T, hidden] stream, so every projection, norm
        # and MLP is one call over both, as in the full forward; only attention splits them.
        return cls(ids=torch.cat([u_ids.reshape(-1), c_ids.reshape(-1)]),
                   positions=torch.cat([pos_p.reshape(-1), pos_c.reshape(-1)]), rows=rows,
                   mask_p=group_mask(mask_p, groups, dtype), mask_c=group_mask(mask_c, groups, dtype), c_ids=c_ids)

    def tensors(self) -> tuple[Tensor, ...]:
        return self.ids, self.positions, self.rows, self.mask_p, self.mask_c, self.c_ids


def stream_logprobs(model, geo: StreamGeometry, temperature: float = 1.0, chunk_tokens: int = CHUNK_TOKENS,
                    blocks=MODULE_BLOCKS) -> Tensor:
    """The network and the log-prob head over a :class:`StreamGeometry` (no host sync: CUDA-graph safe without grad)."""
    lm = causal_lm(model)
    spec = ArchSpec.from_model(model)
    body = lm.model
    u, P = geo.mask_p.shape[0], geo.mask_p.shape[3]
    n, C = geo.c_ids.shape
    Tp = u * P
    x = body.embed_tokens(geo.ids)[None]  # [1, T, hidden]
    cos, sin = body.rotary_emb(x, geo.positions[None])
    att = Attention(cos[0, :, None, :], sin[0, :, None, :], geo.rows, geo.mask_p, geo.mask_c,  # cos, sin [T, 1, D]
                    spec.n_heads, spec.n_kv_heads, spec.head_dim, blocks.fused)

    def layer_fn(index: int, layer, x: Tensor) -> Tensor:
        return blocks.layer(index, layer, x, att)

    ckpt = lm.training and torch.is_grad_enabled() and any(
        getattr(layer, "gradient_checkpointing", False) for layer in body.layers)
    if ckpt:  # each layer under the model's own checkpoint function (HF's: reentrant or not, as configured)
        run = getattr(body.layers[0], "_gradient_checkpointing_func", None) or partial(checkpoint, use_reentrant=False)
        if blocks.rng_free:  # seeded dropout: no generator state to save (capturable in a CUDA graph)
            run = partial(run, preserve_rng_state=False)
        if not x.requires_grad:  # reentrant checkpointing passes gradients only to inputs that require them
            x = x.detach().requires_grad_()
    for i, layer in enumerate(body.layers):
        x = run(layer_fn, i, layer, x) if ckpt else layer_fn(i, layer, x)
    x = x[0]
    xp, xc = x[:Tp].view(u, P, -1), x[Tp:].view(n, C, -1)
    # The last prompt position predicts completion token 0; completion position t predicts t + 1.
    h = torch.cat([body.norm(xp[:, -1:])[geo.rows], body.norm(xc[:, :-1])], dim=1)
    head = lm.get_output_embeddings()
    return logprobs_from_hidden(h, head.weight, geo.c_ids, chunk_tokens=chunk_tokens, bias=getattr(head, "bias", None),
                                temperature=temperature, fused=blocks.fused)
