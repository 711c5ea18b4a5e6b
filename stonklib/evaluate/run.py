"""``stonk evaluate``: predictions -> metrics + baselines + breakdowns -> metrics.json + PNGs.

With ``cfg.predictions`` the file is scored (``cfg.model`` is then ignored;
``cfg.limit`` keeps that many of its rows, spread over its dates by the same
rule as generation, :func:`stonklib.data.sample_dates_spread`); otherwise predictions are generated first with ``cfg.model`` (and
``cfg.adapter``). The base-model baseline comes from ``cfg.base_predictions``,
or, when an adapter is evaluated, from running ``cfg.model`` without the
adapter on the same rows (``out/base_model/predictions.jsonl``). When the
adapter is a Stage II adapter on a Stage I model, that "base" is Stage I, and
``breakdowns.ensemble`` is the Stage I + Stage II vote.

Baselines are fit on the train split of ``cfg.data`` (the bundled S&P 500 data
when unset); features missing from a predictions file are looked up there by
(ticker, date). Evaluating the train split itself makes the fitted baselines
in-sample: read them as an upper bound there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stonklib.config import EvalConfig, dump_yaml, to_dict
from stonklib.data import sample_dates_spread
from stonklib.evaluate import figures
from stonklib.evaluate.baselines import compute_baselines
from stonklib.evaluate.breakdowns import compute_breakdowns, ensemble_predictions, up_rates_over_time
from stonklib.evaluate.generate import generate_predictions, load_eval_examples
from stonklib.evaluate.metrics import (
    buy_and_hold,
    compute_metrics,
    daily_returns,
    reliability_table,
    to_jsonable,
)
from stonklib.evaluate.predictions import FEATURES, read_predictions
from stonklib.evaluate.uncertainty import date_bootstrap, mcnemar

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
SIGNIFICANCE = 0.05


def run_evaluate(cfg: EvalConfig, progress: bool = True) -> dict[str, Any]:
    """Score (or generate, then score) and write ``cfg.out/metrics.json`` and the plots; return the metrics."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log.info("evaluate config: %s", to_dict(cfg))
    dump_yaml(cfg, out / "eval_config.yaml")

    examples = None
    if cfg.predictions:
        pred_path = Path(cfg.predictions)
    else:
        examples = load_eval_examples(cfg)
        pred_path = generate_predictions(cfg, examples, progress=progress)
    preds = read_predictions(pred_path)
    frame = sample_dates_spread(preds.frame, cfg.limit) if cfg.predictions and cfg.limit else preds.frame
    base, base_ref = _base_predictions(cfg, examples, progress)
    df, train = _with_data(cfg, frame)

    result: dict[str, Any] = compute_metrics(df, cfg.cost_bps)
    result["buy_and_hold"] = buy_and_hold(df)
    result["baselines"], result["baselines_unavailable"] = compute_baselines(df, train, cfg.cost_bps, base, cfg.seed)
    result["breakdowns"] = compute_breakdowns(df, cfg.cost_bps, base)
    result.update(date_bootstrap(df, cfg.cost_bps, cfg.bootstrap_resamples, cfg.seed))
    if base is not None:
        result["paired_vs_base"] = mcnemar(df, base)
    if cfg.compare_predictions:
        result["comparison"] = compare(df, cfg.compare_predictions, cfg.cost_bps)
    if cfg.audit == "memorisation":
        from stonklib.evaluate.audit import run_audit
        result["audit"] = run_audit(cfg, examples if examples is not None else load_eval_examples(cfg), df, progress)
    if cfg.vote_curve:
        result["accuracy_by_samples"] = accuracy_by_samples(cfg, examples or load_eval_examples(cfg), progress)
    result["skipped"] = preds.skipped
    result["rows_read"] = len(preds.frame)
    result["confidence_clipped"] = preds.confidence_clipped
    result["predictions_file"] = str(pred_path)
    result["base_model"] = base_ref
    result["verdict"] = verdict(result)
    result["config"] = to_dict(cfg)
    result["plots"] = write_plots(df, result, out, cfg.cost_bps)
    result = to_jsonable(result)
    tmp = out / (METRICS_FILE + ".partial")
    tmp.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    tmp.replace(out / METRICS_FILE)
    log.info("%s", result["verdict"])
    return result


