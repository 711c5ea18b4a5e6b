"""Metrics of a predictions table, with exact definitions so anyone can recompute them.

Input is a *predictions frame* (see :mod:`stonklib.evaluate.predictions`): one row
per (ticker, date) with ``actual_change_pct``, ``predicted_direction``
(``up``/``down``/``unknown``), ``predicted_pct`` and ``confidence`` (0-100, may be
missing). The actual direction is ``up`` if ``actual_change_pct > 0``, otherwise
``down``; the *parsed* rows are those predicting up or down.

Definitions (the issue's, verbatim where possible):

- ``n``: all rows. ``n_parsed``: the parsed rows.
- ``parse_rate``: n_parsed / n.
- ``accuracy``: correct rows / n; ``unknown`` counts as wrong.
- ``up_accuracy`` / ``down_accuracy``: recall on actual-up rows and on actual-down
  rows (unknown counts as wrong). ``balanced_accuracy`` is their mean.
- ``mcc``: the Matthews correlation over parsed rows (``sklearn.metrics.matthews_corrcoef``).
- ``brier``: the mean over all rows of (p_up - y_up)^2, where p_up = c/100 if the
  prediction is up, 1 - c/100 if down, and 0.5 if unknown. Confidence is clipped
  to [0, 100].
- ``ece``: over parsed rows, with 10 equal-width bins of p = c/100 ([0, .1), ...,
  [.9, 1], 1.0 in the last bin): sum_b (n_b / n_parsed) * |accuracy_b - mean p_b|.
  Bins are indexed from ``c`` (``floor(c / 10)``) so that 70 % lands in [.7, .8)
  exactly, without float error. ``reliability`` lists the non-empty bins.
- ``predicted_up_rate`` over parsed rows; ``actual_up_rate`` over all rows.
- ``accuracy_ci95``: the Wilson score interval ``[lo, hi]`` of correct / n
  (``scipy.stats.binomtest(...).proportion_ci(method="wilson")``, no continuity correction).
- ``binom_p_value``: the one-sided binomial test (alternative ``greater``) of the
  correct count over n against p0 = ``majority_rate`` = max(actual_up_rate,
  1 - actual_up_rate), the majority baseline (``scipy.stats.binomtest``). Note that
  p0 is the majority rate *of the evaluated rows*, known only in hindsight: a
  deliberately strict bar.
- ``magnitude_mae``: the mean, over parsed rows that give a percentage, of
  |signed predicted % - actual %|. The signed prediction is +|pct| for up and
  -|pct| for down (the parser stores magnitudes; ``abs`` guards "DOWN -2 %").
- ``backtest``: position +1 for up, -1 for down, 0 for unknown; trade return =
  position * actual/100 - 2 * cost_bps/1e4 for each non-zero position (default
  ``cost_bps`` 5, per side, so 10 bps a round trip); daily return = the mean over
  all of that date's rows (unknown rows contribute 0). Reported: ``n_days``,
  ``mean_daily_return_pct``, ``sharpe`` (mean/std with ddof 1, times sqrt(252)),
  ``max_drawdown_pct`` (the largest fall from a running peak of the cumulative
  product of 1+r, the peak starting at 1.0; a positive number, 0 if it never
  fell) and ``total_return_pct``.
- ``confusion_matrix``: counts with rows = actual [up, down] and columns =
  predicted [up, down, unknown].

Conventions for missing values:

- A parsed row without a confidence gets c = 50 (no information): p_up = 0.5.
- Undefined numbers are ``None`` (JSON ``null``), never NaN: ``up_accuracy``
  without actual-up rows (and then ``balanced_accuracy``), ``down_accuracy``
  likewise; ``mcc``, ``ece``, ``predicted_up_rate`` with no parsed rows;
  ``magnitude_mae`` with no parsed percentage; ``sharpe`` with fewer than 2 days
  or zero variance (e.g. all unknown).
- ``mcc`` follows scikit-learn and is 0.0 when the truth or the predictions hold a
  single class (a constant predictor carries no correlation).
- A table with no rows is an error: there is nothing to score.

Keys computed elsewhere, defined here so that every key of ``metrics.json`` is (the code is in
:mod:`stonklib.evaluate.uncertainty`, :mod:`stonklib.evaluate.audit` and :mod:`stonklib.evaluate.run`):

- ``accuracy_ci95_dates``, ``balanced_accuracy_ci95_dates``, ``mcc_ci95_dates``,
  ``sharpe_ci95_dates``: 95% percentile intervals of a date block bootstrap.
  ``bootstrap_resamples`` (2,000) times, draw the evaluated dates with replacement, as
  many as there are (``numpy.random.default_rng(seed).integers(0, n_dates, (B, n_dates))``),
  keep every row of each drawn date (a date drawn twice counts twice) and recompute
  the statistic as defined above (the Sharpe from the backtest's daily returns of
  the drawn dates); the interval is ``numpy.percentile(values, [2.5, 97.5])`` over
  the resamples where the statistic is defined (None if none is).
- ``date_bootstrap``: ``n_dates``, ``n_resamples``, ``seed``, ``accuracy_se`` (the
  std, ddof 1, of the resampled accuracies) and ``p_value``: the share of resamples
  whose accuracy is at most that resample's own majority rate (one-sided).
- ``min_detectable_edge``: ``(Phi^-1(0.95) + Phi^-1(0.8)) * accuracy_se``, the
  smallest edge over the majority rate a one-sided 5% test detects with 80% power
  (normal approximation on the date-clustered standard error).
- ``paired_vs_base`` and ``comparison.mcnemar``: on the (ticker, date) rows two
  predictions tables share, ``only_a_correct`` = b and ``only_b_correct`` = c (unknown
  is wrong); ``p_value`` = ``scipy.stats.binomtest(b, b + c, 0.5).pvalue`` (two-sided,
  exact), 1.0 when b + c = 0; ``n_common``, ``accuracy_a``, ``accuracy_b``.
  ``comparison.ensemble``: every metric above for the confidence-weighted vote of the two.
- ``accuracy_by_samples``: per n of ``vote_curve``, ``accuracy``, ``accuracy_ci95``,
  ``accuracy_ci95_dates``, ``parse_rate`` and ``predicted_up_rate`` of the rows scored
  with the vote of n samples (:func:`stonklib.evaluate.predictions.vote`).
- ``audit`` (``--audit memorisation``): ``named`` and ``anonymized`` (``n``,
  ``accuracy``, ``parse_rate``, ``accuracy_ci95_dates``, ``majority_rate``,
  ``p_value_vs_majority`` = that side's ``date_bootstrap.p_value``, ``predicted_up_rate``),
  ``mcnemar`` (as above, a = named), ``familiarity`` (``mean`` over rows of each row's
  mean token log-probability of the actual next close ``close * (1 + change_pct_1/100)``
  written with two decimals, after the named prompt and "The next trading day's close
  was $"; ``corr_with_correct`` and ``corr_p_value`` from ``scipy.stats.pearsonr`` of
  that score against the named row being right), ``per_row`` and ``finding``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    confusion_matrix,
    matthews_corrcoef,
    mean_absolute_error,
    recall_score,
)

DIRECTIONS = ("up", "down", "unknown")
N_BINS = 10
TRADING_DAYS = 252
DEFAULT_COST_BPS = 5.0


# ------------------------------------------------------------------ row helpers
def actual_direction(actual_change_pct: pd.Series) -> pd.Series:
    """``up`` if the move is > 0, otherwise ``down`` (a flat day is down, as in the labels)."""
    return pd.Series(np.where(actual_change_pct.to_numpy(float) > 0, "up", "down"), index=actual_change_pct.index)


def clipped_confidence(df: pd.DataFrame) -> pd.Series:
    """Confidence in [0, 100]; a missing confidence is 50 (no information)."""
    return pd.to_numeric(df["confidence"], errors="coerce").astype(float).clip(0, 100).fillna(50.0)


def p_up(df: pd.DataFrame) -> np.ndarray:
    """The probability of up implied by (direction, confidence); 0.5 for unknown."""
    c = clipped_confidence(df).to_numpy() / 100
    d = df["predicted_direction"].to_numpy()
    return np.where(d == "up", c, np.where(d == "down", 1 - c, 0.5))


def positions(df: pd.DataFrame) -> np.ndarray:
    d = df["predicted_direction"].to_numpy()
    return np.where(d == "up", 1.0, np.where(d == "down", -1.0, 0.0))


def _opt(x: float | None) -> float | None:
    """A float, or None where undefined (NaN / inf)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


