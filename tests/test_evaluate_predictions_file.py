"""Bad predictions files: a clear error naming the line, or a counted skip."""

from __future__ import annotations

import json

import pytest

from stonklib.evaluate.predictions import PredictionsFileError, read_predictions


def row(**kw) -> str:
    base = {"ticker": "A", "date": "2024-01-02", "actual_change_pct": 1.0, "predicted_direction": "up",
            "predicted_pct": 1.0, "confidence": 60}
    base.update(kw)
    return json.dumps({k: v for k, v in base.items() if v is not ...})


def write(tmp_path, lines: list[str]):
    p = tmp_path / "preds.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_skips_are_counted_by_reason(tmp_path):
    p = write(tmp_path, [
        row(),                                  # valid
        "{not json",                            # invalid_json
        "[1, 2]",                               # not_an_object
        row(ticker=...),                        # missing_ticker
        row(ticker="B", predicted_direction=None),  # missing_predicted_direction (null)
        row(ticker="C", actual_change_pct=float("nan")),  # json.dumps writes NaN -> nan_actual_change_pct
        row(),                                  # duplicate_ticker_date
        "",                                     # blank: ignored
        row(ticker="D", confidence=150),        # valid, clipped to 100
        row(ticker="E", confidence=float("nan"), predicted_pct=float("nan")),  # valid, both missing
        row(ticker="F", predicted_direction=" DOWN "),  # valid, normalised
    ])
    preds = read_predictions(p)
    assert preds.skipped == {"invalid_json": 1, "not_an_object": 1, "missing_ticker": 1,
                             "missing_predicted_direction": 1, "nan_actual_change_pct": 1,
                             "duplicate_ticker_date": 1}
    df = preds.frame.set_index("ticker")
    assert list(df.index) == ["A", "D", "E", "F"]
    assert preds.confidence_clipped == 1 and df.loc["D", "confidence"] == 100
    assert df["confidence"].isna().sum() == 1 and df["predicted_pct"].isna().sum() == 1
    assert df.loc["F", "predicted_direction"] == "down"


@pytest.mark.parametrize("bad, field", [
    (row(predicted_direction="sideways"), "predicted_direction"),  # why: a different tool's labels
    (row(actual_change_pct="abc"), "actual_change_pct"),  # why: a producer bug, not a missing label
    (row(confidence={"x": 1}), "confidence"),
    (row(date="yesterday"), "date"),
])
def test_errors_name_file_line_and_field(tmp_path, bad, field):
    p = write(tmp_path, [row(ticker="Z"), bad])
    with pytest.raises(PredictionsFileError) as e:
        read_predictions(p)
    msg = str(e.value)
    assert str(p) in msg and "line 2" in msg and field in msg and "Fix" in msg


def test_no_valid_rows_is_an_error(tmp_path):
    p = write(tmp_path, ["garbage", row(ticker=...)])
    with pytest.raises(PredictionsFileError, match="no valid prediction rows"):
        read_predictions(p)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(PredictionsFileError, match="empty"):
        read_predictions(empty)
    with pytest.raises(PredictionsFileError, match="no such"):
        read_predictions(tmp_path / "nope.jsonl")


def test_frame_is_sorted_and_numeric(tmp_path):
    p = write(tmp_path, [row(ticker="B", date="2024-01-03"), row(ticker="A", date="2024-01-03T00:00:00"),
                         row(ticker="C", date="2024-01-02", actual_change_pct="-0.5")])
    df = read_predictions(p).frame
    assert list(zip(df["date"], df["ticker"], strict=True)) == [
        ("2024-01-02", "C"), ("2024-01-03", "A"), ("2024-01-03", "B")]
    assert df["actual_change_pct"].dtype == float and df.loc[0, "actual_change_pct"] == -0.5
