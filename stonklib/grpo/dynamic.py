"""One step's sampled groups, and DAPO's dynamic sampling over them (``dynamic_sampling``).

A group whose G completions all score the same has zero advantages: it adds nothing to the policy
gradient but still costs its share of the update. Dynamic sampling (DAPO, arXiv 2503.14476, §3.2)
drops such groups and samples groups for further prompts in their place until the batch is full of
groups with reward spread. Here the refill is capped at ``max_rounds`` extra sampling rounds of
``batch_size`` prompts each; if the cap is reached first, the batch is topped up with the dropped
groups (they keep the step's shapes and contribute nothing), so every step updates on
``batch_size`` groups. The extra prompts of round ``r`` of step ``s`` come from their own seeded
order (:func:`stonklib.grpo.schedule.batch_indices` with a salted random seed), so a resumed run
draws the same ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from stonklib.data.records import Example
from stonklib.rewards import RewardBreakdown
from stonklib.sampling.rollout import Rollout

#: The extra prompts of resampling round r draw from the order of random seed ``seed + (r + 1) * RESAMPLE_SALT``.
RESAMPLE_SALT = 7_919


@dataclass
class Groups:
    """Sampled groups: B prompts' examples, their B×G completions (grouped, contiguous) and their scores."""

    rollout: Rollout
    scores: list[RewardBreakdown]
    examples: list[Example]  # one per group
    size: int  # G

    def spread(self) -> list[bool]:
        """Per group: do its G completions' total rewards differ?"""
        totals = [s.total for s in self.scores]
        return [len(set(totals[g * self.size:(g + 1) * self.size])) > 1 for g in range(len(self.examples))]

    def take(self, groups: list[int]) -> Groups:
        rows = [g * self.size + k for g in groups for k in range(self.size)]
        return Groups(self.rollout.rows(rows), [self.scores[r] for r in rows], [self.examples[g] for g in groups],
                      self.size)

    @staticmethod
    def concat(parts: list[Groups], pad_id: int) -> Groups:
        if len(parts) == 1:
            return parts[0]
        return Groups(Rollout.concat([p.rollout for p in parts], pad_id), [s for p in parts for s in p.scores],
                      [e for p in parts for e in p.examples], parts[0].size)


def refill(first: Groups, draw: Callable[[int], Groups], max_rounds: int, pad_id: int) -> tuple[Groups, dict[str, float]]:
    """``first`` with its spread-free groups replaced by groups with spread from ``draw(round)`` (see the module docstring).

    Returns the batch (as many groups as ``first``) and what happened: ``dropped_groups`` (spread-free in the
    first sampling), ``resampled_groups`` (groups drawn in the extra rounds), ``rounds``, ``kept_flat_groups``
    (spread-free groups the cap left in the batch).
    """
    want = len(first.examples)
    spread = first.spread()
    keep = [first.take([g for g, ok in enumerate(spread) if ok])]
    flat = [g for g, ok in enumerate(spread) if not ok]
    have, rounds, drawn = want - len(flat), 0, 0
    while have < want and rounds < max_rounds:
        extra = draw(rounds)
        rounds += 1
        drawn += len(extra.examples)
        good = [g for g, ok in enumerate(extra.spread()) if ok][: want - have]
        if good:
            keep.append(extra.take(good))
            have += len(good)
    if have < want:  # the cap: top up with the dropped groups
        keep.append(first.take(flat[: want - have]))
    batch = Groups.concat(keep, pad_id)
    return batch, {"dropped_groups": float(len(flat)), "resampled_groups": float(drawn), "rounds": float(rounds),
                   "kept_flat_groups": float(sum(not ok for ok in batch.spread()))}
