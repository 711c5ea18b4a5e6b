"""What the GPU/CPU benchmarks share: the shapes, the synthetic Qwen2.5-1.5B model and its tokenizer,
synthetic examples and prompts, timing and memory helpers, the machine's name and package versions.

Used by ``grpo_throughput.py``, ``update_profile.py``, ``decode_profile.py``, ``decode_kernels.py`` and
``ddp_scaling.py``.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stonklib.environment import prefer_passive_omp  # noqa: E402

prefer_passive_omp()  # before torch loads (stonklib.environment says why)

import torch  # noqa: E402

from stonklib.data.records import Example, HistoryRow  # noqa: E402


@dataclass(frozen=True)
class Shape:
    prompts: int  # B
    generations: int  # G
    prompt_tokens: int | None  # exact synthetic prompt length; None: the project's rendered prompts
    completion_tokens: int  # C: forced, or at most (forced=False)
    model: str  # "qwen2.5-1.5b-random" or "smollm2"
    forced: bool = True  # completions forced to C tokens; False: they end at their EOS (natural lengths)


SHAPES = {
    "seed": Shape(4, 4, 512, 256, "qwen2.5-1.5b-random"),
    "large": Shape(8, 8, 512, 256, "qwen2.5-1.5b-random"),
    # what configs/stage1.yaml and stage2.yaml run: 1024-token prompts, 400 new tokens
    "seed_full": Shape(4, 4, 1024, 400, "qwen2.5-1.5b-random"),
    "large_full": Shape(8, 8, 1024, 400, "qwen2.5-1.5b-random"),
    "cpu": Shape(2, 4, None, 64, "smollm2"),
    # the embedded SmolLM2 with its real weights, the project's rendered prompts, completions ending at their EOS
    "real": Shape(4, 4, None, 400, "smollm2", forced=False),
    "tiny": Shape(2, 2, 32, 8, "qwen-tiny-random"),  # smoke tests of this script, not benchmarks
    "tiny_real": Shape(2, 2, 32, 8, "qwen-tiny-random", forced=False),
}
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
BETA, TEMPERATURE, TOP_P, LR = 0.05, 0.7, 0.9, 5e-6
WORDLEVEL = "wordlevel_tokenizer"


# ---------------------------------------------------------------------- model and data
def qwen15b_config(tiny: bool = False):
    from transformers import Qwen2Config

    if tiny:
        return Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=128, vocab_size=151936, tie_word_embeddings=True,
                           rope_parameters={"rope_type": "default", "rope_theta": 1e6}, bos_token_id=151643,
                           eos_token_id=151643, pad_token_id=151643)
    return Qwen2Config(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                       intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
                       rope_parameters={"rope_type": "default", "rope_theta": 1e6}, rms_norm_eps=1e-6,
                       bos_token_id=151643, eos_token_id=151643, pad_token_id=151643, use_sliding_window=False)


def wordlevel_tokenizer(vocab_size: int, eos_id: int):
    """A tokenizer with one token per whitespace-separated word ``w<id>``: exact prompt lengths, any id decodes."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = {eos_id: "<|endoftext|>", eos_id + 1: "<|im_start|>", eos_id + 2: "<|im_end|>"}
    vocab = {specials.get(i, f"w{i}"): i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", additional_special_tokens=list(specials.values())[1:])
    fast.padding_side = "left"
    return fast


def random_model_dir(path: Path, tiny: bool = False) -> Path:
    """Qwen2.5-1.5B architecture with random bf16 weights and the word-level tokenizer (reused if present)."""
    from transformers import AutoModelForCausalLM

    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return path
    cfg = qwen15b_config(tiny)
    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    # Its own folder: AutoTokenizer would pick Qwen2Tokenizer from config.json and drop the word-level model.
    wordlevel_tokenizer(cfg.vocab_size, cfg.eos_token_id).save_pretrained(path / WORDLEVEL)
    del model
    free_memory()
    return path


def load_tokenizer(model_dir: Path):
    """The word-level tokenizer of a synthetic model, else the model's own (as stonklib loads it)."""
    if (model_dir / WORDLEVEL).is_dir():
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(model_dir / WORDLEVEL)
        tok.padding_side = "left"
        return tok
    from stonklib.models import load_tokenizer as stonk_tokenizer

    return stonk_tokenizer(str(model_dir))


def synthetic_examples(n: int, seed: int = 0) -> list[Example]:
    """Plausible Stage II records (20 trading days of history) for scoring; no data files needed."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        closes = [100.0 + 10 * i]
        for _ in range(22):
            closes.append(closes[-1] * (1 + rng.gauss(0, 0.015)))
        hist = tuple(HistoryRow(f"2024-03-{28 - d:02d}", round(closes[-1 - d - 3], 2), 1e6 * (1 + rng.random()))
                     for d in range(20))
        nxt = [100 * (closes[-3 + k] / closes[-4 + k] - 1) for k in range(3)]
        out.append(Example(ticker=f"T{i:03d}", date=hist[0].date, close=hist[0].close, previous_close=hist[1].close,
                           change_pct_1=nxt[0], change_pct_2=nxt[1], change_pct_3=nxt[2],
                           direction_1="up" if nxt[0] > 0 else "down", direction_2="up" if nxt[1] > 0 else "down",
                           direction_3="up" if nxt[2] > 0 else "down", flat_1=False, history=hist,
                           name=f"Company {i}", sector="Technology"))
    return out


def prompt_texts(shape: Shape, tokenizer, examples: list[Example], seed: int = 0) -> list[str]:
    if shape.prompt_tokens is None:
        from stonklib.prompts import fit_prompt

        return [fit_prompt(ex, tokenizer, 1024).text for ex in examples]
    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(1000, 150000)}" for _ in range(shape.prompt_tokens)) for _ in examples]


# ---------------------------------------------------------------------- helpers
def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class GCClock:
    """Seconds Python's cyclic garbage collector ran, and its full collections, between two :meth:`take` calls."""

    def __init__(self):
        self.seconds, self.full, self._t0 = 0.0, 0, 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._t0
            self.full += info.get("generation") == 2

    def __enter__(self) -> GCClock:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self._callback)

    def take(self) -> tuple[float, int]:
        out = (self.seconds, self.full)
        self.seconds, self.full = 0.0, 0
        return out


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def peak_reserved_gib() -> float | None:
    """Peak memory the caching allocator held (CUDA graphs' private pools included), what a smaller card must fit."""
    return torch.cuda.max_memory_reserved() / 2**30 if torch.cuda.is_available() else None


