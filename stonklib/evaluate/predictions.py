"""The predictions file: one JSON object per line, written by generation, read by scoring.

A row (:class:`PredictionRecord`) holds the label, the parsed answer for days 1-3
(parsed by the reward's own parser, :func:`stonklib.rewards.parse_prediction`),
the completion, and the example fields the baselines and breakdowns need
(sector, the numeric prompt features, the day 2-3 moves).

Reading is strict where a guess would be silent garbage and lenient where a row
is merely unusable. Per case:

=====================================  =========================================
non-JSON line                          skipped, counted as ``invalid_json``
a JSON value that is not an object     skipped, counted as ``not_an_object``
a required field missing or null       skipped, counted as ``missing_<field>``
``actual_change_pct`` NaN/inf          skipped, counted as ``nan_actual_change_pct``
|``actual_change_pct``| > 100           skipped, counted as ``implausible_actual_change_pct``
a second row for the same ticker+date  skipped, counted as ``duplicate_ticker_date``
blank line                             ignored (not counted)
``predicted_direction`` not up/down/   error naming file, line and field
unknown (case-insensitive)
a non-numeric number field or an       error naming file, line and field
unparseable date
``confidence`` NaN or missing          kept, treated as missing (scored as 50)
``confidence`` outside [0, 100]        clipped, counted in ``confidence_clipped``
``predicted_pct`` NaN                  kept, treated as missing
|``predicted_pct``| > 100               kept, treated as missing, counted in ``implausible_predicted_pct``
no valid row at all                    error
=====================================  =========================================

Required fields: ``ticker``, ``date``, ``actual_change_pct``, ``predicted_direction``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from stonklib.data.records import Example
from stonklib.data.sources import DataError, text_lines
from stonklib.evaluate.metrics import to_jsonable

REQUIRED = ("ticker", "date", "actual_change_pct", "predicted_direction")
FEATURES = ("return_1d", "return_5d", "return_10d", "volatility_10d", "volume_ratio")
_NUMERIC_OPTIONAL = ("predicted_pct", "confidence", "day2_pct", "day2_confidence", "day3_pct", "day3_confidence",
                     "actual_change_pct_2", "actual_change_pct_3", *FEATURES)
_FIX = "Fix that line, or regenerate the file with `stonk evaluate --model MODEL --out DIR`."


class PredictionsFileError(ValueError):
    """A predictions file cannot be scored; the message names the file, line and field."""


@dataclass(frozen=True)
class PredictionRecord:
    """One line of ``predictions.jsonl``."""

    ticker: str
    date: str
    actual_change_pct: float
    predicted_direction: str  # up / down / unknown
    predicted_pct: float | None
    confidence: float | None  # 0-100
    day2_direction: str
    day2_pct: float | None
    day2_confidence: float | None
    day3_direction: str
    day3_pct: float | None
    day3_confidence: float | None
    completion: str
    sector: str = ""
    actual_change_pct_2: float | None = None
    actual_change_pct_3: float | None = None
    return_1d: float | None = None
    return_5d: float | None = None
    return_10d: float | None = None
    volatility_10d: float | None = None
    volume_ratio: float | None = None
    prompt_tokens: int | None = None
    prompt_truncated: bool | None = None
    samples: list[dict[str, Any]] | None = None  # with num_samples > 1: every sample's day-1 parse and completion

    @classmethod
    def from_completion(cls, example: Example, completion: str, prompt: Any = None) -> PredictionRecord:
        """Parse ``completion`` with the reward's parser; ``prompt`` is an optional FittedPrompt."""
        from stonklib.rewards import parse_prediction

        d1, d2, d3 = (parse_prediction(completion, day=d) for d in (1, 2, 3))
        return cls(
            ticker=example.ticker, date=example.date, actual_change_pct=example.change_pct_1,
            predicted_direction=d1.direction, predicted_pct=d1.percentage, confidence=d1.confidence,
            day2_direction=d2.direction, day2_pct=d2.percentage, day2_confidence=d2.confidence,
            day3_direction=d3.direction, day3_pct=d3.percentage, day3_confidence=d3.confidence,
            completion=completion, sector=example.sector,
            actual_change_pct_2=example.change_pct_2, actual_change_pct_3=example.change_pct_3,
            **{k: getattr(example, k) for k in FEATURES},
            prompt_tokens=getattr(prompt, "n_tokens", None), prompt_truncated=getattr(prompt, "truncated", None),
        )

    @classmethod
    def from_votes(cls, example: Example, completions: list[str], prompt: Any = None) -> PredictionRecord:
        """The vote of several sampled answers to one prompt (:func:`vote` for each day); ``completion`` is the
        first sample that agrees with the day-1 vote (else the first), ``samples`` keeps every one's parse."""
        from stonklib.rewards import parse_prediction

        parsed = [[parse_prediction(c, day=d) for d in (1, 2, 3)] for c in completions]
        days = [vote([p[d] for p in parsed]) for d in range(3)]
        first = next((c for c, p in zip(completions, parsed, strict=True) if p[0].direction == days[0][0]),
                     completions[0])
        one = cls.from_completion(example, first, prompt)
        fields = {"predicted_direction": days[0][0], "confidence": days[0][1], "predicted_pct": days[0][2]}
        for k in (2, 3):
            fields.update({f"day{k}_direction": days[k - 1][0], f"day{k}_confidence": days[k - 1][1],
                           f"day{k}_pct": days[k - 1][2]})
        samples = [{"direction": p[0].direction, "pct": p[0].percentage, "confidence": p[0].confidence,
                    "completion": c} for c, p in zip(completions, parsed, strict=True)]
        return replace(one, **fields, samples=samples)

    def to_json(self) -> str:
        return json.dumps(to_jsonable(asdict(self)), ensure_ascii=False, allow_nan=False)


