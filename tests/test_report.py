"""stonklib.workbook.report: notebook selection, YAML -> parameters, validation, the index; a real papermill run of
two toy notebooks (one passing, one failing) so the mechanics are tested without the model."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from stonklib import paths
from stonklib.config import ConfigError
from stonklib.workbook import report

SMOKE = paths.CONFIGS / "smoke.yaml"


def test_select_by_number_or_stem_in_workbook_order():
    assert [nb.key for nb in report.select(None)] == ["01", "02", "03", "04", "05"]
    assert [nb.key for nb in report.select(["05", "01_data_exploration"])] == ["01", "05"]
    with pytest.raises(ValueError, match="unknown notebook"):
        report.select(["06"])


def test_each_section_maps_to_its_dataclass():
    assert {nb.key: (nb.section, nb.cls.__name__) for nb in report.NOTEBOOKS} == {
        "01": ("data", "DataConfig"), "02": ("train", "TrainConfig"), "03": ("train", "TrainConfig"),
        "04": ("train", "TrainConfig"), "05": ("eval", "EvalConfig")}


def test_smoke_config_resolves_and_fills_each_notebook(tmp_path, monkeypatch, tokenizer_dir):
    monkeypatch.setattr(paths, "RUNS", tmp_path / "runs")
    cfg_path = report.resolve_config_path("configs/smoke.yaml")
    sections = report.load_sections(cfg_path)
    raw = report.C.load_yaml(cfg_path)
    nbs = {nb.key: nb for nb in report.NOTEBOOKS}
    p01 = report.parameters_for(nbs["01"], sections, "r1")
    assert set(p01) == set(report.declared_parameters(nbs["01"].path)) and p01["embargo"] == raw["data"]["embargo"]
    p02 = report.parameters_for(nbs["02"], sections, "r1")
    assert p02["prompt_version"] == "compact_format" and "num_generations" not in p02
    p04 = report.parameters_for(nbs["04"], sections, "r1")
    assert p04["output_dir"] == str(tmp_path / "runs" / "r1" / "train")
    assert {k: p04[k] for k in raw["train"] if k != "output_dir"} == raw["train"]  # the YAML reaches 04 whole
    assert p04["lora_r"] == 8  # resolved as `stonk train` resolves it (Stage II default)
    assert p04["warmup"]["output_dir"] == str(tmp_path / "runs" / "r1" / "warmup")  # the warm-up runs first in 04
    assert {k: p04["warmup"][k] for k in raw["warmup"]} == raw["warmup"]
    p05 = report.parameters_for(nbs["05"], sections, "r1")
    assert p05["out"] == str(tmp_path / "runs" / "r1" / "eval") and p05["adapter"] is None
    final = tmp_path / "runs" / "r1" / "train" / "final"
    final.mkdir(parents=True)
    (final / "adapter_config.json").write_text("{}")
    assert report.parameters_for(nbs["05"], sections, "r1")["adapter"] == str(final)
    assert report.unread_keys(cfg_path, report.select(None)) == {}


def test_a_config_value_absent_from_yaml_takes_the_dataclass_default(tmp_path, tokenizer_dir):
    # why: the notebook's own default (max_steps = 3, for quick interactive runs) must not leak into a report
    (tmp_path / "c.yaml").write_text(f"train:\n  stage1_model: {paths.EMBEDDED_MODEL}\n  epochs: 1\n")
    p04 = report.parameters_for(report.select(["04"])[0], report.load_sections(tmp_path / "c.yaml"), "r")
    assert p04["max_steps"] is None and p04["epochs"] == 1 and p04["max_train_samples"] == 5000


def test_paths_inside_the_project_stay_relative():
    assert report._shown(paths.RUNS / "x" / "train") == "runs/x/train"


def test_resolve_config_path_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert report.resolve_config_path("configs/smoke.yaml") == SMOKE.resolve()
    with pytest.raises(ConfigError, match="does not exist"):
        report.resolve_config_path("configs/nope.yaml")


@pytest.mark.parametrize("text, match", [
    ("data:\n  embargo: 3\nmodel:\n  x: 1\n", "unknown section"),  # why: a section no notebook reads
    ("data:\n  embargoo: 3\n", "embargoo"),  # why: a typo in a field name fails before anything runs
    ("eval:\n  split: sideways\n  model: org/m\n", "split"),  # why: a value the dataclass rejects
])
def test_load_sections_rejects_bad_yaml(tmp_path, text, match):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        report.load_sections(tmp_path / "c.yaml")


def test_configs_for_gpu_users_validate_as_yaml():
    for name in ("stage1.yaml", "stage2.yaml"):
        raw = report.C.load_yaml(paths.CONFIGS / name)
        assert set(raw) <= {"data", "warmup", "train", "eval"}
        fields = {f for f in report.C.TrainConfig.__dataclass_fields__}
        assert set(raw["train"]) <= fields
        assert set(raw.get("warmup", {})) <= set(report.C.WarmupConfig.__dataclass_fields__)
    assert report.C.load_yaml(paths.CONFIGS / "stage1.yaml")["train"]["stage1_model"] == "runs/warmup/final"
    assert report.C.load_yaml(paths.CONFIGS / "stage2.yaml")["train"]["stage1_model"] == "runs/stage1/final"


def test_write_index_links_and_renders_findings(tmp_path):
    entries = [{"notebook": "01_data_exploration", "status": "ok", "error": None, "seconds": 3.2,
                "parameters": {"source": "sp500"}, "ipynb": "01_data_exploration.ipynb",
                "html": "01_data_exploration.html", "title": "01 · Data <exploration>",
                "findings": "## Findings\n\n- up share **51%**"},
               {"notebook": "05_evaluation", "status": "failed", "error": "ValueError: boom", "seconds": 1.0,
                "parameters": {}, "ipynb": "05_evaluation.ipynb", "html": "05_evaluation.html", "title": "05",
                "findings": None}]
    index = report.write_index(tmp_path, {"run": "r", "config": "/x/smoke.yaml", "seconds": 4.2,
                                          "runs_dir": "/x/runs/r", "notebooks": entries})
    page = index.read_text()
    assert 'href="01_data_exploration.html"' in page and "&lt;exploration&gt;" in page
    assert "<strong>51%</strong>" in page and "ValueError: boom" in page and "status failed" in page


# ------------------------------------------------------------- toy notebooks
def toy_notebook(path: Path, params: str, body: str) -> None:
    cells = [new_markdown_cell("# Toy title\n\n**Purpose.** test"), new_code_cell(params), new_code_cell(body)]
    cells[1].metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def toy_project(tmp_path, monkeypatch):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    toy_notebook(nbdir / "01_data_exploration.ipynb", 'source = "csv"\nembargo = 1',
                 "from IPython.display import Markdown, display\n"
                 "display(Markdown(f'## Findings\\n\\n- source {source}, embargo {embargo}'))")
    toy_notebook(nbdir / "05_evaluation.ipynb", 'model = None\nout = "x"', "raise ValueError(f'no model {model}')")
    monkeypatch.setattr(paths, "NOTEBOOKS", nbdir)
    monkeypatch.setattr(paths, "REPORTS", tmp_path / "reports")
    monkeypatch.setattr(paths, "RUNS", tmp_path / "runs")
    (tmp_path / "c.yaml").write_text("data:\n  source: sp500\n  embargo: 4\neval:\n  model: org/m\n")
    return tmp_path


def test_run_report_executes_renders_and_indexes(toy_project):
    index = report.run_report(toy_project / "c.yaml", run_name="toy", notebooks=["01"])
    out = toy_project / "reports" / "toy"
    assert index == out / "index.html"
    assert sorted(p.name for p in out.iterdir()) == ["01_data_exploration.html", "01_data_exploration.ipynb",
                                                     "config.yaml", "index.html", "report.json"]
    executed = nbformat.read(out / "01_data_exploration.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    entry = json.loads((out / "report.json").read_text())["notebooks"][0]
    assert entry["parameters"] == {"source": "sp500", "embargo": 4} and entry["status"] == "ok"
    assert entry["findings"].startswith("## Findings") and "embargo 4" in entry["findings"]
    assert "source sp500, embargo 4" in index.read_text() and entry["title"] == "Toy title"
    assert not list((toy_project / "notebooks").glob("*.html"))  # executed copies never go back


def test_failing_notebook_is_reported_and_kept_in_the_index(toy_project):
    report.run_report(toy_project / "c.yaml", run_name="toy", notebooks=["01"])
    with pytest.raises(report.ReportError, match="05_evaluation failed.*no model org/m"):
        report.run_report(toy_project / "c.yaml", run_name="toy", notebooks=["05"])
    out = toy_project / "reports" / "toy"
    entries = json.loads((out / "report.json").read_text())["notebooks"]
    assert [(e["notebook"], e["status"]) for e in entries] == [("01_data_exploration", "ok"), ("05_evaluation", "failed")]
    assert (out / "05_evaluation.html").is_file() and "no model org/m" in (out / "05_evaluation.html").read_text()


def test_run_report_refuses_bad_names_and_an_existing_training_run(toy_project):
    with pytest.raises(ValueError, match="run name"):
        report.run_report(toy_project / "c.yaml", run_name="../escape", notebooks=["01"])
    (toy_project / "runs" / "old" / "train").mkdir(parents=True)
    (toy_project / "runs" / "old" / "train" / "train_metrics.jsonl").write_text("")
    (toy_project / "c.yaml").write_text("data:\n  source: sp500\n")
    with pytest.raises(ValueError, match="already holds a training run"):
        report.run_report(toy_project / "c.yaml", run_name="old", notebooks=["04"])


def test_cli_report_prints_a_clean_error(toy_project, capsys):
    from stonklib.cli import main

    assert main(["report", "--config", str(toy_project / "c.yaml"), "--notebooks", "07"]) == 1
    assert "unknown notebook" in capsys.readouterr().err
