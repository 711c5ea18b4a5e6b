"""Breakdowns of a predictions frame, and the Stage I + Stage II ensemble.

Each group reports a subset of :func:`compute_metrics` (``GROUP_KEYS``), computed
on that group's rows alone, so its ``binom_p_value`` tests the group against
*its own* majority rate. Small groups have wide intervals: read the CI first.

- ``sector``: the example's sector (``""`` becomes ``"unknown"``).
- ``month``: the as-of date's ``YYYY-MM``.
- ``volatility``: ``low`` / ``mid`` / ``high`` terciles of ``volatility_10d``. The
  thresholds are the 1/3 and 2/3 quantiles **of the evaluated rows** (reported
  as ``thresholds``): the breakdown describes this sample, it is not a trading
  rule, and each regime gets about a third of the rows. Rows without a
  volatility are left out.

:func:`ensemble_predictions` is a confidence-weighted vote in probability
space: each model's p_up (c/100 for up, 1 - c/100 for down, 0.5 for unknown,
exactly as in the Brier score) is averaged; the ensemble says up if the mean is
> 0.5, down if < 0.5, and unknown on an exact tie (the models cancel). Its
confidence is 100 * max(p, 1 - p) and its ``predicted_pct`` comes from the
more confident model that agrees with the ensemble's direction.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from stonklib.evaluate.metrics import compute_metrics, p_up

GROUP_KEYS = ("n", "parse_rate", "accuracy", "accuracy_ci95", "binom_p_value", "majority_rate",
              "balanced_accuracy", "brier", "actual_up_rate", "predicted_up_rate")


def by_group(df: pd.DataFrame, keys: pd.Series, cost_bps: float) -> dict[str, dict[str, Any]]:
    """Metrics (``GROUP_KEYS``) per value of ``keys`` (aligned with ``df``), groups sorted by name."""
    out = {}
    for name, idx in sorted(df.groupby(keys.to_numpy(), sort=True).groups.items(), key=lambda kv: str(kv[0])):
        m = compute_metrics(df.loc[idx], cost_bps)
        out[str(name)] = {k: m[k] for k in GROUP_KEYS}
    return out


def per_sector(df: pd.DataFrame, cost_bps: float) -> dict[str, dict[str, Any]]:
    sector = df["sector"].fillna("").astype(str).replace("", "unknown") if "sector" in df \
        else pd.Series("unknown", index=df.index)
    return by_group(df, sector, cost_bps)


def per_month(df: pd.DataFrame, cost_bps: float) -> dict[str, dict[str, Any]]:
    return by_group(df, df["date"].astype(str).str[:7], cost_bps)


def volatility_regimes(df: pd.DataFrame) -> tuple[pd.Series, list[float] | None]:
    """low/mid/high labels per row (NaN where volatility is missing) and the [q1/3, q2/3] thresholds."""
    v = pd.to_numeric(df["volatility_10d"], errors="coerce") if "volatility_10d" in df \
        else pd.Series(np.nan, index=df.index)
    if v.notna().sum() == 0:
        return pd.Series(np.nan, index=df.index, dtype=object), None
    q1, q2 = (float(q) for q in v.quantile([1 / 3, 2 / 3]))
    label = np.select([v <= q1, v >= q2, v.notna()], ["low", "high", "mid"], default=None)
    return pd.Series(label, index=df.index, dtype=object), [q1, q2]


def per_volatility(df: pd.DataFrame, cost_bps: float) -> dict[str, Any]:
    regime, thresholds = volatility_regimes(df)
    ok = regime.notna()
    groups = by_group(df[ok], regime[ok], cost_bps) if ok.any() else {}
    return {"thresholds": thresholds, "thresholds_from": "evaluated rows", "groups": groups}


PREDICTION_COLUMNS = ["predicted_direction", "confidence", "predicted_pct"]


def _side(df: pd.DataFrame, suffix: str) -> pd.DataFrame:
    return df[["ticker", "date", *PREDICTION_COLUMNS]].rename(columns={c: c + suffix for c in PREDICTION_COLUMNS})


def _p_up(m: pd.DataFrame, suffix: str) -> np.ndarray:
    return p_up(pd.DataFrame({c: m[c + suffix] for c in PREDICTION_COLUMNS[:2]}))


def ensemble_predictions(df_a: pd.DataFrame, df_b: pd.DataFrame) -> pd.DataFrame:
    """The confidence-weighted vote of two predictions frames on their common (ticker, date) rows.

    The label and context columns (sector, features, ...) come from ``df_a``.
    """
    keys = ["ticker", "date"]
    context = df_a[[c for c in df_a if c not in PREDICTION_COLUMNS and c != "completion"
                    and not c.startswith(("day2_", "day3_"))]]
    m = context.merge(_side(df_a, "_a"), on=keys).merge(_side(df_b, "_b"), on=keys, how="inner")
    if m.empty:
        raise ValueError("the two predictions tables share no (ticker, date) rows: evaluate them on the same split.")
    pa, pb = _p_up(m, "_a"), _p_up(m, "_b")
    p = (pa + pb) / 2
    direction = np.where(p > 0.5, "up", np.where(p < 0.5, "down", "unknown"))
    # the % comes from the more confident model (|p_up - 0.5|) among those agreeing with the vote
    a_agrees = m["predicted_direction_a"].to_numpy() == direction
    b_agrees = m["predicted_direction_b"].to_numpy() == direction
    use_a = a_agrees & (~b_agrees | (np.abs(pa - 0.5) >= np.abs(pb - 0.5)))
    pct = np.where(use_a, m["predicted_pct_a"], np.where(b_agrees, m["predicted_pct_b"], np.nan))
    out = m[list(context.columns)].copy()
    out["predicted_direction"] = direction
    out["confidence"] = np.where(direction == "unknown", np.nan, 100 * np.maximum(p, 1 - p))
    out["predicted_pct"] = pct.astype(float)
    return out.sort_values(["date", "ticker"], kind="stable").reset_index(drop=True)


def compute_breakdowns(df: pd.DataFrame, cost_bps: float, base: pd.DataFrame | None = None) -> dict[str, Any]:
    """Sector, month and volatility breakdowns; plus the ensemble with ``base`` when given."""
    out: dict[str, Any] = {
        "sector": per_sector(df, cost_bps),
        "month": per_month(df, cost_bps),
        "volatility": per_volatility(df, cost_bps),
    }
    if base is not None:
        ens = ensemble_predictions(base, df)
        out["ensemble"] = {"members": ["base_model", "evaluated"], **compute_metrics(ens, cost_bps)}
    return out


def up_rates_over_time(df: pd.DataFrame) -> pd.DataFrame:
    """Actual and predicted up-rates per period: months if the rows span >= 3 months, else weeks, else days."""
    d = pd.to_datetime(df["date"].astype(str))
    if d.dt.to_period("M").nunique() >= 3:
        period = d.dt.to_period("M").dt.start_time
    elif d.dt.to_period("W").nunique() >= 3:
        period = d.dt.to_period("W").dt.start_time
    else:
        period = d.dt.normalize()
    key = period.dt.strftime("%Y-%m-%d").to_numpy()
    pred = df["predicted_direction"].to_numpy()
    t = pd.DataFrame({"period": key, "up": df["actual_change_pct"].to_numpy(float) > 0,
                      "pred_up": np.where(pred == "unknown", np.nan, pred == "up")})
    return t.groupby("period").agg(n=("up", "size"), actual_up_rate=("up", "mean"),
                                   predicted_up_rate=("pred_up", "mean"))