def accuracy_by_samples(cfg: EvalConfig, examples, progress: bool = True) -> list[dict[str, Any]]:
    """Accuracy (Wilson and date-clustered intervals) of the same rows scored with each n of ``cfg.vote_curve``
    samples per prompt (each n's predictions in ``out/samples_<n>/``)."""
    rows = []
    for n in sorted({int(k) for k in cfg.vote_curve}):
        sub = dataclasses.replace(cfg, num_samples=n, vote_curve=[], out=str(Path(cfg.out) / f"samples_{n}"))
        df, _ = _with_data(cfg, read_predictions(generate_predictions(sub, examples, progress=progress)).frame)
        m = {**compute_metrics(df, cfg.cost_bps), **date_bootstrap(df, cfg.cost_bps, cfg.bootstrap_resamples, cfg.seed)}
        rows.append({"num_samples": n, "greedy": n == 1 and cfg.greedy, "n": m["n"], "accuracy": m["accuracy"],
                     "accuracy_ci95": m["accuracy_ci95"], "accuracy_ci95_dates": m["accuracy_ci95_dates"],
                     "parse_rate": m["parse_rate"], "predicted_up_rate": m["predicted_up_rate"]})
    return rows


def compare(df: pd.DataFrame, path: str, cost_bps: float) -> dict[str, Any]:
    """The evaluated predictions against a second file on their common rows: McNemar, and the two's ensemble."""
    other = read_predictions(path).frame
    return {"file": path, "mcnemar": mcnemar(df, other),
            "ensemble": {"members": ["evaluated", path], **compute_metrics(ensemble_predictions(df, other), cost_bps)}}


def _base_predictions(cfg: EvalConfig, examples, progress: bool) -> tuple[pd.DataFrame | None, str | None]:
    """The base model's predictions frame and what it is, or (None, None)."""
    if cfg.base_predictions:
        return read_predictions(cfg.base_predictions).frame, cfg.base_predictions
    if cfg.adapter and examples is not None:
        base_cfg = dataclasses.replace(cfg, adapter=None, out=str(Path(cfg.out) / "base_model"))
        return read_predictions(generate_predictions(base_cfg, examples, progress=progress)).frame, cfg.model
    return None, None


