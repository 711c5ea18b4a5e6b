"""Setting up and running one training job: ``stonk train`` in a function.

:func:`run_training` joins the process group when launched by ``accelerate
launch``/``torchrun``, loads the examples (natural or balanced sample) and the
policy (Stage I model + a new LoRA, optionally NF4), picks the sampler (the
:class:`~stonklib.sampling.fast.FastSampler` for Llama/Qwen2 models, graph-captured on CUDA,
the HF reference sampler for other architectures), and runs :class:`~stonklib.grpo.trainer.GRPOTrainer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stonklib import config as cfglib
from stonklib.data.anonymize import anonymize
from stonklib.data.records import Example
from stonklib.grpo import distributed as D
from stonklib.grpo.runlog import RunLog
from stonklib.grpo.trainer import GRPOTrainer
from stonklib.sampling.rollout import HFSampler


def make_sampler(cfg, policy, tokenizer, log: RunLog | None = None, max_batch: int | None = None):
    """FastSampler when ``cfg.fast_sampler`` asks for it and the architecture is supported, else HF generate.

    ``cfg`` is a TrainConfig or a WarmupConfig (the fields they share set the fast path); ``max_batch``
    rows at most per call (default: one GRPO rollout's ``batch_size * steps_per_generation * num_generations``).
    """
    if max_batch is None and hasattr(cfg, "num_generations"):
        max_batch = cfg.batch_size * cfg.steps_per_generation * cfg.num_generations
    if cfg.fast_sampler:
        from stonklib.sampling import FastSampler, UnsupportedModelError

        try:
            return FastSampler(policy, tokenizer, max_batch=max_batch or cfg.batch_size * cfg.num_generations,
                               max_len=cfg.max_prompt_tokens + cfg.max_new_tokens,
                               cuda_graphs=None if cfg.decode_graphs else False,
                               compile=None if cfg.compile_decoder else False,
                               kernels=cfglib.kernels_arg(cfg), mlp_kernel=cfg.decode_mlp_kernel)
        except UnsupportedModelError as e:
            if log is not None:
                log.info("fast sampler unavailable (%s); sampling with HF generate", e)
    return HFSampler(policy, tokenizer)


def load_examples_for(cfg) -> tuple[list[Example], list[Example]]:
    """Training examples (natural or balanced sample; the warm-up: natural) and validation examples, anonymised
    with ``cfg.anonymize`` (:mod:`stonklib.data.anonymize`)."""
    from stonklib.data import ensure_data, load_split, sample_examples

    data_dir = ensure_data(cfg.data)
    train_df = sample_examples(load_split(data_dir, "train"), cfg.max_train_samples,
                               natural=getattr(cfg, "natural_distribution", True), seed=cfg.seed)
    val_df = load_split(data_dir, "val")
    val_df = val_df.iloc[_spread(len(val_df), cfg.max_eval_samples)]
    def to_ex(df) -> list[Example]:  # anonymised records are what the prompts show and the rewards ground
        exs = [Example.from_row(r) for r in df.to_dict("records")]
        return [anonymize(e) for e in exs] if getattr(cfg, "anonymize", False) else exs

    return to_ex(train_df), to_ex(val_df)


def _spread(n: int, k: int) -> list[int]:
    """k row positions spread evenly over n (validation covers the whole val period)."""
    if k >= n:
        return list(range(n))
    return [int(i * n / k) for i in range(k)]


@dataclass
class Run:
    """What a training stage needs before its loop: devices, the process group, data, the policy, the log."""

    cfg: Any
    device: torch.device
    dist: D.Dist
    train: list[Example]
    val: list[Example]
    policy: Any
    tokenizer: Any
    log: RunLog

    def save_final(self) -> Path:
        """The final adapter and tokenizer in ``output_dir/final`` (rank 0), the folder the next stage starts from."""
        out = Path(self.cfg.output_dir) / "final"
        if self.dist.is_main:
            self.policy.save_pretrained(out, safe_serialization=True)
            self.tokenizer.save_pretrained(out)
        return out

    def close(self) -> None:
        self.log.close()
        D.shutdown(self.dist)


def start_run(cfg, stage: int | str) -> Run:
    """Set up one training stage (GRPO or the warm-up) the way ``stonk train`` does, up to its loop.

    Joins the launcher's process group, refuses an ``output_dir`` that holds a run unless ``cfg.resume``,
    writes the resolved ``config.yaml``, loads the examples and the policy (the starting model plus a new
    LoRA, optionally NF4) and opens the run's log with the system and config header.
    """
    from stonklib.environment import prefer_expandable_segments
    from stonklib.models import describe, enable_checkpointing, load_policy, pick_device

    prefer_expandable_segments()  # before CUDA's first allocation
    device = pick_device(cfg.device)
    dist = D.init(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    out = Path(cfg.output_dir)
    refusal = None
    if dist.is_main:
        refusal = _refusal(out, cfg.resume)
        if refusal is None:
            cfglib.dump_yaml(cfg, out / "config.yaml")
    refusal = D.broadcast(refusal, dist)  # every rank stops with rank 0's message; none waits at a barrier
    if refusal:
        D.shutdown(dist)
        raise cfglib.ConfigError(refusal)
    torch.manual_seed(cfg.seed)
    with D.main_process_first(dist):  # a first run builds the default data / merges a Stage I adapter on disk once
        train, val = load_examples_for(cfg)
        # One device per rank: 4-bit weights load straight onto cuda:LOCAL_RANK (QLoRA + DDP, as peft documents).
        device_map = {"": device.index or 0} if device.type == "cuda" else None
        policy, tok = load_policy(cfg, device, device_map=device_map)
    if cfg.gradient_checkpointing:
        enable_checkpointing(policy)
    log = RunLog(out, stage, is_main=dist.is_main, tensorboard=cfg.tensorboard)
    log.header(cfglib.to_dict(cfg), {"model": describe(policy), "world_size": dist.world, "device": str(device),
                                     "n_train": len(train), "n_val": len(val)})
    return Run(cfg, device, dist, train, val, policy, tok, log)


def run_training(cfg: cfglib.TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Everything ``stonk train`` does: set up, train, save the final adapter."""
    run = start_run(cfg, cfg.stage)
    trainer = GRPOTrainer(cfg, run.policy, run.tokenizer, run.train, run.val, dist=run.dist, runlog=run.log,
                          sampler=make_sampler(cfg, run.policy, run.tokenizer, run.log))
    try:
        summary = trainer.train(progress=progress)
        run.save_final()
    finally:
        run.close()
    return summary


def _refusal(out: Path, resume: bool) -> str | None:
    """Why a stage may not write into ``out`` (it holds another run and ``--resume`` was not given), or None."""
    out.mkdir(parents=True, exist_ok=True)
    if not resume and _has_run(out):
        return f"{out} already holds a run: pass --resume to continue it, or choose another --output_dir."
    return None


def _has_run(out: Path) -> bool:
    return any(out.glob("checkpoint-*")) or (out / "train_metrics.jsonl").exists()
