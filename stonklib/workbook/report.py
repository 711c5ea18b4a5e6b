"""Run the workbook headless: notebooks 01-05 with papermill, HTML with nbconvert, one index page.

    stonk report --config configs/smoke.yaml [--run NAME] [--notebooks 01 02]

Each notebook's parameters cell holds fields of one config dataclass; the YAML
section of that dataclass fills it (``data:`` -> 01, ``train:`` -> 02/03/04,
``eval:`` -> 05). Each section is resolved exactly as ``stonk train --config``
resolves it (YAML over the dataclass defaults, validated, so a typo fails
before anything runs), and a notebook receives the resolved values of the
names its parameters cell declares. A notebook whose section is absent keeps
its own defaults (small, quick values for interactive use). Relative paths in
the YAML are relative to the project root: the notebooks run with it as their
working directory.

What the report adds on top of the YAML, so that one report is one fresh run:

- 04 trains into ``runs/<run>/train`` (``output_dir``), which must not exist yet;
- 05 evaluates into ``runs/<run>/eval`` (``out``), and evaluates 04's
  ``runs/<run>/train/final`` adapter when it exists (else the YAML's ``adapter``).

Outputs, in ``reports/<run>/``: the executed ``NN_name.ipynb`` and ``NN_name.html``
per notebook, ``config.yaml`` (the YAML used), ``report.json`` (status and wall
time per notebook) and ``index.html`` linking them with each notebook's findings.
Executed copies never go back into ``notebooks/``.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stonklib import config as C
from stonklib import paths
from stonklib.environment import prefer_passive_omp
from stonklib.workbook.findings import MARKER, planted_banner

log = logging.getLogger(__name__)
KERNEL = "python3"


class ReportError(ValueError):
    """A notebook failed; the message names it and the HTML that shows the traceback.

    A ValueError so that ``stonk report`` prints it as a one-line error.
    """


@dataclass(frozen=True)
class Notebook:
    stem: str  # file name without .ipynb
    section: str  # the YAML section that fills its parameters
    cls: type  # the config dataclass its parameter names come from

    @property
    def key(self) -> str:
        return self.stem[:2]

    @property
    def path(self) -> Path:
        return paths.NOTEBOOKS / f"{self.stem}.ipynb"


NOTEBOOKS = (
    Notebook("01_data_exploration", "data", C.DataConfig),
    Notebook("02_prompt_design", "train", C.TrainConfig),
    Notebook("03_reward_tuning", "train", C.TrainConfig),
    Notebook("04_grpo_training", "train", C.TrainConfig),
    Notebook("05_evaluation", "eval", C.EvalConfig),
)


def select(names: Sequence[str] | None = None) -> list[Notebook]:
    """The notebooks named by number (``01``) or stem (``01_data_exploration``), in workbook order."""
    if not names:
        return list(NOTEBOOKS)
    wanted = {str(n).removesuffix(".ipynb") for n in names}
    unknown = wanted - {nb.key for nb in NOTEBOOKS} - {nb.stem for nb in NOTEBOOKS}
    if unknown:
        raise ValueError(f"unknown notebook(s) {sorted(unknown)}; use numbers or names from: "
                         f"{', '.join(nb.stem for nb in NOTEBOOKS)}.")
    return [nb for nb in NOTEBOOKS if nb.key in wanted or nb.stem in wanted]


def declared_parameters(path: str | Path) -> dict[str, Any]:
    """The names in a notebook's ``parameters`` cell (papermill's view of it)."""
    import papermill as pm

    return dict(pm.inspect_notebook(str(path)))


# ------------------------------------------------------------------ config
def resolve_config_path(config_path: str | Path) -> Path:
    p = Path(config_path)
    if not p.is_file() and not p.is_absolute() and (paths.ROOT / p).is_file():
        p = paths.ROOT / p
    if not p.is_file():
        raise C.ConfigError(f"config file {config_path} does not exist (looked in {Path.cwd()} and {paths.ROOT}).")
    return p.resolve()


def load_sections(config_path: Path) -> dict[str, Any]:
    """section -> its resolved config dataclass (YAML values over the dataclass defaults), built from the
    project root so relative paths resolve as the notebooks will see them. Errors surface here, before any run.

    With a ``warmup:`` section, notebook 04 runs the warm-up first and its GRPO stage starts from the warm-up's
    ``final/``: the ``train:`` section is checked with ``stage1_model`` set to the warm-up's starting model.
    """
    raw = C.load_yaml(config_path)
    known = {nb.section: nb.cls for nb in NOTEBOOKS} | {"warmup": C.WarmupConfig}
    unknown = set(raw) - set(known)
    if unknown:
        raise C.ConfigError(f"{config_path}: unknown section(s) {sorted(unknown)}; use {', '.join(known)}.")
    here = Path.cwd()
    os.chdir(paths.ROOT)
    try:
        out = {}
        for section in ("data", "warmup", "train", "eval"):
            if raw.get(section):
                over = {"stage1_model": out["warmup"].model} if section == "train" and "warmup" in out else {}
                out[section] = C.build(known[section], config_path, section=section, **over)
        return out
    finally:
        os.chdir(here)


def run_dirs(run: str) -> dict[str, Path]:
    """Where this report's warm-up, training run and evaluations go."""
    return {"warmup": paths.RUNS / run / "warmup", "train": paths.RUNS / run / "train", "eval": paths.RUNS / run / "eval"}


