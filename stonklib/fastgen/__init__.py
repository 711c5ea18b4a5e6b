"""Fast rollouts for GRPO: a graph-captured bf16 decoder over the merged (NF4 + LoRA) policy.

- :mod:`~stonklib.fastgen.weights`: dense merged weights, NF4 dequantised once, LoRA re-merged on ``refresh``;
- :mod:`~stonklib.fastgen.decoder`: a pure-torch Llama/Qwen2 forward with a static KV cache;
- :mod:`~stonklib.fastgen.sampler`: :class:`FastSampler`, the :class:`~stonklib.rollout.Sampler` that uses them;
- :mod:`~stonklib.fastgen.logprobs` and :mod:`~stonklib.fastgen.update`: the update's log-prob passes, each
  group's prompt computed once, over the PEFT/NF4 modules or over dense base weights with the LoRA unmerged.
"""

from stonklib.fastgen.sampler import FastSampler
from stonklib.fastgen.weights import SUPPORTED_MODEL_TYPES, UnsupportedModelError

__all__ = ["FastSampler", "SUPPORTED_MODEL_TYPES", "UnsupportedModelError"]
