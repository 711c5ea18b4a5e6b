"""One full GRPO step, stonklib's trainer against TRL's GRPOTrainer, in one invocation.

Run (from the repository root)::

    python benchmarks/grpo_throughput.py --shape seed              # GPU: 4 prompts x 4, 512 + 256 tokens
    python benchmarks/grpo_throughput.py --shape large             # GPU: 8 prompts x 8
    python benchmarks/grpo_throughput.py --shape seed_full         # GPU: 4 x 4, 1024 + 400 (the shipped configs)
    python benchmarks/grpo_throughput.py --shape large_full        # GPU: 8 x 8, 1024 + 400
    python benchmarks/grpo_throughput.py --shape cpu               # CPU: SmolLM2-135M, 2 prompts x 4, 64 tokens
    python benchmarks/grpo_throughput.py --shape real              # GPU: SmolLM2-135M real weights, 4 x 4, up to 400
                                                                   # tokens ending at their EOS
    python benchmarks/grpo_throughput.py --shape seed --systems ours --steps 3 --no-quantize

What is compared, and how:

- The model: for ``seed``/``large`` and their ``_full`` shapes the Qwen2.5-1.5B architecture built in code with random weights
  (hidden 1536, 28 layers, 12 heads, 2 KV heads, intermediate 8960, vocab 151936, tied embeddings,
  rope theta 1e6) and a word-level tokenizer over the same vocabulary (prompt ``w17 w9031 ...`` is
  exactly one token per word); for ``cpu`` the embedded SmolLM2-135M-Instruct with its real weights
  and the project's real rendered prompts. NF4 (double quantisation) + LoRA r=8, alpha 16, dropout
  0.05 on q/k/v/o for both systems; beta = 0.05 (k3 KL to the adapter-less model); temperature 0.7,
  top-p 0.9, no top-k; ``--num_iterations`` passes over each rollout (mu, default 1) and
  ``--steps_per_generation`` optimizer steps per rollout (default 1), the same for both systems, with
  optimizer steps per second reported for each (whole rollouts timed); the five-part project reward for
  both (TRL through :func:`stonklib.rewards.trl_reward_funcs`); gradient checkpointing for both.
- Completions are forced to full length (ours: the sampler wrapped in ``bench_common.FullLength``; TRL:
  ``generation_kwargs={"min_new_tokens": C}``) and this is asserted for both systems at every step,
  except for ``real`` (and its smoke test ``tiny_real``): there both systems sample real, variable-length
  completions that end at their EOS, and tokens per second count the tokens actually generated (ours:
  the completion masks; TRL: its logged mean length times the completions), at mu = 1 only.
- "ours" is :meth:`stonklib.grpo.trainer.GRPOTrainer.step` as ``stonk train`` builds it (sampler from
  ``stonklib.grpo.launch.make_sampler``): sampling, decoding, scoring, group advantages, reference and policy
  log-probs, loss, backward, clip, AdamW, LR schedule and the sampler's refresh. Nothing is
  cached across steps. With mu = 1 the "old" log-probs equal the policy's detached, so the trainer
  does not run a third forward for them (an algorithmic identity, also what TRL does for mu = 1).
- "trl" is ``trl.GRPOTrainer.train`` for ``warmup + steps`` optimizer steps; each step is timed
  from ``on_step_begin`` to ``on_step_end`` (generation happens inside), synchronised on CUDA.
- Reported per system: median step time after ``--warmup`` steps, completion tokens per second
  (B*G*C / median; with a rollout reused, each completion once over whole cycles), peak allocated
  GPU memory during the steps (weights included; also
  ``peak_reserved_gib``, what the caching allocator held, CUDA graph pools included), and ours/TRL;
  also process CPU seconds per step (steadier than wall time on a shared CPU machine). A last,
  untimed rollout of ours is instrumented for a breakdown (sampling / log-probs / backward /
  optimizer), and with the fast sampler its decode is set beside its floor (``roofline``): the
  measured ms per token step, the bytes a step must read (every weight once, the live key/value
  cache; ``bench_common.decode_bytes``), the device-to-device copy bandwidth measured in the same
  run, ``floor_ms_per_step`` = bytes / bandwidth and their ratio.
- "ours" is the trainer as configured by default: FastSampler (CUDA graphs on GPU, eager on CPU)
  and :func:`stonklib.update.prefix.shared_prefix_logprobs` (each group's prompt computed once
  in the update) over dense base weights (:mod:`stonklib.update.dense`, ``dense_update``).
  Ablations (``--systems``): ``ours_fast`` / ``ours_hf`` force the sampler; a ``_modules`` suffix
  runs the update's passes through the PEFT/bitsandbytes modules (``dense_update=False``); a
  ``_full`` suffix computes the update's log-probs with the full forward
  (``shared_prefix_logprobs=False``), e.g. ``ours_hf_full`` is the simple reference path.
- ``--set FIELD=VALUE`` overrides further :class:`~stonklib.config.TrainConfig` fields for ours (e.g.
  ``--set compile_decoder=false``); the result records every fast-path switch in force.

Writes ``<out>/<machine>-<shape>-<date>.json`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (  # noqa: E402
    BETA,
    LORA,
    LR,
    ROOT,
    SHAPES,
    TEMPERATURE,
    TOP_P,
    WORDLEVEL,
    Example,
    FullLength,
    GCClock,
    SamplerClock,
    Shape,
    copy_bandwidth,
    cuda_kernel_profile,
    free_memory,
    load_tokenizer,
    logprob_pass_key,
    machine_name,
    peak_gib,
    peak_reserved_gib,
    prompt_texts,
    random_model_dir,
    reset_peak,
    result_name,
    roofline,
    summarise,
    sync,
    synthetic_examples,
    timed,
    versions,
)

from stonklib.environment import prefer_expandable_segments  # noqa: E402

#: The TrainConfig switches that decide which fast path ours runs (recorded with every result).
FAST_PATH_FIELDS = ("fast_sampler", "shared_prefix_logprobs", "dense_update", "lora_matmul_dtype", "triton_kernels",
                    "decode_mlp_kernel", "compile_decoder", "decode_graphs", "update_graphs", "gradient_checkpointing")


def parse_set(items: list[str]) -> dict:
    """``["compile_decoder=false", "kl_coef=0"]`` -> TrainConfig overrides, typed by YAML's rules."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: write FIELD=VALUE, e.g. --set compile_decoder=false")
        out[key.strip()] = yaml.safe_load(value)
    return out


