"""The DeepStock hub dataset (``--source hf``): read its rows wherever they are, merge them into prices.

Real users get the rows from ``datasets.load_dataset(HF_DATASET)`` (all of its splits; we re-split
chronologically ourselves). ``hf_path`` may instead name any export of it:

- a ``.jsonl``/``.json`` file (``Dataset.to_json``: dates as epoch milliseconds; ISO dates load too);
- a ``.parquet`` file, or a directory of them, the hub's own layout (``data/train-*.parquet``) included;
- a ``save_to_disk`` directory (``dataset_dict.json`` or ``state.json`` inside);
- another hub id.

:mod:`stonklib.data.hf_schema` parses each row (the real schema, what is never read and why).

Labels. Every row's own ``(date, close)`` and every entry of a row's ``historical_data`` (older
third-party exports; the real rows have none) are merged into one daily series per ticker (a row's own
price wins over a history entry for the same day). Examples are made only at the rows' own dates, and
their labels come from the next closes of that series (or, with ``label: intraday``, from the next days'
own open and close). History shown in a prompt is always the part of the series dated on or before the
row's date. The real rows have no volume: volumes are NaN and ``volume_ratio`` is null.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from stonklib import paths
from stonklib.data.hf_schema import parse_hf_row
from stonklib.data.sources import EXCHANGE_TZ, DataError, Skips, SourceData, clean_prices, text_lines

HEADERS = {"ticker": "company_info.ticker", "date": "company_info.current_date",
           "close": "company_info.price.close", "volume": "company_info.price.volume", "open": "company_info.price.open"}
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
#: What the hub error suggests: an export this loader reads (epoch-ms dates and all).
EXPORT_HINT = ("datasets.load_dataset({name!r})['train'].to_json('deepstock.jsonl') (or .to_parquet('deepstock.parquet'), "
               "or .save_to_disk('deepstock')) and pass --hf_path with that path")


def load_hf(hf_path: str | None = None, exchange_tz: str = EXCHANGE_TZ, progress: bool = False) -> SourceData:
    """Load and parse the DeepStock rows into canonical prices (see the module docstring)."""
    rows, where = read_hf_rows(hf_path)
    skips, dropped = Skips(), Counter()
    asof, history = [], []
    for line, row in tqdm(rows, desc="hf rows", unit="row", disable=not progress):
        parsed = parse_hf_row(row, line, skips, dropped)
        if parsed is not None:
            asof.append(parsed[0])
            history.extend(parsed[1])
    if not asof:
        raise DataError(f"{where}: no rows with a company_info could be read; skipped {skips.as_dict()}.")
    prices = _merge(asof, history, where, skips, exchange_tz)
    return SourceData(prices, skips, "hf", [where], dropped)


# ----------------------------------------------------------------------- read
def read_hf_rows(hf_path: str | None) -> tuple[Iterable[tuple[int, Any]], str]:
    """(row number, row) pairs from a local file/dir or the hub, and a name for messages.

    A directory's files are read in path order and numbered on from one another (the second file's
    first row follows the first file's last line), so a number names one row of the directory."""
    target = hf_path or paths.HF_DATASET
    p = Path(target).expanduser()
    if p.is_file():
        if p.suffix not in DATA_SUFFIXES:
            raise DataError(f"{p}: not a .jsonl, .json or .parquet file; export the dataset with {EXPORT_HINT.format(name=paths.HF_DATASET)}.")
        return _file_rows(p), str(p)
    if p.is_dir():
        if (p / "dataset_dict.json").exists() or (p / "state.json").exists():
            from datasets import load_from_disk
            return _numbered(_dataset_rows(load_from_disk(str(p)))), str(p)
        files = sorted(f for f in p.rglob("*") if f.suffix in DATA_SUFFIXES and f.is_file()
                       and not any(part.startswith(".") for part in f.relative_to(p).parts))
        if not files:
            raise DataError(f"{p}: no .jsonl, .json or .parquet files inside (nor in its subfolders, such as the hub's "
                            "data/); point --hf_path at the data files.")
        return _files_rows(files), str(p)
    if p.suffix in DATA_SUFFIXES or len(Path(target).parts) > 2 or target.startswith((".", "/", "~")):
        raise DataError(f"{target}: no such file or directory; check --hf_path.")
    return _numbered(_dataset_rows(_load_hub(target))), target


def _load_hub(name: str):
    from datasets import load_dataset  # slow import; only needed for the hub
    try:
        return load_dataset(name)
    except Exception as e:  # the datasets/hub stack raises many unrelated types; we re-raise with a fix
        raise DataError(f"could not load the hub dataset {name!r} ({type(e).__name__}: {e}). Where the hub is "
                        f"reachable, run {EXPORT_HINT.format(name=name)}.") from e


def _dataset_rows(ds) -> Iterator[dict]:
    splits = [ds[k] for k in ds] if hasattr(ds, "keys") else [ds]
    for split in splits:
        yield from split


def _numbered(rows: Iterable[dict], start: int = 1) -> Iterator[tuple[int, dict]]:
    return ((i, r) for i, r in enumerate(rows, start=start))


def _files_rows(files: list[Path]) -> Iterator[tuple[int, Any]]:
    offset = 0
    for f in files:
        last = 0
        for n, row in _file_rows(f):
            last = n
            yield offset + n, row
        offset += last


def _file_rows(path: Path) -> Iterator[tuple[int, Any]]:
    if path.suffix == ".parquet":
        yield from _numbered(_parquet_rows(path))
    elif path.suffix == ".json":
        data = _json("".join(t for _, t in text_lines(path)), path, 1)
        yield from _numbered(data if isinstance(data, list) else [data])
    else:
        for line_no, text in text_lines(path):
            if text.strip():
                yield line_no, _json(text, path, line_no)


def _parquet_rows(path: Path) -> Iterator[dict]:
    """Rows as plain Python values (dates as ``datetime.date``, lists as lists), a batch at a time."""
    try:
        f = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for a file that is not parquet
        raise DataError(f"{path}: not a readable parquet file ({type(e).__name__}: {e}).") from e
    for batch in f.iter_batches(batch_size=4096):
        yield from batch.to_pylist()


def _json(text: str, path: Path, line: int) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {line} is not valid JSON ({e.msg}); each line must be one JSON object.") from e


# ---------------------------------------------------------------------- merge
def _merge(asof: list[dict], history: list[dict], where: str, skips: Skips, exchange_tz: str) -> pd.DataFrame:
    """Validate the rows and the history entries, then merge them into one series per ticker."""
    a = pd.DataFrame(asof).set_index("line", drop=False)
    a.index.name = None
    text = a[["line", "description", "news", "news_date", "financial_metrics", "financials_date"]]
    prices = clean_prices(a[["ticker", "date", "close", "volume", "open", "name", "sector", "industry"]], where, skips,
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
