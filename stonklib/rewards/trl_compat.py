"""TRL-compatible wrappers: one reward function per part, for ``trl.GRPOTrainer(reward_funcs=...)``.

TRL calls ``fn(prompts=..., completions=..., completion_ids=..., **columns)``
where ``columns`` holds every dataset column except ``prompt`` as a list (one
entry per completion), plus ``trainer_state``/``log_extra``/``log_metric``.
A built parquet (``Example.to_row``) has exactly the columns ``Example.from_row``
needs, so each row is turned back into an ``Example`` here.

Each function returns the *weighted* part; leave TRL's own ``reward_weights``
unset (or all 1.0) so the weights are not applied twice. The functions are
instances of a module-level class, so they pickle (TRL and ``accelerate`` may
pickle reward functions), and carry ``__name__`` = the part name, which TRL
uses for its ``rewards/<name>/mean`` logs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields
from typing import Any

from stonklib.data.records import Example
from stonklib.rewards.parse import completion_text, parse_all
from stonklib.rewards.parts import REWARD_FUNCS, RewardContext, resolve_weights

_REQUIRED = tuple(f.name for f in fields(Example) if f.default is MISSING and f.default_factory is MISSING)
ClassFreq = Mapping[str, float] | Callable[[], Mapping[str, float] | None] | None


class TRLRewardFunc:
    """``fn(completions, **columns) -> list[float]``: one weighted reward part, TRL's call style."""

    def __init__(self, part: str, weight: float = 1.0, *, multi_horizon: bool = False, class_freq: ClassFreq = None):
        if part not in REWARD_FUNCS:
            raise ValueError(f"unknown reward part {part!r}; valid parts: {', '.join(REWARD_FUNCS)}.")
        self.part = part
        self.weight = float(weight)
        self.multi_horizon = multi_horizon
        self.class_freq = class_freq  # a mapping, or a zero-argument callable read at every call (live stats)
        self.__name__ = part

    def __repr__(self) -> str:
        return f"TRLRewardFunc({self.part!r}, weight={self.weight}, multi_horizon={self.multi_horizon})"

    def __call__(self, completions: list[Any], prompts: Any = None, completion_ids: Any = None,
                 **columns: Any) -> list[float]:
        freq = self.class_freq() if callable(self.class_freq) else self.class_freq
        fn = REWARD_FUNCS[self.part]
        examples = examples_from_columns(columns, len(completions), self.__name__)
        out = []
        for c, ex in zip(completions, examples, strict=True):
            text = completion_text(c)
            ctx = RewardContext(multi_horizon=self.multi_horizon, class_freq=freq, predictions=parse_all(text))
            out.append(self.weight * fn(text, ex, ctx))
        return out


def trl_reward_funcs(weights: Mapping[str, float] | None = None, *, multi_horizon: bool = False,
                     class_freq: ClassFreq = None) -> list[TRLRewardFunc]:
    """One TRL reward function per registered part, in registry order."""
    w = resolve_weights(weights)
    return [TRLRewardFunc(name, w[name], multi_horizon=multi_horizon, class_freq=class_freq) for name in REWARD_FUNCS]


def examples_from_columns(columns: Mapping[str, Any], n: int, who: str = "reward") -> list[Example]:
    """Rows of TRL's column lists -> Examples (one per completion; repeated prompts converted once)."""
    cols = {k: v for k, v in columns.items() if isinstance(v, (list, tuple)) and len(v) == n}
    missing = [k for k in _REQUIRED if k not in cols]
    if missing:
        raise ValueError(
            f"reward function {who!r} needs the dataset columns {missing} (one value per completion), "
            f"but TRL passed only {sorted(cols)}. Train on a dataset built by `stonk data build` "
            "(Example.to_row columns) and do not drop these columns.")
    seen: dict[tuple[Any, ...], Example] = {}
    out = []
    for i in range(n):
        key = (cols["ticker"][i], cols["date"][i], cols["close"][i])
        ex = seen.get(key)
        if ex is None:
            ex = seen[key] = Example.from_row({k: v[i] for k, v in cols.items()})
        out.append(ex)
    return out
