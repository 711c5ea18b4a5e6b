"""The five reward parts, their registry, and ``score``.

Every part is a pure function ``(completion, example, ctx) -> float`` registered
by name in ``REWARD_FUNCS``; ``score`` parses once, calls each part, multiplies
by its weight (missing = 1.0) and returns the total *and* the parts. The tiers
are the seed's; the departures from it are listed in ``stonklib.rewards``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stonklib.data.records import Example
from stonklib.rewards.grounding import Grounding, ground
from stonklib.rewards.parse import Prediction, completion_text, parse_all

# --------------------------------------------------------------------- the seed's tiers
DIRECTION_REWARD = 2.5
MAGNITUDE_FLOOR_PCT = 0.5  # error ratio = |pred - actual| / max(0.5, |actual|)
MAGNITUDE_TIERS = ((0.2, 2.0), (0.5, 1.5), (1.0, 1.0))
MAGNITUDE_ELSE = 0.5
CONFIDENCE_CUTS = (80.0, 60.0, 40.0)
CONFIDENCE_CORRECT = (2.5, 2.0, 1.5, 1.0)
CONFIDENCE_WRONG = (-1.5, -0.7, -0.4, -0.2)
DATA_TIERS = ((5, 3.0), (3, 2.0), (1, 1.0))
FORMAT_CREDIT = {1: 0.5, 2: 0.25, 3: 0.25}
BIAS_CLIP = (0.5, 2.0)  # market-bias weight 0.5 / freq(actual class) is clipped to this range

RewardFn = Callable[[Any, Example, "RewardContext | None"], float]


@dataclass(frozen=True)
class RewardContext:
    """What a part may need beyond (completion, example). ``score`` fills the caches."""

    multi_horizon: bool = False  # average direction/magnitude/confidence over days 1-3
    class_freq: Mapping[str, float] | None = None  # running {"up": p, "down": 1-p}; None = no bias adaptation
    predictions: Mapping[int, Prediction] | None = None  # parsed once by score()
    grounding: Grounding | None = None  # computed once by score()

    def days(self) -> tuple[int, ...]:
        return (1, 2, 3) if self.multi_horizon else (1,)


_DEFAULT_CTX = RewardContext()
REWARD_FUNCS: dict[str, RewardFn] = {}
PART_BOUNDS: dict[str, tuple[float, float]] = {}  # unweighted (min, max), bias adaptation off


def register(name: str, bounds: tuple[float, float]) -> Callable[[RewardFn], RewardFn]:
    """Add a part to the registry under ``name``, with its unweighted (min, max)."""
    def deco(fn: RewardFn) -> RewardFn:
        REWARD_FUNCS[name] = fn
        PART_BOUNDS[name] = bounds
        return fn
    return deco


def _preds(completion: Any, ctx: RewardContext) -> Mapping[int, Prediction]:
    return ctx.predictions if ctx.predictions is not None else parse_all(completion)


def bias_weight(actual: str, class_freq: Mapping[str, float] | None) -> float:
    """0.5 / freq(actual class), clipped to BIAS_CLIP; 1.0 without stats.

    With p(up) = 0.55 an always-"up" policy earns 0.55 * 2.5 * 0.5/0.55 = 1.25 per
    example, exactly what always-"down" earns (0.45 * 2.5 * 0.5/0.45): the majority
    class is no longer a free lunch.
    """
    if not class_freq:
        return 1.0
    freq = class_freq.get(actual)
    if freq is None or isinstance(freq, bool) or not isinstance(freq, (int, float)) or not math.isfinite(freq):
        return 1.0
    if freq <= 0:
        return BIAS_CLIP[1]
    return min(BIAS_CLIP[1], max(BIAS_CLIP[0], 0.5 / freq))


# ------------------------------------------------------------------------ the parts
@register("direction", (0.0, DIRECTION_REWARD))
def direction_reward(completion: Any, example: Example, ctx: RewardContext | None = None) -> float:
    """2.5 when the day's direction is right (x the market-bias weight when ctx.class_freq is set)."""
    ctx, ex = ctx or _DEFAULT_CTX, Example.from_row(example)
    preds = _preds(completion, ctx)
    total = 0.0
    for d in ctx.days():
        actual = ex.direction(d)
        if preds[d].direction == actual:
            total += DIRECTION_REWARD * bias_weight(actual, ctx.class_freq)
    return total / len(ctx.days())


@register("magnitude", (0.0, MAGNITUDE_TIERS[0][1]))
def magnitude_reward(completion: Any, example: Example, ctx: RewardContext | None = None) -> float:
    """Right direction only: 2.0/1.5/1.0/0.5 for |pred - actual| / max(0.5, |actual|) <= 0.2/0.5/1.0/more.

    Both are absolute % moves (the direction is scored separately); the 0.5 floor
    keeps a near-zero actual move from making every estimate "infinitely" wrong.
    """
    ctx, ex = ctx or _DEFAULT_CTX, Example.from_row(example)
    preds = _preds(completion, ctx)
    total = 0.0
    for d in ctx.days():
        p = preds[d]
        if p.direction != ex.direction(d) or p.percentage is None:
            continue
        actual = abs(ex.change_pct(d))
        ratio = abs(p.percentage - actual) / max(MAGNITUDE_FLOOR_PCT, actual)
        total += next((r for cut, r in MAGNITUDE_TIERS if ratio <= cut), MAGNITUDE_ELSE)
    return total / len(ctx.days())


