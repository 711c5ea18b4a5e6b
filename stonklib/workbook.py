"""Notebook plumbing for 04 and 05: set-up, live training curves, run tables, the evaluation plan.

- :func:`setup_notebook` makes a notebook behave the same in JupyterLab and under
  papermill: the working directory is the project root (so ``runs/...`` and
  ``models/...`` mean the same thing everywhere) and a returned
  ``matplotlib.figure.Figure`` displays as a PNG whatever the backend.
- :func:`run_training_live` runs :func:`stonklib.launch.run_training` in a
  worker thread and redraws the training curves from ``train_metrics.jsonl``
  while it runs (the trainer knows nothing about notebooks).
- :func:`config_from` builds a notebook's config dataclass from the names its
  parameters cell assigns; :func:`parameters_source` writes such a cell, one line
  per field (notebooks 01, 04 and 05 list every field of their config, as the CLI does).
- :func:`evaluation_plan` turns one :class:`~stonklib.config.EvalConfig` into the
  base / Stage I / Stage II evaluations that notebook 05 compares; the Stage I
  model is read from the Stage II run's own ``config.yaml``.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import math
import os
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from stonklib import paths

# Progress bars print as text where ipywidgets is missing; tqdm's warning about it is noise in a report.
warnings.filterwarnings("ignore", message="IProgress not found")


# ----------------------------------------------------------------------- set-up
def setup_notebook(root: str | Path | None = None) -> Path:
    """chdir to the project root, show Figures as PNG, quiet transformers' FutureWarnings; returns the root."""
    root = Path(root or paths.ROOT)
    os.chdir(root)
    # transformers' deprecation notices (from calls inside peft/transformers) are noise in a report
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    pd.set_option("display.max_colwidth", 120)
    pd.set_option("display.precision", 3)
    try:
        from IPython import get_ipython
    except ImportError:  # plain Python: nothing to register
        return root
    ip = get_ipython()
    if ip is not None:
        from matplotlib.figure import Figure

        ip.display_formatter.formatters["image/png"].for_type(Figure, figure_png)
    return root


def figure_png(fig) -> bytes:
    """A Figure as PNG bytes (what the notebook shows and the HTML report embeds)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def config_from(cls, namespace: Mapping[str, Any], **overrides: Any):
    """``cls`` from the names in ``namespace`` that are its fields (a notebook's parameters), then ``overrides``.

    A notebook passes ``globals()`` right after its parameters cell, so the cell (and what papermill
    injects into it) is the one list of the config's values; names that are not fields are ignored.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**({k: namespace[k] for k in names if k in namespace} | overrides))


def parameters_source(cls, values: Mapping[str, Any] | None = None, comments: Mapping[str, str] | None = None,
                      header: str = "") -> str:
    """A notebook parameters cell for ``cls``: ``name = value  # comment`` for every field, in declaration order.

    ``values`` override the dataclass defaults (each must be a Python literal, as papermill needs);
    ``comments`` override the first sentence of the field's ``help`` metadata. ``header`` is a first
    comment line.
    """
    values, comments = values or {}, comments or {}
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{sorted(unknown)} are not {cls.__name__} fields; use its field names.")
    lines = [f"# {header}"] if header else []
    for f in dataclasses.fields(cls):
        if f.name in values:
            value = values[f.name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        else:
            value = f.default_factory()  # type: ignore[misc]
        text = _literal(value)
        if ast.literal_eval(text) != value:  # a papermill parameter must be a literal
            raise ValueError(f"{cls.__name__}.{f.name} = {value!r} is not a plain Python literal.")
        note = comments.get(f.name) or _shortened(f.metadata.get("help", ""))
        lines.append(f"{f.name} = {text}" + (f"  # {note}" if note else ""))
    return "\n".join(lines)


def _literal(v: Any) -> str:
    """``repr`` with double-quoted strings (the notebooks' style)."""
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(map(_literal, v)) + "]"
    if isinstance(v, tuple):
        return "(" + ", ".join(map(_literal, v)) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(x)}" for k, x in v.items()) + "}"
    return repr(v)


