"""FastSampler: batched sampling from a dense copy of the merged policy, graph-captured on CUDA.

Why: eager ``generate`` on a 1.5B model is bound by launching kernels, one layer at a time, from
Python: a token step takes many times what reading the weights once takes (``benchmarks/RESULTS.md``).
Here one decode step
(forward, EOS masking for ``min_new_tokens``, temperature/top-p sampling, EOS bookkeeping) is one
CUDA-graph replay, and the host checks whether every row has finished only every
``check_every`` steps.

Semantics match :class:`stonklib.sampling.rollout.HFSampler` (``generate``):
- processors in ``generate``'s order: EOS masked while fewer than ``min_new_tokens`` tokens exist,
  then temperature, then top-p (the smallest set of most likely tokens whose mass reaches
  ``top_p``; the top token always stays);
- after a row's first EOS it emits the pad id; the result is trimmed to the step at which the
  last row finished (or ``max_new_tokens``), as ``generate`` stops there;
- positions of new tokens continue from ``sum(prompt_mask)``.
The random stream differs from ``generate``'s (sampling draws ``argmax(p / Exp(1))``, which picks
token i with probability p_i), so sampled completions match in distribution, greedy ones exactly.

Usage::

    sampler = FastSampler(policy, tokenizer, max_batch=16, max_len=512 + 256)
    ids = sampler.sample(prompt_ids, prompt_mask, max_new_tokens=256, temperature=0.7, top_p=0.9)
    ...optimizer.step()...
    sampler.refresh(policy)   # re-merge the LoRA deltas (in place)
"""

from __future__ import annotations

import torch
from torch import Tensor

from stonklib import kernels as _kernels
from stonklib.sampling.decoder import Decoder, KVCache
from stonklib.sampling.rollout import eos_ids
from stonklib.sampling.weights import ArchSpec, DecoderWeights, causal_lm


def _eos_ids(tokenizer, eos_token_id) -> list[int]:
    if eos_token_id is None:
        return eos_ids(tokenizer)
    return list(eos_token_id) if isinstance(eos_token_id, (list, tuple)) else [int(eos_token_id)]


def _sample_top_p(logits: Tensor, temperature: Tensor, top_p: Tensor, k: int) -> Tensor:
    """One token per row from ``softmax(logits / temperature)`` restricted to its top-p nucleus, without a sort.

    The nucleus (as ``generate``'s TopPLogitsWarper) holds every token whose strictly-more-likely
    mass is below ``top_p``. ``k`` candidates are drawn i.i.d. from the full distribution
    (``argmax(p / Exp(1))``); the first one inside the nucleus is returned. That is rejection
    sampling, so the result follows the renormalised nucleus exactly. Each candidate lands in the
    nucleus with probability >= top_p, so all k miss with probability <= (1 - top_p)**k (1e-8 for
    k = 8, top_p = 0.9); then the most likely token is taken. This costs a few elementwise passes
    where a full-vocabulary sort would cost a sort of 151,936 entries per row every step.
    """
    probs = (logits / temperature).softmax(-1)  # [n, V]
    noise = torch.empty((k, *probs.shape), dtype=probs.dtype, device=probs.device).exponential_()
    cand = (probs / noise).argmax(-1).t()  # [n, k]
    p_cand = probs.gather(1, cand)  # [n, k]
    wide = probs.unsqueeze(1)  # [n, 1, V]
    ahead = (wide * (wide > p_cand.unsqueeze(2))).sum(-1)  # [n, k]: mass strictly more likely than each candidate
    ok = (ahead < top_p) | (top_p >= 1.0)
    first = ok.float().argmax(1, keepdim=True)  # first accepted candidate (0 if none)
    return torch.where(ok.any(1), cand.gather(1, first).squeeze(1), probs.argmax(-1))


