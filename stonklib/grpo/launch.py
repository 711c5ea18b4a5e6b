"""Setting up and running one training job: ``stonk train`` in a function.

:func:`run_training` joins the process group when launched by ``accelerate
launch``/``torchrun``, loads the examples (natural or balanced sample) and the
policy (Stage I model + a new LoRA, optionally NF4), picks the sampler (the
:class:`~stonklib.sampling.fast.FastSampler` for Llama/Qwen2 models, graph-captured on CUDA,
the HF reference sampler for other architectures), and runs :class:`~stonklib.grpo.trainer.GRPOTrainer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from stonklib import config as cfglib
from stonklib.data.records import Example
from stonklib.grpo import distributed as D
from stonklib.grpo.runlog import RunLog
from stonklib.grpo.trainer import GRPOTrainer
from stonklib.sampling.rollout import HFSampler


def make_sampler(cfg: cfglib.TrainConfig, policy, tokenizer, log: RunLog | None = None):
    """stonklib.sampling's sampler when asked for and the architecture is supported, else HF generate."""
    if cfg.fast_sampler:
        from stonklib.sampling import FastSampler, UnsupportedModelError

        try:
            return FastSampler(policy, tokenizer, max_batch=cfg.batch_size * cfg.num_generations,
                               max_len=cfg.max_prompt_tokens + cfg.max_new_tokens,
                               cuda_graphs=None if cfg.decode_graphs else False,
                               compile=None if cfg.compile_decoder else False,
                               kernels=cfglib.kernels_arg(cfg), mlp_kernel=cfg.decode_mlp_kernel)
        except UnsupportedModelError as e:
            if log is not None:
                log.info("fast sampler unavailable (%s); sampling with HF generate", e)
    return HFSampler(policy, tokenizer)


def load_examples_for(cfg: cfglib.TrainConfig) -> tuple[list[Example], list[Example]]:
    """Training examples (natural or balanced sample) and validation examples."""
    from stonklib.data import ensure_data, load_split, sample_examples

    data_dir = ensure_data(cfg.data)
    train_df = sample_examples(load_split(data_dir, "train"), cfg.max_train_samples, natural=cfg.natural_distribution,
                               seed=cfg.seed)
    val_df = load_split(data_dir, "val")
    val_df = val_df.iloc[_spread(len(val_df), cfg.max_eval_samples)]
    to_ex = lambda df: [Example.from_row(r) for r in df.to_dict("records")]  # noqa: E731
    return to_ex(train_df), to_ex(val_df)


def _spread(n: int, k: int) -> list[int]:
    """k row positions spread evenly over n (validation covers the whole val period)."""
    if k >= n:
        return list(range(n))
    return [int(i * n / k) for i in range(k)]


def run_training(cfg: cfglib.TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Everything ``stonk train`` does: set up, train, save the final adapter."""
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
        out.mkdir(parents=True, exist_ok=True)
        if not cfg.resume and _has_run(out):
            refusal = f"{out} already holds a run: pass --resume to continue it, or choose another --output_dir."
        else:
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
    log = RunLog(out, cfg.stage, is_main=dist.is_main, tensorboard=cfg.tensorboard)
    log.header(cfglib.to_dict(cfg), {"model": describe(policy), "world_size": dist.world, "device": str(device),
                                     "n_train": len(train), "n_val": len(val)})
    trainer = GRPOTrainer(cfg, policy, tok, train, val, dist=dist, runlog=log, sampler=make_sampler(cfg, policy, tok, log))
    try:
        summary = trainer.train(progress=progress)
        if dist.is_main:
            policy.save_pretrained(out / "final", safe_serialization=True)
            tok.save_pretrained(out / "final")
    finally:
        log.close()
        D.shutdown(dist)
    return summary


def _has_run(out: Path) -> bool:
    return any(out.glob("checkpoint-*")) or (out / "train_metrics.jsonl").exists()