def _shortened(text: str, width: int = 100) -> str:
    text = " ".join(text.split()).rstrip(".")
    first = text.split(" ", 1)[0]
    if first[:1].isupper() and first[1:].islower():  # "Sample ..." -> "sample ...", not "LoRA" or "AdamW"
        text = text[0].lower() + text[1:]
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def fresh_output_dir(path: str | Path, resume: bool = False) -> str:
    """``path`` if it holds no training run yet (or ``resume`` asks to continue it), else the first free
    ``path-2``, ``path-3``, ...

    Re-running notebook 04 in JupyterLab then starts a new run instead of failing
    on the old one (the trainer refuses to overwrite a run without ``--resume``).
    """
    p = Path(path)
    if resume or not _holds_run(p):
        return str(path)
    k = 2
    while _holds_run(p.with_name(f"{p.name}-{k}")):
        k += 1
    return str(p.with_name(f"{p.name}-{k}"))


def _holds_run(p: Path) -> bool:
    return p.is_dir() and (any(p.glob("checkpoint-*")) or (p / "train_metrics.jsonl").exists())


# ------------------------------------------------------------------- training
def read_metrics(output_dir: str | Path) -> pd.DataFrame:
    """``train_metrics.jsonl`` as one row per step (validation scalars merged into their step's row)."""
    from stonklib.runlog import METRICS, read_jsonl

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
    from stonklib.launch import run_training
    from stonklib.plots import plot_training_overview

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
    import json

    from stonklib.checkpoint import STATE, list_checkpoints

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


# ------------------------------------------------------------------ evaluation
def run_config(adapter: str | Path) -> dict[str, Any]:
    """The resolved TrainConfig that produced ``adapter`` (its run's ``config.yaml``), or {}."""
    for folder in (Path(adapter), Path(adapter).parent):
        if (folder / "config.yaml").is_file():
            return yaml.safe_load((folder / "config.yaml").read_text()) or {}
    return {}


