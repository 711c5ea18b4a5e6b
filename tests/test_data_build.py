"""build_dataset end to end: files, summary.json, loading, ensure_data; the sp500 acceptance check."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stonklib import paths
from stonklib.config import DataConfig
from stonklib.data import (
    SCHEMA,
    DataError,
    Example,
    build_dataset,
    check_no_leakage,
    ensure_data,
    format_summary,
    load_examples,
    load_split,
    load_summary,
)
from stonklib.data import build as build_mod

FIXTURES = Path(__file__).parent / "fixtures"
SPLIT_KEYS = {"n", "up_rate", "down_rate", "flat_rate", "date_min", "date_max", "tickers"}


def toy_csv(path: Path, n_days: int = 60, tickers: str = "ABC") -> Path:
    rng = np.random.default_rng(0)
    days = pd.bdate_range("2024-01-01", periods=n_days).strftime("%Y-%m-%d")
    frames = [pd.DataFrame({"Date": days, "Ticker": t, "Close": np.round(50 * np.cumprod(1 + rng.normal(0, 0.02, n_days)), 2),
                            "Volume": rng.integers(1000, 2000, n_days)}) for t in tickers]
    df = pd.concat(frames, ignore_index=True)
    df.loc[5, "Close"] = -1.0  # one bad price, one bad date
    df["Date"] = df["Date"].astype(object)
    df.loc[70, "Date"] = "someday"
    df.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("build")
    cfg = DataConfig(source="csv", csv=str(toy_csv(tmp / "toy.csv")), out=str(tmp / "out"), val_frac=0.15, test_frac=0.15)
    return tmp / "out", build_dataset(cfg, progress=False)


# ------------------------------------------------------------------- files
def test_build_writes_the_three_splits_and_summary(built):
    out, _ = built
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "test.parquet", "train.parquet", "val.parquet"]


def test_summary_json_keys(built):
    out, summary = built
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert {"source", "skipped", "config", "splits", "n_examples", "n_input_rows", "embargo_dates"} <= set(on_disk)
    assert set(on_disk["splits"]) == {"train", "val", "test"}
    for s in on_disk["splits"].values():
        assert set(s) == SPLIT_KEYS and s["n"] > 0 and s["up_rate"] + s["down_rate"] == pytest.approx(1.0)
        assert s["tickers"] == 3
    assert on_disk["source"] == "csv" and on_disk["config"]["embargo"] == 3
    assert on_disk["skipped"]["price_not_positive"] == 1 and on_disk["skipped"]["date_unparseable"] == 1
    assert on_disk["skipped_lines"]["price_not_positive"] == [7]


def test_every_input_row_is_an_example_or_a_counted_skip(built):
    _, summary = built
    assert summary["n_input_rows"] == 180
    assert summary["n_input_rows"] == summary["n_examples"] + sum(summary["skipped"].values())


def test_split_columns_are_example_rows_and_load_as_examples(built):
    out, summary = built
    df = load_split(out, "train")
    assert list(df.columns) == SCHEMA.names
    assert len(df) == summary["splits"]["train"]["n"]
    ex = load_examples(out, "val")
    assert all(isinstance(e, Example) for e in ex) and len(ex) == summary["splits"]["val"]["n"]
    assert ex[0].history[0].date == ex[0].date and isinstance(ex[0].financial_metrics, dict)


def test_load_examples_limit_spreads_over_dates(built):
    out, _ = built
    ex = load_examples(out, "train", limit=5)
    dates = [e.date for e in ex]
    assert len(ex) == 5 and dates == sorted(dates) and len(set(dates)) == 5


def test_saved_splits_pass_the_leakage_checks(built):
    out, summary = built
    train, val, test = (load_split(out, s) for s in ("train", "val", "test"))
    check_no_leakage(train, val, test, embargo=summary["config"]["embargo"])


def test_format_summary_is_a_short_table(built):
    _, summary = built
    text = format_summary(summary)
    assert "source csv" in text and "train" in text and "test" in text and "price_not_positive 1" in text
    assert len(text.splitlines()) == 6


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    cfg = DataConfig(source="csv", csv=str(toy_csv(tmp_path / "t.csv")), out=str(tmp_path / "out"))

    def boom(table, where):
        Path(where).write_text("half a file")
        raise OSError("disk full")

    monkeypatch.setattr(build_mod.pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        build_dataset(cfg, progress=False)
    assert not (tmp_path / "out").exists()  # nothing there at all: the build was written beside it
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_too_short_data_is_a_clear_error(tmp_path):
    cfg = DataConfig(source="csv", csv=str(toy_csv(tmp_path / "t.csv", n_days=12)), out=str(tmp_path / "out"))
    with pytest.raises(DataError, match="no examples could be built"):
        build_dataset(cfg, progress=False)


# ------------------------------------------------------------- loading
def test_load_split_of_a_missing_dir_says_how_to_build(tmp_path):
    with pytest.raises(DataError, match="stonk data build --out"):
        load_split(tmp_path, "train")
    with pytest.raises(ValueError, match="use one of train, val, test"):
        load_split(tmp_path, "dev")


def test_ensure_data_returns_a_built_dir_and_rejects_others(built, tmp_path):
    out, _ = built
    assert ensure_data(out) == out
    with pytest.raises(DataError, match="not a built data directory"):
        ensure_data(tmp_path)


def test_ensure_data_default_dir_is_used_when_built(built, monkeypatch):
    out, _ = built
    monkeypatch.setattr(paths, "default_data_dir", lambda source="sp500": out)
    assert ensure_data(None) == out  # already built: nothing rebuilt
    assert load_summary(out)["source"] == "csv"


def test_ensure_data_cannot_guess_a_csv(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "default_data_dir", lambda source="sp500": tmp_path / source)
    with pytest.raises(DataError, match="--source csv --csv FILE"):
        ensure_data(None, source="csv")


# ---------------------------------------------------------------- sources
def test_hf_fixture_builds_end_to_end(tmp_path):
    cfg = DataConfig(source="hf", hf_path=str(FIXTURES / "hf_sample.jsonl"), out=str(tmp_path), min_history=3,
                     history_window=5, embargo=0, val_frac=0.25, test_frac=0.25)
    summary = build_dataset(cfg, progress=False)
    assert summary["n_examples"] == 4 and summary["n_input_rows"] == 11
    assert summary["splits"]["test"]["date_min"] == "2024-01-12"
    assert load_examples(tmp_path, "test")[0].news == ("Alpha beats estimates", "Alpha opens new office")


def test_real_sp500_tickers_with_splits_build_cleanly(tmp_path):
    cfg = DataConfig(out=str(tmp_path), tickers=["GIS", "ETFC", "AAPL", "MMM"])
    summary = build_dataset(cfg, progress=False)
    df = pd.concat([load_split(tmp_path, s) for s in ("train", "val", "test")])
    # GIS 2:1 split on 2010-06-09 and ETFC's 1:10 reverse split are not labelled as -50% / +700% moves
    assert df[["change_pct_1", "change_pct_2", "change_pct_3"]].abs().max().max() < 45
    assert summary["skipped"]["suspected_split"] > 0
    gis = df[(df["ticker"] == "GIS") & (df["date"] >= "2010-06-09")]
    assert all(h["close"] < 45 for hist in gis["history"] for h in hist)  # post-split history only
    assert df.loc[df["ticker"] == "MMM", "name"].iloc[0] == "3M Company"


# -------------------------------------------------------------- acceptance
@pytest.mark.slow
def test_acceptance_full_sp500_build(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(paths, "default_data_dir", lambda source="sp500": tmp_path / source)
    start = time.perf_counter()
    out = ensure_data(None)  # builds the bundled data on first use
    seconds = time.perf_counter() - start
    summary = load_summary(out)
    splits = summary["splits"]
    total = sum(s["n"] for s in splits.values())
    up = sum(s["n"] * s["up_rate"] for s in splits.values()) / total
    assert total >= 100_000 and 0.45 <= up <= 0.55
    assert splits["train"]["date_max"] < splits["val"]["date_min"] < splits["test"]["date_min"]
    calendar = pd.read_csv(build_mod.load_summary(out)["inputs"][0], usecols=["Date"])["Date"].astype(str)
    calendar = sorted({f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in calendar})
    train, val, test = (load_split(out, s) for s in ("train", "val", "test"))
    check_no_leakage(train, val, test, embargo=3, calendar=calendar)
    with capsys.disabled():
        print(f"\nfull sp500 build: {seconds:.1f} s\n{format_summary(summary)}")
