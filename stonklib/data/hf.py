"""The DeepStock hub dataset (``--source hf``), parsed at the edge into canonical prices.

Real users get the rows from ``datasets.load_dataset(HF_DATASET)`` (all of its
splits; we re-split chronologically ourselves). ``hf_path`` may instead name a
local ``.jsonl``/``.json``/``.parquet`` file, a directory of them, a
``save_to_disk`` directory, or another hub id.

Each row is ``{"ticker", "company_info": {...}}`` where ``company_info`` (a dict
or a JSON string) holds ``ticker``, ``current_date``, ``price``, optional
``historical_data``, ``news``, ``financial_metrics``/``financials`` and
``company_info`` (name, description). The parser accepts the variants seen in
the DeepStock datasets and scripts that use them:

- ``price``: a number, or a dict with ``close`` (or ``price``/``current_price``)
  and optionally ``volume``, ``close_previous``;
- ``historical_data``: a list of ``{date, close, volume}`` dicts or
  ``[date, close, volume]`` lists, a ``{date: {close, volume}}`` or
  ``{date: close}`` dict, a columnar ``{"date": [...], "close": [...]}`` dict or
  a pandas ``{"Close": {date: value}}`` dict (any of them JSON-encoded too);
- ``news``: a list of strings or of ``{title|headline}`` dicts, or a dict such as
  ``{"news_headlines": [...]}``;
- ``financial_metrics``/``financials``: a dict (or ``{"financials": "<json>"}``);
  scalar values are kept, nested ones dropped.

Labels. Every row's own ``(current_date, close)`` and every entry of every
row's ``historical_data`` are merged into one daily series per ticker (a row's
own price wins over a history entry for the same day; overlapping history
entries are expected and deduplicated silently). Examples are made only at the
rows' own dates, and their labels come from the next closes of that series:
the future part of the row's ``historical_data`` when it has one, otherwise the
following rows of the same ticker (the dataset is one row per ticker per day).
History shown in a prompt is always the part of the series dated on or before
the row's date. Volumes may be missing in this source: they become NaN and
``volume_ratio`` is then null.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from stonklib import paths
from stonklib.data.sources import EXCHANGE_TZ, DataError, Skips, SourceData, clean_prices, text_lines

DATE_KEYS = ("date", "datetime", "timestamp", "time", "day")
CLOSE_KEYS = ("close", "adj close", "adj_close", "price", "current_price", "last")
HEADERS = {"ticker": "company_info.ticker", "date": "company_info.current_date",
           "close": "company_info.price.close", "volume": "company_info.price.volume"}


def load_hf(hf_path: str | None = None, exchange_tz: str = EXCHANGE_TZ, progress: bool = False) -> SourceData:
    """Load and parse the DeepStock rows into canonical prices (see the module docstring)."""
    rows, where = read_hf_rows(hf_path)
    skips = Skips()
    asof, history = [], []
    for line, row in tqdm(rows, desc="hf rows", unit="row", disable=not progress):
        parsed = parse_hf_row(row, line, skips)
        if parsed is not None:
            asof.append(parsed[0])
            history.extend(parsed[1])
    if not asof:
        raise DataError(f"{where}: no rows with a company_info could be read; skipped {skips.as_dict()}.")
    prices = _merge(asof, history, where, skips, exchange_tz)
    return SourceData(prices, skips, "hf", [where])


# ----------------------------------------------------------------------- read
def read_hf_rows(hf_path: str | None) -> tuple[Iterable[tuple[int, Any]], str]:
    """(row number, row) pairs from a local file/dir or the hub, and a name for messages."""
    target = hf_path or paths.HF_DATASET
    p = Path(target).expanduser()
    if p.is_file():
        return list(_file_rows(p)), str(p)
    if p.is_dir():
        if (p / "dataset_dict.json").exists() or (p / "state.json").exists():
            from datasets import load_from_disk
            return _numbered(_dataset_rows(load_from_disk(str(p)))), str(p)
        files = sorted(f for f in p.iterdir() if f.suffix in (".jsonl", ".json", ".parquet"))
        if not files:
            raise DataError(f"{p}: no .jsonl, .json or .parquet files inside; point --hf_path at the data files.")
        return [(n, r) for f in files for n, r in _file_rows(f)], str(p)
    return _numbered(_dataset_rows(_load_hub(target))), target


def _load_hub(name: str):
    from datasets import load_dataset  # slow import; only needed for the hub
    try:
        return load_dataset(name)
    except Exception as e:  # the datasets/hub stack raises many unrelated types; we re-raise with a fix
        raise DataError(f"could not load the hub dataset {name!r} ({type(e).__name__}: {e}). Where the hub is "
                        f"reachable, run datasets.load_dataset({name!r})['train'].to_json('deepstock.jsonl') "
                        "and pass --hf_path deepstock.jsonl.") from e


def _dataset_rows(ds) -> Iterator[dict]:
    splits = [ds[k] for k in ds] if hasattr(ds, "keys") else [ds]
    for split in splits:
        yield from split


def _numbered(rows: Iterable[dict]) -> Iterator[tuple[int, dict]]:
    return ((i, r) for i, r in enumerate(rows, start=1))


def _file_rows(path: Path) -> Iterator[tuple[int, Any]]:
    if path.suffix == ".parquet":
        yield from _numbered(pd.read_parquet(path).to_dict("records"))
    elif path.suffix == ".json":
        data = _json("".join(t for _, t in text_lines(path)), path, 1)
        yield from _numbered(data if isinstance(data, list) else [data])
    else:
        for line_no, text in text_lines(path):
            if text.strip():
                yield line_no, _json(text, path, line_no)


def _json(text: str, path: Path, line: int) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {line} is not valid JSON ({e.msg}); each line must be one JSON object.") from e


# ---------------------------------------------------------------------- parse
def parse_hf_row(row: Any, line: int, skips: Skips) -> tuple[dict, list[dict]] | None:
    """One hub row -> (as-of record, history entries), or None (counted in ``skips``)."""
    info = _mapping(row.get("company_info", row) if isinstance(row, dict) else None)
    if info is None:
        skips.add("hf_company_info_unreadable", 1, [line])
        return None
    inner = _mapping(_get(info, "company_info", "profile", "info")) or {}
    ticker = _get(info, "ticker", "symbol") or _get(row, "ticker", "symbol")
    close, volume = _price(_get(info, "price", "prices", "current_price"))
    rec = {
        "line": line, "ticker": _text(ticker), "date": _text(_get(info, "current_date", "date") or _get(row, "current_date", "date")),
        "close": _text(close), "volume": _text(volume),
        "name": _text(_get(inner, "name", "longname", "shortname") or _get(info, "name", "company_name")),
        "sector": _text(_get(inner, "sector") or _get(info, "sector")),
        "industry": _text(_get(inner, "industry") or _get(info, "industry")),
        "description": _text(_get(inner, "description", "longbusinesssummary") or _get(info, "description")),
        "news": news_headlines(_get(info, "news", "news_headlines", "headlines")),
        "financial_metrics": json.dumps(financial_metrics(_get(info, "financial_metrics", "financials", "metrics")),
                                        sort_keys=True),
    }
    hist = [{"line": line, "ticker": rec["ticker"], "date": _text(d), "close": _text(c), "volume": _text(v)}
            for d, c, v in history_entries(_get(info, "historical_data", "history", "historical_prices"))]
    return rec, hist


def _get(d: Any, *keys: str) -> Any:
    """The first present, non-empty value among ``keys`` (case-insensitive)."""
    if not isinstance(d, dict):
        return None
    lower = {str(k).lower(): v for k, v in d.items()}
    for k in keys:
        v = lower.get(k)
        if v is not None and not (isinstance(v, float) and math.isnan(v)) and v != "":
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


def _price(p: Any) -> tuple[Any, Any]:
    if isinstance(p, dict):
        return _get(p, *CLOSE_KEYS), _get(p, "volume", "vol")
    return p, None


def history_entries(h: Any) -> list[tuple[Any, Any, Any]]:
    """(date, close, volume) triples from any of the historical_data shapes."""
    if isinstance(h, str):
        h = _mapping(h) if h.strip().startswith("{") else _list(h)
    if isinstance(h, list):
        out = []
        for item in h:
            if isinstance(item, dict):
                out.append((_get(item, *DATE_KEYS), _get(item, *CLOSE_KEYS), _get(item, "volume", "vol")))
            elif isinstance(item, (list, tuple)) and len(item) >= 2:
                out.append((item[0], item[1], item[2] if len(item) > 2 else None))
        return out
    if not isinstance(h, dict) or not h:
        return []
    lower = {str(k).lower(): v for k, v in h.items()}
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
    return [(d, *_price(v)) for d, v in h.items()]  # {date: {close, volume}} or {date: close}


def _list(text: str) -> list:
    try:
        x = json.loads(text)
    except json.JSONDecodeError:
        return []
    return x if isinstance(x, list) else []


def news_headlines(n: Any) -> list[str]:
    """Headlines as strings from a list, a list of dicts, a dict wrapper or a JSON string."""
    if isinstance(n, str):
        s = n.strip()
        return news_headlines(_list(s) or _mapping(s)) if s[:1] in "[{" else ([s] if s else [])
    if isinstance(n, dict):
        return news_headlines(_get(n, "news_headlines", "headlines", "news", "items", "articles"))
    if not isinstance(n, (list, tuple)) and not hasattr(n, "tolist"):
        return []
    out = []
    for item in list(n):
        text = _get(item, "title", "headline", "text", "summary") if isinstance(item, dict) else item
        if isinstance(text, str) and text.strip():
            out.append(text.strip())
    return out


def financial_metrics(f: Any) -> dict[str, Any]:
    """A flat ``{metric: number-or-text}`` dict; unwraps ``{"financials": "<json>"}``."""
    f = _mapping(f) if isinstance(f, str) else f
    if not isinstance(f, dict):
        return {}
    if len(f) == 1 and isinstance(next(iter(f.values())), (str, dict)):
        inner = _mapping(next(iter(f.values())))
        if inner is not None:
            f = inner
    out: dict[str, Any] = {}
    for k, v in f.items():
        if isinstance(v, bool) or isinstance(v, str):
            out[str(k)] = v
        elif isinstance(v, (int, float)) and math.isfinite(v):
            out[str(k)] = float(v)
    return out


# ---------------------------------------------------------------------- merge
def _merge(asof: list[dict], history: list[dict], where: str, skips: Skips, exchange_tz: str) -> pd.DataFrame:
    """Validate the rows and the history entries, then merge them into one series per ticker."""
    a = pd.DataFrame(asof).set_index("line", drop=False)
    a.index.name = None
    text = a[["line", "description", "news", "financial_metrics"]]
    prices = clean_prices(a[["ticker", "date", "close", "volume", "name", "sector", "industry"]], where, skips,
                          exchange_tz, allow_missing_volume=True, headers=HEADERS)
    prices = prices.merge(text, on="line", how="left")
    if history:
        h = pd.DataFrame(history).set_index("line")  # errors name the row the entry came from
        h.index.name = None
        h_skips = Skips()
        h = clean_prices(h[["ticker", "date", "close", "volume"]], where, h_skips, exchange_tz,
                         allow_missing_volume=True, headers={k: "historical_data." + k for k in HEADERS})
        bad = sum(n for r, n in h_skips.counts.items() if r != "duplicate_date")
        skips.add("history_entry_invalid", bad)
        h["asof"] = False
        h["line"] = -1
        prices = pd.concat([prices, h], ignore_index=True)
        known = prices.groupby(["ticker", "date"], sort=False)["volume"].transform("first")  # first non-NaN
        prices["volume"] = prices["volume"].fillna(known)
        prices = prices.drop_duplicates(["ticker", "date"], keep="first")  # a row's own price wins
    return prices.sort_values(["ticker", "date"], kind="stable").reset_index(drop=True)
