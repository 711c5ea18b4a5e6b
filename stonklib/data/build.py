"""Build, summarise and load the train/val/test example files (``stonk data build``).

``build_dataset(cfg)`` runs source -> features -> chronological split ->
leakage checks and writes, into ``cfg.out_dir``::

    train.parquet  val.parquet  test.parquet   one row per Example (columns = Example.to_row() keys)
    summary.json                               sizes, up/down/flat rates, date ranges, skips, config

Every file is written to a temporary name and renamed into place, and
``summary.json`` goes last, so a directory with a summary is a complete build.
``skipped`` counts *input rows* by reason (for hf: dataset rows; plus
``history_entry_invalid``, which counts historical_data entries), so the
examples in the three splits plus the skips add up to the rows read.

Typical use::

    from stonklib.config import DataConfig
    from stonklib.data import build_dataset, format_summary, load_examples
    print(format_summary(build_dataset(DataConfig(source="sp500"))))
    val = load_examples(ensure_data(None), "val", limit=64)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stonklib import paths
from stonklib.data.features import build_examples
from stonklib.data.hf import load_hf
from stonklib.data.planted import plant
from stonklib.data.records import Example
from stonklib.data.sources import DataError, SourceData, load_sp500, read_ohlcv_csv
from stonklib.data.splits import check_no_leakage, dates_of, sample_dates_spread, split_dates, take

SPLITS = ("train", "val", "test")


def load_source(cfg, progress: bool = False) -> SourceData:
    """Dispatch on ``cfg.source`` (a :class:`stonklib.config.DataConfig`) and apply ``cfg.tickers``."""
    if cfg.source == "sp500":
        data = load_sp500()
    elif cfg.source == "csv":
        data = read_ohlcv_csv(cfg.csv, ticker=cfg.ticker, exchange_tz=cfg.exchange_tz, date_format=cfg.date_format,
                              decimal=cfg.decimal)
    else:
        data = load_hf(cfg.hf_path, exchange_tz=cfg.exchange_tz, progress=progress)
    if cfg.tickers:
        wanted = {t.strip().upper() for t in cfg.tickers}
        data.prices = data.prices[data.prices["ticker"].isin(wanted)].reset_index(drop=True)
        if data.prices.empty:
            raise DataError(f"none of tickers={sorted(wanted)} are in the {cfg.source} data; check the spelling.")
    return data


def build_dataset(cfg, progress: bool = True) -> dict[str, Any]:
    """Build ``cfg.out_dir/{train,val,test}.parquet`` and ``summary.json``; return the summary."""
    from stonklib.config import to_dict

    start = time.perf_counter()
    data = load_source(cfg, progress=progress)
    read_skips = sum(n for reason, n in data.skips.counts.items() if reason != "history_entry_invalid")
    n_rows = int(data.prices["asof"].sum()) + read_skips  # every row read: kept, or skipped while reading
    if cfg.label == "intraday":
        check_opens(data)
    table = build_examples(data.prices, cfg, data.skips, progress=progress)
    if cfg.plant:
        table = plant(table, cfg.plant)
    if table.num_rows == 0:
        raise DataError(f"no examples could be built from {data.paths}; skipped {data.skips.as_dict()}. "
                        + rows_needed(data.prices, cfg))
    dates = dates_of(table)
    sd = split_dates(dates, cfg.val_frac, cfg.test_frac, cfg.embargo)
    parts = {name: take(table, np.isin(dates, getattr(sd, name))) for name in SPLITS}
    embargoed = np.isin(dates, np.concatenate([sd.embargo_train_val, sd.embargo_val_test]))
    data.skips.add("embargo", int(embargoed.sum()))
    calendar = np.datetime_as_string(np.unique(data.prices["date"].to_numpy().astype("datetime64[D]")), unit="D")
    check_no_leakage(parts["train"], parts["val"], parts["test"], cfg.embargo, calendar=list(calendar))

    summary = {
        "source": cfg.source,
        "planted": cfg.plant,
        "inputs": data.paths,
        "n_input_rows": n_rows,
        "n_examples": sum(p.num_rows for p in parts.values()),
        "splits": {name: split_stats(part) for name, part in parts.items()},
        "label": cfg.label,
        "skipped": data.skips.as_dict(),
        "dropped": dict(sorted(data.dropped.items())),
        "skipped_lines": {k: v for k, v in sorted(data.skips.lines.items()) if v},
        "embargo_dates": {"train_val": list(sd.embargo_train_val), "val_test": list(sd.embargo_val_test)},
        "build_seconds": round(time.perf_counter() - start, 2),
        "config": to_dict(cfg),
    }
    with building(cfg.out_dir) as tmp:
        for name, part in parts.items():
            pq.write_table(part, str(tmp / f"{name}.parquet"))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def check_opens(data: SourceData) -> None:
    """The intraday label reads each day's open: a source without any is an error naming the fix."""
    p = data.prices
    if "open" not in p or not p["open"].notna().any():
        raise DataError(f"label=intraday needs each day's open, and {data.paths[0]} has none"
                        f"{' (no open column)' if 'open' not in p else ' (every open is missing)'}. Use a source "
                        "with opens (sp500, hf with price.open, or a csv with an open column), or --label next_close.")


