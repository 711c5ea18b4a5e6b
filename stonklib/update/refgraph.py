"""The update's reference pass replayed from a CUDA graph.

The reference log-probs are a grad-free pass with the adapters off: no dropout, no LoRA, only the
base weights, so nothing in it changes between steps except its inputs. Its ~1,000 kernel launches
(at the ``seed`` shape) cost host time in every step; replayed from a CUDA graph they cost one.

:class:`GraphedStream` keys graphs by the stream's shapes (:class:`~stonklib.update.prefix.StreamGeometry`:
rows, distinct prompts, prompt and completion length), the temperature and the model. A shape is
captured the second time it is seen, so batches whose shapes never repeat (completions of varying
length, say) run eagerly and pay nothing; at most ``max_graphs`` graphs are kept (each holds its own
memory pool). CUDA only; :class:`~stonklib.update.dense.DenseLogprobs` uses it unless its ``ref_graphs``
is off (``TrainConfig.update_graphs``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor

from stonklib.update.prefix import StreamGeometry, stream_logprobs


class GraphedStream:
    """:func:`~stonklib.update.prefix.stream_logprobs` without grad, from CUDA graphs keyed by shape (see the module docstring)."""

    def __init__(self, max_graphs: int = 2, remember: int = 64):
        self.max_graphs, self.remember = max_graphs, remember
        self.graphs: OrderedDict[tuple, tuple[torch.cuda.CUDAGraph, StreamGeometry, Tensor]] = OrderedDict()
        self.seen: OrderedDict[tuple, int] = OrderedDict()
        self.captures = self.replays = 0

    def __call__(self, model, geo: StreamGeometry, temperature: float, chunk_tokens: int, blocks) -> Tensor | None:
        """The log-probs from a replayed graph, or None when this shape should run eagerly (first sight)."""
        key = (tuple((t.shape, t.dtype) for t in geo.tensors()), float(temperature), int(chunk_tokens), id(model),
               id(blocks))
        entry = self.graphs.get(key)
        if entry is None:
            self.seen[key] = self.seen.pop(key, 0) + 1
            while len(self.seen) > self.remember:
                self.seen.popitem(last=False)
            if self.seen[key] < 2:
                return None
            entry = self._capture(key, model, geo, temperature, chunk_tokens, blocks)
        graph, static, out = entry
        for dst, src in zip(static.tensors(), geo.tensors(), strict=True):
            dst.copy_(src)
        graph.replay()
        self.graphs.move_to_end(key)
        self.replays += 1
        return out.clone()

    def _capture(self, key: tuple, model, geo: StreamGeometry, temperature: float, chunk_tokens: int, blocks):
        static = StreamGeometry(*(t.clone() for t in geo.tensors()))
        graph, out = self._record(lambda: stream_logprobs(model, static, temperature, chunk_tokens, blocks))
        while len(self.graphs) >= self.max_graphs:
            self.graphs.popitem(last=False)
        self.graphs[key] = (graph, static, out)
        self.captures += 1
        return self.graphs[key]

    @staticmethod
    def _record(fn) -> tuple[torch.cuda.CUDAGraph, Tensor]:
        """Run ``fn`` once on a side stream (kernel compilation, attention plans), then capture it."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
        return graph, out