# ---------------------------------------------------------------- significance
def wilson_ci(k: int, n: int, confidence_level: float = 0.95) -> list[float]:
    """The Wilson score interval of k successes in n trials."""
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence_level, method="wilson")
    return [float(ci.low), float(ci.high)]


def binom_p_value(k: int, n: int, p0: float) -> float:
    """One-sided P(X >= k) for X ~ Binomial(n, p0)."""
    return float(binomtest(int(k), int(n), float(p0), alternative="greater").pvalue)


# ---------------------------------------------------------------- calibration
def reliability_table(df: pd.DataFrame, n_bins: int = N_BINS) -> pd.DataFrame:
    """Per non-empty confidence bin of the parsed rows: bounds, n, mean p, accuracy."""
    parsed = df[df["predicted_direction"] != "unknown"]
    c = clipped_confidence(parsed).to_numpy()
    correct = (parsed["predicted_direction"].to_numpy() == actual_direction(parsed["actual_change_pct"]).to_numpy())
    b = np.minimum(np.floor(c * n_bins / 100).astype(int), n_bins - 1)
    t = pd.DataFrame({"bin": b, "p": c / 100, "correct": correct.astype(float)})
    g = t.groupby("bin").agg(n=("p", "size"), mean_p=("p", "mean"), accuracy=("correct", "mean")).reset_index()
    g.insert(1, "lo", g["bin"] / n_bins)
    g.insert(2, "hi", (g["bin"] + 1) / n_bins)
    return g


