"""Where the GRPO update's time goes, and what the dense update path changes (GPU; runs on CPU too).

Run (from the repository root)::

    python benchmarks/update_profile.py --shape seed --model_dir /tmp/qwen15b --variants modules,dense

For each variant the trainer is built as ``grpo_throughput.py`` builds "ours" (same model, shapes,
NF4 + LoRA, KL, gradient checkpointing); ``modules`` runs the update's log-prob passes through the
model's PEFT/bitsandbytes modules (``dense_update=False``), ``dense`` over dense base weights
(``dense_update=True``, :mod:`stonklib.update.dense`; its LoRA matmuls in bf16, the default
``lora_matmul_dtype="model"``), ``dense_fp32_lora`` the same with the LoRA matmuls in float32
(``lora_matmul_dtype="adapter"``). After ``--warmup`` full steps, the last
step's rollout is kept and the update alone (reference pass, policy pass, loss, backward with
checkpoint recompute, clip, AdamW) is run on it:

- ``update_s_median``: wall time of ``--repeats`` updates, synchronised;
- ``parts``: one more update with synchronised timers around the reference pass, the policy pass
  and the rest (loss, backward, clip, optimizer);
- ``kernel_ms`` / ``kernels``: CUDA kernel time and kernel count of one update (``torch.profiler``);
  wall minus kernel time is what the GPU spent waiting for the host;
- ``peak_mem_gib``: peak allocated memory over the updates (weights and the sampler's copy included);
  ``peak_reserved_gib`` what the caching allocator held (CUDA graph pools included);
- ``check`` (dense variants): the dense path against the module path on the same rollout with dropout
  off: max abs difference of the completion log-probs and the relative L2 difference of the LoRA
  gradients (bf16 rounding is expected);
- ``ref_graph`` (dense variants): the reference pass replayed from its CUDA graph against the same
  pass run eagerly (max abs difference; how many graphs were captured and replayed);
- ``update_graph`` (dense variants on CUDA, where the trainer replays the whole update from a graph,
  :mod:`stonklib.update.graphs`): a replay against the same passes, loss and backward run
  eagerly with the same dropout seed (loss, stats, and the LoRA gradients' max abs and relative L2
  differences; ``eager_vs_eager_*``: the eager passes run twice, the nondeterminism of the GPU's
  reductions alone); ``parts`` is empty then (the passes run inside the graph); ``padded``: updates on
  the rollout cut to half its completion length, replayed from the full-length graph (padded up)
  against the same updates run eagerly. ``update_graph.on_policy`` checks the mu = 1 loss;
  ``update_graph.old_and_sampler`` (``dense_tis``) the loss with the old and the sampler's log-probs
  as the graph's static inputs, as mu > 1 and ``tis_cap`` run it.

``dense_nographs`` is ``dense`` with ``update_graphs=False``: every pass eager. ``dense_tis`` is ``dense``
with ``tis_cap=2``, so the trainer computes pi_old and weights the policy term by the sampler ratio.

Writes ``<out>/<machine>-update_profile-<shape>.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

import bench_common as bc  # noqa: E402
import grpo_throughput as gt  # noqa: E402

from stonklib.environment import prefer_expandable_segments  # noqa: E402

# name: TrainConfig overrides
VARIANTS = {"modules": {"dense_update": False},
            "dense": {"dense_update": True},
            "dense_nographs": {"dense_update": True, "update_graphs": False},
            "dense_fp32_lora": {"dense_update": True, "lora_matmul_dtype": "adapter"},
            "dense_tis": {"dense_update": True, "tis_cap": 2.0},
            "dense_no_ckpt": {"dense_update": True, "gradient_checkpointing": False}}


def capture_update_inputs(trainer, ids, mask, examples, warmup: int):
    """Run ``warmup`` full steps; return the last step's (rollout, advantages) as the update received them."""
    kept = {}
    orig = trainer._update

    def spy(roll, adv, *rest):
        kept["args"] = (roll, adv)
        return orig(roll, adv, *rest)

    trainer._update = spy
    try:
        for i in range(warmup):
            bc.sync()
            t0 = time.perf_counter()
            trainer.step(ids, mask, examples)
            bc.sync()
            print(f"  warm-up step {i}: {time.perf_counter() - t0:.3f} s", flush=True)
    finally:
        trainer._update = orig
    return kept["args"]


