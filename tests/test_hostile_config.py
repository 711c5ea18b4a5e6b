"""Hostile config input (issue #21): every value is checked against its field's type, once, for YAML, flags
and code alike; what is unambiguous is converted, the rest is an error that names the field, and all of
it happens before any model loads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from stonklib import config as C
from stonklib.config.stages import PROMPT_VERSIONS
from stonklib.prompts import TEMPLATES

HUB = "Qwen/Qwen2.5-1.5B-Instruct"  # a hub id passes the model check without a download


def train_yaml(tmp_path: Path, values: dict, flat: dict | None = None) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump({**(flat or {}), "train": {"stage1_model": HUB, **values}}))
    return p


def from_yaml_text(tmp_path: Path, text: str) -> C.TrainConfig:
    """The YAML as a user writes it (so PyYAML's own reading of ``5e-6`` or ``"false"`` is what is tested)."""
    p = tmp_path / "run.yaml"
    p.write_text(f"train:\n  stage1_model: {HUB}\n" + "".join(f"  {line}\n" for line in text.splitlines()))
    return C.build(C.TrainConfig, p, section="train")


# ------------------------------------------------------------------ converted: the meaning is unambiguous
@pytest.mark.parametrize(("line", "field", "value"), [
    ("lr: 5e-6", "lr", 5e-6),                       # PyYAML reads 5e-6 as a string
    ("lr: '3e-4'", "lr", 3e-4),
    ("batch_size: 2.0", "batch_size", 2),           # a whole float for an int field
    ("batch_size: '4'", "batch_size", 4),
    ("max_steps: 1e3", "max_steps", 1000),
    ("trust_remote_code: 'false'", "trust_remote_code", False),
    ("trust_remote_code: 'False'", "trust_remote_code", False),
    ("trust_remote_code: 'no'", "trust_remote_code", False),
    ("trust_remote_code: 'off'", "trust_remote_code", False),
    ("quantize: 'no'", "quantize", False),
    ("quantize: 'yes'", "quantize", True),
    ("quantize: on", "quantize", True),              # a YAML boolean
    ("reward_weights: {format: '2'}", "reward_weights", {"format": 2.0}),
])
def test_unambiguous_values_are_converted(tmp_path, line, field, value):
    cfg = from_yaml_text(tmp_path, line)
    got = getattr(cfg, field)
    assert got == value and type(got) is type(value)


# ------------------------------------------------------------------ errors that name the field
@pytest.mark.parametrize(("line", "names"), [
    ("batch_size: four", ["batch_size", "whole number"]),
    ("batch_size: 2.5", ["batch_size", "whole number"]),
    ("lr: fast", ["lr", "number"]),
    ("lr: .nan", ["lr", "finite"]),
    ("trust_remote_code: 'maybe'", ["trust_remote_code", "true or false"]),
    ("trust_remote_code: 0", ["trust_remote_code", "true or false"]),
    ("quantize: 'nope'", ["quantize"]),
    ("lora_target_modules: q_proj", ["lora_target_modules", "[q_proj]"]),
    ("reward_weights: {direction: .nan}", ["reward_weights.direction", "finite"]),
    ("reward_weights: {direction: .inf}", ["reward_weights.direction", "finite"]),
    ("reward_weights: {direction: abc}", ["reward_weights.direction"]),
    ("reward_weights: [1, 2]", ["reward_weights", "mapping"]),
    ("prompt_version: fancy", ["prompt_version", "compact_format"]),
    ("epochs: null", ["epochs", "null"]),
])
def test_wrong_values_are_errors_that_name_the_field(tmp_path, line, names):
    with pytest.raises(C.ConfigError) as e:
        from_yaml_text(tmp_path, line)
    for name in names:
        assert name in str(e.value)


def test_every_config_checks_its_types():
    with pytest.raises(C.ConfigError, match="history_window"):
        C.DataConfig(history_window="many")
    assert C.DataConfig(val_frac="0.2").val_frac == 0.2
    with pytest.raises(C.ConfigError, match="greedy"):
        C.EvalConfig(predictions=None, model=HUB, greedy="sometimes")
    with pytest.raises(C.ConfigError, match="prompt_version"):
        C.EvalConfig(model=HUB, prompt_version="nope")
    with pytest.raises(C.ConfigError, match="direction_weight"):
        C.WarmupConfig(model=HUB, direction_weight="heavy")


def test_flags_and_yaml_are_checked_alike(tmp_path):
    """The CLI hands its parsed flags to the same constructor: a flag value goes through the same coercion."""
    from stonklib import cli

    parser = cli.build_parser()
    args = parser.parse_args(["train", "--config", str(train_yaml(tmp_path, {})), "--lr", "5e-6"])
    assert cli.config_from_args(C.TrainConfig, args).lr == 5e-6


def test_keys_beside_a_section_are_an_error_that_lists_them(tmp_path):
    p = train_yaml(tmp_path, {"lr": 1e-5}, flat={"batch_size": 7, "lr": -5})
    with pytest.raises(C.ConfigError) as e:
        C.build(C.TrainConfig, p, section="train")
    assert "['batch_size', 'lr']" in str(e.value) and "ignored" in str(e.value)


def test_the_prompt_names_in_the_config_are_the_templates():
    assert set(PROMPT_VERSIONS) == set(TEMPLATES)


# ------------------------------------------------------------------ no remote code from a quoted "false"
def remote_code_model(tmp_path: Path) -> tuple[Path, Path]:
    """A model folder whose config maps the Auto classes to its own module, which writes a marker when imported."""
    model = tmp_path / "model"
    model.mkdir()
    marker = tmp_path / "remote_code_ran"
    (model / "configuration_marker.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import PretrainedConfig\n\n"
        "class MarkerConfig(PretrainedConfig):\n    model_type = 'marker'\n")
    (model / "config.json").write_text(json.dumps({
        "model_type": "marker", "architectures": ["MarkerForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_marker.MarkerConfig",
                     "AutoModelForCausalLM": "configuration_marker.MarkerConfig"}}))
    return model, marker


def load_with(cfg: C.TrainConfig) -> None:
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(cfg.stage1_model, trust_remote_code=cfg.trust_remote_code)
    except Exception:  # refusing to run the code is the point; what matters is whether it ran
        pass


@pytest.mark.parametrize("spelling", ["'false'", "'False'", "'FALSE'", "'no'", "'off'", "false", "no", "off"])
def test_a_false_spelling_never_runs_a_models_own_code(tmp_path, spelling):
    model, marker = remote_code_model(tmp_path)
    p = tmp_path / "run.yaml"
    p.write_text(f"train:\n  stage1_model: {model}\n  trust_remote_code: {spelling}\n")
    cfg = C.build(C.TrainConfig, p, section="train")
    assert cfg.trust_remote_code is False
    load_with(cfg)
    assert not marker.exists()


def test_the_marker_model_would_run_its_code_if_trusted(tmp_path):
    """The check above can fail: trusted, the same folder's module is imported and writes its marker."""
    model, marker = remote_code_model(tmp_path)
    load_with(C.TrainConfig(stage1_model=str(model), trust_remote_code="true"))
    assert marker.exists()


def test_coerce_leaves_typed_values_alone():
    assert C.coerce("x", float, 1) == 1.0 and isinstance(C.coerce("x", float, 1), float)
    assert C.coerce("x", int | None, None) is None
    assert C.coerce("x", list[str], ("a", "b")) == ["a", "b"]
    assert math.isclose(C.coerce("x", float, " 1e-3 "), 1e-3)
