"""Typed configs, one dataclass per stage, with help text and validation.

The same field names are used everywhere: the CLI flags (``--batch_size``), the
YAML keys in ``configs/*.yaml`` and the notebooks' parameters cells. Every field
carries its help text in ``metadata["help"]``; ``stonklib.cli`` turns the fields
into flags, so the two can never drift apart.

Validation lives in ``__post_init__`` and runs before any model is loaded. An
error says which field is wrong and how to fix it.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stonklib import paths


class ConfigError(ValueError):
    """A config value is wrong; the message says which and how to fix it."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with help text (mutable defaults go through default_factory)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


# --------------------------------------------------------------------------- data
@dataclass
class DataConfig:
    """How examples are built from a market source (``stonk data build``)."""

    source: str = _f("sp500", "Market data source: sp500 (bundled real S&P 500 data), hf (the DeepStock hub dataset) or csv.")
    csv: str | None = _f(None, "Path to an OHLCV CSV file (required with --source csv).")
    hf_path: str | None = _f(None, "Local path or hub id for --source hf (default: the 2084Collective DeepStock dataset).")
    out: str | None = _f(None, "Output directory for train/val/test parquet files (default: data/built/<source>).")
    history_window: int = _f(15, "Number of most recent (date, close, volume) rows shown in each prompt.")
    min_history: int = _f(11, "Minimum rows on or before the as-of date for an example (11 makes the 10-day return defined).")
    embargo: int = _f(3, "Trading days left out between splits; labels look 3 days ahead, so use at least 3.")
    val_frac: float = _f(0.1, "Fraction of trading dates in the validation split (chronological).")
    test_frac: float = _f(0.1, "Fraction of trading dates in the test split (the most recent dates).")
    flat_threshold_pct: float = _f(0.0, "A next-day move with |change_pct_1| <= this (in percent) is flagged flat (it still counts as down).")
    tickers: list[str] = _f([], "Restrict to these tickers (empty: all).")
    ticker: str | None = _f(None, "With --source csv: the ticker of a one-ticker file without a ticker column (default: the file name), or the one ticker to keep from a many-ticker file.")
    exchange_tz: str = _f("America/New_York", "Exchange time zone: timestamps with a time of day and a zone are converted to this zone's trading date.")
    max_daily_move_pct: float | None = _f(45.0, "A daily move beyond this many percent is treated as an unadjusted split: the ticker's series is cut there so no label or history spans it (0 or None: never cut).")

    def __post_init__(self) -> None:
        _check(self.source in ("sp500", "hf", "csv"), f"source={self.source!r}: use one of sp500, hf, csv.")
        _check(self.source != "csv" or bool(self.csv), "source=csv needs --csv PATH to an OHLCV file.")
        if self.csv:
            _check(Path(self.csv).exists(), f"csv={self.csv!r} does not exist: check the path.")
        _check(self.history_window >= 1, f"history_window={self.history_window}: must be at least 1.")
        _check(1 <= self.min_history, f"min_history={self.min_history}: must be at least 1.")
        _check(self.embargo >= 0, f"embargo={self.embargo}: must be >= 0 (3 is safe for 3-day labels).")
        _check(0 < self.val_frac < 0.5 and 0 < self.test_frac < 0.5 and self.val_frac + self.test_frac < 0.8,
               f"val_frac={self.val_frac}, test_frac={self.test_frac}: each must be in (0, 0.5) and together < 0.8.")
        _check(self.flat_threshold_pct >= 0, "flat_threshold_pct must be >= 0.")
        _check(self.max_daily_move_pct is None or self.max_daily_move_pct >= 0,
               f"max_daily_move_pct={self.max_daily_move_pct}: must be >= 0 (45 catches 2:1 splits; 0 never cuts).")
        _check(_is_time_zone(self.exchange_tz), f"exchange_tz={self.exchange_tz!r}: use an IANA zone such as America/New_York.")

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else paths.default_data_dir(self.source)