def timed_parts(trainer, roll, adv) -> dict:
    """One update with synchronised timers around the reference and policy passes."""
    acc = {"ref_s": 0.0, "policy_s": 0.0}
    orig = trainer.update.logprobs
    trainer.update.logprobs = trainer.update.forward.fn = bc.timed(acc, bc.logprob_pass_key("ref_s", "policy_s"), orig)
    try:
        bc.sync()
        t0 = time.perf_counter()
        trainer._update(roll, adv)
        bc.sync()
        total = time.perf_counter() - t0
    finally:
        trainer.update.logprobs = trainer.update.forward.fn = orig
    return {"update_s": total, **acc, "loss_backward_clip_optimizer_s": total - acc["ref_s"] - acc["policy_s"]}


def dense_check(trainer, roll) -> dict:
    """Dense vs module log-probs and LoRA gradients on one rollout, dropout off (policy in eval mode)."""
    from stonklib.update.prefix import shared_prefix_logprobs

    policy, C, T = trainer.policy, roll.completion_ids.shape[1], trainer.cfg.temperature
    keep = roll.completion_mask.bool()
    params = [p for p in policy.parameters() if p.requires_grad]
    policy.eval()
    out = {}
    try:
        res = {}
        for name, fn in (("dense", trainer.update.logprobs), ("modules", shared_prefix_logprobs)):
            lp = fn(policy, roll.input_ids, roll.attention_mask, C, T)
            grads = torch.autograd.grad((lp * roll.completion_mask).sum(), params)
            res[name] = (lp.detach()[keep], torch.cat([g.flatten().float() for g in grads]))
        (a, ga), (b, gb) = res["dense"], res["modules"]
        out = {"logp_max_abs_diff": float((a - b).abs().max()), "logp_mean_abs": float(b.abs().mean()),
               "grad_rel_l2_diff": float((ga - gb).norm() / gb.norm())}
    finally:
        policy.train()
    return out


def ref_graph_check(trainer, roll) -> dict:
    """The reference pass replayed from its CUDA graph against the same pass run eagerly (max abs difference)."""
    from stonklib.models import adapters_off
    from stonklib.update.prefix import StreamGeometry, stream_logprobs

    fn, C, T = trainer.update.logprobs, roll.completion_ids.shape[1], trainer.cfg.temperature
    with torch.no_grad(), adapters_off(trainer.policy):
        graphed = fn(trainer.policy, roll.input_ids, roll.attention_mask, C, T)
        geo = StreamGeometry.of(trainer.policy, roll.input_ids, roll.attention_mask, C)
        eager = stream_logprobs(trainer.policy, geo, T, blocks=fn.blocks)
    keep = roll.completion_mask.bool()
    return {"max_abs_diff": float((graphed - eager)[keep].abs().max()), "captures": fn.graphs.captures,
            "replays": fn.graphs.replays}


def update_graph_check(trainer, roll, adv) -> dict:
    """A replay of the trainer's update graph against the same passes run eagerly, with the same dropout seed:
    on-policy (mu = 1), and with old and sampler log-probs as static inputs (mu > 1 with ``tis_cap``)."""
    if trainer.update.loss.keywords.get("tis_cap") is not None:  # the loss needs the sampler's log-probs
        return {"old_and_sampler": _graph_vs_eager(trainer, roll, adv, with_old=True)}
    return {"on_policy": _graph_vs_eager(trainer, roll, adv, with_old=False)}


