"""Chronological splits with an embargo, the leakage checks, and natural/balanced sampling.

Splits are by unique as-of date, never random: ``test`` is the most recent
``test_frac`` of the dates, ``val`` the ``val_frac`` before it, ``train`` the
rest; the ``embargo`` dates just before ``val`` and just before ``test`` are
dropped. Labels look 3 trading days ahead, so with ``embargo >= 3`` no label of
an earlier split uses a close that a later split's label uses.

:func:`check_no_leakage` asserts the two invariants we promise (and the build
runs it before writing anything):

1. every history date is on or before its row's as-of date, ``history[0]`` is
   the as-of date and history is strictly most-recent-first; so are the dates of
   the financial report and of the headlines a row shows (``financials_date``,
   ``news_date``);
2. at least ``embargo`` trading dates lie strictly between
   ``train.date.max()`` and ``val.date.min()``, and likewise val/test.

Functions take a pandas DataFrame (as :func:`stonklib.data.load_split` returns)
or a pyarrow Table with the example columns, and return the same kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from stonklib.data.features import HISTORY_TYPE
from stonklib.data.sources import DataError

Frame = TypeVar("Frame", pd.DataFrame, pa.Table)


class LeakageError(AssertionError):
    """A split or a row could see the future; the message names the violation."""


@dataclass(frozen=True)
class SplitDates:
    """The ISO dates of each split and the embargoed dates between them."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    embargo_train_val: np.ndarray
    embargo_val_test: np.ndarray


# --------------------------------------------------------------------- access
def dates_of(frame: pd.DataFrame | pa.Table) -> np.ndarray:
    """The as-of dates as an array of ISO strings."""
    if isinstance(frame, pa.Table):
        return np.asarray(frame.column("date").to_pylist(), dtype=object)
    return frame["date"].astype(str).to_numpy(dtype=object)


def take(frame: Frame, mask: np.ndarray) -> Frame:
    if isinstance(frame, pa.Table):
        return frame.filter(pa.array(mask))
    return frame[mask].reset_index(drop=True)


def take_rows(frame: Frame, idx: np.ndarray) -> Frame:
    if isinstance(frame, pa.Table):
        return frame.take(pa.array(idx, pa.int64()))
    return frame.iloc[idx].reset_index(drop=True)


# --------------------------------------------------------------------- splits
def split_dates(dates: Sequence[str], val_frac: float = 0.1, test_frac: float = 0.1, embargo: int = 3) -> SplitDates:
    """Assign unique dates to train / embargo / val / embargo / test, oldest first."""
    u = np.unique(np.asarray(dates, dtype=object).astype(str))
    n = len(u)
    n_test, n_val = max(1, round(n * test_frac)), max(1, round(n * val_frac))
    n_train = n - n_test - n_val - 2 * embargo
    if n_train < 1:
        raise DataError(f"only {n} trading dates: too few for val_frac={val_frac}, test_frac={test_frac} and "
                        f"embargo={embargo} (each split needs a date). Use more data, smaller fractions or a smaller embargo.")
    cut = np.cumsum([n_train, embargo, n_val, embargo])
    return SplitDates(u[: cut[0]], u[cut[1]: cut[2]], u[cut[3]:], u[cut[0]: cut[1]], u[cut[2]: cut[3]])


def chronological_split(frame: Frame, val_frac: float = 0.1, test_frac: float = 0.1,
                        embargo: int = 3) -> tuple[Frame, Frame, Frame]:
    """(train, val, test) by date with ``embargo`` dates dropped before val and before test."""
    d = dates_of(frame)
    s = split_dates(d, val_frac, test_frac, embargo)
    return tuple(take(frame, np.isin(d, part)) for part in (s.train, s.val, s.test))  # type: ignore[return-value]


