"""Data exploration for notebook 01: label mixes, return and volatility tables, the split timeline, leakage.

Every function takes what :mod:`stonklib.data` builds (split DataFrames, the
``summary.json`` dict) and returns a small DataFrame that a notebook shows and
:mod:`stonklib.workbook.plots` draws. Nothing here trains or loads a model.

Typical use (what ``notebooks/01_data_exploration.ipynb`` does)::

    data_dir = prepare_data(DataConfig(source="sp500"))
    frames = load_frames(data_dir)                 # {"train": df, "val": df, "test": df}
    label_distribution(frames["train"], by="sector")
    leakage_report(data_dir, embargo=3)            # one row per check, all passed
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stonklib.config import TrainConfig
from stonklib.data import (
    LeakageError,
    build_dataset,
    check_embargo,
    check_history_dates,
    is_built,
    load_summary,
    sample_examples,
)
from stonklib.data.build import SPLITS

# Columns the exploration needs; the history column (the bulk of the file) is read only by leakage_report.
COLUMNS = ("ticker", "date", "sector", "change_pct_1", "direction_1", "flat_1", "return_1d", "volatility_10d")
_TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
MIX_SAMPLE = _TRAIN_DEFAULTS["max_train_samples"]  # the size of a Stage I / Stage II training sample
MIX_SEED = _TRAIN_DEFAULTS["seed"]


# --------------------------------------------------------------------- loading
def prepare_data(cfg, progress: bool = False) -> Path:
    """``cfg.out_dir``, built from ``cfg`` (a DataConfig) unless a build with the same settings is there.

    The settings are compared field by field (``out`` aside), so changing e.g. the
    embargo in the notebook's parameters rebuilds instead of showing stale splits.
    """
    out = cfg.out_dir
    wanted = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "out"}
    if is_built(out):
        built = {k: v for k, v in load_summary(out).get("config", {}).items() if k != "out"}
        if built == wanted:
            return out
    build_dataset(cfg, progress=progress)
    return out


def planted_rule(data_dir: str | Path | None) -> str | None:
    """The planted rule of a built data directory (``stonk data build --plant``), or None for market labels.

    ``None`` means the default data (``stonk`` builds it on first use); a directory that is not built
    yet has no summary to read either, so it counts as market data until it is.
    """
    from stonklib.data import ensure_data

    try:
        return load_summary(ensure_data(data_dir, progress=False)).get("planted")
    except (FileNotFoundError, ValueError):
        return None


def load_frames(data_dir: str | Path, columns: tuple[str, ...] = COLUMNS) -> dict[str, pd.DataFrame]:
    """The three splits with only ``columns`` (fast: no history), each with a ``month`` column (YYYY-MM)."""
    frames = {}
    for split in SPLITS:
        df = pd.read_parquet(Path(data_dir) / f"{split}.parquet", columns=list(columns))
        df["date"] = df["date"].astype(str)
        df["month"] = df["date"].str[:7]
        frames[split] = df
    return frames


# --------------------------------------------------------------- distributions
def label_distribution(frame: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """Share of up / down / flat next-day moves, overall (``by=None``) or per value of ``by``.

    Flat moves (|change| <= flat_threshold_pct) also count as down, as in the labels,
    so up + down = 1 and flat is a subset of down.
    """
    up = frame["direction_1"].astype(str).to_numpy() == "up"
    t = pd.DataFrame({"group": frame[by].fillna("").astype(str).replace("", "unknown") if by else "all",
                      "up": up, "down": ~up, "flat": frame["flat_1"].astype(bool).to_numpy()})
    out = t.groupby("group", sort=True).agg(n=("up", "size"), up=("up", "mean"), down=("down", "mean"),
                                            flat=("flat", "mean"))
    out.index.name = by or "group"
    return out


def split_label_table(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per split: n, up / down / flat shares, first and last date, tickers."""
    rows = []
    for name, df in frames.items():
        d = label_distribution(df).iloc[0]
        rows.append({"split": name, "n": int(d["n"]), "up": d["up"], "down": d["down"], "flat": d["flat"],
                     "date_min": df["date"].min(), "date_max": df["date"].max(), "tickers": df["ticker"].nunique()})
    return pd.DataFrame(rows).set_index("split")


def return_stats(frames: dict[str, pd.DataFrame], columns: tuple[str, ...] = ("change_pct_1", "volatility_10d"),
                 ) -> pd.DataFrame:
    """Quantiles of the next-day move and of the 10-day volatility (both in %), per split."""
    rows = []
    for name, df in frames.items():
        for col in columns:
            v = pd.to_numeric(df[col], errors="coerce").dropna()
            q = v.quantile([0.01, 0.25, 0.5, 0.75, 0.99]).to_numpy() if len(v) else [np.nan] * 5
            rows.append({"split": name, "column": col, "n": len(v), "mean": v.mean(), "std": v.std(),
                         "p01": q[0], "p25": q[1], "median": q[2], "p75": q[3], "p99": q[4],
                         "share_abs_gt_5": float((v.abs() > 5).mean()) if len(v) else np.nan})
    return pd.DataFrame(rows).set_index(["split", "column"])


