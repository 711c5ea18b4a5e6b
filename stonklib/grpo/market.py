"""Running market-bias statistics: how often the market went up, how often the model says up, and
per-class accuracy, so that a model that always answers "up" in a rising market is caught.

Only counts are stored; every rate is derived from them, so stats from several ranks or runs
combine exactly by adding counts (:meth:`MarketStats.merge`, ``+``, or an all-reduce of
:meth:`MarketStats.as_tensor`). torch is imported lazily, so the rewards (which need no torch)
can use :meth:`MarketStats.class_freq` for the bias adaptation.

Usage::

    stats = MarketStats()
    stats.update(["up", "down", "up"], ["up", "up", None])   # None / "unknown": no parsable answer
    stats.class_freq()   # {"up": 0.6, "down": 0.4} with the add-one prior
    stats.save(run_dir)  # run_dir/market_stats.json, atomically
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

FILENAME = "market_stats.json"
DIRECTIONS = ("up", "down")
UNKNOWN = ("unknown", "")  # besides None: what a prediction with no parsable direction may be called


@dataclass
class MarketStats:
    """Counts of actual and predicted directions. A prediction is up, down or unknown (unparsed)."""

    actual_up: int = 0
    actual_down: int = 0
    pred_up: int = 0
    pred_down: int = 0
    pred_unknown: int = 0
    correct_up: int = 0  # actual up and predicted up
    correct_down: int = 0  # actual down and predicted down

    # ------------------------------------------------------------------ counting
    def update(self, actual_directions: Sequence[str], predicted_directions: Sequence[str | None]) -> None:
        """Count one batch: ``actual`` is "up"/"down"; ``predicted`` is "up"/"down" or None/"unknown"/""."""
        if len(actual_directions) != len(predicted_directions):
            raise ValueError(f"{len(actual_directions)} actual directions but {len(predicted_directions)} "
                             "predictions; pass one prediction per example (None when unparsed).")
        for i, (actual, pred) in enumerate(zip(actual_directions, predicted_directions, strict=True)):
            a, p = _actual(actual, i), _predicted(pred, i)
            self.actual_up += a == "up"
            self.actual_down += a == "down"
            self.pred_up += p == "up"
            self.pred_down += p == "down"
            self.pred_unknown += p is None
            self.correct_up += a == p == "up"
            self.correct_down += a == p == "down"

    @classmethod
    def count_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def counts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.count_fields()}

    # ------------------------------------------------------------------ derived
    @property
    def n_examples(self) -> int:
        return self.actual_up + self.actual_down

    @property
    def n_parsed(self) -> int:
        return self.pred_up + self.pred_down

    @property
    def up_accuracy(self) -> float | None:
        """Recall on actual-up examples (unparsed predictions count as wrong); None before any."""
        return _ratio(self.correct_up, self.actual_up)

    @property
    def down_accuracy(self) -> float | None:
        """Recall on actual-down examples (unparsed predictions count as wrong); None before any."""
        return _ratio(self.correct_down, self.actual_down)

    @property
    def accuracy(self) -> float | None:
        return _ratio(self.correct_up + self.correct_down, self.n_examples)

    @property
    def balanced_accuracy(self) -> float | None:
        """Mean of the up and down recalls: 0.5 for a model that always says the same thing."""
        up, down = self.up_accuracy, self.down_accuracy
        return None if up is None or down is None else (up + down) / 2

    @property
    def mcc(self) -> float | None:
        """Matthews correlation over parsed predictions (up = positive); 0.0 when a class is missing, as sklearn.

        From the counts: TP = correct_up, TN = correct_down, FP = pred_up - correct_up, FN = pred_down -
        correct_down. None before any parsed prediction.
        """
        if self.n_parsed == 0:
            return None
        tp, tn = self.correct_up, self.correct_down
        fp, fn = self.pred_up - tp, self.pred_down - tn
        den = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
        return 0.0 if den == 0 else (tp * tn - fp * fn) / den ** 0.5

    @property
    def predicted_up_rate(self) -> float | None:
        """Share of *parsed* predictions that say up."""
        return _ratio(self.pred_up, self.n_parsed)

    @property
    def actual_up_rate(self) -> float | None:
        return _ratio(self.actual_up, self.n_examples)

    @property
    def parse_rate(self) -> float | None:
        return _ratio(self.n_parsed, self.n_parsed + self.pred_unknown)

    def class_freq(self, prior: float = 1.0) -> dict[str, float]:
        """Smoothed frequency of each actual class, for the reward's bias adaptation (weight ~ 1 / freq).

        Laplace (add-``prior``) smoothing: ``up = (actual_up + prior) / (n + 2 * prior)``, so it is 0.5/0.5
        before any example, never 0 (the inverse stays finite), and tends to the empirical rate as n grows.
        """
        if prior <= 0:
            raise ValueError(f"prior={prior}: the Laplace pseudo-count must be > 0 so the frequency is never 0.")
        up = (self.actual_up + prior) / (self.n_examples + 2 * prior)
        return {"up": up, "down": 1.0 - up}

    # ------------------------------------------------------------------ combine
    def merge(self, other: MarketStats) -> MarketStats:
        """A new record with the counts of both (e.g. from two ranks or two evaluation shards)."""
        if not isinstance(other, MarketStats):
            raise TypeError(f"can only merge MarketStats, got {type(other).__name__}.")
        return MarketStats(**{k: v + getattr(other, k) for k, v in self.counts().items()})

    def __add__(self, other: MarketStats) -> MarketStats:
        return self.merge(other)

    def __radd__(self, other: object) -> MarketStats:
        if other == 0:  # so that builtin sum(list_of_stats) works
            return MarketStats(**self.counts())
        return NotImplemented

    def summed_over_ranks(self, d) -> MarketStats:
        """These counts summed with every other rank's (``d``: :class:`stonklib.grpo.distributed.Dist`;
        each rank saw only its own completions); themselves when not distributed."""
        if not d.enabled:
            return self
        from stonklib.grpo.distributed import all_reduce_sum

        return MarketStats.from_tensor(all_reduce_sum(self.as_tensor(), d))

    def as_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Counts as an int64 tensor (field order) for ``torch.distributed.all_reduce``."""
        import torch

        return torch.tensor(list(self.counts().values()), dtype=torch.int64, device=device)

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor) -> MarketStats:
        values = [int(v) for v in tensor.detach().cpu().reshape(-1).tolist()]
        if len(values) != len(cls.count_fields()):
            raise ValueError(f"expected {len(cls.count_fields())} counts {cls.count_fields()}, got {len(values)}.")
        return cls.from_dict(dict(zip(cls.count_fields(), values, strict=True)))

    # ------------------------------------------------------------------ persist
    def to_dict(self) -> dict[str, Any]:
        """Counts plus derived rates (None where undefined); JSON-able."""
        derived = ("n_examples", "n_parsed", "accuracy", "up_accuracy", "down_accuracy", "balanced_accuracy", "mcc",
                   "predicted_up_rate", "actual_up_rate", "parse_rate")
        return self.counts() | {k: getattr(self, k) for k in derived} | {"class_freq": self.class_freq()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MarketStats:
        """Inverse of :meth:`to_dict`: reads the counts (missing ones are 0), ignores the derived keys."""
        counts = {}
        for name in cls.count_fields():
            value = data.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, Real) or not float(value).is_integer() or value < 0:
                raise ValueError(f"market stats field {name!r} = {value!r}: must be a non-negative integer count.")
            counts[name] = int(value)
        return cls(**counts)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON atomically (temp file, then ``os.replace``); returns the path.

        ``path`` is a directory (the file goes to ``path/market_stats.json``) or a file path.
        """
        target = _target(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MarketStats:
        """Read what :meth:`save` wrote (a directory holding ``market_stats.json``, or the file)."""
        target = _target(path)
        try:
            return cls.from_dict(json.loads(target.read_text()))
        except (json.JSONDecodeError, ValueError) as err:
            raise ValueError(f"{target}: not a valid market stats file ({err}); delete it to start counting afresh.") from err


def _target(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p / FILENAME if p.is_dir() else p


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _actual(direction: str, i: int) -> str:
    d = direction.strip().lower() if isinstance(direction, str) else direction
    if d not in DIRECTIONS:
        raise ValueError(f"actual direction #{i} is {direction!r}: must be 'up' or 'down' (the example's direction_k).")
    return d


def _predicted(direction: str | None, i: int) -> str | None:
    if direction is None:
        return None
    d = direction.strip().lower() if isinstance(direction, str) else direction
    if d in UNKNOWN:
        return None
    if d not in DIRECTIONS:
        raise ValueError(f"prediction #{i} is {direction!r}: must be 'up', 'down', or None/'unknown' when unparsed.")
    return d
