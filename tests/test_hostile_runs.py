"""Hostile run state (issue #21): damaged checkpoints are named and skipped, never crashed into, and a
resume before the first checkpoint starts with empty logs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stonklib.config import DataConfig, TrainConfig
from stonklib.data import build_dataset
from stonklib.grpo.checkpoint import MANIFEST, damage, latest_checkpoint
from stonklib.grpo.launch import run_training
from stonklib.grpo.runlog import read_jsonl


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sp500-small")
    build_dataset(DataConfig(source="sp500", out=str(out), tickers=["AAPL", "MSFT"]), progress=False)
    return out


def cfg(model_dir, data, out, steps, **kw) -> TrainConfig:
    return TrainConfig(stage1_model=str(model_dir), data=str(data), output_dir=str(out), max_steps=steps,
                       save_steps=2, eval_steps=100, batch_size=2, num_generations=2, max_new_tokens=6,
                       max_train_samples=16, tensorboard=False, gradient_checkpointing=False, max_prompt_tokens=900,
                       lr=1e-3, **kw)


def cut(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


@pytest.mark.parametrize("victim", ["adapter_model.safetensors", "optimizer.pt", "trainer_state.json"])
def test_a_damaged_latest_checkpoint_is_named_and_the_previous_one_resumed(tiny_model_dir, small_data, tmp_path,
                                                                          victim):
    out = tmp_path / "run"
    run_training(cfg(tiny_model_dir, small_data, out, 4), progress=False)
    assert (out / "checkpoint-4" / MANIFEST).is_file()
    cut(out / "checkpoint-4" / victim, 100)
    assert victim in damage(out / "checkpoint-4")
    assert latest_checkpoint(out) == out / "checkpoint-2"

    run_training(cfg(tiny_model_dir, small_data, out, 6, resume=True), progress=False)
    log = (out / "training.log").read_text()
    assert "skipping checkpoint-4" in log and victim in log and "resumed from" in log and "checkpoint-2 at step 2" in log
    steps = [r["step"] for r in read_jsonl(out / "train_metrics.jsonl") if "reward/total" in r]
    assert steps == list(range(1, 7))  # steps 3-4 rerun from checkpoint-2, none twice


def test_resume_before_the_first_checkpoint_starts_with_empty_logs(tiny_model_dir, small_data, tmp_path):
    out = tmp_path / "run"
    run_training(cfg(tiny_model_dir, small_data, out, 1), progress=False)
    for ckpt in out.glob("checkpoint-*"):  # as if killed after step 1's logs, before its checkpoint
        shutil.rmtree(ckpt)
    assert latest_checkpoint(out) is None
    run_training(cfg(tiny_model_dir, small_data, out, 3, resume=True), progress=False)
    steps = [r["step"] for r in read_jsonl(out / "train_metrics.jsonl") if "reward/total" in r]
    assert steps == [1, 2, 3]
    assert "no complete checkpoint" in (out / "training.log").read_text()


def test_an_intact_checkpoint_passes_and_a_changed_byte_does_not(tiny_model_dir, small_data, tmp_path):
    out = tmp_path / "run"
    run_training(cfg(tiny_model_dir, small_data, out, 2), progress=False)
    ckpt = out / "checkpoint-2"
    assert damage(ckpt) is None
    sizes = json.loads((ckpt / MANIFEST).read_text())
    assert {"adapter_model.safetensors", "optimizer.pt", "trainer_state.json"} <= set(sizes)
    p = ckpt / "scheduler.pt"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    assert "checksum" in damage(ckpt)
