"""The configs of the stages: data build, the format warm-up, GRPO training, evaluation.

``WarmupConfig`` and ``TrainConfig`` share :class:`RunConfig`: where a run writes, how its model is
loaded and gets its new LoRA, the data it reads, the optimiser, logging and checkpoints. So the
warm-up trains on exactly the LoRA setup the GRPO stages use, and a flag means the same in both.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from stonklib import paths
from stonklib.config.core import ConfigError, check_model_ref, coerce_fields, is_time_zone, option, require

#: The positive-control rules of ``stonk data build --plant`` (:mod:`stonklib.data.planted`).
PLANTED = ("momentum", "threshold")
#: What a built dataset's direction labels measure (``docs/data.md``, "Two labels").
LABELS = ("next_close", "intraday")
REWARD_PARTS = ("direction", "magnitude", "confidence", "data_utilization", "format")
LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
ADVANTAGE_SCALES = ("group", "batch", "none")
IS_LEVELS = ("token", "sequence")
#: The prompt templates' names (:data:`stonklib.prompts.TEMPLATES`, which a test holds equal to this), so a
#: misspelt ``prompt_version`` fails with the rest of the config, before any model loads.
PROMPT_VERSIONS = ("seed", "compact", "compact_example", "compact_format")
#: What ``best/`` may be chosen by (validation numbers of :func:`stonklib.grpo.validation.answer_stats`).
BEST_METRICS = ("val/mcc", "val/balanced_accuracy", "val/accuracy", "val/reward")
#: ``triton_kernels`` -> the fast path's ``kernels=`` argument (:func:`stonklib.kernels.wanted`).
KERNEL_SWITCH = {"auto": None, "on": True, "off": False}
#: Where a warm-up target's direction comes from (``docs/warmup.md``): ``coin`` and ``volume`` are label-free,
#: ``momentum`` and ``label`` ablations.
DIRECTION_SOURCES = ("coin", "volume", "momentum", "label")
#: How the coin's day-1 direction is trained: each prompt's odds to even, or only the batch's mean (docs/warmup.md).
COIN_BALANCES = ("prompt", "batch")
#: Values a warm-up justification may cite, as ``{name}`` placeholders: each is shown in every prompt.
JUSTIFICATION_VALUES = ("date", "close", "previous_close", "day_change_pct", "return_1d", "return_5d", "return_10d",
                        "volatility_10d", "volume_ratio", "volume", "previous_date")
#: Placeholders that print the same number (the day's change is the 1-day return): they count once.
SAME_VALUE = {"return_1d": "day_change_pct"}
MIN_CITED_VALUES = 5  # what data_utilization pays in full for
#: The metrics line as the compact prompts print it: a verbatim copy is what a 135M model learns in 30 steps
#: (a sentence citing the same values in new words was not: ``docs/warmup.md``).
DEFAULT_JUSTIFICATION = ("return_1d {return_1d}%, return_5d {return_5d}%, return_10d {return_10d}%, "
                         "volatility_10d {volatility_10d}%, volume_ratio {volume_ratio}.")
#: The justification of the first warm-up measurements (kept for comparison).
SENTENCE_JUSTIFICATION = ("On {date} the stock closed at ${close} after ${previous_close} on {previous_date} "
                          "({day_change_pct}%); its 5-day return was {return_5d}% and its 10-day volatility "
                          "{volatility_10d}%.")


# --------------------------------------------------------------------------- data
@dataclass
class DataConfig:
    """How examples are built from a market source (``stonk data build``)."""

    source: str = option("sp500", "Market data source: sp500 (bundled real S&P 500 data), hf (the DeepStock hub dataset) or csv.")
    csv: str | None = option(None, "Path to an OHLCV CSV file (required with --source csv).")
    hf_path: str | None = option(None, "Local path or hub id for --source hf (default: the 2084Collective DeepStock dataset).")
    out: str | None = option(None, "Output directory for train/val/test parquet files (default: data/built/<source>).")
    history_window: int = option(15, "Number of most recent (date, close, volume) rows shown in each prompt.")
    min_history: int = option(11, "Minimum rows on or before the as-of date for an example (11 makes the 10-day return defined).")
    embargo: int = option(3, "Trading days left out between splits; labels look 3 days ahead, so use at least 3.")
    val_frac: float = option(0.1, "Fraction of trading dates in the validation split (chronological).")
    test_frac: float = option(0.1, "Fraction of trading dates in the test split (the most recent dates).")
    flat_threshold_pct: float = option(0.0, "A next-day move with |change_pct_1| <= this (in percent) is flagged flat (it still counts as down).")
    tickers: list[str] = option([], "Restrict to these tickers (empty: all).")
    ticker: str | None = option(None, "With --source csv: the ticker of a one-ticker file without a ticker column (default: the file name), or the one ticker to keep from a many-ticker file.")
    date_format: str | None = option(None, "With --source csv: the dates' strftime pattern, e.g. %d/%m/%Y (default: ISO dates, or a day/month order that the file's own dates settle; an ambiguous file is an error that asks for this).")
    decimal: str = option("auto", "With --source csv: the numbers' decimal mark: auto (a comma in a ;-separated file whose prices hold commas, else a point), '.' or ','.")
    exchange_tz: str = option("America/New_York", "Exchange time zone: timestamps with a time of day and a zone are converted to this zone's trading date.")
    max_daily_move_pct: float | None = option(45.0, "A daily move beyond this many percent is treated as an unadjusted split: the ticker's series is cut there so no label or history spans it (0 or None: never cut).")
    label: str = option("next_close", "What a day's direction is: next_close (the default: the next trading day's close against the as-of close, the seed's task) or intraday (each next day's own close against its own open, the DeepStock dataset's 'buy if close > open'; the prompt shows neither). Needs a source with opens (sp500, hf, or a csv with an open column).")
    plant: str | None = option(None, "A positive control: labels follow a rule of what the prompt shows instead of the market (momentum: the sign of the shown 1-day return; threshold: up iff the shown 5-day return is above 0). Every other field stays real. Default output: data/built/<source>-planted-<rule>.")

    def __post_init__(self) -> None:
        coerce_fields(self)
        require(self.source in ("sp500", "hf", "csv"), f"source={self.source!r}: use one of sp500, hf, csv.")
        require(self.source != "csv" or bool(self.csv), "source=csv needs --csv PATH to an OHLCV file.")
        if self.csv:
            require(Path(self.csv).exists(), f"csv={self.csv!r} does not exist: check the path.")
        require(self.history_window >= 1, f"history_window={self.history_window}: must be at least 1.")
        require(1 <= self.min_history, f"min_history={self.min_history}: must be at least 1.")
        require(self.embargo >= 0, f"embargo={self.embargo}: must be >= 0 (3 is safe for 3-day labels).")
        require(0 < self.val_frac < 0.5 and 0 < self.test_frac < 0.5 and self.val_frac + self.test_frac < 0.8,
                f"val_frac={self.val_frac}, test_frac={self.test_frac}: each must be in (0, 0.5) and together < 0.8.")
        require(self.flat_threshold_pct >= 0, "flat_threshold_pct must be >= 0.")
        require(self.max_daily_move_pct is None or self.max_daily_move_pct >= 0,
                f"max_daily_move_pct={self.max_daily_move_pct}: must be >= 0 (45 catches 2:1 splits; 0 never cuts).")
        require(self.decimal in ("auto", ".", ","), f"decimal={self.decimal!r}: use auto, '.' or ','.")
        require(self.date_format is None or "%" in self.date_format,
                f"date_format={self.date_format!r}: write a strftime pattern such as %d/%m/%Y.")
        require(is_time_zone(self.exchange_tz), f"exchange_tz={self.exchange_tz!r}: use an IANA zone such as America/New_York.")
        require(self.label in LABELS, f"label={self.label!r}: use one of {', '.join(LABELS)}.")
        require(self.plant in (None, *PLANTED), f"plant={self.plant!r}: use one of {', '.join(PLANTED)} (or leave it unset "
                                                "for the real labels).")

    @property
    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        d = paths.default_data_dir(self.source)
        return d.with_name(f"{d.name}-planted-{self.plant}") if self.plant else d


# ---------------------------------------------------------------- what training runs share
@dataclass
class RunConfig:
    """What a training run shares with the others: outputs, model loading and LoRA, data, optimiser, logs."""

    #: Fields that are gone: name -> (their old default, why). An old run's ``config.yaml`` that still holds
    #: the old default loads with a warning; any other value is an error (:func:`stonklib.config.core.build`).
    RETIRED: ClassVar[dict[str, tuple[Any, str]]] = {
        "decode_projection_kernels": (False, "measured slower than cuBLAS on an H100; see benchmarks/RESULTS.md, "
                                             "Tried and removed"),
    }

    # --- outputs and the policy
    output_dir: str = option("runs/stage2", "Where logs, checkpoints and the final adapter go.")
    quantize: bool = option(False, "Load the base model in 4-bit NF4 (bitsandbytes, double quantization).")
    lora_r: int | None = option(8, "LoRA rank of the new adapter.")
    lora_alpha: int = option(16, "LoRA alpha.")
    lora_dropout: float = option(0.05, "LoRA dropout.")
    lora_target_modules: list[str] = option(["q_proj", "k_proj", "v_proj", "o_proj"], "Modules that get a LoRA adapter.")
    trust_remote_code: bool = option(False, "Allow model repos to run their own code (off unless you trust the repo).")
    device: str = option("auto", "auto, cpu or cuda (auto picks cuda when available).")
    gradient_checkpointing: bool = option(True, "Recompute activations in the backward pass: less GPU memory (what lets a 1.5B model train in 8 GiB), more compute.")
    # --- sampling's fast path (each switch changes speed, never the algorithm; docs/performance.md)
    fast_sampler: bool = option(True, "Sample with stonklib.sampling.fast.FastSampler (bf16 + CUDA graphs on GPU, float32 eager on CPU); architectures it does not implement fall back to HF generate.")
    triton_kernels: str = option("auto", "The Triton kernels (the decode step's attention, MLP and top-p draw; the update's RMSNorm, SwiGLU, RoPE, log-prob head and seeded LoRA dropout): auto (on CUDA with Triton installed), off (their plain-torch twins: the same model and sampling distribution, slower) or on (wherever Triton runs, CPU included under TRITON_INTERPRET=1: slow, for tests).")
    decode_mlp_kernel: bool = option(True, "With triton_kernels: the decode step's MLP as a Triton kernel too. Its split-K sums use atomics, so GPU sampling is not bit-reproducible run to run; off keeps cuBLAS for the MLP.")
    compile_decoder: bool = option(True, "On CUDA, torch.compile each decode layer's elementwise work (compiled once per run).")
    decode_graphs: bool = option(True, "On CUDA, replay the sampler's decode step from a CUDA graph (one launch per token step).")
    # --- data
    data: str | None = option(None, "A built data directory (stonk data build); default: the bundled S&P 500 data, built on first use.")
    max_train_samples: int = option(5000, "Use at most this many training examples: a seeded sample over the whole train period.")
    max_eval_samples: int = option(64, "Validation examples scored at each evaluation.")
    prompt_version: str = option("seed", "Prompt template name from stonklib.prompts.TEMPLATES (seed: the seed's Stage II prompt).")
    max_prompt_tokens: int = option(1024, "Prompts longer than this are truncated (history rows first).")
    anonymize: bool = option(False, "Anonymised prompts: a neutral id for the ticker; no name, description, industry, news or financials; dates relative to the as-of day (t, t-1, ...); prices rescaled so the as-of close is 100 (stonklib.data.anonymize). The rewards ground against the same values.")
    # --- steps
    epochs: int = option(3, "Passes over the sampled training examples.")
    max_steps: int | None = option(None, "Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = option(4, "Prompts per optimizer step.")
    grad_accum_steps: int = option(1, "Micro-batches per optimizer step (the batch is split into this many).")
    max_new_tokens: int = option(400, "Longest completion, in tokens.")
    # --- optimizer
    lr: float = option(5e-6, "AdamW learning rate.")
    weight_decay: float = option(0.01, "AdamW weight decay.")
    warmup_ratio: float = option(0.1, "Fraction of steps with linear learning-rate warm-up.")
    lr_scheduler: str = option("cosine", "Decay after the learning-rate warm-up: cosine, linear or constant.")
    max_grad_norm: float = option(1.0, "Gradient-norm clip.")
    # --- logging and checkpoints
    save_steps: int = option(50, "Write checkpoint-{step}/ every this many steps (and at each epoch end); with several optimizer steps per rollout (num_iterations, steps_per_generation), at the end of the rollout the step falls in.")
    eval_steps: int = option(50, "Score the validation split every this many steps (a GRPO run keeps the best in best/).")
    eval_at_start: bool = option(False, "Also score the validation split before the first step: the untrained baseline of the curve.")
    logging_steps: int = option(1, "Write scalars every this many steps.")
    save_total_limit: int | None = option(None, "Keep at most this many checkpoint-* folders (oldest removed); best/ is kept.")
    seed: int = option(42, "Random seed (data order, sampling, LoRA init).")
    resume: bool = option(False, "Continue from the latest complete checkpoint in output_dir.")
    tensorboard: bool = option(True, "Write TensorBoard scalars to output_dir/tb.")

    def __post_init__(self) -> None:
        coerce_fields(self)
        require(self.lora_r is not None and self.lora_r > 0, f"lora_r={self.lora_r}: must be positive.")
        require(self.batch_size >= 1, f"batch_size={self.batch_size}: must be at least 1 prompt.")
        require(self.grad_accum_steps >= 1 and self.batch_size % self.grad_accum_steps == 0,
                f"batch_size={self.batch_size} must divide into grad_accum_steps={self.grad_accum_steps} micro-batches: "
                f"pick grad_accum_steps from the divisors of {self.batch_size}.")
        require(self.lr > 0, f"lr={self.lr}: the learning rate must be > 0.")
        require(self.triton_kernels in KERNEL_SWITCH, f"triton_kernels={self.triton_kernels!r}: use auto, on or off.")
        require(self.lr_scheduler in ("cosine", "linear", "constant"),
                f"lr_scheduler={self.lr_scheduler!r}: use cosine, linear or constant.")
        require(0 <= self.warmup_ratio < 1, f"warmup_ratio={self.warmup_ratio}: must be in [0, 1).")
        require(self.epochs >= 1, f"epochs={self.epochs}: must be at least 1.")
        require(self.max_steps is None or self.max_steps >= 1, f"max_steps={self.max_steps}: must be at least 1.")
        require(self.max_new_tokens >= 1, f"max_new_tokens={self.max_new_tokens}: must be at least 1.")
        require(self.save_steps >= 1 and self.eval_steps >= 1, "save_steps and eval_steps must be at least 1.")
        require(self.max_train_samples >= 1, "max_train_samples must be at least 1.")
        require(self.device in ("auto", "cpu", "cuda"), f"device={self.device!r}: use auto, cpu or cuda.")
        check_prompt_version(self.prompt_version)
        if self.data is not None:
            require(Path(self.data).is_dir(), f"data={self.data!r} is not a directory: build one with `stonk data build --out DIR`.")


# -------------------------------------------------------------------------- warm-up
@dataclass
class WarmupConfig(RunConfig):
    """The supervised format warm-up (``stonk warmup``): LoRA fine-tuning on answers written by code.

    Each training example's target is the answer format for days 1-3 with a direction, a magnitude and
    a confidence, and a justification citing values that example's prompt shows. The direction comes
    from a seeded balanced coin by default, never from the label (``docs/warmup.md`` says why).
    """

    model: str = option(str(paths.EMBEDDED_MODEL), "Starting model: a model directory, a hub id (e.g. Qwen/Qwen2.5-1.5B-Instruct) or a PEFT adapter directory (merged into its base before quantizing).")
    output_dir: str = option("runs/warmup", "Where logs, checkpoints and the final adapter go; the GRPO stage then starts from output_dir/final.")
    direction_source: str = option("coin", "Where each target's direction comes from: coin (a seeded balanced coin per example and day: label-free, the default), volume (whether the shown volume ratio is at least 1, a seeded side meaning up, the two sides weighing the same: label-free, readable from the prompt and without a direction of its own; an ablation), momentum (the sign of the 1-day return the prompt shows; an ablation) or label (the true next-day direction: supervised classification, a baseline, not the method).")
    justification: str = option(DEFAULT_JUSTIFICATION, "The target's justification line, with {placeholders} for values the prompt shows (" + ", ".join(JUSTIFICATION_VALUES) + f"); it must cite at least {MIN_CITED_VALUES} distinct values, so the data_utilization reward pays in full.")
    magnitude_decimals: int = option(2, "Decimals of each target's predicted move (the 10-day volatility the prompt shows): 2 copies it as printed, which the warm-up learns; 1 rounds it (the first measured setting).")
    direction_weight: float = option(50.0, "Loss weight of each target's day-1 direction word against 1 for every other token: with the coin's two faces, it is what pulls every prompt's day-1 odds to even within a short warm-up (docs/warmup.md).")
    coin_balance: str = option("prompt", "With the coin, how day 1's direction word is trained: prompt (each prompt's up and down faces weigh half each, pulling every prompt's odds to even) or batch (the word must be up or down, and only the batch's mean up-vs-down log-odds is pulled to zero, so each prompt keeps its own lean and greedy answers split both ways).")
    coin_spread: float = option(0.0, "With coin_balance batch: the width (standard deviation, nats) the batch's day-1 up-vs-down log-odds are pushed to, in whichever direction each prompt already leans (label-free); 0 leaves each prompt's lean as it comes.")
    max_train_samples: int = option(2000, "Use at most this many training examples (their targets are built by code).")
    epochs: int = option(1, "Passes over the sampled training examples.")
    max_new_tokens: int = option(128, "Longest completion when the validation answers are generated.")
    lr: float = option(1e-3, "AdamW learning rate (for the LoRA weights only).")
    warmup_ratio: float = option(0.05, "Fraction of steps with linear learning-rate warm-up.")
    eval_at_start: bool = option(True, "Also answer the validation prompts before the first step: the 'before' of notebook 04's before/after table.")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.direction_source in DIRECTION_SOURCES,
                f"direction_source={self.direction_source!r}: use one of {', '.join(DIRECTION_SOURCES)} "
                "(coin is the label-free default).")
        check_justification(self.justification)
        require(self.magnitude_decimals in (1, 2), f"magnitude_decimals={self.magnitude_decimals}: use 1 or 2.")
        require(self.direction_weight > 0, f"direction_weight={self.direction_weight}: must be > 0 (1: no extra weight).")
        require(self.coin_balance in COIN_BALANCES,
                f"coin_balance={self.coin_balance!r}: use one of {', '.join(COIN_BALANCES)}.")
        require(self.coin_spread >= 0, f"coin_spread={self.coin_spread}: must be >= 0 (0: no spread term).")
        check_model_ref("model", self.model)


def check_justification(template: str) -> set[str]:
    """The distinct values a justification template cites; an error naming the field unless there are enough."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ConfigError(f"justification={template!r} is not a valid template ({e}): write values as {{close}}.") from e
    unknown = sorted({n for n in names if n not in JUSTIFICATION_VALUES})
    require(not unknown, f"justification cites {unknown}, which no prompt shows; use {', '.join(JUSTIFICATION_VALUES)}.")
    cited = {SAME_VALUE.get(n, n) for n in names}
    require(len(cited) >= MIN_CITED_VALUES,
            f"justification cites {len(cited)} distinct value(s) ({', '.join(sorted(cited)) or 'none'}); it must cite "
            f"at least {MIN_CITED_VALUES} so data_utilization pays in full (return_1d and day_change_pct are one value).")
    return cited


