"""Where one FastSampler decode step spends its time, and what other decode formulations give.

    python benchmarks/decode_profile.py --variant baseline --model_dir /tmp/qwen15b      # GPU
    python benchmarks/decode_profile.py --variant sdpa --model_dir /tmp/qwen15b
    python benchmarks/decode_profile.py --shape tiny --variant all                       # CPU smoke test

Same model as ``grpo_throughput.py`` (Qwen2.5-1.5B architecture, random weights, NF4 + LoRA r=8 on
q/k/v/o; the sampler decodes from its merged bf16 copy), 16 rows (the ``seed`` shape: 4 prompts x 4),
512-token prompts, 256 new tokens forced. Per variant:

- ``ms_per_token_step``: FastSampler's own profile of ``sample`` (decode time / decode steps),
  median of ``--repeats`` calls after one untimed call (capture, compile);
- ``logits_rel_err``: relative L2 distance of one decode step's logits to the baseline's (same
  prompts, same token), so a faster variant that computes something else is caught;
- for ``baseline`` also a ``torch.profiler`` table of three eager decode steps: CUDA kernel time per
  step, kernels per step, and the top kernels (the gap between kernel time and the graph replay
  time is launch/idle time).

Variants: ``baseline`` (the plain-torch decoder with per-layer ``torch.compile`` on CUDA; FastSampler's
default before the Triton kernels), ``kernels`` (the same with the Triton kernels of
``stonklib.kernels``: each layer's RoPE + cache write + attention and its MLP, and the top-p
draw; FastSampler's CUDA default now), ``kernels_no_mlp`` (the same, MLP on cuBLAS), ``eager`` (no
compile), ``sdpa`` (attention as one ``scaled_dot_product_attention`` call over the static cache, the
G query heads of a KV head as G query rows), ``step_compile`` (the whole decode step under
``torch.compile``, ``--compile_mode``, captured in the same CUDA graph), ``step_compile_sdpa`` (both),
``layer_compile`` (the shipped per-layer compile, with ``--compile_mode``: e.g. max-autotune lets
Inductor pick Triton GEMMs for the skinny 16-row matmuls instead of cuBLAS).
Run each in its own process (``--variant X``); results are merged into
``<out>/<machine>-decode_profile.json`` (a variant's entry is keyed ``variant`` or, for compiled
ones, ``variant@mode``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_common import LORA, SamplerClock, load_tokenizer, machine_name, random_model_dir, result_name  # noqa: E402

VARIANTS = ("baseline", "kernels", "kernels_no_mlp", "eager", "sdpa", "layer_compile", "step_compile", "step_compile_sdpa")


def decode_sdpa(self, tok, pos, slot, slot_valid):
    """:meth:`Decoder.decode` with the attention core as one SDPA call (same math, fewer kernels)."""
    s = self.spec
    n = tok.shape[0]
    groups = s.n_heads // s.n_kv_heads
    cos, sin = self.rope_step(pos)
    visible = (slot_valid & (self.slot_ids <= slot))[:, None, None, :]  # [N, 1, 1, L]
    x = F.embedding(tok, self.w.embed)
    for li, lw in enumerate(self.w.layers):
        q, k, v = self._pre(x, lw.ln_attn, lw.qkv.weight, lw.qkv.bias, cos, sin, s.rms_eps,
                            s.n_heads, s.n_kv_heads, s.head_dim)
        kc, vc = self.cache.k[li, :n], self.cache.v[li, :n]
        kc.index_copy_(2, slot, k.unsqueeze(2))
        vc.index_copy_(2, slot, v.unsqueeze(2))
        a = F.scaled_dot_product_attention(q.view(n, s.n_kv_heads, groups, s.head_dim), kc, vc,
                                           attn_mask=visible, scale=self.scale).reshape(n, -1)
        x = self._post(x, a, lw.o.weight, lw.o.bias, lw.ln_mlp, lw.gate_up.weight, lw.gate_up.bias,
                       lw.down.weight, lw.down.bias, s.rms_eps)
    return self.logits(x)


def build(variant: str, model_dir: Path, rows: int, max_len: int, quantize: bool, compile_mode: str):
    from stonklib.models import add_lora, load_base_model
    from stonklib.sampling import FastSampler

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_base_model(str(model_dir), quantize=quantize, device=dev,
                            device_map={"": 0} if dev.type == "cuda" else None)
    policy = add_lora(model, LORA["r"], LORA["lora_alpha"], LORA["lora_dropout"], LORA["target_modules"])
    tok = load_tokenizer(model_dir)
    per_layer_compile = (None if variant in ("baseline", "kernels", "kernels_no_mlp", "sdpa")
                         else compile_mode if variant == "layer_compile" else False)
    fs = FastSampler(policy, tok, max_batch=rows, max_len=max_len, compile=per_layer_compile,
                     kernels=variant.startswith("kernels"), mlp_kernel=variant == "kernels")
    dec = fs.decoder
    if variant.endswith("sdpa"):
        dec.decode = decode_sdpa.__get__(dec)
    if variant.startswith("step_compile"):
        dec.decode = torch.compile(dec.decode, fullgraph=True, dynamic=False, mode=compile_mode)
    return fs, tok, dev


def kernel_profile(fs, n: int, slot: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    steps = 3
    st = fs.state
    st.slot.fill_(slot), st.pos.fill_(slot), st.step.fill_(1)  # back inside the cache after sample() filled it
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fs._decode_step(n, False)
        torch.cuda.synchronize()
    rows = []
    total_us, count = 0.0, 0
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)
        if t <= 0:
            continue
        rows.append({"kernel": e.key[:120], "us_per_step": t / steps, "calls_per_step": e.count / steps})
        total_us += t
        count += e.count
    rows.sort(key=lambda r: -r["us_per_step"])
    return {"kernel_us_per_step": total_us / steps, "kernels_per_step": count / steps, "top": rows[:20]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", choices=(*VARIANTS, "all"), default="baseline")
    ap.add_argument("--shape", choices=("seed", "tiny"), default="seed")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile_mode", default="default",
                    help="torch.compile mode of the step_compile variants (e.g. max-autotune-no-cudagraphs; "
                         "the CUDA graph is FastSampler's own).")
    ap.add_argument("--quantize", action=argparse.BooleanOptionalAction, default=True,
                    help="NF4 base weights on CUDA (the default); the sampler decodes from its own bf16 copy either way, "
                         "so --no-quantize times the same decode step without bitsandbytes.")
    ap.add_argument("--model_dir", default="/tmp/qwen15b")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args(argv)
    variants = VARIANTS if a.variant == "all" else (a.variant,)
    tiny = a.shape == "tiny"
    P, C = (16, 8) if tiny else (512, 256)
    model_dir = random_model_dir(Path(a.model_dir + ("-tiny" if tiny else "")), tiny=tiny)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / result_name(machine_name(), "decode_profile", "tiny" if tiny else "")
    result = json.loads(path.read_text()) if path.is_file() else {"variants": {}}
    ref_path = Path("/tmp") / f"decode_profile_ref{'-tiny' if tiny else ''}.pt"
    for variant in variants:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        quantize = a.quantize and not tiny and torch.cuda.is_available()
        fs, tok, dev = build(variant, model_dir, a.rows, P + C, quantize=quantize, compile_mode=a.compile_mode)
        g = torch.Generator().manual_seed(1)
        prompts = torch.randint(10, 1000, (a.rows // 4, P), generator=g).repeat_interleave(4, 0).to(dev)
        mask = torch.ones_like(prompts)
        kw = dict(max_new_tokens=C, min_new_tokens=C, temperature=0.7, top_p=0.9)
        fs.sample(prompts, mask, **kw)  # capture / compile
        setup_s = time.perf_counter() - t0
        per_step = []
        with SamplerClock(fs) as clock:
            for _ in range(a.repeats):
                fs.sample(prompts, mask, **kw)
                per_step.append(1e3 * clock.timings["decode_s"] / clock.timings["decode_steps"])
        # One decode step's logits from a fixed state, against the baseline's.
        with torch.no_grad():
            fs.decoder.prefill(prompts, mask)
            n = a.rows
            tok_ids = torch.full((n,), 7, dtype=torch.long, device=dev)
            pos = torch.full((n,), P, dtype=torch.long, device=dev)
            slot = torch.tensor([P], device=dev)
            valid = torch.ones(n, P + C, dtype=torch.bool, device=dev)
            logits = fs.decoder.decode(tok_ids, pos, slot, valid).float().cpu()
        if variant == "baseline" or not ref_path.is_file():
            torch.save(logits, ref_path)
        ref = torch.load(ref_path)
        entry = {"ms_per_token_step": statistics.median(per_step), "ms_all": per_step, "setup_s": setup_s, "quantize": quantize,
                 "logits_rel_err": float((logits - ref).norm() / ref.norm()), "rows": a.rows,
                 "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
                 "torch": torch.__version__, "compile_mode": a.compile_mode if "compile" in variant else None}
        if variant in ("baseline", "kernels", "kernels_no_mlp") and dev.type == "cuda":
            entry["kernels"] = kernel_profile(fs, a.rows, P)
        key = f"{variant}@{a.compile_mode}" if "compile" in variant else variant
        result["variants"][key] = entry
        print(key, json.dumps({k: v for k, v in entry.items() if k != "kernels"}), flush=True)
        if "kernels" in entry:
            k = entry["kernels"]
            print(f"  kernel time {k['kernel_us_per_step']:.0f} us/step, {k['kernels_per_step']:.0f} kernels/step")
            for r in k["top"][:12]:
                print(f"  {r['us_per_step']:8.1f} us {r['calls_per_step']:6.1f}x  {r['kernel']}")
        del fs
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    path.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
