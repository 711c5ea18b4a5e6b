"""Which log-prob pass the update runs: the full forward, the shared-prefix pass, or its dense variant."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import Tensor

from stonklib.kernels import wanted as wanted_kernels
from stonklib.sampling.weights import ArchSpec, DecoderWeights, UnsupportedModelError, causal_lm
from stonklib.update.dense import DenseLogprobs
from stonklib.update.head import completion_logprobs
from stonklib.update.prefix import ModuleBlocks, shared_prefix_logprobs


def pick_logprobs(model, shared_prefix: bool = True, dense: bool = False,
                  sampler_weights: DecoderWeights | None = None, lora_matmul_dtype: str = "adapter",
                  kernels: bool | None = None, ref_graphs: bool = True) -> Callable[..., Tensor]:
    """The update's log-prob function: the full forward, :func:`shared_prefix_logprobs`, or its dense variant.

    ``shared_prefix`` asks for :func:`shared_prefix_logprobs` (architectures it does not implement get
    the full forward); ``dense`` for :class:`~stonklib.update.dense.DenseLogprobs` on top of it, which
    is used when it costs little memory: the base weights are dense already (no quantisation), or
    ``sampler_weights`` (FastSampler's dense copy) can lend the adapter-free projections.
    ``lora_matmul_dtype`` and ``ref_graphs`` go to :class:`~stonklib.update.dense.DenseLogprobs`;
    ``kernels`` (:func:`stonklib.kernels.wanted`) to whichever pass runs: the plain functions when the
    kernels are off, bound to them when on. Every result has a ``__name__`` (``training.log`` says which
    pass ran).
    """
    fused = wanted_kernels(kernels, causal_lm(model).get_input_embeddings().weight.device)
    full = _named(completion_logprobs, fused=True) if fused else completion_logprobs
    if not shared_prefix:
        return full
    try:
        ArchSpec.from_model(model)
    except UnsupportedModelError:
        return full
    if dense and (sampler_weights is not None or not _quantized(model)):
        try:
            return DenseLogprobs(model, sampler_weights, lora_matmul_dtype=lora_matmul_dtype, kernels=kernels,
                                 ref_graphs=ref_graphs)
        except UnsupportedModelError:
            pass
    return _named(shared_prefix_logprobs, blocks=ModuleBlocks(fused=True)) if fused else shared_prefix_logprobs


def _named(fn: Callable[..., Tensor], **bound) -> Callable[..., Tensor]:
    out = partial(fn, **bound)
    out.__name__ = fn.__name__  # type: ignore[attr-defined]
    return out


def _quantized(model) -> bool:
    return any(getattr(p, "quant_state", None) is not None for p in causal_lm(model).parameters())



