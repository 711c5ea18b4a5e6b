"""FastSampler against the HF reference: logits, greedy tokens, LoRA refresh, NF4, EOS and min_new_tokens.

Tiny random Llama and Qwen2 models built in code (CPU, float32, a few seconds in all).
"""

from __future__ import annotations

import types

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from stonklib.sampling import FastSampler, UnsupportedModelError
from stonklib.sampling.rollout import HFSampler, completion_mask

EOS, PAD, VOCAB = 5, 0, 96
TOK = types.SimpleNamespace(eos_token_id=EOS, pad_token_id=PAD)


def tiny_model(kind: str = "qwen2", seed: int = 0, tied: bool = True, std: float = 0.3):
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[kind]
    cfg = cls(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=VOCAB, tie_word_embeddings=tied, max_position_embeddings=256, rope_theta=5000.0,
              rms_norm_eps=1e-6, eos_token_id=EOS, pad_token_id=PAD, bos_token_id=1)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():  # larger weights than the default init, so completions are diverse, not one repeated token
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, std)
    return model


def left_padded(n: int = 3, p: int = 9, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, VOCAB, (n, p), generator=g)
    mask = torch.ones_like(ids)
    for r in range(n):
        mask[r, : r * 2] = 0  # row r has 2r pads on the left
    return ids.masked_fill(mask == 0, PAD), mask


def hf_logits(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------ the decoder itself
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("tied", [True, False])
@torch.no_grad()
def test_prefill_and_decode_logits_match_hf(kind, tied):
    model = tiny_model(kind, tied=tied)
    fs = FastSampler(model, TOK, max_batch=4, max_len=32)
    ids, mask = left_padded()
    new = torch.randint(6, VOCAB, (3, 4), generator=torch.Generator().manual_seed(2))
    full_ids, full_mask = torch.cat([ids, new], 1), torch.cat([mask, torch.ones_like(new)], 1)
    ref = hf_logits(model, full_ids, full_mask)

    got = fs.decoder.prefill(ids, mask)
    assert rel_err(got, ref[:, ids.shape[1] - 1]) < 1e-4
    st, P = fs.state, ids.shape[1]
    st.slot_valid[:3, :P] = mask.bool()
    st.slot_valid[:3, P:] = True
    pos = mask.sum(-1)
    for t in range(new.shape[1]):  # feed the known tokens one at a time through the decode path
        got = fs.decoder.decode(new[:, t], pos + t, torch.tensor([P + t]), st.slot_valid[:3])
        assert rel_err(got, ref[:, P + t]) < 1e-4, f"decode step {t}"


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_greedy_matches_hf_sampler_token_for_token(kind):
    model = tiny_model(kind, seed=3)
    ids, mask = left_padded(4, 11, seed=4)
    ours = FastSampler(model, TOK, max_batch=4, max_len=48).sample(ids, mask, max_new_tokens=24, greedy=True)
    ref = HFSampler(model, TOK).sample(ids, mask, max_new_tokens=24, greedy=True)
    assert ours.shape == ref.shape
    assert torch.equal(ours, ref)
    assert len(set(ours.flatten().tolist())) > 5  # a real test: diverse tokens, not one repeated id


def test_repeated_prompts_are_prefilled_once_with_the_same_result():
    model = tiny_model("llama", seed=5)
    ids, mask = left_padded(2, 8, seed=6)
    ids, mask = ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0)  # GRPO's layout: G copies in a row
    fs = FastSampler(model, TOK, max_batch=6, max_len=32)
    u_ids, u_mask, rows = fs._unique_prompts(ids, mask)
    assert u_ids.shape[0] == 2 and rows.tolist() == [0, 0, 0, 1, 1, 1]
    ref = HFSampler(model, TOK).sample(ids, mask, max_new_tokens=12, greedy=True)
    assert torch.equal(fs.sample(ids, mask, max_new_tokens=12, greedy=True), ref)


# ------------------------------------------------------------------ EOS, padding, min_new_tokens
def eos_prone_model(seed: int = 7):
    """A model whose EOS logit is boosted, so rows end at different steps."""
    model = tiny_model("qwen2", seed=seed, tied=False)
    with torch.no_grad():
        model.lm_head.weight[EOS] *= 2.5
    return model


