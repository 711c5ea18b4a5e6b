"""Notebook 04's training views: the metrics frame, live curves while a run trains, the warm-up's
before/after table, the checkpoint table.

:func:`run_chain_live` runs the warm-up (:func:`stonklib.warmup.run_warmup`) and then GRPO
(:func:`stonklib.grpo.launch.run_training`) from its adapter, each in a worker thread, and redraws the
curves from ``train_metrics.jsonl`` while they run (the trainers know nothing about notebooks).
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from pathlib import Path
from typing import Any

import pandas as pd


def read_metrics(output_dir: str | Path | None) -> pd.DataFrame:
    """``train_metrics.jsonl`` as one row per step (validation scalars merged into their step's row); empty for None."""
    from stonklib.grpo.runlog import METRICS, read_jsonl

    if output_dir is None:
        return pd.DataFrame(columns=["step"]).set_index("step")
    path = Path(output_dir) / METRICS
    if not path.is_file():
        return pd.DataFrame(columns=["step"]).set_index("step")
    rows = read_jsonl(path)
    if not rows:
        return pd.DataFrame(columns=["step"]).set_index("step")
    return pd.DataFrame(rows).groupby("step").last().sort_index()


def run_training_live(cfg, refresh_s: float = 10.0) -> dict[str, Any]:
    """``run_training(cfg)`` with its curves redrawn in the notebook every ``refresh_s`` seconds.

    Outside IPython it is plain ``run_training``. An exception in the training
    thread is re-raised here. Interrupting the kernel does not stop the thread
    (Python cannot kill one): restart the kernel to abort a run.
    """
    from stonklib.grpo.launch import run_training
    from stonklib.workbook.plots import plot_training_overview

    return _live(run_training, cfg, plot_training_overview, refresh_s)


def run_warmup_live(cfg, refresh_s: float = 10.0) -> dict[str, Any]:
    """:func:`stonklib.warmup.run_warmup` with its loss and validation curves redrawn while it runs."""
    from stonklib.warmup import run_warmup
    from stonklib.workbook.plots import plot_warmup

    return _live(run_warmup, cfg, plot_warmup, refresh_s)


def warmup_config(values: dict[str, Any] | None):
    """Notebook 04's ``warmup`` parameter (a dict of WarmupConfig fields, or None) as a config, or None.

    As for the GRPO run, an ``output_dir`` that already holds a warm-up gets a fresh ``-N`` sibling unless
    ``resume`` asks to continue it.
    """
    if values is None:
        return None
    from stonklib.config import WarmupConfig
    from stonklib.workbook.notebook import config_from, fresh_output_dir

    cfg = config_from(WarmupConfig, values)
    return dataclasses.replace(cfg, output_dir=fresh_output_dir(cfg.output_dir, cfg.resume))


def run_chain_live(cfg, warmup=None, refresh_s: float = 10.0) -> dict[str, Any]:
    """Notebook 04's run: the warm-up when ``warmup`` (a WarmupConfig) is given, then GRPO starting from its
    ``final/``; ``{"warmup": summary or None, "warmup_dir": its output_dir or None, "train": summary,
    "config": the GRPO config that ran}``."""
    summary = None
    if warmup is not None:
        summary = run_warmup_live(warmup, refresh_s)
        cfg = dataclasses.replace(cfg, stage1_model=summary["final"])
    return {"warmup": summary, "warmup_dir": warmup.output_dir if warmup is not None else None,
            "train": run_training_live(cfg, refresh_s), "config": cfg}


def _live(run, cfg, plot, refresh_s: float) -> dict[str, Any]:
    """``run(cfg, progress=False)`` in a worker thread, ``plot(metrics)`` redrawn every ``refresh_s`` seconds."""
    try:
        from IPython.display import display
    except ImportError:
        return run(cfg, progress=False)
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["summary"] = run(cfg, progress=False)
        except BaseException as e:  # handed to the notebook's thread below
            result["error"] = e

    worker = threading.Thread(target=target, name="stonk-train", daemon=True)
    worker.start()
    handle, shown = None, -1
    while worker.is_alive():
        worker.join(refresh_s)
        m = read_metrics(cfg.output_dir)
        if len(m) and len(m) != shown:
            fig = plot(m, title=f"{cfg.output_dir}: step {int(m.index.max())} (live)")
            if handle is None:
                handle = display(fig, display_id=True)
            else:
                handle.update(fig)
            shown = len(m)
    if "error" in result:
        raise result["error"]
    return result["summary"]


WARMUP_COLUMNS = ("val/parse_rate", "val/format_rate", "val/data_utilization", "val/predicted_up_rate",
                  "val/distinct_day1_share", "val/reward")


def warmup_progress(output_dir: str | Path | None) -> pd.DataFrame:
    """The warm-up's validation numbers at each evaluation (step 0 is the model before it)."""
    m = read_metrics(output_dir)
    cols = [c for c in WARMUP_COLUMNS if c in m]
    return m.loc[m[cols].notna().any(axis=1), cols] if cols else pd.DataFrame(columns=list(WARMUP_COLUMNS))


def before_after(output_dir: str | Path | None, n: int = 8, width: int = 160) -> pd.DataFrame:
    """The same validation prompts answered at the warm-up's first and last evaluation, side by side (empty: no warm-up)."""
    from stonklib.grpo.runlog import completions_file, read_jsonl

    path = Path(output_dir) / completions_file("warmup") if output_dir is not None else None
    rows = read_jsonl(path) if path is not None and path.is_file() else []
    if not rows:
        return pd.DataFrame(columns=["prompt_id", "before", "after"])
    steps = sorted({r["step"] for r in rows})
    by = {s: {r["prompt_id"]: r for r in rows if r["step"] == s} for s in (steps[0], steps[-1])}
    first, last = by[steps[0]], by[steps[-1]]
    clip = lambda t: " ".join(t.split())[:width]  # noqa: E731
    out = [{"prompt_id": k, f"before (step {steps[0]})": clip(first[k]["completion"]),
            f"after (step {steps[-1]})": clip(last[k]["completion"]), "after: direction": last[k]["predicted_direction"],
            "after: data_utilization": last[k]["rewards"]["data_utilization"]}
           for k in list(last)[:n] if k in first]
    return pd.DataFrame(out).set_index("prompt_id")


def checkpoint_table(output_dir: str | Path) -> pd.DataFrame:
    """checkpoint-*, best/ and final/ of a run: step, validation reward so far, size on disk."""
    from stonklib.grpo.checkpoint import STATE, list_checkpoints

    out = Path(output_dir)
    folders = list_checkpoints(out) + [p for p in (out / "best", out / "final") if p.is_dir()]
    rows = []
    for p in folders:
        state = json.loads((p / STATE).read_text()) if (p / STATE).is_file() else {}
        best = state.get("best_val", state.get("best_val_reward"))
        rows.append({"folder": p.name, "step": state.get("step"),
                     "best_val_reward": best if isinstance(best, (int, float)) and math.isfinite(best) else None,
                     "adapter": (p / "adapter_model.safetensors").is_file(),
                     "size_mb": round(sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20, 2)})
    t = pd.DataFrame(rows, columns=["folder", "step", "best_val_reward", "adapter", "size_mb"]).set_index("folder")
    return t.astype({"step": "Int64", "best_val_reward": "Float64"})