def vote(answers: list[Any]) -> tuple[str, float | None, float | None]:
    """(direction, confidence, magnitude) of one day's parsed answers (``rewards.Prediction``).

    The direction with more up/down votes wins; a tie, no parsed vote included, is ``unknown``. The
    confidence is the winner's share of all the answers, in percent (unparsed answers dilute it); the
    magnitude is the median of the winning answers' percentages (None when none gives one). One answer
    is its own vote, so n = 1 reads as greedy does, except that the confidence is the answer's own."""
    if len(answers) == 1:
        a = answers[0]
        return a.direction, a.confidence, a.percentage
    ups = sum(a.direction == "up" for a in answers)
    downs = sum(a.direction == "down" for a in answers)
    if ups == downs:
        return "unknown", None, None
    winner = "up" if ups > downs else "down"
    pcts = [a.percentage for a in answers if a.direction == winner and a.percentage is not None]
    return winner, 100.0 * max(ups, downs) / len(answers), float(statistics.median(pcts)) if pcts else None


@dataclass
class Predictions:
    """A scored-ready predictions frame plus what reading it skipped or clipped."""

    frame: pd.DataFrame
    path: str = ""
    skipped: dict[str, int] = field(default_factory=dict)
    confidence_clipped: int = 0


def read_predictions(path: str | Path) -> Predictions:
    """Read and validate a predictions JSONL (rules in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise PredictionsFileError(f"{path}: no such predictions file. {_FIX}")
    rows: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    seen: set[tuple[str, str]] = set()
    clipped = 0
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            skipped["invalid_json"] += 1
            continue
        if not isinstance(obj, dict):
            skipped["not_an_object"] += 1
            continue
        row, reason, was_clipped = _validate(obj, path, lineno)
        if reason is None and (row["ticker"], row["date"]) in seen:
            reason = "duplicate_ticker_date"
        if reason is not None:
            skipped[reason] += 1
            continue
        seen.add((row["ticker"], row["date"]))
        if row.pop("_implausible_predicted_pct", False):
            skipped["implausible_predicted_pct"] += 1  # the row is kept; only its move is dropped
        clipped += was_clipped
        rows.append(row)
    if not rows:
        raise PredictionsFileError(
            f"{path}: no valid prediction rows (skipped: {dict(skipped) or 'the file is empty'}). Each line must be a "
            f"JSON object with {', '.join(REQUIRED)}. {_FIX}")
    return Predictions(frame_from_rows(rows), str(path), dict(skipped), clipped)


#: Largest believable one-day move, in percent, either way (a fall cannot pass 100 %).
MAX_MOVE_PCT = 100.0


def _lines(path: Path):
    """(line number, text); a file that is not UTF-8 text (binary, or Latin-1) is an error naming its line."""
    try:
        yield from text_lines(path)
    except DataError as e:
        raise PredictionsFileError(f"{e} {_FIX}") from None


def _validate(obj: dict[str, Any], path: Path, lineno: int) -> tuple[dict[str, Any], str | None, bool]:
    """(normalised row, skip reason or None, whether the confidence was clipped)."""
    for k in REQUIRED:
        if obj.get(k) is None:
            return obj, f"missing_{k}", False
    row = dict(obj)
    where = f"{path}, line {lineno}"
    row["ticker"] = str(obj["ticker"])
    try:
        row["date"] = dt.date.fromisoformat(str(obj["date"])[:10]).isoformat()
    except ValueError:
        raise PredictionsFileError(f"{where}: date={obj['date']!r} is not an ISO date (YYYY-MM-DD). {_FIX}") from None
    direction = str(obj["predicted_direction"]).strip().lower()
    if direction not in ("up", "down", "unknown"):
        raise PredictionsFileError(
            f"{where}: predicted_direction={obj['predicted_direction']!r} must be up, down or unknown. {_FIX}")
    row["predicted_direction"] = direction
    for k in ("actual_change_pct", *_NUMERIC_OPTIONAL):
        row[k] = _number(obj.get(k), k, where)
    if row["actual_change_pct"] is None:
        return row, "nan_actual_change_pct", False
    if abs(row["actual_change_pct"]) > MAX_MOVE_PCT:  # a corrupt row; scored, it would swamp every return
        return row, "implausible_actual_change_pct", False
    for k in ("predicted_pct", "day2_pct", "day3_pct"):
        if row.get(k) is not None and abs(row[k]) > MAX_MOVE_PCT:
            row[k] = None
            row["_implausible_predicted_pct"] = True
    c = row["confidence"]
    was_clipped = c is not None and not 0 <= c <= 100
    if was_clipped:
        row["confidence"] = min(100.0, max(0.0, c))
    return row, None, was_clipped


def _number(v: Any, name: str, where: str) -> float | None:
    """A finite float, None for null/NaN/inf; a non-number is an error."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise PredictionsFileError(f"{where}: {name}={v!r} is not a number. {_FIX}")
    try:
        x = float(v)
    except ValueError:
        raise PredictionsFileError(f"{where}: {name}={v!r} is not a number. {_FIX}") from None
    return x if math.isfinite(x) else None


def frame_from_rows(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A predictions frame: float columns with NaN for missing, oldest date first."""
    df = pd.DataFrame(rows)
    for k in ("predicted_pct", "confidence", *FEATURES):
        if k not in df:
            df[k] = float("nan")
    for k in ("actual_change_pct", *_NUMERIC_OPTIONAL):
        if k in df:
            df[k] = pd.to_numeric(df[k], errors="coerce").astype(float)
    if "sector" not in df:
        df["sector"] = ""
    df["sector"] = df["sector"].fillna("").astype(str)
    return df.sort_values(["date", "ticker"], kind="stable").reset_index(drop=True)
