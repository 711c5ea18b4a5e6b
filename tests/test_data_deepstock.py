"""The seed's DeepStock dataset in its real schema (tests/fixtures/deepstock): every export format, the two
look-ahead fields, the intraday label, and rows a loader must survive."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from stonklib import cli
from stonklib.config import ConfigError, DataConfig
from stonklib.data import (
    DataError,
    LeakageError,
    Skips,
    build_dataset,
    check_no_leakage,
    load_examples,
    load_summary,
)
from stonklib.data.hf import load_hf, read_hf_rows
from stonklib.data.hf_schema import date_text, financials, news_of, parse_hf_row
from stonklib.prompts import build_prompt

DEEP = Path(__file__).parent / "fixtures" / "deepstock"
SENTINEL = "USER-PROMPT-SENTINEL"
EXPORTS = {"jsonl (ISO dates)": "deepstock.jsonl", "jsonl (epoch ms, Dataset.to_json)": "deepstock_epoch_ms.jsonl",
           "parquet file": "deepstock.parquet", "hub parquet directory": "hub", "save_to_disk": "saved"}
SPLITS = ("train", "val", "test")


def build(tmp_path: Path, export: str | Path, **kw) -> tuple[dict, dict[str, list]]:
    out = tmp_path / f"built-{Path(export).name}-{kw.get('label', 'next_close')}"
    cfg = DataConfig(source="hf", hf_path=str(DEEP / export if isinstance(export, str) else export), out=str(out), **kw)
    summary = build_dataset(cfg, progress=False)
    return summary, {s: load_examples(out, s) for s in SPLITS}


def rows_of(examples: dict[str, list]) -> dict[str, list[str]]:
    """Comparable form (unknown volumes are NaN, which never equals itself)."""
    return {s: [json.dumps(e.to_row(), sort_keys=True) for e in examples[s]] for s in SPLITS}


def every(examples: dict[str, list]) -> list:
    return [e for s in SPLITS for e in examples[s]]


def fixture_rows() -> list[dict]:
    return [json.loads(line) for line in (DEEP / "deepstock.jsonl").read_text().splitlines()]


def series() -> dict[tuple[str, str], dict]:
    """(ticker, ISO date) -> the row's price dict, from the ISO export."""
    return {(r["ticker"], r["company_info"]["current_date"]): r["company_info"]["price"] for r in fixture_rows()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return build(tmp_path_factory.mktemp("ref"), "deepstock.jsonl")


# ----------------------------------------------------------------- every way the data is held
@pytest.mark.parametrize("export", list(EXPORTS.values()), ids=list(EXPORTS))
def test_every_export_builds_the_same_examples(tmp_path, reference, export):
    summary, examples = build(tmp_path, export)
    ref_summary, ref = reference
    assert rows_of(examples) == rows_of(ref)
    assert summary["n_input_rows"] == 90 and summary["n_examples"] == ref_summary["n_examples"] > 0
    assert summary["skipped"] == ref_summary["skipped"] and summary["dropped"] == ref_summary["dropped"]


def test_the_cli_builds_from_the_fixture(tmp_path, reference, capsys):
    rc = cli.main(["data", "build", "--source", "hf", "--hf_path", str(DEEP / "saved"), "--out", str(tmp_path / "cli")])
    assert rc in (0, None), capsys.readouterr().err
    assert rows_of({s: load_examples(tmp_path / "cli", s) for s in SPLITS}) == rows_of(reference[1])


def test_what_the_hub_error_suggests_loads(tmp_path, reference):
    """The hub error says to export with Dataset.to_json; that export (epoch-ms dates) builds the same examples."""
    from datasets import load_from_disk

    from stonklib.data.hf import EXPORT_HINT

    assert "to_json('deepstock.jsonl')" in EXPORT_HINT
    path = tmp_path / "deepstock.jsonl"
    load_from_disk(str(DEEP / "saved")).to_json(str(path))
    assert '"current_date":1700438400000' in path.read_text()  # the real export writes epoch milliseconds
    assert rows_of(build(tmp_path, path)[1]) == rows_of(reference[1])


def test_epoch_seconds_load_too(tmp_path, reference):
    def seconds(x):
        if isinstance(x, dict):
            return {k: (v // 1000 if k in ("current_date", "news_date", "year", "price_date", "previous_date")
                        and isinstance(v, int) else seconds(v)) for k, v in x.items()}
        return x
    rows = [json.loads(line) for line in (DEEP / "deepstock_epoch_ms.jsonl").read_text().splitlines()]
    path = tmp_path / "seconds.jsonl"
    path.write_text("".join(json.dumps(seconds(r)) + "\n" for r in rows))
    assert rows_of(build(tmp_path, path)[1]) == rows_of(reference[1])


def test_parquet_rows_read_with_pandas_carry_numpy_arrays_and_parse_alike():
    """pd.read_parquet gives nested lists as numpy arrays (the crash `_get` once had); they parse as lists do."""
    via_pandas = pd.read_parquet(DEEP / "deepstock.parquet").to_dict("records")
    assert type(via_pandas[0]["company_info"]["news"]["news_headlines"]).__module__ == "numpy"
    via_arrow = [r for _, r in read_hf_rows(str(DEEP / "deepstock.parquet"))[0]]
    for a, b in zip(via_pandas, via_arrow, strict=True):
        assert parse_hf_row(a, 1, Skips()) == parse_hf_row(b, 1, Skips())


@pytest.mark.parametrize("raw,iso", [
    (1625011200000, "2021-06-30"), (1625011200, "2021-06-30"), ("1625011200000", "2021-06-30"),
    ("2021-06-30", "2021-06-30"), (pd.Timestamp("2021-06-30"), "2021-06-30"), (None, ""), (float("nan"), ""),
])
def test_dates_in_every_form(raw, iso):
    import datetime as dt
    assert date_text(raw) == iso
    assert date_text(dt.date(2021, 6, 30)) == "2021-06-30"


# ----------------------------------------------------------------- time safety
def test_financials_show_when_and_only_when_the_report_is_dated_on_or_before_the_as_of_date(reference):
    summary, examples = reference
    shown = {"AAA": 0, "BBB": 0, "CCC": 0}
    for e in every(examples):
        text = build_prompt(e, "seed")
        report = e.financials_date
        assert (report != "") == ("Basic EPS" in text) == ("Total Revenue" in text) == ("Net Income" in text)
        if report:
            assert report <= e.date and f"report_date: {report}" in text
            shown[e.ticker] += 1
        if e.ticker == "BBB":  # its report is dated 2023-12-08: shown from that day on
            assert bool(report) == (e.date >= "2023-12-08")
    assert shown["AAA"] == 0 and shown["BBB"] > 0 and shown["CCC"] > 0  # AAA: the dataset's look-ahead join
    assert summary["dropped"]["financials_after_asof"] >= 30


def test_a_seed_prompt_shows_the_name_the_headlines_and_no_nan(reference):
    e = next(e for e in every(reference[1]) if e.ticker == "AAA")
    text = build_prompt(e, "seed")
    assert "Alpha Corp" in text and "RECENT NEWS:" in text and e.news[0] in text
    ccc = [build_prompt(e, "seed") for e in every(reference[1]) if e.ticker == "CCC" and e.financials_date]
    assert ccc and all("EBITDA" not in t and not re.search(r"\bnan\b", t, re.I) for t in ccc)  # NaN in the JSON: left out


def test_user_prompt_is_never_read():
    class Poison:
        def __getattribute__(self, name):
            raise AssertionError(f"user_prompt was read ({name})")

    for n, row in enumerate(fixture_rows(), start=1):
        row["user_prompt"] = Poison()
        parsed = parse_hf_row(row, n, Skips())
        assert parsed is not None and SENTINEL not in json.dumps(parsed[0], default=str)


def test_no_prompt_shows_a_price_or_date_after_its_as_of_date(reference):
    prices = series()
    for e in every(reference[1]):
        for version in ("seed", "compact_format"):
            text = build_prompt(e, version)
            assert SENTINEL not in text
            assert all(d <= e.date for d in re.findall(r"\d{4}-\d{2}-\d{2}", text)), (e.ticker, e.date)
            shown = {f"{h.close:.2f}" for h in e.history}
            future = [p for (t, d), p in prices.items() if t == e.ticker and d > e.date]
            for p in future:
                for v in (p["close"], p["open"]):
                    if v is not None and f"{v:.2f}" not in shown:
                        assert f"{v:.2f}" not in text, (e.ticker, e.date, v)


def test_close_previous_is_never_the_previous_trading_days_close(reference):
    prices = series()
    for e in every(reference[1]):
        week_old = prices[(e.ticker, e.date)]["close_previous"]
        assert e.previous_close == e.history[1].close == prices[(e.ticker, e.history[1].date)]["close"]
        assert week_old is None or abs(week_old - e.previous_close) > 1e-9 or e.history[1].date == prices[(e.ticker, e.date)]["previous_date"]


@pytest.mark.parametrize("field", ["financials_date", "news_date"])
def test_check_no_leakage_covers_financials_and_news_dates(reference, field):
    e = every(reference[1])[0]
    row = e.to_row()
    row[field] = "2099-01-01"
    table = pa.Table.from_pylist([row])
    with pytest.raises(LeakageError, match=f"{field} 2099-01-01, after its as-of date"):
        check_no_leakage(table)


# ----------------------------------------------------------------- the two labels
def test_intraday_label_is_the_next_days_close_against_its_own_open(tmp_path, reference):
    summary, examples = build(tmp_path, "saved", label="intraday")
    prices = series()
    days = sorted({d for _, d in prices})
    assert summary["label"] == "intraday" and summary["skipped"]["open_missing"] >= 1  # CCC's row without an open
    n = 0
    for e in every(examples):
        for k in (1, 2, 3):
            p = prices[(e.ticker, days[days.index(e.date) + k])]
            assert e.direction(k) == ("up" if p["close"] > p["open"] else "down")
            assert e.change_pct(k) == pytest.approx(100 * (p["close"] / p["open"] - 1))
        text = build_prompt(e, "seed")
        label_day = prices[(e.ticker, days[days.index(e.date) + 1])]
        assert f"{label_day['close']:.2f}" not in text or f"{label_day['close']:.2f}" in {f"{h.close:.2f}" for h in e.history}
        n += 1
    assert n > 0 and n <= reference[0]["n_examples"]


def test_intraday_needs_opens(tmp_path):
    csv = tmp_path / "p.csv"
    days = pd.bdate_range("2024-01-01", periods=30).strftime("%Y-%m-%d")
    pd.DataFrame({"date": days, "close": range(10, 40), "volume": 100}).to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"label=intraday needs each day's open.*no open column.*--label next_close"):
        build_dataset(DataConfig(source="csv", csv=str(csv), out=str(tmp_path / "o"), label="intraday"), progress=False)