def summarise(times: list[float], warmup: int, tokens: int, peak: float | None, cpu_times: list[float]) -> dict:
    """Wall-clock figures, plus process CPU seconds (a steadier measure on a shared CPU machine)."""
    timed = times[warmup:] or times
    med = statistics.median(timed)
    cpu_med = statistics.median(cpu_times[warmup:] or cpu_times)
    return {"step_s_median": med, "step_s_all": times, "completion_tokens_per_s": tokens / med,
            "peak_mem_gib": peak, "tokens_generated": tokens, "step_cpu_s_median": cpu_med,
            "step_cpu_s_all": cpu_times, "completion_tokens_per_cpu_s": tokens / cpu_med}


def machine_name() -> str:
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        for k in ("H200", "H100", "A100", "L4", "A10"):
            if k in name:
                return f"nvidia-{k.lower()}"
        return "cuda-" + name.lower().replace(" ", "-")
    return f"cpu-{os.cpu_count()}c"


def result_name(machine: str, *parts: str, ext: str = "json") -> str:
    """The results' naming rule: ``<machine>-<benchmark>[-<shape>...]-<YYYY-MM-DD>.<ext>`` (the date of the run)."""
    return "-".join([machine, *[p for p in parts if p], time.strftime("%Y-%m-%d")]) + f".{ext}"