# ---------------------------------------------------------------------- ours
def build_ours(a, shape: Shape, model_dir: Path, texts: list[str], examples: list[Example], work: Path,
               sampler_kind: str = "auto", shared_prefix: bool = True, **cfg_overrides):
    """stonklib's trainer as ``stonk train`` builds it, and the encoded prompts: (trainer, ids, mask, runlog).

    ``cfg_overrides`` are further :class:`~stonklib.config.TrainConfig` fields (ablations)."""
    from stonklib.config import TrainConfig
    from stonklib.grpo.launch import make_sampler
    from stonklib.grpo.runlog import RunLog
    from stonklib.grpo.trainer import GRPOTrainer
    from stonklib.models import add_lora, enable_checkpointing, load_base_model, load_policy, pick_device
    from stonklib.sampling.rollout import HFSampler, encode_prompts

    device = pick_device(a.device)
    B, G, C = shape.prompts, shape.generations, shape.completion_tokens
    cfg = TrainConfig(stage=2, stage1_model=str(model_dir), output_dir=str(work / "ours"), quantize=a.quantize,
                      lora_r=LORA["r"], lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"],
                      lora_target_modules=LORA["target_modules"], device=device.type, batch_size=B, num_generations=G,
                      max_new_tokens=C, temperature=TEMPERATURE, top_p=TOP_P, kl_coef=BETA, lr=LR,
                      max_prompt_tokens=shape.prompt_tokens or 1024,
                      max_steps=(a.warmup + a.steps + 1) * a.num_iterations * a.steps_per_generation,
                      num_iterations=a.num_iterations, steps_per_generation=a.steps_per_generation,
                      tensorboard=False, seed=a.seed, shared_prefix_logprobs=shared_prefix,
                      **{"gradient_checkpointing": True, **cfg_overrides})
    torch.manual_seed(a.seed)
    device_map = {"": device.index or 0} if device.type == "cuda" else None
    if (model_dir / WORDLEVEL).is_dir():  # load_policy, with the synthetic model's tokenizer
        model = load_base_model(cfg.stage1_model, quantize=cfg.quantize, device=device, device_map=device_map)
        policy = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
        tok = load_tokenizer(model_dir)
    else:
        policy, tok = load_policy(cfg, device, device_map=device_map)
    if cfg.gradient_checkpointing:  # as stonklib.grpo.launch.run_training does
        enable_checkpointing(policy)
    if sampler_kind == "fast":
        from stonklib.sampling import FastSampler

        sampler = FastSampler(policy, tok, max_batch=B * G * cfg.steps_per_generation, max_len=cfg.max_prompt_tokens + C)
    elif sampler_kind == "hf":
        sampler = HFSampler(policy, tok)
    else:
        sampler = make_sampler(cfg, policy, tok)
    sampler = FullLength(sampler, force=shape.forced)
    log = RunLog(work / "ours", cfg.stage, tensorboard=False)
    trainer = GRPOTrainer(cfg, policy, tok, examples, [], runlog=log, sampler=sampler)
    ids, mask = encode_prompts(tok, texts, device)
    if shape.prompt_tokens is not None:
        want = (B * cfg.steps_per_generation, shape.prompt_tokens)
        assert ids.shape == want and bool(mask.all()), f"prompts are {tuple(ids.shape)}, expected {want}"
    return trainer, ids, mask, log