def test_an_unknown_label_names_the_field():
    with pytest.raises(ConfigError, match=r"label='close'.*next_close, intraday"):
        DataConfig(label="close")


def test_sp500_intraday_builds(tmp_path):
    cfg = DataConfig(out=str(tmp_path), tickers=["AAPL", "MMM"], label="intraday")
    build_dataset(cfg, progress=False)
    assert load_summary(tmp_path)["label"] == "intraday"
    ex = load_examples(tmp_path, "test")
    assert ex and all((e.change_pct_1 > 0) == (e.direction_1 == "up") for e in ex)


# ----------------------------------------------------------------- rows a loader must survive
def base_row() -> dict:
    return json.loads(json.dumps(fixture_rows()[-1]))


def with_info(**info) -> dict:
    row = base_row()
    row["company_info"].update(info)
    return row


@pytest.mark.parametrize("row,check", [
    (with_info(financials=None), lambda rec, skips, dropped: rec["financial_metrics"] == "{}"),
    (with_info(news={"news_headlines": [], "news_date": "2023-12-29"}), lambda rec, s, d: rec["news"] == []),
    (with_info(financials={"year": "2022-12-31", "financials": '{"Basic EPS": NaN, "Net Income": 5.0}'}),
     lambda rec, s, d: json.loads(rec["financial_metrics"]) == {"Net Income": 5.0}),
    (with_info(financials={"year": "2022-12-31", "financials": "{not json"}),
     lambda rec, s, d: rec["financial_metrics"] == "{}" and d["financials_unreadable"] == 1),
    (with_info(financials={"year": "2024-12-31", "financials": '{"Basic EPS": 1.0}'}),
     lambda rec, s, d: rec["financial_metrics"] == "{}" and d["financials_after_asof"] == 1),
    (with_info(news={"news_headlines": ["later"], "news_date": "2024-02-01"}),
     lambda rec, s, d: rec["news"] == [] and d["news_after_asof"] == 1),
    (with_info(price={"close": 10.0, "price_date": "2023-12-29"}), lambda rec, s, d: rec["open"] == ""),
], ids=["financials null", "empty headlines", "NaN in financials", "unreadable financials",
        "look-ahead financials", "look-ahead news", "no price.open"])
