"""Run outputs: ``training.log``, the per-completion JSONL, per-step metrics, TensorBoard.

Crash safety: every JSONL line is flushed and fsync'ed at the end of each step, so
a SIGKILL loses at most the step in flight. A checkpoint records the byte size of
each JSONL file; on resume the files are truncated back to that size, so lines
written after the checkpoint are replaced, never duplicated.

Only the main process writes (``is_main``); other ranks get a silent RunLog.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

COMPLETIONS = "{stage}_training_log.jsonl"  # stage2_training_log.jsonl, as in the seed
METRICS = "train_metrics.jsonl"
TEXT_LOG = "training.log"


def completions_file(stage: int | str) -> str:
    """``stage1_``/``stage2_training_log.jsonl`` for the GRPO stages, ``warmup_training_log.jsonl`` for the warm-up."""
    return COMPLETIONS.format(stage=f"stage{stage}" if isinstance(stage, int) else stage)


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf become null, tensors and numpy scalars become floats."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and callable(x.item):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


class RunLog:
    def __init__(self, output_dir: str | Path, stage: int | str = 2, is_main: bool = True, tensorboard: bool = True):
        self.dir = Path(output_dir)
        self.is_main = is_main
        self.files = {"completions": self.dir / completions_file(stage), "metrics": self.dir / METRICS}
        self.log = logging.getLogger(f"stonklib.run.{id(self)}")
        self.log.propagate = False
        self.log.setLevel(logging.INFO)
        self._tb = None
        self._handles: dict[str, Any] = {}
        if not is_main:
            self.log.addHandler(logging.NullHandler())
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(self.dir / TEXT_LOG)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.log.addHandler(fh)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.dir / "tb"))
            except ImportError:  # tensorboard is optional at run time
                self.log.warning("tensorboard not installed: no TB scalars")

    # ------------------------------------------------------------------ files
    def offsets(self) -> dict[str, int]:
        """Current byte size of each JSONL file (stored in checkpoints)."""
        return {k: (p.stat().st_size if p.exists() else 0) for k, p in self.files.items()}

    def truncate(self, offsets: dict[str, int]) -> None:
        """Cut each JSONL back to a checkpoint's size (resume without duplicates)."""
        if not self.is_main:
            return
        for k, p in self.files.items():
            if p.exists():
                with open(p, "r+b") as f:
                    f.truncate(min(offsets.get(k, 0), p.stat().st_size))

    def _append(self, key: str, rows: Iterable[dict]) -> None:
        if not self.is_main:
            return
        f = self._handles.get(key)
        if f is None:
            f = self._handles[key] = open(self.files[key], "a", encoding="utf-8")
        for r in rows:
            f.write(json.dumps(_clean(r), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())

    def completions(self, rows: list[dict]) -> None:
        self._append("completions", rows)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._append("metrics", [{"step": step, **values}])
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    # ------------------------------------------------------------------ text log
    def info(self, msg: str, *args: Any) -> None:
        self.log.info(msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        """A WARNING line in ``training.log`` (and on stderr, so a terminal run sees it too)."""
        self.log.warning(msg, *args)
        if self.is_main:
            print(f"stonk: warning: {msg % args if args else msg}", file=sys.stderr)

    def header(self, config: dict, extra: dict | None = None) -> None:
        import torch

        info = {
            "python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cpus": os.cpu_count(), **(extra or {}),
        }
        self.info("system %s", json.dumps(info))
        self.info("config %s", json.dumps(_clean(config), sort_keys=True))

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles.clear()
        if self._tb is not None:
            self._tb.close()
        for h in list(self.log.handlers):
            h.close()
            self.log.removeHandler(h)


def read_jsonl(path: str | Path) -> list[dict]:
    """All complete lines of a JSONL file (a torn last line from a crash is ignored)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n"):
                rows.append(json.loads(line))
    return rows
