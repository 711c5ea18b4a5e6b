"""Labels, derived metrics and history windows: canonical prices -> an Arrow table of examples.

Everything is vectorized over the price table sorted by (ticker, date): rows of
one *segment* (below) are contiguous, so "k rows back/ahead in the same ticker"
is an array shift masked by the row's position in its segment. Cost is
O(N log N) for the sort plus O(N * history_window) for the history lists; no
example ever rescans the data. The output columns are exactly
``Example.to_row()``'s keys, in the same order (:data:`SCHEMA`).

Conventions (``t`` = the as-of row, ``k`` = 1, 2, 3):

- ``change_pct_k = 100 * (close[t+k] / close[t+k-1] - 1)`` (with ``label: intraday``,
  ``100 * (close[t+k] / open[t+k] - 1)``: day t+k's own move, from columns the prompt
  never shows; rows whose label days lack an open are skipped as ``open_missing``); ``direction_k`` is
  ``"up"`` if ``change_pct_k > 0`` else ``"down"``; ``flat_1`` is
  ``|change_pct_1| <= flat_threshold_pct`` (a flat day still counts as down).
- ``history``: the up-to-``history_window`` most recent rows dated on or before
  ``t``, most recent first (``history[0]`` is ``t`` itself).
- ``return_kd = 100 * (close[t] / close[t-k] - 1)`` for k = 1, 5, 10 rows back;
  ``volatility_10d`` = sample std (ddof=1) of the last 10 daily % returns;
  ``volume_ratio = volume[t] / mean(volume[t-10..t-1])``. Null when the
  segment is too short (or the mean volume is 0 / unknown).

Where this departs from a plain groupby:

- Segments. The bundled S&P file is *not* split-adjusted (GIS halves on
  2010-06-09, ETFC x8 after its 1:10 reverse split). A daily move beyond
  ``max_daily_move_pct`` starts a new segment of the ticker, so no label,
  metric or history window spans it; rows that lose their label or history to
  such a cut are skipped as ``suspected_split``.
- Gaps. With several tickers, the trading calendar is the union of their
  dates; a label whose next 3 rows are not the next 3 calendar days (the ticker
  has a hole in its data) would be a multi-day move, so the row is skipped as
  ``date_gap``. History may span a hole: its dates are shown.
- An example needs ``max(min_history, 2)`` rows (it needs a previous close)
  and 3 rows ahead; other as-of rows are counted as ``too_few_rows`` (the
  whole ticker is too short), ``short_history`` or ``no_future``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from numpy.lib.stride_tricks import sliding_window_view
from tqdm.auto import tqdm

from stonklib.data.sources import Skips

HISTORY_TYPE = pa.list_(pa.struct([("date", pa.string()), ("close", pa.float64()), ("volume", pa.float64())]))
SCHEMA = pa.schema([
    ("ticker", pa.string()), ("date", pa.string()), ("close", pa.float64()), ("previous_close", pa.float64()),
    ("change_pct_1", pa.float64()), ("change_pct_2", pa.float64()), ("change_pct_3", pa.float64()),
    ("direction_1", pa.string()), ("direction_2", pa.string()), ("direction_3", pa.string()),
    ("flat_1", pa.bool_()), ("history", HISTORY_TYPE),
    ("name", pa.string()), ("sector", pa.string()), ("industry", pa.string()), ("description", pa.string()),
    ("news", pa.list_(pa.string())),
    ("return_1d", pa.float64()), ("return_5d", pa.float64()), ("return_10d", pa.float64()),
    ("volatility_10d", pa.float64()), ("volume_ratio", pa.float64()),
    ("financial_metrics", pa.string()), ("financials_date", pa.string()), ("news_date", pa.string()),
    ("source", pa.string()),
])
HORIZON = 3  # labels look this many rows ahead


@dataclass(frozen=True)
class Segments:
    """Where each row sits in its segment (a ticker's run of rows between suspected splits)."""

    pos: np.ndarray  # 0-based position in the segment
    length: np.ndarray  # the segment's row count
    first: np.ndarray  # the segment is its ticker's first
    last: np.ndarray  # the segment is its ticker's last


def segments(ticker: np.ndarray, close: np.ndarray, max_daily_move_pct: float | None) -> Segments:
    """Cut the sorted rows at ticker changes and at moves beyond ``max_daily_move_pct``."""
    n = len(close)
    new_ticker = np.ones(n, dtype=bool)
    new_ticker[1:] = ticker[1:] != ticker[:-1]
    start = new_ticker.copy()
    if max_daily_move_pct and n > 1:
        move = np.abs(100.0 * (close[1:] / close[:-1] - 1.0))
        start[1:] |= move > max_daily_move_pct
    gid = np.cumsum(start) - 1
    starts = np.flatnonzero(start)
    length = np.diff(np.append(starts, n))
    next_is_new = np.append(new_ticker[starts[1:]], True)
    return Segments(np.arange(n) - starts[gid], length[gid], new_ticker[starts][gid], next_is_new[gid])


def shift(a: np.ndarray, k: int) -> np.ndarray:
    """``out[i] = a[i - k]`` (k > 0 looks back, k < 0 ahead), NaN where out of range."""
    out = np.full(len(a), np.nan)
    if k > 0:
        out[k:] = a[:-k]
    elif k < 0:
        out[:k] = a[-k:]
    else:
        out[:] = a
    return out


def labels(close: np.ndarray, seg: Segments, flat_threshold_pct: float,
           open_: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """change_pct_k / direction_k for k = 1..3 and flat_1 (NaN change where the segment ends first).

    With ``open_`` (the intraday label), day k's move is its own open to close, ``close[t+k] / open[t+k]``;
    a missing open makes that change NaN."""
    out: dict[str, np.ndarray] = {}
    for k in range(1, HORIZON + 1):
        base = shift(close, -(k - 1)) if open_ is None else shift(open_, -k)
        change = 100.0 * (shift(close, -k) / base - 1.0)
        change[seg.pos + k >= seg.length] = np.nan
        out[f"change_pct_{k}"] = change
        out[f"direction_{k}"] = np.where(change > 0, "up", "down")
    out["flat_1"] = np.abs(out["change_pct_1"]) <= flat_threshold_pct
    return out


def derived(close: np.ndarray, volume: np.ndarray, seg: Segments) -> dict[str, np.ndarray]:
    """previous_close, return_1d/5d/10d, volatility_10d and volume_ratio (NaN where undefined)."""
    out = {"previous_close": np.where(seg.pos >= 1, shift(close, 1), np.nan)}
    for k in (1, 5, 10):
        out[f"return_{k}d"] = np.where(seg.pos >= k, 100.0 * (close / shift(close, k) - 1.0), np.nan)
    daily = out["return_1d"]
    windows = sliding_window_view(np.concatenate([np.full(9, np.nan), daily]), 10)  # row i: returns i-9..i
    out["volatility_10d"] = np.where(seg.pos >= 10, np.std(windows, axis=1, ddof=1), np.nan)
    prior = sliding_window_view(np.concatenate([np.full(10, np.nan), volume]), 10)[: len(volume)]  # i-10..i-1
    mean = prior.mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["volume_ratio"] = np.where((seg.pos >= 10) & (mean > 0), volume / mean, np.nan)
    return out


def history_lists(rows: np.ndarray, pos: np.ndarray, window: int, dates: np.ndarray, close: np.ndarray,
                  volume: np.ndarray) -> pa.ListArray:
    """For each row in ``rows``: rows i, i-1, ... (at most ``window``, never before its segment) as structs."""
    n_hist = np.minimum(pos[rows] + 1, window)
    offsets = np.concatenate([[0], np.cumsum(n_hist)]).astype(np.int32)
    back = np.arange(offsets[-1]) - np.repeat(offsets[:-1], n_hist)  # 0, 1, 2, ... within each list
    src = np.repeat(rows, n_hist) - back
    items = pa.StructArray.from_arrays(
        [pa.array(dates[src], pa.string()), pa.array(close[src], pa.float64()), pa.array(volume[src], pa.float64())],
        names=["date", "close", "volume"])  # volume NaN (not null) when unknown: HistoryRow wants a float
    return pa.ListArray.from_arrays(pa.array(offsets), items)


def skip_reasons(asof: np.ndarray, seg: Segments, need: int, cal_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(eligible mask, reason per row: '' where eligible or not an as-of row)."""
    too_short = seg.length < need + HORIZON
    short_hist = seg.pos + 1 < need
    no_future = seg.pos + HORIZON >= seg.length
    ahead = shift(cal_idx.astype(float), -HORIZON)
    gap = ~no_future & (ahead - cal_idx != HORIZON)
    reason = np.full(len(asof), "", dtype=object)
    reason[gap] = "date_gap"
    reason[no_future] = np.where(seg.last[no_future], "no_future", "suspected_split")
    reason[short_hist] = np.where(seg.first[short_hist], "short_history", "suspected_split")
    whole = seg.first & seg.last
    reason[too_short] = np.where(whole[too_short], "too_few_rows", "suspected_split")
    reason[~asof] = ""
    return asof & (reason == ""), reason


def _text_column(p: pd.DataFrame, name: str, rows: np.ndarray, default: str = "") -> pa.Array:
    if name not in p:
        return pa.array(np.full(len(rows), default, dtype=object), pa.string())
    values = p[name].to_numpy(dtype=object)[rows]
    return pa.array([v if isinstance(v, str) and v else default for v in values], pa.string())


def _news_column(p: pd.DataFrame, rows: np.ndarray) -> pa.Array:
    if "news" not in p:
        return pa.ListArray.from_arrays(pa.array(np.zeros(len(rows) + 1, np.int32)), pa.array([], pa.string()))
    values = p["news"].to_numpy(dtype=object)[rows]
    return pa.array([list(v) if isinstance(v, (list, tuple, np.ndarray)) else [] for v in values], pa.list_(pa.string()))


def chunk_examples(p: pd.DataFrame, calendar: np.ndarray, cfg, skips: Skips) -> pa.Table:
    """Examples for a frame of whole tickers (sorted by ticker, date); skipped rows counted."""
    close = p["close"].to_numpy(np.float64)
    volume = p["volume"].to_numpy(np.float64)
    day = p["date"].to_numpy().astype("datetime64[D]")
    cal_idx = np.searchsorted(calendar, day)
    seg = segments(p["ticker"].to_numpy(dtype=object), close, cfg.max_daily_move_pct)
    ok, reason = skip_reasons(p["asof"].to_numpy(bool), seg, max(cfg.min_history, 2), cal_idx)
    intraday = getattr(cfg, "label", "next_close") == "intraday"
    open_ = p["open"].to_numpy(np.float64) if intraday and "open" in p else None
    if intraday and open_ is None:
        open_ = np.full(len(p), np.nan)
    labs = labels(close, seg, cfg.flat_threshold_pct, open_)
    if intraday:  # every day a label reads needs its own open
        no_open = ok & ~np.isfinite(np.stack([labs[f"change_pct_{k}"] for k in range(1, HORIZON + 1)])).all(axis=0)
        reason[no_open] = "open_missing"
        ok &= ~no_open
    lines = p["line"].to_numpy()
    for r in np.unique(reason[reason != ""]):
        skips.add(str(r), int((reason == r).sum()), lines[reason == r])
    rows = np.flatnonzero(ok)
    iso = np.datetime_as_string(calendar, unit="D")[cal_idx]
    cols = {"ticker": pa.array(p["ticker"].to_numpy(dtype=object)[rows], pa.string()),
            "date": pa.array(iso[rows], pa.string()), "close": pa.array(close[rows])}
    cols.update({k: pa.array(v[rows]) for k, v in labs.items()})
    cols["history"] = history_lists(rows, seg.pos, cfg.history_window, iso, close, volume)
    for name in ("name", "sector", "industry", "description"):
        cols[name] = _text_column(p, name, rows)
    cols["news"] = _news_column(p, rows)
    cols.update({k: pa.array(v[rows], from_pandas=True) for k, v in derived(close, volume, seg).items()})
    cols["financial_metrics"] = _text_column(p, "financial_metrics", rows, default="{}")
    for name in ("financials_date", "news_date"):
        cols[name] = _text_column(p, name, rows)
    cols["source"] = pa.array(np.full(len(rows), cfg.source, dtype=object), pa.string())
    return pa.table([cols[f.name] for f in SCHEMA], schema=SCHEMA)


def build_examples(prices: pd.DataFrame, cfg, skips: Skips | None = None, progress: bool = False,
                   chunk_rows: int = 10_000) -> pa.Table:
    """All examples of a canonical price table (see :mod:`stonklib.data.sources`), sorted by (date, ticker).

    ``cfg`` is a :class:`stonklib.config.DataConfig` (history_window, min_history,
    flat_threshold_pct, max_daily_move_pct, source). Work is done in chunks of
    whole tickers, so the progress bar counts tickers.
    """
    skips = skips if skips is not None else Skips()
    prices = prices.sort_values(["ticker", "date"], kind="stable").reset_index(drop=True)
    calendar = np.unique(prices["date"].to_numpy().astype("datetime64[D]"))
    tick = prices["ticker"].to_numpy(dtype=object)
    starts = np.flatnonzero(np.append(True, tick[1:] != tick[:-1]))
    bounds = _chunk_bounds(starts, len(prices), chunk_rows)
    tables = []
    with tqdm(total=len(starts), desc="tickers", unit="ticker", disable=not progress) as bar:
        for lo, hi in bounds:
            tables.append(chunk_examples(prices.iloc[lo:hi], calendar, cfg, skips))
            bar.update(int(np.searchsorted(starts, hi) - np.searchsorted(starts, lo)))
    table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
    return table.sort_by([("date", "ascending"), ("ticker", "ascending")])


def _chunk_bounds(starts: np.ndarray, n: int, chunk_rows: int) -> list[tuple[int, int]]:
    """Row ranges of at least ``chunk_rows`` rows (the last may be shorter) that never cut a ticker in two."""
    bounds, lo = [], 0
    for end in np.append(starts[1:], n):
        if end - lo >= chunk_rows:
            bounds.append((lo, int(end)))
            lo = int(end)
    if lo < n:
        bounds.append((lo, n))
    return bounds
