"""What one GRPO optimizer step hands the logs: its :class:`StepResult`, the scalars of
``train_metrics.jsonl``/TensorBoard reduced over ranks (:func:`step_scalars`) and the rows of
``stage{1,2}_training_log.jsonl`` (:func:`completion_rows`).

Sums and counts are reduced over ranks, never means, so the logged reward is the mean over every
rank's completions and the collapse signals (:func:`stonklib.grpo.collapse.step_signals`) are shares
of every rank's groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from stonklib import config as cfglib
from stonklib.data.records import Example
from stonklib.grpo import distributed as D
from stonklib.grpo.collapse import step_signals
from stonklib.grpo.lengths import length_stats
from stonklib.grpo.market import MarketStats
from stonklib.sampling.rollout import Rollout


@dataclass
class StepResult:
    """What one optimizer step produced (this rank's share)."""

    rollout: Rollout
    rewards: torch.Tensor  # [N] totals
    components: dict[str, torch.Tensor]  # part -> [N]
    advantages: torch.Tensor  # [N]
    predictions: list[str]  # parsed day-1 direction per completion
    examples: list[Example]  # the B prompts' examples
    market: MarketStats  # this step's counts (this rank only)
    loss: float
    stats: dict[str, float]
    skipped: bool
    timings: dict[str, float] = field(default_factory=dict)
    collapse: dict[str, float] = field(default_factory=dict)  # stonklib.grpo.collapse.step_counts of the first draw
    dynamic: dict[str, float] = field(default_factory=dict)  # stonklib.grpo.dynamic.refill's counts (when on)
    iteration: int = 0  # which pass over its rollout (num_iterations) this step is
    lengths: list[int] = field(default_factory=list)  # completion lengths in tokens
    truncated: list[bool] = field(default_factory=list)  # hit max_new_tokens before EOS


def step_scalars(res: StepResult, dist: D.Dist, market: MarketStats, seconds: float) -> dict[str, float]:
    """The step's rewards (per part), collapse signals, loss statistics, completion lengths, dynamic-sampling
    counts, the run's market statistics so far (``market``, already summed over ranks) and timings."""
    keys = sorted(res.collapse)
    n = torch.tensor([len(res.rewards), res.rollout.n_completion_tokens, *(res.collapse[k] for k in keys)],
                     dtype=torch.float64)
    sums = torch.stack([res.rewards.sum().double()] + [res.components[k].sum().double() for k in cfglib.REWARD_PARTS])
    n, sums = D.all_reduce_sum(n, dist), D.all_reduce_sum(sums, dist)
    scalars = {"reward/total": float(sums[0] / n[0])}
    scalars |= {f"reward/{k}": float(sums[i + 1] / n[0]) for i, k in enumerate(cfglib.REWARD_PARTS)}
    scalars |= step_signals(dict(zip(keys, n[2:].tolist(), strict=True)))
    scalars |= dict(res.stats) | {"loss": res.loss, "iteration": float(res.iteration)}
    scalars |= {"tokens_per_s": float(n[1]) / max(seconds, 1e-9), "step_s": seconds}
    parts = D.all_gather((res.lengths, res.truncated), dist) if dist.enabled else [(res.lengths, res.truncated)]
    scalars |= length_stats([k for ln, _ in parts for k in ln], [c for _, cut in parts for c in cut])
    if "overlong" in res.components:
        scalars["reward/overlong"] = float(D.all_reduce_sum(res.components["overlong"].sum().double(), dist) / n[0])
    scalars |= {f"dynamic/{k}": v for k, v in D.mean_over_ranks(res.dynamic, dist).items()}
    scalars |= {f"market/{k}": v for k, v in market.to_dict().items() if isinstance(v, float)}
    return scalars | {f"time/{k}": v for k, v in res.timings.items()}


def completion_rows(res: StepResult, step: int, epoch: int, rank: int, group_size: int) -> list[dict]:
    """One ``stage{1,2}_training_log.jsonl`` row per completion of a GRPO step (``res``: its
    :class:`StepResult`): the prompt, the answer, its reward parts, advantage and loss."""
    rows = []
    for i, text in enumerate(res.rollout.texts):
        ex = res.examples[i // group_size]
        rows.append({
            "step": step, "epoch": epoch, "rank": rank,
            "prompt_id": f"{ex.ticker}@{ex.date}", "ticker": ex.ticker, "date": ex.date, "completion": text,
            "predicted_direction": res.predictions[i], "actual_change_pct": ex.change_pct_1,
            "actual_direction": ex.direction_1, "rewards": {k: float(v[i]) for k, v in res.components.items()},
            "reward_total": float(res.rewards[i]), "advantage": float(res.advantages[i]), "loss": res.loss,
            "skipped": res.skipped,
        })
    return rows