def expected_calibration_error(df: pd.DataFrame, n_bins: int = N_BINS) -> float | None:
    t = reliability_table(df, n_bins)
    if t.empty:
        return None
    w = t["n"] / t["n"].sum()
    return float((w * (t["accuracy"] - t["mean_p"]).abs()).sum())


# ------------------------------------------------------------------- backtest
def daily_returns(df: pd.DataFrame, cost_bps: float = DEFAULT_COST_BPS,
                  position: np.ndarray | None = None) -> pd.Series:
    """Daily strategy returns (fractions), indexed by date, oldest first.

    ``position`` overrides the predicted positions (e.g. all +1 for buy-and-hold).
    """
    pos = positions(df) if position is None else np.asarray(position, float)
    r = pos * df["actual_change_pct"].to_numpy(float) / 100 - (pos != 0) * 2 * cost_bps / 1e4
    return pd.Series(r, index=df.index).groupby(df["date"].astype(str)).mean().sort_index()


def summarize_returns(daily: pd.Series) -> dict[str, Any]:
    """n_days, mean daily return %, annualised Sharpe, max drawdown %, total return %."""
    r = daily.to_numpy(float)
    equity = np.cumprod(1 + r)
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    sd = float(np.std(r, ddof=1)) if len(r) >= 2 else float("nan")
    sharpe = float(r.mean() / sd * math.sqrt(TRADING_DAYS)) if sd > 0 else None
    return {
        "n_days": len(r),
        "mean_daily_return_pct": _opt(100 * r.mean()) if len(r) else None,
        "sharpe": _opt(sharpe),
        "max_drawdown_pct": _opt(100 * max(0.0, float((1 - equity / peak).max()))) if len(r) else None,
        "total_return_pct": _opt(100 * (equity[-1] - 1)) if len(r) else None,
    }