def test_hostile_rows_parse_or_are_counted(row, check):
    skips, dropped = Skips(), Counter()
    rec, _ = parse_hf_row(row, 1, skips, dropped)
    assert check(rec, skips, dropped)


def test_fields_are_checked_against_the_price_date_when_it_is_earlier():
    row = with_info(current_date="2024-01-10", price={"close": 10.0, "price_date": "2024-01-08"},
                    news={"news_headlines": ["x"], "news_date": "2024-01-09"},
                    financials={"year": "2024-01-09", "financials": '{"Basic EPS": 1.0}'})
    dropped = Counter()
    rec, _ = parse_hf_row(row, 1, Skips(), dropped)
    assert rec["date"] == "2024-01-08" and rec["news"] == [] and rec["financial_metrics"] == "{}"
    assert dropped == {"news_after_asof": 1, "financials_after_asof": 1}


def test_a_price_dated_after_the_as_of_date_skips_the_row():
    skips = Skips()
    assert parse_hf_row(with_info(price={"close": 10.0, "price_date": "2024-03-01"}), 7, skips) is None
    assert skips.counts["price_after_asof"] == 1 and skips.lines["price_after_asof"] == [7]


def test_a_missing_open_is_no_traceback_for_either_label(tmp_path, reference):
    assert reference[0]["n_examples"] > 0  # CCC's row 17 has no open; the default label never reads it


def test_financials_parts():
    assert financials({"year": "2021-12-31", "financials": '{"Basic EPS": 5.6, "EBITDA": NaN}'}) == ({"Basic EPS": 5.6}, "2021-12-31")
    assert financials(None) == ({}, "") and financials({"year": "2021-12-31", "financials": None}) == ({}, "2021-12-31")
    assert news_of({"news_headlines": ["a", " ", "b"], "news_date": 1625011200000}) == (["a", "b"], "2021-06-30")


def test_too_few_rows_per_ticker_says_how_many_were_needed_and_found(tmp_path):
    path = tmp_path / "short.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in fixture_rows()[:30]))  # 10 days of 3 tickers
    with pytest.raises(DataError, match=r"needs at least max\(min_history, 2\) \+ 3 = 14 trading days.*found AAA 10, BBB 10, CCC 10"):
        build_dataset(DataConfig(source="hf", hf_path=str(path), out=str(tmp_path / "o")), progress=False)


def test_a_missing_local_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(DataError, match="no such file or directory; check --hf_path"):
        load_hf(str(tmp_path / "nope.jsonl"))