# -------------------------------------------------------------------------- train
@dataclass
class TrainConfig(RunConfig):
    """One GRPO run. Stage II (default) samples the natural market mix; Stage I balances it."""

    stage: int = option(2, "1: balanced sampling, new LoRA r=16 (the Stage I run); 2: natural sampling from a Stage I model, LoRA r=8.")
    stage1_model: str = option(str(paths.EMBEDDED_MODEL), "Starting model: a model directory, a hub id (e.g. Qwen/Qwen2.5-1.5B-Instruct) or a PEFT adapter directory (the warm-up's or Stage I's final/, merged before quantizing).")
    lora_r: int | None = option(None, "LoRA rank (default: 16 for Stage I, 8 for Stage II).")
    natural_distribution: bool = option(True, "Sample prompts from the natural up/down mix (Stage II). --balanced turns it off (Stage I).")
    # --- the update's fast path
    shared_prefix_logprobs: bool = option(True, "Run each group's prompt through the network once in the log-prob passes (stonklib.update.prefix); architectures it does not implement fall back to the full forward.")
    dense_update: bool = option(True, "Run the update's log-prob passes over dense base weights with the LoRA applied unmerged (stonklib.update.dense; no NF4 dequantisation or PEFT module calls per pass). Used with shared_prefix_logprobs when the weights are dense already or FastSampler can lend its copy.")
    lora_matmul_dtype: str = option("model", "Dtype of the dense update's LoRA matmuls: model (the base weights' dtype, bf16 on GPU, as under autocast and in TRL's bf16 runs) or adapter (the adapter's float32, as PEFT's eager modules compute). Parameters and their gradients stay float32; float32 models compute in float32 either way.")
    update_graphs: bool = option(True, "On CUDA, replay the update's reference pass, and with one micro-batch on one process its whole forward and backward pass, from CUDA graphs (stonklib.update.graphs).")
    # --- GRPO
    batch_size: int = option(4, "Prompts per optimizer step (each gets num_generations completions).")
    num_generations: int = option(4, "Completions sampled per prompt: the GRPO group size G.")
    temperature: float = option(0.7, "Sampling temperature for rollouts.")
    top_p: float = option(0.9, "Nucleus sampling threshold for rollouts.")
    kl_coef: float = option(0.05, "beta: weight of the k3 KL penalty to the Stage I reference.")
    epsilon: float = option(0.2, "PPO clip range (lower).")
    epsilon_high: float | None = option(None, "Upper clip range (DAPO clip-higher); default: epsilon.")
    loss_type: str = option("grpo", "Loss aggregation: grpo (per-sequence mean), dr_grpo (sum / (B*T)) or dapo (token mean).")
    scale_rewards: str = option("group", "Advantage scaling: group (divide by the group's reward std), batch (by the whole batch's std, TRL's scale_rewards=batch) or none (Dr. GRPO).")
    num_iterations: int = option(1, "mu: optimizer passes over each rollout (GRPO's mu, TRL's num_iterations). Above 1 the old log-probs are computed once per rollout and the clipped ratio acts on the later passes.")
    steps_per_generation: int = option(1, "Optimizer steps each rollout is split into (TRL's steps_per_generation): one sampling call covers batch_size x steps_per_generation prompts, each step updates on its batch_size of them. A rollout makes num_iterations x steps_per_generation optimizer steps; checkpoints fall on rollout boundaries.")
    importance_sampling_level: str = option("token", "Importance ratio per token (PPO/GRPO) or per sequence (GSPO, arXiv 2507.18071: the length-normalised sequence ratio, clipped as a whole).")
    mask_truncated_completions: bool = option(False, "Leave completions that hit max_new_tokens before their EOS out of the loss (TRL's option; DAPO's overlong filtering). They still count in their group's baseline.")
    overlong_buffer: int = option(0, "DAPO's soft overlong punishment: the last overlong_buffer tokens before max_new_tokens cost up to overlong_penalty reward, linearly (0: off).")
    overlong_penalty: float = option(1.0, "With overlong_buffer: the reward a completion of max_new_tokens tokens loses.")
    tis_cap: float | None = option(None, "Truncated importance sampling against the sampler/trainer gap: the policy term is weighted by min(pi_train / pi_sampler, tis_cap) per token (TRL's vllm_importance_sampling_correction, token_truncate). Needs a sampler that reports log-probs (both do). None: off; the gap is logged either way.")
    kl_bias_correction: bool = option(False, "Multiply the k3 KL term by the importance ratio (DeepSeek-V3.2; TRL's use_bias_correction_kl): its gradient becomes the reverse KL's score-function gradient. Off: DeepSeekMath's k3.")
    # --- exploration controls (docs/learning.md says which mattered)
    entropy_coef: float = option(0.0, "Weight of an entropy bonus in the loss: its gradient is the score-function estimate of the per-token entropy's gradient from the sampled tokens (0: off).")
    dynamic_sampling: bool = option(False, "DAPO's dynamic sampling: drop groups whose G completions all got one reward and sample groups for further prompts in their place (at most max_resample_rounds extra rounds per step).")
    max_resample_rounds: int = option(2, "With dynamic_sampling: extra sampling rounds of batch_size prompts per step, at most; a batch still short of groups with spread keeps some spread-free ones.")
    eval_samples: int = option(0, "Also sample this many answers per validation prompt at the rollouts' temperature and top_p, and log their day-1 up-rate and parse rate (val/sampled_up_rate, val/sampled_parse_rate): the policy's own balance, which greedy answers that swing as a block hide. 0: greedy answers only.")
    best_metric: str = option("val/mcc", "The validation number best/ keeps the highest of: val/mcc (default), val/balanced_accuracy, val/accuracy or val/reward (a proxy: a rising reward is not a better prediction). Undefined (no parsed answer) ranks lowest; the validation reward breaks ties.")
    # --- reward
    reward_weights: dict[str, float] = option({}, "Multipliers per reward part (direction, magnitude, confidence, data_utilization, format); missing parts keep 1.0.")
    bias_adaptation: bool = option(False, "Weight the direction reward by the inverse running class frequency.")
    multi_horizon: bool = option(False, "Also score days 2 and 3 (averaged with day 1).")

    def __post_init__(self) -> None:
        coerce_fields(self)  # again in RunConfig's (cheap): stage is read before it runs
        require(self.stage in (1, 2), f"stage={self.stage}: use 1 (balanced, from a base model) or 2 (natural, from Stage I).")
        if self.lora_r is None:
            self.lora_r = 16 if self.stage == 1 else 8
        super().__post_init__()
        require(self.num_generations >= 2,
                f"num_generations={self.num_generations}: GRPO needs at least 2 completions per prompt for a group baseline.")
        require(self.kl_coef >= 0, f"kl_coef={self.kl_coef}: must be >= 0 (0 disables the KL penalty).")
        require(0 < self.epsilon < 1, f"epsilon={self.epsilon}: the clip range must be in (0, 1).")
        require(self.loss_type in LOSS_TYPES, f"loss_type={self.loss_type!r}: use one of {', '.join(LOSS_TYPES)}.")
        require(self.lora_matmul_dtype in ("model", "adapter"),
                f"lora_matmul_dtype={self.lora_matmul_dtype!r}: use model or adapter.")
        require(self.scale_rewards in ADVANTAGE_SCALES, f"scale_rewards={self.scale_rewards!r}: use {', '.join(ADVANTAGE_SCALES)}.")
        require(self.importance_sampling_level in IS_LEVELS,
                f"importance_sampling_level={self.importance_sampling_level!r}: use token (GRPO) or sequence (GSPO).")
        require(self.num_iterations >= 1 and self.steps_per_generation >= 1,
                f"num_iterations={self.num_iterations}, steps_per_generation={self.steps_per_generation}: both must be >= 1.")
        per_rollout = self.num_iterations * self.steps_per_generation
        require(not self.max_steps or self.max_steps % per_rollout == 0,
                f"max_steps={self.max_steps} must be a multiple of num_iterations x steps_per_generation = {per_rollout} "
                "(whole rollouts).")
        require(0 <= self.overlong_buffer <= self.max_new_tokens,
                f"overlong_buffer={self.overlong_buffer}: must be in [0, max_new_tokens={self.max_new_tokens}].")
        require(self.overlong_penalty >= 0, f"overlong_penalty={self.overlong_penalty}: must be >= 0.")
        require(self.tis_cap is None or self.tis_cap > 0, f"tis_cap={self.tis_cap}: must be > 0 (or None: off).")
        require(0 < self.top_p <= 1, f"top_p={self.top_p}: must be in (0, 1].")
        require(self.temperature > 0, f"temperature={self.temperature}: must be > 0.")
        require(self.entropy_coef >= 0, f"entropy_coef={self.entropy_coef}: must be >= 0 (0 turns the bonus off).")
        require(self.max_resample_rounds >= 0, f"max_resample_rounds={self.max_resample_rounds}: must be >= 0.")
        require(self.eval_samples >= 0, f"eval_samples={self.eval_samples}: must be >= 0 (0: greedy validation only).")
        require(self.best_metric in BEST_METRICS, f"best_metric={self.best_metric!r}: use one of {', '.join(BEST_METRICS)}.")
        bad = set(self.reward_weights) - set(REWARD_PARTS)
        require(not bad, f"reward_weights has unknown parts {sorted(bad)}: use {', '.join(REWARD_PARTS)}.")
        check_model_ref("stage1_model", self.stage1_model)


