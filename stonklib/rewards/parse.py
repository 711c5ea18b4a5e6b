"""The one prediction parser, shared by the reward and the evaluation.

The seed asks for, per day::

    Day X: [UP/DOWN] [PERCENTAGE]% with [CONFIDENCE]% confidence
    Justification: [Your reasoning using specific data points]

``parse_prediction`` is tolerant where the seed's regex was brittle (case, a
missing ``%``, ``Prediction:`` prefixes, markdown ``**UP**``, bullets,
``Day 1 -``, ``Day1.``, ``confidence: 70``) and total: it never raises, on any
string. The rules, in order:

- Only the first ``MAX_SCAN_CHARS`` characters are read, and at most
  ``MAX_LABELS`` ``Day N`` labels are examined; every regex is applied to one
  line of at most ``MAX_LINE_CHARS`` characters and has no nested quantifiers,
  so the cost is bounded whatever the input.
- A day's line is the first ``Day N`` label whose line names a direction.
  **If the same day appears twice, the first occurrence wins** (so appending a
  second, contradicting ``Day 1`` line changes nothing). A ``Day N`` mention
  with no direction on its line (prose such as "on day 1 of the rally") is
  skipped; if every mention lacks one, the day is ``unknown``.
- The direction is the first ``up``/``down`` word on the line. If both words
  appear before the percentage (``UP/DOWN 1.2%``, ``up or down``) the answer is
  ambiguous: ``unknown``.
- The percentage is the first number after the direction word that is not the
  confidence; it is stored as an absolute value (the direction carries the sign).
- The confidence is the number next to the word ``confidence``
  (``70% confidence``, ``confidence: 70``, ``confidence of 70%``). A bare
  fraction without ``%`` (``confidence: 0.7``) is read as 70. It is clipped to
  [0, 100].
- Non-finite numbers (``inf``, ``nan``, ``1e999``) become ``None``.
- ``well_formatted`` is True only when the whole line is exactly the seed's
  format (case-insensitive, surrounding spaces allowed, integer or decimal
  numbers): ``Day 1: UP 1.2% with 70% confidence``.
- ``justification`` is the text after ``Justification:`` between this day's
  line and the next ``Day`` label (at most ``MAX_JUSTIFICATION_CHARS``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

MAX_SCAN_CHARS = 20_000
MAX_LINE_CHARS = 300
MAX_LABELS = 64
MAX_JUSTIFICATION_CHARS = 2_000
DAYS = (1, 2, 3)

_NUM = r"[-+\u2212]?(?:\d+(?:,\d{3})*(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d{1,4})?|[-+]?\b(?:inf(?:inity)?|nan)\b"
_NUM_RE = re.compile(_NUM, re.I)
# Character classes instead of re.I let the regex engine scan for the first letter fast.
_DAY_RE = re.compile(r"[Dd][Aa][Yy][ \t]*(\d{1,2})(?![\d,]|\.\d)")
_DIR_RE = re.compile(r"\b(up|down)(?:wards?)?\b", re.I)
_CONF_AFTER_RE = re.compile(rf"({_NUM})[ \t]*(%?)[ \t]*[(\[]?[ \t]*\Z", re.I)  # "70% confidence"
_CONF_BEFORE_RE = re.compile(  # "confidence: 70%"
    rf"confiden\w*[ \t]*(?:level|score)?[ \t]*(?:of|is|at|=|:|-)?[ \t]*(?:~|about)?[ \t]*({_NUM})[ \t]*(%?)", re.I)
_CONF_WORD_RE = re.compile("confiden", re.I)
_STRICT_RE = re.compile(r"[ \t]*day (\d{1,2}): (up|down) \d+(?:\.\d+)?% with \d+(?:\.\d+)?% confidence[ \t]*", re.I)
_JUST_RE = re.compile(r"[Jj](?i:ustification)[ \t]*[:\-]")
_MARKDOWN = str.maketrans({c: " " for c in "*_`~#"})


@dataclass(frozen=True)
class Prediction:
    """One day's parsed answer. ``direction`` is "up", "down" or "unknown"."""

    day: int
    direction: str = "unknown"
    percentage: float | None = None  # absolute % move; the sign lives in direction
    confidence: float | None = None  # clipped to [0, 100]
    justification: str = ""
    well_formatted: bool = False  # the line is exactly the seed's format


def to_float(token: str) -> float | None:
    """A number token as a finite float, or None ("1,234.5" -> 1234.5; "1e999", "nan" -> None)."""
    try:
        v = float(token.replace(",", "").replace("\u2212", "-"))
    except (ValueError, OverflowError):
        return None
    return v if math.isfinite(v) else None


def completion_text(completion: Any) -> str:
    """The assistant text of a completion: a string, or TRL's chat form (a list of {role, content})."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, bytes):
        return completion.decode("utf-8", errors="replace")
    if isinstance(completion, dict):
        return _content_text(completion.get("content"))
    if isinstance(completion, (list, tuple)):
        msgs = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in msgs if m.get("role") == "assistant"] or msgs
        return "\n".join(_content_text(m.get("content")) for m in assistant)
    return str(completion)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):  # content blocks: [{"type": "text", "text": ...}]
        return "\n".join(str(b.get("text", "")) if isinstance(b, dict) else str(b) for b in content)
    return str(content)


def parse_prediction(text: Any, day: int = 1) -> Prediction:
    """Parse one day's prediction from a completion; never raises."""
    if day in DAYS:
        return parse_all(text)[day]
    found = _scan(completion_text(text)[:MAX_SCAN_CHARS], (int(day),))
    return found[0]


