"""The whole `stonk evaluate` path: generation (fake and tiny random model), scoring, files, verdict."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from stonklib import paths
from stonklib.config import EvalConfig
from stonklib.data.records import Example, HistoryRow
from stonklib.evaluate import generate_predictions, read_predictions, run_evaluate, verdict

TOKENIZER_DIR = paths.EMBEDDED_MODEL
needs_tokenizer = pytest.mark.skipif(not (TOKENIZER_DIR / "tokenizer_config.json").is_file(),
                                     reason="the embedded model's tokenizer is not fetched (stonk model fetch smollm2)")
PNGS = ["reliability.png", "confusion_matrix.png", "accuracy_vs_baselines.png", "equity_curve.png",
        "up_rate_over_time.png"]
METRIC_KEYS = ["n", "parse_rate", "accuracy", "up_accuracy", "down_accuracy", "balanced_accuracy", "mcc", "brier",
               "ece", "predicted_up_rate", "actual_up_rate", "accuracy_ci95", "binom_p_value", "magnitude_mae",
               "backtest", "baselines", "breakdowns", "skipped", "config", "verdict"]


def example(i: int, date: str, ticker: str) -> Example:
    closes = [100 + ((i * 7 + k * 3) % 11) - 5 for k in range(12)]
    hist = tuple(HistoryRow(f"2023-12-{20 - k:02d}" if k else date, float(c), 1e6 + k) for k, c in enumerate(closes))
    chg = ((i * 37) % 9 - 4) / 2  # -2 .. +2, includes 0.0
    return Example(ticker=ticker, date=date, close=float(closes[0]), previous_close=float(closes[1]),
                   change_pct_1=chg, change_pct_2=-chg, change_pct_3=0.5, direction_1="up" if chg > 0 else "down",
                   direction_2="up" if -chg > 0 else "down", direction_3="up", flat_1=chg == 0, history=hist,
                   name=f"{ticker} Inc", sector=["Tech", "Energy"][i % 2], return_1d=(i % 5) - 2.0,
                   return_5d=1.0, return_10d=None, volatility_10d=1.0 + i % 4, volume_ratio=1.0)


def examples(n: int, start: int = 0) -> list[Example]:
    return [example(start + i, f"2024-0{1 + (start + i) // 4 % 3}-{10 + (start + i) % 4:02d}", f"T{i % 3}")
            for i in range(n)]


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A tiny built data directory in the shape `stonk data build` writes."""
    d = tmp_path / "data"
    d.mkdir()
    for split, exs in (("train", examples(24, start=0)), ("val", examples(4, start=30)),
                       ("test", examples(8, start=40))):
        pd.DataFrame([e.to_row() for e in exs]).to_parquet(d / f"{split}.parquet")
    (d / "summary.json").write_text("{}")
    return d


