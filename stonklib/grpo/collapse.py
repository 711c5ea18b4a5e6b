"""Signs that a GRPO policy has collapsed, and the warning a run gives when they persist.

GRPO learns only from reward differences inside a group. A policy that answers every prompt the
same way leaves every group without spread: the advantages are all zero and learning stops, while
the reward can look fine. Each step logs:

- ``reward/zero_std_groups``: groups whose G completions all got one reward;
- ``reward/zero_std_wrong_groups``: those whose answers are also wrong (no completion has the right
  day-1 direction). On a solved task every group is right and spread-free, which is success, not
  collapse; spread-free groups that are *wrong* are the ones that cannot learn;
- ``completions/distinct_share``: distinct completion texts / completions;
- ``completions/predicted_up_rate``: the step's parsed answers that say up (0 or 1: one answer for all);
- ``entropy``: the sampled tokens' mean negative log-prob (from the loss, :func:`stonklib.grpo.loss.grpo_loss`).

:class:`CollapseMonitor` warns in ``training.log`` (once per episode) when ``zero_std_groups >=
ZERO_STD_LIMIT`` or ``distinct_share <= DISTINCT_LIMIT`` for ``WINDOW`` consecutive steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

ZERO_STD_LIMIT = 0.9
DISTINCT_LIMIT = 0.1
WINDOW = 10


def step_counts(rewards: torch.Tensor, group_size: int, texts: Sequence[str], predictions: Sequence[str],
                actual: Sequence[str]) -> dict[str, float]:
    """Counts (summable over ranks) behind one step's collapse signals; see the module docstring."""
    groups = rewards.view(-1, group_size)
    flat = (groups == groups[:, :1]).all(1)  # one reward for all G: no policy gradient
    right = torch.tensor([p == a for p, a in zip(predictions, actual, strict=True)]).view(-1, group_size).any(1)
    parsed = [p for p in predictions if p in ("up", "down")]
    return {"groups": float(groups.shape[0]), "zero_std": float(flat.sum()), "zero_std_wrong": float((flat & ~right).sum()),
            "completions": float(len(texts)), "distinct": float(len(set(texts))),
            "parsed": float(len(parsed)), "up": float(sum(p == "up" for p in parsed))}


def step_signals(counts: dict[str, float]) -> dict[str, float]:
    """The logged signals from (rank-summed) :func:`step_counts`."""
    nan = float("nan")
    return {"reward/zero_std_groups": counts["zero_std"] / max(counts["groups"], 1.0),
            "reward/zero_std_wrong_groups": counts["zero_std_wrong"] / max(counts["groups"], 1.0),
            "completions/distinct_share": counts["distinct"] / max(counts["completions"], 1.0),
            "completions/predicted_up_rate": counts["up"] / counts["parsed"] if counts["parsed"] else nan}


@dataclass
class CollapseMonitor:
    """Counts consecutive collapsed steps; :meth:`update` returns a warning when ``WINDOW`` are reached."""

    run: int = 0  # consecutive collapsed steps so far
    warnings: list[int] = field(default_factory=list)  # steps at which a warning was given

    def update(self, step: int, signals: dict[str, float]) -> str | None:
        zero, distinct = signals["reward/zero_std_groups"], signals["completions/distinct_share"]
        collapsed = zero >= ZERO_STD_LIMIT or distinct <= DISTINCT_LIMIT
        self.run = self.run + 1 if collapsed else 0
        if self.run != WINDOW:
            return None
        self.warnings.append(step)
        wrong = signals["reward/zero_std_wrong_groups"]
        return (f"collapse: for {WINDOW} consecutive steps up to step {step}, {zero:.0%} of the groups had no reward "
                f"spread (wrong answers in {wrong:.0%} of all groups) or only {distinct:.0%} of the completions were "
                "distinct: GRPO has little or nothing to learn from. If the spread-free groups are right, the task may "
                "be solved; if they are wrong, raise the temperature, G or entropy_coef, try dynamic_sampling, or "
                "check that the prompt shows no example answer to copy (docs/learning.md).")

    def to_dict(self) -> dict:
        return {"run": self.run, "warnings": list(self.warnings)}

    @classmethod
    def from_dict(cls, d: dict | None) -> CollapseMonitor:
        return cls(**(d or {}))


def collapse_steps(zero_std: Sequence[float], distinct: Sequence[float]) -> list[int]:
    """Indices (0-based) at which :class:`CollapseMonitor` would warn, for per-step series of the two signals."""
    monitor, out = CollapseMonitor(), []
    for i, (z, d) in enumerate(zip(zero_std, distinct, strict=True)):
        if monitor.update(i, {"reward/zero_std_groups": z, "completions/distinct_share": d,
                              "reward/zero_std_wrong_groups": float("nan")}):
            out.append(i)
    return out
