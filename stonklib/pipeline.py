"""The whole chain from one config file: warm-up -> Stage I -> Stage II -> evaluation (``stonk pipeline``).

The YAML has one section per stage, each the fields of that stage's config, run in this order when
present: ``data`` (built first if missing), ``warmup`` (:class:`~stonklib.config.WarmupConfig`),
``stage1`` and ``stage2`` (:class:`~stonklib.config.TrainConfig`; a lone ``train`` section is one GRPO
stage), ``eval`` (:class:`~stonklib.config.EvalConfig`). Each stage starts from the previous one's
``output_dir/final`` unless its section names ``stage1_model`` itself; the evaluation scores the last
stage's final adapter on top of the model that stage started from.

Every section is validated before anything runs, so a typo in ``stage2`` fails in a second, not after
the warm-up. A stage whose ``final/`` exists is skipped, so a re-run after a crash continues with the
first unfinished stage (with ``resume``, that stage continues from its last checkpoint).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from stonklib import config as C

log = logging.getLogger(__name__)

GRPO_SECTIONS = ("stage1", "stage2", "train")
ORDER = ("data", "warmup", *GRPO_SECTIONS, "eval")


@dataclasses.dataclass
class Step:
    section: str
    cfg: Any
    starts_from: str | None = None  # the previous stage's output_dir/final, filled in when it has run

    @property
    def final(self) -> Path | None:
        out = getattr(self.cfg, "output_dir", None)
        return Path(out) / "final" if out else None


def plan(config_path: str | Path, resume: bool = False) -> list[Step]:
    """The stages of ``config_path`` in run order, each config validated; no model is loaded."""
    data = C.load_yaml(config_path)
    unknown = sorted(set(data) - set(ORDER))
    if unknown:
        raise C.ConfigError(f"{config_path}: unknown section(s) {unknown}; a pipeline file has "
                            f"{', '.join(ORDER)} (each optional).")
    if "train" in data and ({"stage1", "stage2"} & set(data)):
        raise C.ConfigError(f"{config_path}: give either a train: section or stage1:/stage2: sections, not both.")
    if not {"warmup", *GRPO_SECTIONS} & set(data):
        raise C.ConfigError(f"{config_path}: no training section (warmup, stage1, stage2 or train): nothing to run.")
    steps, previous = [], None
    for section in ORDER:
        if section not in data:
            continue
        values = dict(data[section] or {})
        if section == "data":
            steps.append(Step(section, C.build(C.DataConfig, **values)))
            continue
        if section == "eval":
            steps.append(Step(section, _eval_config(values, previous, config_path)))
            continue
        cls = C.WarmupConfig if section == "warmup" else C.TrainConfig
        if resume:
            values["resume"] = True
        starts_from = None
        if cls is C.TrainConfig and "stage1_model" not in values and previous is not None:
            starts_from = str(previous.final)
            # Validated against the model the previous stage starts from, which exists; the real path is set
            # once the previous stage has written its final/.
            values["stage1_model"] = _start_model(previous)
        step = Step(section, _build(cls, values, section, config_path), starts_from)
        steps.append(step)
        previous = step
    return steps


def _build(cls, values: dict, section: str, config_path) -> Any:
    values = C.drop_retired(cls, values, f"{config_path} [{section}]")
    try:
        return C.build(cls, **values)
    except C.ConfigError as e:
        raise C.ConfigError(f"{config_path} [{section}]: {e}") from e


def _start_model(step: Step) -> str:
    """The model ``step``'s config was validated with (an existing one: before the chain runs, its own start)."""
    return getattr(step.cfg, "stage1_model", None) or step.cfg.model


def _eval_config(values: dict, last: Step | None, config_path) -> C.EvalConfig:
    """The evaluation of the last training stage's final adapter, unless the section names a model itself."""
    if last is not None and "model" not in values and "predictions" not in values:
        values.setdefault("model", _start_model(last))
    return _build(C.EvalConfig, values, "eval", config_path)


def run_pipeline(config_path: str | Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run every stage of ``config_path`` in order (see the module docstring); stage -> its summary."""
    from stonklib.data import build_dataset, is_built

    steps = plan(config_path, resume)
    results: dict[str, Any] = {}
    last_final: Path | None = None
    for i, step in enumerate(steps):
        cfg = step.cfg
        if step.starts_from is not None:
            cfg = dataclasses.replace(cfg, stage1_model=step.starts_from)
        if step.section == "data":
            results["data"] = "built" if is_built(cfg.out_dir) else build_dataset(cfg, progress=progress)
            continue
        if step.section == "eval":
            results["eval"] = _evaluate(cfg, last_final, steps[i - 1] if i else None, progress)
            continue
        if step.final is not None and (step.final / "adapter_config.json").is_file():
            log.info("%s: %s exists, skipping the stage", step.section, step.final)
            results[step.section] = {"skipped": True, "final": str(step.final)}
        elif step.section == "warmup":
            from stonklib.warmup import run_warmup

            results["warmup"] = run_warmup(cfg, progress=progress)
        else:
            from stonklib.grpo.launch import run_training

            results[step.section] = run_training(cfg, progress=progress)
        last_final = step.final
        for later in steps[i + 1:]:  # the next stage starts where this one ended
            if later.starts_from is not None:
                later.starts_from = str(step.final)
                break
    return results


def _evaluate(cfg: C.EvalConfig, adapter: Path | None, last: Step | None, progress: bool) -> dict[str, Any]:
    from stonklib.evaluate import run_evaluate, verdict

    if adapter is not None and cfg.adapter is None and cfg.predictions is None:
        start = last.starts_from if last is not None and last.starts_from else cfg.model
        cfg = dataclasses.replace(cfg, model=start, adapter=str(adapter))
    metrics = run_evaluate(cfg, progress=progress)
    return {"out": cfg.out, "accuracy": metrics.get("accuracy"), "parse_rate": metrics.get("parse_rate"),
            "verdict": verdict(metrics)}