def mix_comparison(train: pd.DataFrame, n: int = MIX_SAMPLE, seed: int = MIX_SEED) -> pd.DataFrame:
    """What a Stage II (natural) and a Stage I (balanced) training sample of ``n`` rows look like.

    Uses :func:`stonklib.data.sample_examples`, exactly as the trainer does.
    """
    rows = {}
    for name, natural in (("natural (Stage II)", True), ("balanced (Stage I)", False)):
        s = sample_examples(train, min(n, len(train)), natural=natural, seed=seed)
        d = label_distribution(s).iloc[0]
        rows[name] = {"n": int(d["n"]), "up": d["up"], "down": d["down"], "flat": d["flat"],
                      "mean_abs_move": float(s["change_pct_1"].abs().mean()),
                      "always_up_accuracy": d["up"], "majority_accuracy": max(d["up"], d["down"])}
    return pd.DataFrame.from_dict(rows, orient="index")


# ------------------------------------------------------------------ timeline
def split_timeline(summary: dict[str, Any]) -> pd.DataFrame:
    """train / embargo / val / embargo / test as dated segments, from a build's ``summary.json``."""
    s, emb = summary["splits"], summary.get("embargo_dates", {})
    rows = []
    for name, gap in (("train", "train_val"), ("val", "val_test"), ("test", None)):
        st = s[name]
        rows.append({"segment": name, "kind": "split", "start": st["date_min"], "end": st["date_max"], "n": st["n"],
                     "n_dates": None})
        dates = sorted(emb.get(gap, [])) if gap else []
        if dates:
            rows.append({"segment": f"embargo {gap.replace('_', '/')}", "kind": "embargo", "start": dates[0],
                         "end": dates[-1], "n": 0, "n_dates": len(dates)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------- leakage
def leakage_report(data_dir: str | Path, embargo: int) -> pd.DataFrame:
    """Run the data layer's leakage checks on a built directory; one row per check, never raising.

    Rows: history dated on/before the as-of date for each split, then the embargo
    between splits. ``passed`` is False with the error text in ``detail`` on a
    violation, so a notebook can show the table and then ``assert`` on it.
    """
    tables = {s: pq.read_table(Path(data_dir) / f"{s}.parquet", columns=["ticker", "date", "history"]) for s in SPLITS}
    rows = []
    for name, t in tables.items():
        rows.append(_run_check(f"{name}: every history row dated on/before its as-of date, newest first",
                               lambda t=t, name=name: check_history_dates(t, name),
                               f"{t.num_rows:,} rows checked"))
    gaps = _gap_dates(tables)
    rows.append(_run_check(f"embargo >= {embargo} trading dates between train/val and val/test",
                           lambda: check_embargo(tables["train"], tables["val"], tables["test"], embargo),
                           f"gaps of {gaps[0]} and {gaps[1]} trading dates"))
    return pd.DataFrame(rows).set_index("check")


def _run_check(name: str, fn, ok_detail: str) -> dict[str, Any]:
    try:
        fn()
    except LeakageError as e:
        return {"check": name, "passed": False, "detail": str(e)}
    return {"check": name, "passed": True, "detail": ok_detail}


def _gap_dates(tables) -> tuple[int, int]:
    """Trading dates strictly between consecutive splits, read from the later split's history."""
    out = []
    for a, b in (("train", "val"), ("val", "test")):
        a_max = max(tables[a].column("date").to_pylist())
        b_min = min(tables[b].column("date").to_pylist())
        first = tables[b].filter(pc.equal(tables[b].column("date"), b_min)).column("history")
        dates = {h["date"] for rows in first.to_pylist() for h in rows}
        out.append(sum(1 for d in dates if a_max < d < b_min))
    return out[0], out[1]


# -------------------------------------------------------------------- prompts (02)
PROMPT_SAMPLE_CAP = 500  # token statistics on at most this many examples: enough for a histogram, seconds to run


def truncation_table(stats: pd.DataFrame) -> pd.DataFrame:
    """Per template version, from :func:`stonklib.prompts.token_stats`: lengths and what truncation cost."""
    g = stats.groupby("version", sort=False)
    return pd.DataFrame({
        "examples": g.size(),
        "median_tokens": g["n_tokens_full"].median(),
        "p95_tokens": g["n_tokens_full"].quantile(0.95),
        "max_tokens": g["n_tokens_full"].max(),
        "truncated_share": g["truncated"].mean(),
        "mean_history_rows_kept": g["history_rows_kept"].mean(),
        "mean_news_kept": g["news_kept"].mean(),
        "median_tokens_fitted": g["n_tokens"].median(),
    })


def side_by_side_html(example, versions, tokenizer, max_prompt_tokens: int) -> str:
    """An HTML table with one column per template version: the fitted, chat-rendered prompt and its size."""
    import html

    from stonklib.prompts import fit_prompt

    cells, heads = [], []
    for v in versions:
        fp = fit_prompt(example, tokenizer, max_prompt_tokens, v)
        heads.append(f"<th style='text-align:left'>{html.escape(v)}: {fp.n_tokens} tokens"
                     f"{' (truncated)' if fp.truncated else ''}</th>")
        cells.append("<td style='vertical-align:top; text-align:left'><pre style='white-space:pre-wrap; "
                     f"font-size:11px; margin:0'>{html.escape(fp.text)}</pre></td>")
    width = 100 // max(len(versions), 1)
    return (f"<table style='table-layout:fixed; width:100%'><colgroup>{f'<col style=width:{width}%>' * len(versions)}"
            f"</colgroup><tr>{''.join(heads)}</tr><tr>{''.join(cells)}</tr></table>")
