"""The house rules, read off the imports: the folders are the pipeline and imports point down it.

Every ``import`` in ``stonklib`` counts, the ones inside functions too (a lazy import hides a cycle; it
does not remove it). The checker is run twice: on the package, where every rule must hold, and on
small packages written here with one planted violation each, where it must report it.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "stonklib"

#: The pipeline, in the order the data flows (``docs/README.md`` draws it). A module may import its own
#: stage and the stages before it; ``BASE`` modules serve every stage and import no stage.
STAGES = ("data", "prompts", "kernels", "sampling", "rewards", "update", "grpo", "warmup", "evaluate", "pipeline",
          "workbook", "cli")
BASE = ("config", "paths", "environment", "models")


# ------------------------------------------------------------------------ the checker
def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path) -> dict[str, list[tuple[str, int]]]:
    """module -> [(imported module inside the package, line)], lazy imports included.

    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``.
    """
    pkg = root.name
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    out: dict[str, list[tuple[str, int]]] = {}
    for mod, path in modules.items():
        edges = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == pkg]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == pkg:
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    edges.append((sub if sub in modules else node.module, node.lineno))
        out[mod] = [(m, line) for m, line in edges if m != mod]
    return out


def cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w, _ in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def rank(module: str) -> int:
    """-1 for the base modules (and the package itself), else the stage's place in the pipeline."""
    stage = stage_of(module)
    return -1 if stage is None or stage in BASE else STAGES.index(stage)


def violations(root: Path) -> list[str]:
    """Every broken rule, one line each (empty: the house is in order)."""
    graph, bad = imports(root), []
    pkg = root.name
    for comp in cycles(graph):
        bad.append(f"import cycle: {' -> '.join(comp)}")
    for mod, edges in sorted(graph.items()):
        src = root.parent / (mod.replace(".", "/") + ".py")
        if not src.is_file():
            src = root.parent / mod.replace(".", "/") / "__init__.py"
        text = src.read_text()
        for dep, line in edges:
            if stage_of(mod) in STAGES and stage_of(dep) is not None and stage_of(dep) not in BASE \
                    and rank(dep) > rank(mod):
                bad.append(f"{mod}:{line} imports {dep}, which is further down the pipeline")
            if stage_of(mod) in BASE and stage_of(dep) in STAGES:
                bad.append(f"{mod}:{line}: a base module imports the stage {dep}")
            if stage_of(dep) == "workbook" and stage_of(mod) not in ("workbook", "cli"):
                bad.append(f"{mod}:{line} imports {dep}: only the workbook and the CLI may")
            if stage_of(dep) == "kernels" and stage_of(mod) not in ("kernels", "sampling", "update"):
                bad.append(f"{mod}:{line} imports {dep}: only sampling/ and update/ run kernels")
        if mod == f"{pkg}.grpo.loss":
            for dep, line in edges:
                if stage_of(dep) not in BASE:
                    bad.append(f"{mod}:{line} imports {dep}: the loss is pure tensor maths")
            if "triton" in text:
                bad.append(f"{mod}: mentions triton: the loss imports no kernel")
        if stage_of(mod) != "cli" and ("import argparse" in text or "ArgumentParser(" in text):
            bad.append(f"{mod}: parses arguments: only the CLI does")
        if "torch.optim." in text and mod not in (f"{pkg}.grpo.trainer", f"{pkg}.warmup.trainer"):
            bad.append(f"{mod}: builds an optimizer: only the GRPO and warm-up trainers own one")
    return bad


# ------------------------------------------------------------------------ the package
def test_stonklib_keeps_the_house_rules():
    assert violations(PACKAGE) == []


def test_every_stage_is_a_folder_and_the_listing_reads_as_the_pipeline():
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__"))
    stages = [s for s in STAGES if (PACKAGE / s).is_dir()]
    assert set(folders) - set(BASE) == set(stages), folders
    assert {"data", "sampling", "rewards", "update", "grpo", "evaluate", "workbook"} <= set(stages)


def test_no_module_reads_the_environment_outside_the_documented_places():
    """``stonklib.environment`` lists every variable the package reads; nothing else may read one."""
    allowed = {"environment.py", "paths.py", "cli.py", "grpo/distributed.py", "kernels/__init__.py"}
    readers = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "os.environ" in p.read_text()}
    assert readers <= allowed, readers - allowed
    assert not any("STONKLIB_" in p.read_text() for p in PACKAGE.rglob("*.py"))


# ------------------------------------------------------------------------ the checker on planted faults
def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "stonklib"
    for name, body in {"__init__.py": "", "config.py": "", **files}.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(body))
    for d in {p.parent for p in root.rglob("*.py")}:
        (d / "__init__.py").touch()
    return root


@pytest.mark.parametrize("files, message", [
    ({"data/a.py": "def f():\n    from stonklib.data import b\n", "data/b.py": "from stonklib.data import a\n"},
     "import cycle: stonklib.data.a -> stonklib.data.b"),  # why: a lazy import still closes a loop
    ({"data/a.py": "from stonklib.grpo import trainer\n", "grpo/trainer.py": ""},
     "imports stonklib.grpo.trainer, which is further down"),  # why: data must not know the loop
    ({"evaluate/a.py": "from stonklib.workbook import plots\n", "workbook/plots.py": ""},
     "only the workbook and the CLI may"),  # why: the workbook sits on top
    ({"grpo/loss.py": "from stonklib.kernels import logp\n", "kernels/logp.py": ""},
     "the loss is pure tensor maths"),  # why: the loss imports no kernel
    ({"grpo/loss.py": "import triton\n"}, "mentions triton"),  # why: nor Triton itself
    ({"grpo/trainer.py": "import argparse\n"}, "only the CLI does"),  # why: one argument parser
    ({"config.py": "from stonklib.grpo import trainer\n", "grpo/trainer.py": ""},
     "a base module imports the stage"),  # why: the config serves every stage, imports none
    ({"evaluate/a.py": "import torch\nopt = torch.optim.AdamW([])\n"}, "builds an optimizer"),
])
def test_the_checker_reports_each_planted_violation(tmp_path, files, message):
    found = violations(_package(tmp_path, files))
    assert found and any(message in f for f in found), found


def test_the_checker_passes_a_clean_package(tmp_path):
    root = _package(tmp_path, {"data/a.py": "", "grpo/trainer.py": "from stonklib.data import a\nimport torch\n"
                                                                   "opt = torch.optim.AdamW([])\n",
                               "workbook/plots.py": "from stonklib.grpo import trainer\n"})
    assert violations(root) == []
