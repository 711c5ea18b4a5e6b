"""A dense copy of a (PEFT, possibly NF4) Llama/Qwen2 model's weights for the fast decoder.

Each projection group (``q|k|v`` fused, ``o``, ``gate|up`` fused, ``down``) is one dense matrix in
the sampling dtype. NF4 weights are dequantised once, at construction, except the modules that
carry a LoRA adapter: :meth:`DecoderWeights.refresh` rewrites only those rows as
``base + B @ A * scaling``, re-reading (for NF4: re-dequantising) the base, which costs a few ms
on a 1.5B model and keeps no second copy of it.

Refreshes write into the same storage, so CUDA graphs captured over these tensors stay valid.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")


class UnsupportedModelError(ValueError):
    """The fast decoder does not implement this architecture; use ``HFSampler`` instead."""


def causal_lm(model) -> nn.Module:
    """The ``*ForCausalLM`` module under an optional PEFT wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@dataclass(frozen=True)
class ArchSpec:
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int
    rms_eps: float
    inv_freq: Tensor  # [head_dim / 2] float32, from the model's own rotary module (any rope_type it built)
    rope_scale: float  # the rotary module's attention_scaling (1.0 for the default rope)

    @classmethod
    def from_model(cls, model) -> ArchSpec:
        lm = causal_lm(model)
        cfg = lm.config
        if cfg.model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(f"model_type={cfg.model_type!r}: the fast decoder supports "
                                        f"{', '.join(SUPPORTED_MODEL_TYPES)}; use fast_sampler=False (HF generate).")
        if getattr(cfg, "use_sliding_window", False):
            raise UnsupportedModelError("sliding-window attention is not implemented in the fast decoder; "
                                        "use fast_sampler=False (HF generate).")
        if getattr(cfg, "hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"hidden_act={cfg.hidden_act!r}: the fast decoder implements SwiGLU (silu) only.")
        rotary = lm.model.rotary_emb
        if getattr(rotary, "rope_type", "default") == "dynamic":
            raise UnsupportedModelError("dynamic RoPE scaling changes with the length; use fast_sampler=False.")
        n_heads = cfg.num_attention_heads
        return cls(n_layers=cfg.num_hidden_layers, hidden=cfg.hidden_size, n_heads=n_heads,
                   n_kv_heads=getattr(cfg, "num_key_value_heads", None) or n_heads,
                   head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads,
                   vocab=lm.get_output_embeddings().weight.shape[0], rms_eps=cfg.rms_norm_eps,
                   inv_freq=rotary.inv_freq.detach().float().clone(),
                   rope_scale=float(getattr(rotary, "attention_scaling", 1.0)))


# ------------------------------------------------------------------ reading one linear layer
def _plain_linear(mod: nn.Module) -> nn.Module:
    """The linear layer under a PEFT LoRA wrapper (or the module itself)."""
    return mod.get_base_layer() if hasattr(mod, "get_base_layer") else mod


def dense_weight(mod: nn.Module) -> Tensor:
    """The [out, in] weight of a linear layer as a dense tensor, dequantising bitsandbytes 4-bit weights.

    For a PEFT layer whose adapter is currently merged this includes the delta; :class:`FusedLinear`
    therefore refuses merged adapters.
    """
    lin = _plain_linear(mod)
    w = lin.weight
    quant_state = getattr(w, "quant_state", None)
    if quant_state is not None:
        import bitsandbytes.functional as bnbf

        data = w.data
        if getattr(quant_state, "packing_format_for_cpu", False):
            # bitsandbytes' CPU backend repacks weights at the first forward; undo that on copies.
            import copy

            data, quant_state = bnbf._convert_weight_packed_for_cpu_inverse(data.clone(), copy.deepcopy(quant_state))
        return bnbf.dequantize_4bit(data, quant_state)
    if w.dtype in (torch.int8, torch.uint8):
        raise UnsupportedModelError(f"{type(lin).__name__} holds {w.dtype} weights; only NF4/FP4 (bitsandbytes 4-bit) "
                                    "and dense weights are supported by the fast decoder.")
    return w.detach()


@dataclass(frozen=True)
class LoraPart:
    """One adapter of one PEFT LoRA layer; whether it is active and its dropout's mode are read at call time."""

    module: nn.Module
    name: str
    a: Tensor  # lora_A weight [r, in] (a trainable parameter)
    b: Tensor  # lora_B weight [out, r]
    scaling: float
    dropout: nn.Module

    def active(self) -> bool:
        return not self.module.disable_adapters and self.name in self.module.active_adapters

    def args(self) -> tuple[Tensor, Tensor, float, float]:
        """``(A, B, scaling, p)``; ``p`` is 0 unless the adapter's dropout is in training mode."""
        p = float(getattr(self.dropout, "p", 0.0)) if self.dropout.training else 0.0
        return self.a, self.b, self.scaling, p


def lora_parts(mod: nn.Module, names=None) -> list[LoraPart]:
    """The adapters ``names`` (default: all) of a PEFT LoRA layer; none for a plain linear layer.

    Refuses what stonklib.sampling does not implement: merged adapters and LoRA variants (DoRA, ...).
    """
    if not hasattr(mod, "lora_A"):
        return []
    if getattr(mod, "merged", False):
        raise UnsupportedModelError("a LoRA adapter is merged into its base layer; unmerge it for stonklib.sampling.")
    parts = []
    for name in mod.lora_A if names is None else [n for n in names if n in mod.lora_A]:
        if getattr(mod, "use_dora", {}).get(name, False) or name in getattr(mod, "lora_variant", {}):
            raise UnsupportedModelError(
                f"adapter {name!r} is a LoRA variant (DoRA, ...): stonklib.sampling implements plain LoRA; "
                "FastSampler falls back to HF generate (fast_sampler=False), the update to the PEFT modules "
                "(dense_update=False).")
        parts.append(LoraPart(mod, name, mod.lora_A[name].weight, mod.lora_B[name].weight, float(mod.scaling[name]),
                              mod.lora_dropout[name]))
    return parts


def active_lora_parts(mod: nn.Module) -> list[LoraPart]:
    """The adapters of ``mod`` that are active now (none for a plain layer or with adapters disabled)."""
    if not hasattr(mod, "lora_A") or getattr(mod, "disable_adapters", False):
        return []
    return lora_parts(mod, mod.active_adapters)


def lora_delta(mod: nn.Module) -> Tensor | None:
    """Sum over active adapters of ``B @ A * scaling`` (float32, [out, in]), or None without an active LoRA."""
    parts = active_lora_parts(mod)
    if not parts:
        return None
    return sum((p.b.detach().float() @ p.a.detach().float()) * p.scaling for p in parts)


@functools.lru_cache(maxsize=64)
def block_scale(rows: tuple[int, ...], scalings: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """[sum(rows), m, 1]: module i's scaling on its own rows in column i, zero elsewhere.

    ``(B_cat.unsqueeze(1) * block_scale(...)).view(sum(rows), m * r)`` is the block-diagonal of the
    scaled ``B``s of ``m`` stacked modules (``B_cat`` their ``B``s stacked on the output dim).
    """
    scale = torch.zeros(sum(rows), len(rows), 1)
    start = 0
    for i, (n, s) in enumerate(zip(rows, scalings, strict=True)):
        scale[start:start + n, i] = s
        start += n
    return scale.to(device=device, dtype=dtype)


def stacked_lora_delta(modules: list[nn.Module], rows: list[int] | tuple[int, ...], in_features: int,
                       device: torch.device) -> Tensor:
    """The modules' :func:`lora_delta` stacked on the output dim (float32 [sum(rows), in]; zeros where none).

    The layer-by-layer fallback of :meth:`FusedLinear.refresh`; the usual case is batched over all
    layers (:func:`_refresh_layers`).
    """
    deltas = [lora_delta(m) for m in modules]
    return torch.cat([d.to(device) if d is not None else torch.zeros(r, in_features, device=device)
                      for d, r in zip(deltas, rows, strict=True)])


def stacked_dense(modules: list[nn.Module], dtype: torch.dtype, device: torch.device,
                  own: bool = True) -> tuple[Tensor, Tensor | None, list[int]]:
    """The dense (dequantised) weights and biases of linear layers of one input, stacked on the output dim.

    Returns ``(weight, bias or None, rows per module)``. A single dense weight already in ``dtype`` on
    ``device`` is returned as is unless ``own`` (then it is always a copy, safe to write into).
    """
    dense = [dense_weight(m).to(device=device, dtype=dtype) for m in modules]
    rows = [w.shape[0] for w in dense]
    weight = torch.cat(dense, 0) if len(dense) > 1 else (dense[0].clone() if own else dense[0])
    del dense
    biases = [getattr(_plain_linear(m), "bias", None) for m in modules]
    bias = None
    if any(b is not None for b in biases):
        bias = torch.cat([(b.detach() if b is not None else torch.zeros(r)).to(device=device, dtype=dtype)
                          for b, r in zip(biases, rows, strict=True)])
    return weight, bias, rows


class FusedLinear:
    """Several linear layers of one input, stacked along the output dim: one matmul instead of several."""

    def __init__(self, modules: list[nn.Module], dtype: torch.dtype, device: torch.device):
        self.modules = modules
        self.weight, self.bias, self.rows = stacked_dense(modules, dtype, device)
        self.adapted = any(hasattr(m, "lora_A") for m in modules)
        # An unmerged dense copy of the stacked base weights that another part keeps anyway (the dense
        # update's, :class:`~stonklib.update.dense.DenseBlocks`); refresh() then reads it instead of
        # dequantising the base again.
        self.base: Tensor | None = None
        self.refresh()

    def refresh(self) -> None:
        """weight = base + LoRA delta for the adapted modules.

        The base is :attr:`base` when set (one matmul for the stacked deltas, one add); otherwise it is
        re-read module by module (NF4: re-dequantised) each time: keeping no dequantised copy of the
        base saves ~0.3 GB on a 1.5B model (q/k/v/o adapted), at the cost of a slower refresh.
        """
        if not self.adapted:
            return
        if self.base is not None:
            delta = stacked_lora_delta(self.modules, self.rows, self.weight.shape[1], self.weight.device)
            self.weight.copy_(delta.add_(self.base))
            return
        start = 0
        for m, r in zip(self.modules, self.rows, strict=True):
            rows = slice(start, start + r)
            start += r
            if not hasattr(m, "lora_A"):
                continue
            base = dense_weight(m).to(self.weight.device)
            delta = lora_delta(m)
            self.weight[rows].copy_(base if delta is None else base.float() + delta.to(self.weight.device))

    def __call__(self, x: Tensor) -> Tensor:
        return torch.nn.functional.linear(x, self.weight, self.bias)


@dataclass
class LayerWeights:
    ln_attn: Tensor
    qkv: FusedLinear
    o: FusedLinear
    ln_mlp: Tensor
    gate_up: FusedLinear
    down: FusedLinear


class DecoderWeights:
    """All weights the fast decoder reads, in one dtype on one device."""

    def __init__(self, model, dtype: torch.dtype, device: torch.device):
        lm = causal_lm(model)
        self.source = lm
        as_dense = lambda t: t.detach().to(device=device, dtype=dtype)  # noqa: E731 (no copy when already right)
        self.embed = as_dense(lm.get_input_embeddings().weight)
        head = lm.get_output_embeddings().weight
        self.lm_head = self.embed if head is lm.get_input_embeddings().weight else as_dense(dense_weight(lm.get_output_embeddings()))
        self.norm = as_dense(lm.model.norm.weight)
        self.layers = []
        for layer in lm.model.layers:
            att, mlp = layer.self_attn, layer.mlp
            self.layers.append(LayerWeights(
                ln_attn=as_dense(layer.input_layernorm.weight),
                qkv=FusedLinear([att.q_proj, att.k_proj, att.v_proj], dtype, device),
                o=FusedLinear([att.o_proj], dtype, device),
                ln_mlp=as_dense(layer.post_attention_layernorm.weight),
                gate_up=FusedLinear([mlp.gate_proj, mlp.up_proj], dtype, device),
                down=FusedLinear([mlp.down_proj], dtype, device),
            ))

    def refresh(self) -> None:
        """Re-add the current LoRA deltas (in place) after an optimizer step.

        A projection whose layers all have a dense base (:attr:`FusedLinear.base`) and one adapter per
        module is refreshed for all layers at once (:func:`_refresh_layers`); the rest layer by layer.
        """
        for name in ("qkv", "o", "gate_up", "down"):
            group = [getattr(lw, name) for lw in self.layers]
            if not any(f.adapted for f in group) or _refresh_layers(group):
                continue
            for f in group:
                f.refresh()


def _refresh_layers(group: list[FusedLinear]) -> bool:
    """``weight = base + B_bd @ A`` for one projection of every layer in a few batched ops; False if it does not apply.

    Applies when every layer has :attr:`FusedLinear.base` and each module one active adapter, all of
    one shape and scaling across layers (the trainer's LoRA). The stacked ``A``s of all layers and the
    block-diagonal of their scaled ``B``s go through one batched matmul (float32, as :func:`lora_delta`),
    then one add of the bases and one copy into the merged weights: about ten kernels for 28 layers
    instead of about ten per layer.
    """
    parts = []
    for f in group:
        ps = [active_lora_parts(m) for m in f.modules]
        if f.base is None or any(len(p) != 1 for p in ps):
            return False
        parts.append([p[0] for p in ps])
    sig = [(p.a.shape, p.b.shape, p.scaling) for p in parts[0]]
    if any([(p.a.shape, p.b.shape, p.scaling) for p in ps] != sig for ps in parts) \
            or len({p.a.shape[0] for p in parts[0]}) != 1:
        return False
    f0 = group[0]
    L, m, r, dev = len(group), len(parts[0]), parts[0][0].a.shape[0], f0.weight.device
    rows = sum(f0.rows)
    scale = block_scale(tuple(f0.rows), tuple(p.scaling for p in parts[0]), torch.float32, dev)
    a = torch.stack([p.a.detach() for ps in parts for p in ps]).to(dev, torch.float32).view(L, m * r, -1)
    b = torch.cat([p.b.detach() for ps in parts for p in ps]).to(dev, torch.float32).view(L, rows, 1, r)
    deltas = list(torch.bmm((b * scale).view(L, rows, m * r), a).unbind(0))
    torch._foreach_add_(deltas, [f.base for f in group])
    torch._foreach_copy_([f.weight for f in group], deltas)
    return True