def _sample_top_p_sorted(logits: Tensor, temperature: Tensor, top_p: Tensor) -> Tensor:
    """The same nucleus distribution as :func:`_sample_top_p`, by a sort and one multinomial draw.

    Used where there is no CUDA graph to keep static (CPU): there one descending sort of the
    vocabulary is far cheaper than ``k`` full-vocabulary exponential draws.
    """
    probs = (logits / temperature).softmax(-1)
    p_sorted, order = probs.sort(-1, descending=True)
    ahead = p_sorted.cumsum(-1) - p_sorted  # mass more likely than each token
    keep = (ahead < top_p) | (top_p >= 1.0)  # the top token (nothing ahead) always stays: top_p > 0
    pick = torch.multinomial(p_sorted * keep, 1)
    return order.gather(1, pick).squeeze(1)


class _State:
    """Static buffers the decode graph reads and writes (the graph's inputs and outputs)."""

    def __init__(self, max_batch: int, max_len: int, device: torch.device):
        long = dict(dtype=torch.long, device=device)
        self.tok = torch.zeros(max_batch, **long)  # last token of each row
        self.pos = torch.zeros(max_batch, **long)  # its position
        self.slot = torch.zeros(1, **long)  # its cache slot
        self.step = torch.zeros(1, **long)  # index of the token being chosen
        self.min_new = torch.zeros(1, **long)
        self.seed = torch.zeros(1, **long)  # Philox key of the Triton top-p draw; advanced every step
        self.temperature = torch.ones(1, dtype=torch.float32, device=device)
        self.top_p = torch.ones(1, dtype=torch.float32, device=device)
        self.slot_valid = torch.zeros(max_batch, max_len, dtype=torch.bool, device=device)
        self.finished = torch.zeros(max_batch, dtype=torch.bool, device=device)
        self.out = torch.zeros(max_batch, max_len, **long)
        self.logp = torch.zeros(max_batch, max_len, dtype=torch.float32, device=device)  # of each chosen token


