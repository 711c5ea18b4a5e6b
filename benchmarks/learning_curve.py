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
curve, per-10-step statistics of the sampled completions, the config, wall time, machine) and
``.png`` (the curves). The completion statistics catch a policy that collapsed onto one answer
(few distinct completions, groups with no reward spread, one predicted direction); the verdict
says so when it happens, because then a higher reward or accuracy is not predictive skill. "Rose" is stated for the
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


def windows(output_dir: Path, width: int = 10) -> list[dict]:
    """What the sampled completions looked like, per ``width`` steps (from stage2_training_log.jsonl).

    ``distinct_share``: distinct completion texts / completions; ``zero_std_groups``: groups whose G
    completions all got one reward (no policy gradient); ``predicted_up_rate`` among parsed answers.
    A policy that collapsed onto one answer shows distinct_share near 1/n and zero_std_groups near 1.
    """
    from collections import defaultdict

    from stonklib.grpo.market import MarketStats
    from stonklib.grpo.runlog import read_jsonl

    logs = sorted(output_dir.glob("stage*_training_log.jsonl"))
    if not logs:
        return []
    by_window: dict[int, list[dict]] = defaultdict(list)
    for r in read_jsonl(logs[0]):
        by_window[(r["step"] - 1) // width].append(r)
    out = []
    for w, rows in sorted(by_window.items()):
        groups: dict[tuple, set] = defaultdict(set)
        for r in rows:
            groups[(r["step"], r.get("rank", 0), r["prompt_id"])].add(r["reward_total"])
        market = MarketStats()
        market.update([r["actual_direction"] for r in rows], [r["predicted_direction"] for r in rows])
        out.append({"steps": [w * width + 1, w * width + width], "completions": len(rows),
                    "distinct_share": len({r["completion"] for r in rows}) / len(rows),
                    "zero_std_groups": sum(len(v) == 1 for v in groups.values()) / len(groups),
                    "parsed_share": market.parse_rate, "predicted_up_rate": market.predicted_up_rate,
                    "actual_up_rate": market.actual_up_rate})
    return out


def verdict(points: list[dict], n_val: int, wins: list[dict] | None = None) -> dict:
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
    last = (wins or [None])[-1]
    if last and (last["distinct_share"] < 0.1 or last["predicted_up_rate"] in (0.0, 1.0)):
        side = {0.0: "down", 1.0: "up"}.get(last["predicted_up_rate"])
        out["collapsed"] = True
        out["text"] += (f" But in steps {last['steps'][0]}-{last['steps'][1]} only {last['distinct_share']:.1%} of the "
                        f"sampled completions were distinct and {last['zero_std_groups']:.0%} of the groups had no "
                        "reward spread" + (f"; every parsed answer said {side}" if side else "")
                        + ": the policy collapsed onto one answer, so accuracy here is the base rate, not skill.")
    return out


def plot(data: dict, path: Path) -> None:
    import pandas as pd
    from matplotlib.figure import Figure

    from stonklib.workbook.plots import plot_metric_curves, save

    fig = Figure(figsize=(16, 4), layout="constrained")
    axes = fig.subplots(1, 4)
    val = pd.DataFrame(data["validation"]).set_index("step")
    train = pd.DataFrame(data["train"]).set_index("step")
    plot_metric_curves(val, ["val/reward"], ax=axes[0], title="held-out mean reward (greedy)", ylabel="reward")
    plot_metric_curves(val, ["val/format_rate", "val/accuracy"], ax=axes[1], title="held-out format / accuracy",
                       ylabel="share of prompts")
    axes[1].set_ylim(-0.02, 1.02)
    smooth = train.rolling(10, min_periods=1).mean()
    plot_metric_curves(smooth, ["reward/total", "reward/format"], ax=axes[2], title="training reward (10-step mean)",
                       ylabel="reward")
    if data.get("train_windows"):
        win = pd.DataFrame(data["train_windows"])
        win.index = [s[1] for s in win["steps"]]
        plot_metric_curves(win, ["distinct_share", "zero_std_groups", "predicted_up_rate", "actual_up_rate"],
                           ax=axes[3], title="sampled completions (per 10 steps)", ylabel="share")
        axes[3].set_ylim(-0.02, 1.02)
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
        from stonklib.grpo.launch import _has_run, run_training

        if _has_run(out_dir):
            cfg.resume = True  # continue an interrupted run
        t0 = time.perf_counter()
        run_training(cfg)
        wall = time.perf_counter() - t0
    tag = args.tag or (torch.cuda.get_device_name(0).replace(" ", "-").lower() if torch.cuda.is_available()
                       else f"cpu-{os.cpu_count()}c")
    data = curve(out_dir)
    data["train_windows"] = windows(out_dir)
    data |= {"title": f"GRPO on {Path(cfg.stage1_model).name}, real S&P 500 data ({tag})",
             "verdict": verdict(data["validation"], cfg.max_eval_samples, data["train_windows"]),
             "config": cfglib.to_dict(cfg),
             "run_dir": str(out_dir), "wall_s_this_invocation": wall, "machine": platform.platform(),
             "torch": torch.__version__, "cores": os.cpu_count(),
             "command": "python benchmarks/learning_curve.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{tag}-learning_curve.json"
    before = json.loads(path.read_text()) if path.is_file() else {}
    if wall is None and before.get("run_dir") == str(out_dir):  # a re-plot keeps the training's wall time
        data["wall_s_training"] = before.get("wall_s_training", before.get("wall_s_this_invocation"))
    else:
        data["wall_s_training"] = wall
    path.write_text(json.dumps(data, indent=2))
    plot(data, results / f"{tag}-learning_curve.png")
    print(data["verdict"]["text"] if "text" in data["verdict"] else data["verdict"])
    return data


if __name__ == "__main__":
    main()
