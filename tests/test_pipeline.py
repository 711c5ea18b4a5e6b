"""``stonk pipeline``: one config file runs warm-up -> GRPO -> evaluation, each stage from the last one's adapter."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from stonklib.config import ConfigError, DataConfig
from stonklib.data import build_dataset
from stonklib.pipeline import plan, run_pipeline


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sp500-pipeline")
    build_dataset(DataConfig(source="sp500", out=str(out), tickers=["AAPL", "MSFT", "XOM"]), progress=False)
    return out


def _write(tmp_path: Path, sections: dict) -> Path:
    p = tmp_path / "pipeline.yaml"
    p.write_text(yaml.safe_dump(sections))
    return p


def _sections(model_dir, data, tmp_path) -> dict:
    common = dict(data=str(data), device="cpu", prompt_version="compact_format", max_prompt_tokens=400,
                  max_train_samples=8, max_eval_samples=2, max_new_tokens=6, gradient_checkpointing=False,
                  tensorboard=False, lr=5e-3, warmup_ratio=0.0)
    return {"warmup": common | dict(model=str(model_dir), output_dir=str(tmp_path / "warmup"), max_steps=2,
                                    batch_size=2, save_steps=2, eval_steps=2),
            "train": common | dict(output_dir=str(tmp_path / "grpo"), max_steps=2, batch_size=2, num_generations=2,
                                   save_steps=2, eval_steps=2),
            "eval": dict(data=str(data), out=str(tmp_path / "eval"), limit=4, max_new_tokens=6, device="cpu",
                         prompt_version="compact_format", max_prompt_tokens=400)}


def test_the_chain_runs_each_stage_from_the_previous_ones_adapter(tiny_model_dir, small_data, tmp_path):
    results = run_pipeline(_write(tmp_path, _sections(tiny_model_dir, small_data, tmp_path)), progress=False)
    assert results["warmup"]["steps"] == 2 and results["train"]["steps"] == 2
    grpo = yaml.safe_load((tmp_path / "grpo" / "config.yaml").read_text())
    assert grpo["stage1_model"] == str(tmp_path / "warmup" / "final")  # GRPO started from the warm-up
    ev = yaml.safe_load((tmp_path / "eval" / "eval_config.yaml").read_text())
    assert ev["model"] == str(tmp_path / "warmup" / "final") and ev["adapter"] == str(tmp_path / "grpo" / "final")
    assert (tmp_path / "eval" / "metrics.json").is_file() and "verdict" in results["eval"]
    again = run_pipeline(_write(tmp_path, _sections(tiny_model_dir, small_data, tmp_path)), progress=False)
    assert again["warmup"]["skipped"] and again["train"]["skipped"]  # finished stages are not run twice


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["train"].update(lr=-1), "[train]: lr=-1"),  # why: a late stage's typo fails first, not last
    (lambda s: s["warmup"].update(direction_source="labels"), "[warmup]: direction_source='labels'"),
    (lambda s: s.update(stage3={}), "unknown section(s) ['stage3']"),
    (lambda s: s.update(stage1=dict(s["train"])), "either a train: section or stage1:/stage2:"),
    (lambda s: [s.pop("warmup"), s.pop("train")], "no training section"),
])
def test_every_section_is_checked_before_anything_runs(tiny_model_dir, small_data, tmp_path, edit, message):
    sections = _sections(tiny_model_dir, small_data, tmp_path)
    edit(sections)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        plan(_write(tmp_path, sections))
    assert time.perf_counter() - t0 < 5 and not (tmp_path / "warmup").exists()


def test_stage2_starts_from_stage1_and_stage1_from_the_warmup(tiny_model_dir, small_data, tmp_path):
    s = _sections(tiny_model_dir, small_data, tmp_path)
    s["stage1"] = s.pop("train") | {"stage": 1, "output_dir": str(tmp_path / "s1")}
    s["stage2"] = dict(s["stage1"]) | {"stage": 2, "output_dir": str(tmp_path / "s2")}
    steps = plan(_write(tmp_path, s))
    assert [st.section for st in steps] == ["warmup", "stage1", "stage2", "eval"]
    assert steps[1].starts_from == str(tmp_path / "warmup" / "final")
    assert steps[2].starts_from == str(tmp_path / "s1" / "final")
