"""What the GRPO and warm-up loops share about their steps: the data order, the learning-rate schedule and
the guarded optimizer step.

Both loops are step-indexed: step ``s`` of a run reads the same examples and the same learning rate
whether the run was interrupted or not, which is what makes ``--resume`` exact.
"""

from __future__ import annotations

import math

import torch


def steps_per_epoch(n_examples: int, per_step: int) -> int:
    """Optimizer steps in one pass over ``n_examples`` taken ``per_step`` at a time (the last batch wraps)."""
    return max(1, math.ceil(n_examples / per_step))


def batch_indices(n_examples: int, step: int, per_step: int, seed: int) -> list[int]:
    """The example indices of ``step``: the next ``per_step`` of a per-epoch seeded permutation.

    Epoch ``e`` shuffles with random seed ``seed + e``; a batch that runs past the end wraps around
    to the start of the same permutation, so every step has ``per_step`` examples.
    """
    epoch, pos = divmod(step, steps_per_epoch(n_examples, per_step))
    order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return [order[(pos * per_step + k) % n_examples] for k in range(per_step)]


def make_scheduler(cfg, optimizer, total_steps: int):
    """The run's LR schedule (``cfg.lr_scheduler``, ``cfg.warmup_ratio``): linear warm-up, then the decay."""
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.lr_scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps),
                         num_training_steps=total_steps)


def guarded_step(optimizer, scheduler, loss: float, grad_norm: float) -> bool:
    """Apply the update unless the loss or the gradient norm is not finite (one bad batch must not poison the
    LoRA weights); either way advance the schedule, so step ``s`` keeps its learning rate, and clear the
    gradients. Returns whether the update was skipped (the caller counts it)."""
    skipped = not (math.isfinite(loss) and math.isfinite(grad_norm))
    if not skipped:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return skipped
