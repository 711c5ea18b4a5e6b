"""Notebook 04's training views: the metrics frame, live curves while a run trains, the checkpoint table.

:func:`run_training_live` runs :func:`stonklib.grpo.launch.run_training` in a worker thread and
redraws the curves from ``train_metrics.jsonl`` while it runs (the trainer knows nothing about
notebooks).
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import pandas as pd


def read_metrics(output_dir: str | Path) -> pd.DataFrame:
    """``train_metrics.jsonl`` as one row per step (validation scalars merged into their step's row)."""
    from stonklib.grpo.runlog import METRICS, read_jsonl

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

    try:
        from IPython.display import display
    except ImportError:
        return run_training(cfg, progress=False)
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["summary"] = run_training(cfg, progress=False)
        except BaseException as e:  # handed to the notebook's thread below
            result["error"] = e

    worker = threading.Thread(target=target, name="stonk-train", daemon=True)
    worker.start()
    handle, shown = None, -1
    while worker.is_alive():
        worker.join(refresh_s)
        m = read_metrics(cfg.output_dir)
        if len(m) and len(m) != shown:
            fig = plot_training_overview(m, title=f"{cfg.output_dir}: step {int(m.index.max())} (live)")
            if handle is None:
                handle = display(fig, display_id=True)
            else:
                handle.update(fig)
            shown = len(m)
    if "error" in result:
        raise result["error"]
    return result["summary"]


def checkpoint_table(output_dir: str | Path) -> pd.DataFrame:
    """checkpoint-*, best/ and final/ of a run: step, validation reward so far, size on disk."""
    from stonklib.grpo.checkpoint import STATE, list_checkpoints

    out = Path(output_dir)
    folders = list_checkpoints(out) + [p for p in (out / "best", out / "final") if p.is_dir()]
    rows = []
    for p in folders:
        state = json.loads((p / STATE).read_text()) if (p / STATE).is_file() else {}
        best = state.get("best_val_reward")
        rows.append({"folder": p.name, "step": state.get("step"),
                     "best_val_reward": best if isinstance(best, (int, float)) and math.isfinite(best) else None,
                     "adapter": (p / "adapter_model.safetensors").is_file(),
                     "size_mb": round(sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20, 2)})
    t = pd.DataFrame(rows, columns=["folder", "step", "best_val_reward", "adapter", "size_mb"]).set_index("folder")
    return t.astype({"step": "Int64", "best_val_reward": "Float64"})
