"""benchmarks/learning_curve.py end to end on a tiny model: it trains, reads the run back and writes its files.

The real benchmark (embedded SmolLM2, 100 CPU steps) takes about 40 minutes; this checks the
script's plumbing and its verdict arithmetic in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stonklib.config import DataConfig
from stonklib.data import build_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lc(learning_curve):
    return learning_curve


def _stage(points, steps):
    return {"validation": points, "steps": steps}


def test_the_verdict_reports_accuracy_collapse_signals_and_the_up_rate_bounds(lc):
    points = [{"step": 0, "val/accuracy": 0.5, "val/predicted_up_rate": 0.5},
              {"step": 50, "val/accuracy": 0.7, "val/predicted_up_rate": 0.6},
              {"step": 75, "val/accuracy": 0.95, "val/predicted_up_rate": 0.45},
              {"step": 100, "val/accuracy": 0.92, "val/predicted_up_rate": 0.9}]
    steps = [{"step": i, "reward/zero_std_groups": 0.8, "reward/zero_std_wrong_groups": 0.1,
              "completions/distinct_share": 0.5} for i in range(1, 101)]
    v = lc.verdict({"train": _stage(points, steps)})
    assert v["accuracy"] == {"first": 0.5, "last": 0.92, "best": 0.95, "first_step_at_target": 75}
    assert v["end"]["zero_std_groups"] == pytest.approx(0.8) and v["end"]["zero_std_wrong_groups"] == pytest.approx(0.1)
    assert v["no_collapse"]["up_rates_after_step_50"] == [0.45, 0.9]  # step 50 itself is not "after step 50"
    assert not v["no_collapse"]["up_rate_within_0.2_0.8_after_step_50"]
    assert not v["no_collapse"]["zero_std_groups_at_most_0.7"]
    assert "first reached at GRPO step 75" in v["text"]
    assert "sampled_up_rates_after_step_50" not in v["no_collapse"]  # only with eval_samples
    sampled = [p | {"val/sampled_up_rate": r} for p, r in zip(points, (0.5, 0.1, 0.45, 0.55), strict=True)]
    s = lc.verdict({"train": _stage(sampled, steps)})["no_collapse"]
    assert s["sampled_up_rates_after_step_50"] == [0.45, 0.55] and s["sampled_up_rate_within_0.2_0.8_after_step_50"]
    two = lc.verdict({"stage1": _stage(points[:2], steps[:50]), "stage2": _stage(points[2:], steps[:50])})
    assert two["grpo_steps"] == 100  # stage II's steps are counted on from stage I's last


def test_the_verdict_reports_training_seconds_to_the_target_and_the_sampler_gap(lc):
    points = [{"step": 0, "val/accuracy": 0.5}, {"step": 4, "val/accuracy": 0.95}, {"step": 8, "val/accuracy": 1.0}]
    steps = [{"step": i, "step_s": 0.5 * i, "sampler/logp_gap": 0.01 * i, "sampler/logp_gap_max": 0.1 * i}
             for i in range(1, 9)]
    v = lc.verdict({"train": _stage(points, steps)})
    assert v["train_seconds_at_target"] == pytest.approx(0.5 * (1 + 2 + 3 + 4))  # steps 1..4, validation excluded
    assert v["train_seconds"] == pytest.approx(0.5 * 36)
    assert v["sampler_logp_gap"] == {"mean": pytest.approx(0.045), "max": pytest.approx(0.8), "steps": 8}
    assert "5.0 s of training to reach it" in v["text"] and "max 0.800" in v["text"]
    never = lc.verdict({"train": _stage(points[:1], steps)})
    assert never["train_seconds_at_target"] is None and "gap" in never["text"]


def test_runs_the_pipeline_reads_back_and_writes_json_and_png(lc, tiny_model_dir, tmp_path):
    import yaml

    data = tmp_path / "data"
    build_dataset(DataConfig(source="sp500", out=str(data), tickers=["AAPL", "MSFT"]), progress=False)
    common = dict(data=str(data), device="cpu", prompt_version="compact_format", max_prompt_tokens=400,
                  max_new_tokens=4, max_train_samples=8, max_eval_samples=2, gradient_checkpointing=False,
                  tensorboard=False)
    cfg = tmp_path / "lc.yaml"
    cfg.write_text(yaml.safe_dump({
        "warmup": common | {"model": str(tiny_model_dir), "output_dir": str(tmp_path / "w"), "max_steps": 2,
                            "batch_size": 2},
        "train": common | {"output_dir": str(tmp_path / "g"), "max_steps": 2, "eval_steps": 1, "eval_at_start": True,
                           "batch_size": 2, "num_generations": 2}}))
    results = tmp_path / "results"
    args = ["--config", str(cfg), "--results", str(results), "--machine", "t", "--set", "warmup.lr=0.002"]
    got = lc.main(args)
    assert [p["step"] for p in got["stages"]["train"]["validation"]] == [0, 1, 2]
    assert [s["step"] for s in got["stages"]["train"]["steps"]] == [1, 2]
    assert got["config"]["warmup"]["lr"] == 0.002 and len(got["warmup"]) == 2  # before and after the warm-up
    (path,) = results.glob("t-learning_curve-lc-*.json")
    saved = json.loads(path.read_text())
    assert saved["verdict"] == got["verdict"] and "zero_std_groups" in saved["verdict"]["end"]
    assert path.with_suffix(".png").stat().st_size > 10_000
    again = lc.main(args)  # finished stages are only re-read, not trained again
    assert again["stages"]["train"]["validation"] == got["stages"]["train"]["validation"]
