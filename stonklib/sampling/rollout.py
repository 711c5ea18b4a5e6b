"""Rollouts: B prompts in, B×G sampled completions out, as one :class:`Rollout` record.

Two samplers share one interface (:class:`Sampler`):

- :class:`HFSampler` calls ``model.generate`` once for all B×G sequences: the reference path,
  and the fallback for architectures the fast sampler does not implement;
- :class:`stonklib.sampling.fast.FastSampler` decodes from a dense copy of the merged weights with
  a static KV cache (graph-captured bf16 on CUDA, eager float32 on CPU).

Prompts are left-padded and completions right-padded; a completion's mask covers its tokens up to
and including the first EOS. The update computes its own log-probs of the sampled tokens
(:mod:`stonklib.update`); each sampler also leaves the log-probs it drew them with in
``last_logprobs`` (``Rollout.sampler_logp``), so the trainer can measure, and correct, the gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Rollout:
    """B×G sampled sequences. Prompts are left-padded, completions right-padded."""

    prompt_ids: torch.Tensor  # [N, P]
    prompt_mask: torch.Tensor  # [N, P]
    completion_ids: torch.Tensor  # [N, C]
    completion_mask: torch.Tensor  # [N, C], 1 up to and including the first EOS
    texts: list[str]
    sampler_logp: torch.Tensor | None = None  # [N, C] float32: the sampler's log-probs of its tokens (None: unknown)

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    @property
    def n_completion_tokens(self) -> int:
        return int(self.completion_mask.sum())

    def rows(self, index: list[int]) -> Rollout:
        """The rollout of rows ``index`` (in that order)."""
        i = torch.tensor(index, dtype=torch.long, device=self.prompt_ids.device)
        return Rollout(self.prompt_ids[i], self.prompt_mask[i], self.completion_ids[i], self.completion_mask[i],
                       [self.texts[k] for k in index], None if self.sampler_logp is None else self.sampler_logp[i])

    @staticmethod
    def concat(parts: list[Rollout], pad_id: int) -> Rollout:
        """Rollouts of possibly different prompt and completion lengths as one: prompts re-padded on the
        left and completions on the right (with ``pad_id``, mask 0), so every row keeps its tokens and positions."""
        if len(parts) == 1:
            return parts[0]
        P = max(r.prompt_ids.shape[1] for r in parts)
        C = max(r.completion_ids.shape[1] for r in parts)

        def pad(t: torch.Tensor, width: int, left: bool, value: int) -> torch.Tensor:
            extra = width - t.shape[1]
            return torch.nn.functional.pad(t, (extra, 0) if left else (0, extra), value=value)

        logp = None
        if all(r.sampler_logp is not None for r in parts):
            logp = torch.cat([torch.nn.functional.pad(r.sampler_logp, (0, C - r.sampler_logp.shape[1])) for r in parts])
        return Rollout(torch.cat([pad(r.prompt_ids, P, True, pad_id) for r in parts]),
                       torch.cat([pad(r.prompt_mask, P, True, 0) for r in parts]),
                       torch.cat([pad(r.completion_ids, C, False, pad_id) for r in parts]),
                       torch.cat([pad(r.completion_mask, C, False, 0) for r in parts]),
                       [t for r in parts for t in r.texts], logp)


class Sampler(Protocol):
    def refresh(self, model) -> None:
        """Called after every optimizer step so sampling follows the current policy."""

    def sample(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, max_new_tokens: int,
               min_new_tokens: int = 0, temperature: float = 1.0, top_p: float = 1.0,
               greedy: bool = False) -> torch.Tensor:
        """Completion ids [N, C] (C <= max_new_tokens), padded with the pad id after EOS.

        Afterwards ``last_logprobs`` is [N, C] float32: each sampled token's log-prob under
        ``softmax(logits / temperature)`` (before top-p), or None for greedy decoding.
        """


class HFSampler:
    """The reference sampler: one ``model.generate`` call over the whole batch."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.last_logprobs: torch.Tensor | None = None

    def refresh(self, model) -> None:
        self.model = model

    @torch.no_grad()
    def sample(self, prompt_ids, prompt_mask, *, max_new_tokens, min_new_tokens=0, temperature=1.0,
               top_p=1.0, greedy=False):
        was_training = self.model.training
        self.model.eval()
        kw = dict(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens or None,
                  pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id)
        if greedy:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0, output_logits=True,
                      return_dict_in_generate=True)
        out = self.model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, **kw)
        if was_training:
            self.model.train()
        self.last_logprobs = None
        if greedy:
            return out[:, prompt_ids.shape[1]:]
        ids = out.sequences[:, prompt_ids.shape[1]:]
        steps = []  # one step at a time: stacking [N, C, V] float32 logits would cost gigabytes on a 150k vocabulary
        for t, logits in enumerate(out.logits):  # the raw logits of each step, before generate's processors
            scaled = logits.float() / temperature
            steps.append(scaled.gather(1, ids[:, t:t + 1]).squeeze(1) - scaled.logsumexp(-1))
        self.last_logprobs = torch.stack(steps, 1) if steps else ids.new_zeros(ids.shape, dtype=torch.float32)
        return ids


