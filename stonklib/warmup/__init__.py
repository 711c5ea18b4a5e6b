"""The supervised format warm-up: the stage before GRPO, so the first policy answers in the format.

GRPO learns only from differences in reward within a group. A small model that never writes a
parsable answer gives it none; one that copies an example answer from the prompt gives every group
one answer, and GRPO goes silent (``docs/learning.md``). The warm-up fine-tunes a new LoRA on targets
written by code from each training example (:mod:`stonklib.warmup.targets`): the answer format, a
magnitude, a confidence, a justification citing values of that prompt, and, by default, a direction
from a seeded balanced coin, so it teaches the format and nothing about the market. Its
``output_dir/final`` adapter is where Stage I (or Stage II) starts: ``stage1_model: runs/warmup/final``.

``stonk warmup --config FILE`` runs :func:`run_warmup` with a :class:`~stonklib.config.WarmupConfig`
(the YAML's ``warmup:`` section).
"""

from __future__ import annotations

from typing import Any

from stonklib.config import WarmupConfig


def run_warmup(cfg: WarmupConfig, progress: bool = True) -> dict[str, Any]:
    """Everything ``stonk warmup`` does: build the targets, fine-tune, save ``output_dir/final``."""
    from stonklib.grpo.launch import make_sampler, start_run
    from stonklib.warmup.targets import build_targets
    from stonklib.warmup.trainer import EVAL_BATCH, WarmupTrainer

    run = start_run(cfg, "warmup")
    if run.dist.enabled:
        run.close()
        raise ValueError("the warm-up runs in one process: start it without torchrun/accelerate launch "
                         "(it takes minutes), then launch the GRPO stages on several GPUs.")
    try:
        pairs, skipped = build_targets(run.train, cfg.direction_source, cfg.justification, cfg.seed,
                                        cfg.magnitude_decimals)
        run.log.info("warm-up targets: %d examples, %d targets, skipped %s, direction source %s", len(pairs),
                     sum(len(ts) for _, ts in pairs), skipped, cfg.direction_source)
        sampler = make_sampler(cfg, run.policy, run.tokenizer, run.log, max_batch=EVAL_BATCH)
        trainer = WarmupTrainer(cfg, run.policy, run.tokenizer, pairs, run.val, run.log, sampler)
        summary = trainer.train(progress=progress) | {"skipped_targets": skipped}
        summary["final"] = str(run.save_final())
    finally:
        run.close()
    return summary
