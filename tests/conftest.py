"""Shared fixtures: offline, small and fast.

- ``tokenizer_dir``: the embedded SmolLM2 tokenizer (``make test`` fetches the model first).
- ``tiny_model_dir``: a 2-layer random Llama with that tokenizer, for trainer tests that
  must really train but in seconds.
- ``make_example``: a hand-made :class:`~stonklib.data.records.Example`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
# Triton's kernels (stonklib.kernels) run on CPU through its interpreter. The switch must be
# set before Triton is first imported; on a CUDA machine they run compiled, so it stays off there.
if not Path("/dev/nvidia0").exists() and "triton" not in __import__("sys").modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from stonklib import paths  # noqa: E402
from stonklib.data.records import Example, HistoryRow  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    d = paths.EMBEDDED_MODEL
    if not (d / "tokenizer_config.json").is_file():
        pytest.skip("embedded model not fetched: run `stonk model fetch smollm2` (make test does it)")
    return d


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A tiny random Llama (hidden 64, 2 layers) saved with the SmolLM2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def example(**over) -> Example:
    hist = tuple(HistoryRow(f"2010-08-{20 - i:02d}", 100.0 - i * 0.5, 1_000_000 + i * 10_000) for i in range(15))
    base = dict(ticker="ACME", date="2010-08-20", close=100.0, previous_close=100.5, change_pct_1=1.2,
                change_pct_2=-0.4, change_pct_3=0.3, direction_1="up", direction_2="down", direction_3="up",
                flat_1=False, history=hist, name="Acme Corp", sector="Industrials", industry="Machinery",
                return_1d=-0.4975, return_5d=-2.4, return_10d=-4.8, volatility_10d=0.01, volume_ratio=0.95)
    base.update(over)
    return Example(**base)


@pytest.fixture
def make_example():
    return example


@pytest.fixture(scope="session")
def learning_curve():
    """``benchmarks/learning_curve.py`` as a module (benchmarks/ is not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "learning_curve.py"
    spec = importlib.util.spec_from_file_location("learning_curve", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
