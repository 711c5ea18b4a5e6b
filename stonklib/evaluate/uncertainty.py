"""Uncertainty that respects dates, paired tests between two models, and the power of a test set.

Rows of one date move together with the market, so 2,000 rows from 20 dates carry far less
information than 2,000 independent rows, and a Wilson interval over rows is too narrow. Definitions
(each key is written to ``metrics.json`` beside the existing ones):

- **Date block bootstrap.** ``n_resamples`` (2,000) times, draw the evaluated dates with replacement
  (as many as there are, ``numpy.random.default_rng(seed).integers(0, n_dates, (n_resamples,
  n_dates))``), keep every row of each drawn date (a date drawn twice counts twice), and recompute the
  statistic. The interval is the 2.5th and 97.5th percentiles of the resampled values
  (``numpy.percentile``, linear interpolation); resamples where a statistic is undefined are left out.
  Statistics: ``accuracy`` (correct / rows, unknown wrong), ``balanced_accuracy`` (the mean of the
  up and down recalls), ``mcc`` (Matthews correlation over parsed rows, 0 when a margin is empty, as
  scikit-learn), and the backtest's ``sharpe`` (its daily returns resampled by date; mean / std with
  ddof 1 times sqrt(252)). Keys: ``accuracy_ci95_dates``, ``balanced_accuracy_ci95_dates``,
  ``mcc_ci95_dates``, ``sharpe_ci95_dates``, and ``date_bootstrap`` with ``n_dates``,
  ``n_resamples``, ``seed``, ``accuracy_se`` (the std of the resampled accuracies) and
  ``p_value`` (the share of resamples whose accuracy is at most the majority rate of the same
  resample: a one-sided percentile test of "accuracy above the majority baseline"). With fewer than
  ``MIN_DATES`` (20) dates the resampled spread means little: ``accuracy_se``, ``p_value`` and
  ``min_detectable_edge`` are None, and the verdict falls back to the Wilson interval and binomial test.
- **Power.** ``min_detectable_edge``: the smallest accuracy edge over the majority baseline that a
  one-sided test at level 0.05 detects with probability 0.8, from the date-clustered standard error:
  ``(z_0.95 + z_0.8) * accuracy_se`` (a normal approximation).
- **McNemar.** For two models scored on the same rows: ``b`` rows only the first gets right, ``c``
  rows only the second; the exact two-sided test is the binomial test of ``b`` out of ``b + c``
  against 1/2 (``scipy.stats.binomtest``); ``p_value`` 1.0 when ``b + c = 0``. Rows are correct as in
  :mod:`stonklib.evaluate.metrics` (unknown is wrong).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest, norm

from stonklib.evaluate.metrics import DEFAULT_COST_BPS, TRADING_DAYS, actual_direction, daily_returns

N_RESAMPLES = 2000
ALPHA = 0.05
POWER = 0.8
MIN_DATES = 20  # below this many dates, accuracy_se, p_value and min_detectable_edge are None (the verdict uses Wilson)


def per_date_counts(df: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """(the dates, sorted; a table per date of the counts every bootstrap statistic is a function of)."""
    y = actual_direction(df["actual_change_pct"]).to_numpy()
    pred = df["predicted_direction"].to_numpy()
    cells = pd.DataFrame({
        "date": df["date"].astype(str).to_numpy(), "n": 1, "correct": pred == y, "up": y == "up",
        "up_correct": (y == "up") & (pred == "up"), "down_correct": (y == "down") & (pred == "down"),
        "fp": (y == "down") & (pred == "up"), "fn": (y == "up") & (pred == "down"),
    })
    table = cells.groupby("date", sort=True).sum().astype(float)
    return table.index.to_numpy(), table


def resample_weights(n_dates: int, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """(n_resamples, n_dates): how many times each date is drawn in each resample."""
    draws = np.random.default_rng(seed).integers(0, n_dates, size=(n_resamples, n_dates))
    w = np.zeros((n_resamples, n_dates))
    np.add.at(w, (np.arange(n_resamples)[:, None], draws), 1.0)
    return w


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def statistics(s: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """accuracy, balanced accuracy, MCC and the majority rate from (resampled) count sums."""
    up, down = s["up"], s["n"] - s["up"]
    tp, tn, fp, fn = s["up_correct"], s["down_correct"], s["fp"], s["fn"]
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return {
        "accuracy": _ratio(s["correct"], s["n"]),
        "balanced_accuracy": (_ratio(tp, up) + _ratio(tn, down)) / 2,
        "mcc": np.where(den > 0, _ratio(tp * tn - fp * fn, den), 0.0),
        "majority_rate": np.maximum(_ratio(up, s["n"]), _ratio(down, s["n"])),
    }


def _sharpe(w: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Each resample's annualised Sharpe of the daily returns ``r`` drawn with multiplicities ``w``."""
    k = w.sum(axis=1)
    mean = (w @ r) / k
    var = (w @ (r * r) - k * mean**2) / np.maximum(k - 1, 1)
    std = np.sqrt(np.maximum(var, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((k > 1) & (std > 1e-15), mean / std * np.sqrt(TRADING_DAYS), np.nan)


def interval(values: np.ndarray, level: float = 0.95) -> list[float] | None:
    """The percentile interval of the defined resampled values (None if none is defined)."""
    v = values[np.isfinite(values)]
    if not len(v):
        return None
    q = 100 * (1 - level) / 2
    return [float(np.percentile(v, q)), float(np.percentile(v, 100 - q))]


def date_bootstrap(df: pd.DataFrame, cost_bps: float = DEFAULT_COST_BPS, n_resamples: int = N_RESAMPLES,
                   seed: int = 0) -> dict[str, Any]:
    """The date-clustered intervals, p-value and power of the module docstring, as metrics.json keys."""
    dates, table = per_date_counts(df)
    w = resample_weights(len(dates), n_resamples, seed)
    stats = statistics({c: w @ table[c].to_numpy() for c in table.columns})
    daily = daily_returns(df, cost_bps).reindex(dates).to_numpy(dtype=float)
    few = len(dates) < MIN_DATES  # too few clusters: the resampled spread and p-value mean nothing
    se = float(np.nanstd(stats["accuracy"], ddof=1)) if n_resamples > 1 and not few else float("nan")
    edge = (norm.ppf(1 - ALPHA) + norm.ppf(POWER)) * se
    return {
        "accuracy_ci95_dates": interval(stats["accuracy"]),
        "balanced_accuracy_ci95_dates": interval(stats["balanced_accuracy"]),
        "mcc_ci95_dates": interval(stats["mcc"]),
        "sharpe_ci95_dates": interval(_sharpe(w, daily)),
        "min_detectable_edge": float(edge) if np.isfinite(edge) else None,
        "date_bootstrap": {"n_dates": len(dates), "n_resamples": n_resamples, "seed": seed,
                           "accuracy_se": se if np.isfinite(se) else None,
                           "p_value": None if few else float(np.mean(stats["accuracy"] <= stats["majority_rate"]))},
    }


def correct_rows(df: pd.DataFrame) -> pd.Series:
    """Each row's correctness, indexed by (ticker, date)."""
    y = actual_direction(df["actual_change_pct"]).to_numpy()
    return pd.Series(df["predicted_direction"].to_numpy() == y,
                     index=pd.MultiIndex.from_arrays([df["ticker"].astype(str), df["date"].astype(str)]))


def mcnemar(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, Any]:
    """The exact McNemar test of two predictions frames on their common (ticker, date) rows."""
    ca, cb = correct_rows(a), correct_rows(b)
    common = ca.index.intersection(cb.index)
    if not len(common):
        raise ValueError("the two predictions tables share no (ticker, date) rows: score them on the same split.")
    x, y = ca.loc[common].to_numpy(), cb.loc[common].to_numpy()
    only_a, only_b = int((x & ~y).sum()), int((~x & y).sum())
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"n_common": len(common), "accuracy_a": float(x.mean()), "accuracy_b": float(y.mean()),
            "only_a_correct": only_a, "only_b_correct": only_b, "p_value": float(p)}
