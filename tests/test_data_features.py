"""Labels, history and derived metrics against hand-computed toy frames."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest

from stonklib.config import DataConfig
from stonklib.data import SCHEMA, Example, Skips, build_examples, to_examples
from stonklib.data.features import segments, shift


def prices(closes: list[float], ticker: str = "T", volumes: list[float] | None = None,
           dates: list[str] | None = None) -> pd.DataFrame:
    """A canonical price frame (one ticker, business days from 2024-01-01 unless ``dates``)."""
    days = pd.to_datetime(dates) if dates else pd.bdate_range("2024-01-01", periods=len(closes))
    n = len(closes)
    return pd.DataFrame({"ticker": ticker, "date": days, "close": np.asarray(closes, float),
                         "volume": np.asarray(volumes if volumes is not None else [1000.0] * n, float),
                         "line": np.arange(2, n + 2), "asof": True})


def build(p: pd.DataFrame, **cfg) -> tuple[list[Example], Skips]:
    skips = Skips()
    table = build_examples(p, DataConfig(**{"embargo": 0, **cfg}), skips)
    return to_examples(table.to_pandas()), skips


# ------------------------------------------------------------------- labels
def test_next_day_labels_match_hand_computed_numbers():
    closes = [100.0, 110.0, 99.0, 99.0, 108.9, 100.0]
    ex, skips = build(prices(closes), min_history=2, history_window=3)
    assert [(e.date, e.close) for e in ex] == [("2024-01-02", 110.0), ("2024-01-03", 99.0)]
    a, b = ex
    # a: as of 110 -> 99 (-10%) -> 99 (0%, flat counts as down) -> 108.9 (+10%)
    assert a.change_pct_1 == pytest.approx(-10.0)
    assert a.change_pct_2 == pytest.approx(0.0)
    assert a.change_pct_3 == pytest.approx(10.0)
    assert (a.direction_1, a.direction_2, a.direction_3) == ("down", "down", "up")
    assert a.flat_1 is False and a.previous_close == 100.0
    # b: as of 99 -> 99 (0%) -> 108.9 (+10%) -> 100 (-8.17%)
    assert b.change_pct_1 == 0.0 and b.direction_1 == "down" and b.flat_1 is True
    assert b.change_pct_2 == pytest.approx(10.0)
    assert b.change_pct_3 == pytest.approx(100 * (100 / 108.9 - 1))
    assert (b.direction_2, b.direction_3) == ("up", "down")
    # row 0 has no previous close; the last 3 rows have no 3-day future
    assert skips.as_dict() == {"short_history": 1, "no_future": 3}
    assert skips.lines["short_history"] == [2] and skips.lines["no_future"] == [5, 6, 7]


def test_flat_threshold_flags_small_moves_but_direction_stays_down():
    closes = [100.0, 100.0, 100.05, 100.05, 100.05, 100.05]
    ex, _ = build(prices(closes), min_history=2, flat_threshold_pct=0.1)
    assert ex[0].change_pct_1 == pytest.approx(0.05) and ex[0].direction_1 == "up" and ex[0].flat_1 is True
    assert ex[1].change_pct_1 == 0.0 and ex[1].direction_1 == "down" and ex[1].flat_1 is True


# ------------------------------------------------------------------ history
def test_history_is_most_recent_first_and_dated_on_or_before_the_as_of_date():
    closes = [10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0]
    vols = [100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0]
    ex, _ = build(prices(closes, volumes=vols), min_history=2, history_window=3)
    first, last = ex[0], ex[-1]
    assert [(h.date, h.close, h.volume) for h in first.history] == [("2024-01-02", 11.0, 200.0),
                                                                     ("2024-01-01", 10.0, 100.0)]
    assert [(h.date, h.close, h.volume) for h in last.history] == [("2024-01-05", 14.0, 500.0),
                                                                    ("2024-01-04", 13.0, 400.0),
                                                                    ("2024-01-03", 12.0, 300.0)]
    for e in ex:
        assert e.history[0].date == e.date and e.history[0].close == e.close
        assert all(h.date <= e.date for h in e.history)
        assert [h.date for h in e.history] == sorted((h.date for h in e.history), reverse=True)


def test_min_history_counts_rows_on_or_before_the_as_of_date():
    ex, skips = build(prices([float(c) for c in range(10, 30)]), min_history=11, history_window=15)
    assert ex[0].date == "2024-01-15" and len(ex[0].history) == 11  # the 11th row is the first example
    assert skips.as_dict() == {"short_history": 10, "no_future": 3}
    assert max(len(e.history) for e in ex) == 15


def test_history_never_mixes_tickers():
    p = pd.concat([prices([10.0, 11.0, 12.0, 13.0, 14.0, 15.0], "A"), prices([20.0, 21.0, 22.0, 23.0, 24.0, 25.0], "B")])
    ex, _ = build(p, min_history=2, history_window=15)
    assert {e.ticker for e in ex} == {"A", "B"}
    for e in ex:
        assert len(e.history) <= 3
        assert all((h.close < 20) == (e.ticker == "A") for h in e.history)


# ------------------------------------------------------------------ derived
def test_derived_metrics_by_hand():
    closes = [100, 102, 101, 103, 104, 102.5, 105, 107, 106, 108, 110, 109, 111, 112, 113.0]
    vols = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150.0]
    ex, _ = build(prices(closes, volumes=vols), min_history=1, history_window=15)
    by_pos = {closes.index(e.close): e for e in ex}  # closes are unique
    e4, e5, e9, e11 = by_pos[4], by_pos[5], by_pos[9], by_pos[11]
    assert e4.return_1d == pytest.approx(100 * (104 / 103 - 1))
    assert e4.return_5d is None and e5.return_5d == pytest.approx(100 * (102.5 / 100 - 1))
    assert e9.return_10d is None and e9.volatility_10d is None and e9.volume_ratio is None
    assert by_pos[10].return_10d == pytest.approx(100 * (110 / 100 - 1))
    daily = [100 * (closes[i] / closes[i - 1] - 1) for i in range(2, 12)]  # the 10 returns ending at row 11
    assert e11.volatility_10d == pytest.approx(statistics.stdev(daily))
    assert e11.volume_ratio == pytest.approx(120 / statistics.mean(vols[1:11]))
    assert e11.return_5d == pytest.approx(100 * (109 / 105 - 1))  # 5 rows back from row 11 is row 6
    assert e11.day_change_pct == pytest.approx(e11.return_1d)


def test_zero_mean_volume_gives_no_volume_ratio():
    ex, _ = build(prices([float(c) for c in range(100, 115)], volumes=[0.0] * 15), min_history=11)
    assert all(e.volume_ratio is None for e in ex)


# ------------------------------------------------------- segments and gaps
def test_unadjusted_split_cuts_the_series():
    closes = [float(40 + i) for i in range(10)] + [float(25 + i) for i in range(10)]  # 49 -> 25: a 2:1 split
    ex, skips = build(prices(closes), min_history=3, history_window=15)
    for e in ex:
        assert abs(e.change_pct_1) < 45 and abs(e.change_pct_2) < 45 and abs(e.change_pct_3) < 45
        assert all((h.close >= 40) == (e.close >= 40) for h in e.history)  # no window spans the split
    # segment 1: rows 7-9 lose their future to the cut; segment 2: rows 0-1 lose their history
    assert skips.as_dict() == {"short_history": 2, "suspected_split": 3 + 2, "no_future": 3}
    assert len(ex) == 5 + 5


def test_split_detection_can_be_disabled():
    closes = [float(40 + i) for i in range(10)] + [float(25 + i) for i in range(10)]
    ex, _ = build(prices(closes), min_history=3, max_daily_move_pct=None)
    assert min(e.change_pct_1 for e in ex) < -45


def test_label_across_a_hole_in_a_tickers_dates_is_skipped():
    days = [d.strftime("%Y-%m-%d") for d in pd.bdate_range("2024-01-01", periods=10)]
    a = prices([float(10 + i) for i in range(10)], "A", dates=days)
    b = prices([float(20 + i) for i in range(9)], "B", dates=days[:5] + days[6:])  # B has no row on day 5
    ex, skips = build(pd.concat([a, b]), min_history=2)
    b_dates = {e.date for e in ex if e.ticker == "B"}
    assert b_dates == {days[1], days[6]}  # days 2-4 would label a 2-day move as "next day"
    assert skips.counts["date_gap"] == 3


def test_ticker_with_too_few_rows_is_counted():
    p = pd.concat([prices([100.0, 101.0, 102.0], "SHORT"), prices([float(c) for c in range(100, 115)], "LONG")])
    ex, skips = build(p, min_history=11)
    assert {e.ticker for e in ex} == {"LONG"}
    assert skips.counts["too_few_rows"] == 3


# ------------------------------------------------------------------ schema
def test_columns_are_example_to_row_keys_and_round_trip():
    ex, _ = build(prices([float(c) for c in range(100, 119)]), min_history=11)
    assert SCHEMA.names == list(ex[0].to_row())
    row = ex[0].to_row()
    assert Example.from_row(row) == ex[0]


def test_many_tickers_in_chunks_match_one_chunk():
    p = pd.concat([prices([float(c + k) for c in range(100, 119)], f"T{k:02d}") for k in range(12)])
    cfg = DataConfig(min_history=5, embargo=0)
    whole = build_examples(p, cfg, Skips(), chunk_rows=10_000)
    chunked = build_examples(p, cfg, Skips(), chunk_rows=30)
    assert whole.equals(chunked)


def test_shift_and_segments_helpers():
    a = np.array([1.0, 2.0, 3.0])
    assert np.array_equal(shift(a, 1), [math.nan, 1, 2], equal_nan=True)
    assert np.array_equal(shift(a, -2), [3, math.nan, math.nan], equal_nan=True)
    seg = segments(np.array(["A", "A", "A", "B"], dtype=object), np.array([10.0, 11.0, 30.0, 5.0]), 45.0)
    assert seg.pos.tolist() == [0, 1, 0, 0] and seg.length.tolist() == [2, 2, 1, 1]
    assert seg.first.tolist() == [True, True, False, True] and seg.last.tolist() == [False, False, True, True]