def eos_ids(tokenizer) -> list[int]:
    """The tokenizer's end-of-sequence ids as a list (empty when it has none)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]


def completion_mask(completion_ids: torch.Tensor, eos_token_id: int | list[int] | None) -> torch.Tensor:
    """1 for every token up to and including the first EOS, 0 after it."""
    if eos_token_id is None:
        return torch.ones_like(completion_ids)
    eos = torch.tensor(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id], device=completion_ids.device)
    is_eos = torch.isin(completion_ids, eos)
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    return (~after_eos).long()


def encode_prompts(tokenizer, texts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and mask; the texts already carry the chat template."""
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def rollout(sampler: Sampler, tokenizer, prompt_ids, prompt_mask, num_generations: int, **sample_kw) -> Rollout:
    """Sample ``num_generations`` completions for each prompt in one batched call.

    Rows are grouped: completions ``i*G .. i*G+G-1`` belong to prompt ``i``.
    """
    p_ids = prompt_ids.repeat_interleave(num_generations, dim=0)
    p_mask = prompt_mask.repeat_interleave(num_generations, dim=0)
    c_ids = sampler.sample(p_ids, p_mask, **sample_kw)
    c_mask = completion_mask(c_ids, tokenizer.eos_token_id).to(p_mask.dtype)
    texts = tokenizer.batch_decode(c_ids.masked_fill(c_mask == 0, tokenizer.pad_token_id), skip_special_tokens=True)
    logp = getattr(sampler, "last_logprobs", None)
    if logp is not None and tuple(logp.shape) != tuple(c_ids.shape):
        logp = None  # log-probs that do not line up with the ids (a sampler that rewrote them) are dropped, not guessed
    return Rollout(p_ids, p_mask, c_ids, c_mask, texts, logp)


def generate_texts(model, tokenizer, prompts: list[str], *, batch_size: int = 8, max_new_tokens: int = 200,
                   greedy: bool = True, temperature: float = 0.7, top_p: float = 0.9,
                   progress: bool = True, desc: str = "generate", num_samples: int = 1) -> list[str]:
    """``num_samples`` completions per chat-rendered prompt (grouped, prompt-major), in batches of prompts
    sampled in one call each, with a progress bar (evaluation)."""
    from tqdm.auto import tqdm

    sampler = HFSampler(model, tokenizer)
    device = next(model.parameters()).device
    out: list[str] = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, unit="batch"):
        ids, mask = encode_prompts(tokenizer, prompts[i:i + batch_size], device)
        out += rollout(sampler, tokenizer, ids, mask, num_samples, max_new_tokens=max_new_tokens,
                       temperature=temperature, top_p=top_p, greedy=greedy).texts
    return out
