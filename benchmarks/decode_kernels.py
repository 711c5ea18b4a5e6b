"""The Triton decode kernels at the ``seed`` shape: error against plain torch, time per call, sweep.

    python benchmarks/decode_kernels.py --sweep      # GPU (writes <out>/<machine>-decode_kernels.json)

Shape: one Qwen2.5-1.5B layer at 16 rows (4 prompts x 4 completions), attention over a 768-slot
cache at slot 600 (12 query heads, 2 KV heads, head dim 128), 37 left-padded slots per row.

Reported: the largest absolute error against the plain-torch twin (same bf16 inputs; the cache
writes too), and the median GPU time per call (10 calls captured in a CUDA graph, replays timed
by CUDA events) beside the plain-torch attention core it replaces (RoPE, two cache writes, masked
``baddbmm``, softmax, cast, ``bmm``: what the decoder ran before). With ``--sweep`` every
``(chunk, block_l, num_warps)`` of a grid is timed; the fastest is what ``ATTENTION_CONFIG`` in
``stonklib/kernels/attention.py`` should hold (``MLP_CONFIG`` in ``stonklib/kernels/mlp.py`` for the matmuls).

The top-p draw (``sample_top_p``) is timed the same way against the plain-torch sort-free draw at
16 x 151,936 logits, and its distribution is checked on 200k draws from a 96-token softmax
(total-variation distance to the exact renormalised nucleus; tokens drawn outside it), with the
vocabulary in one chunk and in three.

The skinny MLP kernels (``SkinnyMLP``: gate|up with SiLU-gating fused, down with the residual
fused, optional split-K) are timed against cuBLAS on the same bf16 weights (``F.linear`` + SiLU +
product; ``addmm_``), with ``--sweep`` over ``(block_n, block_k, split_k, num_warps, num_stages)``.

``--only attention,mlp`` runs some cases.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_common import machine_name, result_name, write_result  # noqa: E402


def time_call(fn, iters: int) -> float:
    """Median GPU microseconds per call of ``fn``: 10 calls captured in one CUDA graph, replays timed by CUDA events.

    In a graph, as in FastSampler's decode step, Python and launch overhead are gone: this is the
    kernels' own time.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(10):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    samples = []
    for _ in range(max(3, iters // 10)):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        samples.append(a.elapsed_time(b) * 100.0)  # ms per 10 calls -> us per call
    samples.sort()
    return samples[len(samples) // 2]


def attention_case(iters: int, sweep: bool) -> dict:
    import stonklib.kernels as K

    n, H, KVH, D, L, slot = 16, 12, 2, 128, 768, 600
    dev, dt = torch.device("cuda"), torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    qkv = torch.randn(n, (H + 2 * KVH) * D, device=dev, dtype=dt, generator=g)
    ang = torch.rand(n, D, device=dev, generator=g) * 6.28
    cos, sin = ang.cos().to(dt), ang.sin().to(dt)
    kc = torch.randn(n, KVH, L, D, device=dev, dtype=dt, generator=g)
    vc = torch.randn(n, KVH, L, D, device=dev, dtype=dt, generator=g)
    valid = torch.ones(n, L, dtype=torch.bool, device=dev)
    valid[:, :37] = False  # left padding
    s = torch.tensor([slot], device=dev)
    k2, v2 = kc.clone(), vc.clone()
    out = K.decode_attention(qkv, cos, sin, kc, vc, valid, s, H, KVH, D ** -0.5)
    ref = K.decode_attention_reference(qkv, cos, sin, k2, v2, valid, s, H, KVH, D ** -0.5)
    res = {"max_abs_err": float((out.float() - ref.float()).abs().max()), "ref_abs_max": float(ref.float().abs().max()),
           "cache_max_abs_err": float(max((kc.float() - k2.float()).abs().max(), (vc.float() - v2.float()).abs().max()))}
    res["config"] = list(K.ATTENTION_CONFIG)
    res["kernel_us"] = time_call(lambda: K.decode_attention(qkv, cos, sin, kc, vc, valid, s, H, KVH, D ** -0.5), iters)
    if sweep:
        rows = []
        for chunk, block_l, warps in itertools.product((32, 64, 128, 256), (16, 32, 64), (2, 4, 8)):
            if block_l > chunk:
                continue
            run = functools.partial(K.decode_attention, qkv, cos, sin, kc, vc, valid, s, H, KVH, D ** -0.5,
                                    chunk=chunk, block_l=block_l, num_warps=warps)
            try:
                rows.append({"us": time_call(run, max(30, iters // 4)), "config": [chunk, block_l, warps]})
            except Exception as e:  # out of shared memory/registers for this tile: skip it
                print(f"  attention {(chunk, block_l, warps)}: {type(e).__name__}", flush=True)
        rows.sort(key=lambda r: r["us"])
        res["sweep"] = rows

    # What the plain decoder runs for the same work: RoPE, cache writes, masked bmm, softmax, bmm. Its mask
    # is built once per step for all layers, so it is built outside the timed call here too.
    from stonklib.sampling.decoder import attend_static_cache, cache_bias, rope_qkv

    bias = cache_bias(valid & (torch.arange(L, device=dev) <= s), H, KVH, dt)

    def torch_core():
        q, k, v = rope_qkv(qkv, cos[:, None], sin[:, None], H, KVH, D)
        return attend_static_cache(q, k, v, k2, v2, s, bias, D ** -0.5)

    res["torch_us"] = time_call(torch_core, iters)
    return res


def sampler_case(iters: int) -> dict:
    """The Triton top-p draw against the plain-torch one at 16 x 151,936, and its distribution on a small vocabulary."""
    import stonklib.kernels as K
    from stonklib.sampling.fast import _sample_top_p

    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    logits = torch.randn(16, 151936, device=dev, generator=g) * 3
    temp, top_p = torch.tensor([0.7], device=dev), torch.tensor([0.9], device=dev)
    seed = torch.tensor([1], device=dev)
    res = {"kernel_us": time_call(lambda: K.sample_top_p(logits, temp, top_p, seed), iters),
           "torch_us": time_call(lambda: _sample_top_p(logits, temp, top_p, 8), iters)}
    # Distribution: 200k rows of one 96-token distribution, against the exact renormalised nucleus.
    small = (torch.randn(96, device=dev, generator=g) * 2).expand(200_000, -1).contiguous()
    probs = torch.softmax(small[0] / 0.7, -1)
    sp, order = probs.sort(descending=True)
    keep = order[(sp.cumsum(0) - sp) < 0.9]
    target = torch.zeros_like(probs)
    target[keep] = probs[keep] / probs[keep].sum()
    for chunk in (4096, 32):
        tok = K.sample_top_p(small, temp, top_p, seed, chunk=chunk)
        freq = torch.bincount(tok, minlength=96).float() / tok.numel()
        res[f"tv_distance_chunk{chunk}"] = float(0.5 * (freq - target).abs().sum())
        res[f"outside_nucleus_chunk{chunk}"] = int((target[tok] == 0).sum())
    return res


def mlp_case(iters: int, sweep: bool) -> dict:
    """The skinny MLP kernels (16 rows, 1536 -> 2 x 8960 -> 1536, bf16) against cuBLAS, with a tile sweep."""
    import stonklib.kernels as K

    dev, dt = torch.device("cuda"), torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    hidden, inter, m = 1536, 8960, 16
    w_gu = (torch.randn(2 * inter, hidden, device=dev, generator=g) * 0.02).to(dt)
    w_d = (torch.randn(hidden, inter, device=dev, generator=g) * 0.02).to(dt)
    x = torch.randn(m, hidden, device=dev, dtype=dt, generator=g)
    h = torch.randn(m, hidden, device=dev, dtype=dt, generator=g)
    act = (torch.randn(m, inter, device=dev, generator=g) * 0.1).to(dt)
    mlp = K.SkinnyMLP(w_gu, w_d, m)
    ref = K.skinny_mlp_reference(x, h, w_gu, w_d).float()
    res = {"config": {k: list(v) for k, v in K.MLP_CONFIG.items()},
           "max_abs_err": float((mlp(x, h).float() - ref).abs().max()), "ref_abs_max": float(ref.abs().max())}

    def cublas_gate_up():
        gate, up = F.linear(h, w_gu).chunk(2, dim=-1)
        return F.silu(gate) * up

    res["gate_up_us"] = time_call(lambda: mlp.gate_up(h), iters)
    res["down_us"] = time_call(lambda: mlp.down(act, x), iters)
    res["cublas_gate_up_silu_us"] = time_call(cublas_gate_up, iters)
    res["cublas_down_us"] = time_call(lambda: x.clone().addmm_(act, w_d.t()), iters)
    res["weight_mb"] = {"gate_up": w_gu.numel() * 2 / 1e6, "down": w_d.numel() * 2 / 1e6}
    if sweep:
        res["gate_up_sweep"] = sweep_tiles("gate_up", itertools.product((32, 64, 128), (64, 128, 256), (1,), (4, 8), (3, 4)),
                                           lambda c: functools.partial(mlp.gate_up, h, c), iters)
        res["down_sweep"] = sweep_tiles("down", itertools.product((16, 32, 64), (128, 256), (1, 2, 4, 8), (4,), (3, 4)),
                                        lambda c: functools.partial(mlp.down, act, x, c), iters)
    return res


def sweep_tiles(name: str, grid, make_run, iters: int) -> list[dict]:
    """µs per call of ``make_run(config)`` for every config of ``grid``, fastest first (tiles that do not fit are skipped)."""
    rows = []
    for c in grid:
        try:
            rows.append({"us": time_call(make_run(c), max(30, iters // 4)), "config": list(c)})
        except Exception as e:  # out of shared memory/registers for this tile: skip it
            print(f"  {name} {c}: {type(e).__name__}", flush=True)
    return sorted(rows, key=lambda r: r["us"])


CASES = ("attention", "sampler", "mlp")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--sweep", action="store_true", help="time every (chunk, block_l, num_warps) of the grid")
    ap.add_argument("--only", default=",".join(CASES), help=f"comma list of cases ({', '.join(CASES)})")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args(argv)
    only = {c.strip() for c in a.only.split(",") if c.strip()}
    if only - set(CASES):
        raise SystemExit(f"unknown case(s) {sorted(only - set(CASES))}: use {', '.join(CASES)}.")
    if not torch.cuda.is_available():
        raise SystemExit("decode_kernels.py measures CUDA kernels; run it on a GPU machine.")
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    import triton

    result["triton"] = triton.__version__
    if "attention" in only:
        result["attention"] = attention_case(a.iters, a.sweep)
        print("attention", json.dumps({k: v for k, v in result["attention"].items() if k != "sweep"}), flush=True)
        for row in result["attention"].get("sweep", [])[:6]:
            print("   ", row, flush=True)
    if "sampler" in only:
        result["sampler"] = sampler_case(a.iters)
        print("sampler", json.dumps(result["sampler"]), flush=True)
    if "mlp" in only:
        result["mlp"] = mlp_case(a.iters, a.sweep)
        print("mlp", json.dumps({k: v for k, v in result["mlp"].items() if not k.endswith("sweep")}), flush=True)
        for name in ("gate_up", "down"):
            for row in result["mlp"].get(f"{name}_sweep", [])[:5]:
                print("   ", name, row, flush=True)
            best1 = [r for r in result["mlp"].get(f"{name}_sweep", []) if r["config"][2] == 1][:1]
            print("    best without split-K:", best1, flush=True)
    write_result(a.out, result_name(machine_name(), "decode_kernels"), result)
    return result


if __name__ == "__main__":
    main()