# -------------------------------------------------------------------- leakage
def _history_array(frame: pd.DataFrame | pa.Table) -> pa.ListArray:
    if isinstance(frame, pa.Table):
        return frame.column("history").combine_chunks()
    return pa.array([None if h is None else list(h) for h in frame["history"]], HISTORY_TYPE)


def check_history_dates(frame: pd.DataFrame | pa.Table, name: str = "data") -> None:
    """Raise LeakageError unless every row's history is dated on/before it, newest first, starting at it."""
    if len(frame) == 0:
        return
    dates = dates_of(frame)
    tickers = np.asarray(frame.column("ticker").to_pylist() if isinstance(frame, pa.Table) else frame["ticker"], dtype=object)
    hist = _history_array(frame)
    lengths = pc.fill_null(pc.list_value_length(hist), 0).to_numpy()
    if (lengths == 0).any():
        i = int(np.argmax(lengths == 0))
        raise LeakageError(f"{name}: row {i} ({tickers[i]} {dates[i]}) has an empty history.")
    hdates = np.asarray(pc.list_flatten(hist).field("date").to_pylist(), dtype=object)
    parent = pc.list_parent_indices(hist).to_numpy()
    def where(j: int) -> str:
        i = int(parent[j])
        return f"{name}: row {i} ({tickers[i]}, as-of {dates[i]})"
    future = np.flatnonzero(hdates > dates[parent])
    if len(future):
        raise LeakageError(f"{where(future[0])} shows history dated {hdates[future[0]]}, after its as-of date.")
    firsts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    wrong = np.flatnonzero(hdates[firsts] != dates)
    if len(wrong):
        i = int(wrong[0])
        raise LeakageError(f"{name}: row {i} ({tickers[i]}) history[0] is {hdates[firsts[i]]}, not its as-of date {dates[i]}.")
    same = parent[1:] == parent[:-1]
    unordered = np.flatnonzero(same & ~(hdates[:-1] > hdates[1:]))
    if len(unordered):
        raise LeakageError(f"{where(unordered[0])} history is not strictly most-recent-first "
                           f"({hdates[unordered[0]]} then {hdates[unordered[0] + 1]}).")


def _calendar_near(frame: pd.DataFrame | pa.Table, day: str) -> set[str]:
    """Trading dates just before ``day``, read from the history of the rows dated ``day``."""
    rows = take(frame, dates_of(frame) == day)
    return set(pc.list_flatten(_history_array(rows)).field("date").to_pylist())


def check_embargo(train: pd.DataFrame | pa.Table, val: pd.DataFrame | pa.Table, test: pd.DataFrame | pa.Table,
                  embargo: int, calendar: Sequence[str] | None = None) -> None:
    """Raise LeakageError unless >= ``embargo`` trading dates lie strictly between consecutive splits.

    ``calendar`` is the list of trading dates; by default it is read from the
    later split's history (enough when ``history_window > embargo``).
    """
    for (a_name, a), (b_name, b) in (("train", train), ("val", val)), (("val", val), ("test", test)):
        if len(a) == 0 or len(b) == 0:
            continue
        a_dates, b_dates = dates_of(a), dates_of(b)
        a_max, b_min = max(a_dates), min(b_dates)
        if a_max >= b_min:
            raise LeakageError(f"{a_name}.date.max() = {a_max} is not before {b_name}.date.min() = {b_min}: "
                               "the splits overlap in time. Split with chronological_split().")
        cal = set(calendar) if calendar is not None else _calendar_near(b, b_min) | {a_max, b_min}
        between = sum(1 for d in cal if a_max < d < b_min)
        if between < embargo:
            raise LeakageError(f"embargo violated: {between} trading date(s) between {a_name}.date.max() = {a_max} and "
                               f"{b_name}.date.min() = {b_min}, need >= {embargo}. Rebuild with chronological_split(embargo={embargo}).")


#: Dated fields a prompt may show, each of which must be on or before the row's as-of date ("" = undated).
DATED_FIELDS = ("financials_date", "news_date")


