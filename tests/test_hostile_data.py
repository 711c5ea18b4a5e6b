"""Hostile data input (issue #21): no silent wrong parse. Day/month dates take one order per file (or an
error asks for --date_format), decimal commas are read as such or counted, and a failed rebuild leaves
the old build whole."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from stonklib.config import DataConfig
from stonklib.data import build as build_mod
from stonklib.data import build_dataset, is_built, load_summary, read_ohlcv_csv
from stonklib.data.sources import DataError


def ohlcv(path, dates, closes, sep=",", ticker="AAA", header=None):
    head = header or sep.join(["date", "ticker", "close", "volume"])
    rows = [sep.join([d, ticker, c, "1000"]) for d, c in zip(dates, closes, strict=True)]
    path.write_text("\n".join([head, *rows]) + "\n")
    return path


def business_days(start: str, n: int) -> list[pd.Timestamp]:
    return list(pd.bdate_range(start, periods=n))


# ------------------------------------------------------------------ 1. dd/mm/yyyy dates
@pytest.mark.parametrize(("fmt", "date_format"), [("%d/%m/%Y", None), ("%m/%d/%Y", None), ("%d.%m.%y", None),
                                                  ("%d/%m/%Y", "%d/%m/%Y")])
def test_day_month_dates_are_read_in_the_files_one_order(tmp_path, fmt, date_format):
    days = business_days("2009-08-03", 40)  # includes days > 12, which settle the order
    path = ohlcv(tmp_path / "p.csv", [d.strftime(fmt) for d in days], [f"{10 + i / 10:.2f}" for i in range(40)])
    prices = read_ohlcv_csv(path, date_format=date_format).prices
    assert list(prices["date"]) == days


def test_an_ambiguous_day_month_file_asks_for_date_format(tmp_path):
    days = [d for d in business_days("2010-01-01", 300) if d.day <= 12][:20]
    path = ohlcv(tmp_path / "p.csv", [d.strftime("%d/%m/%Y") for d in days], ["10.0"] * 20)
    with pytest.raises(DataError, match="--date_format") as e:
        read_ohlcv_csv(path)
    assert str(path) in str(e.value)
    got = read_ohlcv_csv(path, date_format="%d/%m/%Y").prices["date"]
    assert list(got) == days


def test_dates_out_of_order_for_a_ticker_are_an_error_naming_the_line(tmp_path):
    dates = ["2010-01-04", "2010-01-05", "2010-01-06", "2009-12-01", "2010-01-07"]
    path = ohlcv(tmp_path / "p.csv", dates, ["10"] * 5)
    with pytest.raises(DataError, match=r"out of order at line 5.*--date_format"):
        read_ohlcv_csv(path)


def test_newest_first_files_are_in_order(tmp_path):
    days = business_days("2010-01-04", 10)[::-1]
    path = ohlcv(tmp_path / "p.csv", [d.strftime("%Y-%m-%d") for d in days], ["10"] * 10)
    assert len(read_ohlcv_csv(path).prices) == 10


# ------------------------------------------------------------------ 3. decimal commas
@pytest.mark.parametrize(("sep", "closes", "decimal", "expected"), [
    (";", ["25,55", "26,10"], "auto", [25.55, 26.10]),          # European: ; and decimal commas
    (";", ["1.234,50", "1.240,00"], "auto", [1234.5, 1240.0]),  # ... with thousands points
    (",", ['"1,234.50"', '"1,240.00"'], "auto", [1234.5, 1240.0]),  # thousands commas, quoted
    ("\t", ["25,55", "26,10"], ",", [25.55, 26.10]),             # told: --decimal ,
])
def test_decimal_marks_are_read_not_stripped(tmp_path, sep, closes, decimal, expected):
    path = ohlcv(tmp_path / "p.csv", ["2010-01-04", "2010-01-05"], closes, sep=sep)
    assert list(read_ohlcv_csv(path, decimal=decimal).prices["close"]) == pytest.approx(expected)


def test_a_comma_that_is_not_a_thousands_separator_is_never_stripped(tmp_path):
    """Under a decimal point, 25,55 is no number: counted as a skip, not read as 2555."""
    path = ohlcv(tmp_path / "p.csv", ["2010-01-04", "2010-01-05", "2010-01-06"], ['"25,55"', "26.10", "26.20"])
    data = read_ohlcv_csv(path, decimal=".")
    assert list(data.prices["close"]) == [26.10, 26.20]
    assert data.skips.as_dict()["price_not_a_number"] == 1


def test_a_file_of_decimal_commas_read_with_a_point_says_how_to_fix_it(tmp_path):
    path = ohlcv(tmp_path / "p.csv", ["2010-01-04", "2010-01-05"], ['"25,55"', '"26,10"'])
    with pytest.raises(DataError, match="--decimal ','"):
        read_ohlcv_csv(path, decimal=".")


# ------------------------------------------------------------------ 5. atomic builds
def small_csv(tmp_path, close0: float):
    days = business_days("2009-08-03", 80)
    rows = [[d.strftime("%Y-%m-%d"), t, f"{close0 + i * 0.1 + j:.2f}"] for j, t in enumerate(["AAA", "BBB"])
            for i, d in enumerate(days)]
    path = tmp_path / f"prices{close0:g}.csv"
    path.write_text("date,ticker,close,volume\n" + "".join(f"{d},{t},{c},1000\n" for d, t, c in rows))
    return path


def test_a_failed_rebuild_leaves_the_old_build_whole(tmp_path, monkeypatch):
    out = tmp_path / "built"
    first = build_dataset(DataConfig(source="csv", csv=str(small_csv(tmp_path, 10)), out=str(out)), progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    real_write = build_mod.Path.write_text

    def full_disk(self, *a, **k):  # the last write of a build is summary.json
        if self.name == "summary.json":
            raise OSError(28, "No space left on device")
        return real_write(self, *a, **k)

    monkeypatch.setattr(build_mod.Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space"):
        build_dataset(DataConfig(source="csv", csv=str(small_csv(tmp_path, 50)), out=str(out)), progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert is_built(out) and load_summary(out)["n_examples"] == first["n_examples"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no half-written sibling left


def test_a_rebuild_replaces_every_file(tmp_path):
    out = tmp_path / "built"
    build_dataset(DataConfig(source="csv", csv=str(small_csv(tmp_path, 10)), out=str(out)), progress=False)
    (out / "stray.txt").write_text("from an older build")
    build_dataset(DataConfig(source="csv", csv=str(small_csv(tmp_path, 50)), out=str(out)), progress=False)
    assert not (out / "stray.txt").exists()
    assert json.loads((out / "summary.json").read_text())["inputs"][0].endswith("prices50.csv")