def write_predictions_file(path: Path, exs: list[Example]) -> Path:
    rows = [{"ticker": e.ticker, "date": e.date, "actual_change_pct": e.change_pct_1,
             "predicted_direction": ["up", "down", "unknown"][i % 3], "predicted_pct": 1.0,
             "confidence": [60, 80, None][i % 3], "completion": "..."} for i, e in enumerate(exs)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    return path


# ------------------------------------------------------------------ scoring a file
def test_run_evaluate_scores_a_file_and_writes_everything(tmp_path, data_dir):
    # a file without features or sector: they are looked up in the test split by (ticker, date)
    test_rows = examples(8, start=40)
    preds = write_predictions_file(tmp_path / "p.jsonl", test_rows)
    out = tmp_path / "eval"
    m = run_evaluate(EvalConfig(predictions=str(preds), data=str(data_dir), out=str(out)), progress=False)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == m
    for k in METRIC_KEYS:
        assert k in m, k
    assert m["n"] == 8 and m["skipped"] == {"invalid_json": 1}
    assert set(m["baselines"]) == {"majority", "momentum", "logistic"} and "base_model" in m["baselines_unavailable"]
    assert all(m["baselines"][b]["n"] == 8 for b in m["baselines"])
    assert set(m["breakdowns"]["sector"]) == {"Tech", "Energy"}  # filled from the split
    assert m["breakdowns"]["volatility"]["thresholds"] is not None
    assert set(m["backtest"]) >= {"n_days", "mean_daily_return_pct", "sharpe", "max_drawdown_pct"}
    assert m["config"]["predictions"] == str(preds)
    for png in PNGS:
        assert (out / png).stat().st_size > 1000, png
    assert "NaN" not in (out / "metrics.json").read_text()


def test_the_date_clustered_keys_and_a_second_predictions_file(tmp_path, data_dir):
    test_rows = examples(8, start=40)
    preds = write_predictions_file(tmp_path / "p.jsonl", test_rows)
    other = tmp_path / "q.jsonl"
    other.write_text("".join(json.dumps({"ticker": e.ticker, "date": e.date, "actual_change_pct": e.change_pct_1,
                                         "predicted_direction": "up", "predicted_pct": 1.0, "confidence": 70}) + "\n"
                             for e in test_rows))
    m = run_evaluate(EvalConfig(predictions=str(preds), data=str(data_dir), out=str(tmp_path / "e"),
                                compare_predictions=str(other), bootstrap_resamples=200), progress=False)
    for k in ("accuracy_ci95_dates", "mcc_ci95_dates", "balanced_accuracy_ci95_dates", "sharpe_ci95_dates",
              "min_detectable_edge", "date_bootstrap"):
        assert k in m, k
    assert m["date_bootstrap"]["n_resamples"] == 200 and m["date_bootstrap"]["n_dates"] == len({e.date for e in test_rows})
    c = m["comparison"]
    assert c["mcnemar"]["n_common"] == 8 and c["ensemble"]["n"] == 8 and c["file"] == str(other)


def test_findings_use_the_paired_test_when_there_is_one():
    from stonklib.workbook.findings import evaluation_findings

    base = {"verdict": "v", "accuracy": 0.5, "accuracy_ci95": [0.4, 0.6], "n": 500}
    tuned = {**base, "accuracy": 0.56, "paired_vs_base": {"n_common": 500, "p_value": 0.01}}
    text = evaluation_findings({"base": base, "tuned": tuned}, "")
    assert "McNemar p=0.010: the difference is established" in text and "intervals overlap" not in text


def test_limit_applies_to_a_scored_file(tmp_path, data_dir):
    preds = write_predictions_file(tmp_path / "p.jsonl", examples(8, start=40))
    m = run_evaluate(EvalConfig(predictions=str(preds), data=str(data_dir), out=str(tmp_path / "e"), limit=3),
                     progress=False)
    assert m["n"] == 3


# ---------------------------------------------------------------------- verdict
def _m(acc, lo, hi, p, p0=0.53, n=200, n_days=200, parse_rate=1.0, **baselines):
    return {"accuracy": acc, "accuracy_ci95": [lo, hi], "binom_p_value": p, "majority_rate": p0, "n": n,
            "parse_rate": parse_rate, "backtest": {"n_days": n_days},
            "baselines": {k: {"accuracy": v} for k, v in baselines.items()}}


def test_verdict_indistinguishable():
    v = verdict(_m(0.54, 0.47, 0.61, 0.41, majority=0.5, logistic=0.55))
    assert "indistinguishable from the majority baseline 0.53 (p=0.41)" in v
    assert "best baseline is logistic at 0.55" in v


def test_verdict_significant_and_below_and_caveats():
    assert "is above the majority baseline" in verdict(_m(0.60, 0.55, 0.65, 0.002))
    below = verdict(_m(0.45, 0.40, 0.50, 0.99, parse_rate=0.7, n_days=20))
    assert "is not above" in below and "70% of completions parsed" in below and "10.0 per day" in below


# --------------------------------------------------------------------- generation
@needs_tokenizer
def test_generation_flushes_per_batch_and_resumes_after_a_crash(tmp_path, monkeypatch):
    from stonklib import models
    from stonklib.models import load_tokenizer
    from stonklib.sampling import rollout

    tok = load_tokenizer(str(TOKENIZER_DIR))
    monkeypatch.setattr(models, "load_for_inference", lambda *a, **k: (None, tok))
    calls: list[int] = []

    def crash_on_second(model, tokenizer, prompts, **kw):
        calls.append(len(prompts))
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return ["Day 1: UP 1.5% with 70% confidence\nDay 2: DOWN 1% with 60% confidence"] * len(prompts)

    monkeypatch.setattr(rollout, "generate_texts", crash_on_second)
    cfg = EvalConfig(model=str(TOKENIZER_DIR), out=str(tmp_path), batch_size=2, max_prompt_tokens=4096)
    exs = examples(5)
    with pytest.raises(RuntimeError, match="simulated"):
        generate_predictions(cfg, exs, progress=False)
    partial = tmp_path / "predictions.jsonl.partial"
    assert len(partial.read_text().splitlines()) == 2  # the first batch survived the crash
    assert not (tmp_path / "predictions.jsonl").exists()

    calls.clear()
    monkeypatch.setattr(rollout, "generate_texts", lambda m, t, prompts, **kw: (
        calls.append(len(prompts)) or ["Day 1: DOWN 2% with 55% confidence"] * len(prompts)))
    path = generate_predictions(cfg, exs, progress=False)
    assert calls == [2, 1]  # only the missing rows were generated
    assert not partial.exists()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["ticker"], r["date"]) for r in rows] == [(e.ticker, e.date) for e in exs]
    first = rows[0]
    assert (first["predicted_direction"], first["predicted_pct"], first["confidence"]) == ("up", 1.5, 70)
    assert (first["day2_direction"], first["day2_pct"], first["day2_confidence"]) == ("down", 1.0, 60)
    assert first["day3_direction"] == "unknown" and first["day3_pct"] is None
    assert first["sector"] == "Tech" and first["actual_change_pct_2"] == -exs[0].change_pct_1
    assert first["prompt_tokens"] > 0 and first["prompt_truncated"] is False
    assert rows[2]["predicted_direction"] == "down"