def run_ours(a, shape: Shape, model_dir: Path, texts: list[str], examples: list[Example], work: Path,
             sampler_kind: str = "auto", shared_prefix: bool = True, dense_update: bool = True) -> dict:
    """stonklib's trainer step; ``shared_prefix=False`` / ``dense_update=False`` are the ablations."""
    trainer, ids, mask, log = build_ours(a, shape, model_dir, texts, examples, work, sampler_kind, shared_prefix,
                                         **({"dense_update": dense_update} | parse_set(a.set)))
    sampler, device = trainer.sampler, trainer.device
    B, G, C = shape.prompts, shape.generations, shape.completion_tokens

    times, cpu_times, parts, gcs, generated = [], [], [], [], []
    reset_peak()
    with GCClock() as gc_clock:
        for i in range(a.warmup + a.steps):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            gc_clock.take()
            steps = list(trainer.rollout_steps(ids, mask, examples))  # one rollout: NI x SPG optimizer steps
            res = steps[-1]
            sync()
            times.append(time.perf_counter() - t0)
            if not shape.forced:  # counted after the clock stops (a device sync per step)
                generated.append(sum(int(r.rollout.completion_mask.sum()) for r in steps if r.iteration == 0))
            cpu_times.append(time.process_time() - c0)
            gcs.append(gc_clock.take())
            parts.append(res.timings)
            if shape.forced:
                _assert_full(res.rollout.completion_ids, res.rollout.completion_mask, B * G, C, "ours")
            print(f"  ours step {i}: {times[-1]:.3f} s {res.timings} gc={gcs[-1][0]:.3f} s ({gcs[-1][1]} full) "
                  f"loss={res.loss:.4f}", flush=True)
    peak = peak_gib()
    per_rollout = a.num_iterations * a.steps_per_generation
    out = summarise(times, a.warmup, B * G * C * a.steps_per_generation, peak, cpu_times)  # per rollout
    if not shape.forced:  # natural lengths: the tokens each rollout really generated
        natural_tokens(out, generated, times, a.warmup)
    out["optimizer_steps_per_s"] = per_rollout * len(times[a.warmup:]) / sum(times[a.warmup:])
    out["rollout_s_all"] = times
    out["peak_reserved_gib"] = peak_reserved_gib()
    out["gc_s_all"], out["gc_full_all"] = [g[0] for g in gcs], [g[1] for g in gcs]
    out["sampler"] = type(sampler.inner).__name__
    out["fast_path"] = {k: getattr(trainer.cfg, k) for k in FAST_PATH_FIELDS}
    import stonklib.kernels as kernels

    out["fast_path"]["kernel_configs"] = {"attention": list(kernels.ATTENTION_CONFIG),
                                          "matmuls": {k: list(v) for k, v in kernels.MLP_CONFIG.items()}}
    out["logprobs"] = trainer.update.logprobs.__name__
    out["trainer_timings"] = parts
    out["profile"] = profile_ours_step(trainer, ids, mask, examples)
    clock = out["profile"]["sampler"]
    if clock.get("decode_steps") and hasattr(sampler.inner, "weights"):  # FastSampler: decode time vs its floor
        out["roofline"] = roofline(sampler.inner, B * G * a.steps_per_generation, ids.shape[1], C, clock["decode_s"],
                                   clock["decode_steps"], copy_bandwidth())
        r = out["roofline"]
        print(f"  decode {r['decode_ms_per_step']:.3f} ms per token step; floor {r.get('floor_ms_per_step', float('nan')):.3f} ms "
              f"({r['bytes_per_step'] / 1e9:.2f} GB per step); ratio {r.get('ratio_to_floor', float('nan')):.2f}", flush=True)
    if getattr(a, "op_profile", False) and device.type == "cuda":
        out["op_profile"] = cuda_kernel_profile(trainer.step, ids, mask, examples)
    log.close()
    del trainer, sampler
    free_memory()
    return out


