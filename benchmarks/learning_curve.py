"""Does GRPO teach the embedded model something on real data? Held-out reward and format over steps.

    python benchmarks/learning_curve.py                       # configs/learning_curve.yaml: 100 CPU steps
    python benchmarks/learning_curve.py --max_steps 20        # any TrainConfig field overrides the YAML
    python benchmarks/learning_curve.py --replot runs/learning-curve   # redraw from an existing run

It runs the real trainer (``stonk train`` in a function) with the config, then reads the run's
``train_metrics.jsonl``: the validation points (greedy completions for ``max_eval_samples``
held-out prompts from the val split, scored by the five-part reward, before the first step and
every ``eval_steps``) and the per-step training reward. A run that was interrupted is resumed
from its last checkpoint when the script is started again (``--resume`` is implied for an
existing, unfinished output directory); a finished one is only re-plotted.

Writes ``benchmarks/results/<tag>-learning_curve.json`` (every validation point, the training
curve, the config, wall time, machine) and ``.png`` (the curves). "Rose" is stated for the
validation reward and format rate as last point minus first point; with ``n`` validation
prompts each format-rate point moves in steps of ``1/n``, so a rise of a few ``1/n`` is noise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stonklib import config as cfglib  # noqa: E402
from stonklib.cli import add_config_flags, config_from_args  # noqa: E402

VAL_KEYS = ("val/reward", "val/format_rate", "val/accuracy")


def curve(output_dir: Path) -> dict:
    """Validation points and the smoothed training reward of a run directory."""
    from stonklib.workbook import read_metrics

    m = read_metrics(output_dir)
    val = m[[k for k in VAL_KEYS if k in m]].dropna(how="all")
    train = m[[k for k in ("reward/total", "reward/format", "kl") if k in m]].dropna(how="all")
    return {
        "validation": [{"step": int(s), **{k: float(v) for k, v in row.items()}} for s, row in val.iterrows()],
        "train": [{"step": int(s), **{k: float(v) for k, v in row.items()}} for s, row in train.iterrows()],
    }


def verdict(points: list[dict], n_val: int) -> dict:
    """First vs last validation point for reward and format rate, in plain words."""
    if len(points) < 2:
        return {"text": "fewer than two validation points: nothing to compare"}
    first, last = points[0], points[-1]
    out = {}
    for key in ("val/reward", "val/format_rate"):
        out[key] = {"first": first[key], "last": last[key], "change": last[key] - first[key],
                    "max": max(p[key] for p in points)}
    fr = out["val/format_rate"]
    out["text"] = (f"step {first['step']} -> {last['step']}: held-out mean reward {first['val/reward']:.3f} -> "
                   f"{last['val/reward']:.3f}; format compliance {fr['first']:.1%} -> {fr['last']:.1%} "
                   f"({n_val} prompts, so one prompt is {1 / max(n_val, 1):.1%}).")
    out["rose"] = bool(out["val/reward"]["change"] > 0 and fr["change"] > 0)
    return out


def plot(data: dict, path: Path) -> None:
    import pandas as pd
    from matplotlib.figure import Figure

    from stonklib.plots import plot_metric_curves, save

    fig = Figure(figsize=(12, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    val = pd.DataFrame(data["validation"]).set_index("step")
    train = pd.DataFrame(data["train"]).set_index("step")
    plot_metric_curves(val, ["val/reward"], ax=axes[0], title="held-out mean reward (greedy)", ylabel="reward")
    plot_metric_curves(val, ["val/format_rate", "val/accuracy"], ax=axes[1], title="held-out format / accuracy",
                       ylabel="share of prompts")
    axes[1].set_ylim(-0.02, 1.02)
    smooth = train.rolling(10, min_periods=1).mean()
    plot_metric_curves(smooth, ["reward/total", "reward/format"], ax=axes[2], title="training reward (10-step mean)",
                       ylabel="reward")
    fig.suptitle(data["title"])
    save(fig, path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "learning_curve.yaml"))
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--tag", default=None, help="file-name prefix (default: cpu-<cores>c or the GPU name)")
    ap.add_argument("--replot", default=None, help="only read and plot this existing run directory")
    add_config_flags(ap, cfglib.TrainConfig)
    args = ap.parse_args(argv)

    import torch

    cfg = config_from_args(cfglib.TrainConfig, args)
    out_dir = Path(args.replot or cfg.output_dir)
    wall = None
    if args.replot is None and not (out_dir / "final").is_dir():
        from stonklib.launch import _has_run, run_training

        if _has_run(out_dir):
            cfg.resume = True  # continue an interrupted run
        t0 = time.perf_counter()
        run_training(cfg)
        wall = time.perf_counter() - t0
    tag = args.tag or (torch.cuda.get_device_name(0).replace(" ", "-").lower() if torch.cuda.is_available()
                       else f"cpu-{os.cpu_count()}c")
    data = curve(out_dir)
    data |= {"title": f"GRPO on {Path(cfg.stage1_model).name}, real S&P 500 data ({tag})",
             "verdict": verdict(data["validation"], cfg.max_eval_samples), "config": cfglib.to_dict(cfg),
             "run_dir": str(out_dir), "wall_s_this_invocation": wall, "machine": platform.platform(),
             "torch": torch.__version__, "cores": os.cpu_count(),
             "command": "python benchmarks/learning_curve.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{tag}-learning_curve.json").write_text(json.dumps(data, indent=2))
    plot(data, results / f"{tag}-learning_curve.png")
    print(data["verdict"]["text"] if "text" in data["verdict"] else data["verdict"])
    return data


if __name__ == "__main__":
    main()