def parameters_for(nb: Notebook, sections: dict[str, Any], run: str) -> dict[str, Any]:
    """The papermill parameters for ``nb``: its section's resolved values for the names it declares, plus the
    run's own directories. Without a section the notebook keeps its own defaults (except the run's dirs)."""
    declared = declared_parameters(nb.path)
    cfg = sections.get(nb.section)
    params = {k: v for k, v in C.to_dict(cfg).items() if k in declared} if cfg is not None else {}
    dirs = run_dirs(run)
    if nb.key == "04":
        params["output_dir"] = _shown(dirs["train"])
        warmup = sections.get("warmup")
        params["warmup"] = None if warmup is None else C.to_dict(warmup) | {"output_dir": _shown(dirs["warmup"])}
    if nb.key == "05":
        params["out"] = _shown(dirs["eval"])
        final = dirs["train"] / "final"
        if (final / "adapter_config.json").is_file():
            params["adapter"] = _shown(final)
    missing = set(params) - set(declared)
    if missing:
        raise C.ConfigError(f"{nb.stem} does not declare parameter(s) {sorted(missing)}: add them to its parameters cell.")
    return params


def unread_keys(config_path: Path, chosen: Sequence[Notebook]) -> dict[str, list[str]]:
    """YAML keys that no chosen notebook of their section declares (they would be silently unused)."""
    raw = C.load_yaml(config_path)
    out = {}
    for section in dict.fromkeys(nb.section for nb in chosen):
        read = set().union(*(declared_parameters(nb.path) for nb in chosen if nb.section == section))
        keys = sorted(set(raw.get(section) or {}) - read - {"output_dir", "out"})
        if section == "train" and raw.get("warmup") and not any(nb.key == "04" for nb in chosen):
            out["warmup"] = sorted(raw["warmup"])  # only notebook 04 runs the warm-up
        if keys:
            out[section] = keys
    return out


def _shown(p: Path) -> str:
    """``p`` relative to the project root (the notebooks' working directory) when inside it, else absolute."""
    return str(p.relative_to(paths.ROOT)) if p.is_relative_to(paths.ROOT) else str(p)