def natural_tokens(out: dict, generated: list[float], times: list[float], warmup: int) -> None:
    """Tokens per second over the timed steps from the tokens actually generated (completions ending at EOS)."""
    out["tokens_generated_all"] = generated
    out["tokens_generated"] = sum(generated[warmup:]) / len(generated[warmup:])
    out["completion_tokens_per_s"] = sum(generated[warmup:]) / sum(times[warmup:])


def _assert_full(c_ids: torch.Tensor, c_mask: torch.Tensor, n: int, C: int, who: str) -> None:
    assert c_ids.shape == (n, C), f"{who}: completions {tuple(c_ids.shape)}, expected {(n, C)}"
    assert int(c_mask.sum()) == n * C, f"{who}: {int(c_mask.sum())} completion tokens, expected {n * C} (EOS early?)"


def profile_ours_step(trainer, ids, mask, examples) -> dict:
    """One more (untimed) rollout with synchronised timers around its parts (its optimizer steps summed)."""
    acc = {"ref_logprobs_s": 0.0, "policy_logprobs_s": 0.0, "optimizer_s": 0.0, "refresh_s": 0.0}
    orig_lp, orig_opt, orig_refresh = trainer.update.logprobs, trainer.optimizer.step, trainer.sampler.refresh
    trainer.update.logprobs = trainer.update.forward.fn = timed(acc, logprob_pass_key("ref_logprobs_s", "policy_logprobs_s"), orig_lp)
    trainer.optimizer.step = timed(acc, lambda: "optimizer_s", orig_opt)
    trainer.sampler.refresh = timed(acc, lambda: "refresh_s", orig_refresh)
    clock = SamplerClock(trainer.sampler) if hasattr(trainer.sampler.inner, "_decode") else None
    try:
        if clock is not None:
            clock.__enter__()
        sync()
        t0 = time.perf_counter()
        steps = list(trainer.rollout_steps(ids, mask, examples))  # one rollout, all its optimizer steps
        sync()
        total = time.perf_counter() - t0
    finally:
        trainer.update.logprobs = trainer.update.forward.fn = orig_lp
        trainer.optimizer.step = orig_opt
        trainer.sampler.refresh = orig_refresh
        if clock is not None:
            clock.__exit__()
    t = steps[0].timings | {"update_s": sum(r.timings.get("update_s", 0.0) for r in steps)}  # sampling: the first's
    prof = {"step_s": total, "sample_s": t.get("sample_s"), "score_s": t.get("score_s"), **acc}
    prof["backward_loss_clip_s"] = (t.get("update_s", 0.0) - acc["ref_logprobs_s"] - acc["policy_logprobs_s"]
                                    - acc["optimizer_s"])
    prof["sampler"] = dict(clock.timings) if clock is not None else {}
    if trainer.update.graphed is not None:  # the passes ran inside the update's CUDA graph: no pass timers
        prof["update_graph"] = {"captures": trainer.update.graphed.captures, "replays": trainer.update.graphed.replays}
    return prof


