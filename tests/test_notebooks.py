"""The five workbook notebooks: structure checks (fast) and a headless run under the smoke config (slow).

Fast checks, on the notebooks as stored in git:
- exactly one cell tagged ``parameters``, holding only plain assignments, whose names are fields of the
  notebook's config dataclass (via ``papermill.inspect_notebook``);
- no ``def``, ``class`` or ``lambda`` in any code cell: functions live in stonklib, with tests;
- outputs stripped (no outputs, no execution counts);
- a title, a purpose paragraph, a "What to look at" section and a closing findings cell;
- every ``module.name`` the notebooks use from stonklib exists.

The slow test runs ``stonk report`` with ``configs/smoke.yaml`` (all five notebooks, papermill, nbconvert)
into a temporary reports/ and runs/ and checks that each notebook completed, drew at least one figure and
wrote its findings, and that the index links every rendering.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json

import nbformat
import papermill as pm
import pytest

from stonklib import paths
from stonklib.workbook.findings import MARKER
from stonklib.workbook.report import NOTEBOOKS

IDS = [nb.stem for nb in NOTEBOOKS]


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.fixture(scope="module", params=NOTEBOOKS, ids=IDS)
def notebook(request):
    nb = request.param
    return nb, nbformat.read(nb.path, as_version=4)


def test_all_five_notebooks_exist():
    assert sorted(p.name for p in paths.NOTEBOOKS.glob("*.ipynb")) == [f"{stem}.ipynb" for stem in IDS]


#: The notebooks that run a stage's own command (data build, train, evaluate): their parameters cell lists every
#: field of the config, as the command's flags do (02 and 03 read a few TrainConfig fields for their studies).
MIRRORS_ITS_CONFIG = {"01", "04", "05"}


#: Dict parameters that hold a second config, key by key (04's ``warmup``: the YAML's ``warmup:`` section).
NESTED = {"04": {"warmup": "WarmupConfig"}}


def test_parameters_are_config_fields(notebook):
    nb, node = notebook
    from stonklib import config

    nested = NESTED.get(nb.key, {})
    declared = set(pm.inspect_notebook(str(nb.path))) - set(nested)
    fields = {f.name for f in dataclasses.fields(nb.cls)}
    assert declared, f"{nb.stem} has no parameters"
    cell = next(c for c in node.cells if "parameters" in c.get("metadata", {}).get("tags", []))
    values = {s.targets[0].id: ast.literal_eval(s.value) for s in ast.parse(cell.source).body}
    for name, cls_name in nested.items():
        sub = {f.name for f in dataclasses.fields(getattr(config, cls_name))}
        assert name in values and (values[name] is None or set(values[name]) == sub), \
            f"{nb.stem}: `{name}` must list every {cls_name} field (or be None)"
    assert declared <= fields, f"{nb.stem}: {sorted(declared - fields)} are not {nb.cls.__name__} fields"
    if nb.key in MIRRORS_ITS_CONFIG:
        assert declared == fields, (f"{nb.stem}: {sorted(fields - declared)} missing from the parameters cell; "
                                    f"stonklib.workbook.parameters_source writes one line per field")


def test_one_parameters_cell_of_plain_assignments(notebook):
    nb, node = notebook
    tagged = [c for c in node.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code", f"{nb.stem}: need exactly one parameters code cell"
    for stmt in ast.parse(tagged[0].source).body:
        # why: derived values belong in the next cell, so a papermill override reaches them
        assert isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets), \
            f"{nb.stem}: the parameters cell may only assign literals to names: {ast.unparse(stmt)}"
        ast.literal_eval(stmt.value)  # raises on anything but a literal


def test_no_function_or_class_definitions(notebook):
    nb, node = notebook
    for i, cell in enumerate(code_cells(node)):
        for n in ast.walk(ast.parse(cell.source)):
            assert not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)), \
                f"{nb.stem} code cell {i} defines {type(n).__name__}: move it into stonklib with a test"


def test_outputs_are_stripped(notebook):
    nb, node = notebook
    for cell in code_cells(node):
        assert cell.outputs == [] and cell.execution_count is None, f"{nb.stem}: strip outputs before committing"


def test_story_structure(notebook):
    nb, node = notebook
    first = node.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), f"{nb.stem}: start with a title"
    assert "**Purpose.**" in first.source and "## What to look at" in first.source
    assert nb.cls.__name__ in first.source, f"{nb.stem}: say which config dataclass the parameters come from"
    last = code_cells(node)[-1].source
    assert "Markdown(findings." in last, f"{nb.stem}: end with a findings cell built by stonklib.workbook.findings"


def test_stonklib_names_used_by_notebooks_exist(notebook):
    nb, node = notebook
    tree = ast.parse("\n".join(c.source for c in code_cells(node)))
    modules = {}
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("stonklib"):
            for alias in n.names:
                target = f"{n.module}.{alias.name}"
                try:
                    modules[alias.asname or alias.name] = importlib.import_module(target)
                except ModuleNotFoundError:
                    assert hasattr(importlib.import_module(n.module), alias.name), f"{nb.stem}: no {target}"
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in modules:
            assert hasattr(modules[n.value.id], n.attr), f"{nb.stem}: {n.value.id}.{n.attr} does not exist"


# ------------------------------------------------------------------ the real run
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_smoke_report_runs_all_notebooks(tmp_path, monkeypatch):
    from stonklib.cli import main

    if not (paths.EMBEDDED_MODEL / "config.json").is_file():
        pytest.skip("embedded model not fetched: run `make model`")
    monkeypatch.setattr(paths, "REPORTS", tmp_path / "reports")
    monkeypatch.setattr(paths, "RUNS", tmp_path / "runs")
    assert main(["report", "--config", "configs/smoke.yaml", "--run", "smoke-test"]) == 0

    out = tmp_path / "reports" / "smoke-test"
    report = json.loads((out / "report.json").read_text())
    assert [e["notebook"] for e in report["notebooks"]] == IDS
    for stem in IDS:
        node = nbformat.read(out / f"{stem}.ipynb", as_version=4)
        outputs = [o for c in code_cells(node) for o in c.outputs]
        assert not [o for o in outputs if o.output_type == "error"], f"{stem} raised"
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{stem} drew no figure"
        findings = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
        assert any(f.startswith(MARKER) for f in findings), f"{stem} wrote no findings"
        assert (out / f"{stem}.html").stat().st_size > 10_000
    index = (out / "index.html").read_text()
    assert all(f'href="{stem}.html"' in index for stem in IDS) and index.count("status ok") == 5
    assert (tmp_path / "runs" / "smoke-test" / "train" / "final" / "adapter_config.json").is_file()
    evaluated = json.loads((tmp_path / "runs" / "smoke-test" / "eval" / "stage2" / "metrics.json").read_text())
    assert evaluated["config"]["adapter"].endswith("train/final")
    assert not list(paths.NOTEBOOKS.glob("*.html")), "executed copies must not land in notebooks/"
