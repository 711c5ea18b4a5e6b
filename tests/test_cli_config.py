"""Configs, flags and the seed's command line: one name everywhere, errors before any model loads."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
import yaml

from stonklib import cli
from stonklib import config as C

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("cls, command", [(C.TrainConfig, "train"), (C.EvalConfig, "evaluate"), (C.DataConfig, ["data", "build"])])
def test_every_config_field_is_a_flag(cls, command):
    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - reading argparse's own tables
    if isinstance(command, list):
        sub = sub[command[0]]._subparsers._group_actions[0].choices
        command = command[1]
    flags = {a.dest for a in sub[command]._actions}
    assert {f.name for f in dataclasses.fields(cls)} <= flags


def test_seed_flags_parse_to_the_seed_config(tmp_path):
    args = cli.build_parser().parse_args(
        ["train", "--stage1_model", "Qwen/Qwen2.5-1.5B-Instruct", "--epochs", "5", "--batch_size", "2", "--lr", "3e-6",
         "--kl_coef", "0.03", "--save_steps", "100", "--quantize", "--natural_distribution",
         "--max_train_samples", "100", "--output_dir", str(tmp_path / "r")])
    cfg = cli.config_from_args(C.TrainConfig, args)
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.kl_coef, cfg.save_steps) == (5, 2, 3e-6, 0.03, 100)
    assert cfg.quantize and cfg.natural_distribution and cfg.max_train_samples == 100 and cfg.lora_r == 8


def test_seed_defaults():
    cfg = C.TrainConfig(stage1_model="Qwen/Qwen2.5-1.5B-Instruct")
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.kl_coef, cfg.save_steps, cfg.max_train_samples) == (3, 4, 5e-6, 0.05, 50, 5000)
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (8, 16, 0.05)
    assert cfg.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert C.TrainConfig(stage=1, stage1_model="Qwen/Qwen2.5-1.5B-Instruct").lora_r == 16


def test_flags_override_yaml_sections(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  stage1_model: Qwen/Qwen2.5-1.5B-Instruct\n  lr: 1.0e-5\n  batch_size: 4\neval:\n  limit: 3\n")
    args = cli.build_parser().parse_args(["train", "--config", str(y), "--batch_size", "2"])
    cfg = cli.config_from_args(C.TrainConfig, args)
    assert cfg.lr == 1e-5 and cfg.batch_size == 2


@pytest.mark.parametrize("kw, message", [
    (dict(batch_size=3, grad_accum_steps=2), "divisors of 3"),  # why: micro-batches must hold whole groups
    (dict(num_generations=1), "at least 2 completions"),  # why: a group of one has no baseline
    (dict(lr=0.0), "learning rate must be > 0"),  # why: nothing would train
    (dict(loss_type="ppo"), "grpo, dr_grpo, dapo"),  # why: unknown aggregation
    (dict(reward_weights={"style": 1.0}), "unknown parts"),  # why: a typo must not pass silently
    (dict(stage1_model="models/does-not-exist"), "stonk model fetch"),  # why: a missing local dir is not a hub id
    (dict(data="/no/such/dir"), "stonk data build"),  # why: data dir must exist
])
def test_train_config_rejects_bad_values_with_a_fix(kw, message):
    kw.setdefault("stage1_model", "Qwen/Qwen2.5-1.5B-Instruct")
    with pytest.raises(C.ConfigError, match=message):
        C.TrainConfig(**kw)


def test_unknown_yaml_key_names_the_valid_ones(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("stage1_model: Qwen/Qwen2.5-1.5B-Instruct\nlearning_rate: 1.0e-5\n")
    with pytest.raises(C.ConfigError, match="learning_rate.*valid: .*lr"):
        C.build(C.TrainConfig, y)


HUB = "Qwen/Qwen2.5-1.5B-Instruct"  # a hub id passes the model check without a download
#: (config, how the retired key arrives, its value, what the error says or None: dropped with a warning)
RETIRED_CASES = [
    ("TrainConfig", "run_config", False, None),      # an old run's flat config.yaml, as dump_yaml wrote it: resumes
    ("TrainConfig", "run_config", "no", None),       # the old default spelt as the field read it
    ("TrainConfig", "section", False, None),
    ("WarmupConfig", "section", False, None),        # declared on RunConfig: both training configs retire it
    ("TrainConfig", "arguments", False, None),
    ("TrainConfig", "pipeline", False, None),        # a `stonk pipeline` file's section
    ("TrainConfig", "run_config", True, "decode_projection_kernels=True"),  # asked for what no longer exists
    ("TrainConfig", "section", 1, "decode_projection_kernels=1"),          # not a boolean the field took
    ("WarmupConfig", "section", True, "decode_projection_kernels=True"),
    ("TrainConfig", "arguments", True, "decode_projection_kernels=True"),
    ("TrainConfig", "pipeline", True, "decode_projection_kernels=True"),
]


@pytest.mark.parametrize(("cls_name", "how", "value", "error"), RETIRED_CASES)
def test_a_retired_key_at_its_old_default_is_dropped_and_any_other_value_refused(tmp_path, cls_name, how, value, error):
    cls = getattr(C, cls_name)
    values = {"TrainConfig": {"stage1_model": HUB}, "WarmupConfig": {"model": HUB}}[cls_name]
    values = {**values, "output_dir": str(tmp_path / "run"), "decode_projection_kernels": value}
    if how == "arguments":
        where, make = "the given values", lambda: C.build(cls, **values)
    elif how == "pipeline":
        from stonklib.pipeline import plan

        path = _write(tmp_path, "pipeline.yaml", yaml.safe_dump({"train": values}))
        where, make = f"{path} [train]", lambda: plan(path)[0].cfg
    else:
        section = C.SECTIONS[cls] if how == "section" else None
        path = _write(tmp_path, "run/config.yaml", yaml.safe_dump({section: values} if section else values))
        where, make = str(path), lambda: C.build(cls, path, section=section)
    if error is None:
        with pytest.warns(UserWarning, match="decode_projection_kernels") as caught:
            cfg = make()
        assert where in str(caught[0].message) and "delete the key" in str(caught[0].message)
        assert cfg.output_dir == str(tmp_path / "run") and not hasattr(cfg, "decode_projection_kernels")
        return
    with pytest.raises(C.ConfigError) as e:
        make()
    for part in (error, where, "no longer has this field", "benchmarks/RESULTS.md", "Delete the key decode_projection_kernels"):
        assert part in str(e.value)


def test_retired_names_are_neither_fields_nor_flags():
    """``RETIRED`` is a ClassVar: no field, flag, notebook parameter or YAML key of its own."""
    parser = cli.build_parser()
    flags = {a.dest for a in parser._subparsers._group_actions[0].choices["train"]._actions}  # noqa: SLF001
    for cls in (C.TrainConfig, C.WarmupConfig):
        names = {f.name for f in dataclasses.fields(cls)}
        assert cls.RETIRED and not ({"RETIRED", *cls.RETIRED} & (names | flags))


def test_cli_reports_config_errors_without_a_traceback(capsys):
    assert cli.main(["train", "--stage1_model", "Qwen/Qwen2.5-1.5B-Instruct", "--num_generations", "1"]) == 2
    assert "num_generations=1" in capsys.readouterr().err


def test_train_stage2_sh_usage_error():
    res = subprocess.run([str(ROOT / "train_stage2.sh")], capture_output=True, text=True)
    assert res.returncode == 2 and "usage" in res.stderr


def test_shipped_configs_are_valid():
    for name in ("stage1.yaml", "stage2.yaml", "smoke.yaml"):
        path = ROOT / "configs" / name
        if not path.exists():
            pytest.skip(f"{name} not written yet")
        data = C.load_yaml(path)
        train = data.get("train", data)
        names = {f.name for f in dataclasses.fields(C.TrainConfig)}
        assert set(train) <= names, f"{name}: unknown keys {set(train) - names}"


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_base_file_lies_under_its_variant_one_key_at_a_time(tmp_path):
    _write(tmp_path, "base.yaml", "stage1:\n  lr: 1.0e-4\n  kl_coef: 0.1\n  reward_weights: {direction: 1.0, format: 1.0}\n"
                                  "eval:\n  limit: 2000\n")
    variant = _write(tmp_path, "v/variant.yaml", "base: ../base.yaml\nstage1:\n  kl_coef: 0.5\n"
                                                 "  reward_weights: {direction: 2.0}\nstage2:\n  lr: 5.0e-5\n")
    assert C.load_yaml(variant) == {
        "stage1": {"lr": 1e-4, "kl_coef": 0.5, "reward_weights": {"direction": 2.0}},  # a value is replaced whole
        "eval": {"limit": 2000},                                                       # a section kept as it was
        "stage2": {"lr": 5e-5},                                                        # a section added
    }
    cfg = C.build(C.TrainConfig, variant, "stage1", output_dir=str(tmp_path / "r"))
    assert (cfg.lr, cfg.kl_coef) == (1e-4, 0.5)


def test_bases_chain(tmp_path):
    _write(tmp_path, "a.yaml", "eval:\n  limit: 10\n  batch_size: 8\n")
    _write(tmp_path, "b.yaml", "base: a.yaml\neval:\n  batch_size: 16\n")
    c = _write(tmp_path, "c.yaml", "base: b.yaml\neval:\n  split: val\n")
    assert C.load_yaml(c) == {"eval": {"limit": 10, "batch_size": 16, "split": "val"}}


@pytest.mark.parametrize("files, message", [
    ({"v.yaml": "base: missing.yaml\n"}, "missing.yaml (the base: of"),
    ({"v.yaml": "base: w.yaml\n", "w.yaml": "base: v.yaml\n"}, "include each other"),
    ({"v.yaml": "base: v.yaml\n"}, "include each other"),
    ({"v.yaml": "base: [a.yaml]\n"}, "base: must be the path of another config file"),
])
def test_a_broken_base_is_an_error_that_names_it(tmp_path, files, message):
    for name, text in files.items():
        _write(tmp_path, name, text)
    with pytest.raises(C.ConfigError, match=message.replace("(", r"\(")):
        C.load_yaml(tmp_path / "v.yaml")


def test_the_momentum_chain_is_the_small_chain_with_its_own_warmup():
    """configs/learning_real_momentum.yaml changes the warm-up and the folders of learning_real_small.yaml, nothing else."""
    small = C.load_yaml(ROOT / "configs" / "learning_real_small.yaml")
    momentum = C.load_yaml(ROOT / "configs" / "learning_real_momentum.yaml")
    for section in ("stage1", "stage2"):
        assert {**momentum[section], "output_dir": None} == {**small[section], "output_dir": None}
    assert {**momentum["eval"], "out": None} == {**small["eval"], "out": None}
    warmup = C.build(C.WarmupConfig, ROOT / "configs" / "learning_real_momentum.yaml", "warmup")
    assert (warmup.direction_source, warmup.max_steps, warmup.magnitude_decimals) == ("momentum", 30, 2)
    assert warmup.justification == C.WarmupConfig.__dataclass_fields__["justification"].default


def test_the_anchored_chain_is_the_momentum_chain_with_a_stronger_kl():
    """configs/learning_real_anchored.yaml: learning_real_momentum.yaml at KL 0.5, sampling at validation."""
    momentum = C.load_yaml(ROOT / "configs" / "learning_real_momentum.yaml")
    anchored = C.load_yaml(ROOT / "configs" / "learning_real_anchored.yaml")
    changed = {"output_dir": None, "kl_coef": None, "eval_samples": None}
    for section in ("stage1", "stage2"):
        assert {**anchored[section], **changed} == {**momentum[section], **changed}
        cfg = C.build(C.TrainConfig, ROOT / "configs" / "learning_real_anchored.yaml", section)
        assert (cfg.kl_coef, cfg.eval_samples, cfg.lr, cfg.entropy_coef) == (0.5, 4, 2e-4, 0.02)
    assert {**anchored["warmup"], "output_dir": None} == {**momentum["warmup"], "output_dir": None}