# ---------------------------------------------------------------------- TRL
def run_trl(a, shape: Shape, model_dir: Path, texts: list[str], examples: list[Example], work: Path) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from stonklib.rewards import trl_reward_funcs

    if a.trl_warmup is not None:  # TRL's own untimed steps (it captures no graphs: one is enough)
        a = argparse.Namespace(**{**vars(a), "warmup": a.trl_warmup})
    cuda = torch.cuda.is_available() and a.device != "cpu"
    B, G, C = shape.prompts, shape.generations, shape.completion_tokens
    dtype = torch.bfloat16 if cuda else torch.float32
    tok = load_tokenizer(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    kw = {"dtype": dtype}
    if a.quantize:
        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                       bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
        kw["device_map"] = {"": 0 if cuda else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kw)
    if not a.quantize:
        model.to("cuda" if cuda else "cpu")
    per_rollout = a.num_iterations * a.steps_per_generation
    n_steps = (a.warmup + a.steps) * per_rollout  # whole generation cycles
    rows = [{"prompt": t, **ex.to_row()} for t, ex in zip(texts, examples, strict=True)]
    ds = Dataset.from_list(rows * (n_steps + 1))

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.t0, self.trainer, self.min_len, self.mean_len = [], None, None, [], []
            self.cpu_times, self.c0 = [], None
            self.gc_clock, self.gcs = GCClock(), []

        def on_train_begin(self, args, state, control, **kw):
            reset_peak()

        def on_step_begin(self, args, state, control, **kw):
            sync()
            self.t0, self.c0 = time.perf_counter(), time.process_time()
            self.gc_clock.take()

        def on_step_end(self, args, state, control, **kw):
            sync()
            self.times.append(time.perf_counter() - self.t0)
            self.cpu_times.append(time.process_time() - self.c0)
            self.gcs.append(self.gc_clock.take())
            m = self.trainer._metrics["train"]  # TRL's per-step lists (never flushed: logging_strategy="no")
            self.min_len.append(m["completions/min_length"][-1])
            self.mean_len.append(m["completions/mean_length"][-1])
            print(f"  trl step {len(self.times) - 1}: {self.times[-1]:.3f} s, completion lengths "
                  f"min {self.min_len[-1]:.0f} mean {self.mean_len[-1]:.1f}", flush=True)

    args = GRPOConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=B * G, num_generations=G,
        max_completion_length=C, generation_kwargs={"min_new_tokens": C} if shape.forced else {},
        temperature=TEMPERATURE, top_p=TOP_P,
        top_k=0, beta=BETA, num_iterations=a.num_iterations, steps_per_generation=a.steps_per_generation,
        loss_type="grpo", scale_rewards="group", learning_rate=LR,
        max_steps=n_steps, bf16=cuda, use_cpu=not cuda, gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False}, report_to="none", logging_strategy="no",
        save_strategy="no", disable_tqdm=True, seed=a.seed, dataloader_num_workers=0, log_completions=False,
        shuffle_dataset=False, remove_unused_columns=False,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(model=model, reward_funcs=trl_reward_funcs(), args=args, train_dataset=ds,
                          processing_class=tok, peft_config=LoraConfig(task_type="CAUSAL_LM", bias="none", **LORA),
                          callbacks=[timer])
    timer.trainer = trainer
    with timer.gc_clock:
        trainer.train()
    peak = peak_gib()
    min_len, mean_len = timer.min_len, timer.mean_len
    assert len(min_len) == n_steps, f"trl: {len(min_len)} steps logged, expected {n_steps}"
    if shape.forced:
        assert all(v == C for v in min_len), f"trl: completion min lengths {min_len}, expected {C}"
    out = summarise(timer.times, a.warmup * per_rollout, B * G * C, peak, timer.cpu_times)
    if not shape.forced:  # every step generates at mu = 1 (checked in main): its mean length times its completions
        natural_tokens(out, [m * B * G for m in mean_len], timer.times, a.warmup)
    timed = timer.times[a.warmup * per_rollout:]  # whole cycles: generation steps and the steps that reuse them
    out["optimizer_steps_per_s"] = len(timed) / sum(timed)
    if per_rollout > 1:  # the median step may reuse a rollout: count each completion once, over whole cycles
        out["completion_tokens_per_s"] = B * G * C * len(timed) / a.num_iterations / sum(timed)
    out["peak_reserved_gib"] = peak_reserved_gib()
    out["completion_min_length"], out["completion_mean_length"] = min_len, mean_len
    out["gc_s_all"], out["gc_full_all"] = [g[0] for g in timer.gcs], [g[1] for g in timer.gcs]
    del trainer, model
    free_memory()
    return out


