"""One DeepStock row -> the as-of record and history entries that :mod:`stonklib.data.hf` merges.

The real rows (``2084Collective/deepstock-sp500-companies-with-info-and-user-prompt_buy_sell_v2``,
one split, one row per ticker per trading day; ``docs/data.md`` has the table)::

    ticker        str
    company_info  {ticker, current_date: date32,
                   company_info: {name, description},
                   news: {news_headlines: list[str], news_date: date},
                   financials: {year: date, financials: str (json.dumps of one annual column, NaN allowed)},
                   price: {open, close, price_date, open_previous, close_previous, previous_date}}
    user_prompt   str

What is read, and what never is:

- ``price.close`` is the close on ``price_date`` (``current_date`` when absent); a ``price_date`` after
  ``current_date`` would be a future price, and the row is skipped (``price_after_asof``). ``price.open``
  is kept for the intraday label. ``close_previous``/``open_previous`` are from **7 calendar days**
  earlier, not the previous trading day, so they are never read: the series is rebuilt from the rows.
- ``financials.year`` is the report's date, and the dataset joins each row to the first annual report
  *after* ``current_date``. A report dated after the as-of date is dropped (counted in ``dropped`` as
  ``financials_after_asof``), so a prompt shows EPS, revenue and income only from a report dated on or
  before its date. Headlines whose ``news_date`` is after the as-of date are dropped the same way.
- ``user_prompt`` is never read: it prints the day's close next to its open, which is the dataset's own
  intraday label.

Dates arrive as ``datetime.date`` (``datasets``, parquet), ISO text, or epoch milliseconds/seconds
(``Dataset.to_json`` writes date32 as milliseconds); :func:`date_text` turns each into an ISO date.
Nested lists come back from parquet as numpy arrays; every helper takes them. The shapes of earlier
third-party scripts (``historical_data`` lists or dicts, news as ``{title}`` dicts, a flat
``financial_metrics`` dict) are still read, for exports made with those scripts.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import Counter
from typing import Any

import numpy as np

from stonklib.data.sources import Skips

DATE_KEYS = ("date", "datetime", "timestamp", "time", "day")
CLOSE_KEYS = ("close", "adj close", "adj_close", "price", "current_price", "last")
EPOCH_MS = 1e11  # a number at least this large is epoch milliseconds (1e11 s is the year 5138)


def parse_hf_row(row: Any, line: int, skips: Skips, dropped: Counter | None = None) -> tuple[dict, list[dict]] | None:
    """One hub row -> (as-of record, history entries), or None (counted in ``skips``); fields shown only if
    dated after the as-of date are counted in ``dropped``."""
    dropped = dropped if dropped is not None else Counter()
    info = _mapping(row.get("company_info", row) if isinstance(row, dict) else None)
    if info is None:
        skips.add("hf_company_info_unreadable", 1, [line])
        return None
    inner = _mapping(_get(info, "company_info", "profile", "info")) or {}
    ticker = _get(info, "ticker", "symbol") or _get(row, "ticker", "symbol")
    asof = date_text(_get(info, "current_date", "date") or _get(row, "current_date", "date"))
    price = _get(info, "price", "prices", "current_price")
    close, volume, open_ = _price(price)
    priced = date_text(_get(price, "price_date")) if isinstance(price, dict) else ""
    if priced and asof and priced > asof:
        skips.add("price_after_asof", 1, [line])
        return None
    day = priced or asof  # the row's date: shown fields must be dated on or before it
    metrics, report = financials(_get(info, "financials", "financial_metrics", "metrics"))
    if metrics is None:
        dropped["financials_unreadable"] += 1
        metrics, report = {}, ""
    if report and day and report > day:
        dropped["financials_after_asof"] += 1
        metrics, report = {}, ""
    news, news_date = news_of(_get(info, "news", "news_headlines", "headlines"))
    if news_date and day and news_date > day:
        dropped["news_after_asof"] += 1
        news, news_date = [], ""
    rec = {
        "line": line, "ticker": _text(ticker), "date": day, "close": _text(close),
        "volume": _text(volume), "open": _text(open_),
        "name": _text(_get(inner, "name", "longname", "shortname") or _get(info, "name", "company_name")),
        "sector": _text(_get(inner, "sector") or _get(info, "sector")),
        "industry": _text(_get(inner, "industry") or _get(info, "industry")),
        "description": _text(_get(inner, "description", "longbusinesssummary") or _get(info, "description")),
        "news": news, "news_date": news_date,
        "financial_metrics": json.dumps(metrics, sort_keys=True), "financials_date": report,
    }
    hist = [{"line": line, "ticker": rec["ticker"], "date": date_text(d), "close": _text(c), "volume": _text(v)}
            for d, c, v in history_entries(_get(info, "historical_data", "history", "historical_prices"))]
    return rec, hist


# ------------------------------------------------------------------- values
def date_text(x: Any) -> str:
    """An ISO date (or the text as given, for :func:`stonklib.data.dates.parse_dates` to judge) from a date,
    a timestamp, epoch milliseconds or seconds (as a number or a string of 10+ digits), or ISO text."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, np.datetime64):
        return "" if np.isnat(x) else str(np.datetime_as_string(x, unit="D"))
    if isinstance(x, dt.datetime):
        return x.date().isoformat()
    if isinstance(x, dt.date):
        return x.isoformat()
    if isinstance(x, str) and x.strip().isdigit() and len(x.strip()) >= 10:
        x = int(x.strip())
    if isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool):
        seconds = float(x) / 1000.0 if abs(float(x)) >= EPOCH_MS else float(x)
        try:
            return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).date().isoformat()
        except (OverflowError, OSError, ValueError):
            return str(x)
    return str(x).strip()


