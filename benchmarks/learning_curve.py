"""Does the loop learn? Held-out task metrics over GRPO steps, after the format warm-up.

    python benchmarks/learning_curve.py                                   # configs/learning_curve.yaml (CPU)
    python benchmarks/learning_curve.py --config configs/learning_planted.yaml --dataset planted:momentum  # GPU
    python benchmarks/learning_curve.py --config configs/learning_real.yaml                             # GPU
    python benchmarks/learning_curve.py --max_steps 20 --set warmup.max_steps=10   # overrides
    python benchmarks/learning_curve.py --replot runs/learning-curve       # redraw from existing runs

The config is a pipeline file (``stonk pipeline``; a lone ``train:`` section is one GRPO stage): the
warm-up, then the GRPO stage(s) each from the previous adapter, then, with an ``eval:`` section, the
test-split evaluation beside the baselines. ``--dataset planted:RULE`` builds (once) and uses the positive
control of :mod:`stonklib.data.planted` in every section; ``--dataset real`` the bundled S&P 500 data.
TrainConfig flags (``--max_steps 20``) apply to every GRPO section, ``--set SECTION.FIELD=VALUE`` to one.
An interrupted run continues from its checkpoints when started again; finished stages are only re-read.

From each GRPO stage's ``train_metrics.jsonl`` it reads the validation points (greedy answers to
``max_eval_samples`` held-out prompts: accuracy, balanced accuracy, MCC, parse rate, predicted-up rate,
distinct answers) and the per-step collapse signals (groups without reward spread, and those among them
whose answers are wrong; distinct completions; the sampled up-rate; entropy). The verdict states:

- the held-out accuracy at the first and last validation, its best, and the first GRPO step at which it
  reached 0.9 (the planted control's target);
- the end-of-run ``distinct_share`` and ``zero_std_groups`` (mean of the last 10 steps), the latter both
  over all groups and over the groups whose answers are wrong (on a solved task every group is right and
  spread-free: that is success, not collapse);
- whether the predicted-up rate stayed within [0.2, 0.8] at every validation after step 50, and
  ``zero_std_groups`` <= 0.7 (the real-data "no collapse" criterion); with ``eval_samples`` set, the
  same bound on the sampled answers' up-rate (``val/sampled_up_rate``) beside the greedy one;
- the test metrics beside every baseline, as ``stonk evaluate``'s verdict words them.

Writes ``benchmarks/results/<machine>-learning_curve-<name>-<date>.{json,png}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import ROOT, machine_name, result_name, versions  # noqa: E402

from stonklib import config as cfglib  # noqa: E402
from stonklib.cli import add_config_flags  # noqa: E402

VAL_KEYS = ("val/accuracy", "val/balanced_accuracy", "val/mcc", "val/parse_rate", "val/format_rate",
            "val/predicted_up_rate", "val/sampled_up_rate", "val/distinct_share", "val/reward")
STEP_KEYS = ("reward/total", "reward/direction", "reward/zero_std_groups", "reward/zero_std_wrong_groups",
             "completions/distinct_share", "completions/predicted_up_rate", "entropy", "kl", "step_s",
             "sampler/logp_gap", "sampler/logp_gap_max")
GRPO = ("stage1", "stage2", "train")
TARGET_ACCURACY = 0.9


# ----------------------------------------------------------------------------- config
def pipeline_config(args, train_overrides: dict) -> dict:
    """The YAML's sections with ``--dataset``, the TrainConfig flags and ``--set`` applied (validated later)."""
    sections = cfglib.load_yaml(args.config)
    if args.dataset:
        data_dir = prepare_data(args.dataset)
        for name in ("warmup", *GRPO, "eval"):
            if name in sections:
                sections[name]["data"] = data_dir
    for name in GRPO:
        if name in sections:
            sections[name].update(train_overrides)
    for item in args.set:
        key, sep, value = item.partition("=")
        section, dot, field = key.partition(".")
        if not (sep and dot) or section not in sections:
            raise SystemExit(f"--set {item!r}: write SECTION.FIELD=VALUE for a section of {args.config}.")
        sections[section][field] = yaml.safe_load(value)
    return sections


def prepare_data(spec: str) -> str:
    """``real`` or ``planted:RULE`` -> a built data directory (built on first use)."""
    from stonklib.data import build_dataset, is_built

    if spec == "real":
        return str(cfglib.DataConfig().out_dir)
    kind, _, rule = spec.partition(":")
    if kind != "planted" or not rule:
        raise SystemExit(f"--dataset {spec!r}: use real or planted:RULE (momentum, threshold).")
    cfg = cfglib.DataConfig(plant=rule)
    if not is_built(cfg.out_dir):
        build_dataset(cfg, progress=True)
    return str(cfg.out_dir)


