"""Warm-up targets: for each example, answers in the reward's format, written by code.

A target has the three ``Day N: up 0.8% with 62% confidence`` lines the parser reads as well formatted,
and a ``Justification:`` line that quotes values *that* example's prompt shows, so the grounded
``data_utilization`` reward pays for it (:mod:`stonklib.rewards.grounding`). The directions:

- ``coin`` (the default): day 1 is a fair coin, and the warm-up trains each prompt on both of its faces
  (one target saying up, one saying down, each half of the example's loss): the coin's expected loss
  without its sampling noise. A drawn coin leaves the model's day-1 answer leaning to whichever side its
  prior and the draws lean to; both faces, with the direction word's loss weighted up
  (``direction_weight``), pull every prompt's odds to even, so GRPO starts from a policy that answers in
  the format, samples both directions and has something to explore. Days 2 and 3 are seeded coin draws, by (random
  seed, ticker, date). Label-free: the warm-up teaches the format, nothing about the market;
- ``volume``: every day, one direction when the prompt shows a volume ratio of at least 1 (the day's volume
  above its 10-day average) and the other below it, the seed choosing which, the two directions weighing the
  same in the loss (:func:`balanced_sides`; an ablation). Label-free like the coin, but readable from the
  prompt, so a model that learns it answers held-out prompts both ways; volume has no direction of its own,
  so the rule knows next to nothing of the next day (``docs/warmup.md``);
- ``momentum``: the sign of the 1-day return the prompt shows, every day (an ablation: a plausible prior
  rule, learnable from the prompt; a market rule, whose agreement with the next day differs by period);
- ``label``: the true direction of each day. That is supervised classification, a baseline to compare
  GRPO with, not the method.

The magnitude is the 10-day volatility the prompt shows, by default written as the prompt writes it
(``magnitude_decimals`` 2; clipped to 0.1-9.9 %): a label-free guess of the size of a day's move, copied rather than
rounded (a copy is what the model learns within the warm-up), so answers differ from prompt to prompt; the confidence
is a seeded draw of 50-80 %. The direction words are written in lower case (" up", " down" are single
tokens, where " DOWN" is two in SmolLM2's vocabulary); the parser reads either case.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

from stonklib.config.stages import (
    DEFAULT_JUSTIFICATION,
    DIRECTION_SOURCES,
    JUSTIFICATION_VALUES,
    MIN_CITED_VALUES,
    check_justification,
)
from stonklib.data.records import Example
from stonklib.prompts import visible_history
from stonklib.rewards import PART_BOUNDS, score

MAGNITUDE_RANGE = (0.1, 9.9)  # percent: the predicted move, clipped
CONFIDENCE_RANGE = (50, 80)  # percent


@dataclass(frozen=True)
class Target:
    """One example's target completion and what the reward makes of it."""

    text: str
    directions: tuple[str, str, str]
    direction_span: tuple[int, int]  # characters of the day-1 direction word (weighted by ``direction_weight``)
    data_utilization: float  # the reward part (3.0 when >= 5 grounded values are cited)
    format: float  # the reward part (1.0: all three lines well formatted)
    weight: float = 1.0  # its share of the example's loss (a coin face's probability)


def shown_values(example: Example) -> dict[str, str]:
    """Each justification placeholder, written as the prompts write it; a value the example lacks is absent."""
    hist = visible_history(example)
    out = {"date": example.date, "close": f"{example.close:.2f}", "previous_close": f"{example.previous_close:.2f}",
           "day_change_pct": f"{example.day_change_pct:+.2f}"}
    for name in ("return_1d", "return_5d", "return_10d", "volatility_10d", "volume_ratio"):
        v = getattr(example, name)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[name] = f"{v:.2f}"
    if hist and math.isfinite(hist[0].volume):
        out["volume"] = str(int(round(hist[0].volume)))
    if len(hist) > 1:
        out["previous_date"] = hist[1].date
    assert set(out) <= set(JUSTIFICATION_VALUES)
    return out


def target_rng(example: Example, seed: int) -> random.Random:
    """The example's own generator: the same draws for the same (random seed, ticker, date), in any order."""
    return random.Random(zlib.crc32(f"{seed}|{example.ticker}|{example.date}".encode()))


def shown_volume_high(example: Example) -> bool:
    """Whether the prompt shows a volume ratio of at least 1 (the day's volume above its 10-day average), read as
    the prompts print it (two decimals)."""
    return math.isfinite(example.volume_ratio) and round(example.volume_ratio, 2) >= 1.0


def volume_side(seed: int) -> str:
    """``volume``'s seeded side: the direction a volume ratio of at least 1 means; a lower ratio means the other."""
    return ("up", "down")[zlib.crc32(f"volume|{seed}".encode()) % 2]


