"""Data-parallel scaling of stonklib's GRPO step: the same step on 1 and on N GPUs.

Launch it with the standard launcher, once per process count, on the same machine::

    torchrun --nproc_per_node 1 benchmarks/ddp_scaling.py --shape seed --model_dir /tmp/qwen-random
    torchrun --nproc_per_node 2 benchmarks/ddp_scaling.py --shape seed --model_dir /tmp/qwen-random
    python benchmarks/ddp_scaling.py --summarize benchmarks/results/<machine>-ddp-seed-*.json

Each rank runs the trainer's real ``GRPOTrainer.step`` (sampling, scoring, advantages,
reference and policy log-probs, loss, backward with DDP's gradient all-reduce, optimizer
step, and the trainer's cross-rank loss average) on its own ``B`` prompts, so the global
step does ``N × B × G`` completions. A step's time is the slowest rank's (each rank
synchronises its GPU, then the times are all-reduced with MAX). The model, shapes, LoRA,
KL and sampling settings are those of ``grpo_throughput.py`` (Qwen2.5-1.5B architecture,
random weights, NF4 + LoRA r=8 on q/k/v/o, 512-token prompts, 256-token completions forced
to full length and asserted).

Scaling efficiency = N-process completion tokens/s / (N × 1-process tokens/s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as torch_dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    BETA,
    LORA,
    LR,
    SHAPES,
    TEMPERATURE,
    TOP_P,
    FullLength,
    load_tokenizer,
    machine_name,
    prompt_texts,
    random_model_dir,
    result_name,
    synthetic_examples,
)

from stonklib.grpo import distributed as D  # noqa: E402


def _max_over_ranks(x: float, d: D.Dist, device: torch.device) -> float:
    t = torch.tensor([x], dtype=torch.float64, device=device)
    if d.enabled:
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return float(t)


def run(a) -> dict | None:
    from stonklib.config import TrainConfig
    from stonklib.grpo.launch import make_sampler
    from stonklib.grpo.runlog import RunLog
    from stonklib.grpo.trainer import GRPOTrainer
    from stonklib.models import add_lora, enable_checkpointing, load_base_model
    from stonklib.sampling.rollout import encode_prompts

    use_cuda = torch.cuda.is_available() and a.device != "cpu"
    d = D.init("cuda" if use_cuda else "cpu")
    device = torch.device("cuda", d.local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    shape = SHAPES[a.shape]
    B, G, C = shape.prompts, shape.generations, shape.completion_tokens
    model_dir = Path(a.model_dir)
    with D.main_process_first(d):
        random_model_dir(model_dir, tiny=shape.model == "qwen-tiny-random")
    work = Path(tempfile.mkdtemp(prefix=f"ddp-rank{d.rank}-"))
    cfg = TrainConfig(stage=2, stage1_model=str(model_dir), output_dir=str(work), quantize=a.quantize and use_cuda,
                      lora_r=LORA["r"], lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"],
                      lora_target_modules=LORA["target_modules"], device=device.type, batch_size=B,
                      num_generations=G, max_new_tokens=C, temperature=TEMPERATURE, top_p=TOP_P,
                      kl_coef=BETA, lr=LR, max_prompt_tokens=shape.prompt_tokens or 1024,
                      max_steps=a.warmup + a.steps + 1, gradient_checkpointing=True, tensorboard=False,
                      seed=a.seed)
    torch.manual_seed(a.seed + d.rank)
    model = load_base_model(cfg.stage1_model, quantize=cfg.quantize, device=device,
                            device_map={"": d.local_rank} if use_cuda else None)
    policy = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
    enable_checkpointing(policy)
    tok = load_tokenizer(model_dir)
    examples = synthetic_examples(B, seed=a.seed + 1000 * d.rank)  # distinct prompts on each rank
    trainer = GRPOTrainer(cfg, policy, tok, examples, [], dist=d, runlog=RunLog(work, 2, is_main=False),
                          sampler=FullLength(make_sampler(cfg, policy, tok)))
    ids, mask = encode_prompts(tok, prompt_texts(shape, tok, examples, seed=a.seed + d.rank), device)
    times = []
    if use_cuda:
        torch.cuda.reset_peak_memory_stats()
    for i in range(a.warmup + a.steps):
        if use_cuda:
            torch.cuda.synchronize()
        D.barrier(d)
        t0 = time.perf_counter()
        res = trainer.step(ids, mask, examples)
        if use_cuda:
            torch.cuda.synchronize()
        times.append(_max_over_ranks(time.perf_counter() - t0, d, device))
        assert res.rollout.completion_ids.shape == (B * G, C) and bool(res.rollout.completion_mask.all()), \
            "completions are not full length"
        if d.is_main:
            print(f"  world={d.world} step {i}: {times[-1]:.3f} s {res.timings}", flush=True)
    peak = torch.cuda.max_memory_allocated() / 2**30 if use_cuda else 0.0
    peak = _max_over_ranks(peak, d, device)
    med = statistics.median(times[a.warmup:])
    result = {"shape": a.shape, "world_size": d.world, "prompts_per_rank": B, "generations": G,
              "completion_tokens_per_step": d.world * B * G * C, "step_s_median": med, "step_s_all": times,
              "completion_tokens_per_s": d.world * B * G * C / med, "peak_mem_gib_max_rank": peak,
              "sampler": type(trainer.sampler.inner).__name__, "quantize": cfg.quantize,
              "device": torch.cuda.get_device_name(0) if use_cuda else "cpu", "torch": torch.__version__}
    D.shutdown(d)
    if not d.is_main:
        return None
    out = Path(a.out) / result_name(a.machine or machine_name(), "ddp", a.shape, f"{d.world}gpu")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "step_s_all"}), flush=True)
    return result


def summarize(files: list[str]) -> dict:
    """Efficiency of each N-process run against the 1-process run of the same shape."""
    runs = [json.loads(Path(f).read_text()) for f in files]
    table = {}
    for r in runs:
        one = next((x for x in runs if x["shape"] == r["shape"] and x["world_size"] == 1), None)
        eff = r["completion_tokens_per_s"] / (r["world_size"] * one["completion_tokens_per_s"]) if one else None
        table[f"{r['shape']}-{r['world_size']}"] = {"tokens_per_s": r["completion_tokens_per_s"],
                                                    "step_s": r["step_s_median"], "efficiency": eff}
    print(json.dumps(table, indent=2))
    return table


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="seed")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--quantize", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--device", choices=["auto", "cpu"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model_dir", default=str(Path(tempfile.gettempdir()) / "stonk-qwen-random"))
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--machine", default=None)
    p.add_argument("--summarize", nargs="+", default=None, help="result JSONs to turn into an efficiency table")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    if args.summarize:
        summarize(args.summarize)
    else:
        run(args)
