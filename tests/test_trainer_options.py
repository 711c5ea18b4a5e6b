"""The trainer with the options of issue #24, on a tiny random Llama on CPU.

Several optimizer steps per rollout (``num_iterations``, ``steps_per_generation``): which steps update on
which groups, the old log-probs, the logs, checkpoints at rollout boundaries and an exact resume.
The length statistics, truncation masking, DAPO's overlong shaping, GSPO, batch scaling and the
sampler/trainer gap, each as it reaches the logs.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from stonklib.config import ConfigError, DataConfig, TrainConfig
from stonklib.data import build_dataset
from stonklib.grpo.checkpoint import check_rollout_shape
from stonklib.grpo.launch import run_training
from stonklib.grpo.runlog import read_jsonl
from stonklib.grpo.trainer import GRPOTrainer
from stonklib.models import load_policy
from stonklib.sampling.fast import FastSampler
from stonklib.sampling.rollout import encode_prompts


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sp500-options")
    build_dataset(DataConfig(source="sp500", out=str(out), tickers=["AAPL", "MSFT", "XOM", "JPM"]), progress=False)
    return out


def _cfg(model_dir, data, out, **kw) -> TrainConfig:
    base = dict(stage1_model=str(model_dir), data=str(data), output_dir=str(out), batch_size=2, num_generations=2,
                max_new_tokens=6, lr=1e-2, kl_coef=0.05, max_steps=4, save_steps=2, eval_steps=100, warmup_ratio=0.0,
                lr_scheduler="constant", gradient_checkpointing=False, tensorboard=False, max_train_samples=16,
                max_prompt_tokens=900)
    return TrainConfig(**(base | kw))


def _steps(out: Path) -> list[dict]:
    return [r for r in read_jsonl(out / "train_metrics.jsonl") if "reward/total" in r]


def test_two_passes_per_rollout_reuse_its_completions_with_a_live_clip(tiny_model_dir, small_data, tmp_path):
    cfg = _cfg(tiny_model_dir, small_data, tmp_path / "mu2", num_iterations=2, save_steps=1)
    run_training(cfg, progress=False)
    out = Path(cfg.output_dir)
    steps = _steps(out)
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and [r["iteration"] for r in steps] == [0, 1, 0, 1]
    # Pass 2 of each rollout scores the same completions (same rewards) against old log-probs fixed before pass 1.
    assert steps[0]["reward/total"] == steps[1]["reward/total"] and steps[2]["reward/total"] == steps[3]["reward/total"]
    rows = read_jsonl(out / "stage2_training_log.jsonl")  # each rollout's completions are written once
    assert Counter(r["step"] for r in rows) == Counter({1: 4, 3: 4})
    market = json.loads((out / "market_stats.json").read_text())
    assert market["actual_up"] + market["actual_down"] == len(rows)  # counted once per sampled answer
    # save_steps=1 falls inside rollouts: checkpoints wait for the rollout's end.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert (state["num_iterations"], state["steps_per_generation"]) == (2, 1)


def test_steps_per_generation_splits_one_rollout_into_fresh_batches(tiny_model_dir, small_data, tmp_path):
    cfg = _cfg(tiny_model_dir, small_data, tmp_path / "spg", steps_per_generation=2)
    run_training(cfg, progress=False)
    out = Path(cfg.output_dir)
    rows = read_jsonl(out / "stage2_training_log.jsonl")
    by_step = {s: {r["prompt_id"] for r in rows if r["step"] == s} for s in (1, 2, 3, 4)}
    assert all(len(v) == 2 for v in by_step.values())  # every step has its own batch_size prompts
    assert by_step[1] != by_step[2]
    steps = _steps(out)
    assert [r["iteration"] for r in steps] == [0, 0, 0, 0]
    assert "time/sample_s" in steps[0] and "time/sample_s" not in steps[1]  # one sampling call per rollout
    assert "time/old_logprobs_s" in steps[0]


def test_resume_at_a_rollout_boundary_matches_the_uninterrupted_run(tiny_model_dir, small_data, tmp_path):
    ref = _cfg(tiny_model_dir, small_data, tmp_path / "ref", num_iterations=2)
    run_training(ref, progress=False)
    cut = _cfg(tiny_model_dir, small_data, tmp_path / "cut", num_iterations=2)
    run_training(cut, progress=False)
    out = Path(cut.output_dir)
    shutil.rmtree(out / "checkpoint-4")  # as if killed during the second rollout
    shutil.rmtree(out / "final")
    run_training(_cfg(tiny_model_dir, small_data, out, num_iterations=2, resume=True), progress=False)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "loss"} for r in rows]  # noqa: E731
    assert strip(read_jsonl(out / "stage2_training_log.jsonl")) == strip(read_jsonl(Path(ref.output_dir) / "stage2_training_log.jsonl"))
    from safetensors.torch import load_file

    a = load_file(out / "final" / "adapter_model.safetensors")
    b = load_file(Path(ref.output_dir) / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_another_rollout_shape_or_a_step_inside_a_rollout(tiny_model_dir, small_data, tmp_path):
    cfg = _cfg(tiny_model_dir, small_data, tmp_path / "run", num_iterations=2, max_steps=2)
    run_training(cfg, progress=False)
    with pytest.raises(ConfigError, match="num_iterations=2"):
        run_training(_cfg(tiny_model_dir, small_data, cfg.output_dir, max_steps=4, resume=True), progress=False)
    # A checkpoint's bytes are checked on resume (an edited one is skipped), so the mid-rollout case is checked directly.
    state = json.loads((Path(cfg.output_dir) / "checkpoint-2" / "trainer_state.json").read_text())
    check_rollout_shape(state, cfg, Path("checkpoint-2"))  # a rollout boundary, the same shape: fine
    with pytest.raises(ConfigError, match="inside a rollout"):
        check_rollout_shape(state | {"step": 3}, cfg, Path("checkpoint-3"))


def test_rollout_shape_is_checked_in_the_config(tiny_model_dir):
    with pytest.raises(ConfigError, match="max_steps=3 must be a multiple"):
        TrainConfig(stage1_model=str(tiny_model_dir), num_iterations=2, max_steps=3)
    with pytest.raises(ConfigError, match="num_iterations=0"):
        TrainConfig(stage1_model=str(tiny_model_dir), num_iterations=0)
    with pytest.raises(ConfigError, match="overlong_buffer=500"):
        TrainConfig(stage1_model=str(tiny_model_dir), overlong_buffer=500, max_new_tokens=400)
    with pytest.raises(ConfigError, match="importance_sampling_level"):
        TrainConfig(stage1_model=str(tiny_model_dir), importance_sampling_level="seq")
    with pytest.raises(ConfigError, match="tis_cap"):
        TrainConfig(stage1_model=str(tiny_model_dir), tis_cap=0.0)


def test_lengths_truncation_overlong_gspo_batch_scaling_and_the_gap_reach_the_logs(tiny_model_dir, small_data, tmp_path):
    # A random tiny model rarely says EOS within 6 tokens: most completions are truncated.
    cfg = _cfg(tiny_model_dir, small_data, tmp_path / "opts", max_steps=2, overlong_buffer=3, overlong_penalty=0.5,
               importance_sampling_level="sequence", scale_rewards="batch", tis_cap=2.0)
    run_training(cfg, progress=False)
    out = Path(cfg.output_dir)
    steps = _steps(out)
    for r in steps:
        assert r["completions/max_length"] <= 6 and 0 <= r["completions/clipped_ratio"] <= 1
        assert -0.5 <= r["reward/overlong"] <= 0
        # The CPU sampler decodes the same float32 weights the update reads: the gap is float noise.
        assert 0 <= r["sampler/logp_gap"] < 1e-3 and r["sampler/logp_gap_max"] < 1e-2
        assert r["sampler/tis_weight"] == pytest.approx(1.0, abs=1e-3)
    assert steps[0]["completions/clipped_ratio"] > 0.5
    assert "reached max_new_tokens=6" in (out / "training.log").read_text()  # the one warning
    rows = read_jsonl(out / "stage2_training_log.jsonl")
    assert {r["rewards"]["overlong"] for r in rows} <= {0.0, -0.5 / 3, -1 / 3, -0.5}  # lengths 4..6 of max 6, buffer 3


def test_masked_truncated_completions_leave_the_loss(tiny_model_dir, small_data, tmp_path):
    cfg = _cfg(tiny_model_dir, small_data, tmp_path / "mask", max_steps=2, mask_truncated_completions=True, lr=0.5)
    run_training(cfg, progress=False)
    for r in _steps(Path(cfg.output_dir)):
        kept = (1 - r["completions/clipped_ratio"]) * 4  # completions of this step that ended with EOS
        assert (r["num_tokens"] == 0) == (kept == 0)
        if kept == 0:  # nothing left in the loss: no gradient at all (the KL term is masked too)
            assert r["grad_norm"] == 0.0


def test_old_logprobs_are_the_policy_as_sampled(tiny_model_dir, tmp_path, make_example):
    cfg = TrainConfig(stage1_model=str(tiny_model_dir), output_dir=str(tmp_path / "run"), batch_size=2,
                      num_generations=4, max_new_tokens=5, num_iterations=2, max_steps=2, kl_coef=0.0, lr=0.05,
                      gradient_checkpointing=False, tensorboard=False, temperature=1.0, top_p=1.0, warmup_ratio=0.0)
    torch.manual_seed(0)
    policy, tok = load_policy(cfg, torch.device("cpu"))
    sampler = FastSampler(policy, tok, max_batch=8, max_len=64)

    def toy(text, ex):  # a reward with spread inside every group: the text's length
        from stonklib.rewards import RewardBreakdown, parse_prediction

        return RewardBreakdown(float(len(text)), {k: 0.0 for k in ("direction", "magnitude", "confidence",
                                                                   "data_utilization", "format")}, parse_prediction(text))

    trainer = GRPOTrainer(cfg, policy, tok, [make_example()] * 2, [], sampler=sampler, reward_fn=toy)
    ids, mask = encode_prompts(tok, ["Say it:", "Say it again:"], torch.device("cpu"))
    seen = []
    orig = trainer._update

    def spy(roll, adv, loss_mask, old_logp=None):
        seen.append((roll.sampler_logp.clone(), None if old_logp is None else old_logp.clone(), loss_mask.clone()))
        return orig(roll, adv, loss_mask, old_logp)

    trainer._update = spy
    results = list(trainer.rollout_steps(ids, mask, [make_example()] * 2))
    assert len(results) == 2 and [r.iteration for r in results] == [0, 1]
    assert results[0].stats["ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # pass 1: pi == pi_old (up to dropout on B = 0)
    assert abs(results[1].stats["ratio_mean"] - 1.0) > 1e-4  # pass 2: the first update moved the policy
    assert torch.equal(results[0].rewards, results[1].rewards)
    (s1, o1, m1), (s2, o2, _) = seen
    assert torch.equal(o1, o2)  # the same pi_old in both passes
    keep = m1.bool()
    # pi_old is the sampling policy: on CPU the sampler's float32 log-probs agree to rounding.
    torch.testing.assert_close(o1[keep], s1[keep], rtol=0, atol=1e-4)