def parse_all(text: Any) -> dict[int, Prediction]:
    """Days 1-3, always all three keys (a missing day is ``unknown``)."""
    preds, _ = _parse_cached(completion_text(text)[:MAX_SCAN_CHARS])
    return dict(zip(DAYS, preds, strict=True))


def day_line_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of the prediction on every ``Day N`` line that names a direction, to mask its numbers."""
    return list(_parse_cached(text[:MAX_SCAN_CHARS])[1])


@lru_cache(maxsize=1024)  # score() and the five TRL reward functions read the same completion in turn
def _parse_cached(text: str) -> tuple[tuple[Prediction, ...], tuple[tuple[int, int], ...]]:
    lines, spans = _scan_lines(text)
    return tuple(_predictions(text, lines, DAYS)), tuple(spans)


def _scan(text: str, days: tuple[int, ...]) -> list[Prediction]:
    return _predictions(text, _scan_lines(text)[0], days)


def _predictions(text: str, lines: dict[int, tuple[int, int, int]], days: tuple[int, ...]) -> list[Prediction]:
    out = []
    for d in days:
        hit = lines.get(d)
        if hit is None:
            out.append(Prediction(day=d))
            continue
        label_end, line_end, next_label = hit
        direction, pct, conf = _parse_line(text[label_end:line_end])
        just = _justification(text, label_end, line_end, next_label)
        strict = _STRICT_RE.fullmatch(_line_at(text, label_end, line_end)) is not None
        out.append(Prediction(d, direction, pct, conf, just, strict))
    return out


def _scan_lines(text: str) -> tuple[dict[int, tuple[int, int, int]], list[tuple[int, int]]]:
    """Per day, its first labelled line that names a direction: day -> (label end, line end, next label start).

    Also returns the span of every such line's prediction (up to an inline "Justification:").
    """
    labels = []
    for i, m in enumerate(_DAY_RE.finditer(text)):
        if len(labels) >= MAX_LABELS or i >= 4 * MAX_LABELS:
            break
        s = m.start()
        if not (s and (text[s - 1].isalnum() or text[s - 1] == "_")):  # "today 1" is not a label
            labels.append(m)
    first: dict[int, tuple[int, int, int]] = {}
    spans = []
    for i, m in enumerate(labels):
        end = text.find("\n", m.end(), m.end() + MAX_LINE_CHARS)
        end = m.end() + min(MAX_LINE_CHARS, len(text) - m.end()) if end < 0 else end
        if not _DIR_RE.search(text, m.end(), end):
            continue
        just = _JUST_RE.search(text, m.end(), end)  # an inline justification is not part of the prediction
        spans.append((m.start(), just.start() if just else end))
        d = int(m.group(1))
        if d not in first:
            nxt = labels[i + 1].start() if i + 1 < len(labels) else len(text)
            first[d] = (m.end(), end, max(nxt, end))
    return first, spans


def _line_at(text: str, label_end: int, line_end: int) -> str:
    start = text.rfind("\n", max(0, label_end - MAX_LINE_CHARS), label_end) + 1
    return text[start:line_end].rstrip("\r")


def _parse_line(rest: str) -> tuple[str, float | None, float | None]:
    """(direction, |percentage|, confidence) from the text after a ``Day N`` label."""
    rest = rest.translate(_MARKDOWN)
    dm = _DIR_RE.search(rest)
    if dm is None:
        return "unknown", None, None
    direction = dm.group(1).lower()
    conf, conf_span = _confidence(rest, dm.end())
    pct, pct_start = None, len(rest)
    for nm in _NUM_RE.finditer(rest, dm.end()):
        if conf_span and conf_span[0] <= nm.start() < conf_span[1]:
            continue
        pct_start = nm.start()
        v = to_float(nm.group())
        pct = abs(v) if v is not None else None
        break
    other = _DIR_RE.search(rest, dm.end(), pct_start)
    if other is not None and other.group(1).lower() != direction:
        return "unknown", None, conf  # "UP/DOWN 1.2%": both directions claimed
    return direction, pct, conf


def _confidence(rest: str, pos: int) -> tuple[float | None, tuple[int, int] | None]:
    """The number next to the first "confidence" after ``pos``: before it ("70% confidence") or after it."""
    low = rest.lower()
    if len(low) == len(rest):
        at = low.find("confiden", pos)
    else:  # lower() changed the length (e.g. "İ"): indices would not line up
        w = _CONF_WORD_RE.search(rest, pos)
        at = w.start() if w else -1
    if at < 0:
        return None, None
    a = _CONF_AFTER_RE.search(rest, pos, at)
    b = _CONF_BEFORE_RE.match(rest, at)
    if a is not None and b is not None:
        first = _NUM_RE.search(rest, pos)
        # "UP 1.2% (confidence 70)": the number before "confidence" is the percentage
        m = b if first is not None and first.start() == a.start(1) else a
    else:
        m = a or b
    if m is None:
        return None, None
    v = to_float(m.group(1))
    if v is None:
        return None, m.span(1)
    if not m.group(2) and 0 < v <= 1 and "." in m.group(1):
        v *= 100.0  # "confidence: 0.7" is a fraction
    return min(100.0, max(0.0, v)), m.span(1)


def _justification(text: str, label_end: int, line_end: int, next_label: int) -> str:
    stop = min(next_label, line_end + MAX_JUSTIFICATION_CHARS)
    m = _JUST_RE.search(text, label_end, stop)
    if m is None:
        return ""
    return text[m.end():stop].strip()[:MAX_JUSTIFICATION_CHARS]
