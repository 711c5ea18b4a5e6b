"""Sampling: G completions per prompt from the current policy, as one :class:`Rollout`.

- :mod:`~stonklib.sampling.rollout`: the :class:`Rollout` record, the :class:`Sampler` protocol, the
  reference :class:`HFSampler` (``model.generate``) and :func:`rollout`, which all the others go through;
- :mod:`~stonklib.sampling.weights`: a dense copy of the merged policy (NF4 dequantised once, LoRA deltas
  re-merged on ``refresh``), read by the fast decoder and lent to the update;
- :mod:`~stonklib.sampling.decoder`: a plain-torch Llama/Qwen2 forward with a static KV cache (the oracle
  the Triton decode kernels are checked against);
- :mod:`~stonklib.sampling.fast`: :class:`FastSampler`, which decodes with them (graph-captured on CUDA).
"""

from stonklib.sampling.fast import FastSampler
from stonklib.sampling.rollout import HFSampler, Rollout, Sampler, encode_prompts, generate_texts
from stonklib.sampling.weights import SUPPORTED_MODEL_TYPES, UnsupportedModelError

# Not re-exported: the function rollout(), which would shadow its module stonklib.sampling.rollout.
__all__ = ["SUPPORTED_MODEL_TYPES", "FastSampler", "HFSampler", "Rollout", "Sampler", "UnsupportedModelError",
           "encode_prompts", "generate_texts"]