@needs_tokenizer
def test_generation_with_several_samples_votes_per_prompt(tmp_path, monkeypatch):
    from stonklib import models
    from stonklib.models import load_tokenizer
    from stonklib.sampling import rollout

    tok = load_tokenizer(str(TOKENIZER_DIR))
    monkeypatch.setattr(models, "load_for_inference", lambda *a, **k: (None, tok))
    seen = []
    answers = ["Day 1: up 1% with 60% confidence", "Day 1: down 2% with 60% confidence", "Day 1: up 3% with 60% confidence"]

    def sample(model, tokenizer, prompts, **kw):
        seen.append(kw)
        return answers * len(prompts)  # prompt-major: three samples for each prompt

    monkeypatch.setattr(rollout, "generate_texts", sample)
    cfg = EvalConfig(model=str(TOKENIZER_DIR), out=str(tmp_path), batch_size=2, max_prompt_tokens=4096, num_samples=3)
    rows = [json.loads(line) for line in generate_predictions(cfg, examples(3), progress=False).read_text().splitlines()]
    assert all(kw["num_samples"] == 3 and kw["greedy"] is False for kw in seen)  # n > 1 samples, whatever greedy says
    assert [r["predicted_direction"] for r in rows] == ["up"] * 3 and rows[0]["predicted_pct"] == 2.0
    assert rows[0]["confidence"] == pytest.approx(200 / 3) and len(rows[0]["samples"]) == 3


@needs_tokenizer
def test_vote_curve_scores_the_rows_for_each_n(tmp_path, data_dir, monkeypatch):
    from stonklib import models
    from stonklib.models import load_tokenizer
    from stonklib.sampling import rollout

    tok = load_tokenizer(str(TOKENIZER_DIR))
    monkeypatch.setattr(models, "load_for_inference", lambda *a, **k: (None, tok))
    monkeypatch.setattr(rollout, "generate_texts", lambda m, t, prompts, num_samples=1, **kw: (
        ["Day 1: up 1% with 60% confidence", "Day 1: down 1% with 60% confidence"] * len(prompts) * num_samples
    )[:len(prompts) * num_samples])
    cfg = EvalConfig(model=str(TOKENIZER_DIR), data=str(data_dir), out=str(tmp_path / "e"), batch_size=4,
                     max_prompt_tokens=4096, vote_curve=[1, 4], bootstrap_resamples=100)
    m = run_evaluate(cfg, progress=False)
    curve = {r["num_samples"]: r for r in m["accuracy_by_samples"]}
    assert set(curve) == {1, 4} and curve[1]["n"] == curve[4]["n"] == 8
    assert curve[4]["parse_rate"] == 0.0  # two up and two down votes per prompt: every vote is a tie
    assert (tmp_path / "e" / "samples_4" / "predictions.jsonl").is_file()
    assert (tmp_path / "e" / "accuracy_by_samples.png").stat().st_size > 1000


