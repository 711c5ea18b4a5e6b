"""Chronological splits, embargo, leakage checks (passing and planted leaks) and sampling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from stonklib.config import DataConfig
from stonklib.data import (
    DataError,
    LeakageError,
    Skips,
    build_examples,
    check_embargo,
    check_no_leakage,
    chronological_split,
    sample_dates_spread,
    sample_examples,
    split_dates,
)


@pytest.fixture(scope="module")
def table() -> pa.Table:
    """Examples of 6 random-walk tickers over 80 business days."""
    rng = np.random.default_rng(0)
    days = pd.bdate_range("2024-01-01", periods=80)
    frames = [pd.DataFrame({"ticker": f"T{k}", "date": days, "close": 100 * np.cumprod(1 + rng.normal(0, 0.01, 80)),
                            "volume": 1000.0, "line": np.arange(80) + 2, "asof": True}) for k in range(6)]
    return build_examples(pd.concat(frames), DataConfig(min_history=5, history_window=8, embargo=0), Skips())


@pytest.fixture(scope="module")
def frame(table) -> pd.DataFrame:
    return table.to_pandas()


def skewed(n: int = 10_000, up_rate: float = 0.7, seed: int = 1) -> pd.DataFrame:
    """A bare frame of (ticker, date, direction_1) with a known up-rate."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2020-01-01", periods=n // 10).strftime("%Y-%m-%d")
    return pd.DataFrame({"ticker": [f"T{i % 10}" for i in range(n)], "date": np.repeat(dates, 10),
                         "direction_1": np.where(rng.random(n) < up_rate, "up", "down")})


# ------------------------------------------------------------------ splits
def test_split_dates_sizes_and_order():
    dates = [d.strftime("%Y-%m-%d") for d in pd.bdate_range("2024-01-01", periods=100)]
    s = split_dates(dates, val_frac=0.1, test_frac=0.1, embargo=3)
    assert (len(s.train), len(s.embargo_train_val), len(s.val), len(s.embargo_val_test), len(s.test)) == (74, 3, 10, 3, 10)
    assert list(np.concatenate([s.train, s.embargo_train_val, s.val, s.embargo_val_test, s.test])) == dates
    assert s.test[-1] == dates[-1]  # test is the most recent


def test_chronological_split_respects_the_embargo(frame):
    train, val, test = chronological_split(frame, 0.15, 0.15, embargo=3)
    all_dates = sorted(frame["date"].unique())
    for a, b in ((train, val), (val, test)):
        assert a["date"].max() < b["date"].min()
        between = [d for d in all_dates if a["date"].max() < d < b["date"].min()]
        assert len(between) == 3
    assert len(train) + len(val) + len(test) + 6 * 6 == len(frame)  # 6 embargoed dates x 6 tickers


def test_split_works_on_arrow_tables_too(table):
    train, val, test = chronological_split(table, 0.15, 0.15, embargo=3)
    assert isinstance(train, pa.Table) and train.num_rows + val.num_rows + test.num_rows == table.num_rows - 36


def test_too_few_dates_is_a_clear_error(frame):
    short = frame[frame["date"] <= sorted(frame["date"].unique())[4]]
    with pytest.raises(DataError, match="only 5 trading dates"):
        chronological_split(short, 0.1, 0.1, embargo=3)


# ----------------------------------------------------------------- leakage
def test_leakage_checks_pass_on_good_splits(frame, table):
    check_no_leakage(*chronological_split(frame, 0.15, 0.15, embargo=3), embargo=3)
    check_no_leakage(*chronological_split(table, 0.15, 0.15, embargo=3), embargo=3)


def plant(frame: pd.DataFrame, i: int, history: list[dict]) -> pd.DataFrame:
    out = frame.copy()
    out.at[i, "history"] = history
    return out


def test_history_dated_after_the_as_of_date_is_caught(frame):
    h = list(frame.at[3, "history"])
    leaked = plant(frame, 3, [h[0], {"date": "2099-01-01", "close": 1.0, "volume": 1.0}, *h[1:]])
    with pytest.raises(LeakageError, match=r"row 3 .* shows history dated 2099-01-01, after its as-of date"):
        check_no_leakage(leaked)