def _graph_vs_eager(trainer, roll, adv, with_old: bool) -> dict:
    from stonklib.models import adapters_off

    up, policy, params = trainer.update, trainer.policy, trainer.params
    graphed, C, T = up.graphed, roll.completion_ids.shape[1], trainer.cfg.temperature
    gen = torch.Generator().manual_seed(5)
    # Random advantages: a random-weight model's rewards are often all equal (zero advantages, zero gradients).
    adv = torch.randn(adv.shape, generator=gen).to(adv.device)
    extras, sampler = (adv, roll.completion_mask.float()), roll.sampler_logp
    if with_old:  # pi_old as sampled, and the sampler's log-probs (else: made slightly different from it)
        old = up.old_logprobs(roll)
        if sampler is None:
            sampler = old + 0.05 * torch.randn(old.shape, generator=gen).to(old.device)
        extras += (old,)
    extras += () if sampler is None else (sampler,)
    loss_fn = up.graph_losses[(with_old, sampler is not None)]  # the key the trainer's steps use
    with_ref = trainer.cfg.kl_coef > 0
    policy.train()
    res = {}
    for name in ("eager", "eager_again", "graph"):
        for p in params:
            p.grad = None
        torch.manual_seed(1234)  # the same dropout seed for both (each draws it once, at its policy pass)
        if name.startswith("eager"):
            ref = None
            if with_ref:
                with torch.no_grad(), adapters_off(policy):
                    ref = up.logprobs(policy, roll.input_ids, roll.attention_mask, C, T)
            loss, stats = loss_fn(up.logprobs(policy, roll.input_ids, roll.attention_mask, C, T), ref, *extras)
            loss.backward()
        else:  # a batch the graph does not cover yet runs eagerly (None); the second one is captured
            for _ in range(3):
                torch.manual_seed(1234)
                out = graphed(policy, roll.input_ids, roll.attention_mask, C, T, extras, loss_fn, with_ref=with_ref)
                if out is not None:
                    break
            loss, stats = out
        res[name] = (float(loss), {k: float(v) for k, v in stats.items()},
                     torch.cat([p.grad.flatten().float() for p in params]))
    for p in params:
        p.grad = None
    (le, se, ge), (lg, sg, gg), (_, _, ga) = res["eager"], res["graph"], res["eager_again"]
    return {"loss_abs_diff": abs(le - lg), "loss": le, "stats_max_abs_diff": max(abs(se[k] - sg[k]) for k in se),
            "stats": sorted(se), "grad_max_abs_diff": float((ge - gg).abs().max()), "grad_max_abs": float(ge.abs().max()),
            "grad_rel_l2_diff": float((ge - gg).norm() / ge.norm()),
            # the eager passes against themselves: how far run-to-run nondeterminism alone moves the gradients
            "eager_vs_eager_grad_rel_l2_diff": float((ge - ga).norm() / ge.norm()),
            "eager_vs_eager_grad_max_abs_diff": float((ge - ga).abs().max()),
            "captures": graphed.captures, "replays": graphed.replays}


def padded_timing(trainer, roll, adv, repeats: int) -> dict:
    """Updates on the rollout cut to half its completion length: replayed from the full-length graph (padded up)
    against the same updates run eagerly (every pass), ``repeats`` each, synchronised wall times."""
    from stonklib.sampling.rollout import Rollout

    half = roll.completion_ids.shape[1] // 2
    cut = Rollout(roll.prompt_ids, roll.prompt_mask, roll.completion_ids[:, :half], roll.completion_mask[:, :half],
                  roll.texts, None if roll.sampler_logp is None else roll.sampler_logp[:, :half])
    graphed, captures = trainer.update.graphed, trainer.update.graphed.captures
    out = {"completion_tokens": half}
    for name in ("padded_replay", "eager"):
        trainer.update.graphed = graphed if name == "padded_replay" else None
        times = []
        for _ in range(repeats):
            bc.sync()
            t0 = time.perf_counter()
            trainer._update(cut, adv)
            bc.sync()
            times.append(time.perf_counter() - t0)
        out[name] = {"s_median": statistics.median(times), "s_all": times}
    trainer.update.graphed = graphed
    out["new_captures"] = graphed.captures - captures  # 0: the shorter batches replayed the existing graph
    return out


