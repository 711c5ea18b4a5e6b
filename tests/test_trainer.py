"""The trainer really trains: a tiny random Llama, a few CPU steps, checked for change.

The crash/resume test runs ``stonk train`` in a subprocess, kills it with SIGKILL
right after a checkpoint, resumes, and compares with an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from stonklib.config import REWARD_PARTS, DataConfig, TrainConfig
from stonklib.data import build_dataset
from stonklib.launch import run_training
from stonklib.models import load_policy
from stonklib.rewards import RewardBreakdown, parse_prediction
from stonklib.rollout import encode_prompts
from stonklib.runlog import read_jsonl
from stonklib.trainer import GRPOTrainer


@pytest.fixture(scope="module")
def peaky_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A tiny random Llama with large init, so its next-token distribution is peaked (learnable)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("peaky")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, initializer_range=1.0,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """The real S&P 500 data, restricted to a few tickers (seconds to build)."""
    out = tmp_path_factory.mktemp("sp500-small")
    build_dataset(DataConfig(source="sp500", out=str(out), tickers=["AAPL", "MSFT", "XOM", "JPM"]), progress=False)
    return out


def _toy_breakdown(r: float, text: str) -> RewardBreakdown:
    return RewardBreakdown(r, {k: (r if k == "format" else 0.0) for k in REWARD_PARTS}, parse_prediction(text))


def _cfg(model_dir, tmp_path, **kw) -> TrainConfig:
    base = dict(stage1_model=str(model_dir), output_dir=str(tmp_path / "run"), batch_size=2, num_generations=4,
                max_new_tokens=8, lr=1e-2, kl_coef=0.0, max_steps=3, warmup_ratio=0.0, lr_scheduler="constant",
                gradient_checkpointing=False, temperature=1.0, top_p=1.0, tensorboard=False)
    base.update(kw)
    return TrainConfig(**base)


def test_toy_reward_learns(peaky_model_dir, tmp_path, make_example):
    """GRPO raises the mean reward of "say the target token" within 30 CPU steps."""
    cfg = _cfg(peaky_model_dir, tmp_path, num_generations=8, max_steps=30)
    policy, tok = load_policy(cfg, torch.device("cpu"))
    ids, mask = encode_prompts(tok, ["Say it:"] * 2, torch.device("cpu"))
    torch.manual_seed(123)
    with torch.no_grad():
        g = policy.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=8,
                            num_return_sequences=8, top_k=0, pad_token_id=tok.pad_token_id)
    target = tok.decode([Counter(g[:, ids.shape[1]:].flatten().tolist()).most_common(1)[0][0]])

    def toy(text, ex):
        return _toy_breakdown(text.count(target) / 8, text)

    trainer = GRPOTrainer(cfg, policy, tok, [make_example()], [], reward_fn=toy)
    means = []
    for step in range(30):
        torch.manual_seed(step)
        means.append(float(trainer.step(ids, mask, [make_example()] * 2).rewards.mean()))
    first, last = sum(means[:5]) / 5, sum(means[-5:]) / 5
    assert last > first + 0.1, f"mean reward did not rise: {first:.3f} -> {last:.3f} ({means})"


def test_step_updates_only_the_adapter_and_keeps_the_reference(tiny_model_dir, tmp_path, make_example):
    cfg = _cfg(tiny_model_dir, tmp_path, kl_coef=0.05)
    policy, tok = load_policy(cfg, torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    ids, mask = encode_prompts(tok, ["Hello there", "Predict the stock"], torch.device("cpu"))
    with torch.no_grad(), policy.disable_adapter():
        ref_before = policy(input_ids=ids, attention_mask=mask).logits
    rewards = iter(range(1000))
    trainer = GRPOTrainer(cfg, policy, tok, [make_example()], [],
                          reward_fn=lambda t, e: _toy_breakdown(float(next(rewards) % 3), t))
    res = trainer.step(ids, mask, [make_example()] * 2)
    assert not res.skipped and math.isfinite(res.loss)
    assert res.rollout.completion_ids.shape[0] == 8 and len(res.rollout.texts) == 8  # 2 prompts x G=4
    changed = {n for n, p in policy.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)
    with torch.no_grad(), policy.disable_adapter():
        assert torch.allclose(policy(input_ids=ids, attention_mask=mask).logits, ref_before)
    assert res.stats["kl"] >= 0.0


def test_non_finite_reward_skips_the_update(tiny_model_dir, tmp_path, make_example):
    cfg = _cfg(tiny_model_dir, tmp_path)
    policy, tok = load_policy(cfg, torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    trainer = GRPOTrainer(cfg, policy, tok, [make_example()], [],
                          reward_fn=lambda t, e: _toy_breakdown(float("nan"), t))
    ids, mask = encode_prompts(tok, ["a", "b"], torch.device("cpu"))
    res = trainer.step(ids, mask, [make_example()] * 2)
    assert res.skipped and trainer.skipped_updates == 1
    assert all(torch.equal(p, before[n]) for n, p in policy.named_parameters() if p.requires_grad)


def test_run_training_writes_every_output(tiny_model_dir, small_data, tmp_path):
    cfg = _cfg(tiny_model_dir, tmp_path, data=str(small_data), max_steps=4, save_steps=2, eval_steps=2,
               max_eval_samples=4, max_train_samples=16, tensorboard=True, kl_coef=0.05, max_prompt_tokens=900)
    summary = run_training(cfg)
    out = Path(cfg.output_dir)
    assert summary["steps"] == 4
    for name in ("training.log", "stage2_training_log.jsonl", "market_stats.json", "config.yaml", "train_metrics.jsonl"):
        assert (out / name).is_file(), name
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-4"]
    for d in ("checkpoint-4", "best", "final"):
        assert (out / d / "adapter_model.safetensors").is_file(), d
    assert (out / "checkpoint-4" / "optimizer.pt").is_file() and (out / "checkpoint-4" / "rng.pt").is_file()
    assert list((out / "tb").glob("events.*"))
    rows = read_jsonl(out / "stage2_training_log.jsonl")
    assert len(rows) == 4 * 2 * 4
    keys = {"step", "epoch", "ticker", "date", "prompt_id", "completion", "predicted_direction", "actual_change_pct",
            "rewards", "reward_total", "advantage", "loss"}
    assert keys <= set(rows[0]) and set(rows[0]["rewards"]) == set(REWARD_PARTS)
    market = json.loads((out / "market_stats.json").read_text())
    assert market["actual_up"] + market["actual_down"] == len(rows)
    log = (out / "training.log").read_text()
    assert "config" in log and "system" in log and "HF_TOKEN" not in log


def _train_cmd(model_dir, data, out, steps):
    return [sys.executable, "-m", "stonklib.cli", "train", "--stage1_model", str(model_dir), "--data", str(data),
            "--output_dir", str(out), "--max_steps", str(steps), "--save_steps", "2", "--eval_steps", "100",
            "--batch_size", "2", "--num_generations", "2", "--max_new_tokens", "6", "--max_train_samples", "16",
            "--no-tensorboard", "--no-gradient_checkpointing", "--max_prompt_tokens", "900", "--lr", "1e-3"]


def test_sigkill_then_resume_matches_uninterrupted(tiny_model_dir, small_data, tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    ref, crash = tmp_path / "ref", tmp_path / "crash"
    subprocess.run(_train_cmd(tiny_model_dir, small_data, ref, 6), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(_train_cmd(tiny_model_dir, small_data, crash, 6), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (crash / "checkpoint-4" / "trainer_state.json").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(_train_cmd(tiny_model_dir, small_data, crash, 6) + ["--resume"], check=True, env=env,
                   capture_output=True)

    got, want = read_jsonl(crash / "stage2_training_log.jsonl"), read_jsonl(ref / "stage2_training_log.jsonl")
    raw = (crash / "stage2_training_log.jsonl").read_text()
    assert raw.endswith("\n") and len(raw.splitlines()) == len(got)  # no torn line
    steps = [r["step"] for r in got]
    assert steps == sorted(steps) and sorted(set(steps)) == list(range(1, 7))  # continuous
    assert Counter(steps) == Counter({s: 4 for s in range(1, 7)})  # none duplicated
    strip = lambda rows: [{k: v for k, v in r.items() if k != "loss"} for r in rows]  # noqa: E731
    assert strip(got) == strip(want)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    final = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), crash / "final")
    assert any("lora_" in n for n, _ in final.named_parameters())
