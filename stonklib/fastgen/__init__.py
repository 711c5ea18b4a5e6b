"""Fast rollouts for GRPO: a graph-captured bf16 decoder over the merged (NF4 + LoRA) policy.

- :mod:`~stonklib.fastgen.weights`: dense merged weights, NF4 dequantised once, LoRA re-merged on ``refresh``;
- :mod:`~stonklib.fastgen.decoder`: a pure-torch Llama/Qwen2 forward with a static KV cache;
- :mod:`~stonklib.fastgen.sampler`: :class:`FastSampler`, the :class:`~stonklib.rollout.Sampler` that uses them.
"""

from stonklib.fastgen.sampler import FastSampler
from stonklib.fastgen.weights import SUPPORTED_MODEL_TYPES, UnsupportedModelError

__all__ = ["FastSampler", "SUPPORTED_MODEL_TYPES", "UnsupportedModelError"]