def run_variant(a, shape, model_dir, texts, examples, work, name: str) -> dict:
    overrides = VARIANTS[name]
    trainer, ids, mask, log = gt.build_ours(a, shape, model_dir, texts, examples, work / name, **overrides)
    print(f"== {name}: update log-probs with {trainer.update.logprobs.__name__}", flush=True)
    roll, adv = capture_update_inputs(trainer, ids, mask, examples, a.warmup)
    bc.reset_peak()
    times = []
    for _ in range(a.repeats):
        bc.sync()
        t0 = time.perf_counter()
        trainer._update(roll, adv)
        bc.sync()
        times.append(time.perf_counter() - t0)
    out = {"logprobs": trainer.update.logprobs.__name__, "update_s_median": statistics.median(times), "update_s_all": times,
           "peak_mem_gib": bc.peak_gib(), "peak_reserved_gib": bc.peak_reserved_gib(),
           "parts": timed_parts(trainer, roll, adv)}
    if torch.cuda.is_available():
        out |= bc.cuda_kernel_profile(trainer._update, roll, adv, top=25)
    if name.startswith("dense"):
        out["check"] = dense_check(trainer, roll)
        out["ref_graph"] = ref_graph_check(trainer, roll)
        if trainer.update.graphed is not None:
            out["update_graph"] = update_graph_check(trainer, roll, adv)
            out["padded"] = padded_timing(trainer, roll, adv, a.repeats)
    if hasattr(trainer.update.logprobs, "blocks"):
        shared = getattr(trainer.sampler, "weights", None)
        out["dense_extra_gib"] = bc.dense_extra_bytes(trainer.update.logprobs.blocks, trainer.policy, shared) / 2**30
    print(f"   update {out['update_s_median']:.3f} s, parts {out['parts']}, kernels "
          f"{out.get('kernel_ms', 0):.1f} ms in {out.get('kernels', 0)}, peak {out['peak_mem_gib']}, "
          f"check {out.get('check')}, reference graph {out.get('ref_graph')}, update graph {out.get('update_graph')}, "
          f"padded {out.get('padded')}",
          flush=True)
    log.close()
    del trainer
    bc.free_memory()
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(bc.SHAPES), default="seed")
    p.add_argument("--variants", default="modules,dense", help=f"Comma list of {', '.join(VARIANTS)}.")
    p.add_argument("--warmup", type=int, default=2, help="Full steps before the update is timed.")
    p.add_argument("--repeats", type=int, default=5, help="Timed updates per variant.")
    p.add_argument("--quantize", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model_dir", default=None)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--machine", default=None)
    p.set_defaults(num_iterations=1, steps_per_generation=1)  # build_ours reads them (grpo_throughput has the flags)
    a = p.parse_args(argv)
    alloc_conf = prefer_expandable_segments()  # as the trainer's launcher does, before CUDA's first allocation
    a.steps = 0  # build_ours sizes max_steps from warmup + steps
    shape = bc.SHAPES[a.shape]
    a.quantize = a.shape in ("seed", "large") if a.quantize is None else a.quantize
    a.device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    result = {"machine": a.machine or bc.machine_name(), "shape": a.shape, "shape_spec": vars(shape),
              "quantize": a.quantize, "cuda_alloc_conf": alloc_conf, "warmup": a.warmup, "repeats": a.repeats,
              "versions": bc.versions(),
              "device": torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu", "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = bc.random_model_dir(Path(a.model_dir) if a.model_dir else work / "model", tiny=a.shape == "tiny")
        if shape.model == "smollm2":
            from stonklib import paths

            model_dir = Path(a.model_dir or paths.EMBEDDED_MODEL)
        tok = bc.load_tokenizer(model_dir)
        examples = bc.synthetic_examples(shape.prompts, a.seed)
        texts = bc.prompt_texts(shape, tok, examples, a.seed)
        for name in [v.strip() for v in a.variants.split(",") if v.strip()]:
            if name not in VARIANTS:
                raise SystemExit(f"unknown variant {name!r}: use {', '.join(VARIANTS)}.")
            result["variants"][name] = run_variant(a, shape, model_dir, texts, examples, work, name)
    bc.write_result(a.out, bc.result_name(result["machine"], "update_profile", a.shape), result)
    return result


if __name__ == "__main__":
    main()
