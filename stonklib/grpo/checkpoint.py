"""Checkpoints that survive a crash: written to a temporary folder, then renamed.

A checkpoint folder ``checkpoint-{step}/`` holds:

- the PEFT adapter (``adapter_model.safetensors`` + ``adapter_config.json``) and the tokenizer;
- ``optimizer.pt``, ``scheduler.pt`` and ``rng.pt``, written with ``torch.save`` and read
  back with ``torch.load(weights_only=True)`` (no pickle code execution);
- ``trainer_state.json``: step, epoch, data position, best validation reward, market
  statistics and the byte sizes of the JSONL logs at this step.

- ``manifest.json``, written last: the size and SHA-256 of every other file.

A folder counts as complete only once it has been renamed from ``*.tmp``; a crash
mid-write leaves a ``.tmp`` folder that :func:`latest_checkpoint` ignores. A complete folder
damaged later (a truncated adapter or optimizer file, a disk that filled up) fails its manifest:
:func:`latest_checkpoint` names it and falls back to the newest checkpoint that passes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from stonklib.config import ConfigError, TrainConfig

if TYPE_CHECKING:
    from stonklib.grpo.distributed import Dist

STATE = "trainer_state.json"
MANIFEST = "manifest.json"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors / plain lists, so ``weights_only`` loading accepts them."""
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((3, tuple(int(x) for x in state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, *, model, tokenizer, optimizer, scheduler, state: dict[str, Any]) -> Path:
    """Write ``folder`` atomically and return it."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    for name, obj in (("optimizer.pt", optimizer.state_dict()), ("scheduler.pt", scheduler.state_dict()),
                      ("rng.pt", rng_state())):
        _save(obj, tmp / name)
    (tmp / STATE).write_text(json.dumps(state, indent=2))
    (tmp / MANIFEST).write_text(json.dumps(manifest(tmp), indent=2))
    _fsync_dir(tmp)
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def _save(obj: Any, path: Path) -> None:
    """``torch.save``, with a failed write (PyTorch reports a full disk as "unexpected pos ...") as an OSError
    naming the file, so the CLI says what happened instead of printing a traceback."""
    try:
        torch.save(obj, path)
    except RuntimeError as e:
        if "unexpected pos" not in str(e) and "write" not in str(e):
            raise
        raise OSError(errno.ENOSPC, f"writing the checkpoint failed ({e}); the disk is probably full", str(path)) from e


def _fsync_dir(d: Path) -> None:
    for p in d.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete ``checkpoint-*`` folders, oldest first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := _CKPT.match(p.name)) and (p / STATE).is_file()]
    return [p for _, p in sorted(found)]


def manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """file name -> its size and SHA-256, for every file of ``folder`` but the manifest."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out[str(p.relative_to(folder))] = {"bytes": p.stat().st_size, "sha256": h.hexdigest()}
    return out


def damage(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from (a file missing, cut short or changed, an unreadable state), or None.

    Checkpoints written before manifests existed are checked for a readable ``trainer_state.json`` only.
    """
    try:
        json.loads((folder / STATE).read_text())
    except (OSError, ValueError) as e:
        return f"{folder / STATE} is unreadable ({e})"
    if not (folder / MANIFEST).is_file():
        return None
    try:
        want = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        return f"{folder / MANIFEST} is unreadable ({e})"
    have = manifest(folder)
    for name, entry in want.items():
        got = have.get(name)
        if got is None:
            return f"{folder / name} is missing"
        if got["bytes"] != entry["bytes"]:
            return f"{folder / name} has {got['bytes']} bytes, {entry['bytes']} when it was written"
        if got["sha256"] != entry["sha256"]:
            return f"{folder / name} has changed since it was written (checksum mismatch)"
    return None


def latest_checkpoint(output_dir: str | Path, log: Any = None) -> Path | None:
    """The newest complete checkpoint that passes its manifest; each damaged newer one is logged by name."""
    for ckpt in reversed(list_checkpoints(output_dir)):
        why = damage(ckpt)
        if why is None:
            return ckpt
        (log or logging.getLogger(__name__)).warning("resume: skipping %s: %s; trying the previous checkpoint", ckpt.name, why)
    return None


def load_training_state(folder: Path, optimizer, scheduler) -> dict[str, Any]:
    """Restore optimizer, scheduler and RNG from ``folder``; return trainer_state.json."""
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(folder / "rng.pt", weights_only=True))
    return json.loads((folder / STATE).read_text())


def load_adapter_weights(model, folder: Path) -> None:
    """Load a checkpoint's adapter weights into an already-wrapped PEFT model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(Path(folder) / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"{folder}: adapter keys do not match the model: {result.unexpected_keys[:5]}")


def prune_checkpoints(output_dir: str | Path, keep: int | None) -> None:
    if not keep:
        return
    for p in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def save_and_prune(folder: Path, *, log, output_dir: str | Path, keep: int | None, **parts: Any) -> None:
    """:func:`save_checkpoint` (``parts``: model, tokenizer, optimizer, scheduler, state), logged; a
    ``checkpoint-N`` folder then prunes the older ones to ``keep`` (``best/`` and ``final/`` never count)."""
    save_checkpoint(folder, **parts)
    log.info("saved %s", folder)
    if folder.name.startswith("checkpoint-"):
        prune_checkpoints(output_dir, keep)


def resume_point(output_dir: str | Path, log) -> Path | None:
    """The checkpoint ``--resume`` continues from; ``None`` after emptying the run's logs when there is none
    (the run then starts afresh, and no line is written twice)."""
    ckpt = latest_checkpoint(output_dir, log)
    if ckpt is None:
        log.truncate({})
        log.info("resume: no complete checkpoint in %s, starting fresh", output_dir)
    return ckpt


def restore(ckpt: Path, *, model, optimizer, scheduler, log) -> dict[str, Any]:
    """Load a checkpoint's adapter, optimizer, scheduler and RNG state and cut the run's logs back to the
    step it was taken at; returns its trainer_state.json for the loop's own counters."""
    load_adapter_weights(model, ckpt)
    state = load_training_state(ckpt, optimizer, scheduler)
    log.truncate(state["log_offsets"])
    return state


def check_global_batch(state: dict[str, Any], cfg: TrainConfig, d: Dist, ckpt: Path) -> None:
    """Resume only with the checkpoint's prompts per step (``batch_size × world``), whatever N is.

    The data position is a step count over a seeded order of global batches, so the same global
    batch picks up exactly where it stopped; another one would replay or skip prompts.
    """
    saved_world = int(state.get("world_size", 1))
    saved = int(state.get("global_batch", cfg.batch_size * saved_world))
    now = cfg.batch_size * d.world
    if saved != now:
        hint = f"--batch_size {saved // d.world} with {d.world} processes, or " if saved % d.world == 0 else ""
        raise ConfigError(
            f"{ckpt} was trained with {saved} prompts per step (batch_size {saved // saved_world} x {saved_world} "
            f"processes); this launch has {now} (batch_size {cfg.batch_size} x {d.world}). The data position counts "
            f"steps of the global batch, so resume with the same global batch: {hint}"
            f"--batch_size {saved // saved_world} with {saved_world} processes.")


def check_rollout_shape(state: dict[str, Any], cfg: TrainConfig, ckpt: Path) -> None:
    """Resume only with the checkpoint's ``num_iterations`` and ``steps_per_generation``, at a rollout boundary.

    They decide which batch each optimizer step reads (:meth:`stonklib.grpo.trainer.GRPOTrainer.data_step`),
    and a rollout's samples are not saved, so a run resumes where a rollout starts, with the same rollouts.
    """
    saved = (int(state.get("num_iterations", 1)), int(state.get("steps_per_generation", 1)))
    now = (cfg.num_iterations, cfg.steps_per_generation)
    if saved != now:
        raise ConfigError(f"{ckpt} was trained with num_iterations={saved[0]}, steps_per_generation={saved[1]}; this "
                          f"launch has {now[0]}, {now[1]}. They decide which prompts each step reads: resume with "
                          f"--num_iterations {saved[0]} --steps_per_generation {saved[1]}.")
    if int(state["step"]) % (saved[0] * saved[1]):
        raise ConfigError(f"{ckpt} is at step {state['step']}, inside a rollout of {saved[0] * saved[1]} optimizer steps; "
                          "its samples were not saved, so it cannot resume. Resume from an earlier checkpoint.")