def _same_model(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


def stage1_model_of(adapter: str | Path | None, base_model: str | None) -> str | None:
    """The Stage I model a Stage II adapter was trained from, or None when it was the base model itself."""
    if not adapter:
        return None
    cfg = run_config(adapter)
    if cfg.get("stage", 2) != 2:
        return None
    s1 = cfg.get("stage1_model")
    return None if s1 is None or _same_model(s1, base_model) else str(s1)


def evaluation_plan(cfg) -> dict[str, Any]:
    """name -> EvalConfig for ``base``, ``stage1`` and ``stage2`` (those that exist), in run order.

    All share ``cfg``'s split, limit and generation settings, so they score the
    same rows, and each writes to ``cfg.out/<name>``. ``cfg.adapter`` is named by
    the stage its run's ``config.yaml`` records. A Stage II adapter is evaluated
    on top of the model it was trained from (its Stage I model, or the base
    model), and its ``base_predictions`` are that model's predictions, so its
    ``base_model`` baseline and ensemble compare against what it started from.
    """
    if cfg.model is None:
        raise ValueError("notebook 05 generates predictions: set `model` (the base model) in the eval parameters.")
    out = Path(cfg.out)
    plain = dataclasses.replace(cfg, adapter=None, base_predictions=None, predictions=None)
    plan = {"base": dataclasses.replace(plain, out=str(out / "base"))}
    if not cfg.adapter:
        return plan
    base_preds = str(out / "base" / "predictions.jsonl")
    if run_config(cfg.adapter).get("stage", 2) == 1:
        plan["stage1"] = dataclasses.replace(cfg, predictions=None, out=str(out / "stage1"), base_predictions=base_preds)
        return plan
    stage1 = stage1_model_of(cfg.adapter, cfg.model)
    if stage1:
        plan["stage1"] = dataclasses.replace(plain, model=stage1, out=str(out / "stage1"))
    under = "stage1" if stage1 else "base"
    plan["stage2"] = dataclasses.replace(cfg, model=stage1 or cfg.model, predictions=None, out=str(out / "stage2"),
                                         base_predictions=str(Path(plan[under].out) / "predictions.jsonl"))
    return plan


def run_plan(plan: dict[str, Any], progress: bool = False) -> dict[str, dict[str, Any]]:
    """``run_evaluate`` for each config of :func:`evaluation_plan`, in order; name -> metrics."""
    from stonklib.evaluate import run_evaluate

    return {name: run_evaluate(c, progress=progress) for name, c in plan.items()}


def prediction_frames(results: dict[str, dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """name -> the predictions frame each evaluation scored."""
    from stonklib.evaluate import read_predictions

    return {name: read_predictions(m["predictions_file"]).frame for name, m in results.items()}


def comparison_table(results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Models and baselines on the same rows: accuracy, Wilson CI, p vs majority, balanced acc., Brier, parse, Sharpe."""
    rows = {}
    for name, m in results.items():
        rows[f"model: {name}"] = m
    last = list(results.values())[-1]
    for name, m in (last.get("baselines") or {}).items():
        if name != "base_model" and m:
            rows[f"baseline: {name}"] = m
    if "ensemble" in (last.get("breakdowns") or {}) and len(results) > 1:
        a, b = list(results)[-2:]
        rows[f"ensemble: {a} + {b}"] = last["breakdowns"]["ensemble"]
    table = {}
    for name, m in rows.items():
        lo, hi = m["accuracy_ci95"]
        table[name] = {"n": m["n"], "accuracy": m["accuracy"], "ci95_lo": lo, "ci95_hi": hi,
                       "p_vs_majority": m["binom_p_value"], "majority_rate": m["majority_rate"],
                       "balanced_accuracy": m["balanced_accuracy"], "brier": m["brier"], "parse_rate": m["parse_rate"],
                       "sharpe": (m.get("backtest") or {}).get("sharpe"),
                       "total_return_pct": (m.get("backtest") or {}).get("total_return_pct")}
    return pd.DataFrame.from_dict(table, orient="index")


def breakdown_table(metrics: dict[str, Any], key: str) -> pd.DataFrame:
    """One breakdown of a metrics dict (``sector``, ``month`` or ``volatility``) as a table."""
    b = (metrics.get("breakdowns") or {}).get(key) or {}
    groups = b.get("groups", b) if key == "volatility" else b
    rows = {}
    for name, m in groups.items():
        lo, hi = m["accuracy_ci95"]
        rows[name] = {"n": m["n"], "accuracy": m["accuracy"], "ci95_lo": lo, "ci95_hi": hi,
                      "p_vs_majority": m["binom_p_value"], "actual_up_rate": m["actual_up_rate"],
                      "predicted_up_rate": m["predicted_up_rate"]}
    t = pd.DataFrame.from_dict(rows, orient="index")
    t.index.name = key
    return t


def load_tokenizer_for(model_ref: str, trust_remote_code: bool = False):
    """The tokenizer a run on ``model_ref`` uses (a PEFT adapter's own, else its base model's)."""
    from stonklib.models import load_tokenizer, resolve_source

    src = resolve_source(model_ref)
    own = src.adapter and (Path(src.adapter) / "tokenizer_config.json").is_file()
    return load_tokenizer(src.adapter if own else src.base, trust_remote_code)


def stage1_note(plan: dict[str, Any]) -> str:
    """One sentence saying which models the plan compares, and why a Stage I or II row is absent."""
    base = plan["base"].model
    if "stage2" not in plan and "stage1" not in plan:
        return (f"No adapter was given (`adapter` is unset), so only the base model `{base}` was evaluated; "
                f"run notebook 04 first or pass `adapter`.")
    if "stage2" not in plan:
        return (f"`{plan['stage1'].adapter}` is a Stage I adapter (its run says stage 1), evaluated on the base model "
                f"`{base}`; there is no Stage II adapter in this comparison.")
    if "stage1" in plan:
        return (f"Stage II (`{plan['stage2'].adapter}`) was evaluated on top of its Stage I model "
                f"`{plan['stage1'].model}`; its base-model baseline and ensemble are against Stage I.")
    return (f"No Stage I model is configured: the Stage II adapter `{plan['stage2'].adapter}` was trained directly "
            f"on the base model `{base}`, so there is no Stage I row; its base-model baseline is the base model.")


def equity_curves(frames: dict[str, pd.DataFrame], cost_bps: float) -> dict[str, pd.Series]:
    """Daily backtest returns per model (after ``cost_bps`` per side) plus buy-and-hold on the same rows."""
    import numpy as np

    from stonklib.evaluate.metrics import daily_returns

    curves = {name: daily_returns(df, cost_bps) for name, df in frames.items()}
    first = next(iter(frames.values()))
    curves["buy and hold (no costs)"] = daily_returns(first, 0.0, position=np.ones(len(first)))
    return curves
