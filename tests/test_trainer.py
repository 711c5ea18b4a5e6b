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
from stonklib.grpo.launch import run_training
from stonklib.grpo.runlog import read_jsonl
from stonklib.grpo.trainer import GRPOTrainer
from stonklib.models import load_policy
from stonklib.rewards import RewardBreakdown, parse_prediction
from stonklib.sampling.rollout import encode_prompts


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


@pytest.mark.parametrize("shared_prefix", [True, False])
def test_toy_reward_learns(peaky_model_dir, tmp_path, make_example, shared_prefix):
    """GRPO raises the mean reward of "start with this word" within 30 CPU steps, with either log-prob path.

    The target is a first token the untrained policy picks now and then (not its favourite), so
    there is signal from the start and the favourite is what GRPO must unlearn. (A "repeat the
    target" reward was tried and is fragile: the policy can collapse onto one sequence with the
    target once, where every group has zero advantage.)
    """
    cfg = _cfg(peaky_model_dir, tmp_path, num_generations=8, max_steps=30, shared_prefix_logprobs=shared_prefix)
    torch.manual_seed(0)
    policy, tok = load_policy(cfg, torch.device("cpu"))
    ids, mask = encode_prompts(tok, ["Say it:"] * 2, torch.device("cpu"))
    torch.manual_seed(123)
    with torch.no_grad():
        g = policy.generate(input_ids=ids[:1], attention_mask=mask[:1], do_sample=True, max_new_tokens=8,
                            num_return_sequences=64, top_k=0, pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(g[:, ids.shape[1]:], skip_special_tokens=True)
    firsts = Counter(tok.decode([t]) for t in g[:, ids.shape[1]].tolist())
    rate = {w: sum(t.startswith(w) for t in texts) / 64 for w in firsts if w.strip()}
    target = max((w for w, r in rate.items() if 0.05 <= r <= 0.5), key=rate.get)

    def toy(text, ex):
        return _toy_breakdown(float(text.startswith(target)), text)

    trainer = GRPOTrainer(cfg, policy, tok, [make_example()], [], reward_fn=toy)
    means = []
    for step in range(30):
        torch.manual_seed(step)
        means.append(float(trainer.step(ids, mask, [make_example()] * 2).rewards.mean()))
    first, last = sum(means[:5]) / 5, sum(means[-5:]) / 5
    assert last > first + 0.2, f"mean reward did not rise: {first:.3f} -> {last:.3f} ({means})"


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
               max_eval_samples=4, max_train_samples=16, tensorboard=True, kl_coef=0.05, max_prompt_tokens=900,
               eval_at_start=True, eval_samples=2)
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
    assert "update log-probs with dense_shared_prefix_logprobs" in log and "sampling with FastSampler" in log
    val = [r for r in read_jsonl(out / "train_metrics.jsonl") if "val/reward" in r]
    assert [r["step"] for r in val] == [0, 2, 4]  # eval_at_start adds the untrained baseline
    assert all(0.0 <= r["val/format_rate"] <= 1.0 and 0.0 <= r["val/parse_rate"] <= 1.0 for r in val)
    assert all("val/predicted_up_rate" in r for r in val)
    assert all(0.0 <= r["val/sampled_parse_rate"] <= 1.0 and "val/sampled_up_rate" in r for r in val)  # eval_samples
    steps = [r for r in read_jsonl(out / "train_metrics.jsonl") if "reward/total" in r]
    assert all(0.0 <= r["reward/zero_std_groups"] <= 1.0 for r in steps)


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


class _Recorder:
    """A sampler that records what the wrapped one produced (and otherwise behaves like it)."""

    def __init__(self, inner):
        self.inner, self.outputs = inner, []

    def sample(self, prompt_ids, prompt_mask, **kw):
        out = self.inner.sample(prompt_ids, prompt_mask, **kw)
        self.outputs.append(out.clone())
        return out

    def refresh(self, model):
        self.inner.refresh(model)


class _Replay:
    """A sampler that hands back recorded completions, in order."""

    def __init__(self, outputs):
        self.outputs = list(outputs)

    def sample(self, prompt_ids, prompt_mask, **kw):
        return self.outputs.pop(0)

    def refresh(self, model):
        pass


