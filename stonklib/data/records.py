"""The one typed example record that every source is converted into, at the edge.

A built dataset is a parquet file with one row per :class:`Example`; the
columns are exactly the fields below (``history`` is a list of structs,
``news`` a list of strings, ``financial_metrics`` a JSON string).
:func:`Example.from_row` converts a parquet row (or any plain dict of the same
shape) back into the record, so rewards and prompts accept either.

Label conventions (as in the seed):
- ``change_pct_k`` is the close-to-close move of the k-th next trading day, in
  percent: ``100 * (close[t+k] / close[t+k-1] - 1)``; ``change_pct_1`` is the
  next-day move from the as-of close.
- ``direction_k`` is ``"up"`` if ``change_pct_k > 0``, otherwise ``"down"``;
  ``flat_1`` flags moves with ``|change_pct_1| <= flat_threshold_pct``.
- With ``label: intraday`` (:class:`stonklib.config.DataConfig`), ``change_pct_k``
  is instead the k-th next trading day's own move, open to close:
  ``100 * (close[t+k] / open[t+k] - 1)`` (the DeepStock dataset's "buy if close >
  open"); the prompt shows neither that day's open nor its close.
- Every number shown in a prompt (history, metrics, previous close) is dated on
  or before ``date``, the as-of date; so are ``financials_date`` and ``news_date``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class HistoryRow:
    date: str  # ISO YYYY-MM-DD
    close: float
    volume: float


@dataclass(frozen=True)
class Example:
    ticker: str
    date: str  # the as-of date, ISO YYYY-MM-DD
    close: float  # close on the as-of date (the "current price")
    previous_close: float  # close on the trading day before
    change_pct_1: float
    change_pct_2: float
    change_pct_3: float
    direction_1: str
    direction_2: str
    direction_3: str
    flat_1: bool
    history: tuple[HistoryRow, ...]  # most recent first; history[0].date == date
    name: str = ""
    sector: str = ""
    industry: str = ""
    description: str = ""
    news: tuple[str, ...] = ()
    # derived from history (None when the window is too short)
    return_1d: float | None = None  # % change previous_close -> close
    return_5d: float | None = None
    return_10d: float | None = None
    volatility_10d: float | None = None  # std of the last 10 daily % returns
    volume_ratio: float | None = None  # today's volume / mean volume of the previous 10 days
    financial_metrics: Mapping[str, Any] = field(default_factory=dict)  # extra metrics from the source (hf)
    financials_date: str = ""  # ISO date of the report financial_metrics come from ("" when unknown); <= date
    news_date: str = ""  # ISO date of the headlines ("" when unknown); <= date
    source: str = "sp500"

    @property
    def day_change_pct(self) -> float:
        """The as-of day's move, previous close -> close, in percent."""
        if not self.previous_close:
            return 0.0
        return 100.0 * (self.close / self.previous_close - 1.0)

    def change_pct(self, day: int) -> float:
        return (self.change_pct_1, self.change_pct_2, self.change_pct_3)[day - 1]

    def direction(self, day: int) -> str:
        return (self.direction_1, self.direction_2, self.direction_3)[day - 1]

    # ------------------------------------------------------------------ convert
    def to_row(self) -> dict[str, Any]:
        """A flat dict for parquet: history as a list of dicts, metrics as JSON."""
        row = asdict(self)
        row["history"] = [asdict(h) for h in self.history]
        row["news"] = list(self.news)
        row["financial_metrics"] = json.dumps(dict(self.financial_metrics), sort_keys=True, default=_jsonable)
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any] | Example) -> Example:
        """Build from a parquet row / plain dict (the inverse of :meth:`to_row`)."""
        if isinstance(row, Example):
            return row
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in dict(row).items() if k in names}
        hist = kw.get("history")
        kw["history"] = tuple(
            h if isinstance(h, HistoryRow) else HistoryRow(str(h["date"]), float(h["close"]), float(h["volume"]))
            for h in (list(hist) if hist is not None else [])
        )
        news = kw.get("news")
        kw["news"] = tuple(str(n) for n in (list(news) if news is not None else []))
        fm = kw.get("financial_metrics")
        if isinstance(fm, str):
            fm = json.loads(fm) if fm else {}
        kw["financial_metrics"] = dict(fm or {})
        for k in ("return_1d", "return_5d", "return_10d", "volatility_10d", "volume_ratio"):
            v = kw.get(k)
            if v is not None and (not isinstance(v, (int, float)) or math.isnan(float(v))):
                kw[k] = None
        kw["flat_1"] = bool(kw.get("flat_1", False))
        for k in ("name", "sector", "industry", "description", "financials_date", "news_date"):
            v = kw.get(k)
            kw[k] = "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
        return cls(**kw)


def _jsonable(x: Any) -> Any:
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


class DataError(ValueError):
    """Input data that cannot be used; the message names the file/row/field and how to fix it."""