def _get(d: Any, *keys: str) -> Any:
    """The first present, non-empty value among ``keys`` (case-insensitive); arrays count as present."""
    if not isinstance(d, dict):
        return None
    lower = {str(k).lower(): v for k, v in d.items()}
    for k in keys:
        v = lower.get(k)
        if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v == ""):
            continue
        return v
    return None


def _mapping(x: Any) -> dict | None:
    if isinstance(x, str):
        try:
            x = json.loads(x)
        except json.JSONDecodeError:
            return None
    return x if isinstance(x, dict) else None


def _text(x: Any) -> str:
    return "" if x is None else str(x).strip()


def _price(p: Any) -> tuple[Any, Any, Any]:
    """(close, volume, open) of a ``price`` field: a dict, or a bare number (the close)."""
    if isinstance(p, dict):
        return _get(p, *CLOSE_KEYS), _get(p, "volume", "vol"), _get(p, "open")
    return p, None, None


def _sequence(x: Any) -> list | None:
    """A list from a list, tuple or numpy array (parquet's nested lists); None for anything else."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    return list(x) if isinstance(x, (list, tuple)) else None


def _list(text: str) -> list:
    try:
        x = json.loads(text)
    except json.JSONDecodeError:
        return []
    return x if isinstance(x, list) else []


# ------------------------------------------------------------------- fields
def history_entries(h: Any) -> list[tuple[Any, Any, Any]]:
    """(date, close, volume) triples from any of the third-party ``historical_data`` shapes (the real rows have none)."""
    if isinstance(h, str):
        h = _mapping(h) if h.strip().startswith("{") else _list(h)
    seq = _sequence(h)
    if seq is not None:
        out = []
        for item in seq:
            it = _sequence(item)
            if isinstance(item, dict):
                out.append((_get(item, *DATE_KEYS), _get(item, *CLOSE_KEYS), _get(item, "volume", "vol")))
            elif it is not None and len(it) >= 2:
                out.append((it[0], it[1], it[2] if len(it) > 2 else None))
        return out
    if not isinstance(h, dict) or not h:
        return []
    lower = {str(k).lower(): (_sequence(v) if isinstance(v, np.ndarray) else v) for k, v in h.items()}
    date_col = next((lower[k] for k in DATE_KEYS if isinstance(lower.get(k), list)), None)
    close_col = next((lower[k] for k in CLOSE_KEYS if k in lower), None)
    vol_col = lower.get("volume")
    if date_col is not None and isinstance(close_col, list):  # columnar
        vols = vol_col if isinstance(vol_col, list) else [None] * len(date_col)
        if not len(date_col) == len(close_col) == len(vols):
            return []  # columns that do not line up cannot be paired safely
        return list(zip(date_col, close_col, vols, strict=True))
    if isinstance(close_col, dict):  # pandas to_dict(): {"Close": {date: value}}
        vols = vol_col if isinstance(vol_col, dict) else {}
        return [(d, c, vols.get(d)) for d, c in close_col.items()]
    return [(d, *_price(v)[:2]) for d, v in h.items()]  # {date: {close, volume}} or {date: close}


def news_of(n: Any) -> tuple[list[str], str]:
    """(headlines, their ISO date or "") from the real ``{news_headlines, news_date}`` or any older shape."""
    if isinstance(n, str) and n.strip()[:1] == "{":
        n = _mapping(n) or n
    when = date_text(_get(n, "news_date", "date")) if isinstance(n, dict) else ""
    return news_headlines(n), when


def news_headlines(n: Any) -> list[str]:
    """Headlines as strings from a list or array, a list of dicts, a dict wrapper or a JSON string."""
    if isinstance(n, str):
        s = n.strip()
        return news_headlines(_list(s) or _mapping(s)) if s[:1] in "[{" else ([s] if s else [])
    if isinstance(n, dict):
        return news_headlines(_get(n, "news_headlines", "headlines", "news", "items", "articles"))
    seq = _sequence(n)
    if seq is None:
        return []
    out = []
    for item in seq:
        text = _get(item, "title", "headline", "text", "summary") if isinstance(item, dict) else item
        if isinstance(text, str) and text.strip():
            out.append(text.strip())
    return out


def financials(f: Any) -> tuple[dict[str, Any] | None, str]:
    """(metrics, the report's ISO date or ""): the real ``{year, financials: "<json>"}`` (NaN values read and
    left out), a ``{"financials": "<json>"}`` wrapper, or a flat dict. Metrics are None when the JSON inside
    cannot be read (the caller counts it); a missing or null field is no metrics."""
    f = _mapping(f) if isinstance(f, str) else f
    if not isinstance(f, dict):
        return {}, ""
    report = ""
    if "financials" in f and (len(f) == 1 or "year" in f):
        report = date_text(f.get("year"))
        body = f["financials"]
        if body is None or (isinstance(body, str) and not body.strip()):
            return {}, report
        inner = _mapping(body)
        if inner is None:
            return None, report
        f = inner
    elif len(f) == 1 and isinstance(next(iter(f.values())), (str, dict)):
        f = _mapping(next(iter(f.values()))) or f
    return _scalars(f), report


def financial_metrics(f: Any) -> dict[str, Any]:
    """The metrics of :func:`financials` alone ({} when unreadable)."""
    return financials(f)[0] or {}


def _scalars(f: dict) -> dict[str, Any]:
    """Finite numbers (as floats) and strings; NaN, infinities and nested values are left out."""
    out: dict[str, Any] = {}
    for k, v in f.items():
        if isinstance(v, bool) or isinstance(v, str):
            out[str(k)] = v
        elif isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(float(v)):
            out[str(k)] = float(v)
    return out
