"""Date-clustered intervals, McNemar and power (stonklib.evaluate.uncertainty), checked by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest, norm
from sklearn.metrics import matthews_corrcoef

from stonklib.evaluate.metrics import compute_metrics, daily_returns
from stonklib.evaluate.run import verdict
from stonklib.evaluate.uncertainty import date_bootstrap, interval, mcnemar, resample_weights


def frame(dates, actual, pred, tickers=None) -> pd.DataFrame:
    n = len(dates)
    return pd.DataFrame({"ticker": tickers or [f"T{i}" for i in range(n)], "date": dates,
                         "actual_change_pct": actual, "predicted_direction": pred,
                         "predicted_pct": 1.0, "confidence": 60.0})


def random_frame(n_dates=25, per_date=8, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dates = np.repeat([f"2024-01-{d + 1:02d}" for d in range(n_dates)], per_date)
    market = np.repeat(rng.normal(0, 1, n_dates), per_date)  # rows of a date move together
    actual = market + rng.normal(0, 0.5, len(dates))
    pred = rng.choice(["up", "down", "unknown"], len(dates), p=[0.5, 0.45, 0.05])
    tickers = [f"T{i % per_date}" for i in range(len(dates))]
    return frame(list(dates), list(actual), list(pred), tickers)


def by_hand(df: pd.DataFrame, stat, n_resamples: int, seed: int) -> list[float]:
    """The bootstrap over dates written as a loop: the same draws, each statistic recomputed on the rows."""
    dates = np.array(sorted(df["date"].unique()))
    draws = np.random.default_rng(seed).integers(0, len(dates), size=(n_resamples, len(dates)))
    values = []
    for row in draws:
        sample = pd.concat([df[df["date"] == dates[i]] for i in row])
        values.append(stat(sample))
    v = np.array([x for x in values if x is not None and np.isfinite(x)])
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]


def accuracy(s: pd.DataFrame) -> float:
    y = np.where(s["actual_change_pct"] > 0, "up", "down")
    return float((s["predicted_direction"].to_numpy() == y).mean())


def test_one_date_gives_a_point_interval():
    df = frame(["2024-01-02"] * 4, [1, -1, 2, -2], ["up", "up", "up", "down"])
    b = date_bootstrap(df, n_resamples=200)
    assert b["accuracy_ci95_dates"] == [0.75, 0.75] and b["date_bootstrap"]["n_dates"] == 1
    assert b["date_bootstrap"]["accuracy_se"] is None and b["min_detectable_edge"] is None  # too few dates
    assert b["date_bootstrap"]["p_value"] is None and b["sharpe_ci95_dates"] is None  # one day has no spread
    m = {**compute_metrics(df), **b, "baselines": {}}
    assert "dates resampled" not in verdict({**m, "n": 40})  # the verdict falls back to Wilson


def test_all_equal_rows_of_a_date_match_a_bootstrap_over_dates_by_hand():
    rng = np.random.default_rng(3)
    right = rng.random(12) < 0.6  # each date: all rows right or all wrong
    dates = np.repeat([f"2024-02-{d + 1:02d}" for d in range(12)], 5)
    pred = np.where(np.repeat(right, 5), "up", "down")
    df = frame(list(dates), [1.0] * len(dates), list(pred))
    got = date_bootstrap(df, n_resamples=500, seed=11)["accuracy_ci95_dates"]
    draws = np.random.default_rng(11).integers(0, 12, size=(500, 12))
    per_date = right.astype(float)[draws].mean(axis=1)  # a date's accuracy is 1 or 0, every date weighs 5 rows
    assert got == pytest.approx([np.percentile(per_date, 2.5), np.percentile(per_date, 97.5)])


@pytest.mark.parametrize("name", ["accuracy", "balanced_accuracy", "mcc"])
def test_each_clustered_interval_matches_the_loop(name):
    df = random_frame()
    got = date_bootstrap(df, n_resamples=300, seed=5)[f"{name}_ci95_dates"]
    stat = {"accuracy": accuracy, "balanced_accuracy": _balanced, "mcc": _mcc}[name]
    assert got == pytest.approx(by_hand(df, stat, 300, 5))


def _balanced(s: pd.DataFrame) -> float:
    y = np.where(s["actual_change_pct"] > 0, "up", "down")
    p = s["predicted_direction"].to_numpy()
    return float(((p[y == "up"] == "up").mean() + (p[y == "down"] == "down").mean()) / 2)


def _mcc(s: pd.DataFrame) -> float:
    y = np.where(s["actual_change_pct"] > 0, "up", "down")
    p = s["predicted_direction"].to_numpy()
    keep = p != "unknown"
    return float(matthews_corrcoef(y[keep], p[keep]))


def test_sharpe_interval_matches_the_loop():
    df = random_frame()
    daily = daily_returns(df, 5.0)
    draws = np.random.default_rng(2).integers(0, len(daily), size=(300, len(daily)))
    sharpes = [daily.to_numpy()[d].mean() / daily.to_numpy()[d].std(ddof=1) * np.sqrt(252) for d in draws]
    got = date_bootstrap(df, 5.0, n_resamples=300, seed=2)["sharpe_ci95_dates"]
    assert got == pytest.approx([np.percentile(sharpes, 2.5), np.percentile(sharpes, 97.5)])


def test_clustered_intervals_are_wider_than_wilson_when_dates_move_together():
    rng = np.random.default_rng(0)
    dates = np.repeat([f"2024-03-{d + 1:02d}" for d in range(20)], 100)
    market = np.repeat(rng.choice([-1.0, 1.0], 20), 100)
    df = frame(list(dates), list(market), ["up"] * len(dates))  # always up: right on whole dates at once
    m = compute_metrics(df)
    b = date_bootstrap(df)
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(b["accuracy_ci95_dates"]) > 3 * width(m["accuracy_ci95"])


def test_power_is_the_normal_formula_on_the_clustered_standard_error():
    b = date_bootstrap(random_frame(), n_resamples=400, seed=1)
    se = b["date_bootstrap"]["accuracy_se"]
    assert b["min_detectable_edge"] == pytest.approx((norm.ppf(0.95) + norm.ppf(0.8)) * se)


def test_the_resample_weights_count_each_draw():
    w = resample_weights(4, 3, seed=0)
    draws = np.random.default_rng(0).integers(0, 4, size=(3, 4))
    assert (w.sum(axis=1) == 4).all() and all((w[i] == np.bincount(draws[i], minlength=4)).all() for i in range(3))
    assert interval(np.array([np.nan, np.nan])) is None


# ------------------------------------------------------------------ McNemar
def test_mcnemar_is_the_exact_binomial_on_the_discordant_pairs():
    dates = [f"2024-01-{d % 28 + 1:02d}" for d in range(40)]
    actual = [1.0] * 40
    a = frame(dates, actual, ["up"] * 30 + ["down"] * 10)
    b = frame(dates, actual, ["up"] * 22 + ["down"] * 8 + ["up"] * 3 + ["down"] * 7)
    m = mcnemar(a, b)
    assert (m["only_a_correct"], m["only_b_correct"], m["n_common"]) == (8, 3, 40)
    assert m["p_value"] == pytest.approx(binomtest(8, 11, 0.5).pvalue)
    assert mcnemar(a, a)["p_value"] == 1.0


def test_mcnemar_uses_common_rows_and_counts_unknown_as_wrong():
    a = frame(["d1", "d2", "d3"], [1, 1, -1], ["up", "unknown", "down"], ["A", "B", "C"])
    b = frame(["d2", "d3", "d4"], [1, -1, 1], ["up", "up", "up"], ["B", "C", "D"])
    m = mcnemar(a, b)
    assert m["n_common"] == 2 and (m["only_a_correct"], m["only_b_correct"]) == (1, 1)
    with pytest.raises(ValueError, match="share no"):
        mcnemar(a, frame(["x"], [1], ["up"], ["Z"]))


# ------------------------------------------------------------------ the verdict uses them
def test_the_verdict_quotes_the_clustered_interval_and_the_detectable_edge():
    df = random_frame()
    m = {**compute_metrics(df), **date_bootstrap(df), "baselines": {}}
    v = verdict(m)
    lo, hi = m["accuracy_ci95_dates"]
    assert f"[{lo:.2f}, {hi:.2f}] (95%, dates resampled; Wilson over rows" in v and "from 25 dates" in v
    assert f"an edge below {100 * m['min_detectable_edge']:.1f} points" in v
    assert "same-day moves are correlated" not in v  # the clustered interval already accounts for it


# ------------------------------------------------------------------ voting over samples
def _example():
    from stonklib.data.records import Example, HistoryRow

    return Example(ticker="A", date="2024-01-05", close=10.0, previous_close=9.9, change_pct_1=1.0, change_pct_2=-1.0,
                   change_pct_3=0.5, direction_1="up", direction_2="down", direction_3="up", flat_1=False,
                   history=(HistoryRow("2024-01-05", 10.0, 1.0),))


def answer(d1: str, pct: str = "1.0", conf: str = "60") -> str:
    return (f"Day 1: {d1} {pct}% with {conf}% confidence\nDay 2: down 0.5% with 55% confidence\n"
            f"Day 3: up 0.5% with 55% confidence")


@pytest.mark.parametrize("answers,direction,confidence,pct", [
    ([answer("up", "1.0"), answer("up", "3.0"), answer("down", "2.0"), answer("up", "2.0")], "up", 75.0, 2.0),
    ([answer("up"), answer("down")], "unknown", None, None),  # a tie
    (["no answer", "still none", answer("down", "0.4")], "down", 100 / 3, 0.4),  # unknown votes dilute the share
    (["no answer", "nothing"], "unknown", None, None),
])
def test_the_vote(answers, direction, confidence, pct):
    from stonklib.evaluate.predictions import PredictionRecord

    r = PredictionRecord.from_votes(_example(), answers)
    assert r.predicted_direction == direction and r.predicted_pct == pct
    assert r.confidence == (pytest.approx(confidence) if confidence is not None else None)
    assert len(r.samples) == len(answers) and [s["completion"] for s in r.samples] == answers
    assert r.day2_direction == ("down" if any("Day 2" in a for a in answers) else "unknown")


def test_one_sample_votes_as_the_greedy_answer_reads():
    from dataclasses import replace

    from stonklib.evaluate.predictions import PredictionRecord

    text = answer("down", "1.7", "70")
    one = PredictionRecord.from_votes(_example(), [text])
    assert replace(one, samples=None) == PredictionRecord.from_completion(_example(), text)


def test_a_voted_predictions_file_reads_and_scores(tmp_path):
    from stonklib.evaluate.predictions import PredictionRecord, read_predictions

    r = PredictionRecord.from_votes(_example(), [answer("up"), answer("up"), answer("down")])
    path = tmp_path / "p.jsonl"
    path.write_text(r.to_json() + "\n")
    df = read_predictions(path).frame
    assert df.loc[0, "predicted_direction"] == "up" and df.loc[0, "confidence"] == pytest.approx(200 / 3)
    assert compute_metrics(df)["accuracy"] == 1.0