def test_eos_handling_and_padding_match_hf():
    for seed in range(7, 40):
        model = eos_prone_model(seed)
        ids, mask = left_padded(4, 8, seed=seed)
        ref = HFSampler(model, TOK).sample(ids, mask, max_new_tokens=20, greedy=True)
        ends = (ref == EOS).any(1)
        if 0 < int(ends.sum()) < 4 or (bool(ends.all()) and ref.shape[1] < 20):
            break  # a case with some rows ending early (or all, trimming the length)
    else:
        pytest.skip("no seed gave early EOS")
    ours = FastSampler(model, TOK, max_batch=4, max_len=32, check_every=3).sample(ids, mask, max_new_tokens=20, greedy=True)
    assert torch.equal(ours, ref)
    cm = completion_mask(ours, EOS)
    assert bool((ours[cm == 0] == PAD).all())


def test_all_rows_ending_early_trims_like_generate():
    model = eos_prone_model(11)
    with torch.no_grad():
        model.lm_head.weight[EOS] *= 4.0  # EOS wins quickly in every row
    ids, mask = left_padded(3, 8, seed=12)
    ref = HFSampler(model, TOK).sample(ids, mask, max_new_tokens=30, greedy=True)
    assert ref.shape[1] < 30
    ours = FastSampler(model, TOK, max_batch=3, max_len=48, check_every=4).sample(ids, mask, max_new_tokens=30,
                                                                                  greedy=True)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("greedy", [True, False])
def test_min_new_tokens_forces_full_length(greedy):
    model = eos_prone_model(11)
    with torch.no_grad():
        model.lm_head.weight[EOS] *= 4.0
    ids, mask = left_padded(3, 8, seed=12)
    fs = FastSampler(model, TOK, max_batch=3, max_len=48)
    out = fs.sample(ids, mask, max_new_tokens=16, min_new_tokens=16, greedy=greedy, temperature=0.7, top_p=0.9)
    assert out.shape == (3, 16) and not bool((out == EOS).any())
    if greedy:
        ref = HFSampler(model, TOK).sample(ids, mask, max_new_tokens=16, min_new_tokens=16, greedy=True)
        assert torch.equal(out, ref)
    out = fs.sample(ids, mask, max_new_tokens=16, min_new_tokens=5, greedy=greedy, temperature=0.7, top_p=0.9)
    first_eos = torch.where((out == EOS).any(1), (out == EOS).float().argmax(1), 99)
    assert bool((first_eos >= 5).all()) and bool((first_eos < 99).any())