def backtest(df: pd.DataFrame, cost_bps: float = DEFAULT_COST_BPS) -> dict[str, Any]:
    return summarize_returns(daily_returns(df, cost_bps))


def buy_and_hold(df: pd.DataFrame) -> dict[str, Any]:
    """Equal-weight long of every row, no costs: what the market did on these rows."""
    return summarize_returns(daily_returns(df, 0.0, position=np.ones(len(df))))


# -------------------------------------------------------------------- metrics
def compute_metrics(df: pd.DataFrame, cost_bps: float = DEFAULT_COST_BPS) -> dict[str, Any]:
    """Every metric in the module docstring, JSON-ready (None where undefined)."""
    n = len(df)
    if n == 0:
        raise ValueError("no rows to score: the predictions table is empty.")
    y = actual_direction(df["actual_change_pct"]).to_numpy()
    pred = df["predicted_direction"].to_numpy()
    parsed = pred != "unknown"
    n_parsed = int(parsed.sum())
    correct = int((pred == y).sum())
    up_rate = float((y == "up").mean())
    majority_rate = max(up_rate, 1 - up_rate)
    recall_up, recall_down = recall_score(y, pred, labels=["up", "down"], average=None, zero_division=np.nan)
    balanced = (recall_up + recall_down) / 2
    m: dict[str, Any] = {
        "n": n,
        "n_parsed": n_parsed,
        "parse_rate": n_parsed / n,
        "accuracy": float(accuracy_score(y, pred)),
        "accuracy_ci95": wilson_ci(correct, n),
        "binom_p_value": binom_p_value(correct, n, majority_rate),
        "majority_rate": majority_rate,
        "up_accuracy": _opt(recall_up),
        "down_accuracy": _opt(recall_down),
        "balanced_accuracy": _opt(balanced),
        "mcc": _mcc(y[parsed], pred[parsed]),
        "brier": float(brier_score_loss((y == "up").astype(int), p_up(df), labels=[0, 1])),
        "ece": expected_calibration_error(df),
        "predicted_up_rate": float((pred[parsed] == "up").mean()) if n_parsed else None,
        "actual_up_rate": up_rate,
        "magnitude_mae": _magnitude_mae(df[parsed]),
        "backtest": backtest(df, cost_bps),
        "confusion_matrix": confusion(y, pred),
        "reliability": reliability_table(df).to_dict(orient="records"),
    }
    return m


def _mcc(y: np.ndarray, pred: np.ndarray) -> float | None:
    if len(y) == 0:
        return None
    with warnings.catch_warnings():  # sklearn warns on a single label; 0.0 is the defined answer
        warnings.simplefilter("ignore", UserWarning)
        return _opt(matthews_corrcoef(y, pred))


def _magnitude_mae(parsed: pd.DataFrame) -> float | None:
    pct = pd.to_numeric(parsed["predicted_pct"], errors="coerce").abs()
    ok = pct.notna().to_numpy()
    if not ok.any():
        return None
    signed = np.where(parsed["predicted_direction"].to_numpy()[ok] == "up", 1, -1) * pct.to_numpy()[ok]
    return float(mean_absolute_error(parsed["actual_change_pct"].to_numpy(float)[ok], signed))


def confusion(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    counts = confusion_matrix(y, pred, labels=list(DIRECTIONS))[:2]
    return {"actual": ["up", "down"], "predicted": list(DIRECTIONS), "counts": counts.tolist()}


def to_jsonable(x: Any) -> Any:
    """Plain JSON types: numpy scalars unwrapped, NaN/inf as None, tuples as lists."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
