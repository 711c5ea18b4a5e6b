"""Notebook 05's evaluation plan and tables: base, Stage I and Stage II on the same rows.

:func:`evaluation_plan` turns one :class:`~stonklib.config.EvalConfig` into the base / Stage I /
Stage II evaluations that notebook 05 compares; the Stage I model is read from the Stage II run's
own ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd
import yaml


def run_config(adapter: str | Path) -> dict[str, Any]:
    """The resolved TrainConfig that produced ``adapter`` (its run's ``config.yaml``), or {}."""
    for folder in (Path(adapter), Path(adapter).parent):
        if (folder / "config.yaml").is_file():
            return yaml.safe_load((folder / "config.yaml").read_text()) or {}
    return {}


def _same_model(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


def stage1_model_of(adapter: str | Path | None, base_model: str | None) -> str | None:
    """The Stage I model a Stage II adapter was trained from, or None when it was the base model itself."""
    if not adapter:
        return None
    cfg = run_config(adapter)
    if cfg.get("stage", 2) != 2:
        return None
    s1 = cfg.get("stage1_model")
    return None if s1 is None or _same_model(s1, base_model) else str(s1)


def evaluation_plan(cfg) -> dict[str, Any]:
    """name -> EvalConfig for ``base``, ``stage1`` or ``warmup``, and ``stage2`` (those that exist), in run order.

    All share ``cfg``'s split, limit and generation settings, so they score the
    same rows, and each writes to ``cfg.out/<name>``. ``cfg.adapter`` is named by
    the stage its run's ``config.yaml`` records. A Stage II adapter is evaluated
    on top of the model it was trained from (its Stage I model, the format
    warm-up's adapter, or the base model), and its ``base_predictions`` are that model's predictions, so its
    ``base_model`` baseline and ensemble compare against what it started from.
    """
    if cfg.model is None:
        raise ValueError("notebook 05 generates predictions: set `model` (the base model) in the eval parameters.")
    out = Path(cfg.out)
    plain = dataclasses.replace(cfg, adapter=None, base_predictions=None, predictions=None)
    plan = {"base": dataclasses.replace(plain, out=str(out / "base"))}
    if not cfg.adapter:
        return plan
    base_preds = str(out / "base" / "predictions.jsonl")
    if run_config(cfg.adapter).get("stage", 2) == 1:
        plan["stage1"] = dataclasses.replace(cfg, predictions=None, out=str(out / "stage1"), base_predictions=base_preds)
        return plan
    stage1 = stage1_model_of(cfg.adapter, cfg.model)
    under = "base"
    if stage1:  # the model Stage II started from: a Stage I run, or the format warm-up
        under = "warmup" if "direction_source" in run_config(stage1) else "stage1"
        plan[under] = dataclasses.replace(plain, model=stage1, out=str(out / under))
    plan["stage2"] = dataclasses.replace(cfg, model=stage1 or cfg.model, predictions=None, out=str(out / "stage2"),
                                         base_predictions=str(Path(plan[under].out) / "predictions.jsonl"))
    return plan


def run_plan(plan: dict[str, Any], progress: bool = False) -> dict[str, dict[str, Any]]:
    """``run_evaluate`` for each config of :func:`evaluation_plan`, in order; name -> metrics."""
    from stonklib.evaluate import run_evaluate

    return {name: run_evaluate(c, progress=progress) for name, c in plan.items()}


def prediction_frames(results: dict[str, dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """name -> the predictions frame each evaluation scored."""
    from stonklib.evaluate import read_predictions

    return {name: read_predictions(m["predictions_file"]).frame for name, m in results.items()}


def comparison_table(results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Models and baselines on the same rows: accuracy, Wilson CI, p vs majority, balanced acc., Brier, parse, Sharpe."""
    rows = {}
    for name, m in results.items():
        rows[f"model: {name}"] = m
    last = list(results.values())[-1]
    for name, m in (last.get("baselines") or {}).items():
        if name != "base_model" and m:
            rows[f"baseline: {name}"] = m
    if "ensemble" in (last.get("breakdowns") or {}) and len(results) > 1:
        a, b = list(results)[-2:]
        rows[f"ensemble: {a} + {b}"] = last["breakdowns"]["ensemble"]
    table = {}
    for name, m in rows.items():
        lo, hi = m["accuracy_ci95"]
        table[name] = {"n": m["n"], "accuracy": m["accuracy"], "ci95_lo": lo, "ci95_hi": hi,
                       "ci95_dates_lo": (m.get("accuracy_ci95_dates") or [None, None])[0],
                       "ci95_dates_hi": (m.get("accuracy_ci95_dates") or [None, None])[1],
                       "p_vs_majority": m["binom_p_value"], "majority_rate": m["majority_rate"],
                       "balanced_accuracy": m["balanced_accuracy"], "brier": m["brier"], "parse_rate": m["parse_rate"],
                       "sharpe": (m.get("backtest") or {}).get("sharpe"),
                       "total_return_pct": (m.get("backtest") or {}).get("total_return_pct")}
    return pd.DataFrame.from_dict(table, orient="index")


def breakdown_table(metrics: dict[str, Any], key: str) -> pd.DataFrame:
    """One breakdown of a metrics dict (``sector``, ``month`` or ``volatility``) as a table."""
    b = (metrics.get("breakdowns") or {}).get(key) or {}
    groups = b.get("groups", b) if key == "volatility" else b
    rows = {}
    for name, m in groups.items():
        lo, hi = m["accuracy_ci95"]
        rows[name] = {"n": m["n"], "accuracy": m["accuracy"], "ci95_lo": lo, "ci95_hi": hi,
                      "p_vs_majority": m["binom_p_value"], "actual_up_rate": m["actual_up_rate"],
                      "predicted_up_rate": m["predicted_up_rate"]}
    t = pd.DataFrame.from_dict(rows, orient="index")
    t.index.name = key
    return t


def load_tokenizer_for(model_ref: str, trust_remote_code: bool = False):
    """The tokenizer a run on ``model_ref`` uses (a PEFT adapter's own, else its base model's)."""
    from stonklib.models import load_tokenizer, resolve_source

    src = resolve_source(model_ref)
    own = src.adapter and (Path(src.adapter) / "tokenizer_config.json").is_file()
    return load_tokenizer(src.adapter if own else src.base, trust_remote_code)


def stage1_note(plan: dict[str, Any]) -> str:
    """One sentence saying which models the plan compares, and why a Stage I or II row is absent."""
    base = plan["base"].model
    if "stage2" not in plan and "stage1" not in plan:
        return (f"No adapter was given (`adapter` is unset), so only the base model `{base}` was evaluated; "
                f"run notebook 04 first or pass `adapter`.")
    if "stage2" not in plan:
        return (f"`{plan['stage1'].adapter}` is a Stage I adapter (its run says stage 1), evaluated on the base model "
                f"`{base}`; there is no Stage II adapter in this comparison.")
    if "stage1" in plan:
        return (f"Stage II (`{plan['stage2'].adapter}`) was evaluated on top of its Stage I model "
                f"`{plan['stage1'].model}`; its base-model baseline and ensemble are against Stage I.")
    if "warmup" in plan:
        return (f"The GRPO adapter `{plan['stage2'].adapter}` was trained from the format warm-up's adapter "
                f"`{plan['warmup'].model}` (on the base model `{base}`), and is evaluated on top of it; the `warmup` "
                f"row is the warm-up alone, so the GRPO stage's own effect is the difference between the two.")
    return (f"No Stage I model is configured: the Stage II adapter `{plan['stage2'].adapter}` was trained directly "
            f"on the base model `{base}`, so there is no Stage I row; its base-model baseline is the base model.")


def equity_curves(frames: dict[str, pd.DataFrame], cost_bps: float) -> dict[str, pd.Series]:
    """Daily backtest returns per model (after ``cost_bps`` per side) plus buy-and-hold on the same rows."""
    import numpy as np

    from stonklib.evaluate.metrics import daily_returns

    curves = {name: daily_returns(df, cost_bps) for name, df in frames.items()}
    first = next(iter(frames.values()))
    curves["buy and hold (no costs)"] = daily_returns(first, 0.0, position=np.ones(len(first)))
    return curves
