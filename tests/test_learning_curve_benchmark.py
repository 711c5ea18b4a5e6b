"""benchmarks/learning_curve.py end to end on a tiny model: it trains, reads the run back and writes its files.

The real benchmark (embedded SmolLM2, 100 CPU steps) takes about 40 minutes; this checks the
script's plumbing and its verdict arithmetic in seconds.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from stonklib.config import DataConfig
from stonklib.data import build_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lc():
    spec = importlib.util.spec_from_file_location("learning_curve", ROOT / "benchmarks" / "learning_curve.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_verdict_compares_first_and_last_points(lc):
    points = [{"step": 0, "val/reward": 0.5, "val/format_rate": 0.03125},
              {"step": 10, "val/reward": 2.0, "val/format_rate": 0.5},
              {"step": 20, "val/reward": 1.5, "val/format_rate": 0.25}]
    v = lc.verdict(points, n_val=32)
    assert v["val/reward"] == {"first": 0.5, "last": 1.5, "change": 1.0, "max": 2.0}
    assert v["val/format_rate"]["change"] == pytest.approx(0.21875)
    assert v["rose"] is True
    assert "32 prompts" in v["text"] and "3.1%" in v["text"]
    collapsed = [{"steps": [11, 20], "distinct_share": 0.01, "zero_std_groups": 1.0, "predicted_up_rate": 0.0}]
    v = lc.verdict(points, n_val=32, wins=collapsed)
    assert v["collapsed"] and "every parsed answer said down" in v["text"] and "not skill" in v["text"]
    healthy = [{"steps": [11, 20], "distinct_share": 0.9, "zero_std_groups": 0.1, "predicted_up_rate": 0.4}]
    assert "collapsed" not in lc.verdict(points, n_val=32, wins=healthy)
    fell = lc.verdict([points[1], points[2]], n_val=32)
    assert fell["rose"] is False
    assert "fewer than two" in lc.verdict(points[:1], n_val=32)["text"]


def test_runs_reads_back_and_writes_json_and_png(lc, tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    build_dataset(DataConfig(source="sp500", out=str(data), tickers=["AAPL", "MSFT"]), progress=False)
    out, results = tmp_path / "run", tmp_path / "results"
    args = ["--stage1_model", str(tiny_model_dir), "--data", str(data), "--output_dir", str(out),
            "--results", str(results), "--tag", "t", "--max_steps", "2", "--eval_steps", "1",
            "--max_eval_samples", "2", "--batch_size", "2", "--num_generations", "2", "--max_new_tokens", "4",
            "--max_train_samples", "8"]
    got = lc.main(args)
    assert [p["step"] for p in got["validation"]] == [0, 1, 2]  # eval_at_start from the YAML, then every step
    assert [p["step"] for p in got["train"]] == [1, 2]
    saved = json.loads((results / "t-learning_curve.json").read_text())
    assert saved["verdict"] == got["verdict"] and saved["config"]["prompt_version"] == "compact_example"
    assert (results / "t-learning_curve.png").stat().st_size > 10_000
    (win,) = got["train_windows"]  # steps 1-2 fall in the first window of 10
    assert win["steps"] == [1, 10] and win["completions"] == 2 * 2 * 2
    assert 0 < win["distinct_share"] <= 1 and 0 <= win["zero_std_groups"] <= 1
    again = lc.main(args)  # a finished run is only re-read, not trained again
    assert again["wall_s_this_invocation"] is None and again["validation"] == got["validation"]