def test_history_not_starting_at_the_as_of_date_is_caught(frame):
    with pytest.raises(LeakageError, match=r"history\[0\] is .* not its as-of date"):
        check_no_leakage(plant(frame, 5, list(frame.at[5, "history"])[1:]))


def test_history_out_of_order_is_caught(frame):
    h = list(frame.at[7, "history"])
    with pytest.raises(LeakageError, match="not strictly most-recent-first"):
        check_no_leakage(plant(frame, 7, [h[0], h[2], h[1], *h[3:]]))


def test_empty_history_is_caught(frame):
    with pytest.raises(LeakageError, match="empty history"):
        check_no_leakage(plant(frame, 0, []))


def test_overlapping_splits_are_caught(frame):
    train, val, test = chronological_split(frame, 0.15, 0.15, embargo=3)
    with pytest.raises(LeakageError, match=r"train.date.max\(\) = .* is not before val.date.min\(\)"):
        check_no_leakage(pd.concat([train, val.head(12)]), val, test, embargo=3)


def test_embargo_too_short_is_caught(frame):
    train, val, test = chronological_split(frame, 0.15, 0.15, embargo=1)
    with pytest.raises(LeakageError, match=r"embargo violated: 1 trading date\(s\) between train"):
        check_no_leakage(train, val, test, embargo=3)


def test_embargo_check_with_an_explicit_calendar(frame):
    train, val, test = chronological_split(frame, 0.15, 0.15, embargo=3)
    check_embargo(train, val, test, 3, calendar=list(frame["date"].unique()))
    with pytest.raises(LeakageError, match="embargo violated: 0"):
        check_embargo(train, val, test, 3, calendar=[])


# ---------------------------------------------------------------- sampling
def test_natural_sampling_keeps_the_real_mix():
    df = skewed()
    s = sample_examples(df, 2000, natural=True, seed=3)
    assert len(s) == 2000 and (s["direction_1"] == "up").mean() == pytest.approx(0.7, abs=0.035)


def test_balanced_sampling_equalises_up_and_down():
    s = sample_examples(skewed(), 2001, natural=False, seed=3)
    assert len(s) == 2000 and (s["direction_1"] == "up").sum() == 1000


def test_balanced_sampling_is_limited_by_the_rarer_class():
    df = skewed(1000, up_rate=0.95)
    s = sample_examples(df, 600, natural=False)
    n_down = int((df["direction_1"] == "down").sum())
    assert len(s) == 2 * n_down and (s["direction_1"] == "up").mean() == 0.5


@pytest.mark.parametrize("natural", [True, False])
def test_sampling_is_deterministic_and_chronological(natural):
    df = skewed()
    a, b = sample_examples(df, 500, natural, seed=7), sample_examples(df, 500, natural, seed=7)
    assert a.equals(b)
    assert not a.equals(sample_examples(df, 500, natural, seed=8))
    keys = list(zip(a["date"], a["ticker"], strict=True))
    assert keys == sorted(keys)


def test_natural_sampling_of_more_than_available_returns_all_in_order():
    df = skewed(100).sample(frac=1.0, random_state=0)
    s = sample_examples(df, 1000)
    assert len(s) == 100 and list(s["date"]) == sorted(df["date"])


def test_most_recent_sampling_keeps_the_latest_rows():
    df = skewed(1000)
    s = sample_examples(df, 50, most_recent=True)
    assert s["date"].min() == sorted(df["date"])[-50] and s["date"].max() == df["date"].max()


def test_sampling_arrow_tables(table):
    s = sample_examples(table, 20, natural=False, seed=0)
    assert isinstance(s, pa.Table) and s.column("direction_1").to_pylist().count("up") == 10


def test_sample_dates_spread_covers_the_period_deterministically():
    df = skewed(1000)
    s = sample_dates_spread(df, 10)
    assert len(s) == 10 and s["date"].iloc[0] == df["date"].min() and s["date"].iloc[-1] == df["date"].max()
    assert s["date"].nunique() == 10 and s.equals(sample_dates_spread(df, 10))
    assert len(sample_dates_spread(df, None)) == len(df) == len(sample_dates_spread(df, 5000))
