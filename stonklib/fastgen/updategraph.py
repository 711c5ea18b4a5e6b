"""The GRPO update's passes and backward replayed from one CUDA graph.

After sampling, an update at the ``seed`` shape is ~185 ms of GPU work in ~6,300 kernel launches
(reference pass, policy pass, loss, checkpoint recompute and backward). Launched eagerly, the host
time for those launches, not the GPU, sets the pace, and it moves from step to step (0.22-0.44 s for
the same inputs on an H100; ``benchmarks/RESULTS.md``). :class:`GraphedUpdate` captures them once per
shape and replays them with one launch:

1. the reference log-probs (no grad, adapters off), when the KL term needs them;
2. the policy log-probs with grad (LoRA dropout on, layers checkpointed);
3. the caller's loss over both (``loss_fn``; the trainer passes :func:`stonklib.grpo.grpo_loss`);
4. ``loss.backward()`` into the LoRA parameters' gradients.

Gradient clipping and the optimizer step stay eager (a few fused launches), so the optimizer, its
state and checkpoints are untouched. What makes the capture possible:

- **No generator state.** LoRA dropout draws its masks from a seed tensor on the device
  (:mod:`stonklib.fastgen.kernels.dropout`), rewritten before every replay, so each replay has new
  masks and checkpointing saves no RNG state (capturing forbids reading it).
- **No host syncs inside.** The stream's geometry (which prompts are distinct) needs one; it is built
  before the graph and copied into the graph's static inputs, with the advantages and the mask.
- **Static gradients.** The capture starts with every gradient None, so the backward pass allocates
  them in the graph's memory pool and each replay overwrites them; after a replay they are put back
  on the parameters (the trainer drops them after its optimizer step).

A shape is captured the second time it is seen (after a warm-up run of the same passes on a side
stream: kernel compilation, autotuning, cuBLAS workspaces), so shapes that never repeat run eagerly
and pay nothing; at most ``max_graphs`` graphs are kept, each holding its own memory pool (about the
eager update's peak). Replay equals the eager passes with the same seed (``benchmarks/update_profile.py``
checks it on the GPU). Where this does not apply (no CUDA, several micro-batches, DDP, the module
path) the trainer runs the update eagerly; ``STONKLIB_UPDATE_GRAPHS=0`` switches it off.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from stonklib.fastgen import refgraph
from stonklib.fastgen.logprobs import StreamGeometry, stream_logprobs
from stonklib.models import adapters_off

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


class GraphedUpdate:
    """One GRPO update's forward passes, loss and backward from a CUDA graph per shape (module docstring).

    ``logprobs`` is the trainer's :class:`~stonklib.fastgen.update.DenseLogprobs` (its blocks must
    draw seeded dropout: :attr:`~stonklib.fastgen.update.DenseBlocks.rng_free`); ``params`` the
    trainable parameters, whose ``.grad`` each call leaves as the backward pass computed it.
    """

    def __init__(self, logprobs, params: list[Tensor], max_graphs: int = 1, remember: int = 64):
        if not logprobs.blocks.rng_free:
            raise ValueError("GraphedUpdate needs seeded LoRA dropout (DenseBlocks.rng_free: CUDA with the fused "
                             "kernels on); run the update eagerly instead.")
        self.logprobs, self.blocks, self.params = logprobs, logprobs.blocks, list(params)
        self.max_graphs, self.remember = max_graphs, remember
        self.graphs: OrderedDict[tuple, _Entry] = OrderedDict()
        self.seen: OrderedDict[tuple, int] = OrderedDict()
        self.captures = self.replays = 0
        logprobs.ref_graphs = False  # the reference pass is inside this graph; no second graph for it

    @staticmethod
    def usable(logprobs, device: torch.device, *, micro_batches: int, distributed: bool) -> bool:
        """Whether the trainer's update can run from graphs: CUDA, dense seeded blocks, one micro-batch, one process."""
        blocks = getattr(logprobs, "blocks", None)
        return (device.type == "cuda" and refgraph.enabled(torch.empty(0, device=device)) and micro_batches == 1
                and not distributed and blocks is not None and getattr(blocks, "rng_free", False))

    def __call__(self, model, input_ids: Tensor, attention_mask: Tensor, n_completion: int, temperature: float,
                 extras: tuple[Tensor, ...], loss_fn: LossFn, with_ref: bool,
                 chunk_tokens: int = 1024) -> tuple[Tensor, dict[str, Tensor]] | None:
        """Loss and stats (detached copies) after the backward pass, or None when this shape runs eagerly (first sight)."""
        geo = StreamGeometry.of(model, input_ids, attention_mask, n_completion)
        key = (tuple((t.shape, t.dtype) for t in (*geo.tensors(), *extras)), float(temperature), bool(with_ref),
               int(chunk_tokens), id(model), id(loss_fn))
        entry = self.graphs.get(key)
        if entry is None:
            if not refgraph.seen_again(self.seen, key, self.remember):
                return None
            entry = self._capture(key, model, geo, extras, temperature, loss_fn, with_ref, chunk_tokens)
        for dst, src in zip((*entry.geo.tensors(), *entry.extras), (*geo.tensors(), *extras), strict=True):
            dst.copy_(src)
        self.blocks.reseed()
        entry.graph.replay()
        for p, g in zip(self.params, entry.grads, strict=True):
            p.grad = g
        self.graphs.move_to_end(key)
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
                 loss_fn: LossFn, with_ref: bool, chunk_tokens: int) -> _Entry:
        static_geo = StreamGeometry(*(t.clone() for t in geo.tensors()))
        static_extras = tuple(t.clone() for t in extras)

        def run():
            return self._passes(model, static_geo, static_extras, temperature, loss_fn, with_ref, chunk_tokens)

        saved = [p.grad for p in self.params]
        while len(self.graphs) >= self.max_graphs:  # release the oldest pool before this one fills
            self.graphs.popitem(last=False)
        graph, (out, keys), grads = self._record(run, self.params)
        for p, g in zip(self.params, saved, strict=True):
            p.grad = g
        self.graphs[key] = _Entry(graph, static_geo, static_extras, out, keys, grads)
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
