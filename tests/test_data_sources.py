"""Sources: CSV column detection, bad input (one test per case), time zones, sp500, hf fixture."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from stonklib.config import DataConfig
from stonklib.data import (
    DataError,
    build_examples,
    load_source,
    load_sp500,
    parse_dates,
    read_ohlcv_csv,
    to_examples,
)
from stonklib.data.hf_schema import financial_metrics, history_entries, news_headlines
from stonklib.data.sources import sp500_files

FIXTURES = Path(__file__).parent / "fixtures"
HEADER = "date,ticker,open,high,low,close,volume\n"


def write(tmp_path: Path, text: str | bytes, name: str = "prices.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def rows(*lines: str) -> str:
    return HEADER + "".join(line + "\n" for line in lines)


GOOD = ("2024-01-02,AAA,1,1,1,10.0,100", "2024-01-03,AAA,1,1,1,11.0,100")


# -------------------------------------------------------------------- columns
def test_columns_found_case_insensitively_with_aliases(tmp_path):
    p = write(tmp_path, "DATE,Symbol,Open,High,Low,Adj Close,VOLUME\n2024-01-02,aaa,1,1,1,10.5,100\n")
    prices = read_ohlcv_csv(p).prices
    assert prices.loc[0, ["ticker", "close", "volume"]].tolist() == ["AAA", 10.5, 100.0]
    assert str(prices.loc[0, "date"].date()) == "2024-01-02"


def test_semicolon_separated_file(tmp_path):
    p = write(tmp_path, "date;ticker;close;volume\n2024-01-02;AAA;10;5\n")
    assert read_ohlcv_csv(p).prices["close"].tolist() == [10.0]


def test_missing_column_error_names_file_found_expected_and_fix(tmp_path):
    p = write(tmp_path, "date,ticker,closing,volume\n2024-01-02,AAA,10,100\n")
    with pytest.raises(DataError) as e:
        read_ohlcv_csv(p)
    msg = str(e.value)
    assert str(p) in msg and "['close']" in msg and "closing" in msg and "Rename" in msg


# ---------------------------------------------------------- bad rows: skips
@pytest.mark.parametrize(("bad_line", "reason"), [
    ("2024-01-04,AAA,1,1,1,abc,100", "price_not_a_number"),  # text in a price
    ("2024-01-04,AAA,1,1,1,NaN,100", "price_missing"),  # NaN spelled out
    ("2024-01-04,AAA,1,1,1,,100", "price_missing"),  # empty cell
    ("2024-01-04,AAA,1,1,1,0,100", "price_not_positive"),  # zero price
    ("2024-01-04,AAA,1,1,1,-3.5,100", "price_not_positive"),  # negative price
    ("2024-01-04,AAA,1,1,1,inf,100", "price_not_a_number"),  # infinite price
    ("2024-01-04,AAA,1,1,1,10,-5", "volume_negative"),  # negative volume
    ("2024-01-04,AAA,1,1,1,10,lots", "volume_not_a_number"),  # text in a volume
    ("2024-01-04,AAA,1,1,1,10,", "volume_missing"),  # empty volume
    ("not-a-date,AAA,1,1,1,10,100", "date_unparseable"),  # garbage date
    ("2024-02-30,AAA,1,1,1,10,100", "date_unparseable"),  # impossible date
    (",AAA,1,1,1,10,100", "date_unparseable"),  # empty date
    ("2024-01-04,,1,1,1,10,100", "ticker_missing"),  # empty ticker
])
def test_bad_row_is_skipped_and_counted_with_its_line(tmp_path, bad_line, reason):
    data = read_ohlcv_csv(write(tmp_path, rows(*GOOD, bad_line)))
    assert data.skips.as_dict() == {reason: 1}
    assert data.skips.lines[reason] == [4]  # header is line 1
    assert len(data.prices) == 2


def test_duplicate_date_keeps_the_first_row(tmp_path):
    data = read_ohlcv_csv(write(tmp_path, rows(*GOOD, "2024-01-02,AAA,1,1,1,99.0,100")))
    assert data.skips.as_dict() == {"duplicate_date": 1} and data.skips.lines["duplicate_date"] == [4]
    assert data.prices["close"].tolist() == [10.0, 11.0]


def test_line_numbers_count_blank_lines(tmp_path):
    data = read_ohlcv_csv(write(tmp_path, HEADER + GOOD[0] + "\n\n" + "2024-01-05,AAA,1,1,1,0,100\n"))
    assert data.skips.lines["price_not_positive"] == [4]


def test_every_date_unparseable_is_an_error_naming_line_and_field(tmp_path):
    p = write(tmp_path, rows("31.01.2024x,AAA,1,1,1,10,100", "yesterday,AAA,1,1,1,11,100"))
    with pytest.raises(DataError, match=r"line 2, field 'date': '31.01.2024x'.*ISO dates"):
        read_ohlcv_csv(p)


def test_every_price_bad_is_an_error_naming_the_header(tmp_path):
    p = write(tmp_path, "Date,Ticker,Close Price,Volume\n2024-01-02,AAA,n/a,1\n2024-01-03,AAA,n/a,1\n")
    with pytest.raises(DataError, match=r"line 2, field 'Close Price'.*price missing"):
        read_ohlcv_csv(p)


# ------------------------------------------------------------- bad files
def test_empty_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="prices.csv: the file is empty"):
        read_ohlcv_csv(write(tmp_path, ""))


def test_header_only_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="header but no data rows"):
        read_ohlcv_csv(write(tmp_path, HEADER))


def test_binary_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"prices.csv: this is binary data, not a CSV"):
        read_ohlcv_csv(write(tmp_path, bytes(range(256)) * 4))


def test_xlsx_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"prices.xlsx: this is a zip/xlsx archive.*Save the sheet as CSV"):
        read_ohlcv_csv(write(tmp_path, b"PK\x03\x04" + b"\x00" * 100, "prices.xlsx"))


def test_json_file_is_a_clear_error(tmp_path):
    p = write(tmp_path, json.dumps([{"date": "2024-01-02", "close": 1}]), "prices.json")
    with pytest.raises(DataError, match=r"prices.json: looks like JSON, not CSV"):
        read_ohlcv_csv(p)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_ohlcv_csv(tmp_path / "nope.csv")


# ------------------------------------------------------------ one ticker
def test_one_ticker_file_takes_the_ticker_argument(tmp_path):
    p = write(tmp_path, "Date,Close,Volume\n2024-01-02,10,1\n2024-01-03,11,1\n", "whatever.csv")
    assert set(read_ohlcv_csv(p, ticker="msft").prices["ticker"]) == {"MSFT"}


def test_one_ticker_file_defaults_to_the_file_stem(tmp_path):
    p = write(tmp_path, "Date,Close,Volume\n2024-01-02,10,1\n2024-01-03,11,1\n", "aapl.csv")
    assert set(read_ohlcv_csv(p).prices["ticker"]) == {"AAPL"}


def test_many_tickers_without_a_ticker_column_is_an_error(tmp_path):
    p = write(tmp_path, "Date,Sym,Close,Volume\n2024-01-02,A,10,1\n2024-01-02,B,11,1\n2024-01-03,A,10,1\n2024-01-03,B,11,1\n")
    with pytest.raises(DataError, match="no ticker column"):
        read_ohlcv_csv(p)


def test_ticker_argument_keeps_one_ticker_of_many(tmp_path):
    p = write(tmp_path, rows(*GOOD, "2024-01-02,BBB,1,1,1,5,1"))
    assert set(read_ohlcv_csv(p, ticker="bbb").prices["ticker"]) == {"BBB"}
    with pytest.raises(DataError, match="'ZZZ' is not in the file"):
        read_ohlcv_csv(p, ticker="ZZZ")


# ------------------------------------------------------------- time zones
@pytest.mark.parametrize(("raw", "expected"), [
    ("2024-01-02", "2024-01-02"),  # plain ISO date
    ("20240102", "2024-01-02"),  # YYYYMMDD (the bundled S&P file)
    ("2024-01-02 00:00:00-05:00", "2024-01-02"),  # yfinance daily bar in New York time
    ("2024-03-11 00:00:00-04:00", "2024-03-11"),  # ... after the DST switch
    ("2024-01-02T00:00:00Z", "2024-01-02"),  # daily bar stamped at UTC midnight: keep the written date
    ("2024-01-02T21:00:00Z", "2024-01-02"),  # 4pm New York close written in UTC
    ("2024-01-03T02:30:00+00:00", "2024-01-02"),  # 9:30pm New York, still the 2nd there
    ("2024-01-02 16:00:00", "2024-01-02"),  # naive time of day: the date as written
])
def test_parse_dates_gives_the_exchange_local_trading_date(raw, expected):
    assert str(parse_dates(pd.Series([raw])).iloc[0].date()) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    (["01/02/2024", "01/13/2024"], ["2024-01-02", "2024-01-13"]),  # US month/day/year: 13 settles it
    (["01/02/2024", "13/02/2024"], ["2024-02-01", "2024-02-13"]),  # day/month/year
    (["02.01.24", "25.01.24"], ["2024-01-02", "2024-01-25"]),  # dots and a two-digit year
])
def test_slashed_dates_take_one_order_for_the_whole_file(raw, expected):
    assert [str(d.date()) for d in parse_dates(pd.Series(raw))] == expected


def test_parse_dates_in_another_exchange_zone():
    # 23:30 UTC is already the next morning in Tokyo
    assert str(parse_dates(pd.Series(["2024-01-04T23:30:00Z"]), "Asia/Tokyo").iloc[0].date()) == "2024-01-05"


def test_csv_with_time_zones_and_one_ticker_builds_examples(tmp_path):
    days = pd.bdate_range("2024-03-01", periods=20, tz="America/New_York")  # crosses the DST switch
    lines = [f"{d.isoformat()},{100 + i},{1000 + i}" for i, d in enumerate(days)]
    p = write(tmp_path, "Datetime,Close,Volume\n" + "\n".join(lines) + "\n", "spy.csv")
    cfg = DataConfig(source="csv", csv=str(p), min_history=11, embargo=0)
    data = load_source(cfg)
    ex = to_examples(build_examples(data.prices, cfg, data.skips).to_pandas())
    assert {e.ticker for e in ex} == {"SPY"}
    assert [e.date for e in ex] == [d.strftime("%Y-%m-%d") for d in days[10:17]]
    assert ex[0].history[0].date == ex[0].date


# ------------------------------------------------------------------- sp500
def test_sp500_bundled_data_loads_with_metadata_and_is_not_modified():
    csv_path, xml_path = sp500_files()
    before = hashlib.sha256(csv_path.read_bytes()).hexdigest()
    data = load_sp500()
    p = data.prices
    assert len(p) == 122_574 and p["ticker"].nunique() == 524 and not data.skips.counts
    assert str(p["date"].min().date()) == "2009-08-21" and str(p["date"].max().date()) == "2010-08-20"
    mmm = p[p["ticker"] == "MMM"].iloc[0]
    assert (mmm["name"], mmm["sector"]) == ("3M Company", "Industrials")
    assert hashlib.sha256(csv_path.read_bytes()).hexdigest() == before


def test_tickers_filter_and_unknown_tickers(tmp_path):
    assert set(load_source(DataConfig(tickers=["aapl", "MMM"])).prices["ticker"]) == {"AAPL", "MMM"}
    with pytest.raises(DataError, match="none of tickers"):
        load_source(DataConfig(tickers=["NOPE"]))


# ---------------------------------------------------------------------- hf
def hf_examples(**cfg):
    cfg = DataConfig(source="hf", hf_path=str(FIXTURES / "hf_sample.jsonl"), min_history=3, history_window=5,
                     embargo=0, **cfg)
    data = load_source(cfg)
    return {e.ticker: e for e in to_examples(build_examples(data.prices, cfg, data.skips).to_pandas())}, data.skips


def test_hf_fixture_rows_become_examples_with_their_text_fields():
    ex, skips = hf_examples()
    assert sorted(ex) == ["AAA", "BBB", "CCC", "DDD"]
    a = ex["AAA"]
    assert (a.date, a.close, a.previous_close) == ("2024-01-12", 50.0, 48.0)  # the row's own price wins
    assert (a.name, a.sector, a.industry, a.description) == ("Alpha Corp", "Tech", "Software", "Makes alphas.")
    assert a.news == ("Alpha beats estimates", "Alpha opens new office")
    assert a.financial_metrics == {"pe_ratio": 21.5, "rating": "buy"}  # nested values dropped
    assert ex["BBB"].news == ("Beta day 2",) and ex["BBB"].financial_metrics["Total Revenue"] == 1.0e6
    assert ex["CCC"].news == ("Gamma news",) and ex["CCC"].history[0].volume == 500.0  # volume from history
    assert all(e.source == "hf" for e in ex.values())
    assert skips.counts["hf_company_info_unreadable"] == 1 and skips.lines["price_missing"] == [11]


def test_hf_labels_come_from_future_history_or_later_rows():
    ex, skips = hf_examples()
    a = ex["AAA"]  # future closes 55.0, 49.5, 49.5 in its own historical_data
    assert (a.change_pct_1, a.change_pct_2, a.change_pct_3) == pytest.approx((10.0, -10.0, 0.0))
    assert [h.date for h in a.history] == ["2024-01-12", "2024-01-11", "2024-01-10", "2024-01-09", "2024-01-08"]
    b = ex["BBB"]  # no history: one row per day, labels from the next rows (21 -> 22.05 -> 21 -> 21)
    assert b.date == "2024-01-04" and b.change_pct_1 == pytest.approx(5.0)
    assert b.change_pct_2 == pytest.approx(100 * (21 / 22.05 - 1)) and b.change_pct_3 == 0.0
    assert math_isnan(b.history[0].volume) and b.volume_ratio is None
    assert ex["CCC"].change_pct_1 == pytest.approx(100 * (17 / 16 - 1))
    assert ex["DDD"].change_pct_1 == pytest.approx(100 * (108 / 107 - 1))
    assert skips.counts["short_history"] == 2 and skips.counts["no_future"] == 3


def math_isnan(x: float) -> bool:
    return x != x


def test_hf_invalid_json_line_is_an_error_naming_the_line(tmp_path):
    p = write(tmp_path, (FIXTURES / "hf_sample.jsonl").read_text() + "{oops\n", "bad.jsonl")
    with pytest.raises(DataError, match=r"bad.jsonl: line 12 is not valid JSON"):
        load_source(DataConfig(source="hf", hf_path=str(p)))


def test_hf_directory_of_files(tmp_path):
    (tmp_path / "part-0.jsonl").write_text((FIXTURES / "hf_sample.jsonl").read_text())
    data = load_source(DataConfig(source="hf", hf_path=str(tmp_path)))
    assert set(data.prices.loc[data.prices["asof"], "ticker"]) == {"AAA", "BBB", "CCC", "DDD"}


@pytest.mark.parametrize(("raw", "expected"), [
    ([{"date": "2024-01-02", "close": 1, "volume": 5}], [("2024-01-02", 1, 5)]),  # list of dicts
    ([["2024-01-02", 1.5]], [("2024-01-02", 1.5, None)]),  # list of [date, close]
    ({"2024-01-02": {"Close": 2, "Volume": 7}}, [("2024-01-02", 2, 7)]),  # {date: {close, volume}}
    ({"2024-01-02": 3}, [("2024-01-02", 3, None)]),  # {date: close}
    ({"Date": ["2024-01-02"], "Close": [4], "Volume": [8]}, [("2024-01-02", 4, 8)]),  # columnar
    ({"Close": {"2024-01-02": 5}, "Volume": {"2024-01-02": 9}}, [("2024-01-02", 5, 9)]),  # pandas to_dict()
    ({"date": ["2024-01-02", "2024-01-03"], "close": [4]}, []),  # columns that do not line up: unusable
    ('[{"date": "2024-01-02", "price": 6}]', [("2024-01-02", 6, None)]),  # JSON string, price key
    (None, []),  # missing
    ("garbage", []),  # unreadable text
])
def test_hf_history_shapes(raw, expected):
    assert history_entries(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    (["a", " b "], ["a", "b"]),  # list of strings
    ([{"title": "a"}, {"headline": "b"}, {"url": "x"}], ["a", "b"]),  # dicts; one without text
    ({"news_headlines": ["a"]}, ["a"]),  # DeepStock wrapper
    ('["a", "b"]', ["a", "b"]),  # JSON string
    ("just one headline", ["just one headline"]),  # plain string
    (None, []),
])
def test_hf_news_shapes(raw, expected):
    assert news_headlines(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    ({"pe": 12, "name": "x", "nested": {"a": 1}, "bad": float("nan")}, {"pe": 12.0, "name": "x"}),  # scalars kept
    ({"financials": '{"Total Revenue": 5}'}, {"Total Revenue": 5.0}),  # DeepStock wrapper around JSON
    ('{"eps": 1.5}', {"eps": 1.5}),  # JSON string
    ("not json", {}),
    (None, {}),
])
def test_hf_financial_metrics_shapes(raw, expected):
    assert financial_metrics(raw) == expected


def test_hf_hub_unreachable_is_a_clear_error():
    # conftest sets HF_DATASETS_OFFLINE=1, so this is the real load_dataset call failing fast
    with pytest.raises(DataError, match=r"could not load the hub dataset .*pass --hf_path"):
        load_source(DataConfig(source="hf"))
