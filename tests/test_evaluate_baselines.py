"""Baselines, breakdowns and the ensemble vote, on tiny hand-made tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stonklib.evaluate.baselines import align, compute_baselines, logistic, majority, momentum
from stonklib.evaluate.breakdowns import (
    compute_breakdowns,
    ensemble_predictions,
    per_month,
    per_sector,
    up_rates_over_time,
    volatility_regimes,
)
from stonklib.evaluate.metrics import compute_metrics

approx = pytest.approx

# train: change_pct_1 up in rows 0, 2, 3, 5 -> up-rate 4/6; |change| sorted .5 .5 1 1 2 3 -> median 1.0
TRAIN = pd.DataFrame({
    "change_pct_1": [1.0, -1.0, 2.0, 3.0, -0.5, 0.5],
    "return_1d": [0.5, 1.0, -0.2, None, -1.0, 0.0],
    "return_5d": [1.0, 2.0, -1.0, 0.5, -2.0, 0.1],
    "return_10d": [None] * 6,
    "volatility_10d": [1.0, 2.0, 1.5, 1.2, 2.2, 1.1],
    "volume_ratio": [1.0, 1.1, 0.9, 1.0, 1.3, 0.8],
})

ROWS = pd.DataFrame({
    "ticker": ["A", "B", "C", "D"],
    "date": ["2024-02-01", "2024-02-01", "2024-02-02", "2024-03-01"],
    "actual_change_pct": [1.0, -1.0, 2.0, -0.5],
    "sector": ["Tech", "Energy", "Tech", ""],
    "return_1d": [2.0, -1.0, None, 0.0],
    "return_5d": [1.0, None, 0.0, 0.0],
    "return_10d": [None] * 4,
    "volatility_10d": [1.0, 2.0, 3.0, None],
    "volume_ratio": [1.0, 1.0, 1.0, 1.0],
})


def test_majority():
    f = majority(TRAIN, ROWS)
    assert list(f["predicted_direction"]) == ["up"] * 4  # train up-rate 4/6 > .5
    assert f["confidence"].tolist() == approx([100 * 4 / 6] * 4)
    assert f["predicted_pct"].tolist() == approx([1.0] * 4)
    assert compute_metrics(f)["accuracy"] == approx(2 / 4)  # rows A, C are up


def test_momentum_confidence_is_the_train_hit_rate():
    # train signals (return_1d None dropped): up for .5 (next up), 1.0 (next down) -> hit_up = 1/2
    # down (<= 0) for -.2 (next up), -1.0 (next down), 0.0 (next up) -> hit_down = P(down) = 1/3
    f = momentum(TRAIN, ROWS)
    assert list(f["predicted_direction"]) == ["up", "down", "unknown", "down"]  # 0.0 is down, like the labels
    assert f["confidence"].tolist()[:2] == approx([50.0, 100 / 3])
    assert np.isnan(f["confidence"].iloc[2]) and f["confidence"].iloc[3] == approx(100 / 3)
    assert f["predicted_pct"].tolist()[:2] == approx([2.0, 1.0])


def test_logistic_fits_on_train_only_and_imputes():
    rng = np.random.default_rng(0)
    r1 = rng.normal(size=200)
    train = pd.DataFrame({"change_pct_1": r1 + 0.1 * rng.normal(size=200), "return_1d": r1,
                          "return_5d": rng.normal(size=200), "return_10d": None, "volatility_10d": 1.0,
                          "volume_ratio": rng.normal(1, 0.1, size=200)})
    rows = ROWS.assign(return_1d=[3.0, -3.0, None, 0.01])
    f = logistic(train, rows)
    assert list(f["predicted_direction"][:2]) == ["up", "down"]  # strongly predictive feature learned
    assert f["confidence"].between(50, 100).all() and f["confidence"].notna().all()  # None rows imputed
    # the eval labels play no part: flipping them changes nothing
    g = logistic(train, rows.assign(actual_change_pct=-rows["actual_change_pct"]))
    assert f["confidence"].tolist() == approx(g["confidence"].tolist())


def test_logistic_one_class_train_is_reported_unavailable():
    scores, unavailable = compute_baselines(ROWS, TRAIN.assign(change_pct_1=1.0), cost_bps=5)
    assert "logistic" in unavailable and "one class" in unavailable["logistic"]
    assert "majority" in scores and "base_model" in unavailable


def test_base_model_alignment_counts_missing_rows_as_unknown():
    base = pd.DataFrame({"ticker": ["A", "C"], "date": ["2024-02-01", "2024-02-02"],
                         "predicted_direction": ["down", "up"], "confidence": [70.0, 80.0],
                         "predicted_pct": [1.0, 1.0]})
    f, missing = align(ROWS, base)
    assert missing == 2 and list(f["predicted_direction"]) == ["down", "unknown", "up", "unknown"]
    scores, unavailable = compute_baselines(ROWS, TRAIN, 5, base=base)
    assert set(scores) == {"majority", "momentum", "logistic", "base_model"} and not unavailable
    assert scores["base_model"]["missing_rows"] == 2 and scores["base_model"]["accuracy"] == approx(1 / 4)
    assert scores["base_model"]["n"] == scores["majority"]["n"] == 4  # same rows everywhere


# ------------------------------------------------------------------ breakdowns
def preds() -> pd.DataFrame:
    return ROWS.assign(predicted_direction=["up", "up", "down", "down"], confidence=[60.0, 60, 60, 60],
                       predicted_pct=1.0)


def test_per_sector_and_month():
    s = per_sector(preds(), 5)
    assert set(s) == {"Tech", "Energy", "unknown"}
    assert s["Tech"]["n"] == 2 and s["Tech"]["accuracy"] == approx(1 / 2)  # A right, C wrong
    assert s["unknown"]["accuracy"] == 1.0  # D: down, actual -0.5
    mo = per_month(preds(), 5)
    assert list(mo) == ["2024-02", "2024-03"] and mo["2024-02"]["n"] == 3


def test_volatility_terciles_from_evaluated_rows():
    df = pd.DataFrame({"volatility_10d": [1, 2, 3, 4, 5, 6, None]})
    regime, (q1, q2) = volatility_regimes(df)
    # linear quantiles of 1..6: 1/3 -> pos 1.667 -> 2.667; 2/3 -> pos 3.333 -> 4.333
    assert (q1, q2) == approx((8 / 3, 13 / 3))
    assert regime.tolist()[:6] == ["low", "low", "mid", "mid", "high", "high"] and regime.iloc[6] is None


def test_ensemble_vote_table():
    keys = {"ticker": list("VWXYZ"), "date": ["2024-01-02"] * 5, "actual_change_pct": [1.0] * 5}
    a = pd.DataFrame({**keys, "predicted_direction": ["up", "up", "unknown", "up", "down"],
                      "confidence": [70, 60, None, 90, 30], "predicted_pct": [1.0, 1.0, None, 1.0, 1.0]})
    b = pd.DataFrame({**keys, "predicted_direction": ["down", "down", "down", "up", "down"],
                      "confidence": [60, 60, 80, 70, 40], "predicted_pct": [2.0, 2.0, 2.0, 2.0, 2.0]})
    e = ensemble_predictions(a, b).set_index("ticker")
    # V: p_up (.7 + .4)/2 = .55 -> up 55, % from a (the one agreeing)
    # W: (.6 + .4)/2 = .5 -> tie -> unknown
    # X: (.5 + .2)/2 = .35 -> down 65, % from b
    # Y: (.9 + .7)/2 = .8 -> up 80, % from a (more confident of the two agreeing)
    # Z: two low-confidence downs mean p_up (.7 + .6)/2 = .65 -> up 65; nobody said up -> no %
    assert e["predicted_direction"].tolist() == ["up", "unknown", "down", "up", "up"]
    assert e["confidence"].tolist()[:1] + e["confidence"].tolist()[2:] == approx([55, 65, 80, 65])
    assert np.isnan(e.loc["W", "confidence"])
    assert e.loc["V", "predicted_pct"] == 1.0 and e.loc["X", "predicted_pct"] == 2.0
    assert e.loc["Y", "predicted_pct"] == 1.0 and np.isnan(e.loc["Z", "predicted_pct"])
    assert e["actual_change_pct"].tolist() == [1.0] * 5


def test_ensemble_needs_common_rows():
    a = preds()
    with pytest.raises(ValueError, match="share no"):
        ensemble_predictions(a, a.assign(ticker="other"))


def test_compute_breakdowns_and_up_rates():
    out = compute_breakdowns(preds(), 5, base=preds())
    assert set(out) == {"sector", "month", "volatility", "ensemble"}
    assert out["volatility"]["thresholds_from"] == "evaluated rows"
    assert out["ensemble"]["accuracy"] == compute_metrics(preds())["accuracy"]  # a model agreeing with itself
    t = up_rates_over_time(preds())  # 2 months, 2 weeks -> by day
    assert list(t.index) == ["2024-02-01", "2024-02-02", "2024-03-01"]
    assert t["actual_up_rate"].tolist() == [0.5, 1.0, 0.0] and t["predicted_up_rate"].tolist() == [1.0, 0.0, 0.0]
