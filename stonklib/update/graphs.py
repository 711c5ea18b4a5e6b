"""The GRPO update's passes and backward replayed from one CUDA graph.

An update of a 1.5B model is thousands of small kernel launches (reference pass, policy pass, loss,
checkpoint recompute and backward). Launched eagerly, the host time for those launches, not the GPU,
sets the pace, and it moves from step to step (``benchmarks/RESULTS.md`` has the counts and times).
:class:`GraphedUpdate` captures them once per shape and replays them with one launch:

1. the reference log-probs (no grad, adapters off), when the KL term needs them;
2. the policy log-probs with grad (LoRA dropout on, layers checkpointed);
3. the caller's loss over both (``loss_fn``; the trainer passes :func:`stonklib.grpo.loss.grpo_loss`);
4. ``loss.backward()`` into the LoRA parameters' gradients.

Gradient clipping and the optimizer step stay eager (a few fused launches), so the optimizer, its
state and checkpoints are untouched. What makes the capture possible:

- **No generator state.** LoRA dropout draws its masks from a seed tensor on the device
  (:mod:`stonklib.kernels.dropout`), rewritten before every replay, so each replay has new
  masks and checkpointing saves no RNG state (capturing forbids reading it).
- **No host syncs inside.** The stream's geometry (which prompts are distinct) needs one; it is built
  before the graph and copied into the graph's static inputs, with the advantages and the mask.
- **Static gradients.** The capture starts with every gradient None, so the backward pass allocates
  them in the graph's memory pool and each replay overwrites them; after a replay they are put back
  on the parameters (the trainer drops them after its optimizer step).

Batch shapes. The prompt length (the batch's longest prompt) and the completion length (its
longest completion) change from step to step in real training. A graph is captured for a prompt
and a completion length and replays any batch no longer than those, padded up to them (:func:`_fit`:
extra left pads on the prompts, extra right pads on the completions, all masked out, so the loss is
the unpadded batch's). The first batch it does not cover runs eagerly; the second one triggers a new
capture for the longest lengths seen, so the graph grows to the run's longest batch in a few
captures and is replayed from then on (a batch with another number of distinct prompts runs
eagerly). A capture runs the passes once more on a side stream first (kernel compilation, autotuning,
cuBLAS workspaces). Padding costs GPU time on the padded tokens; the saved host time outweighs it
(``benchmarks/RESULTS.md``, the padded replay). At most ``max_graphs`` graphs are kept
(one by default), each holding its own memory pool (about the eager update's peak). Replay equals
the eager passes with the same seed (``benchmarks/update_profile.py`` checks it on the GPU). Where
this does not apply (no CUDA, several micro-batches, DDP, the module path) the trainer runs the
update eagerly; ``TrainConfig.update_graphs`` switches it off.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from stonklib.models import adapters_off
from stonklib.update.prefix import StreamGeometry, stream_logprobs

#: ``loss_fn(logp, ref_logp_or_None, *extras) -> (loss, stats)``, stats a dict of 0-dim tensors.
LossFn = Callable[..., tuple[Tensor, dict[str, Tensor]]]


@dataclass
class _Entry:
    graph: torch.cuda.CUDAGraph
    geo: StreamGeometry  # static inputs
    extras: tuple[Tensor, ...]
    out: Tensor  # [loss, *stats], static output
    keys: list[str]
    grads: list[Tensor | None]
    p: int  # prompt and completion lengths it was captured for; shorter batches are padded up to them
    c: int


def _fit(ids: Tensor, attn: Tensor, extras: tuple[Tensor, ...], c: int, to_p: int, to_c: int):
    """A batch of prompt length ``P = len - c`` and ``c`` completion tokens padded to ``to_p`` and ``to_c``.

    Prompts gain left pads and completions right pads, all masked out (id 0, mask 0), as the batch's own
    pads are: positions come from the mask's cumulative sum and no real token attends to a pad, so the
    real tokens' log-probs are those of the unpadded batch (up to float rounding), and the loss, which
    only reads masked-in completion tokens, is the same. 2-D ``extras`` of ``c`` columns get zero columns.
    """
    p = ids.shape[1] - c
    if (p, c) == (to_p, to_c):
        return ids, attn, extras

    def pad(t: Tensor, left: int, right: int) -> Tensor:
        return torch.nn.functional.pad(t, (left, right), value=0)

    ids = torch.cat([pad(ids[:, :p], to_p - p, 0), pad(ids[:, p:], 0, to_c - c)], 1)
    attn = torch.cat([pad(attn[:, :p], to_p - p, 0), pad(attn[:, p:], 0, to_c - c)], 1)
    extras = tuple(pad(e, 0, to_c - c) if e.dim() == 2 and e.shape[1] == c else e for e in extras)
    return ids, attn, extras


class GraphedUpdate:
    """One GRPO update's forward passes, loss and backward from a CUDA graph per shape (module docstring).

    ``logprobs`` is the trainer's :class:`~stonklib.update.dense.DenseLogprobs` (its blocks must
    draw seeded dropout: :attr:`~stonklib.update.dense.DenseBlocks.rng_free`); ``params`` the
    trainable parameters, whose ``.grad`` each call leaves as the backward pass computed it.
    """

    def __init__(self, logprobs, params: list[Tensor], max_graphs: int = 1):
        if not logprobs.blocks.rng_free:
            raise ValueError("GraphedUpdate needs seeded LoRA dropout (DenseBlocks.rng_free: CUDA with the fused "
                             "kernels on); run the update eagerly instead.")
        self.logprobs, self.blocks, self.params = logprobs, logprobs.blocks, list(params)
        self.max_graphs = max_graphs
        self.graphs: OrderedDict[tuple, _Entry] = OrderedDict()
        self.pending: dict[tuple, tuple[int, int, int]] = {}  # batches no graph covered: max lengths, count
        self.captures = self.replays = 0
        logprobs.ref_graphs = False  # the reference pass is inside this graph; no second graph for it

    @staticmethod
    def usable(logprobs, device: torch.device, *, micro_batches: int, distributed: bool, graphs: bool = True) -> bool:
        """Whether the trainer's update can run from graphs: asked for (``graphs``), CUDA, dense seeded blocks,
        one micro-batch, one process."""
        blocks = getattr(logprobs, "blocks", None)
        return (graphs and device.type == "cuda" and micro_batches == 1 and not distributed and blocks is not None
                and getattr(blocks, "rng_free", False))

    def __call__(self, model, input_ids: Tensor, attention_mask: Tensor, n_completion: int, temperature: float,
                 extras: tuple[Tensor, ...], loss_fn: LossFn, with_ref: bool,
                 chunk_tokens: int = 1024) -> tuple[Tensor, dict[str, Tensor]] | None:
        """Loss and stats (detached copies) after the backward pass, or None when this batch runs eagerly.

        ``extras`` go to ``loss_fn`` after the log-probs; 2-D ones of ``n_completion`` columns (the mask) are
        completion-aligned and padded with zeros like the completions (see :func:`_fit`).
        """
        n, c = input_ids.shape[0], n_completion
        p = input_ids.shape[1] - c
        fam = (n, input_ids.dtype, tuple((e.dim(), e.dtype) for e in extras), float(temperature), bool(with_ref),
               int(chunk_tokens), id(model), id(loss_fn))
        entry = self.graphs.get(fam)
        if entry is None or p > entry.p or c > entry.c:
            # Not covered: run eagerly, and on the second such batch capture one that covers both (and the old one).
            wp, wc, count = self.pending.get(fam, (0, 0, 0))
            wp, wc = max(wp, p, entry.p if entry else 0), max(wc, c, entry.c if entry else 0)
            if count + 1 < 2:
                self.pending[fam] = (wp, wc, count + 1)
                return None
            self.pending.pop(fam, None)
            ids, attn, ext = _fit(input_ids, attention_mask, extras, c, wp, wc)
            geo = StreamGeometry.of(model, ids, attn, wc)
            entry = self._capture(fam, model, geo, ext, temperature, loss_fn, with_ref, chunk_tokens, wp, wc)
        else:
            ids, attn, ext = _fit(input_ids, attention_mask, extras, c, entry.p, entry.c)
            geo = StreamGeometry.of(model, ids, attn, entry.c)
        if any(a.shape != b.shape for a, b in zip(geo.tensors(), entry.geo.tensors(), strict=True)):
            return None  # another count of distinct prompts (two identical prompts in the batch): eagerly
        for dst, src in zip((*entry.geo.tensors(), *entry.extras), (*geo.tensors(), *ext), strict=True):
            dst.copy_(src)
        self.blocks.reseed()
        entry.graph.replay()
        for param, g in zip(self.params, entry.grads, strict=True):
            param.grad = g
        self.graphs.move_to_end(fam)
        self.replays += 1
        out = entry.out.clone()
        return out[0], dict(zip(entry.keys, out[1:], strict=True))

    def _passes(self, model, geo: StreamGeometry, extras: tuple[Tensor, ...], temperature: float, loss_fn: LossFn,
                with_ref: bool, chunk_tokens: int) -> tuple[Tensor, list[str]]:
        """The captured work: reference and policy log-probs, the loss, its backward; ``[loss, *stats]`` and the stat names."""
        ref = None
        if with_ref:
            with torch.no_grad(), adapters_off(model):
                ref = stream_logprobs(model, geo, temperature, chunk_tokens, self.blocks)
        logp = stream_logprobs(model, geo, temperature, chunk_tokens, self.blocks)
        loss, stats = loss_fn(logp, ref, *extras)
        loss.backward()
        return torch.stack([loss.detach().float(), *(v.float() for v in stats.values())]), list(stats)

    def _capture(self, key: tuple, model, geo: StreamGeometry, extras: tuple[Tensor, ...], temperature: float,
                 loss_fn: LossFn, with_ref: bool, chunk_tokens: int, p: int, c: int) -> _Entry:
        static_geo = StreamGeometry(*(t.clone() for t in geo.tensors()))
        static_extras = tuple(t.clone() for t in extras)

        def run():
            return self._passes(model, static_geo, static_extras, temperature, loss_fn, with_ref, chunk_tokens)

        saved = [param.grad for param in self.params]
        self.graphs.pop(key, None)  # a graph this one outgrows, then the oldest: their pools go before this one fills
        while len(self.graphs) >= self.max_graphs:
            self.graphs.popitem(last=False)
        graph, (out, keys), grads = self._record(run, self.params)
        for param, g in zip(self.params, saved, strict=True):
            param.grad = g
        self.graphs[key] = _Entry(graph, static_geo, static_extras, out, keys, grads, p, c)
        self.captures += 1
        return self.graphs[key]

    @staticmethod
    def _record(run, params: list[Tensor]):
        """Warm ``run`` up on a side stream, then capture it with every gradient None; (graph, its output, the gradients)."""
        for p in params:
            p.grad = None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compile and autotune kernels, build attention plans
            run()
        torch.cuda.current_stream().wait_stream(side)
        for p in params:
            p.grad = None  # so the captured backward allocates the gradients in the graph's pool
        # The eager passes' freed blocks would stay cached beside the graph's pool for good: hand them back first.
        torch.cuda.empty_cache()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = run()
        return graph, out, [p.grad for p in params]