# -------------------------------------------------------------------------- train
REWARD_PARTS = ("direction", "magnitude", "confidence", "data_utilization", "format")
LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
#: ``triton_kernels`` -> the fast path's ``kernels=`` argument (:func:`stonklib.kernels.wanted`).
KERNEL_SWITCH = {"auto": None, "on": True, "off": False}


@dataclass
class TrainConfig:
    """One GRPO run. Stage II (default) samples the natural market mix; Stage I balances it."""

    # --- models
    stage: int = _f(2, "1: balanced sampling from a base model, new LoRA r=16; 2: natural sampling from a Stage I model, LoRA r=8.")
    stage1_model: str = _f(str(paths.EMBEDDED_MODEL), "Starting model: a model directory, a hub id (e.g. Qwen/Qwen2.5-1.5B-Instruct) or a PEFT adapter directory.")
    output_dir: str = _f("runs/stage2", "Where logs, checkpoints and the final adapter go.")
    quantize: bool = _f(False, "Load the base model in 4-bit NF4 (bitsandbytes, double quantization).")
    lora_r: int | None = _f(None, "LoRA rank (default: 16 for Stage I, 8 for Stage II).")
    lora_alpha: int = _f(16, "LoRA alpha.")
    lora_dropout: float = _f(0.05, "LoRA dropout.")
    lora_target_modules: list[str] = _f(["q_proj", "k_proj", "v_proj", "o_proj"], "Modules that get a LoRA adapter.")
    trust_remote_code: bool = _f(False, "Allow model repos to run their own code (off unless you trust the repo).")
    device: str = _f("auto", "auto, cpu or cuda (auto picks cuda when available).")
    gradient_checkpointing: bool = _f(True, "Recompute activations in the backward pass: less GPU memory (what lets a 1.5B model train in 8 GiB), more compute.")
    # --- the fast path (each switch changes speed, never the algorithm; docs/performance.md)
    fast_sampler: bool = _f(True, "Sample with stonklib.sampling.fast.FastSampler (bf16 + CUDA graphs on GPU, float32 eager on CPU); architectures it does not implement fall back to HF generate.")
    shared_prefix_logprobs: bool = _f(True, "Run each group's prompt through the network once in the log-prob passes (stonklib.update.prefix); architectures it does not implement fall back to the full forward.")
    dense_update: bool = _f(True, "Run the update's log-prob passes over dense base weights with the LoRA applied unmerged (stonklib.update.dense; no NF4 dequantisation or PEFT module calls per pass). Used with shared_prefix_logprobs when the weights are dense already or FastSampler can lend its copy.")
    lora_matmul_dtype: str = _f("model", "Dtype of the dense update's LoRA matmuls: model (the base weights' dtype, bf16 on GPU, as under autocast and in TRL's bf16 runs) or adapter (the adapter's float32, as PEFT's eager modules compute). Parameters and their gradients stay float32; float32 models compute in float32 either way.")
    triton_kernels: str = _f("auto", "The Triton kernels (the decode step's attention, MLP and top-p draw; the update's RMSNorm, SwiGLU, RoPE, log-prob head and seeded LoRA dropout): auto (on CUDA with Triton installed), off (their plain-torch twins: the same model and sampling distribution, slower) or on (wherever Triton runs, CPU included under TRITON_INTERPRET=1: slow, for tests).")
    decode_mlp_kernel: bool = _f(True, "With triton_kernels: the decode step's MLP as a Triton kernel too. Its split-K sums use atomics, so GPU sampling is not bit-reproducible run to run; off keeps cuBLAS for the MLP.")
    compile_decoder: bool = _f(True, "On CUDA, torch.compile each decode layer's elementwise work (compiled once per run).")
    decode_graphs: bool = _f(True, "On CUDA, replay the sampler's decode step from a CUDA graph (one launch per token step).")
    update_graphs: bool = _f(True, "On CUDA, replay the update's reference pass, and with one micro-batch on one process its whole forward and backward pass, from CUDA graphs (stonklib.update.graphs).")
    # --- data
    data: str | None = _f(None, "A built data directory (stonk data build); default: the bundled S&P 500 data, built on first use.")
    natural_distribution: bool = _f(True, "Sample prompts from the natural up/down mix (Stage II). --balanced turns it off (Stage I).")
    max_train_samples: int = _f(5000, "Use at most this many training examples: a seeded sample over the whole train period (natural or balanced).")
    max_eval_samples: int = _f(64, "Validation examples scored at each evaluation.")
    prompt_version: str = _f("seed", "Prompt template name from stonklib.prompts.TEMPLATES (seed: the seed's Stage II prompt).")
    max_prompt_tokens: int = _f(1024, "Prompts longer than this are truncated (history rows first).")
    # --- GRPO
    epochs: int = _f(3, "Passes over the sampled training examples.")
    max_steps: int | None = _f(None, "Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = _f(4, "Prompts per optimizer step (each gets num_generations completions).")
    num_generations: int = _f(4, "Completions sampled per prompt: the GRPO group size G.")
    grad_accum_steps: int = _f(1, "Micro-batches per optimizer step (the batch is split into this many).")
    max_new_tokens: int = _f(400, "Longest completion, in tokens.")
    temperature: float = _f(0.7, "Sampling temperature for rollouts.")
    top_p: float = _f(0.9, "Nucleus sampling threshold for rollouts.")
    kl_coef: float = _f(0.05, "beta: weight of the k3 KL penalty to the Stage I reference.")
    epsilon: float = _f(0.2, "PPO clip range (lower).")
    epsilon_high: float | None = _f(None, "Upper clip range (DAPO clip-higher); default: epsilon.")
    loss_type: str = _f("grpo", "Loss aggregation: grpo (per-sequence mean), dr_grpo (sum / (B*T)) or dapo (token mean).")
    scale_rewards: str = _f("group", "Advantage scaling: group (divide by group std) or none (Dr. GRPO).")
    kl_bias_correction: bool = _f(False, "Multiply the k3 KL term by the importance ratio (DeepSeek-V3.2; TRL's "
                                  "use_bias_correction_kl): its gradient becomes the reverse KL's score-function "
                                  "gradient. Off: DeepSeekMath's k3.")
    # --- optimizer
    lr: float = _f(5e-6, "AdamW learning rate.")
    weight_decay: float = _f(0.01, "AdamW weight decay.")
    warmup_ratio: float = _f(0.1, "Fraction of steps with linear warm-up.")
    lr_scheduler: str = _f("cosine", "Decay after warm-up: cosine, linear or constant.")
    max_grad_norm: float = _f(1.0, "Gradient-norm clip.")
    # --- reward
    reward_weights: dict[str, float] = _f({}, "Multipliers per reward part (direction, magnitude, confidence, data_utilization, format); missing parts keep 1.0.")
    bias_adaptation: bool = _f(False, "Weight the direction reward by the inverse running class frequency.")
    multi_horizon: bool = _f(False, "Also score days 2 and 3 (averaged with day 1).")
    # --- logging and checkpoints
    save_steps: int = _f(50, "Write checkpoint-{step}/ every this many steps (and at each epoch end).")
    eval_steps: int = _f(50, "Score the validation split every this many steps; best/ keeps the best.")
    eval_at_start: bool = _f(False, "Also score the validation split before the first step: the untrained baseline of the curve.")
    logging_steps: int = _f(1, "Write scalars every this many steps.")
    save_total_limit: int | None = _f(None, "Keep at most this many checkpoint-* folders (oldest removed); best/ is kept.")
    seed: int = _f(42, "Random seed (data order, sampling, LoRA init).")
    resume: bool = _f(False, "Continue from the latest complete checkpoint in output_dir.")
    tensorboard: bool = _f(True, "Write TensorBoard scalars to output_dir/tb.")

    def __post_init__(self) -> None:
        _check(self.stage in (1, 2), f"stage={self.stage}: use 1 (balanced, from a base model) or 2 (natural, from Stage I).")
        if self.lora_r is None:
            self.lora_r = 16 if self.stage == 1 else 8
        _check(self.lora_r > 0, f"lora_r={self.lora_r}: must be positive.")
        _check(self.batch_size >= 1, f"batch_size={self.batch_size}: must be at least 1 prompt.")
        _check(self.num_generations >= 2,
               f"num_generations={self.num_generations}: GRPO needs at least 2 completions per prompt for a group baseline.")
        _check(self.batch_size % self.grad_accum_steps == 0,
               f"batch_size={self.batch_size} must divide into grad_accum_steps={self.grad_accum_steps} micro-batches of whole groups: "
               f"pick grad_accum_steps from the divisors of {self.batch_size}.")
        _check(self.lr > 0, f"lr={self.lr}: the learning rate must be > 0 (try 5e-6).")
        _check(self.kl_coef >= 0, f"kl_coef={self.kl_coef}: must be >= 0 (0 disables the KL penalty).")
        _check(0 < self.epsilon < 1, f"epsilon={self.epsilon}: the clip range must be in (0, 1).")
        _check(self.loss_type in LOSS_TYPES, f"loss_type={self.loss_type!r}: use one of {', '.join(LOSS_TYPES)}.")
        _check(self.lora_matmul_dtype in ("model", "adapter"),
               f"lora_matmul_dtype={self.lora_matmul_dtype!r}: use model or adapter.")
        _check(self.triton_kernels in KERNEL_SWITCH, f"triton_kernels={self.triton_kernels!r}: use auto, on or off.")
        _check(self.scale_rewards in ("group", "none"), f"scale_rewards={self.scale_rewards!r}: use group or none.")
        _check(self.lr_scheduler in ("cosine", "linear", "constant"), f"lr_scheduler={self.lr_scheduler!r}: use cosine, linear or constant.")
        _check(self.epochs >= 1, f"epochs={self.epochs}: must be at least 1.")
        _check(self.max_steps is None or self.max_steps >= 1, f"max_steps={self.max_steps}: must be at least 1.")
        _check(self.max_new_tokens >= 1, f"max_new_tokens={self.max_new_tokens}: must be at least 1.")
        _check(0 < self.top_p <= 1, f"top_p={self.top_p}: must be in (0, 1].")
        _check(self.temperature > 0, f"temperature={self.temperature}: must be > 0.")
        _check(self.save_steps >= 1 and self.eval_steps >= 1, "save_steps and eval_steps must be at least 1.")
        _check(self.max_train_samples >= 1, "max_train_samples must be at least 1.")
        _check(self.device in ("auto", "cpu", "cuda"), f"device={self.device!r}: use auto, cpu or cuda.")
        bad = set(self.reward_weights) - set(REWARD_PARTS)
        _check(not bad, f"reward_weights has unknown parts {sorted(bad)}: use {', '.join(REWARD_PARTS)}.")
        if self.data is not None:
            _check(Path(self.data).is_dir(), f"data={self.data!r} is not a directory: build one with `stonk data build --out DIR`.")
        _check(_is_model_ref(self.stage1_model),
               f"stage1_model={self.stage1_model!r} is neither a directory nor a hub id (org/name). "
               "Fetch the embedded model with `stonk model fetch smollm2` or pass a path.")


def kernels_arg(cfg: TrainConfig) -> bool | None:
    """``cfg.triton_kernels`` as the fast path's ``kernels=`` argument: None (auto), True (on) or False (off)."""
    return KERNEL_SWITCH[cfg.triton_kernels]


def _is_time_zone(name: str) -> bool:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _is_model_ref(ref: str) -> bool:
    """A local directory, or a hub id shaped ``org/name`` (not a path that merely doesn't exist)."""
    if Path(ref).expanduser().is_dir():
        return True
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", ref) is not None and not Path(ref).parent.exists()


# --------------------------------------------------------------------------- eval
@dataclass
class EvalConfig:
    """Evaluation of a model or a predictions file (``stonk evaluate``)."""

    model: str | None = _f(None, "Model directory or hub id to generate predictions with (base model, or base for --adapter).")
    adapter: str | None = _f(None, "A PEFT adapter directory (Stage I or Stage II) applied on top of --model.")
    predictions: str | None = _f(None, "An existing predictions JSONL to score instead of generating.")
    data: str | None = _f(None, "A built data directory (default: the bundled S&P 500 data).")
    split: str = _f("test", "Which split to evaluate: train, val or test.")
    limit: int | None = _f(None, "Evaluate at most this many examples (spread over dates, chronological).")
    out: str = _f("runs/eval", "Output directory for predictions.jsonl, metrics.json and plots.")
    batch_size: int = _f(8, "Prompts per generation batch.")
    max_new_tokens: int = _f(200, "Longest completion, in tokens.")
    greedy: bool = _f(True, "Greedy decoding (set --no-greedy to sample with temperature/top_p).")
    temperature: float = _f(0.7, "Sampling temperature when not greedy.")
    top_p: float = _f(0.9, "Nucleus threshold when not greedy.")
    prompt_version: str = _f("seed", "Prompt template name from stonklib.prompts.TEMPLATES.")
    max_prompt_tokens: int = _f(1024, "Prompts longer than this are truncated (history first).")
    cost_bps: float = _f(5.0, "Trading cost per side in basis points for the backtest.")
    quantize: bool = _f(False, "Load the model in 4-bit NF4.")
    device: str = _f("auto", "auto, cpu or cuda.")
    base_predictions: str | None = _f(None, "Predictions JSONL of the untuned base model on the same rows (the base-model baseline).")
    seed: int = _f(0, "Random seed for sampling and baselines.")

    def __post_init__(self) -> None:
        _check(self.model is not None or self.predictions is not None,
               "give --model (to generate predictions) or --predictions FILE.jsonl (to score an existing file).")
        _check(self.split in ("train", "val", "test"), f"split={self.split!r}: use train, val or test.")
        _check(self.limit is None or self.limit >= 1, f"limit={self.limit}: must be at least 1.")
        _check(self.batch_size >= 1, "batch_size must be at least 1.")
        _check(self.cost_bps >= 0, "cost_bps must be >= 0.")
        if self.predictions:
            _check(Path(self.predictions).is_file(), f"predictions={self.predictions!r} does not exist.")
        if self.adapter:
            _check(Path(self.adapter, "adapter_config.json").is_file(),
                   f"adapter={self.adapter!r} has no adapter_config.json: point it at a checkpoint-*/ or best/ folder.")


# ------------------------------------------------------------------ load / dump
def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def base_type(tp: Any) -> Any:
    """``int | None`` -> int, ``list[str]`` -> list."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return base_type(args[0])
    return origin or tp


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist.")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e}).") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of field: value at the top level.")
    return data


def build(cls: type, yaml_path: str | Path | None = None, section: str | None = None, **overrides: Any):
    """Make a config from an optional YAML file (optionally one section of it) plus overrides.

    Unknown keys are an error that lists the valid ones, so a typo never passes silently.
    """
    values: dict[str, Any] = {}
    if yaml_path:
        data = load_yaml(yaml_path)
        if section is not None:
            data = data.get(section, {}) or {}
        values.update(data)
    values.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        where = f" in {yaml_path}" if yaml_path else ""
        raise ConfigError(f"unknown {cls.__name__} field(s) {sorted(unknown)}{where}; valid: {', '.join(sorted(names))}.")
    return cls(**values)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