# ------------------------------------------------------------------ sampling distribution
def nucleus(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The renormalised top-p distribution (as generate's TopPLogitsWarper) and its token ids."""
    sp, order = probs.sort(descending=True)
    keep = order[(sp.cumsum(0) - sp) < top_p]
    target = torch.zeros(probs.shape[-1])
    target[keep] = probs[keep] / probs[keep].sum()
    return target, keep


def assert_follows(tokens: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> None:
    freq = torch.bincount(tokens, minlength=target.shape[0]).float() / tokens.shape[0]
    assert set(tokens.unique().tolist()) <= set(keep.tolist())  # nothing outside the nucleus
    assert float((freq - target).abs().sum()) < 0.1  # total variation ~ sqrt(k/n) at n = 3000


@torch.no_grad()
def test_sampled_first_token_follows_temperature_and_top_p():
    """FastSampler on CPU (the sorted nucleus draw) samples generate's distribution."""
    model = tiny_model("llama", seed=13, std=0.15)
    n, temp, top_p = 3000, 0.7, 0.6
    ids, mask = left_padded(1, 6, seed=14)
    fs = FastSampler(model, TOK, max_batch=n, max_len=8)
    torch.manual_seed(0)
    out = fs.sample(ids.expand(n, -1), mask.expand(n, -1), max_new_tokens=1, temperature=temp, top_p=top_p)
    assert_follows(out[:, 0], *nucleus(torch.softmax(hf_logits(model, ids, mask)[0, -1] / temp, -1), top_p))
    greedy = fs.sample(ids, mask, max_new_tokens=1, greedy=True)
    tiny_p = fs.sample(ids.expand(50, -1), mask.expand(50, -1), max_new_tokens=1, temperature=1.0, top_p=1e-6)
    assert bool((tiny_p == greedy).all())  # top_p -> 0 keeps only the top token


@pytest.mark.parametrize("top_p", [0.6, 0.9, 1.0])
@torch.no_grad()
def test_sort_free_and_sorted_nucleus_draws_agree_with_the_exact_distribution(top_p):
    """The graph-safe rejection sampler (used on CUDA) and the sorted one (CPU) draw the same distribution."""
    from stonklib.sampling.fast import _sample_top_p, _sample_top_p_sorted

    g = torch.Generator().manual_seed(21)
    logits = (torch.randn(VOCAB, generator=g) * 2.0).expand(3000, -1).clone()
    temp, p = torch.tensor(0.7), torch.tensor(top_p)
    target, keep = nucleus(torch.softmax(logits[0] / 0.7, -1), top_p)
    torch.manual_seed(1)
    assert_follows(_sample_top_p(logits, temp, p, k=8), target, keep)
    assert_follows(_sample_top_p_sorted(logits, temp, p), target, keep)


# ------------------------------------------------------------------ LoRA and NF4
def lora(model, r: int = 4):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                     task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def perturb_lora(peft_model, seed: int, scale: float = 0.2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@torch.no_grad()
def test_refresh_follows_the_lora_weights(kind):
    policy = lora(tiny_model(kind, seed=15)).eval()
    fs = FastSampler(policy, TOK, max_batch=3, max_len=24)
    ids, mask = left_padded()
    perturb_lora(policy, 16)
    stale = fs.decoder.prefill(ids, mask)
    ref = hf_logits(policy, ids, mask)[:, -1]
    assert rel_err(stale, ref) > 1e-2  # the copy is stale until refresh
    fs.refresh(policy)
    assert rel_err(fs.decoder.prefill(ids, mask), ref) < 1e-4
    with policy.disable_adapter():  # the reference policy: adapter off
        fs.refresh(policy)
        assert rel_err(fs.decoder.prefill(ids, mask), hf_logits(policy, ids, mask)[:, -1]) < 1e-4
    fs.refresh(policy)
    torch.testing.assert_close(fs.sample(ids, mask, max_new_tokens=10, greedy=True),
                               HFSampler(policy, TOK).sample(ids, mask, max_new_tokens=10, greedy=True))


def _dequantised(w):
    import copy

    import bitsandbytes as bnb

    data, state = w.data, w.quant_state
    if getattr(state, "packing_format_for_cpu", False):  # bitsandbytes' CPU backend repacks at the first forward
        data, state = bnb.functional._convert_weight_packed_for_cpu_inverse(data.clone(), copy.deepcopy(state))
    return bnb.functional.dequantize_4bit(data, state).float()


@pytest.mark.parametrize("forward_first", [False, True])
@torch.no_grad()
def test_nf4_base_is_dequantised_and_merged(tmp_path, forward_first):
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    tiny_model("qwen2", seed=17).save_pretrained(tmp_path)
    q = AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float32, device_map={"": "cpu"},
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32))
    policy = lora(q).eval()
    perturb_lora(policy, 18)
    ids, mask = left_padded()
    if forward_first:
        hf_logits(policy, ids, mask)
    fs = FastSampler(policy, TOK, max_batch=3, max_len=24)

    att = policy.base_model.model.model.layers[1].self_attn
    fused = fs.weights.layers[1].qkv
    for i, proj in enumerate([att.q_proj, att.k_proj, att.v_proj]):
        expect = _dequantised(proj.base_layer.weight) + proj.get_delta_weight("default")
        rows = slice(sum(fused.rows[:i]), sum(fused.rows[: i + 1]))
        torch.testing.assert_close(fused.weight[rows], expect, rtol=1e-5, atol=1e-6)

    # Exact reference: the same model in float32 with the dequantised weights and the same LoRA.
    dense = tiny_model("qwen2", seed=17)
    for name, mod in q.named_modules():
        if hasattr(mod, "base_layer") or not hasattr(getattr(mod, "weight", None), "quant_state"):
            continue
        dense.get_submodule(name.replace("base_model.model.", "").replace(".base_layer", "")).weight.copy_(
            _dequantised(mod.weight))
    ref = lora(dense).eval()
    lora_params = {n: p for n, p in policy.named_parameters() if "lora_" in n}
    for n, p in ref.named_parameters():
        if "lora_" in n:
            p.copy_(lora_params[n])
    want = hf_logits(ref, ids, mask)[:, -1]
    assert rel_err(fs.decoder.prefill(ids, mask), want) < 1e-4
    # bitsandbytes' own CPU kernel rounds through bf16, so it agrees only to about 1e-2.
    assert rel_err(hf_logits(policy, ids, mask)[:, -1], want) < 5e-2


def test_unsupported_architecture_says_what_to_do():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="fast_sampler=False"):
        FastSampler(model, TOK, max_batch=1, max_len=8)


def test_too_long_a_request_is_refused_with_the_limits():
    fs = FastSampler(tiny_model(), TOK, max_batch=2, max_len=16)
    ids, mask = left_padded(2, 10)
    with pytest.raises(ValueError, match="max_len=16"):
        fs.sample(ids, mask, max_new_tokens=8)


# ------------------------------------------------------------------ shared-prefix log-probs
def grpo_batch(G: int = 3, seed: int = 20):
    """Two left-padded prompts, G completions each (one ends early: EOS then pads), as the trainer lays them out."""
    ids, mask = left_padded(2, 7, seed=seed)
    ids, mask = ids.repeat_interleave(G, 0), mask.repeat_interleave(G, 0)
    g = torch.Generator().manual_seed(seed + 1)
    comp = torch.randint(6, VOCAB, (2 * G, 5), generator=g)
    comp[1, 2], comp[1, 3:] = EOS, PAD
    cmask = completion_mask(comp, EOS)
    return torch.cat([ids, comp], 1), torch.cat([mask, cmask], 1), cmask


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_shared_prefix_logprobs_match_the_full_forward_and_its_gradients(kind):
    from stonklib.update.head import completion_logprobs
    from stonklib.update.prefix import prompt_groups, shared_prefix_logprobs

    policy = lora(tiny_model(kind, seed=21, std=0.2))
    perturb_lora(policy, 22, scale=0.1)
    policy.eval()  # no LoRA dropout, so both paths compute the same function
    ids, attn, cmask = grpo_batch()
    assert prompt_groups(ids[:, :7], attn[:, :7]).tolist() == [0, 0, 0, 1, 1, 1]
    params = [p for p in policy.parameters() if p.requires_grad]
    got_lp, want_lp = shared_prefix_logprobs(policy, ids, attn, 5, 0.7), completion_logprobs(policy, ids, attn, 5, 0.7)
    keep = cmask.bool()
    torch.testing.assert_close(got_lp[keep], want_lp[keep], rtol=1e-4, atol=1e-5)
    got = torch.autograd.grad((got_lp * cmask).sum(), params)
    want = torch.autograd.grad((want_lp * cmask).sum(), params)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with torch.no_grad(), policy.disable_adapter():  # the reference policy
        torch.testing.assert_close(shared_prefix_logprobs(policy, ids, attn, 5)[keep],
                                   completion_logprobs(policy, ids, attn, 5)[keep], rtol=1e-4, atol=1e-5)


def test_shared_prefix_logprobs_with_gradient_checkpointing():
    from stonklib.update.head import completion_logprobs
    from stonklib.update.prefix import shared_prefix_logprobs

    policy = lora(tiny_model("qwen2", seed=23, std=0.2))
    perturb_lora(policy, 24, scale=0.1)
    policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy.train()
    for m in policy.modules():  # dropout off, checkpointing on
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    ids, attn, cmask = grpo_batch(G=2, seed=25)
    params = [p for p in policy.parameters() if p.requires_grad]
    got = torch.autograd.grad((shared_prefix_logprobs(policy, ids, attn, 5) * cmask).sum(), params)
    want = torch.autograd.grad((completion_logprobs(policy, ids, attn, 5) * cmask).sum(), params)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
