"""Triton kernels for the CUDA decode step (fused decode attention, the MLP for few rows, the top-p draw)
and, in :mod:`~stonklib.kernels.train`, :mod:`~stonklib.kernels.logp` and :mod:`~stonklib.kernels.dropout`,
for the update (RMSNorm, SwiGLU, RoPE, the log-prob head and seeded LoRA dropout, forward and backward).
Only :mod:`stonklib.sampling` and :mod:`stonklib.update` import this package; each kernel sits beside
its plain-torch reference. Whether they run is the caller's ``kernels=`` argument (:func:`wanted`),
which the trainer sets from ``TrainConfig.triton_kernels``.

Why: at 16 rows of a 1.5B model the plain-torch decoder's attention is about nine small kernels per
layer (RoPE, two cache writes, a masked batched matmul, softmax, casts, a second batched matmul), and
a decode step is bound by launching them (``benchmarks/RESULTS.md`` has the profile).

:func:`decode_attention` does RoPE on q and the new k, writes the new k/v into the cache, and
attends over the cache in one split-KV kernel plus one combine kernel per layer. Only cache slots
up to the current one are read (the plain decoder reads all ``max_len`` slots and masks).

:class:`SkinnyMLP` is a layer's MLP for a decode step's few rows (16 at ``seed``): gate|up with
``silu(gate) * up`` fused, and down with the residual add fused, split-K over a float32
workspace (atomics, so the order of the float sums is not fixed run to run); faster than cuBLAS plus
the eager SiLU-gating at these few rows (``benchmarks/decode_kernels.py`` times both).

:func:`sample_top_p` is the sampler's sort-free nucleus draw (``_sample_top_p``: k candidates from
the full softmax, the first inside the nucleus wins) in four kernels that read the [N, V] logits
twice; the plain-torch version materialises k x N x V noise every token step.

The attention and the MLP have plain-torch twins (``*_reference``) with the same semantics; the
tests compare them, and check the sampler's distribution, on CPU through Triton's interpreter
(``TRITON_INTERPRET=1``). Triton is optional: without it (or without CUDA) the sampler keeps its
plain-torch path.
"""


from __future__ import annotations

import os

import torch

from stonklib.kernels._triton import triton
from stonklib.kernels.attention import ATTENTION_CONFIG, decode_attention, decode_attention_reference
from stonklib.kernels.mlp import MLP_CONFIG, SkinnyMLP, skinny_mlp_reference
from stonklib.kernels.topp import sample_top_p

__all__ = ["ATTENTION_CONFIG", "MLP_CONFIG", "SkinnyMLP", "available", "decode_attention", "decode_attention_reference",
           "sample_top_p", "skinny_mlp_reference", "wanted"]


def available(device: torch.device) -> bool:
    """True when the Triton kernels can run on ``device`` (CUDA, or CPU under ``TRITON_INTERPRET=1``)."""
    if triton is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def wanted(on: bool | None, device: torch.device) -> bool:
    """Whether a caller asked to run the kernels on ``device`` (the ``kernels=`` argument of the fast path).

    ``None`` (the default everywhere): on CUDA when Triton is installed, the ``triton_kernels`` config
    switch left on; ``False``: never (the plain-torch twins); ``True``: wherever Triton can run, which
    on CPU means Triton's interpreter (how the tests run them).
    """
    if on is None:
        return device.type == "cuda" and available(device)
    return bool(on) and available(device)
