"""Validation of a policy: greedy answers to held-out prompts, scored, and the numbers that say what it learned.

Used by the GRPO trainer at every evaluation and by the warm-up before and after it trains. A reward
that rises is not learning; the task metrics are: accuracy, balanced accuracy and MCC against the
true next-day direction, the parse rate, and the signs of a collapsed policy (one answer for every
prompt: a predicted-up rate of 0 or 1, few distinct answers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from stonklib.data.records import Example
from stonklib.grpo import distributed as D
from stonklib.grpo.market import MarketStats
from stonklib.rewards import RewardBreakdown, parse_prediction
from stonklib.sampling.rollout import rollout


@torch.no_grad()
def greedy_answers(sampler, tokenizer, examples: Sequence[Example], encode: Callable, *, batch: int,
                   max_new_tokens: int) -> list[str]:
    """One greedy completion per example, ``batch`` prompts per sampling call; ``encode(examples) -> (ids, mask)``."""
    texts: list[str] = []
    for i in range(0, len(examples), max(1, batch)):
        ids, mask = encode(list(examples[i:i + batch]))
        texts += rollout(sampler, tokenizer, ids, mask, 1, max_new_tokens=max_new_tokens, greedy=True).texts
    return texts


def answer_counts(texts: Sequence[str], examples: Sequence[Example], scores: Sequence[RewardBreakdown]) -> dict:
    """Sums and counts (so ranks can add them) of what :func:`answer_stats` reports."""
    market = MarketStats()
    market.update([ex.direction_1 for ex in examples], [s.prediction.direction for s in scores])
    day1 = [parse_prediction(t, 1) for t in texts]
    return {"n": len(texts), "reward": sum(s.total for s in scores),
            "format": sum(s.components["format"] > 0 for s in scores),
            "data_utilization": sum(s.components["data_utilization"] for s in scores),
            "distinct": len(set(texts)),
            "distinct_day1": len({(p.direction, p.percentage, p.confidence) for p in day1 if p.direction != "unknown"}),
            "market": market}


def answer_stats(counts: dict) -> dict[str, float | None]:
    """The validation numbers from :func:`answer_counts` (summed over ranks), keyed as ``train_metrics.jsonl`` logs them.

    - ``reward``, ``data_utilization``: means per answer (weighted as the run's reward weighs them);
    - ``format_rate``: share of answers with some format credit; ``parse_rate``: share with a day-1 direction;
    - ``accuracy`` (unparsed counts as wrong), ``balanced_accuracy``, ``mcc`` (over parsed answers),
      ``predicted_up_rate`` (over parsed answers): against the true next-day direction;
    - ``distinct_share``: distinct completions / completions; ``distinct_day1_share``: distinct parsed day-1
      answers (direction, percentage, confidence) / completions.
    """
    n, m = max(counts["n"], 1), counts["market"]
    return {"reward": counts["reward"] / n, "format_rate": counts["format"] / n,
            "data_utilization": counts["data_utilization"] / n, "parse_rate": m.parse_rate, "accuracy": m.accuracy,
            "balanced_accuracy": m.balanced_accuracy, "mcc": m.mcc, "predicted_up_rate": m.predicted_up_rate,
            "distinct_share": counts["distinct"] / n, "distinct_day1_share": counts["distinct_day1"] / n}


def validate(sampler, tokenizer, examples: Sequence[Example], encode: Callable, score_fn: Callable, *, batch: int,
             max_new_tokens: int, dist: D.Dist | None = None) -> tuple[list[str], list[RewardBreakdown], dict]:
    """Greedy answers to ``examples`` (this rank's share), scored by ``score_fn(text, example)``; returns the
    texts, their scores and :func:`answer_stats` over every rank's answers (``dist``)."""
    texts = greedy_answers(sampler, tokenizer, examples, encode, batch=batch, max_new_tokens=max_new_tokens)
    scores = [score_fn(t, ex) for t, ex in zip(texts, examples, strict=True)]
    counts = answer_counts(texts, examples, scores)
    if dist is not None and dist.enabled:
        keys = [k for k in counts if k != "market"]
        summed = D.all_reduce_sum(torch.tensor([float(counts[k]) for k in keys], dtype=torch.float64), dist)
        counts = dict(zip(keys, summed.tolist(), strict=True)) | {"market": counts["market"].summed_over_ranks(dist)}
    return texts, scores, answer_stats(counts)


def val_scalars(stats: dict[str, float | None]) -> dict[str, float]:
    """:func:`answer_stats` as logged: keys under ``val/``, an undefined value (no parsed answer yet) as NaN."""
    return {f"val/{k}": math.nan if v is None else v for k, v in stats.items()}


@torch.no_grad()
def sampled_up_counts(sampler, tokenizer, examples: Sequence[Example], encode: Callable, *, samples: int, batch: int,
                      max_new_tokens: int, **sample_kw) -> dict[str, int]:
    """``samples`` sampled answers per example (``sample_kw``: temperature, top_p), counted: answers, those
    with a day-1 direction, those saying up. Summed over ranks, they give the sampling policy's up-rate."""
    n = parsed = up = 0
    per_call = max(1, batch // max(1, samples))
    for i in range(0, len(examples), per_call):
        ids, mask = encode(list(examples[i:i + per_call]))
        for text in rollout(sampler, tokenizer, ids, mask, samples, max_new_tokens=max_new_tokens, **sample_kw).texts:
            direction = parse_prediction(text, 1).direction
            n, parsed, up = n + 1, parsed + (direction != "unknown"), up + (direction == "up")
    return {"n": n, "parsed": parsed, "up": up}


def sampled_stats(counts: dict[str, float]) -> dict[str, float | None]:
    """``sampled_up_rate`` (over parsed answers) and ``sampled_parse_rate`` from :func:`sampled_up_counts`."""
    return {"sampled_up_rate": counts["up"] / counts["parsed"] if counts["parsed"] else None,
            "sampled_parse_rate": counts["parsed"] / counts["n"] if counts["n"] else None}