def _with_data(cfg: EvalConfig, df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(predictions with any missing features/sector filled from the split, the train split)."""
    from stonklib.data import ensure_data, load_split

    data_dir = ensure_data(cfg.data)
    train = load_split(data_dir, "train")
    lacking = [k for k in (*FEATURES, "sector") if k not in df or df[k].isna().all()
               or (k == "sector" and (df[k] == "").all())]
    if lacking:
        split = load_split(data_dir, cfg.split)
        cols = [k for k in lacking if k in split]
        log.info("filling %s from the %s split by (ticker, date)", cols, cfg.split)
        df = df.drop(columns=cols).merge(split[["ticker", "date", *cols]].astype({"date": str}),
                                         on=["ticker", "date"], how="left")
    return df, train


def write_plots(df: pd.DataFrame, m: dict[str, Any], out: Path, cost_bps: float) -> list[str]:
    """The evaluation PNGs next to metrics.json (five, and accuracy against samples with vote_curve); returns their names."""
    model = Path(str(m.get("config", {}).get("adapter") or m.get("predictions_file") or "")).name
    strategy = daily_returns(df, cost_bps)
    market = daily_returns(df, 0.0, position=np.ones(len(df)))
    figs = {
        "reliability.png": figures.plot_reliability(reliability_table(df), title=f"Reliability {model}"),
        "confusion_matrix.png": figures.plot_confusion(m["confusion_matrix"]),
        "accuracy_vs_baselines.png": figures.plot_accuracy_vs_baselines(m),
        "equity_curve.png": figures.plot_equity_curve(
            strategy, market, labels=(f"model ({cost_bps:g} bps/side)", "buy and hold (equal weight)")),
        "up_rate_over_time.png": figures.plot_up_rates(up_rates_over_time(df)),
    }
    if m.get("audit"):
        figs["audit_memorisation.png"] = figures.plot_audit(m["audit"])
    if m.get("accuracy_by_samples"):
        figs["accuracy_by_samples.png"] = figures.plot_accuracy_by_samples(m["accuracy_by_samples"], m["majority_rate"])
    for name, fig in figs.items():
        figures.save(fig, out / name)
    return list(figs)


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.01 else f"p={p:.2f}"


#: Fewest scored rows the verdict judges: below it, a binomial test against the majority rate says nothing.
MIN_VERDICT_N = 30


def verdict(metrics: dict[str, Any]) -> str:
    """One plain-language paragraph on whether the accuracy shows skill, stated honestly.

    With the date block bootstrap's keys (:mod:`stonklib.evaluate.uncertainty`) the interval and the test
    are the date-clustered ones, the Wilson interval beside them; without them (an older metrics.json), the
    Wilson interval and the binomial test, with a warning that they ignore same-day correlation."""
    acc, p0, n = metrics["accuracy"], metrics["majority_rate"], metrics["n"]
    (wlo, whi), boot = metrics["accuracy_ci95"], metrics.get("date_bootstrap")
    clustered = bool(boot) and metrics.get("accuracy_ci95_dates") is not None and boot.get("p_value") is not None
    if clustered:
        (lo, hi), p = metrics["accuracy_ci95_dates"], boot["p_value"]
        head = (f"Accuracy {acc:.2f} [{lo:.2f}, {hi:.2f}] (95%, dates resampled; Wilson over rows "
                f"[{wlo:.2f}, {whi:.2f}]) on n={n} rows from {boot['n_dates']} dates")
        test = "one-sided, date block bootstrap"
    else:
        lo, hi, p = wlo, whi, metrics["binom_p_value"]
        head, test = f"Accuracy {acc:.2f} [{lo:.2f}, {hi:.2f}] on n={n}", "one-sided binomial"
    skips = {k: v for k, v in (metrics.get("skipped") or {}).items() if k != "implausible_predicted_pct"}
    lines = sum(skips.values()) + int(metrics.get("rows_read") or n)
    skip_note = (f"{sum(skips.values())} of {lines} prediction lines were skipped "
                 f"({', '.join(f'{k} {v}' for k, v in sorted(skips.items()))}), so this judges the rest only"
                 if sum(skips.values()) > 0.5 * lines else None)
    if n < MIN_VERDICT_N:
        text = (f"{head}: too few rows to judge skill (at least {MIN_VERDICT_N} are needed for a meaningful test "
                f"against the majority baseline {p0:.2f})")
        return "; ".join([text, *([skip_note] if skip_note else [])]) + "."
    if p < SIGNIFICANCE:
        parts = [f"{head} is above the majority baseline {p0:.2f} ({_p(p)}, {test})"]
    elif acc > p0:
        parts = [f"{head} is indistinguishable from the majority baseline {p0:.2f} ({_p(p)})"]
    else:
        parts = [f"{head} is not above the majority baseline {p0:.2f} ({_p(p)}): always guessing the majority "
                 f"class would have scored at least as well"]
    scored = {k: v["accuracy"] for k, v in (metrics.get("baselines") or {}).items() if v}
    if scored:
        best = max(scored, key=scored.get)
        parts.append(f"the best baseline is {best} at {scored[best]:.2f}")
    paired = metrics.get("paired_vs_base")
    if paired:
        parts.append(f"against the base model on the same {paired['n_common']} rows: {paired['accuracy_a']:.2f} vs "
                     f"{paired['accuracy_b']:.2f} (McNemar {_p(paired['p_value'])})")
    edge = metrics.get("min_detectable_edge")
    if clustered and edge is not None:
        parts.append(f"an edge below {100 * edge:.1f} points over the majority baseline could not have been seen "
                     f"on these rows (80% power at the 5% level, from the date-clustered spread)")
    if metrics.get("audit"):
        parts.append("memorisation audit: " + metrics["audit"]["finding"][0].lower() + metrics["audit"]["finding"][1:])
    if skip_note:
        parts.append(skip_note)
    if metrics["parse_rate"] < 0.95:
        parts.append(f"only {metrics['parse_rate']:.0%} of completions parsed (unparsed rows count as wrong)")
    n_days = (metrics.get("backtest") or {}).get("n_days") or n
    if not clustered and n / n_days >= 1.5:
        parts.append(f"rows share dates ({n / n_days:.1f} per day) and same-day moves are correlated, so the "
                     f"true uncertainty is wider than this interval")
    return "; ".join(parts) + "."