def rows_needed(prices: pd.DataFrame, cfg) -> str:
    """Why no example came out: the rows each ticker needs and the rows it has (the shortest first)."""
    need = max(cfg.min_history, 2) + 3
    have = prices[prices["asof"]].groupby("ticker").size().sort_values() if len(prices) else pd.Series(dtype=int)
    found = ", ".join(f"{t} {n}" for t, n in have.head(10).items()) + (f", ... ({len(have)} tickers)" if len(have) > 10 else "")
    return (f"Each ticker needs at least max(min_history, 2) + 3 = {need} trading days (rows) to make one example "
            f"(min_history={cfg.min_history} before it, 3 after it); found {found or 'none'}. Add rows (a longer "
            "export), or lower --min_history (the 10-day metrics need 11).")


@contextlib.contextmanager
def building(out: Path) -> Iterator[Path]:
    """A fresh sibling directory to write a build into, put in ``out``'s place only once everything is written.

    A failure on the way (a full disk, an interrupt) removes the half-written sibling and leaves ``out`` as it
    was, so a directory that counts as built (:func:`is_built`) is always one whole build. The swap is two
    renames (the old directory aside, the new one in); the old one is then deleted.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(errno.EEXIST, "a file is in the way of the data folder", str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would become the build's
    try:
        yield tmp
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def split_stats(frame: pa.Table | pd.DataFrame) -> dict[str, Any]:
    """n, up/down/flat rates, date range and ticker count of one split."""
    if isinstance(frame, pd.DataFrame):
        frame = pa.Table.from_pandas(frame[["ticker", "date", "direction_1", "flat_1"]], preserve_index=False)
    n = frame.num_rows
    if n == 0:
        return {"n": 0, "up_rate": None, "down_rate": None, "flat_rate": None,
                "date_min": None, "date_max": None, "tickers": 0}
    up = np.asarray(frame.column("direction_1").to_pylist(), dtype=object) == "up"
    flat = np.asarray(frame.column("flat_1").to_pylist(), dtype=bool)
    dates = dates_of(frame)
    return {"n": n, "up_rate": round(float(up.mean()), 4), "down_rate": round(float(1 - up.mean()), 4),
            "flat_rate": round(float(flat.mean()), 4), "date_min": str(min(dates)), "date_max": str(max(dates)),
            "tickers": len(set(frame.column("ticker").to_pylist()))}


def format_summary(summary: dict[str, Any]) -> str:
    """A short printable table of a build summary."""
    lines = [f"source {summary['source']}: {summary['n_examples']:,} examples from {summary['n_input_rows']:,} rows "
             f"(built in {summary.get('build_seconds', '?')} s)",
             f"{'split':<6}{'n':>9}{'up':>8}{'down':>8}{'flat':>7}  {'dates':<23}{'tickers':>8}"]
    for name, s in summary["splits"].items():
        if not s["n"]:
            lines.append(f"{name:<6}{0:>9}")
            continue
        lines.append(f"{name:<6}{s['n']:>9,}{s['up_rate']:>8.1%}{s['down_rate']:>8.1%}{s['flat_rate']:>7.1%}  "
                     f"{s['date_min'] + '..' + s['date_max']:<23}{s['tickers']:>8}")
    skipped = summary.get("skipped", {})
    dropped = summary.get("dropped", {})
    if skipped:
        lines.append("skipped: " + ", ".join(f"{k} {v:,}" for k, v in sorted(skipped.items(), key=lambda kv: -kv[1])))
    if dropped:
        lines.append("dropped (rows kept, field not shown): " + ", ".join(f"{k} {v:,}" for k, v in sorted(dropped.items())))
    if summary.get("label", "next_close") != "next_close":
        lines.append(f"label: {summary['label']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------- load
def _check_split(data_dir: str | Path, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: use one of {', '.join(SPLITS)}.")
    path = Path(data_dir) / f"{split}.parquet"
    if not path.is_file():
        raise DataError(f"{path} does not exist: build the data with `stonk data build --out {data_dir}` "
                        "(or build_dataset(DataConfig(out=...))).")
    return path


def load_split(data_dir: str | Path, split: str) -> pd.DataFrame:
    """One split as a DataFrame (columns = Example.to_row() keys), in (date, ticker) order."""
    return pd.read_parquet(_check_split(data_dir, split))


def load_summary(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / "summary.json"
    if not path.is_file():
        raise DataError(f"{path} does not exist: {data_dir} is not a complete build; run `stonk data build --out {data_dir}`.")
    return json.loads(path.read_text())


def to_examples(frame: pd.DataFrame) -> list[Example]:
    """Typed records from a split DataFrame."""
    return [Example.from_row(row) for row in frame.to_dict("records")]


def load_examples(data_dir: str | Path, split: str, limit: int | None = None) -> list[Example]:
    """The examples of one split; with ``limit``, that many spread evenly over its dates (chronological)."""
    return to_examples(sample_dates_spread(load_split(data_dir, split), limit))


def is_built(data_dir: str | Path) -> bool:
    d = Path(data_dir)
    return (d / "summary.json").is_file() and all((d / f"{s}.parquet").is_file() for s in SPLITS)


def ensure_data(data_dir: str | Path | None = None, source: str = "sp500", progress: bool = True) -> Path:
    """A built data directory: ``data_dir`` if given (it must be complete), else the default one for
    ``source``, built on first use (sp500 from the bundled file; hf from the hub)."""
    if data_dir is not None:
        if not is_built(data_dir):
            raise DataError(f"{data_dir} is not a built data directory (needs train/val/test.parquet and summary.json): "
                            f"run `stonk data build --out {data_dir}`.")
        return Path(data_dir)
    out = paths.default_data_dir(source)
    if not is_built(out):
        if source == "csv":
            raise DataError(f"no built csv data in {out}: run `stonk data build --source csv --csv FILE`.")
        from stonklib.config import DataConfig
        build_dataset(DataConfig(source=source, out=str(out)), progress=progress)
    return out
