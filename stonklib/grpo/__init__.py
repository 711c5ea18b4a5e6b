"""GRPO: the loss and the loop, with everything a run writes.

- :mod:`~stonklib.grpo.loss`: group advantages and the clipped surrogate with its KL term (pure tensors);
- :mod:`~stonklib.grpo.trainer`: :class:`~stonklib.grpo.trainer.GRPOTrainer`, sample → score → advantages → loss → step;
- :mod:`~stonklib.grpo.launch`: :func:`~stonklib.grpo.launch.run_training`, ``stonk train`` as a function;
- :mod:`~stonklib.grpo.checkpoint`, :mod:`~stonklib.grpo.runlog`, :mod:`~stonklib.grpo.market`: atomic
  checkpoints, the run's logs, running market-bias statistics;
- :mod:`~stonklib.grpo.distributed`: data-parallel plumbing for ``torchrun`` / ``accelerate launch``.

Import the submodules; this package imports nothing, so the pure loss loads without the loop.
"""
