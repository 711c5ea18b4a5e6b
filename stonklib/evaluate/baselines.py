"""Baselines scored on exactly the evaluated rows, each as a predictions frame.

Every baseline predicts a direction *and* a confidence, so Brier and ECE are
defined for it, and is scored by the same :func:`compute_metrics`. Fitting uses
the train split only (``train`` is its DataFrame: ``change_pct_1`` plus the
numeric prompt features).

- ``majority``: always the train-split majority class (up on a tie);
  confidence = 100 * the train rate of that class.
- ``momentum``: yesterday's direction, up if ``return_1d > 0`` else down (the
  labels' convention: flat is down), unknown when ``return_1d`` is missing.
  Confidence = 100 * the train hit rate of that signal (P(next up | return_1d > 0)
  for an up signal, P(next down | return_1d <= 0) for a down one), so it is
  calibrated on train and may fall below 50 if momentum reversed there.
  ``predicted_pct`` = |return_1d|.
- ``logistic``: ``LogisticRegression`` on return_1d, return_5d, return_10d,
  volatility_10d and volume_ratio (median-imputed, standardised; imputer and
  scaler fit on train only). Up if P(up) >= 0.5; confidence = 100 * max(P, 1 - P).
- ``base_model``: the untuned base model's predictions, aligned on (ticker,
  date); evaluated rows the base file lacks count as ``unknown`` (reported as
  ``missing_rows``).

``majority`` and ``logistic`` predict ``predicted_pct`` = the train median |change_pct_1|.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from stonklib.evaluate.metrics import compute_metrics
from stonklib.evaluate.predictions import FEATURES

_KEEP = ("ticker", "date", "actual_change_pct", "sector", "volatility_10d")


def _frame(rows: pd.DataFrame, direction, confidence, pct) -> pd.DataFrame:
    out = rows[[c for c in _KEEP if c in rows]].copy()
    out["predicted_direction"] = np.asarray(direction, dtype=object) if not np.isscalar(direction) else direction
    out["confidence"] = np.asarray(confidence, float) if not np.isscalar(confidence) else float(confidence)
    out["predicted_pct"] = np.asarray(pct, float) if not np.isscalar(pct) else float(pct)
    return out


def _train_up(train: pd.DataFrame) -> np.ndarray:
    if "change_pct_1" not in train or train["change_pct_1"].notna().sum() == 0:
        raise ValueError("the train split has no change_pct_1 labels: rebuild it with `stonk data build`.")
    return train["change_pct_1"].to_numpy(float) > 0


def _typical_pct(train: pd.DataFrame) -> float:
    return float(train["change_pct_1"].abs().median())


def majority(train: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    up_rate = float(_train_up(train).mean())
    cls = "up" if up_rate >= 0.5 else "down"
    return _frame(rows, cls, 100 * max(up_rate, 1 - up_rate), _typical_pct(train))


def momentum(train: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    y = _train_up(train)
    r_train = _col(train, "return_1d")
    ok = ~np.isnan(r_train)
    sig_up = r_train[ok] > 0
    hit_up = float(y[ok][sig_up].mean()) if sig_up.any() else 0.5
    hit_down = float((~y[ok][~sig_up]).mean()) if (~sig_up).any() else 0.5
    r = _col(rows, "return_1d")
    direction = np.where(np.isnan(r), "unknown", np.where(r > 0, "up", "down"))
    conf = np.where(direction == "up", 100 * hit_up, np.where(direction == "down", 100 * hit_down, np.nan))
    return _frame(rows, direction, conf, np.abs(r))


def _col(df: pd.DataFrame, k: str) -> np.ndarray:
    """A numeric column as floats (None -> NaN); all NaN when the column is absent."""
    return pd.to_numeric(df[k], errors="coerce").to_numpy(float) if k in df else np.full(len(df), np.nan)


def _features(df: pd.DataFrame) -> np.ndarray:
    return np.column_stack([_col(df, k) for k in FEATURES])


def logistic(train: pd.DataFrame, rows: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    y = _train_up(train)
    if len(np.unique(y)) < 2:
        raise ValueError("the train split holds one class only: a logistic regression cannot be fit.")
    model = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
                          LogisticRegression(max_iter=1000, random_state=seed))
    model.fit(_features(train), y)
    p = model.predict_proba(_features(rows))[:, list(model.classes_).index(True)]
    return _frame(rows, np.where(p >= 0.5, "up", "down"), 100 * np.maximum(p, 1 - p), _typical_pct(train))


def align(rows: pd.DataFrame, other: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """``other``'s predictions on ``rows``' (ticker, date), unknown where missing; and the missing count."""
    cols = ["ticker", "date", "predicted_direction", "confidence", "predicted_pct"]
    m = rows[[c for c in _KEEP if c in rows]].merge(other[cols], on=["ticker", "date"], how="left")
    missing = int(m["predicted_direction"].isna().sum())
    m["predicted_direction"] = m["predicted_direction"].fillna("unknown")
    return m, missing


BASELINES = {"majority": majority, "momentum": momentum, "logistic": logistic}


def compute_baselines(rows: pd.DataFrame, train: pd.DataFrame | None, cost_bps: float,
                      base: pd.DataFrame | None = None, seed: int = 0) -> tuple[dict, dict]:
    """(metrics per baseline name, reason per baseline that could not be computed)."""
    scores: dict = {}
    unavailable: dict[str, str] = {}
    for name, fn in BASELINES.items():
        if train is None:
            unavailable[name] = "no train split available"
            continue
        try:
            frame = fn(train, rows, seed) if name == "logistic" else fn(train, rows)
        except ValueError as e:  # a degenerate train split: say why, keep the other baselines
            unavailable[name] = str(e)
            continue
        scores[name] = compute_metrics(frame, cost_bps)
    if base is None:
        unavailable["base_model"] = ("no base-model predictions: pass --base_predictions FILE, or evaluate an "
                                     "--adapter so the base model is run on the same rows")
    else:
        frame, missing = align(rows, base)
        scores["base_model"] = {**compute_metrics(frame, cost_bps), "missing_rows": missing}
    return scores, unavailable
