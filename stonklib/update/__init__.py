"""The update's per-token log-probs: what the GRPO loss needs from the network, fast.

- :mod:`~stonklib.update.head`: the chunked LM head (no ``[B, T, vocab]`` tensor) and the
  full-forward pass, the reference every faster pass is checked against;
- :mod:`~stonklib.update.prefix`: each group's prompt through the network once, its G completions
  attending to it (the model's own modules per layer);
- :mod:`~stonklib.update.dense`: the same layer over dense base weights with the LoRA applied
  unmerged (no NF4 dequantisation or PEFT module call per pass);
- :mod:`~stonklib.update.refgraph` and :mod:`~stonklib.update.graphs`: the reference pass, and the
  whole update with its backward pass, replayed from CUDA graphs;
- :mod:`~stonklib.update.pick`: which of these the trainer runs.
"""

from stonklib.update.head import (
    CHUNK_TOKENS,
    completion_logprobs,
    logprobs_from_hidden,
    selective_log_softmax,
)
from stonklib.update.pick import pick_logprobs

__all__ = ["CHUNK_TOKENS", "completion_logprobs", "logprobs_from_hidden", "pick_logprobs", "selective_log_softmax"]
