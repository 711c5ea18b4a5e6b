"""Completion lengths: which completions were cut off, their statistics, and DAPO's overlong shaping.

A completion that reaches ``max_new_tokens`` before its EOS is *truncated*: its answer may be missing
its last lines, so its reward says little about the policy. Three tools, each a pure function:

- :func:`length_stats`: the numbers TRL logs every step (``completions/mean_length``, ``min_length``,
  ``max_length``, ``clipped_ratio`` = the truncated share, and the mean/min/max length of the
  completions that did terminate). A ``clipped_ratio`` near 1 says ``max_new_tokens`` is too small;
  the trainer warns once in ``training.log`` when a step's ratio reaches :data:`CLIPPED_WARNING`.
- ``mask_truncated_completions`` (TRL's option; DAPO, arXiv 2503.14476, §3.4 "overlong filtering"):
  truncated completions leave the loss (their mask is zeroed), though they still count in their
  group's reward baseline, as in TRL.
- :func:`overlong_penalty`: DAPO's soft overlong punishment (eq. 13; TRL's
  ``get_soft_overlong_punishment``, verl's ``overlong_buffer``), added to the reward: 0 up to
  ``L_max - L_buffer`` tokens, then falling linearly to ``-penalty`` at ``L_max``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: The trainer warns (once) when this share of a step's completions hit ``max_new_tokens`` before their EOS.
CLIPPED_WARNING = 0.5


def truncated(completion_ids: torch.Tensor, completion_mask: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """[N] bool: completions with no EOS among their tokens (cut off by ``max_new_tokens``).

    The same rule as TRL's: a completion is truncated when its last real token is not an EOS. Without
    an EOS id (a tokenizer that has none) nothing can be called truncated.
    """
    if not eos_ids:
        return torch.zeros(completion_ids.shape[0], dtype=torch.bool, device=completion_ids.device)
    eos = torch.tensor(list(eos_ids), device=completion_ids.device)
    ended = torch.isin(completion_ids, eos) & completion_mask.bool()
    return ~ended.any(1)


def length_stats(lengths: Sequence[int], is_truncated: Sequence[bool]) -> dict[str, float]:
    """TRL's completion-length metrics for one step (every rank's completions). Without a terminated
    completion the terminated lengths are 0, as TRL logs them."""
    if not lengths:
        return {}
    term = [n for n, cut in zip(lengths, is_truncated, strict=True) if not cut] or [0]
    return {"completions/mean_length": sum(lengths) / len(lengths), "completions/min_length": float(min(lengths)),
            "completions/max_length": float(max(lengths)),
            "completions/clipped_ratio": sum(map(bool, is_truncated)) / len(lengths),
            "completions/mean_terminated_length": sum(term) / len(term),
            "completions/min_terminated_length": float(min(term)),
            "completions/max_terminated_length": float(max(term))}


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, penalty: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment per completion (float [N], <= 0); ``buffer = 0`` turns it off.

    ``0`` for ``len <= max_len - buffer``; ``penalty * ((max_len - buffer) - len) / buffer`` up to
    ``max_len``; ``-penalty`` beyond it (only reachable when ``max_len`` is below the sampler's limit).
    """
    lengths = lengths.float()
    if buffer <= 0:
        return torch.zeros_like(lengths)
    if buffer > max_len:
        raise ValueError(f"overlong_buffer={buffer} is longer than max_new_tokens={max_len}; use at most {max_len}.")
    soft = ((max_len - buffer) - lengths) / buffer
    out = torch.where(lengths <= max_len - buffer, torch.zeros_like(lengths), soft)
    return penalty * torch.where(lengths > max_len, torch.full_like(lengths, -1.0), out)