def check_prompt_version(version: str) -> None:
    require(version in PROMPT_VERSIONS, f"prompt_version={version!r} is not a template; use one of {', '.join(PROMPT_VERSIONS)}.")


def kernels_arg(cfg: RunConfig) -> bool | None:
    """``cfg.triton_kernels`` as the fast path's ``kernels=`` argument: None (auto), True (on) or False (off)."""
    return KERNEL_SWITCH[cfg.triton_kernels]


# --------------------------------------------------------------------------- eval
@dataclass
class EvalConfig:
    """Evaluation of a model or a predictions file (``stonk evaluate``)."""

    model: str | None = option(None, "Model directory or hub id to generate predictions with (base model, or base for --adapter).")
    adapter: str | None = option(None, "A PEFT adapter directory (Stage I or Stage II) applied on top of --model.")
    predictions: str | None = option(None, "An existing predictions JSONL to score instead of generating.")
    data: str | None = option(None, "A built data directory (default: the bundled S&P 500 data).")
    split: str = option("test", "Which split to evaluate: train, val or test.")
    limit: int | None = option(None, "Evaluate at most this many examples (spread over dates, chronological).")
    out: str = option("runs/eval", "Output directory for predictions.jsonl, metrics.json and plots.")
    batch_size: int = option(8, "Prompts per generation batch.")
    max_new_tokens: int = option(200, "Longest completion, in tokens.")
    greedy: bool = option(True, "Greedy decoding (set --no-greedy to sample with temperature/top_p).")
    temperature: float = option(0.7, "Sampling temperature when not greedy.")
    top_p: float = option(0.9, "Nucleus threshold when not greedy.")
    prompt_version: str = option("seed", "Prompt template name from stonklib.prompts.TEMPLATES.")
    max_prompt_tokens: int = option(1024, "Prompts longer than this are truncated (history first).")
    anonymize: bool = option(False, "Anonymised prompts (stonklib.data.anonymize): no ticker, name, description, news, financials or absolute dates; prices rescaled so the as-of close is 100.")
    audit: str | None = option(None, "memorisation: score the same rows with named and with anonymised prompts, and each row's familiarity with its actual next close (metrics.json 'audit', audit_memorisation.png; needs --model).")
    cost_bps: float = option(5.0, "Trading cost per side in basis points for the backtest.")
    quantize: bool = option(False, "Load the model in 4-bit NF4.")
    device: str = option("auto", "auto, cpu or cuda.")
    base_predictions: str | None = option(None, "Predictions JSONL of the untuned base model on the same rows (the base-model baseline).")
    seed: int = option(0, "Random seed for sampling, baselines and the date bootstrap.")
    num_samples: int = option(1, "Answers per prompt: 1 scores the one answer (greedy unless --no-greedy); n > 1 samples n answers (temperature, top_p) in one batched call and scores their vote: the majority direction (a tie is unknown), the vote share as the confidence, the median magnitude.")
    vote_curve: list[int] = option([], "Also generate and score the rows with each of these numbers of samples (e.g. 1 4 8; needs --model): metrics.json gains accuracy_by_samples and accuracy_by_samples.png, notebook 05 plots accuracy against n (empty: none).")
    bootstrap_resamples: int = option(2000, "Resamples of the date block bootstrap behind the date-clustered intervals, the verdict's p-value and the smallest detectable edge (docs/evaluation.md).")
    compare_predictions: str | None = option(None, "A second predictions JSONL (another run on the same rows): metrics.json gains 'comparison', a paired McNemar test of the two and their ensemble.")

    def __post_init__(self) -> None:
        coerce_fields(self)
        require(self.model is not None or self.predictions is not None,
                "give --model (to generate predictions) or --predictions FILE.jsonl (to score an existing file).")
        require(self.split in ("train", "val", "test"), f"split={self.split!r}: use train, val or test.")
        check_prompt_version(self.prompt_version)
        require(self.device in ("auto", "cpu", "cuda"), f"device={self.device!r}: use auto, cpu or cuda.")
        require(self.limit is None or self.limit >= 1, f"limit={self.limit}: must be at least 1.")
        require(self.batch_size >= 1, "batch_size must be at least 1.")
        require(self.cost_bps >= 0, "cost_bps must be >= 0.")
        require(self.audit in (None, "memorisation"), f"audit={self.audit!r}: use memorisation (or leave it unset).")
        require(not (self.audit and self.anonymize), "audit=memorisation compares named with anonymised prompts: leave --anonymize off.")
        require(self.audit is None or self.model is not None, "audit=memorisation needs --model: both prompt kinds are generated.")
        require(self.num_samples >= 1, f"num_samples={self.num_samples}: must be at least 1 (1: one answer per prompt).")
        require(all(int(k) >= 1 for k in self.vote_curve), f"vote_curve={self.vote_curve}: each number of samples must be >= 1.")
        require(not self.vote_curve or self.model is not None, "vote_curve needs --model: the rows are generated again for each n.")
        require(self.bootstrap_resamples >= 100, f"bootstrap_resamples={self.bootstrap_resamples}: use at least 100 (2000 for 95% intervals).")
        require(self.compare_predictions is None or Path(self.compare_predictions).is_file(),
                f"compare_predictions={self.compare_predictions!r} does not exist: check the path.")
        if self.predictions:
            require(Path(self.predictions).is_file(), f"predictions={self.predictions!r} does not exist.")
        elif self.model is not None:
            check_model_ref("model", self.model)
        if self.adapter:
            require(Path(self.adapter, "adapter_config.json").is_file(),
                    f"adapter={self.adapter!r} has no adapter_config.json: point it at a checkpoint-*/ or best/ folder.")
