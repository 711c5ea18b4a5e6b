"""Triton kernels for the CUDA decode step (fused decode attention, the MLP for few rows, the top-p draw)
and, in :mod:`~stonklib.fastgen.kernels.train` and :mod:`~stonklib.fastgen.kernels.logp`, for the
update (RMSNorm, SwiGLU, RoPE and the log-prob head, forward and backward).

Why: at the ``seed`` shape (16 rows, Qwen2.5-1.5B) the plain-torch decoder spends ~0.6 ms of a
3.2 ms decode step in ~9 attention kernels per layer (RoPE, two cache writes, a masked batched
matmul, softmax, casts, a second batched matmul; ``benchmarks/RESULTS.md``, decode profile).

:func:`decode_attention` does RoPE on q and the new k, writes the new k/v into the cache, and
attends over the cache in one split-KV kernel plus one combine kernel per layer. Only cache slots
up to the current one are read (the plain decoder reads all ``max_len`` slots and masks).

:class:`SkinnyMLP` is a layer's MLP for a decode step's few rows (16 at ``seed``): gate|up with
``silu(gate) * up`` fused, and down with the residual add fused, split-K over a float32
workspace (atomics, so the order of the float sums is not fixed run to run). On an H100 it is
22.5 + 9.3 us per layer against 30.1 + 11.3 us for cuBLAS plus the eager SiLU-gating.

:func:`sample_top_p` is the sampler's sort-free nucleus draw (``_sample_top_p``: k candidates from
the full softmax, the first inside the nucleus wins) in four kernels that read the [N, V] logits
twice; the plain-torch version materialises k x N x V noise and spends ~0.4 ms per token step on it.

The attention and the MLP have plain-torch twins (``*_reference``) with the same semantics; the
tests compare them, and check the sampler's distribution, on CPU through Triton's interpreter
(``TRITON_INTERPRET=1``). Triton is optional: without it (or without CUDA) the sampler keeps its
plain-torch path.
"""


from __future__ import annotations

import os

import torch

from stonklib.fastgen.kernels._triton import triton
from stonklib.fastgen.kernels.attention import ATTENTION_CONFIG, decode_attention, decode_attention_reference
from stonklib.fastgen.kernels.mlp import MLP_CONFIG, SkinnyMLP, skinny_mlp_reference
from stonklib.fastgen.kernels.topp import sample_top_p

__all__ = ["ATTENTION_CONFIG", "MLP_CONFIG", "SkinnyMLP", "available", "decode_attention", "decode_attention_reference",
           "sample_top_p", "skinny_mlp_reference"]


def available(device: torch.device) -> bool:
    """True when the Triton kernels can run on ``device`` (CUDA, or CPU under ``TRITON_INTERPRET=1``)."""
    if triton is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