def test_tiny_random_model_with_adapter_end_to_end(tmp_path, data_dir, tiny_model_dir):
    """Real generation with a tiny random Llama and a LoRA adapter: base-model baseline and ensemble included."""
    from transformers import AutoModelForCausalLM

    from stonklib.models import add_lora

    model_dir, adapter_dir = tiny_model_dir, tmp_path / "adapter"
    add_lora(AutoModelForCausalLM.from_pretrained(model_dir), r=2).save_pretrained(adapter_dir)

    out = tmp_path / "eval"
    m = run_evaluate(EvalConfig(model=str(model_dir), adapter=str(adapter_dir), data=str(data_dir), split="test",
                                limit=4, batch_size=2, max_new_tokens=4, out=str(out), device="cpu"),
                     progress=False)
    assert m["n"] == 4 and "base_model" in m["baselines"] and "ensemble" in m["breakdowns"]
    assert m["base_model"] == str(model_dir)
    rows = read_predictions(out / "predictions.jsonl").frame
    base_rows = read_predictions(out / "base_model" / "predictions.jsonl").frame
    assert list(rows["ticker"] + rows["date"]) == list(base_rows["ticker"] + base_rows["date"])
    assert all(isinstance(c, str) for c in rows["completion"])
    for png in PNGS:
        assert (out / png).is_file()


def test_the_memorisation_audit_end_to_end(tmp_path, data_dir, tiny_model_dir):
    """Named and anonymised prompts on the same rows, each row's familiarity with its next close, a finding."""
    out = tmp_path / "audit"
    m = run_evaluate(EvalConfig(model=str(tiny_model_dir), data=str(data_dir), split="test", limit=6, batch_size=3,
                                max_new_tokens=4, out=str(out), device="cpu", audit="memorisation",
                                bootstrap_resamples=100), progress=False)
    a = m["audit"]
    assert a["named"]["n"] == a["anonymized"]["n"] == 6 and a["mcnemar"]["n_common"] == 6
    assert len(a["per_row"]) == 6 and all(r["familiarity"] < 0 for r in a["per_row"])  # log-probs
    assert a["finding"].startswith("Named prompts")
    assert "memorisation audit: named prompts" in verdict({**_m(0.5, 0.4, 0.6, 0.5), "audit": a})
    assert (out / "anonymized" / "predictions.jsonl").is_file() and (out / "audit_memorisation.png").stat().st_size > 1000


def test_familiarity_is_the_mean_log_prob_of_the_next_close_tokens(tiny_model_dir):
    import torch

    from stonklib.evaluate.audit import CUE, familiarity, next_close
    from stonklib.models import load_for_inference
    from stonklib.prompts import fit_prompt

    model, tok = load_for_inference(str(tiny_model_dir), device="cpu")
    ex = examples(1)[0]
    cfg = EvalConfig(model=str(tiny_model_dir), max_prompt_tokens=1024)
    got = familiarity(model, tok, [ex], cfg, progress=False)[0]
    head = tok(fit_prompt(ex, tok, 1024, cfg.prompt_version).text + CUE, add_special_tokens=False)["input_ids"]
    num = tok(f"{next_close(ex):.2f}", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([head + num])).logits.float(), -1)[0]
    want = sum(float(logp[len(head) + j - 1, t]) for j, t in enumerate(num)) / len(num)
    assert got == pytest.approx(want, abs=1e-4)


@pytest.mark.slow
def test_real_model_end_to_end(tmp_path):
    """`stonk evaluate --model models/smollm2-135m-instruct --split test --limit 8` on the real data."""
    out = tmp_path / "eval"
    m = run_evaluate(EvalConfig(model=str(paths.EMBEDDED_MODEL), split="test", limit=8, out=str(out),
                                max_new_tokens=48, device="cpu"), progress=False)
    on_disk = json.loads((out / "metrics.json").read_text())
    for k in METRIC_KEYS:
        assert k in on_disk, k
    assert on_disk["n"] == 8
    assert {"majority", "momentum", "logistic"} <= set(on_disk["baselines"])
    assert math.isfinite(m["brier"])
    for png in PNGS:
        assert (out / png).is_file()