@register("confidence", (CONFIDENCE_WRONG[0], CONFIDENCE_CORRECT[0]))
def confidence_reward(completion: Any, example: Example, ctx: RewardContext | None = None) -> float:
    """Right: +2.5/2.0/1.5/1.0, wrong: -1.5/-0.7/-0.4/-0.2 for confidence >=80/>=60/>=40/below; 0 if unknown."""
    ctx, ex = ctx or _DEFAULT_CTX, Example.from_row(example)
    preds = _preds(completion, ctx)
    total = 0.0
    for d in ctx.days():
        p = preds[d]
        if p.direction == "unknown" or p.confidence is None:
            continue
        tier = next((i for i, cut in enumerate(CONFIDENCE_CUTS) if p.confidence >= cut), len(CONFIDENCE_CUTS))
        total += (CONFIDENCE_CORRECT if p.direction == ex.direction(d) else CONFIDENCE_WRONG)[tier]
    return total / len(ctx.days())


@register("data_utilization", (0.0, DATA_TIERS[0][1]))
def data_utilization_reward(completion: Any, example: Example, ctx: RewardContext | None = None) -> float:
    """3/2/1/0 for >=5/>=3/>=1/0 distinct values quoted from the prompt (grounded; see grounding.py)."""
    ctx = ctx or _DEFAULT_CTX
    g = ctx.grounding if ctx.grounding is not None else ground(completion_text(completion), Example.from_row(example))
    return next((r for need, r in DATA_TIERS if g.n_references >= need), 0.0)


@register("format", (0.0, sum(FORMAT_CREDIT.values())))
def format_reward(completion: Any, example: Example, ctx: RewardContext | None = None) -> float:
    """0.5 for a well-formatted Day 1 line, +0.25 each for Days 2 and 3 (1.0 = the full format)."""
    preds = _preds(completion, ctx or _DEFAULT_CTX)
    return sum(credit for d, credit in FORMAT_CREDIT.items() if preds[d].well_formatted)


# ---------------------------------------------------------------- weights and bounds
def resolve_weights(weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """One multiplier per registered part (missing = 1.0); unknown names or non-finite values raise."""
    weights = dict(weights or {})
    bad = set(weights) - set(REWARD_FUNCS)
    if bad:
        raise ValueError(f"reward weights name unknown parts {sorted(bad)}; valid parts: {', '.join(REWARD_FUNCS)}.")
    for k, v in weights.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"reward weight {k}={v!r} must be a finite number (e.g. 1.0; 0 disables the part).")
    return {name: float(weights.get(name, 1.0)) for name in REWARD_FUNCS}


def reward_bounds(weights: Mapping[str, float] | None = None, *, bias_adaptation: bool = False) -> tuple[float, float]:
    """(min, max) that ``score(...).total`` can take. Defaults: (-1.5, 11.0); with bias adaptation (-1.5, 13.5)."""
    lo = hi = 0.0
    for name, w in resolve_weights(weights).items():
        a, b = PART_BOUNDS[name]
        if bias_adaptation and name == "direction":
            b *= BIAS_CLIP[1]
        lo += min(w * a, w * b)
        hi += max(w * a, w * b)
    return lo, hi


# ------------------------------------------------------------------------- scoring
@dataclass
class RewardBreakdown:
    total: float
    components: dict[str, float]  # weighted, one per registered part
    prediction: Prediction  # day 1
    predictions: dict[int, Prediction] = field(default_factory=dict)  # days 1-3
    n_references: int = 0  # grounded data references


def score(completion: Any, example: Example | Mapping[str, Any], weights: Mapping[str, float] | None = None, *,
          multi_horizon: bool = False, class_freq: Mapping[str, float] | None = None) -> RewardBreakdown:
    """Parse once, score every registered part, weight and sum them."""
    return _score(completion, Example.from_row(example), resolve_weights(weights),
                  RewardContext(multi_horizon=multi_horizon, class_freq=class_freq))


def _score(completion: Any, ex: Example, w: dict[str, float], ctx: RewardContext) -> RewardBreakdown:
    text = completion_text(completion)
    preds = parse_all(text)
    g = ground(text, ex)
    ctx = RewardContext(ctx.multi_horizon, ctx.class_freq, preds, g)
    comps = {name: w[name] * fn(text, ex, ctx) for name, fn in REWARD_FUNCS.items()}
    return RewardBreakdown(sum(comps.values()), comps, preds[1], preds, g.n_references)


def score_batch(completions: Sequence[Any], examples: Sequence[Example | Mapping[str, Any]],
                weights: Mapping[str, float] | None = None, *, multi_horizon: bool = False,
                class_freq: Mapping[str, float] | None = None) -> list[RewardBreakdown]:
    """``score`` over pairs; each distinct example object is converted once."""
    if len(completions) != len(examples):
        raise ValueError(f"score_batch got {len(completions)} completions but {len(examples)} examples; "
                         "pass one example per completion (repeat each prompt's example num_generations times).")
    w = resolve_weights(weights)
    ctx = RewardContext(multi_horizon=multi_horizon, class_freq=class_freq)
    converted: dict[int, Example] = {}
    out = []
    for c, e in zip(completions, examples, strict=True):
        ex = converted.get(id(e))
        if ex is None:
            ex = converted[id(e)] = Example.from_row(e)
        out.append(_score(c, ex, w, ctx))
    return out