def target_directions(example: Example, source: str, rng: random.Random, seed: int = 42) -> tuple[str, str, str]:
    """Days 1-3's directions (for ``coin``, day 1 is replaced by each face in turn: :func:`targets_for`)."""
    if source == "coin":
        return tuple("up" if rng.random() < 0.5 else "down" for _ in range(3))  # type: ignore[return-value]
    if source == "volume":
        high = volume_side(seed)
        d = high if shown_volume_high(example) else ("down" if high == "up" else "up")
        return d, d, d
    if source == "momentum":
        r = example.return_1d if math.isfinite(example.return_1d) else example.day_change_pct
        return ("up", "up", "up") if round(r, 2) > 0 else ("down", "down", "down")
    if source == "label":
        return example.direction_1, example.direction_2, example.direction_3
    raise ValueError(f"direction_source={source!r}: use one of {', '.join(DIRECTION_SOURCES)}.")


def target_magnitude(example: Example, decimals: int = 2) -> float:
    """Every day's predicted move: the 10-day volatility the prompt shows, to ``decimals`` (2: as the prompt
    prints it; label-free)."""
    v = example.volatility_10d
    return min(max(round(v, decimals), MAGNITUDE_RANGE[0]), MAGNITUDE_RANGE[1]) if math.isfinite(v) else MAGNITUDE_RANGE[0]


def build_target(example: Example, direction_source: str = "coin", justification: str | None = None,
                 seed: int = 42, day1: str | None = None, magnitude_decimals: int = 2) -> Target | None:
    """The example's target (day 1's direction ``day1`` if given), or None when its prompt does not show a
    value the justification cites."""
    template = justification or DEFAULT_JUSTIFICATION
    try:
        line = template.format(**shown_values(example))
    except KeyError:  # the example lacks a cited value (no 10-day history, say)
        return None
    rng = target_rng(example, seed)
    dirs = target_directions(example, direction_source, rng, seed)
    if day1 is not None:
        dirs = (day1, dirs[1], dirs[2])
    move = target_magnitude(example, magnitude_decimals)
    days = [f"Day {k}: {d} {move:.{magnitude_decimals}f}% with {rng.randint(*CONFIDENCE_RANGE)}% confidence"
            for k, d in enumerate(dirs, start=1)]
    text = "\n".join([*days, f"Justification: {line}"])
    start = len("Day 1: ")
    parts = score(text, example).components
    return Target(text, dirs, (start, start + len(dirs[0])), parts["data_utilization"], parts["format"])


def targets_for(example: Example, direction_source: str = "coin", justification: str | None = None,
                seed: int = 42, magnitude_decimals: int = 2) -> list[Target]:
    """The example's targets: for ``coin`` both faces of day 1 (up, then down), each weighing half of the example's
    loss, else the one target; [] if the example lacks a cited value."""
    faces = ("up", "down") if direction_source == "coin" else (None,)
    out = [build_target(example, direction_source, justification, seed, face, magnitude_decimals) for face in faces]
    if any(t is None for t in out):
        return []
    return [replace(t, weight=1.0 / len(out)) for t in out]  # type: ignore[arg-type]


def build_targets(examples: Sequence[Example], direction_source: str = "coin", justification: str | None = None,
                  seed: int = 42, magnitude_decimals: int = 2) -> tuple[list[tuple[Example, list[Target]]], dict[str, int]]:
    """(example, its targets) for the examples whose targets cite enough grounded values, and the counted skips."""
    if justification is not None:
        check_justification(justification)
    kept, skipped = [], {"missing_value": 0, "too_few_grounded_values": 0}
    for ex in examples:
        ts = targets_for(ex, direction_source, justification, seed, magnitude_decimals)
        if not ts:
            skipped["missing_value"] += 1
        elif any(t.data_utilization < _full_credit() or t.format < 1.0 for t in ts):
            skipped["too_few_grounded_values"] += 1
        else:
            kept.append((ex, ts))
    if direction_source == "volume":
        kept = balanced_sides(kept)
    return kept, skipped


def balanced_sides(pairs: list[tuple[Example, list[Target]]]) -> list[tuple[Example, list[Target]]]:
    """The pairs with each target weighted ``0.5 / share`` of its day-1 direction: the two directions weigh the same
    in the loss, so answering the larger side everywhere lowers it no more than answering the smaller one, and
    only reading the prompt does. (About 57 % of rows show a volume ratio below 1.)"""
    ups = sum(ts[0].directions[0] == "up" for _, ts in pairs)
    if not pairs or ups in (0, len(pairs)):
        return pairs
    share = {"up": ups / len(pairs), "down": 1 - ups / len(pairs)}
    return [(ex, [replace(t, weight=t.weight * 0.5 / share[t.directions[0]]) for t in ts]) for ex, ts in pairs]


def _full_credit() -> float:
    """What data_utilization pays for MIN_CITED_VALUES grounded references (its top tier)."""
    assert MIN_CITED_VALUES == 5  # the reward's top tier: >= 5 distinct grounded references
    return PART_BOUNDS["data_utilization"][1]