def test_the_graphed_update_takes_the_same_steps_as_the_eager_one(tiny_model_dir, tmp_path, make_example, monkeypatch):
    """The trainer's update from GraphedUpdate (as on one GPU) against the eager loop, with LoRA dropout and KL on.

    On CPU, with a stand-in graph (``tests/test_fastgen_update.py``) and the GPU's seeded dropout run by
    Triton's interpreter: step 1 is eager (first sight), step 2 captures, step 3 replays. Same completions,
    same seeds: every step's loss and stats, and the LoRA parameters after three AdamW steps, agree within 1e-6.
    """
    from stonklib.sampling import FastSampler
    from stonklib.update.graphs import GraphedUpdate
    from tests.test_fastgen_update import _interpreted_kernels, fake_update_record

    _interpreted_kernels()  # the GPU's seeded dropout through Triton's interpreter: triton_kernels="on"
    monkeypatch.setattr(GraphedUpdate, "_record", staticmethod(fake_update_record))

    def run(graphs: bool, sampler_for):
        monkeypatch.setattr(GraphedUpdate, "usable", staticmethod(lambda *a, **k: graphs))
        cfg = _cfg(tiny_model_dir, tmp_path / str(graphs), kl_coef=0.05, lora_dropout=0.2, temperature=0.7,
                   gradient_checkpointing=True, max_new_tokens=6, triton_kernels="on")
        torch.manual_seed(0)
        policy, tok = load_policy(cfg, torch.device("cpu"))
        trainer = GRPOTrainer(cfg, policy, tok, [make_example()], [], sampler=sampler_for(policy, tok),
                              reward_fn=lambda t, e: _toy_breakdown(float(len(t) % 5), t))
        assert (trainer.update.graphed is not None) == graphs
        ids, mask = encode_prompts(tok, ["Predict the stock", "Hello there, tell me"], torch.device("cpu"))
        steps = []
        for step in range(3):
            torch.manual_seed(step)
            res = trainer.step(ids, mask, [make_example()] * 2)
            steps.append((res.loss, res.stats))
        if graphs:
            assert trainer.update.graphed.captures == 1 and trainer.update.graphed.replays == 2
        return steps, {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" in n}

    rec = _Recorder(None)  # completions to replay in both runs, so sampling draws nothing from the generator
    run(False, lambda p, t: setattr(rec, "inner", FastSampler(p, t, max_batch=8, max_len=64)) or rec)
    eager_steps, eager_lora = run(False, lambda p, t: _Replay(rec.outputs))
    graph_steps, graph_lora = run(True, lambda p, t: _Replay(rec.outputs))
    for (gl, gs), (el, es) in zip(graph_steps, eager_steps, strict=True):
        assert abs(gl - el) < 1e-6 and set(gs) == set(es)
        assert all(abs(gs[k] - es[k]) < 1e-6 for k in es), (gs, es)
    for n, p in graph_lora.items():
        torch.testing.assert_close(p, eager_lora[n], rtol=0, atol=1e-6)


def test_kl_bias_correction_reaches_the_trainers_loss(tiny_model_dir, tmp_path, make_example):
    """``--kl_bias_correction`` switches the loss the update runs (eager and graphed alike: ``trainer.update.loss``)
    to k3 times the ratio: the same value at mu = 1, the reverse KL's score-function gradient."""
    grads = {}
    for on in (False, True):
        cfg = _cfg(tiny_model_dir, tmp_path / str(on), kl_coef=0.5, kl_bias_correction=on)
        policy, tok = load_policy(cfg, torch.device("cpu"))
        trainer = GRPOTrainer(cfg, policy, tok, [make_example()], [])
        logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
        ref = torch.tensor([[-1.5, -1.0, -0.5]])
        loss, _ = trainer.update.loss(logp, logp.detach(), ref, torch.zeros(1), torch.ones(1, 3))
        (g,) = torch.autograd.grad(loss, logp)
        grads[on] = (float(loss), g)
    assert abs(grads[True][0] - grads[False][0]) < 1e-6  # ratio == 1 in value
    d = torch.tensor([[-0.5, 1.0, 0.0]])  # ref - logp
    torch.testing.assert_close(grads[False][1], 0.5 * (1 - torch.exp(d)) / 3)  # k3's gradient, mean over 3 tokens
    torch.testing.assert_close(grads[True][1], 0.5 * -d / 3)  # (log pi - log pi_ref): reverse KL's score function


def test_fast_path_matches_the_reference_path_after_three_steps(tiny_model_dir, tmp_path, make_example):
    """FastSampler + dense shared-prefix log-probs vs HF-style full-forward log-probs, on the same completions.

    The fast path samples (its own random stream, so the reference replays its completions);
    both start from the same LoRA init and take 3 AdamW steps with KL on. Stated tolerance:
    every LoRA parameter within 1e-5 absolute (lr 1e-2, so each step moves them by ~1e-2), and
    each step's loss and KL within 1e-5. LoRA dropout is 0 here: the shared-prefix pass draws one
    dropout mask per prompt token for the whole group (documented), the full forward one per row.
    """
    from stonklib.sampling import FastSampler

    def run(fast: bool, sampler_for):
        cfg = _cfg(tiny_model_dir, tmp_path / ("fast" if fast else "ref"), kl_coef=0.05, lora_dropout=0.0,
                   temperature=0.7, top_p=0.9, shared_prefix_logprobs=fast, max_new_tokens=6)
        torch.manual_seed(0)
        policy, tok = load_policy(cfg, torch.device("cpu"))
        sampler = sampler_for(policy, tok)
        trainer = GRPOTrainer(cfg, policy, tok, [make_example()], [], sampler=sampler,
                              reward_fn=lambda t, e: _toy_breakdown(float(len(t) % 5), t))
        assert trainer.update.logprobs.__name__ == ("dense_shared_prefix_logprobs" if fast else "completion_logprobs")
        ids, mask = encode_prompts(tok, ["Predict the stock", "Hello there, tell me"], torch.device("cpu"))
        steps = []
        for step in range(3):
            torch.manual_seed(step)
            res = trainer.step(ids, mask, [make_example()] * 2)
            assert not res.skipped
            steps.append((res.loss, res.stats["kl"], res.rewards.std().item()))
        lora = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" in n}
        return steps, lora, sampler

    fast_steps, fast_lora, rec = run(True, lambda p, t: _Recorder(FastSampler(p, t, max_batch=8, max_len=64)))
    ref_steps, ref_lora, _ = run(False, lambda p, t: _Replay(rec.outputs))
    assert all(s[2] > 0 for s in fast_steps)  # every step had a learning signal
    for (fl, fk, _), (rl, rk, _) in zip(fast_steps, ref_steps, strict=True):
        assert abs(fl - rl) < 1e-5 and abs(fk - rk) < 1e-5
    torch.manual_seed(0)
    init = load_policy(_cfg(tiny_model_dir, tmp_path / "init", lora_dropout=0.0), torch.device("cpu"))
    moved = max(float((fast_lora[n] - p.detach()).abs().max()) for n, p in init[0].named_parameters() if "lora_" in n)
    assert moved > 1e-3  # the parameters really moved, so the comparison means something
    for n, p in fast_lora.items():
        torch.testing.assert_close(p, ref_lora[n], rtol=0, atol=1e-5)

