"""Per-token log-probs of completions: the chunked LM head and the full-forward pass.

Log-probs of the chosen tokens come from :func:`selective_log_softmax` (from logits) or
:func:`logprobs_from_hidden` (from the last hidden states and the LM-head weight), both chunked so
that neither the float32 ``[B, T, V]`` tensor nor (for the latter) the bf16 logits ever exist whole
(Qwen2.5's vocabulary has 151,936 entries); with autograd on, each chunk is recomputed in the
backward pass (activation checkpointing). With ``fused=True`` each chunk's log-softmax and gather
is one Triton kernel each way (:mod:`stonklib.kernels.logp`: one read of the chunk's logits, no
float32 copy).

:func:`completion_logprobs` is the reference pass over a whole model: every row's prompt and
completion through the network, then the head. :mod:`stonklib.update.prefix` computes the same
values with each group's prompt once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from stonklib import kernels
from stonklib.kernels.logp import token_logprobs

#: Tokens per chunk of the LM-head projection: [1024, 151936] bf16 logits are 0.3 GB at a time.
CHUNK_TOKENS = 1024


def selective_log_softmax(logits: Tensor, index: Tensor, chunk_size: int = 512, temperature: float = 1.0,
                          fused: bool = False) -> Tensor:
    """``log_softmax(logits / temperature).gather(index)`` as float32 ``[B, T]``, one chunk of rows at a time.

    ``logits`` is ``[B, T, V]`` in any float dtype and ``index`` ``[B, T]``. Each chunk of ``chunk_size``
    rows is upcast to float32 for its logsumexp, so at most a ``[chunk_size, V]`` float32 tensor exists.
    float64 logits stay float64 (and so does the result), which is what gradcheck needs. ``fused`` runs
    each chunk as one Triton kernel each way (:func:`stonklib.kernels.logp.token_logprobs`) where
    Triton can run.
    """
    _check_index(logits.shape[:-1], index, "logits")
    flat, idx = logits.reshape(-1, logits.shape[-1]), index.reshape(-1).long()
    out = [_maybe_checkpoint(_chunk_logp, flat[i : i + chunk_size], idx[i : i + chunk_size], temperature, fused)
           for i in range(0, flat.shape[0], chunk_size)]
    return _join(out, index)


def logprobs_from_hidden(
    hidden: Tensor,
    lm_head_weight: Tensor,
    index: Tensor,
    chunk_tokens: int = CHUNK_TOKENS,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    fused: bool = False,
) -> Tensor:
    """Log-probs (float32 ``[B, T]``; float64 for float64 inputs) of ``index`` under ``softmax(hidden @ W.T + bias)``, chunked over tokens.

    ``hidden`` is ``[B, T, H]``, ``lm_head_weight`` ``[V, H]``; ``hidden[:, t]`` scores ``index[:, t]``
    (shift by one before calling). The projection runs in ``hidden``'s dtype one chunk of
    ``chunk_tokens`` tokens at a time, so the full ``[B, T, V]`` logits never exist; under autograd each
    chunk is recomputed in the backward pass, so no chunk's logits are kept for it either. ``fused``: as
    in :func:`selective_log_softmax`.
    """
    _check_index(hidden.shape[:-1], index, "hidden")
    if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"lm_head_weight must be [V, H={hidden.shape[-1]}], got {tuple(lm_head_weight.shape)}.")
    flat, idx = hidden.reshape(-1, hidden.shape[-1]), index.reshape(-1).long()
    out = [_maybe_checkpoint(_chunk_logp_from_hidden, flat[i : i + chunk_tokens], lm_head_weight, bias,
                             idx[i : i + chunk_tokens], temperature, fused)
           for i in range(0, flat.shape[0], chunk_tokens)]
    return _join(out, index)


def _chunk_logp(logits: Tensor, index: Tensor, temperature: float, fused: bool) -> Tensor:
    if fused and logits.dtype != torch.float64 and kernels.available(logits.device):
        return token_logprobs(logits, index, temperature)  # the same values, one read of the logits
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, index.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _chunk_logp_from_hidden(hidden: Tensor, weight: Tensor, bias: Tensor | None, index: Tensor,
                            temperature: float, fused: bool) -> Tensor:
    return _chunk_logp(F.linear(hidden, weight, bias), index, temperature, fused)


def _maybe_checkpoint(fn: Callable[..., Tensor], *args: object) -> Tensor:
    """Run ``fn`` directly, or under activation checkpointing when autograd would otherwise keep its logits."""
    needs_grad = torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args)
    # The chunks draw no random numbers: no generator state to save (which a CUDA graph capture forbids).
    return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False) if needs_grad else fn(*args)


def _join(chunks: list[Tensor], like: Tensor) -> Tensor:
    if not chunks:  # zero tokens
        return torch.zeros(like.shape, device=like.device)
    return torch.cat(chunks).view(like.shape)


def _check_index(lead_shape: torch.Size, index: Tensor, name: str) -> None:
    if index.shape != lead_shape or len(lead_shape) != 2:
        raise ValueError(f"index must be [B, T] matching {name}'s leading dims {tuple(lead_shape)}, "
                         f"got {tuple(index.shape)}.")
    if index.is_floating_point() or index.dtype == torch.bool:
        raise ValueError(f"index must hold integer token ids, got {index.dtype}.")


def completion_logprobs(model, input_ids: Tensor, attention_mask: Tensor, n_completion: int,
                        temperature: float = 1.0, chunk_tokens: int = CHUNK_TOKENS, fused: bool = False) -> Tensor:
    """Per-token log-probs [N, n_completion] (float32) of the last ``n_completion`` tokens.

    ``temperature`` divides the logits, so the log-probs are those of the distribution the
    completions were sampled from (as TRL does). Positions follow the attention mask
    (``cumsum - 1``), exactly as ``generate`` assigns them for left-padded prompts, so sampling and
    scoring see the same positions. Gradients flow when called outside ``torch.no_grad``; inside
    :func:`stonklib.models.adapters_off` it gives the reference policy's log-probs.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body, head = base.model, base.lm_head
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  use_cache=False).last_hidden_state
    # The hidden state at position t predicts token t+1.
    h = hidden[:, -n_completion - 1:-1, :]
    targets = input_ids[:, -n_completion:]
    return logprobs_from_hidden(h, head.weight, targets, chunk_tokens=chunk_tokens,
                                bias=getattr(head, "bias", None), temperature=temperature, fused=fused)