def write_result(out_dir: str | Path, filename: str, result: dict) -> Path:
    """Write ``result`` as indented JSON to ``out_dir/filename`` (the folder made if missing); return the path."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    path.write_text(json.dumps(result, indent=2))
    print("wrote", path, flush=True)
    return path


def versions() -> dict:
    import importlib.metadata as md

    v = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            v[pkg] = None
    return v


def timed(acc: dict, key_fn, fn):
    """``fn`` wrapped to add its synchronised wall time to ``acc[key_fn()]`` (key chosen at call time)."""
    def wrapper(*args, **kw):
        sync()
        t0 = time.perf_counter()
        r = fn(*args, **kw)
        sync()
        acc[key_fn()] += time.perf_counter() - t0
        return r
    return wrapper


def logprob_pass_key(ref: str, policy: str):
    """For :func:`timed` around the trainer's log-prob function: the reference pass runs without grad."""
    return lambda: policy if torch.is_grad_enabled() else ref


def cuda_kernel_profile(fn, *args, top: int = 30) -> dict:
    """CUDA kernel time of one call of ``fn``: total ms, kernels launched, and the ``top`` kernels by time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn(*args)
        sync()
    rows = [{"kernel": e.key[:120], "ms": (getattr(e, "device_time_total", 0) or 0) / 1e3, "calls": e.count}
            for e in prof.key_averages()]
    rows = sorted((r for r in rows if r["ms"] > 0), key=lambda r: -r["ms"])
    return {"kernel_ms": sum(r["ms"] for r in rows), "kernels": sum(r["calls"] for r in rows), "top": rows[:top]}


# ---------------------------------------------------------------------- benchmark-only wrappers
class FullLength:
    """A sampler that never stops early: EOS is forbidden until ``max_new_tokens`` (``min_new_tokens``).

    The throughput shapes force full-length completions so both systems decode the same number of
    tokens; TRL gets the same through ``generation_kwargs={"min_new_tokens": C}``. ``force=False`` (the
    natural-length shapes) passes every call through unchanged. Everything else (``refresh``,
    ``weights``, ...) is the wrapped sampler's.
    """

    def __init__(self, sampler, force: bool = True):
        self.inner, self.force = sampler, force

    def sample(self, prompt_ids, prompt_mask, *, max_new_tokens: int, **kw):
        if self.force:
            kw["min_new_tokens"] = max_new_tokens
        return self.inner.sample(prompt_ids, prompt_mask, max_new_tokens=max_new_tokens, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class SamplerClock:
    """Synchronised times of a FastSampler's parts while the block runs: graph capture, prefill, decode.

    It wraps the instance's ``_graph``, ``_prefill`` and ``_decode`` (their class stays untouched) and
    keeps the last ``sample`` call's times in :attr:`timings` (``capture_s``, ``prefill_s``, ``decode_s``,
    ``decode_steps``).
    """

    def __init__(self, sampler):
        self.sampler = getattr(sampler, "inner", sampler)
        self.timings: dict[str, float] = {}

    def __enter__(self) -> SamplerClock:
        fs = self.sampler
        for name, key in (("_graph", "capture_s"), ("_prefill", "prefill_s"), ("_decode", "decode_s")):
            setattr(fs, name, self._timed(getattr(fs, name), key))
        return self

    def _timed(self, fn, key: str):
        def wrapper(*args, **kw):
            sync()
            t0 = time.perf_counter()
            out = fn(*args, **kw)
            sync()
            self.timings[key] = time.perf_counter() - t0
            if key == "decode_s":
                self.timings["decode_steps"] = float(out - 1)
            return out
        return wrapper

    def __exit__(self, *exc) -> None:
        for name in ("_graph", "_prefill", "_decode"):
            self.sampler.__dict__.pop(name, None)


def _projection_tensors(layers) -> list:
    """The weights and biases of each layer's q|k|v, o, gate|up and down (DecoderWeights' or DenseBlocks' layers)."""
    return [t for lw in layers for f in (lw.qkv, lw.o, lw.gate_up, lw.down) for t in (f.weight, f.bias) if t is not None]


