"""Rewards for the Stage II prediction task: the parser, five pure parts, ``score`` and TRL wrappers.

Usage::

    from stonklib.rewards import score, parse_prediction, trl_reward_funcs
    b = score(completion, example)            # b.total, b.components, b.prediction
    trainer = GRPOTrainer(..., reward_funcs=trl_reward_funcs(cfg.reward_weights))

The same ``parse_prediction`` feeds the reward and ``stonklib.evaluate``, so the
metric and the reward cannot drift apart.

Parts and tiers (the seed's DeepStock / Stonk-Trainer v2 ``train_stage2.py``
values; each part is multiplied by ``weights[name]``, missing = 1.0)::

    direction         2.5 if day-1 direction == example.direction_1, else 0
    magnitude         right direction only: 2.0 / 1.5 / 1.0 / 0.5 for
                      |pred% - |actual%|| / max(0.5, |actual%|) <= 0.2 / 0.5 / 1.0 / more;
                      0 when wrong or no percentage
    confidence        right: +2.5 / 2.0 / 1.5 / 1.0, wrong: -1.5 / -0.7 / -0.4 / -0.2
                      for confidence >= 80 / >= 60 / >= 40 / below; 0 if unknown direction or no confidence
    data_utilization  3 / 2 / 1 / 0 for >= 5 / >= 3 / >= 1 / 0 distinct *grounded* references
    format            0.5 (Day 1 line exact) + 0.25 (Day 2) + 0.25 (Day 3)

Bounds of ``total`` with default weights: min -1.5 (a confident wrong answer,
nothing else), max 2.5 + 2.0 + 2.5 + 3.0 + 1.0 = 11.0. ``reward_bounds`` gives
them for any weights (a negative weight swaps a part's ends).

Variants:

- multi-horizon (``multi_horizon=True``): direction, magnitude and confidence are
  the mean over days 1-3, each day against ``direction_k`` / ``change_pct_k``.
  Bounds unchanged.
- market-bias adaptation (``class_freq={"up": p, "down": 1 - p}``, off by default):
  the direction reward of an example is multiplied by ``0.5 / freq(actual class)``
  clipped to [0.5, 2.0], so always answering the majority class earns the same
  expected direction reward as always answering the minority class. The running
  frequencies come from the trainer's market statistics. Max total becomes 13.5.

Where this departs from the seed, and why:

- data_utilization is grounded: the seed counted any date, ``$`` price, ``%`` or
  volume pattern (including invented ones). Here only values present in the
  prompt count, each once (``grounding.py``).
- A missing confidence scores 0; the seed silently assumed 50% (so an unknown
  direction was also penalised as "wrong, 50%": -0.4).
- format gives partial credit per day; the seed gave 1.0 when any one line matched.
- Both UP and DOWN on one Day line is ``unknown``, and the first Day-N line wins,
  so hedging or repeating cannot collect the direction reward twice.
"""

from stonklib.rewards.grounding import Grounding, References, ground, references
from stonklib.rewards.parse import (
    MAX_SCAN_CHARS,
    Prediction,
    completion_text,
    parse_all,
    parse_prediction,
)
from stonklib.rewards.parts import (
    BIAS_CLIP,
    PART_BOUNDS,
    REWARD_FUNCS,
    RewardBreakdown,
    RewardContext,
    bias_weight,
    confidence_reward,
    data_utilization_reward,
    direction_reward,
    format_reward,
    magnitude_reward,
    register,
    resolve_weights,
    reward_bounds,
    score,
    score_batch,
)
from stonklib.rewards.trl_compat import TRLRewardFunc, examples_from_columns, trl_reward_funcs

__all__ = [
    "BIAS_CLIP", "MAX_SCAN_CHARS", "PART_BOUNDS", "REWARD_FUNCS", "Grounding", "Prediction", "References",
    "RewardBreakdown", "RewardContext", "TRLRewardFunc", "bias_weight", "completion_text", "confidence_reward",
    "data_utilization_reward", "direction_reward", "examples_from_columns", "format_reward", "ground",
    "magnitude_reward", "parse_all", "parse_prediction", "references", "register", "resolve_weights",
    "reward_bounds", "score", "score_batch", "trl_reward_funcs",
]