class FastSampler:
    """The :class:`~stonklib.sampling.rollout.Sampler` for Llama/Qwen2 policies (LoRA, optionally NF4).

    ``max_batch`` rows and ``max_len`` cache slots (prompt + completion) are allocated once.
    ``dtype`` defaults to bf16 on CUDA and float32 on CPU. ``cuda_graphs`` defaults to True on
    CUDA; the CPU path runs the same step eagerly (it is what the tests check). ``compile`` wraps
    each layer's elementwise work in ``torch.compile`` (default: on for CUDA, off for CPU; a string is
    a ``torch.compile`` mode). ``top_p_candidates`` is k of the sort-free top-p sampler. ``kernels``
    (:func:`stonklib.kernels.wanted`; default: CUDA with Triton installed) runs each layer's attention
    and MLP, and the top-p draw, as the Triton kernels of :mod:`stonklib.kernels`; ``mlp_kernel=False``
    keeps cuBLAS for the MLP, whose kernel sums split-K with atomics (not bit-reproducible). The
    trainer sets these from ``TrainConfig`` (``decode_graphs``, ``compile_decoder``, ``triton_kernels``,
    ``decode_mlp_kernel``).
    After :meth:`sample`, ``last_logprobs`` ([N, C] float32) holds each sampled token's log-prob under ``softmax(logits / temperature)`` (before top-p, as the update computes it), from
    the bf16 merged weights: the sampler's side of the sampler/trainer gap (:func:`stonklib.grpo.loss.grpo_loss`).
    """

    def __init__(self, model, tokenizer, max_batch: int, max_len: int, *, dtype: torch.dtype | None = None,
                 cuda_graphs: bool | None = None, check_every: int = 16, eos_token_id: int | list[int] | None = None,
                 pad_token_id: int | None = None, dedup_prompts: bool = True, compile: bool | str | None = None,
                 top_p_candidates: int = 8, kernels: bool | None = None, mlp_kernel: bool = True):
        lm = causal_lm(model)
        self.device = lm.get_input_embeddings().weight.device
        is_cuda = self.device.type == "cuda"
        self.dtype = dtype or (torch.bfloat16 if is_cuda else torch.float32)
        self.cuda_graphs = is_cuda if cuda_graphs is None else (cuda_graphs and is_cuda)
        self.check_every = max(1, check_every)
        self.dedup_prompts = dedup_prompts
        self.compile = is_cuda if compile is None else compile
        self.kernels = _kernels.wanted(kernels, self.device)
        self.mlp_kernel = bool(self.kernels and mlp_kernel)
        self.top_p_candidates = top_p_candidates
        self.eos = _eos_ids(tokenizer, eos_token_id)
        pad = tokenizer.pad_token_id if pad_token_id is None else pad_token_id
        self.pad = int(pad if pad is not None else (self.eos[0] if self.eos else 0))
        self.max_batch, self.max_len = max_batch, max_len
        self.last_logprobs: Tensor | None = None
        self._build(model)

    def _build(self, model) -> None:
        self._source = causal_lm(model)
        self.spec = ArchSpec.from_model(model)
        self.weights = DecoderWeights(model, self.dtype, self.device)
        self.cache = KVCache(self.spec, self.max_batch, self.max_len, self.dtype, self.device)
        self.decoder = Decoder(self.spec, self.weights, self.cache, compile=self.compile, kernels=self.kernels,
                               mlp_kernel=self.mlp_kernel)
        self.state = _State(self.max_batch, self.max_len, self.device)
        self.eos_t = torch.tensor(self.eos or [-1], dtype=torch.long, device=self.device)
        self._graphs: dict[tuple[int, bool], torch.cuda.CUDAGraph] = {}
        self._pool = None

    # ------------------------------------------------------------------ Sampler protocol
    def refresh(self, model) -> None:
        """Follow the policy after an optimizer step: re-merge LoRA deltas in place (a new model object: rebuild)."""
        if causal_lm(model) is not self._source:
            self._build(model)
        else:
            self.weights.refresh()

    @torch.no_grad()
    def sample(self, prompt_ids: Tensor, prompt_mask: Tensor, *, max_new_tokens: int, min_new_tokens: int = 0,
               temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False) -> Tensor:
        n, p = prompt_ids.shape
        if n > self.max_batch or p + max_new_tokens > self.max_len:
            raise ValueError(f"{n} rows x ({p} prompt + {max_new_tokens} new) tokens exceed this FastSampler "
                             f"(max_batch={self.max_batch}, max_len={self.max_len}); build it with larger limits.")
        if max_new_tokens <= 0:
            return prompt_ids.new_full((n, 0), self.pad)
        graph = self._graph(n, greedy) if self.cuda_graphs else None
        self._prefill(prompt_ids.to(self.device), prompt_mask.to(self.device), min_new_tokens, temperature, top_p,
                      greedy)
        done = self._decode(graph, n, greedy, max_new_tokens)
        ids = self._trim(self.state.out[:n, :done].clone(), max_new_tokens)
        self.last_logprobs = None if greedy else self.state.logp[:n, :ids.shape[1]].clone()
        return ids

    def _prefill(self, prompt_ids: Tensor, prompt_mask: Tensor, min_new_tokens: int, temperature: float,
                 top_p: float, greedy: bool) -> None:
        """Reset the state for a new batch, run the prompts through the network and choose token 0."""
        n, p = prompt_ids.shape
        st = self.state
        if self.kernels:  # the Triton draw's key, from torch's generator: torch.manual_seed repeats runs
            st.seed.fill_(int(torch.randint(0, 2**62, (1,))))
        st.temperature.fill_(temperature)
        st.top_p.fill_(top_p)
        st.min_new.fill_(min_new_tokens)
        st.finished[:n] = False
        st.slot_valid[:n, :p] = prompt_mask.bool()
        st.slot_valid[:n, p:] = True
        st.step.zero_()
        logits = self.decoder.prefill(*self._unique_prompts(prompt_ids, prompt_mask))
        self._choose(logits, n, greedy)  # token 0
        st.pos[:n] = prompt_mask.long().sum(-1)
        st.slot.fill_(p)
        st.step.fill_(1)

    def _decode(self, graph: torch.cuda.CUDAGraph | None, n: int, greedy: bool, max_new_tokens: int) -> int:
        """Tokens 1.. until every row has finished (checked every ``check_every`` steps); returns the count."""
        done = 1
        while done < max_new_tokens:
            if graph is not None:
                graph.replay()
            else:
                self._decode_step(n, greedy)
            done += 1
            if done % self.check_every == 0 and bool(self.state.finished[:n].all()):
                break
        return done

    # ------------------------------------------------------------------ the step
    def _unique_prompts(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Collapse runs of identical prompt rows (GRPO's G copies) so prefill computes each once."""
        if not self.dedup_prompts or ids.shape[0] < 2:
            return ids, mask, None
        same = ((ids[1:] == ids[:-1]) | (mask[1:] == 0)).all(1) & (mask[1:] == mask[:-1]).all(1)
        new_run = torch.cat([same.new_ones(1), ~same])
        if bool(new_run.all()):
            return ids, mask, None
        rows = new_run.long().cumsum(0) - 1
        return ids[new_run], mask[new_run], rows

    def _decode_step(self, n: int, greedy: bool) -> None:
        st = self.state
        logits = self.decoder.decode(st.tok[:n], st.pos[:n], st.slot, st.slot_valid[:n])
        self._choose(logits, n, greedy)
        st.pos.add_(1)
        st.slot.add_(1)
        st.step.add_(1)

    def _choose(self, logits: Tensor, n: int, greedy: bool) -> None:
        """Pick token ``step`` for every row from float32 logits [n, V]; update out/finished/tok."""
        st = self.state
        if self.eos:
            suppress = st.step < st.min_new
            eos_logits = logits.index_select(1, self.eos_t)
            logits.index_copy_(1, self.eos_t, torch.where(suppress, float("-inf"), eos_logits))
        lp = None
        if greedy:
            tok = logits.argmax(-1)
        elif self.kernels:  # the same sort-free draw in four Triton kernels (two reads of the logits), log-prob too
            tok, lp = _kernels.sample_top_p(logits, st.temperature, st.top_p, st.seed, self.top_p_candidates,
                                            logprob=True)
            st.seed.add_(1)
        elif self.cuda_graphs:  # sort-free: static shapes and no host sync inside the graph
            tok = _sample_top_p(logits, st.temperature, st.top_p, self.top_p_candidates)
        else:
            tok = _sample_top_p_sorted(logits, st.temperature, st.top_p)
        finished = st.finished[:n]
        tok = torch.where(finished, self.pad, tok)
        st.out[:n].index_copy_(1, st.step, tok[:, None])
        # The sampled token's log-prob under softmax(logits / T), as the update computes it (before top-p), for
        # the sampler/trainer gap: from the Triton draw's own row statistics, else one gather and one
        # log-sum-exp over the float32 logits. After a row's EOS the value belongs to no kept token (the loss
        # masks it): the draw's token with the kernels, the pad id without.
        if not greedy:  # greedy answers (validation) need no log-probs: keep their decode step as it was
            if lp is None:
                scaled = logits / st.temperature
                lp = scaled.gather(1, tok[:, None]).squeeze(1) - torch.logsumexp(scaled, -1)
            st.logp[:n].index_copy_(1, st.step, lp[:, None])
        finished |= (tok[:, None] == self.eos_t).any(1)
        st.tok[:n] = tok

    def _trim(self, out: Tensor, max_new_tokens: int) -> Tensor:
        """Cut at the step where the last row finished, as ``generate`` stops there."""
        if not self.eos:
            return out
        is_eos = (out[..., None] == self.eos_t).any(-1)
        if out.shape[1] < max_new_tokens or bool(is_eos.any(1).all()):
            first = torch.where(is_eos.any(1), is_eos.float().argmax(1), out.shape[1] - 1)
            return out[:, : int(first.max()) + 1]
        return out

    # ------------------------------------------------------------------ CUDA graphs
    def _graph(self, n: int, greedy: bool) -> torch.cuda.CUDAGraph:
        """The captured decode step for n rows (captured on first use; state buffers are scratch here)."""
        key = (n, greedy)
        if key in self._graphs:
            return self._graphs[key]
        st = self.state
        st.tok.zero_(), st.pos.zero_(), st.slot.zero_(), st.step.zero_(), st.min_new.zero_()
        st.slot_valid[:n] = True
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up (allocator, cuBLAS handles) outside the capture
                self._decode_step(n, greedy)
                st.pos.zero_(), st.slot.zero_(), st.step.zero_()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self._decode_step(n, greedy)
        self._graphs[key] = graph
        return graph