def _unique_bytes(tensors, seen: set) -> int:
    """Bytes of the tensors whose storage is not in ``seen`` yet, each storage once (``seen`` grows)."""
    total = 0
    for t in tensors:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def dense_extra_bytes(blocks, model, shared=None) -> int:
    """Bytes of dense base weights a :class:`~stonklib.update.dense.DenseBlocks` added of its own.

    Not counted: the model's own tensors (dense weights are referenced, not copied) and those of
    ``shared`` (the :class:`~stonklib.sampling.weights.DecoderWeights` it borrowed from); each storage once.
    """
    from stonklib.sampling.weights import causal_lm

    seen = {t.data_ptr() for t in causal_lm(model).parameters()}
    if shared is not None:
        seen |= {t.data_ptr() for t in _projection_tensors(shared.layers)}
    return _unique_bytes(_projection_tensors(blocks.layers), seen)


# ---------------------------------------------------------------------- the decode's roofline
def decode_bytes(weights, spec, rows: int, prompt_tokens: int, new_tokens: int) -> dict:
    """Bytes one FastSampler decode step must read from memory at least, averaged over a completion.

    Every weight the decoder multiplies by (:class:`stonklib.sampling.weights.DecoderWeights`: each layer's
    norms, q|k|v, o, gate|up and down, the final norm and the LM head; a tied head counts once), plus the
    key/value cache of the positions each step attends to: ``rows`` sequences of ``prompt_tokens`` plus,
    on average over the ``new_tokens - 1`` decode steps, half the completion. The embedding rows looked up
    are ``rows x hidden`` and counted too. What a kernel reads beyond that (padding, a static cache read
    past the live positions) is the kernel's cost, not the floor's.
    """
    norms = [t for lw in weights.layers for t in (lw.ln_attn, lw.ln_mlp)]
    weight_bytes = _unique_bytes([weights.lm_head, weights.norm, *norms, *_projection_tensors(weights.layers)], set())
    elem = weights.lm_head.element_size()
    mean_context = prompt_tokens + new_tokens / 2
    kv = 2 * spec.n_layers * rows * spec.n_kv_heads * spec.head_dim * mean_context * elem
    embed = rows * spec.hidden * elem
    return {"weight_bytes": weight_bytes, "kv_bytes_per_step": kv, "embedding_bytes_per_step": embed,
            "bytes_per_step": weight_bytes + kv + embed, "mean_context": mean_context}


def copy_bandwidth(n_bytes: int = 2**30, repeats: int = 10) -> float | None:
    """Achievable memory bandwidth in bytes/s: a device-to-device copy, bytes read plus written over its time
    (best of ``repeats``). None without CUDA."""
    if not torch.cuda.is_available():
        return None
    src = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = math.inf
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    del src, dst
    return 2 * n_bytes / best


def roofline(sampler, rows: int, prompt_tokens: int, new_tokens: int, decode_s: float, decode_steps: float,
             bandwidth: float | None) -> dict:
    """The measured decode time per token step beside its floor, ``decode_bytes / bandwidth``."""
    out = decode_bytes(sampler.weights, sampler.spec, rows, prompt_tokens, new_tokens)
    out["decode_ms_per_step"] = 1e3 * decode_s / decode_steps
    out["bandwidth_bytes_per_s"] = bandwidth
    if bandwidth:
        out["floor_ms_per_step"] = 1e3 * out["bytes_per_step"] / bandwidth
        out["ratio_to_floor"] = out["decode_ms_per_step"] / out["floor_ms_per_step"]
    return out
