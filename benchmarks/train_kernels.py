"""The update's fused kernels against the eager chains they replace, at the ``seed`` shape (GPU).

    python benchmarks/train_kernels.py       # writes <out>/<machine>-train_kernels.json

Cases (bf16 inputs, 6,144 tokens: 4 prompts x 512 + 16 completions x 256, as the update sees them):

- ``logp``: one chunk of the log-prob head, 1,024 tokens x 151,936 logits, temperature 0.7
  (:func:`stonklib.kernels.logp.token_logprobs` vs the float32 cast, divide, gather, ``logsumexp``);
- ``rms_norm``: [6144, 1536] (:func:`stonklib.kernels.train.rms_norm` vs HF's RMSNorm chain);
- ``swiglu``: [6144, 2 x 8960] (``swiglu`` vs ``silu(gate) * up``);
- ``rope``: the q|k view [6144, 14 of 16 heads, 128] of a q|k|v tensor (``rope`` vs ``x*cos + rotate_half(x)*sin``).

Per case and implementation: ``fwd_bwd_ms``, the median GPU time of forward plus backward (CUDA
events around 20 calls after warm-up), and the largest absolute error of the output and of the
input's gradient against the eager chain run in float32 on the same (bf16-valued) inputs, next to
that error's scale (max |reference|). The fused and eager errors should be alike: both are bf16 rounding.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_common import machine_name, result_name, write_result  # noqa: E402


def _time_ms(fn, iters: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(iters):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / iters)
    return sorted(times)[len(times) // 2]


def _cases():
    from stonklib.kernels import train as K
    from stonklib.kernels.logp import token_logprobs, token_logprobs_reference

    g = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=g) * scale).bfloat16()

    T, V = 6144, 151936
    index = torch.randint(0, V, (1024,), device="cuda", generator=g)
    w = 1 + randn(1536, scale=0.1)
    ang = torch.arange(T, device="cuda")[:, None].float() * (1e6 ** -(torch.arange(0, 128, 2, device="cuda") / 128))
    ang = torch.cat([ang, ang], -1)[:, None, :]
    cos, sin = ang.cos().bfloat16(), ang.sin().bfloat16()
    qkv = randn(T, 16, 128)
    return {
        "logp": (randn(1024, V, scale=3.0), lambda x: token_logprobs(x, index, 0.7),
                 lambda x: token_logprobs_reference(x, index, 0.7)),
        "rms_norm": (randn(T, 1536, scale=2.0), lambda x: K.rms_norm(x, w, 1e-6),
                     lambda x: K.rms_norm_reference(x, w.to(x.dtype), 1e-6)),
        "swiglu": (randn(T, 2 * 8960, scale=2.0), K.swiglu, K.swiglu_reference),
        "rope": (qkv, lambda x: K.rope(x[:, :14], cos, sin),
                 lambda x: K.rope_reference(x[:, :14], cos.to(x.dtype), sin.to(x.dtype))),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("train_kernels.py measures CUDA kernels; run it on a GPU machine.")
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for name, (x, fused, eager) in _cases().items():
        exact_in = x.detach().float().requires_grad_()
        exact = eager(exact_in)
        gy = torch.rand(exact.shape, device="cuda").to(x.dtype)
        exact.backward(gy.float())
        row = {}
        for impl, fn in (("fused", fused), ("eager", eager)):
            def step(fn=fn, x=x, gy=gy):
                xi = x.detach().requires_grad_()
                fn(xi).backward(gy)

            xi = x.detach().requires_grad_()
            y = fn(xi)
            y.backward(gy)
            row[impl] = {"fwd_bwd_ms": _time_ms(step),
                         "out_max_abs_err": float((y.detach().float() - exact.detach()).abs().max()),
                         "grad_max_abs_err": float((xi.grad.float() - exact_in.grad).abs().max())}
        row["out_scale"] = float(exact.detach().abs().max())
        row["grad_scale"] = float(exact_in.grad.abs().max())
        row["speedup"] = row["eager"]["fwd_bwd_ms"] / row["fused"]["fwd_bwd_ms"]
        result[name] = row
        print(name, json.dumps(row), flush=True)
    write_result(a.out, result_name(machine_name(), "train_kernels"), result)
    return result


if __name__ == "__main__":
    main()