# ------------------------------------------------------------------ running
def execute(nb: Notebook, out_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Run one notebook into ``out_dir`` and render its HTML; never raises on a failing cell (status says)."""
    import papermill as pm

    target = out_dir / f"{nb.stem}.ipynb"
    t0 = time.perf_counter()
    status, error = "ok", None
    try:
        pm.execute_notebook(str(nb.path), str(target), parameters=params, cwd=str(paths.ROOT), kernel_name=KERNEL,
                            progress_bar=False, request_save_on_cell_execute=True)
    except pm.PapermillExecutionError as e:
        status, error = "failed", f"{e.ename}: {e.evalue}"
    seconds = round(time.perf_counter() - t0, 1)
    html_path = render_html(target) if target.is_file() else None
    log.info("%s %s in %.1f s", nb.stem, status, seconds)
    return {"notebook": nb.stem, "status": status, "error": error, "seconds": seconds, "parameters": params,
            "ipynb": target.name, "html": html_path.name if html_path else None,
            "title": notebook_title(target), "findings": findings_markdown(target)}


def render_html(ipynb: Path) -> Path:
    """``NN_name.html`` next to the executed notebook (nbconvert, lab template, figures embedded)."""
    import nbformat
    from nbconvert import HTMLExporter

    quiet = logging.getLogger("stonklib.workbook.report.nbconvert")  # nbconvert warns about every figure's missing alt text
    quiet.setLevel(logging.ERROR)
    exporter = HTMLExporter(template_name="lab", log=quiet)
    body, _ = exporter.from_notebook_node(nbformat.read(ipynb, as_version=4))
    out = ipynb.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out


def notebook_title(ipynb: Path) -> str:
    """The first Markdown heading of a notebook, or its file name."""
    import nbformat

    for cell in nbformat.read(ipynb, as_version=4).cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", cell.source, re.M)
            if m:
                return m.group(1).strip()
    return ipynb.stem


def findings_markdown(ipynb: Path) -> str | None:
    """The Markdown a notebook's findings cell displayed (the output starting with ``## Findings``), if any."""
    import nbformat

    for cell in reversed(nbformat.read(ipynb, as_version=4).cells):
        for output in cell.get("outputs", []):
            text = output.get("data", {}).get("text/markdown")
            if text and "".join(text).lstrip().startswith(MARKER):
                return "".join(text)
    return None


def run_report(config_path: str | Path = "configs/smoke.yaml", run_name: str | None = None,
               notebooks: Sequence[str] | None = None) -> Path:
    """Execute the chosen notebooks in order into ``reports/<run>/`` and return ``index.html``.

    Re-running only some notebooks under an existing ``--run`` keeps the other
    notebooks' entries in the index. Raises :class:`ReportError` after writing the
    index if a notebook failed (its HTML shows the traceback); later notebooks are
    not run.
    """
    cfg_path = resolve_config_path(config_path)
    sections = load_sections(cfg_path)
    chosen = select(notebooks)
    run = run_name or f"{cfg_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not re.fullmatch(r"[\w.-]+", run):
        raise ValueError(f"run name {run!r}: use letters, digits, '.', '_' and '-' only (it becomes a folder name).")
    train_dir = run_dirs(run)["train"]
    if any(nb.key == "04" for nb in chosen) and train_dir.exists() and any(train_dir.iterdir()):
        raise ValueError(f"{train_dir} already holds a training run: choose another --run name, or delete that folder.")
    for section, keys in unread_keys(cfg_path, chosen).items():
        log.warning("%s: %s keys %s are read by none of the chosen notebooks", cfg_path.name, section, keys)
    out = paths.REPORTS / run
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cfg_path, out / "config.yaml")
    prefer_passive_omp()  # inherited by the notebooks' kernels (stonklib.environment)
    t0 = time.perf_counter()
    entries = []
    for nb in chosen:
        entry = execute(nb, out, parameters_for(nb, sections, run))
        entries.append(entry)
        if entry["status"] != "ok":
            break
    report = {"run": run, "config": str(cfg_path), "seconds": round(time.perf_counter() - t0, 1),
              "runs_dir": str(paths.RUNS / run), "planted": planted_data(sections),
              "notebooks": _merge_entries(out / "report.json", entries)}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    index = write_index(out, report)
    failed = [e for e in entries if e["status"] != "ok"]
    if failed:
        raise ReportError(f"{failed[0]['notebook']} failed ({failed[0]['error']}); see {out / failed[0]['html']}")
    return index


