"""Dates as files write them, read as exchange-local trading dates (``parse_dates``).

One reading per file, never a guess per value: ISO dates (with or without a time and a zone), ``YYYYMMDD``,
and ``dd/mm/yyyy`` or ``mm/dd/yyyy`` in the one order that the file's own dates settle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from stonklib.data.records import DataError

EXCHANGE_TZ = "America/New_York"

_TZ_SUFFIX = r"\s*(?:Z|UTC|[+-]\d{2}:?\d{2})$"


def parse_dates(raw: pd.Series, exchange_tz: str = EXCHANGE_TZ, date_format: str | None = None,
                where: str | Path = "the file") -> pd.Series:
    """Parse to naive midnight timestamps of the exchange-local trading date (NaT if unparseable).

    A value written at local midnight (``2024-01-02``, ``2024-01-02 00:00-05:00``,
    or a daily bar stamped ``2024-01-02T00:00Z``) keeps its written date. A value
    with a time of day and a zone (``2024-01-02T21:00Z``) is converted to
    ``exchange_tz`` first, so a 4pm New York close stamped in UTC stays on its
    trading day. Accepts ISO dates, ``YYYYMMDD``, ``dd/mm/yyyy`` or ``mm/dd/yyyy`` (the order settled once
    for the whole file: :func:`slashed_format`) and other formats pandas reads; ``date_format`` (a
    ``strftime`` pattern such as ``%d/%m/%Y``) reads every value with that pattern instead.
    """
    codes, uniques = pd.factorize(raw.astype("string").str.strip())  # dates repeat across tickers
    u = pd.Series(uniques, dtype="string")
    if date_format:
        out = pd.to_datetime(u, errors="coerce", format=date_format).dt.normalize()
        zoned = pd.Series(False, index=u.index)
    else:
        wall = _to_datetime(u.str.replace(_TZ_SUFFIX, "", regex=True), utc=False, where=where)
        out = wall.dt.normalize()
        zoned = u.str.contains(_TZ_SUFFIX, regex=True, na=False) & (wall != out)
    if zoned.any():
        local = _to_datetime(u.where(zoned), utc=True).dt.tz_convert(exchange_tz).dt.tz_localize(None)
        out = out.where(~zoned, local.dt.normalize())
    values = out.to_numpy()
    parsed = np.where(codes >= 0, values[np.maximum(codes, 0)], np.datetime64("NaT"))
    return pd.Series(parsed, index=raw.index).astype("datetime64[us]")


_SLASHED = r"^(\d{1,2})([/.-])(\d{1,2})\2(\d{4}|\d{2})$"  # 21/08/2009, 08.21.09, ...


def _to_datetime(s: pd.Series, utc: bool, where: str | Path = "the file") -> pd.Series:
    """ISO first (fast, vectorized); day/month dates in the file's one order; anything else (month names)
    through pandas' general parser."""
    out = pd.to_datetime(s, errors="coerce", utc=utc, format="ISO8601")
    rest = out.isna() & s.notna()
    if rest.any():
        parts = s[rest].str.extract(_SLASHED)
        slashed = parts[0].notna()
        if slashed.any():
            fmt = slashed_format(parts[slashed], where)
            out[rest & slashed.reindex(s.index, fill_value=False)] = pd.to_datetime(
                s[rest][slashed], errors="coerce", utc=utc, format=fmt)
        other = out.isna() & s.notna() & ~s.str.match(_SLASHED, na=False)
        if other.any():
            out[other] = pd.to_datetime(s[other], errors="coerce", utc=utc, format="mixed")
    return out


def slashed_format(parts: pd.DataFrame, where: str | Path) -> str:
    """The one ``strftime`` pattern of a file's ``n/n/yyyy`` dates (their regex groups: first number, separator,
    second number, year), settled by the values where one number exceeds 12; never guessed per value."""
    first, second = parts[0].astype(int), parts[2].astype(int)
    day_first, month_first = bool((first > 12).any()), bool((second > 12).any())
    sep = parts[1].iloc[0]
    year = "%Y" if len(parts[3].iloc[0]) == 4 else "%y"
    example = f"{parts[0].iloc[0]}{sep}{parts[2].iloc[0]}{sep}{parts[3].iloc[0]}"
    if day_first and month_first:
        raise DataError(f"{where}: the dates mix day/month and month/day orders (e.g. {example}); write them all one "
                        f"way, or pass --date_format {'%d' + sep + '%m' + sep + year}.")
    if not (day_first or month_first):
        raise DataError(f"{where}: dates such as {example} could be day/month or month/day, and no date in the file "
                        f"settles it. Pass --date_format {'%d' + sep + '%m' + sep + year} (day first) or "
                        f"--date_format {'%m' + sep + '%d' + sep + year} (month first).")
    return (f"%d{sep}%m{sep}{year}" if day_first else f"%m{sep}%d{sep}{year}")
