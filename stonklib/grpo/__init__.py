"""GRPO: the loss and the loop, with everything a run writes.

- :mod:`~stonklib.grpo.loss`: group advantages and the clipped surrogate with its KL term (pure tensors);
- :mod:`~stonklib.grpo.lengths`: truncated completions, their length statistics, DAPO's overlong penalty;
- :mod:`~stonklib.grpo.trainer`: :class:`~stonklib.grpo.trainer.GRPOTrainer`, sample → score → advantages → loss → step,
  ``num_iterations x steps_per_generation`` optimizer steps per rollout;
- :mod:`~stonklib.grpo.policy_update`: :class:`~stonklib.grpo.policy_update.PolicyUpdate`, one step's log-prob
  passes, loss and backward (from a CUDA graph where one applies);
- :mod:`~stonklib.grpo.launch`: :func:`~stonklib.grpo.launch.run_training`, ``stonk train`` as a function;
- :mod:`~stonklib.grpo.checkpoint`, :mod:`~stonklib.grpo.runlog`, :mod:`~stonklib.grpo.market`: atomic
  checkpoints, the run's logs, running market-bias statistics;
- :mod:`~stonklib.grpo.distributed`: data-parallel plumbing for ``torchrun`` / ``accelerate launch``.

Import the submodules; this package imports nothing, so the pure loss loads without the loop.
"""
