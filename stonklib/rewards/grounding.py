"""Grounded data references, for the data_utilization reward.

The seed counted every date, ``$`` price, percentage and "volume of N" in the
justification, whether or not the number existed: a model could print
``2099-01-01 $1.00 5%`` five times over and collect the full 3 points. Here a
mention counts only if it matches a value the prompt actually shows:

- dates: the history dates (most recent ``GROUND_HISTORY_ROWS`` rows on or
  before the as-of date) and the as-of date, written ``2010-08-03``,
  ``2010/08/03``, ``08/03/2010``, ``Aug 3, 2010``, ``August 3rd 2010`` or
  ``3 Aug 2010``;
- numbers: the close, the previous close, the history closes (price), the
  history volumes (volume), the day change %, return_1d/5d/10d and
  volatility_10d (pct), volume_ratio and every numeric financial metric (metric).

A number matches a value within the rounding of what was written (``123.46``
and ``123.5`` and ``123`` all match 123.456; ``1.2M`` matches 1,234,567) but
never more than ``REL_TOL`` (5%) of the value, so ``1%`` does not match 1.23%.
Signs are ignored ("fell 1.23%" quotes a -1.23% change). A unit narrows what a
number may match: ``$``/``dollars`` -> price or metric, ``%`` -> pct or metric,
``K/M/B``/``shares`` -> volume or metric; a bare number may match anything but
must carry a decimal point or at least three digits (so "5-day" or "3 days" are
not data). Numbers on the ``Day N:`` prediction lines are not references.

Each distinct value counts once. To stop number spraying (writing 1, 2, ...,
1000 to hit every price), a completion with more than ``SPRAY_RATIO`` x
grounded + ``SPRAY_SLACK`` ungrounded mentions gets zero references.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from stonklib.data.records import Example
from stonklib.rewards.parse import MAX_SCAN_CHARS, day_line_spans

GROUND_HISTORY_ROWS = 15  # the seed prompt's history window
REL_TOL = 0.05
SPRAY_RATIO = 3
SPRAY_SLACK = 10

MAX_DECIMALS = 4  # a number written with more decimals than this is compared at 4
_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
_MON = r"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?"
_MONTH_HINT_RE = re.compile(r"jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec")  # on lower-cased text
_WORD_DATE_RE = re.compile(
    rf"\b{_MON}[ \t]+(\d{{1,2}})(?:st|nd|rd|th)?,?[ \t]+(\d{{4}})\b"  # Aug 3, 2010
    rf"|\b(\d{{1,2}})(?:st|nd|rd|th)?[ \t]+{_MON},?[ \t]+(\d{{4}})\b",  # 3 Aug 2010
    re.I)
# One pass finds numeric dates (2010-08-03, 2010/08/03, 08/03/2010) and numbers with a "$" before and a unit
# word after; not inside a word ("Q3") or a longer number. findall's tuples are much cheaper than match objects.
_TOKEN_RE = re.compile(
    r"(?<![\w.])(\$[ \t]?)?(?:(\d{1,4}[-/]\d{1,2}[-/]\d{1,4})(?!\d)"
    r"|(\d+(?:,\d{3})*(?:\.\d+)?)(?:[ \t]?(%|-?[a-zA-Z]+))?)")
# the word after a number -> its unit ("" = bare number; "day" = a duration, not data)
_UNITS = {"%": "%", "percent": "%", "$": "$", "dollars": "$", "usd": "$", "shares": "shares",
          "k": "k", "thousand": "k", "m": "m", "mn": "m", "million": "m", "b": "b", "bn": "b", "billion": "b",
          **{w: "day" for w in ("day", "days", "-day", "-days", "d", "-d")}}
_SCALES = {"k": 1e3, "m": 1e6, "b": 1e9}
_ALL = frozenset({"price", "volume", "pct", "metric"})
_UNIT_KINDS = {"$": frozenset({"price", "metric"}), "%": frozenset({"pct", "metric"}),
               "shares": frozenset({"volume", "metric"}), "k": frozenset({"volume", "metric"}),
               "m": frozenset({"volume", "metric"}), "b": frozenset({"volume", "metric"}), "": _ALL}


@dataclass(frozen=True)
class References:
    """What one prompt shows: its dates and numbers, and every way of writing each of them.

    ``forms`` maps (unit, digits) - e.g. ("$", "123.46"), ("m", "1.23") - to the
    ids of the values it may stand for: each value is written at 0..MAX_DECIMALS
    decimals (and in K/M/B for volumes and metrics) wherever that rounding stays
    within REL_TOL of it, under every unit its kind allows. ``date_forms`` maps
    2010-08-03, 2010/8/3, 08/03/2010, ... to the ISO date. Matching a token is
    then one dict lookup.
    """

    dates: frozenset[str]
    values: tuple[float, ...]  # absolute values, by id
    kinds: tuple[str, ...]
    forms: dict[tuple[str, str], tuple[int, ...]]
    date_forms: dict[str, str]


@dataclass(frozen=True)
class Grounding:
    n_references: int  # distinct grounded dates + values (0 when sprayed)
    dates: frozenset[str]
    values: frozenset[int]  # ids into References.values
    n_ungrounded: int  # eligible mentions that matched nothing
    sprayed: bool


def references(example: Example) -> References:
    """The dates and numbers the prompt for ``example`` shows (cached per example object)."""
    hit = _CACHE.get(id(example))
    if hit is not None and hit[0] is example:
        return hit[1]
    refs = _build_references(example)
    if len(_CACHE) >= 4096:
        _CACHE.clear()
    _CACHE[id(example)] = (example, refs)
    return refs


_CACHE: dict[int, tuple[Example, References]] = {}


def _build_references(ex: Example) -> References:
    hist = sorted((h for h in ex.history if h.date <= ex.date), key=lambda h: h.date, reverse=True)
    hist = hist[:GROUND_HISTORY_ROWS]
    dates = frozenset([ex.date, *(h.date for h in hist)])
    raw: list[tuple[Any, str]] = [(ex.close, "price"), (ex.previous_close, "price")]
    raw += [(h.close, "price") for h in hist] + [(h.volume, "volume") for h in hist]
    raw.append((ex.day_change_pct, "pct"))
    raw += [(v, "pct") for v in (ex.return_1d, ex.return_5d, ex.return_10d, ex.volatility_10d)]
    raw.append((ex.volume_ratio, "metric"))
    raw += [(v, "metric") for v in dict(ex.financial_metrics).values()]
    seen: dict[tuple[str, float], None] = {}
    for v, kind in raw:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        seen.setdefault((kind, round(abs(float(v)), 6)), None)
    values, kinds = tuple(v for _, v in seen), tuple(k for k, _ in seen)
    forms: dict[tuple[str, str], list[int]] = {}
    for i, (v, kind) in enumerate(zip(values, kinds, strict=True)):
        units = [u for u, allowed in _UNIT_KINDS.items() if kind in allowed and u not in _SCALES]
        scaled = [(u, _SCALES[u]) for u in _SCALES if kind in _UNIT_KINDS[u]]
        for unit_list, scale in [(units, 1.0), *(([u], sc) for u, sc in scaled)]:
            for d in range(MAX_DECIMALS + 1):
                digits = f"{v / scale:.{d}f}"
                if (float(digits) > 0 or v == 0) and abs(float(digits) * scale - v) <= REL_TOL * v + 1e-9:
                    for u in unit_list:
                        forms.setdefault((u, digits), []).append(i)
    return References(dates, values, kinds, {k: tuple(v) for k, v in forms.items()}, _date_forms(dates))


def _date_forms(dates: frozenset[str]) -> dict[str, str]:
    out = {}
    for iso in dates:
        y, mo, d = iso.split("-")
        for sep in "-/":
            for m_, d_ in ((mo, d), (str(int(mo)), str(int(d)))):
                out[f"{y}{sep}{m_}{sep}{d_}"] = iso
                out[f"{m_}{sep}{d_}{sep}{y}"] = iso  # US month/day/year
    return out


def ground(text: str, example: Example) -> Grounding:
    """Count the distinct prompt values that ``text`` quotes (see the module docstring)."""
    text = text[:MAX_SCAN_CHARS]
    refs = references(example)
    masks = day_line_spans(text)  # numbers and dates on prediction lines are not references
    dates: set[str] = set()
    ungrounded = grounded = 0
    if _MONTH_HINT_RE.search(text.lower()):
        for m in _WORD_DATE_RE.finditer(_masked(text, masks)):
            masks.append(m.span())
            iso = _iso_words(m.groups())
            if iso is not None and iso in refs.dates:
                dates.add(iso)
                grounded += 1
            else:
                ungrounded += 1
    scan = _masked(text, masks)
    matched: set[int] = set()
    forms, date_forms = refs.forms, refs.date_forms
    for dollar, date, number, unit in _TOKEN_RE.findall(scan):
        if date:
            iso = date_forms.get(date)
            if iso is None:
                ungrounded += 1
            else:
                dates.add(iso)
                grounded += 1
            continue
        if dollar:
            unit = "$"
        elif unit:
            unit = _UNITS.get(unit.lower(), "")
            if unit == "day":
                continue
        if not unit and "." not in number and len(number) - number.count(",") < 3:
            continue  # "5-day", "3 trading days", "Day 2": not data
        if "," in number:
            number = number.replace(",", "")
        if "." in number and len(number) - number.index(".") - 1 > MAX_DECIMALS:
            number = f"{float(number):.{MAX_DECIMALS}f}"
        ids = forms.get((unit, number))
        if not ids:
            ungrounded += 1
            continue
        matched.add(next((i for i in ids if i not in matched), ids[0]))  # prefer a value not counted yet
        grounded += 1
    sprayed = ungrounded > SPRAY_RATIO * grounded + SPRAY_SLACK
    n = 0 if sprayed else len(dates) + len(matched)
    return Grounding(n, frozenset(dates), frozenset(matched), ungrounded, sprayed)


def _masked(text: str, spans: list[tuple[int, int]]) -> str:
    if not spans:
        return text
    out, pos = [], 0
    for a, b in sorted(spans):
        if b <= pos:
            continue
        a = max(a, pos)
        out.append(text[pos:a])
        out.append(" " * (b - a))
        pos = b
    out.append(text[pos:])
    return "".join(out)


def _iso_words(g: tuple[str | None, ...]) -> str | None:
    if g[0]:
        return _iso(g[2], _MONTHS[g[0][:3].lower()], g[1])  # Aug 3, 2010
    return _iso(g[5], _MONTHS[g[4][:3].lower()], g[3])  # 3 Aug 2010


def _iso(y: str | int, mo: str | int, d: str | int) -> str | None:
    y, mo, d = int(y), int(mo), int(d)
    if not (1 <= mo <= 12 and 1 <= d <= 31):
        return None
    return f"{y:04d}-{mo:02d}-{d:02d}"
