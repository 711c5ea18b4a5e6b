"""The analysis functions the notebooks call: stonklib.workbook.explore, reward_lab, findings and workbook.

Offline and fast: a toy CSV build, hand-made completions, hand-made metrics tables.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import example

from stonklib import workbook
from stonklib.config import DataConfig, EvalConfig
from stonklib.data import load_summary
from stonklib.data.records import Example
from stonklib.rewards import score
from stonklib.workbook import explore, findings, reward_lab


# ----------------------------------------------------------------- toy data
def toy_csv(path: Path, n_days: int = 80, tickers: str = "ABCD") -> Path:
    rng = np.random.default_rng(1)
    days = pd.bdate_range("2024-01-01", periods=n_days).strftime("%Y-%m-%d")
    frames = [pd.DataFrame({"Date": days, "Ticker": t, "Close": np.round(50 * np.cumprod(1 + rng.normal(0, 0.02, n_days)), 2),
                            "Volume": rng.integers(1000, 2000, n_days)}) for t in tickers]
    pd.concat(frames, ignore_index=True).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[DataConfig, Path]:
    tmp = tmp_path_factory.mktemp("explore")
    cfg = DataConfig(source="csv", csv=str(toy_csv(tmp / "toy.csv")), out=str(tmp / "out"), val_frac=0.15,
                     test_frac=0.15)
    return cfg, explore.prepare_data(cfg)


@pytest.fixture(scope="module")
def frames(built) -> dict[str, pd.DataFrame]:
    return explore.load_frames(built[1])


def frame(ups: list[bool], sectors: list[str], dates: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"ticker": [f"T{i}" for i in range(len(ups))], "date": dates, "sector": sectors,
                         "direction_1": ["up" if u else "down" for u in ups], "flat_1": [False] * len(ups),
                         "change_pct_1": [1.0 if u else -1.0 for u in ups], "month": [d[:7] for d in dates]})


# ------------------------------------------------------------------ explore
def test_prepare_data_reuses_a_matching_build_and_rebuilds_on_change(built, tmp_path):
    cfg, out = built
    stamp = (out / "summary.json").stat().st_mtime_ns
    assert explore.prepare_data(cfg) == out and (out / "summary.json").stat().st_mtime_ns == stamp
    changed = DataConfig(**{**cfg.__dict__, "embargo": 4, "out": str(tmp_path / "e4")})
    explore.prepare_data(changed)
    assert load_summary(tmp_path / "e4")["config"]["embargo"] == 4


def test_load_frames_reads_three_splits_with_month(frames):
    assert list(frames) == ["train", "val", "test"]
    assert all((df["month"] == df["date"].str[:7]).all() for df in frames.values())
    assert "history" not in frames["train"]


def test_label_distribution_overall_and_by_group():
    df = frame([True, True, False, True], ["A", "A", "B", ""], ["2024-01-02", "2024-01-03", "2024-02-01", "2024-02-02"])
    overall = explore.label_distribution(df)
    assert overall.loc["all", "n"] == 4 and overall.loc["all", "up"] == 0.75
    by = explore.label_distribution(df, by="sector")
    assert by.index.name == "sector" and list(by.index) == ["A", "B", "unknown"]  # empty sector -> unknown
    assert by.loc["A", "up"] == 1.0 and by.loc["B", "down"] == 1.0
    assert np.allclose(by["up"] + by["down"], 1.0)


def test_split_label_table_and_return_stats(frames):
    t = explore.split_label_table(frames)
    assert list(t.index) == ["train", "val", "test"] and t["date_max"]["train"] < t["date_min"]["val"]
    r = explore.return_stats(frames)
    assert ("test", "volatility_10d") in r.index
    assert (r["p01"] <= r["median"]).all() and (r["median"] <= r["p99"]).all()


def test_mix_comparison_balanced_is_exactly_half():
    df = frame([True] * 30 + [False] * 10, ["A"] * 40, [f"2024-01-{i % 28 + 1:02d}" for i in range(40)])
    mix = explore.mix_comparison(df, n=20, seed=0)
    assert mix.loc["balanced (Stage I)", "up"] == 0.5 and mix.loc["balanced (Stage I)", "n"] == 20
    assert mix.loc["natural (Stage II)", "up"] > 0.5  # the natural sample keeps the lean


def test_split_timeline_orders_segments_with_embargo(built):
    t = explore.split_timeline(load_summary(built[1]))
    assert list(t["segment"]) == ["train", "embargo train/val", "val", "embargo val/test", "test"]
    assert (t.loc[t["kind"] == "embargo", "n_dates"] == 3).all()
    assert (t["start"].to_numpy()[1:] > t["end"].to_numpy()[:-1]).all()  # strictly chronological


def test_leakage_report_passes_on_a_real_build(built):
    cfg, out = built
    rep = explore.leakage_report(out, cfg.embargo)
    assert rep["passed"].all() and len(rep) == 4
    assert "gaps of 3 and 3" in rep["detail"].iloc[-1]


def test_leakage_report_records_a_violation_instead_of_raising(built):
    rep = explore.leakage_report(built[1], embargo=10)  # the build kept 3 dates: a 10-date embargo is violated
    assert not rep["passed"].iloc[-1] and "embargo violated" in rep["detail"].iloc[-1]
    assert rep["passed"].iloc[:3].all()


def test_truncation_table_and_side_by_side(tokenizer_dir):
    from stonklib.models import load_tokenizer
    from stonklib.prompts import token_stats

    tok = load_tokenizer(str(tokenizer_dir))
    stats = token_stats([example(), example(ticker="XYZ")], tok, ("seed", "compact"), max_prompt_tokens=400)
    t = explore.truncation_table(stats)
    assert list(t.index) == ["seed", "compact"] and t.loc["seed", "truncated_share"] == 1.0
    assert t.loc["compact", "truncated_share"] == 0.0 and t.loc["seed", "median_tokens_fitted"] <= 400
    html = explore.side_by_side_html(example(), ["seed", "compact"], tok, 400)
    assert html.count("<pre") == 2 and "(truncated)" in html and "&lt;|im_start|&gt;" in html


# --------------------------------------------------------------- reward lab
EX_UP = example()  # actual day 1: up 1.2%
GOOD = "Day 1: UP 1.2% with 80% confidence\nJustification: close $100.00 on 2010-08-20."
WRONG = "Day 1: DOWN 1.2% with 80% confidence"


def groups_table(completions: list[list[str]], examples: list[Example]) -> pd.DataFrame:
    rows = [{"group": g, "ticker": examples[g].ticker, "date": examples[g].date, "completion": c}
            for g, cs in enumerate(completions) for c in cs]
    return reward_lab.reward_table(pd.DataFrame(rows), examples)


def test_reward_table_matches_score_and_reweights_linearly():
    t = groups_table([[GOOD, WRONG, "", GOOD]], [EX_UP])
    assert list(t["total"]) == pytest.approx([score(c, EX_UP).total for c in (GOOD, WRONG, "", GOOD)])
    assert list(t["predicted"]) == ["up", "down", "unknown", "up"] and (t["actual"] == "up").all()
    w = {"direction": 2.0, "format": 0.0}
    assert list(reward_lab.weighted_total(t, w)) == pytest.approx([score(c, EX_UP, w).total for c in t["completion"]])


def test_part_summary_and_correlations():
    t = groups_table([[GOOD, WRONG, "", GOOD]], [EX_UP])
    s = reward_lab.part_summary(t)
    assert s.loc["direction", "max"] == 2.5 and s.loc["direction", "share_nonzero"] == 0.5
    c = reward_lab.part_correlations(t)
    assert c.shape == (5, 5) and c.loc["direction", "direction"] == pytest.approx(1.0)


def test_zero_variance_share_per_group_size():
    ex2 = example(ticker="B")
    # why: group 0 differs only in its 3rd completion; group 1 is flat at every size
    t = groups_table([[WRONG, WRONG, GOOD], ["", "", ""]], [EX_UP, ex2])
    z = reward_lab.zero_variance_share(t, 3)
    assert list(z.index) == [2, 3]
    assert z.loc[2, "zero_variance_share"] == 1.0 and z.loc[3, "zero_variance_share"] == 0.5


def test_weight_sensitivity_detects_reorders_and_flattening():
    # why: A (6.0) wins on direction and confidence, B (3.3) only on data references
    a = "Day 1: UP 5.0% with 90% confidence"
    b = ("Day 1: DOWN 1.2% with 10% confidence\nJustification: close $100.00 on 2010-08-20, $100.50 previous, "
         "volume 1000000, 2010-08-19 $99.50, 2010-08-18 $99.00.")
    t = groups_table([[a, b]], [EX_UP])
    assert t.loc[0, "total"] > t.loc[1, "total"]
    s = reward_lab.weight_sensitivity(t, factors=(0.0, 2.0)).set_index(["part", "factor"])
    assert s.loc[("direction", 2.0), "kendall_tau"] == pytest.approx(1.0)  # reinforcing the winner: same order
    # why: doubling data_utilization lifts B (3.3 + 3.0) above A (6.0): the order flips
    assert s.loc[("data_utilization", 2.0), "best_changed"] == 1.0
    assert s.loc[("data_utilization", 2.0), "kendall_tau"] == pytest.approx(-1.0)
    assert s.loc[("format", 0.0), "flat_share"] == 0.0


def test_hacking_probes_none_beats_honest():
    probes = reward_lab.hacking_probes(EX_UP)
    assert probes.loc["honest", "total"] == probes["total"].max()
    assert not probes["beats_honest"].any()
    worst = reward_lab.worst_probe(probes)
    assert not worst["probe"].startswith("honest") and worst["margin"] > 0


def test_honest_answer_scores_direction_and_format():
    s = score(reward_lab.honest_answer(EX_UP), EX_UP)
    assert s.components["direction"] == 2.5 and s.components["format"] == 1.0 and s.n_references >= 1


# ----------------------------------------------------------------- findings
def test_data_findings_follow_the_numbers():
    splits = pd.DataFrame({"n": [100, 20, 20], "up": [0.4, 0.6, 0.55], "down": [0.6, 0.4, 0.45],
                           "flat": [0.01, 0.0, 0.0], "date_min": ["2024-01-01", "2024-06-01", "2024-08-01"],
                           "date_max": ["2024-05-01", "2024-07-01", "2024-09-01"], "tickers": [5, 5, 5]},
                          index=pd.Index(["train", "val", "test"], name="split"))
    sector = pd.DataFrame({"n": [50, 50], "up": [0.3, 0.5]}, index=["Energy", "Tech"])
    month = pd.DataFrame({"n": [50, 50], "up": [0.2, 0.7]}, index=["2024-01", "2024-02"])
    returns = pd.DataFrame({"median": [0.1, 2.0, 1.0], "p25": [-1, 0, 0], "p75": [1, 3, 2], "p01": [-5, 0, 0],
                            "p99": [5, 6, 4], "share_abs_gt_5": [0.02, 0, 0]},
                           index=pd.MultiIndex.from_tuples([("train", "change_pct_1"), ("train", "volatility_10d"),
                                                            ("test", "volatility_10d")]))
    mix = pd.DataFrame({"n": [100, 80], "up": [0.4, 0.5], "majority_accuracy": [0.6, 0.5]})
    leak = pd.DataFrame({"passed": [True, False]}, index=["history", "embargo"])
    md = findings.data_findings("csv", splits, sector, month, returns, mix, leak)
    assert md.startswith(findings.MARKER)
    assert "leans down" in md and "40.0%" in md and "Energy" in md and "2024-02" in md
    assert "swings more" in md and "test is calmer" in md and "1 of 2 passed" in md and "embargo" in md


def test_prompt_findings_report_truncation():
    stats = pd.DataFrame({"example": [0, 0, 1, 1], "version": ["seed", "compact"] * 2,
                          "n_tokens_full": [800, 300, 820, 310], "n_tokens": [400, 300, 400, 310],
                          "truncated": [True, False, True, False], "history_rows_kept": [2, 5, 3, 5]})
    md = findings.prompt_findings(stats, 400, "seed")
    assert md.startswith(findings.MARKER) and "100.0% exceed" in md and "raise max_prompt_tokens" in md
    assert "`compact` is 2.7x shorter" in md


def test_reward_findings_with_no_signal_and_with_signal():
    flat = groups_table([["", ""], ["", ""]], [EX_UP, example(ticker="B")])
    args = (reward_lab.part_summary(flat), reward_lab.part_correlations(flat),
            reward_lab.zero_variance_share(flat, 2), reward_lab.hacking_probes(EX_UP),
            reward_lab.weight_sensitivity(flat))
    md = findings.reward_findings(flat, *args, num_generations=2)
    assert "No part paid" in md and "100.0% of groups have zero reward variance" in md
    assert "cannot be measured" in md and "smoke check" in md
    varied = groups_table([[GOOD, WRONG]], [EX_UP])
    md = findings.reward_findings(varied, reward_lab.part_summary(varied), reward_lab.part_correlations(varied),
                                  reward_lab.zero_variance_share(varied, 2), reward_lab.hacking_probes(EX_UP),
                                  reward_lab.weight_sensitivity(varied), num_generations=2)
    assert "0.0% of groups have zero reward variance" in md and "none beats the honest answer" in md


def test_training_findings_handles_unparsed_and_short_runs():
    m = pd.DataFrame({"reward/total": [0.5, 1.0], "reward/format": [0.0, 0.5], "reward/direction": [0.5, 0.5],
                      "kl": [0.0, 0.01], "clip_fraction": [0.0, 0.1], "market/actual_up_rate": [0.5, 0.5]},
                     index=pd.Index([1, 2], name="step"))
    ck = pd.DataFrame(index=pd.Index(["checkpoint-2", "final"], name="folder"))
    md = findings.training_findings(m, ck, {"steps": 2, "best_val_reward": float("-inf")})
    assert "0.50 at step 1 and 1.00 at step 2" in md and "`format`" in md and "undefined" in md
    assert "checkpoint-2, final." in md and "cannot show a trend" in md
    m["market/predicted_up_rate"] = [0.9, 0.95]
    assert "more often than the market went up" in findings.training_findings(m, ck, {"steps": 2})
    assert "stalled" not in md and "constant prediction" not in md
    m["reward/zero_std_groups"] = [0.5, 1.0]  # both steps: tail mean 0.75 < 0.8
    assert "stalled" not in findings.training_findings(m, ck, {"steps": 2})
    m["reward/zero_std_groups"] = [1.0, 1.0]
    m["val/predicted_up_rate"] = [float("nan"), 0.0]
    md = findings.training_findings(m, ck, {"steps": 2})
    assert "100.0% of the groups" in md and "stalled" in md and "`zero_std_groups`" not in md
    assert "every parsed held-out answer said down" in md


def metrics(acc: float, n: int = 50, lo: float | None = None, hi: float | None = None) -> dict:
    return {"accuracy": acc, "accuracy_ci95": [lo if lo is not None else acc - 0.1, hi if hi is not None else acc + 0.1],
            "n": n, "verdict": f"Accuracy {acc:.2f}."}


def test_evaluation_findings_state_overlap_and_small_n():
    md = findings.evaluation_findings({"base": metrics(0.5), "stage2": metrics(0.55)}, "No Stage I model.")
    assert "**base**: Accuracy 0.50." in md and "+0.05" in md and "not established" in md
    assert "No Stage I model." in md and "50 rows" in md
    md = findings.evaluation_findings({"base": metrics(0.3, 500, 0.26, 0.34), "stage2": metrics(0.7, 500, 0.66, 0.74)}, "")
    assert "do not overlap" in md and "rows:" not in md


# ----------------------------------------------------------------- workbook
def test_fresh_output_dir(tmp_path):
    run = tmp_path / "run"
    assert workbook.fresh_output_dir(run) == str(run)
    run.mkdir()
    (run / "train_metrics.jsonl").write_text("")
    assert workbook.fresh_output_dir(run) == str(tmp_path / "run-2")
    (tmp_path / "run-2" / "checkpoint-1").mkdir(parents=True)
    assert workbook.fresh_output_dir(run) == str(tmp_path / "run-3")
    assert workbook.fresh_output_dir(run, resume=True) == str(run)  # continuing a run keeps its folder


def test_config_from_takes_the_fields_a_parameters_cell_assigned():
    from stonklib.config import EvalConfig

    namespace = {"model": "org/m", "split": "val", "limit": 7, "workbook": workbook, "frames": None}  # non-fields ignored
    cfg = workbook.config_from(EvalConfig, namespace, limit=9)
    assert cfg.model == "org/m" and cfg.split == "val" and cfg.limit == 9 and cfg.seed == EvalConfig(model="org/m").seed


@pytest.mark.parametrize(("cls_name", "values"), [("DataConfig", {"embargo": 4}), ("TrainConfig", {"seed": 7}),
                                                   ("EvalConfig", {"model": "org/m", "seed": 7})])
def test_parameters_source_lists_every_field_as_a_literal(cls_name, values):
    import ast
    import dataclasses

    from stonklib import config

    cls = getattr(config, cls_name)
    name = next(iter(values.keys() - {"model"}))
    src = workbook.parameters_source(cls, values, {name: "my comment"}, header="fields")
    body = ast.parse(src).body
    assert src.startswith("# fields\n") and [s.targets[0].id for s in body] == [f.name for f in dataclasses.fields(cls)]
    assert {s.targets[0].id: ast.literal_eval(s.value) for s in body}[name] == values[name]
    assert f"{name} = {values[name]}  # my comment" in src
    # exec'd as a notebook cell, the parameters rebuild the config with the given values and the defaults
    namespace: dict = {}
    exec(src, namespace)
    assert workbook.config_from(cls, namespace) == cls(**values)
    with pytest.raises(ValueError, match="not_a_field"):
        workbook.parameters_source(cls, {"not_a_field": 1})


def test_read_metrics_merges_validation_rows(tmp_path):
    assert workbook.read_metrics(tmp_path).empty
    rows = [{"step": 1, "reward/total": 1.0}, {"step": 2, "reward/total": 2.0}, {"step": 2, "val/reward": 0.5}]
    (tmp_path / "train_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3')
    m = workbook.read_metrics(tmp_path)
    assert list(m.index) == [1, 2] and m.loc[2, "reward/total"] == 2.0 and m.loc[2, "val/reward"] == 0.5


def test_checkpoint_table(tmp_path):
    for name, state in (("checkpoint-2", {"step": 2, "best_val_reward": float("-inf")}),
                        ("checkpoint-10", {"step": 10, "best_val_reward": 0.7})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "trainer_state.json").write_text(json.dumps(state))
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "adapter_model.safetensors").write_bytes(b"x" * 2048)
    t = workbook.checkpoint_table(tmp_path)
    assert list(t.index) == ["checkpoint-2", "checkpoint-10", "final"]
    assert pd.isna(t.loc["checkpoint-2", "best_val_reward"]) and t.loc["checkpoint-10", "best_val_reward"] == 0.7
    assert bool(t.loc["final", "adapter"]) and not bool(t.loc["checkpoint-2", "adapter"])


def adapter_run(tmp_path: Path, stage1_model: str, stage: int = 2) -> Path:
    run = tmp_path / "train"
    (run / "final").mkdir(parents=True)
    (run / "final" / "adapter_config.json").write_text("{}")
    (run / "config.yaml").write_text(f"stage: {stage}\nstage1_model: {stage1_model}\n")
    return run / "final"


def test_evaluation_plan_without_stage1(tmp_path):
    base = tmp_path / "base_model"
    base.mkdir()
    final = adapter_run(tmp_path, str(base))
    cfg = EvalConfig(model=str(base), adapter=str(final), out=str(tmp_path / "eval"), limit=8)
    plan = workbook.evaluation_plan(cfg)
    assert list(plan) == ["base", "stage2"]
    assert plan["base"].adapter is None and plan["base"].out == str(tmp_path / "eval" / "base")
    assert plan["stage2"].adapter == str(final) and plan["stage2"].model == str(base)
    assert plan["stage2"].base_predictions == str(tmp_path / "eval" / "base" / "predictions.jsonl")
    assert all(c.limit == 8 for c in plan.values())
    assert "No Stage I model is configured" in workbook.stage1_note(plan)


def test_evaluation_plan_with_stage1_and_without_adapter(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "stage1" / "final").mkdir(parents=True)  # the Stage I model the run recorded exists
    final = adapter_run(tmp_path, "runs/stage1/final")
    cfg = EvalConfig(model="Qwen/Qwen2.5-1.5B-Instruct", adapter=str(final), out=str(tmp_path / "eval"))
    plan = workbook.evaluation_plan(cfg)
    assert list(plan) == ["base", "stage1", "stage2"]
    assert plan["stage1"].model == "runs/stage1/final" and plan["stage2"].model == "runs/stage1/final"
    assert plan["stage2"].base_predictions.endswith("stage1/predictions.jsonl")
    assert "on top of its Stage I model" in workbook.stage1_note(plan)
    only = workbook.evaluation_plan(EvalConfig(model="org/base", out=str(tmp_path / "e2")))
    assert list(only) == ["base"] and "only the base model" in workbook.stage1_note(only)


def test_evaluation_plan_for_a_stage1_adapter(tmp_path):
    final = adapter_run(tmp_path, "org/base", stage=1)
    plan = workbook.evaluation_plan(EvalConfig(model="org/base", adapter=str(final), out=str(tmp_path / "e")))
    assert list(plan) == ["base", "stage1"] and plan["stage1"].adapter == str(final)
    assert plan["stage1"].base_predictions.endswith("base/predictions.jsonl")
    assert "is a Stage I adapter" in workbook.stage1_note(plan)


def test_comparison_and_breakdown_tables():
    from stonklib.evaluate import compute_metrics

    df = pd.DataFrame({"ticker": list("ABCD"), "date": ["2024-01-02"] * 2 + ["2024-01-03"] * 2,
                       "actual_change_pct": [1.0, -1.0, 2.0, -0.5], "predicted_direction": ["up", "up", "down", "down"],
                       "predicted_pct": [1.0] * 4, "confidence": [60.0] * 4, "sector": ["X", "Y", "X", "Y"]})
    m = compute_metrics(df)
    m["baselines"] = {"majority": compute_metrics(df.assign(predicted_direction="up")), "base_model": m}
    m["breakdowns"] = {"sector": {"X": m, "Y": m}, "volatility": {"groups": {"low": m}}, "ensemble": m}
    t = workbook.comparison_table({"base": m, "stage2": m})
    assert list(t.index) == ["model: base", "model: stage2", "baseline: majority", "ensemble: base + stage2"]
    assert t.loc["model: base", "ci95_lo"] <= t.loc["model: base", "accuracy"] <= t.loc["model: base", "ci95_hi"]
    assert list(workbook.breakdown_table(m, "sector").index) == ["X", "Y"]
    assert list(workbook.breakdown_table(m, "volatility").index) == ["low"]
    curves = workbook.equity_curves({"stage2": df}, 5.0)
    assert list(curves) == ["stage2", "buy and hold (no costs)"] and len(curves["stage2"]) == 2


def test_figure_png_and_setup_notebook(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    fig = Figure()
    fig.add_subplot().plot([1, 2])
    assert workbook.figure_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.chdir(tmp_path)
    root = workbook.setup_notebook()
    assert Path.cwd() == root


def test_completions_view_left_aligns_the_text():
    t = groups_table([[GOOD, WRONG]], [EX_UP])
    html = reward_lab.completions_view(t, 1).to_html()
    assert "text-align: left" in html and "Day 1: UP 1.2%" in html and "WRONG" not in html
