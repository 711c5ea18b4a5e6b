"""benchmarks/bench_common.py helpers that the throughput numbers depend on."""

from __future__ import annotations

import gc
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bc():
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "benchmarks" / "bench_common.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_common", mod)
    spec.loader.exec_module(mod)
    return mod


def test_gc_clock_counts_collections_between_takes_and_detaches(bc):
    with bc.GCClock() as clock:
        assert clock.take() == (0.0, 0)
        gc.collect(0)
        gc.collect()  # a full collection
        seconds, full = clock.take()
        assert seconds > 0 and full == 1
        assert clock.take() == (0.0, 0)  # take() starts a new interval
    n_callbacks = len(gc.callbacks)
    gc.collect()
    assert clock.take() == (0.0, 0) and len(gc.callbacks) == n_callbacks  # no longer listening


@pytest.mark.parametrize("tied", [True, False])
def test_the_decode_floor_counts_every_weight_once_and_the_live_cache(bc, tied):
    """decode_bytes against the model's own parameter sizes: each weight the decoder reads once (a tied head
    once), plus the key/value cache of the positions a step attends to, on average over the completion."""
    import types

    from transformers import AutoModelForCausalLM, Qwen2Config

    from stonklib.sampling import FastSampler

    cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=96, tie_word_embeddings=tied, max_position_embeddings=256,
                      eos_token_id=5, pad_token_id=0, bos_token_id=1)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    fs = FastSampler(model, types.SimpleNamespace(eos_token_id=5, pad_token_id=0), max_batch=4, max_len=64)
    elem = fs.weights.lm_head.element_size()
    params = dict(model.named_parameters())
    expected = sum(p.numel() for name, p in params.items() if "embed_tokens" not in name) * elem
    if tied:  # the head is the embedding matrix: read once, as the head
        expected += params["model.embed_tokens.weight"].numel() * elem
    out = bc.decode_bytes(fs.weights, fs.spec, rows=4, prompt_tokens=20, new_tokens=10)
    assert out["weight_bytes"] == expected
    head_dim = 64 // 4
    assert out["kv_bytes_per_step"] == 2 * 2 * 4 * 2 * head_dim * (20 + 10 / 2) * elem  # k and v, layers, rows, kv heads
    assert out["bytes_per_step"] == out["weight_bytes"] + out["kv_bytes_per_step"] + 4 * 64 * elem
    r = bc.roofline(fs, 4, 20, 10, decode_s=0.009, decode_steps=9, bandwidth=1e9)
    assert r["decode_ms_per_step"] == pytest.approx(1.0)
    assert r["floor_ms_per_step"] == pytest.approx(1e3 * r["bytes_per_step"] / 1e9)
    assert r["ratio_to_floor"] == pytest.approx(1.0 / r["floor_ms_per_step"])
    assert "floor_ms_per_step" not in bc.roofline(fs, 4, 20, 10, 0.009, 9, bandwidth=None)  # no GPU: no floor