def planted_data(sections: dict[str, Any]) -> str | None:
    """The planted rule of the data the report ran on (``stonk data build --plant``), or None for market labels."""
    from stonklib.workbook.explore import planted_rule

    dirs = [sections["data"].out_dir] if "data" in sections else []
    dirs += [getattr(sections[k], "data", None) for k in ("warmup", "train", "eval") if k in sections]
    return next((rule for d in dict.fromkeys(d for d in dirs if d) if (rule := planted_rule(d))), None)


def _merge_entries(previous: Path, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This run's entries plus, for notebooks not re-run, those of an earlier report.json, in workbook order."""
    kept = json.loads(previous.read_text())["notebooks"] if previous.is_file() else []
    by_stem = {e["notebook"]: e for e in kept} | {e["notebook"]: e for e in entries}
    order = [nb.stem for nb in NOTEBOOKS]
    return sorted(by_stem.values(), key=lambda e: order.index(e["notebook"]) if e["notebook"] in order else len(order))


# ------------------------------------------------------------------ index
_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #1f2328; line-height: 1.45; }
h1 { margin-bottom: .2rem; } .meta { color: #59636e; font-size: .9rem; margin-bottom: 1.5rem; }
.planted { background: #fff4ce; border: 2px solid #d4a72c; border-radius: 6px; padding: .2rem 1rem; margin-bottom: 1rem; }
.card { border: 1px solid #d1d9e0; border-radius: 8px; padding: .8rem 1.1rem; margin: 1rem 0; }
.card h2 { font-size: 1.15rem; margin: .2rem 0 .4rem; } .card h2 a { text-decoration: none; color: #0969da; }
.status { font-size: .8rem; padding: .1rem .5rem; border-radius: 1rem; margin-left: .5rem; vertical-align: middle; }
.ok { background: #dafbe1; color: #1a7f37; } .failed { background: #ffebe9; color: #cf222e; }
.findings h2 { display: none; } .findings { font-size: .92rem; } .links { font-size: .85rem; color: #59636e; }
code { background: #f6f8fa; padding: 0 .25rem; border-radius: 4px; }
"""


def write_index(out: Path, report: dict[str, Any]) -> Path:
    """``out/index.html``: one card per notebook with its status, wall time, links and findings."""
    from nbconvert.filters.markdown import markdown2html

    cards = []
    for e in report["notebooks"]:
        link = html.escape(e["html"] or e["ipynb"])
        findings = (markdown2html(e["findings"]) if e["findings"] else
                    f"<p>{html.escape(e['error'] or 'no findings written')}</p>")
        cards.append(
            f'<div class="card"><h2><a href="{link}">{html.escape(e["title"])}</a>'
            f'<span class="status {e["status"]}">{e["status"]}, {e["seconds"]:.0f} s</span></h2>'
            f'<div class="findings">{findings}</div>'
            f'<div class="links"><a href="{link}">HTML</a> · <a href="{html.escape(e["ipynb"])}">executed notebook</a>'
            f' · parameters: <code>{html.escape(json.dumps(e["parameters"], default=str))}</code></div></div>')
    banner = planted_banner(report.get("planted"))
    banner = f"<div class='planted'>{markdown2html(banner)}</div>" if banner else ""
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>stonk report {html.escape(report['run'])}</title>"
            f"<style>{_STYLE}</style></head><body><h1>Stonk workbook report: {html.escape(report['run'])}</h1>{banner}"
            f"<div class='meta'>config <code>{html.escape(Path(report['config']).name)}</code> "
            f"(<a href='config.yaml'>copy</a>) · {len(report['notebooks'])} notebook(s) in {report['seconds']:.0f} s · "
            f"training and evaluation outputs in <code>{html.escape(report['runs_dir'])}</code> · "
            f"{time.strftime('%Y-%m-%d %H:%M')}</div>{''.join(cards)}</body></html>")
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
