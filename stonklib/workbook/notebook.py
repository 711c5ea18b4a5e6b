"""Notebook set-up and parameters: the same behaviour in JupyterLab and under papermill.

- :func:`setup_notebook` makes the working directory the project root (so ``runs/...`` and
  ``models/...`` mean the same thing everywhere), shows a returned ``matplotlib.figure.Figure`` as a
  PNG whatever the backend, and sets ``OMP_WAIT_POLICY=PASSIVE`` when torch is not loaded yet.
- :func:`config_from` builds a notebook's config dataclass from the names its parameters cell
  assigns; :func:`parameters_source` writes such a cell, one line per field (notebooks 01, 04 and
  05 list every field of their config, as the CLI does).
- :func:`fresh_output_dir` lets notebook 04 re-run without clobbering an earlier run.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from stonklib import paths
from stonklib.environment import prefer_passive_omp

# Progress bars print as text where ipywidgets is missing; tqdm's warning about it is noise in a report.
warnings.filterwarnings("ignore", message="IProgress not found")


# ----------------------------------------------------------------------- set-up
def setup_notebook(root: str | Path | None = None) -> Path:
    """chdir to the project root, show Figures as PNG, quiet transformers' FutureWarnings; returns the root.

    Also sets ``OMP_WAIT_POLICY=PASSIVE`` unless it is set (:func:`stonklib.environment.prefer_passive_omp`);
    it only takes effect before torch loads, so call this in the notebook's first cell.
    """
    prefer_passive_omp()
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
                      header: str = "", nested: Mapping[str, tuple[type, Mapping[str, Any] | None, str]] | None = None) -> str:
    """A notebook parameters cell for ``cls``: ``name = value  # comment`` for every field, in declaration order.

    ``values`` override the dataclass defaults (each must be a Python literal, as papermill needs);
    ``comments`` override the first sentence of the field's ``help`` metadata. ``header`` is a first
    comment line. ``nested`` adds, after the fields, one dict parameter per entry ``name: (config class,
    its values or None, comment)``: the dict lists every field of that class, one per line (notebook 04's
    ``warmup``, the YAML's ``warmup:`` section), or the parameter is ``None``.
    """
    lines = [f"# {header}"] if header else []
    lines += [f"{name} = {text}" + (f"  # {note}" if note else "") for name, text, note in _field_lines(cls, values, comments)]
    for name, (sub, sub_values, note) in (nested or {}).items():
        if sub_values is None:
            lines.append(f"{name} = None  # {note}")
            continue
        lines.append(f"{name} = {{  # {note}")
        lines += [f"    {json.dumps(k)}: {text}," + (f"  # {c}" if c else "") for k, text, c in _field_lines(sub, sub_values, {})]
        lines.append("}")
    return "\n".join(lines)


def _field_lines(cls, values: Mapping[str, Any] | None, comments: Mapping[str, str] | None) -> list[tuple[str, str, str]]:
    """(name, literal, comment) for every field of ``cls``: ``values`` over the defaults, ``comments`` over the help."""
    values, comments = values or {}, comments or {}
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{sorted(unknown)} are not {cls.__name__} fields; use its field names.")
    out = []
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
        out.append((f.name, text, comments.get(f.name) or _shortened(f.metadata.get("help", ""))))
    return out


def sync_parameters_cell(path: str | Path, cls, nested: Mapping[str, tuple[type, str]] | None = None) -> bool:
    """Rewrite a notebook's parameters cell so it lists every field of ``cls`` again; True if it changed.

    Values and comments already in the cell are kept for fields that still exist; new fields get their
    default and the first words of their help text; fields that are gone are dropped. ``nested`` names
    dict parameters (``{"warmup": (WarmupConfig, comment)}``) kept the same way, key by key. Run it after
    adding a config field to the notebooks that mirror their config (01, 04 and 05)::

        python -c "from stonklib.workbook.notebook import sync_parameters_cell as s; from stonklib.config import \
TrainConfig, WarmupConfig; s('notebooks/04_grpo_training.ipynb', TrainConfig, {'warmup': (WarmupConfig, '...')})"
    """
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", []))
    names = {f.name for f in dataclasses.fields(cls)}
    lines = cell.source.splitlines()
    header = lines[0].lstrip("# ").strip() if lines and lines[0].startswith("#") else ""
    values, comments, nested_values = {}, {}, {}
    for stmt in ast.parse(cell.source).body:
        name = stmt.targets[0].id
        value = ast.literal_eval(stmt.value)
        if name in names:
            values[name] = value
            comments[name] = lines[stmt.lineno - 1].partition("  # ")[2].strip()
        elif nested and name in nested:
            sub = nested[name][0]
            nested_values[name] = None if value is None else {k: v for k, v in value.items()
                                                              if k in {f.name for f in dataclasses.fields(sub)}}
    extra = {k: (sub, nested_values.get(k, {}), note) for k, (sub, note) in (nested or {}).items()}
    source = parameters_source(cls, values, {k: v for k, v in comments.items() if v}, header, extra)
    if source == cell.source:
        return False
    cell.source = source
    nbformat.write(nb, str(path))
    return True


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
    if first[:1].isupper() and (first[1:].islower() or len(first) == 1):  # "Sample ..." -> "sample ...", not "LoRA"
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
