"""Every metric of stonklib.evaluate.metrics against numbers worked out by hand.

The main table (6 rows, 3 days; actual is up iff change > 0):

    row date       tkr  actual  pred     pct  conf  y     correct
    1   2024-01-02 A    +1.0    up       0.5  80    up    yes
    2   2024-01-02 B    -2.0    up       1.0  60    down  no
    3   2024-01-03 A    +0.5    down     1.5  70    up    no
    4   2024-01-03 B    -1.0    down     2.0  90    down  yes
    5   2024-01-04 A     0.0    unknown  -    -     down  no   (flat counts as down)
    6   2024-01-04 B    +3.0    up       2.5  100   up    yes
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from stonklib.evaluate.metrics import (
    backtest,
    binom_p_value,
    buy_and_hold,
    compute_metrics,
    reliability_table,
    to_jsonable,
    wilson_ci,
)

approx = pytest.approx


def table(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["date", "ticker", "actual_change_pct", "predicted_direction",
                                       "predicted_pct", "confidence"])


MAIN = [
    ("2024-01-02", "A", 1.0, "up", 0.5, 80),
    ("2024-01-02", "B", -2.0, "up", 1.0, 60),
    ("2024-01-03", "A", 0.5, "down", 1.5, 70),
    ("2024-01-03", "B", -1.0, "down", 2.0, 90),
    ("2024-01-04", "A", 0.0, "unknown", None, None),
    ("2024-01-04", "B", 3.0, "up", 2.5, 100),
]


@pytest.fixture
def m() -> dict:
    return compute_metrics(table(MAIN), cost_bps=5)


def test_counts_and_rates(m):
    assert m["n"] == 6
    assert m["n_parsed"] == 5
    assert m["parse_rate"] == approx(5 / 6)
    assert m["accuracy"] == approx(3 / 6)  # rows 1, 4, 6 correct; the unknown row 5 counts as wrong
    assert m["up_accuracy"] == approx(2 / 3)  # actual-up rows 1, 3, 6: 1 and 6 right
    assert m["down_accuracy"] == approx(1 / 3)  # actual-down rows 2, 4, 5: only 4 right
    assert m["balanced_accuracy"] == approx((2 / 3 + 1 / 3) / 2)
    assert m["predicted_up_rate"] == approx(3 / 5)  # parsed rows 1, 2, 3, 4, 6: up in 1, 2, 6
    assert m["actual_up_rate"] == approx(3 / 6)
    assert m["majority_rate"] == approx(0.5)


def test_mcc_over_parsed_rows(m):
    # parsed rows, up = positive: TP = rows 1, 6; FP = row 2; FN = row 3; TN = row 4
    tp, fp, fn, tn = 2, 1, 1, 1
    assert m["mcc"] == approx((tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))  # 1/6


def test_brier(m):
    # p_up: .8 (y=1), .6 (y=0), 1-.7=.3 (y=1), 1-.9=.1 (y=0), .5 unknown (y=0), 1.0 (y=1)
    sq = [(0.8 - 1) ** 2, 0.6**2, (0.3 - 1) ** 2, 0.1**2, 0.5**2, 0.0]  # .04 .36 .49 .01 .25 0
    assert m["brier"] == approx(sum(sq) / 6)  # 1.15 / 6


def test_ece_and_reliability(m):
    # parsed p: .8 right -> bin 8; .6 wrong -> bin 6; .7 wrong -> bin 7; .9 right and 1.0 right -> bin 9
    # ECE = (1*|0-.6| + 1*|0-.7| + 1*|1-.8| + 2*|1-.95|) / 5 = 1.6 / 5
    assert m["ece"] == approx(0.32)
    bins = {r["bin"]: r for r in m["reliability"]}
    assert sorted(bins) == [6, 7, 8, 9]
    assert bins[9]["n"] == 2 and bins[9]["mean_p"] == approx(0.95) and bins[9]["accuracy"] == 1.0
    assert (bins[9]["lo"], bins[9]["hi"]) == approx((0.9, 1.0))


def test_ece_bin_edges_include_one_in_last_bin():
    rows = [("2024-01-02", f"T{i}", 1.0, "up", 1.0, c) for i, c in enumerate([0, 9.99, 10, 70, 99.9, 100])]
    t = reliability_table(table(rows))
    assert dict(zip(t["bin"], t["n"], strict=True)) == {0: 2, 1: 1, 7: 1, 9: 2}  # 10 -> [.1,.2); 100 -> [.9, 1]


def test_magnitude_mae_uses_signed_prediction(m):
    # |+.5-1| + |+1-(-2)| + |-1.5-.5| + |-2-(-1)| + |+2.5-3| = .5 + 3 + 2 + 1 + .5 = 7 over 5 parsed rows
    assert m["magnitude_mae"] == approx(7 / 5)


def test_wilson_ci_matches_closed_form(m):
    k, n, z = 3, 6, norm.ppf(0.975)
    p = k / n
    center = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    assert m["accuracy_ci95"] == approx([center - half, center + half])
    assert m["accuracy_ci95"] == approx([0.18762, 0.81238], abs=1e-5)
    # k = 0: lo = 0, hi = z^2 / (n + z^2)
    assert wilson_ci(0, 2) == approx([0.0, z**2 / (2 + z**2)])


def test_binomial_p_value(m):
    # P(X >= 3), X ~ Bin(6, .5) = (C(6,3)+C(6,4)+C(6,5)+C(6,6)) / 2^6 = (20+15+6+1)/64
    assert m["binom_p_value"] == approx(42 / 64)
    # p0 = .6: P(X >= 2), X ~ Bin(2, .6) = .36
    assert binom_p_value(2, 2, 0.6) == approx(0.36)


def test_backtest_by_hand(m):
    cost = 2 * 5 / 1e4  # .001 per trade
    r = [1 * 0.01 - cost, 1 * -0.02 - cost, -1 * 0.005 - cost, -1 * -0.01 - cost, 0.0, 1 * 0.03 - cost]
    daily = np.array([(r[0] + r[1]) / 2, (r[2] + r[3]) / 2, (r[4] + r[5]) / 2])  # -.006, .0015, .0145
    assert daily == approx([-0.006, 0.0015, 0.0145])
    b = m["backtest"]
    assert b["n_days"] == 3
    assert b["mean_daily_return_pct"] == approx(100 * daily.mean())  # 0.3333
    assert b["sharpe"] == approx(daily.mean() / daily.std(ddof=1) * math.sqrt(252))  # ~5.10
    assert b["sharpe"] == approx(5.1016, abs=1e-4)
    # equity .994, .995491, 1.009926; peak stays 1.0 until day 3 -> worst fall is day 1's .6 %
    assert b["max_drawdown_pct"] == approx(0.6)
    assert b["total_return_pct"] == approx(100 * (0.994 * 1.0015 * 1.0145 - 1))


def test_backtest_cost_bps_zero_and_buy_and_hold():
    df = table(MAIN)
    assert backtest(df, cost_bps=0)["mean_daily_return_pct"] == approx(100 * (-0.005 + 0.0025 + 0.015) / 3)
    # buy and hold: every row long, no cost: daily (.01-.02)/2, (.005-.01)/2, (0+.03)/2
    assert buy_and_hold(df)["mean_daily_return_pct"] == approx(100 * (-0.005 - 0.0025 + 0.015) / 3)


def test_drawdown_after_a_peak():
    rows = [(f"2024-01-0{i + 2}", "A", chg, "up", 1.0, 60) for i, chg in enumerate([10.0, -20.0, 5.0])]
    b = backtest(table(rows), cost_bps=0)
    # equity 1.1, .88, .924; peak 1.1 -> worst fall 1 - .88/1.1 = 20 %
    assert b["max_drawdown_pct"] == approx(20.0)


def test_confusion_matrix(m):
    assert m["confusion_matrix"]["counts"] == [[2, 1, 0], [1, 1, 1]]  # rows actual up/down; cols up/down/unknown


def test_confidence_clipped_and_missing_confidence_is_fifty():
    rows = [("2024-01-02", "A", 1.0, "up", 1.0, 150),  # clipped to 100 -> p_up 1.0, (1-1)^2 = 0
            ("2024-01-02", "B", -1.0, "up", 1.0, -20),  # clipped to 0 -> p_up 0.0, (0-0)^2 = 0
            ("2024-01-02", "C", 1.0, "down", 1.0, None)]  # missing -> 50 -> p_up .5, .25
    m = compute_metrics(table(rows))
    assert m["brier"] == approx(0.25 / 3)


# ------------------------------------------------------------------ edge cases
def test_all_unknown():
    rows = [("2024-01-02", "A", 1.0, "unknown", None, None), ("2024-01-03", "A", -1.0, "unknown", None, None)]
    m = compute_metrics(table(rows))
    assert m["parse_rate"] == 0 and m["accuracy"] == 0
    assert m["up_accuracy"] == 0 and m["down_accuracy"] == 0 and m["balanced_accuracy"] == 0
    assert m["mcc"] is None and m["ece"] is None and m["predicted_up_rate"] is None and m["magnitude_mae"] is None
    assert m["brier"] == approx(0.25)  # p_up .5 everywhere
    assert m["binom_p_value"] == approx(1.0)  # P(X >= 0)
    z = norm.ppf(0.975)
    assert m["accuracy_ci95"] == approx([0.0, z**2 / (2 + z**2)])
    b = m["backtest"]  # flat at zero: no variance, so no Sharpe
    assert b["n_days"] == 2 and b["mean_daily_return_pct"] == 0 and b["sharpe"] is None and b["max_drawdown_pct"] == 0
    assert m["reliability"] == []


def test_one_class_only():
    rows = [("2024-01-02", "A", 1.0, "up", 1.0, 60), ("2024-01-03", "A", 2.0, "up", 1.0, 70),
            ("2024-01-04", "A", 0.5, "down", 1.0, 80)]
    m = compute_metrics(table(rows))
    assert m["up_accuracy"] == approx(2 / 3)
    assert m["down_accuracy"] is None and m["balanced_accuracy"] is None  # no actual-down rows
    assert m["actual_up_rate"] == 1.0 and m["majority_rate"] == 1.0
    assert m["binom_p_value"] == approx(1.0)  # 2 of 3 can never beat p0 = 1
    assert m["mcc"] == 0.0  # sklearn's convention for a single true class
    assert m["brier"] == approx(((0.6 - 1) ** 2 + (0.7 - 1) ** 2 + (0.2 - 1) ** 2) / 3)  # .89 / 3


def test_single_day():
    rows = [("2024-01-02", "A", 1.0, "up", 1.0, 60), ("2024-01-02", "B", -1.0, "up", 1.0, 60)]
    b = compute_metrics(table(rows))["backtest"]
    # (.01 - .001 + -.01 - .001) / 2 = -.001 on the one day
    assert b["n_days"] == 1 and b["mean_daily_return_pct"] == approx(-0.1)
    assert b["sharpe"] is None  # std with ddof 1 is undefined for one day
    assert b["max_drawdown_pct"] == approx(0.1) and b["total_return_pct"] == approx(-0.1)


def test_single_row_is_json_clean():
    m = compute_metrics(table([("2024-01-02", "A", 1.0, "up", 1.0, 60)]))
    text = json.dumps(to_jsonable(m), allow_nan=False)  # raises on any NaN
    assert json.loads(text)["accuracy"] == 1.0


def test_empty_table_is_an_error():
    with pytest.raises(ValueError, match="no rows"):
        compute_metrics(table([]))
