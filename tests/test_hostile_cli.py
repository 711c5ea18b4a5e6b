"""Hostile input at the CLI's edge (issue #21): filesystem errors, bad model paths, misleading files and
implausible predictions end in one clear line naming the path and the fix, never a traceback; ``--debug``
shows the traceback."""

from __future__ import annotations

import errno
import json

import pytest

from stonklib import cli
from stonklib.evaluate import read_predictions, verdict
from stonklib.evaluate.predictions import PredictionsFileError


def csv_file(tmp_path, n=60):
    import pandas as pd

    days = pd.bdate_range("2009-08-03", periods=n)
    path = tmp_path / "p.csv"
    path.write_text("date,ticker,close,volume\n" + "".join(f"{d:%Y-%m-%d},AAA,{10 + i / 10:.2f},1000\n"
                                                          for i, d in enumerate(days)))
    return path


def run_cli(argv, capsys):
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


# ------------------------------------------------------------------ 10. filesystem errors
@pytest.mark.parametrize(("exc", "words"), [
    (PermissionError(errno.EACCES, "Permission denied", "/data/out"), ["/data/out", "Permission denied", "permissions"]),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/out"), ["/mnt/ro/out", "read-only", "writable disk"]),
    (OSError(errno.ENOSPC, "No space left on device", "/data/out/x.parquet"), ["x.parquet", "disk is full", "--resume"]),
    (FileExistsError(errno.EEXIST, "File exists", "/data/out"), ["/data/out", "in the way"]),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/data/file/out"), ["/data/file/out", "is a file"]),
])
def test_filesystem_errors_are_one_line_naming_the_path_and_fix(tmp_path, monkeypatch, capsys, exc, words):
    import stonklib.data

    def fail(*a, **k):
        raise exc

    monkeypatch.setattr(stonklib.data, "build_dataset", fail)
    rc, err = run_cli(["data", "build", "--source", "csv", "--csv", str(csv_file(tmp_path)), "--out",
                       str(tmp_path / "o")], capsys)
    assert rc == 1 and "--debug" in err
    for w in words:
        assert w in err
    with pytest.raises(type(exc)):
        cli.main(["--debug", "data", "build", "--source", "csv", "--csv", str(csv_file(tmp_path)), "--out",
                  str(tmp_path / "o")])


def test_a_file_where_the_data_folder_goes_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "built"
    out.write_text("not a folder")
    rc, err = run_cli(["data", "build", "--source", "csv", "--csv", str(csv_file(tmp_path)), "--out", str(out)], capsys)
    assert rc == 1 and str(out) in err and "in the way" in err
    assert out.read_text() == "not a folder"


def test_a_full_disk_while_checkpointing_names_the_file(tmp_path, monkeypatch):
    import torch

    from stonklib.grpo import checkpoint

    def full(obj, path):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 728128 vs 728020")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as e:
        checkpoint._save({}, tmp_path / "optimizer.pt")
    assert e.value.errno == errno.ENOSPC and "optimizer.pt" in str(e.value.filename)
    assert "disk is full" in cli.filesystem_message(e.value) or "full" in cli.filesystem_message(e.value)


# ------------------------------------------------------------------ 9. evaluate --model PATH
def test_evaluate_checks_the_model_path_before_loading_and_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "eval"
    rc, err = run_cli(["evaluate", "--model", str(tmp_path / "no" / "such" / "path"), "--out", str(out)], capsys)
    assert rc == 2 and "model=" in err and "neither a directory nor a hub id" in err
    assert not out.exists() or not any(out.iterdir())


# ------------------------------------------------------------------ 11. misleading files
def test_a_latin1_byte_past_the_first_8k_is_reported_at_its_line(tmp_path, capsys):
    path = csv_file(tmp_path, n=500)
    lines = path.read_bytes().splitlines(keepends=True)
    assert sum(map(len, lines[:400])) > 8192
    lines[400] = lines[400].replace(b"AAA", b"A\xe9A")
    path.write_bytes(b"".join(lines))
    rc, err = run_cli(["data", "build", "--source", "csv", "--csv", str(path), "--out", str(tmp_path / "o")], capsys)
    assert rc == 1 and "line 401" in err and "0xe9" in err and "iconv -f latin1" in err


def test_a_header_and_rows_with_different_separators_say_so(tmp_path, capsys):
    path = tmp_path / "p.csv"
    path.write_text("date,ticker,close,volume\n" + "".join(f"2010-01-{d:02d};AAA;10.5;100\n" for d in range(4, 9)))
    rc, err = run_cli(["data", "build", "--source", "csv", "--csv", str(path), "--out", str(tmp_path / "o")], capsys)
    assert rc == 1 and "header is separated by ','" in err and "';'" in err


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "caf\xe9\n".encode("latin-1")])
def test_a_binary_or_latin1_predictions_file_is_an_error_naming_it(tmp_path, content):
    path = tmp_path / "predictions.jsonl"
    path.write_bytes(content)
    with pytest.raises(PredictionsFileError, match=r"predictions\.jsonl: line 1 .*not UTF-8"):
        read_predictions(path)


def test_a_latin1_hf_jsonl_is_an_error_naming_it(tmp_path):
    from stonklib.data.hf import load_hf
    from stonklib.data.sources import DataError

    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"ticker": "AAA"}\n{"name": "Soci\xe9t\xe9"}\n')
    with pytest.raises(DataError, match=r"rows\.jsonl: line 2 .*not UTF-8"):
        load_hf(str(path))


def row(i, actual=0.5, predicted=1.0):
    return {"ticker": f"T{i}", "date": "2010-07-15", "actual_change_pct": actual, "predicted_direction": "up",
            "predicted_pct": predicted, "confidence": 60}


def test_implausible_moves_are_skipped_and_counted(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [row(0, actual=1e308), row(1, actual=-250.0), row(2, predicted=1e308), row(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    preds = read_predictions(path)
    assert list(preds.frame["ticker"]) == ["T2", "T3"]
    assert preds.skipped == {"implausible_actual_change_pct": 2, "implausible_predicted_pct": 1}
    assert preds.frame["predicted_pct"].isna().tolist() == [True, False]


def metrics(n, skipped=None, rows_read=None):
    return {"accuracy": 0.6, "accuracy_ci95": [0.4, 0.8], "binom_p_value": 0.2, "majority_rate": 0.5, "n": n,
            "parse_rate": 1.0, "skipped": skipped or {}, "rows_read": rows_read or n, "baselines": {}}


def test_the_verdict_refuses_to_judge_too_few_rows():
    text = verdict(metrics(1))
    assert "too few rows to judge" in text and "above" not in text.split("too few")[0]
    assert "too few" not in verdict(metrics(200))


def test_a_mostly_skipped_file_says_so_beside_the_verdict():
    text = verdict(metrics(40, skipped={"invalid_json": 3960}))
    assert "3960 of 4000 prediction lines were skipped" in text and "invalid_json 3960" in text
    assert "skipped" not in verdict(metrics(40, skipped={"invalid_json": 3}))


def test_an_offline_hub_id_not_in_the_cache_fails_at_once(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "eval"
    rc, err = run_cli(["evaluate", "--model", "nobody/not-a-cached-model", "--out", str(out), "--limit", "2"], capsys)
    assert rc == 1 and "not in the local cache" in err
    assert not list(out.glob("*.partial*"))