def check_field_dates(frame: pd.DataFrame | pa.Table, name: str = "data") -> None:
    """Raise LeakageError if a row's financial report or headlines are dated after its as-of date."""
    if len(frame) == 0:
        return
    dates = dates_of(frame)
    cols = frame.column_names if isinstance(frame, pa.Table) else list(frame.columns)
    for field in (f for f in DATED_FIELDS if f in cols):
        raw = frame.column(field).to_pylist() if isinstance(frame, pa.Table) else frame[field].tolist()
        values = np.asarray(["" if v is None or v != v else str(v) for v in raw], dtype=object)
        late = np.flatnonzero((values != "") & (values > dates))
        if len(late):
            i = int(late[0])
            tickers = frame.column("ticker").to_pylist() if isinstance(frame, pa.Table) else frame["ticker"].tolist()
            raise LeakageError(f"{name}: row {i} ({tickers[i]}, as-of {dates[i]}) shows {field} {values[i]}, after "
                               "its as-of date.")


def check_no_leakage(train: pd.DataFrame | pa.Table, val: pd.DataFrame | pa.Table | None = None,
                     test: pd.DataFrame | pa.Table | None = None, embargo: int = 0,
                     calendar: Sequence[str] | None = None) -> None:
    """Both invariants of the module docstring; raises LeakageError naming the first violation."""
    for name, frame in (("train", train), ("val", val), ("test", test)):
        if frame is not None:
            check_history_dates(frame, name)
            check_field_dates(frame, name)
    if val is not None and test is not None:
        check_embargo(train, val, test, embargo, calendar)


# ------------------------------------------------------------------- sampling
def _chronological(frame: pd.DataFrame | pa.Table, idx: np.ndarray) -> np.ndarray:
    """``idx`` reordered by (date, ticker)."""
    tick = frame.column("ticker").to_pylist() if isinstance(frame, pa.Table) else frame["ticker"].astype(str)
    d, t = dates_of(frame)[idx], np.asarray(tick, dtype=object)[idx]
    return np.asarray(idx)[np.lexsort((t.astype(str), d.astype(str)))]


def sample_examples(frame: Frame, n: int, natural: bool = True, seed: int = 0, most_recent: bool = False) -> Frame:
    """At most ``n`` examples, returned in chronological order; deterministic for a seed.

    natural=True keeps the real up/down mix: a uniform random subset (or, with
    ``most_recent``, the latest ``n`` rows). natural=False (Stage I) takes
    ``n // 2`` up and ``n // 2`` down rows (fewer if a class runs out), so the
    result is exactly balanced.
    """
    if n < 1:
        raise ValueError(f"n={n}: ask for at least one example.")
    rng = np.random.default_rng(seed)
    every = _chronological(frame, np.arange(len(frame)))
    if natural:
        if n >= len(frame):
            return take_rows(frame, every)
        idx = every[-n:] if most_recent else rng.choice(len(frame), size=n, replace=False)
    else:
        col = frame.column("direction_1").to_pylist() if isinstance(frame, pa.Table) else frame["direction_1"]
        up = np.asarray(col, dtype=object) == "up"
        k = min(n // 2, int(up.sum()), int((~up).sum()))
        idx = np.concatenate([rng.choice(np.flatnonzero(up), k, replace=False),
                              rng.choice(np.flatnonzero(~up), k, replace=False)]).astype(int)
    return take_rows(frame, _chronological(frame, idx))


def sample_dates_spread(frame: Frame, limit: int | None) -> Frame:
    """``limit`` rows evenly spaced through the chronological order (deterministic; all rows if fewer)."""
    every = _chronological(frame, np.arange(len(frame)))
    if limit is None or limit >= len(frame):
        return take_rows(frame, every)
    pick = np.unique(np.linspace(0, len(frame) - 1, num=max(limit, 1)).round().astype(int))
    return take_rows(frame, every[pick])