# ----------------------------------------------------------------------------- reading runs
def stage_curves(output_dir: Path) -> dict:
    """One GRPO stage's validation points and per-step signals."""
    from stonklib.workbook import read_metrics

    m = read_metrics(output_dir)
    val = m[[k for k in VAL_KEYS if k in m]].dropna(how="all")
    steps = m[[k for k in STEP_KEYS if k in m]].dropna(how="all")
    rows = lambda df: [{"step": int(s), **{k: (None if v != v else float(v)) for k, v in r.items()}}  # noqa: E731
                       for s, r in df.iterrows()]
    return {"output_dir": str(output_dir), "validation": rows(val), "steps": rows(steps)}


def verdict(stages: dict[str, dict], evaluation: dict | None = None) -> dict:
    """The numbers the acceptance asks for, over the GRPO stages run one after another (steps counted on)."""
    points, steps, offset = [], [], 0
    for curves in stages.values():
        points += [p | {"step": p["step"] + offset} for p in curves["validation"]]
        steps += [s | {"step": s["step"] + offset} for s in curves["steps"]]
        offset = steps[-1]["step"] if steps else offset
    out: dict = {"grpo_steps": offset}
    acc = [(p["step"], p.get("val/accuracy")) for p in points if p.get("val/accuracy") is not None]
    if acc:
        at = next((s for s, a in acc if a >= TARGET_ACCURACY), None)
        out["accuracy"] = {"first": acc[0][1], "last": acc[-1][1], "best": max(a for _, a in acc),
                           "first_step_at_target": at}
        # Training time only (sampling, scoring, update), validation excluded: the cost of getting there.
        seconds = [(s["step"], s["step_s"]) for s in steps if s.get("step_s") is not None]
        if seconds:
            out["train_seconds"] = sum(t for _, t in seconds)
            out["train_seconds_at_target"] = None if at is None else sum(t for s, t in seconds if s <= at)
    gaps = [s for s in steps if s.get("sampler/logp_gap") is not None]
    if gaps:  # |log pi_sampler - log pi_train| per token: mean over the run's steps, and the largest token's
        out["sampler_logp_gap"] = {"mean": sum(s["sampler/logp_gap"] for s in gaps) / len(gaps),
                                   "max": max(s["sampler/logp_gap_max"] for s in gaps), "steps": len(gaps)}
    tail = steps[-10:]
    mean = lambda k: (sum(s[k] for s in tail if s.get(k) is not None) / max(1, sum(s.get(k) is not None for s in tail)))  # noqa: E731
    if tail:
        out["end"] = {k.split("/")[-1]: mean(k) for k in ("completions/distinct_share", "reward/zero_std_groups",
                                                          "reward/zero_std_wrong_groups", "entropy") if k in tail[-1]}
    late = [p for p in points if p["step"] > 50 and p.get("val/predicted_up_rate") is not None]
    out["no_collapse"] = {
        "up_rate_within_0.2_0.8_after_step_50": all(0.2 <= p["val/predicted_up_rate"] <= 0.8 for p in late),
        "up_rates_after_step_50": [round(p["val/predicted_up_rate"], 3) for p in late],
        "zero_std_groups_at_most_0.7": bool(tail) and mean("reward/zero_std_groups") <= 0.7}
    sampled = [p["val/sampled_up_rate"] for p in late if p.get("val/sampled_up_rate") is not None]
    if sampled:  # eval_samples: the sampling policy's own up-rate, beside the greedy answers'
        out["no_collapse"] |= {"sampled_up_rate_within_0.2_0.8_after_step_50": all(0.2 <= r <= 0.8 for r in sampled),
                               "sampled_up_rates_after_step_50": [round(r, 3) for r in sampled]}
    text = []
    if acc:
        a = out["accuracy"]
        at = a["first_step_at_target"]
        text.append(f"held-out accuracy {a['first']:.3f} at the first validation -> {a['last']:.3f} at step {acc[-1][0]} "
                    f"(best {a['best']:.3f}; " + (f"{TARGET_ACCURACY} first reached at GRPO step {at})" if at is not None
                                                  else f"{TARGET_ACCURACY} never reached)"))
        if out.get("train_seconds_at_target") is not None:
            text.append(f"{out['train_seconds_at_target']:.1f} s of training to reach it ({out['train_seconds']:.1f} s in all)")
    if "sampler_logp_gap" in out:
        g = out["sampler_logp_gap"]
        text.append(f"sampler/trainer log-prob gap: mean {g['mean']:.4f}, max {g['max']:.3f} nats per token")
    if "end" in out:
        e = out["end"]
        text.append(f"last 10 steps: distinct_share {e.get('distinct_share', float('nan')):.2f}, zero_std_groups "
                    f"{e.get('zero_std_groups', float('nan')):.2f} (of which wrong {e.get('zero_std_wrong_groups', float('nan')):.2f})")
    if evaluation:
        out["test"] = evaluation
        text.append(evaluation.get("verdict", ""))
    out["text"] = "; ".join(t for t in text if t)
    return out