# ---------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # --- what to run
    p.add_argument("--shape", choices=sorted(SHAPES), default="seed")
    p.add_argument("--systems", default="ours,trl",
                   help="Comma list of: ours, trl, ours_fast (FastSampler forced), ours_hf (HFSampler forced); "
                        "a _modules suffix runs the update through the PEFT/NF4 modules (dense_update=False); "
                        "a _full suffix (ours_full, ours_hf_full) computes log-probs with the full forward (ablations).")
    p.add_argument("--steps", type=int, default=3, help="Timed optimizer steps per system.")
    p.add_argument("--warmup", type=int, default=2,
                   help="Untimed rollouts first: the decode graphs are captured in the first, the update's graph at the second "
                        "batch of a shape (with 1, the first timed rollout of mu = 1 includes that capture).")
    p.add_argument("--trl_warmup", type=int, default=None,
                   help="Untimed steps for TRL (default: --warmup). TRL captures no graphs, so 1 is enough; "
                        "ours needs 2 for its update graph.")
    p.add_argument("--quantize", action=argparse.BooleanOptionalAction, default=None,
                   help="NF4 base weights (default: on for the GPU shapes, off for cpu).")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_iterations", type=int, default=1,
                   help="mu: optimizer passes over each rollout, for both systems (TRL's num_iterations).")
    p.add_argument("--steps_per_generation", type=int, default=1,
                   help="Optimizer steps each rollout is split into, for both systems: one sampling call covers "
                        "this many batches of the shape's prompts.")
    p.add_argument("--op_profile", action="store_true", help="Also record ours' CUDA kernel times of one extra step.")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="A TrainConfig field for ours (repeatable), e.g. --set compile_decoder=false.")
    # --- where
    p.add_argument("--model_dir", default=None, help="Synthetic model folder (created if missing; default: a temp dir).")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="Folder for <machine>-<shape>-<date>.json.")
    p.add_argument("--machine", default=None, help="Name in the file name (default: from the device).")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    alloc_conf = prefer_expandable_segments()  # as the trainer's launcher does, before CUDA's first allocation
    shape = SHAPES[a.shape]
    if not shape.forced and a.num_iterations * a.steps_per_generation > 1:
        raise SystemExit(f"--shape {a.shape}: natural-length shapes are measured at num_iterations = "
                         "steps_per_generation = 1 (each step's generated tokens are counted from its own sampling).")
    if a.quantize is None:
        a.quantize = a.shape in ("seed", "large", "seed_full", "large_full", "real")
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    print("config:", json.dumps(vars(a)), "shape:", shape, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if shape.model == "smollm2":
            from stonklib import paths

            model_dir = Path(a.model_dir or paths.EMBEDDED_MODEL)
        else:
            model_dir = random_model_dir(Path(a.model_dir) if a.model_dir else work / "model", tiny=a.shape == "tiny")
        tok = load_tokenizer(model_dir)
        examples = synthetic_examples(shape.prompts * a.steps_per_generation, a.seed)
        texts = prompt_texts(shape, tok, examples, a.seed)
        n_prompt = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
        result = {"machine": a.machine or machine_name(), "shape": a.shape, "shape_spec": vars(shape),
                  "num_iterations": a.num_iterations, "steps_per_generation": a.steps_per_generation,
                  "prompt_tokens": n_prompt, "quantize": a.quantize, "steps": a.steps, "warmup": a.warmup, "trl_warmup": a.trl_warmup,
                  "device": torch.cuda.get_device_name(0) if a.device == "cuda" else platform.processor() or "cpu",
                  "cpu_threads": torch.get_num_threads(), "versions": versions(),
                  "cuda_alloc_conf": alloc_conf, "date": time.strftime("%Y-%m-%d"), "overrides": parse_set(a.set),
                  "systems": {}}
        for system in [s.strip() for s in a.systems.split(",") if s.strip()]:
            print(f"== {system}", flush=True)
            if system == "trl":
                result["systems"]["trl"] = run_trl(a, shape, model_dir, texts, examples, work)
            elif system.startswith("ours"):
                kind = "fast" if "_fast" in system else "hf" if "_hf" in system else "auto"
                result["systems"][system] = run_ours(a, shape, model_dir, texts, examples, work, kind,
                                                     shared_prefix="_full" not in system,
                                                     dense_update="_modules" not in system)
            else:
                raise SystemExit(f"unknown system {system!r}: use trl, ours, ours_fast, ours_hf (+ _modules, _full).")
    trl = result["systems"].get("trl")
    for name, r in result["systems"].items():
        if trl and name != "trl":
            r["ratio"] = r["optimizer_steps_per_s"] / trl["optimizer_steps_per_s"]  # at mu = 1: tokens/s ratio
            r["ratio_cpu_time"] = r["completion_tokens_per_cpu_s"] / trl["completion_tokens_per_cpu_s"]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    mu = "" if a.num_iterations == a.steps_per_generation == 1 else f"mu{a.num_iterations}x{a.steps_per_generation}"
    path = out / result_name(result["machine"], "grpo_throughput", a.shape, mu)
    path.write_text(json.dumps(result, indent=2))
    print_table(result)
    print("wrote", path)
    return result


def print_table(result: dict) -> None:
    print(f"\n{result['machine']} {result['shape']} ({result['device']})")
    print(f"{'system':<17} {'s/step':>8} {'tok/s':>9} {'peak GiB':>9} {'tokens':>7} {'ratio':>7} {'cpu s/step':>10}")
    print(f"(num_iterations {result['num_iterations']}, steps_per_generation {result['steps_per_generation']}: ours' "
          "s/step is per rollout; optimizer steps/s: "
          + ", ".join(f"{k} {r['optimizer_steps_per_s']:.2f}" for k, r in result["systems"].items()) + ")")
    for name, r in result["systems"].items():
        peak = f"{r['peak_mem_gib']:.2f}" if r["peak_mem_gib"] is not None else "-"
        ratio = f"{r['ratio']:.1f}x" if "ratio" in r else "-"
        print(f"{name:<17} {r['step_s_median']:>8.3f} {r['completion_tokens_per_s']:>9.1f} {peak:>9} "
              f"{r['tokens_generated']:>7} {ratio:>7} {r['step_cpu_s_median']:>10.2f}")
        if "profile" in r:
            print("   profile:", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r["profile"].items()})
        if "op_profile" in r:
            print(f"   kernels: {r['op_profile']['kernel_ms']:.1f} ms in {r['op_profile']['kernels']}")
            for row in r["op_profile"]["top"][:25]:
                print(f"   {row['ms']:9.2f} ms {row['calls']:6d}x  {row['kernel']}")


if __name__ == "__main__":
    main()
