"""What the format warm-up alone gives: greedy answers to held-out prompts, before GRPO.

    python benchmarks/warmup_quality.py                     # configs/warmup_cpu.yaml: the embedded SmolLM2-135M on CPU
    python benchmarks/warmup_quality.py --max_steps 20      # any WarmupConfig field overrides the YAML

It runs ``stonk warmup`` in a function (:func:`stonklib.warmup.run_warmup`) and reads the greedy answers
its last validation gave to ``max_eval_samples`` (64) prompts spread over the val split, scored by the
five-part reward. Reported against the targets the warm-up exists for:

- ``parse_rate`` >= 0.95: a day-1 direction can be read from the answer;
- ``predicted_up_rate`` in [0.3, 0.7]: both directions are answered;
- ``distinct_day1_share`` >= 0.5: the day-1 answers differ from prompt to prompt;
- ``data_utilization`` >= 2 on average: the justification cites at least three values the prompt shows.

Greedy decoding picks the likelier direction, and a fair coin has none: its greedy answers go to whichever
side a small offset favours. So the same prompts are also answered by sampling (temperature 1, the
distribution GRPO explores from), and their up-rate is reported beside the greedy one.

Also the wall time of the training steps alone (the sum of ``step_s``) and of the whole invocation
(model load, the two validations), and eight answers before and after. Writes
``benchmarks/results/<machine>-warmup-<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import ROOT, machine_name, result_name, versions, write_result  # noqa: E402

from stonklib import config as cfglib  # noqa: E402
from stonklib.cli import add_config_flags, config_from_args  # noqa: E402

TARGETS = {"parse_rate": (0.95, None), "predicted_up_rate": (0.3, 0.7), "distinct_day1_share": (0.5, None),
           "data_utilization": (2.0, None)}


def verdicts(stats: dict) -> dict[str, bool]:
    """Each target met or not (a missing number is not met)."""
    out = {}
    for k, (lo, hi) in TARGETS.items():
        v = stats.get(k)
        out[k] = v is not None and v >= lo and (hi is None or v <= hi)
    return out


def sampled_answers(cfg, adapter: str, temperature: float = 1.0) -> dict:
    """The validation prompts answered once each by sampling (``temperature``, top-p 1): parse and up-rates."""
    import torch

    from stonklib.grpo.launch import load_examples_for
    from stonklib.grpo.market import MarketStats
    from stonklib.models import load_for_inference
    from stonklib.prompts import fit_prompt
    from stonklib.rewards import parse_prediction
    from stonklib.sampling.rollout import generate_texts

    torch.manual_seed(cfg.seed)
    _, val = load_examples_for(cfg)
    model, tok = load_for_inference(cfg.model, adapter, device=cfg.device)
    texts = generate_texts(model, tok, [fit_prompt(ex, tok, cfg.max_prompt_tokens, cfg.prompt_version).text for ex in val],
                           batch_size=16, max_new_tokens=cfg.max_new_tokens, greedy=False, temperature=temperature,
                           top_p=1.0, progress=False)
    m = MarketStats()
    m.update([ex.direction_1 for ex in val], [parse_prediction(t).direction for t in texts])
    return {"temperature": temperature, "n": len(texts), "parse_rate": m.parse_rate,
            "predicted_up_rate": m.predicted_up_rate}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "warmup_cpu.yaml"))
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--machine", default=None, help="Name in the file name (default: from the device).")
    p.add_argument("--name", default="", help="A tag after 'warmup' in the file name (e.g. batch-seed42).")
    add_config_flags(p, cfglib.WarmupConfig)
    args = p.parse_args(argv)
    cfg = config_from_args(cfglib.WarmupConfig, args)
    from stonklib.grpo.runlog import read_jsonl
    from stonklib.warmup import run_warmup
    from stonklib.workbook import before_after, read_metrics, warmup_progress

    t0 = time.perf_counter()
    summary = run_warmup(cfg)
    wall = time.perf_counter() - t0
    m = read_metrics(cfg.output_dir)
    stats = summary["validation"] or {}
    result = {"config": cfglib.to_dict(cfg), "validation": stats, "targets": TARGETS, "met": verdicts(stats),
              "train_pairs": summary["train_pairs"], "skipped_targets": summary["skipped_targets"],
              "wall_s_training_steps": float(m["step_s"].sum()) if "step_s" in m else None,
              "wall_s_invocation": wall, "progress": warmup_progress(cfg.output_dir).reset_index().to_dict("records"),
              "before_after": before_after(cfg.output_dir).reset_index().to_dict("records"),
              "machine": args.machine or machine_name(), "platform": platform.platform(), "versions": versions(),
              "date": time.strftime("%Y-%m-%d"),
              "command": "python benchmarks/warmup_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    result["loss"] = [r["loss"] for r in read_jsonl(Path(cfg.output_dir) / "train_metrics.jsonl") if "loss" in r]
    result["sampled"] = sampled_answers(cfg, summary["final"])
    write_result(args.results, result_name(result["machine"], "warmup", args.name), result)
    print(json.dumps({k: result[k] for k in ("validation", "met", "sampled", "wall_s_training_steps", "wall_s_invocation")},
                     indent=2))
    return result


if __name__ == "__main__":
    main()