def evaluation_summary(eval_dir: Path) -> dict | None:
    """The test metrics of the pipeline's evaluation, beside every baseline (with their CIs)."""
    path = eval_dir / "metrics.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    keep = ("n", "accuracy", "accuracy_ci95", "binom_p_value", "majority_rate", "balanced_accuracy", "mcc",
            "parse_rate", "predicted_up_rate", "actual_up_rate")
    from stonklib.evaluate import verdict as eval_verdict

    return {"model": {k: m.get(k) for k in keep},
            "baselines": {name: {k: b.get(k) for k in keep} for name, b in (m.get("baselines") or {}).items() if b},
            "verdict": eval_verdict(m)}


def plot(data: dict, path: Path) -> None:
    import pandas as pd
    from matplotlib.figure import Figure

    from stonklib.workbook.plots import plot_metric_curves, save

    fig = Figure(figsize=(17, 4), layout="constrained")
    axes = fig.subplots(1, 4)
    val = pd.DataFrame([p for c in data["stages"].values() for p in c["validation_on"]]).set_index("step")
    steps = pd.DataFrame([s for c in data["stages"].values() for s in c["steps_on"]]).set_index("step")
    plot_metric_curves(val, ["val/accuracy", "val/balanced_accuracy", "val/parse_rate"], ax=axes[0],
                       title="held-out (greedy)", ylabel="share of prompts")
    axes[0].axhline(TARGET_ACCURACY, color="grey", lw=0.8, ls="--")
    plot_metric_curves(val, ["val/predicted_up_rate", "val/sampled_up_rate", "val/distinct_share", "val/mcc"], ax=axes[1],
                       title="held-out answers (band: up-rate 0.2-0.8)", ylabel="share / MCC")
    axes[1].axhspan(0.2, 0.8, color="grey", alpha=0.08, lw=0)
    smooth = steps.rolling(10, min_periods=1).mean()
    plot_metric_curves(smooth, ["reward/zero_std_groups", "reward/zero_std_wrong_groups", "completions/distinct_share",
                                "completions/predicted_up_rate"], ax=axes[2], title="sampled groups (10-step mean)",
                       ylabel="share")
    plot_metric_curves(smooth, ["reward/total", "entropy"], ax=axes[3], title="training reward, entropy (10-step mean)")
    for ax in axes[:3]:
        ax.set_ylim(-1.02 if ax is axes[1] else -0.02, 1.02)
    for boundary in data.get("stage_starts", [])[1:]:
        for ax in axes:
            ax.axvline(boundary, color="k", lw=0.6, ls=":")
    fig.suptitle(data["title"])
    save(fig, path)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "learning_curve.yaml"))
    ap.add_argument("--dataset", default=None, help="real or planted:RULE (momentum, threshold): the data every section uses")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--name", default=None, help="result name (default: the config file's stem)")
    ap.add_argument("--machine", default=None, help="machine name in the file name (default: from the device)")
    ap.add_argument("--replot", action="store_true", help="only read and plot the runs the config names")
    add_config_flags(ap, cfglib.TrainConfig)
    args = ap.parse_args(argv)
    fields = {f.name for f in dataclasses.fields(cfglib.TrainConfig)}
    train_overrides = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    sections = pipeline_config(args, train_overrides)
    name = args.name or Path(args.config).stem
    from stonklib.pipeline import run_pipeline

    grpo = [s for s in GRPO if s in sections]
    first_out = Path(sections[grpo[0]]["output_dir"]) if grpo else Path("runs/learning")
    resolved = first_out.parent / f"{name}-pipeline.yaml"
    resolved.parent.mkdir(parents=True, exist_ok=True)
    resolved.write_text(yaml.safe_dump(sections, sort_keys=False))
    wall = None
    if not args.replot:
        t0 = time.perf_counter()
        run_pipeline(resolved, resume=True)  # continues an interrupted stage; a fresh one starts with empty logs
        wall = time.perf_counter() - t0
    stages = {s: stage_curves(Path(sections[s]["output_dir"])) for s in grpo}
    offset, starts = 0, []
    for c in stages.values():
        starts.append(offset)
        c["validation_on"] = [p | {"step": p["step"] + offset} for p in c["validation"]]
        c["steps_on"] = [p | {"step": p["step"] + offset} for p in c["steps"]]
        offset = c["steps_on"][-1]["step"] if c["steps_on"] else offset
    evaluation = evaluation_summary(Path(sections["eval"]["out"])) if "eval" in sections else None
    machine = args.machine or machine_name()
    data = {"name": name, "config": sections, "stages": stages, "stage_starts": starts,
            "verdict": verdict(stages, evaluation), "wall_s_this_invocation": wall, "machine": machine,
            "versions": versions(), "date": time.strftime("%Y-%m-%d"),
            "title": f"{name}: {' -> '.join([s for s in ('warmup', *grpo) if s in sections])} ({machine})",
            "command": "python benchmarks/learning_curve.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if "warmup" in sections:
        from stonklib.workbook import warmup_progress

        data["warmup"] = warmup_progress(sections["warmup"]["output_dir"]).reset_index().to_dict("records")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    path = results / result_name(machine, "learning_curve", name)
    path.write_text(json.dumps(data, indent=2, default=str))
    plot(data, path.with_suffix(".png"))
    print(data["verdict"]["text"])
    return data


if __name__ == "__main__":
    main()
