"""Reward tables: every tier of every part, the parser, the seed's format, malformed input, TRL plumbing.

The hand-made example (tests/snapshots/acme_example.json): ACME on 2024-03-15,
close 123.456, previous close 121.00 (day change +2.03%); actual moves
day 1 +1.3% (up), day 2 -0.8% (down), day 3 +0.4% (up).
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest

from stonklib.config import REWARD_PARTS
from stonklib.data.records import Example
from stonklib.rewards import (
    BIAS_CLIP,
    REWARD_FUNCS,
    Prediction,
    bias_weight,
    confidence_reward,
    data_utilization_reward,
    direction_reward,
    format_reward,
    magnitude_reward,
    parse_all,
    parse_prediction,
    reward_bounds,
    score,
    score_batch,
    trl_reward_funcs,
)

ROW = json.loads((Path(__file__).parent / "snapshots" / "acme_example.json").read_text())
EX = Example.from_row(ROW)
LO, HI = reward_bounds()
BIAS_LO, BIAS_HI = reward_bounds(bias_adaptation=True)


def line(day: int, direction: str, pct: float, conf: float) -> str:
    return f"Day {day}: {direction} {pct}% with {conf}% confidence"


FULL = "\n".join([
    line(1, "UP", 1.3, 85), "Justification: close $123.46 on 2024-03-15 vs $121.00, volume 1,234,567, 5-day return 4.94%.",
    line(2, "DOWN", 0.8, 65), "Justification: mean reversion after a 2.03% day.",
    line(3, "UP", 0.4, 55), "Justification: the 10-day trend (7.06%) is intact.",
])


# ------------------------------------------------------------------------ parser
@pytest.mark.parametrize("text,day,direction,pct,conf,strict", [
    # why: the seed's exact format
    pytest.param("Day 1: UP 1.2% with 70% confidence", 1, "up", 1.2, 70.0, True, id="seed-exact"),
    # why: the seed's format, lower case and integer percentage
    pytest.param("day 1: down 2% with 55% confidence", 1, "down", 2.0, 55.0, True, id="lower-int"),
    # why: the seed regex allowed a "Prediction:" prefix
    pytest.param("Day 1: Prediction: UP 0.8% with 60% confidence", 1, "up", 0.8, 60.0, False, id="prediction-prefix"),
    # why: markdown bold around label and direction
    pytest.param("**Day 1:** **UP** 1.5% with **75%** confidence", 1, "up", 1.5, 75.0, False, id="markdown-bold"),
    # why: "Day 1 -" separator and a bullet
    pytest.param("- Day 1 - DOWN 3.1% with 90% confidence", 1, "down", 3.1, 90.0, False, id="dash-bullet"),
    # why: missing % signs and extra spaces
    pytest.param("Day 1:   UP   1.1   with   65 confidence", 1, "up", 1.1, 65.0, False, id="no-percent"),
    # why: "confidence: N" written before the number
    pytest.param("Day 1: UP 0.5%, confidence: 40%", 1, "up", 0.5, 40.0, False, id="conf-before"),
    # why: a fractional confidence without % means 0.7 -> 70
    pytest.param("Day 1: DOWN 0.5% (confidence 0.7)", 1, "down", 0.5, 70.0, False, id="conf-fraction"),
    # why: confidence above 100 is clipped
    pytest.param("Day 1: UP 1% with 250% confidence", 1, "up", 1.0, 100.0, True, id="conf-clip-high"),
    # why: a negative confidence is clipped to 0
    pytest.param("Day 1: UP 1% with -20% confidence", 1, "up", 1.0, 0.0, False, id="conf-clip-low"),
    # why: the sign of the percentage lives in the direction: |−1.2| = 1.2
    pytest.param("Day 1: DOWN -1.2% with 60% confidence", 1, "down", 1.2, 60.0, False, id="negative-pct"),
    # why: no percentage, only a confidence: percentage None, not the confidence
    pytest.param("Day 1: UP with 80% confidence", 1, "up", None, 80.0, False, id="no-pct"),
    # why: both directions before the number are ambiguous
    pytest.param("Day 1: UP/DOWN 1.2% with 70% confidence", 1, "unknown", None, 70.0, False, id="both-directions"),
    # why: a later "down" in the same line's prose does not flip the answer
    pytest.param("Day 1: UP 1.2% with 70% confidence despite the down day", 1, "up", 1.2, 70.0, False, id="later-down-prose"),
    # why: the same day twice -> the first occurrence wins
    pytest.param("Day 1: DOWN 1% with 60% confidence\nDay 1: UP 2% with 90% confidence", 1, "down", 1.0, 60.0, True, id="first-wins"),
    # why: prose mentioning "day 1" without a direction is skipped
    pytest.param("On day 1 of the rally volume rose.\nDay 1: UP 2% with 90% confidence", 1, "up", 2.0, 90.0, True, id="prose-day1"),
    # why: day 10 is not day 1
    pytest.param("Day 10: UP 2% with 90% confidence", 1, "unknown", None, None, False, id="day10"),
    # why: day 2 is parsed on its own
    pytest.param(FULL, 2, "down", 0.8, 65.0, True, id="day2"),
    # why: 1e308 is finite and parsed; 1e999 overflows to inf -> None
    pytest.param("Day 1: UP 1e308% with 1e999% confidence", 1, "up", 1e308, None, False, id="1e308-1e999"),
    # why: inf/nan tokens are not numbers
    pytest.param("Day 1: UP inf% with nan% confidence", 1, "up", None, None, False, id="inf-nan"),
    # why: nothing parseable
    pytest.param("I think it will go up.", 1, "unknown", None, None, False, id="unparseable"),
])
def test_parse_prediction(text, day, direction, pct, conf, strict):
    p = parse_prediction(text, day)
    assert (p.direction, p.percentage, p.confidence, p.well_formatted) == (direction, pct, conf, strict)


def test_parse_all_days_and_justification():
    preds = parse_all(FULL)
    assert sorted(preds) == [1, 2, 3]
    assert preds[3].direction == "up" and preds[3].percentage == 0.4
    assert preds[2].justification == "mean reversion after a 2.03% day."
    assert parse_all("")[2] == Prediction(day=2)


def test_parse_chat_format_completion():
    msgs = [{"role": "assistant", "content": "Day 1: UP 1.2% with 70% confidence"}]
    assert parse_prediction(msgs).direction == "up"


# ------------------------------------------------------------------ part tables
@pytest.mark.parametrize("text,expected", [
    ("Day 1: UP 1% with 50% confidence", 2.5),  # why: right direction
    ("Day 1: DOWN 1% with 50% confidence", 0.0),  # why: wrong direction
    ("no answer", 0.0),  # why: unknown direction is never right
], ids=["right", "wrong", "unknown"])
def test_direction_tiers(text, expected):
    assert direction_reward(text, EX) == expected


@pytest.mark.parametrize("text,expected", [
    ("Day 1: UP 1.4% with 50% confidence", 2.0),  # why: |1.4-1.3|/1.3 = 0.08 <= 0.2
    ("Day 1: UP 1.8% with 50% confidence", 1.5),  # why: 0.38 <= 0.5
    ("Day 1: UP 2.4% with 50% confidence", 1.0),  # why: 0.85 <= 1.0
    ("Day 1: UP 0.2% with 50% confidence", 1.0),  # why: under-estimates count too: 0.85
    ("Day 1: UP 3.0% with 50% confidence", 0.5),  # why: 1.31 > 1.0, still right direction
    ("Day 1: DOWN 1.3% with 50% confidence", 0.0),  # why: wrong direction earns no magnitude
    ("Day 1: UP with 50% confidence", 0.0),  # why: no percentage
], ids=["le0.2", "le0.5", "le1.0", "under", "gt1.0", "wrong-dir", "no-pct"])
def test_magnitude_tiers(text, expected):
    assert magnitude_reward(text, EX) == expected


def test_magnitude_floor_for_tiny_moves():
    # why: actual +0.1%: the 0.5 floor makes 0.3% an error ratio of 0.4 (1.5), not 2.0 (3 x off)
    tiny = Example.from_row({**ROW, "change_pct_1": 0.1})
    assert magnitude_reward("Day 1: UP 0.3% with 50% confidence", tiny) == 1.5


@pytest.mark.parametrize("text,expected", [
    ("Day 1: UP 1% with 80% confidence", 2.5),  # why: right, >= 80
    ("Day 1: UP 1% with 79.9% confidence", 2.0),  # why: right, just under 80
    ("Day 1: UP 1% with 60% confidence", 2.0),  # why: right, >= 60
    ("Day 1: UP 1% with 40% confidence", 1.5),  # why: right, >= 40
    ("Day 1: UP 1% with 10% confidence", 1.0),  # why: right, low
    ("Day 1: DOWN 1% with 95% confidence", -1.5),  # why: wrong, >= 80: the severe penalty
    ("Day 1: DOWN 1% with 70% confidence", -0.7),  # why: wrong, >= 60
    ("Day 1: DOWN 1% with 45% confidence", -0.4),  # why: wrong, >= 40
    ("Day 1: DOWN 1% with 5% confidence", -0.2),  # why: wrong, low
    ("Day 1: DOWN 1%", 0.0),  # why: no confidence stated (the seed assumed 50)
    ("Day 1: maybe 1% with 90% confidence", 0.0),  # why: unknown direction
], ids=["r80", "r79.9", "r60", "r40", "rlow", "w80", "w60", "w40", "wlow", "no-conf", "unknown"])
def test_confidence_tiers(text, expected):
    assert confidence_reward(text, EX) == expected


@pytest.mark.parametrize("text,expected", [
    ("Day 1: UP 1% with 50% confidence\nJustification: momentum.", 0.0),  # why: no data cited
    ("Justification: the close was $123.46.", 1.0),  # why: one grounded price (123.456 rounded)
    ("The close was $123.46, then $123.46 again, and 123.456.", 1.0),  # why: one value, counted once
    ("On 2024-03-15 the close of $123.46 followed $121.00.", 2.0),  # why: three grounded: date + 2 prices
    ("On March 15, 2024 volume was 1,234,567 vs 987654; day change 2.03%; P/E 21.5.", 3.0),  # why: five, mixed formats
    ("Volume 1.23M and a 5-day return of 4.94% with 10-day volatility 1.25%.", 2.0),  # why: 1.23M ~ 1,234,567
    ("Closes $999.99, $500.01 on 2031-01-01, 55.55%.", 0.0),  # why: none of these is in the prompt
    ("Back on 2024-02-21 the close was $108.91.", 0.0),  # why: row 17 is outside the 15-row window shown
    ("Day 1: UP 2.03% with 21.5% confidence", 0.0),  # why: numbers on the prediction line are not references
    ("Day 1: UP 1% with 60% confidence. Justification: $123.46 vs $121.00.", 1.0),  # why: inline justification counts
], ids=["none", "one", "dedupe", "three", "five", "suffix", "ungrounded", "outside-window", "pred-line", "inline"])
def test_data_utilization_tiers(text, expected):
    assert data_utilization_reward(text, EX) == expected


@pytest.mark.parametrize("text,expected", [
    (FULL, 1.0),  # why: all three lines exact
    (line(1, "UP", 1.3, 85), 0.5),  # why: day 1 alone
    (line(1, "UP", 1.3, 85) + "\n" + line(2, "DOWN", 1, 60), 0.75),  # why: days 1 and 2
    (line(2, "DOWN", 1, 60) + "\n" + line(3, "UP", 1, 60), 0.5),  # why: days 2 and 3 without day 1
    ("**Day 1:** UP 1.3% with 85% confidence", 0.0),  # why: parsed, but markdown is not the exact format
    ("Day 1: UP 1.3%", 0.0),  # why: confidence missing from the line
    ("Day 1: UP 1.3% with 85% confidence and more", 0.0),  # why: trailing text breaks the line format
], ids=["all", "day1", "day12", "day23", "markdown", "no-conf", "trailing"])
def test_format_tiers(text, expected):
    assert format_reward(text, EX) == expected


# ------------------------------------------------------------------------- score
def test_score_components_total_and_best_case():
    b = score(FULL, EX)
    assert tuple(b.components) == REWARD_PARTS
    assert b.components == {"direction": 2.5, "magnitude": 2.0, "confidence": 2.5, "data_utilization": 3.0, "format": 1.0}
    assert b.total == HI == 11.0
    assert b.prediction.direction == "up" and b.n_references >= 5


def test_worst_case_is_the_documented_minimum():
    b = score("Day 1: down 5% (confidence 99)", EX)  # why: confident, wrong, not even the exact format
    assert b.total == LO == -1.5


def test_weights_multiply_parts_and_validate():
    b = score(FULL, EX, {"direction": 2.0, "format": 0.0})
    assert b.components["direction"] == 5.0 and b.components["format"] == 0.0
    assert b.total == pytest.approx(5.0 + 2.0 + 2.5 + 3.0)
    assert reward_bounds({"confidence": -1.0}) == (-2.5, 11.0 - 2.5 + 1.5)  # a negative weight swaps the ends
    with pytest.raises(ValueError, match="unknown parts"):
        score(FULL, EX, {"directoin": 1.0})
    with pytest.raises(ValueError, match="finite"):
        score(FULL, EX, {"direction": float("nan")})


def test_registry_matches_config_parts():
    assert tuple(REWARD_FUNCS) == REWARD_PARTS


def test_score_accepts_parquet_row_dict_and_batch():
    assert score(FULL, ROW).total == score(FULL, EX).total
    out = score_batch([FULL, "junk"], [ROW, EX])
    assert [b.total for b in out] == [11.0, 0.0]
    with pytest.raises(ValueError, match="one example per completion"):
        score_batch([FULL], [EX, EX])


@pytest.mark.parametrize("text,expected", [
    (FULL, {"direction": 2.5, "magnitude": 2.0, "confidence": 2.0}),  # why: all three days right; conf mean (2.5+2+1.5)/3
    (line(1, "UP", 1.3, 85), {"direction": 2.5 / 3, "magnitude": 2.0 / 3, "confidence": 2.5 / 3}),  # why: days 2-3 missing
    ("\n".join([line(1, "UP", 1.3, 85), line(2, "UP", 0.8, 85), line(3, "DOWN", 0.4, 85)]),
     {"direction": 2.5 / 3, "magnitude": 2.0 / 3, "confidence": (2.5 - 1.5 - 1.5) / 3}),  # why: days 2-3 wrong
], ids=["all-right", "day1-only", "later-wrong"])
def test_multi_horizon(text, expected):
    b = score(text, EX, multi_horizon=True)
    for k, v in expected.items():
        assert b.components[k] == pytest.approx(v)


@pytest.mark.parametrize("freq,actual,weight", [
    ({"up": 0.5, "down": 0.5}, "up", 1.0),  # why: balanced market: no change
    ({"up": 0.55, "down": 0.45}, "up", 0.5 / 0.55),  # why: majority class earns less
    ({"up": 0.55, "down": 0.45}, "down", 0.5 / 0.45),  # why: minority class earns more
    ({"up": 0.9, "down": 0.1}, "down", BIAS_CLIP[1]),  # why: 5x is clipped to 2x
    ({"up": 0.0, "down": 1.0}, "up", BIAS_CLIP[1]),  # why: unseen class: the upper clip, no division by zero
    ({"up": 1.0}, "up", BIAS_CLIP[0]),  # why: 0.5/1.0 = 0.5, the lower clip
    ({"down": 0.4}, "up", 1.0),  # why: missing class: neutral
    ({"up": float("nan")}, "up", 1.0),  # why: non-finite stats: neutral
    (None, "up", 1.0),  # why: bias adaptation off
], ids=["balanced", "majority", "minority", "clip-high", "zero", "clip-low", "missing", "nan", "off"])
def test_bias_weight(freq, actual, weight):
    assert bias_weight(actual, freq) == pytest.approx(weight)


def test_bias_adaptation_makes_majority_guessing_no_better():
    freq = {"up": 0.6, "down": 0.4}
    up_ex, down_ex = EX, Example.from_row({**ROW, "direction_1": "down", "change_pct_1": -1.3})
    def expected(answer):
        return (0.6 * score(answer, up_ex, class_freq=freq).components["direction"]
                + 0.4 * score(answer, down_ex, class_freq=freq).components["direction"])
    assert expected("Day 1: UP 1%") == pytest.approx(expected("Day 1: DOWN 1%"))
    assert score(FULL, EX, class_freq=freq).total <= BIAS_HI


# ---------------------------------------------------------------- malformed input
MALFORMED = [
    ("", "empty"),  # why: empty completion
    ("   \n\t  ", "whitespace"),  # why: only whitespace
    ("asdf qwer zxcv " * 50, "garbage"),  # why: random words
    ("Day 1: UP 1e308% with 1e308% confidence", "1e308"),  # why: huge but finite numbers
    ("Day 1: UP 1e999% with 1e-999% confidence", "overflow"),  # why: overflow to inf and underflow to 0
    ("Day 1: DOWN inf% with -inf% confidence", "inf"),  # why: infinities
    ("Day 1: UP nan% with nan% confidence", "nan"),  # why: NaN tokens
    ("Day 0: UP 1% with 90% confidence\nDay 4: DOWN 2% with 90% confidence", "wrong-days"),  # why: labels outside 1-3
    ("Day 1: UP 1% with 90% confidence\n" * 5000, "repeated-lines"),  # why: the same line 5000 times
    ("Day 1: UP 1% with 90% confidence " + "9" * 100_000, "long-digits"),  # why: a 100k-digit number
    ("x" * 1_000_000, "megabyte"),  # why: a 1 MB completion
    ("Day 1: " + "UP " * 300_000, "megabyte-directions"),  # why: ~1 MB of direction words
    ("day" * 300_000 + " 1: UP 1%", "many-labels"),  # why: label-like text everywhere
    ("Day 1: ⬆️ ＵＰ 1.2％ with ８０％ confidence 🚀📈", "unicode"),  # why: emoji and full-width characters
    ("Día 1: SUBIDA 1,2% con 80% de confianza", "spanish"),  # why: another language
    ("**__`Day 1`__**: ***~~UP~~*** **1.2%** with ***80%*** confidence", "nested-markdown"),  # why: nested markdown
    ("```\nDay 1: UP 1% with 80% confidence\n```", "code-fence"),  # why: inside a code block
    ("Day 1: UP 1,234,567,890,123.5% with 1,000% confidence", "commas"),  # why: huge comma-grouped numbers
    ("Day 1: UP 1% with 80% confidence\r\nJustification: \x00\x01\x7f", "control-chars"),  # why: NUL and CRLF
    ("\ud800 broken surrogate Day 1: UP 1%", "surrogate"),  # why: an unpaired surrogate
    ("Day 1:" * 10_000, "bare-labels"),  # why: labels without content
    ("$" * 50_000 + "%" * 50_000, "symbols"),  # why: only unit symbols
    ("2024-03-15 " * 10_000, "date-spam"),  # why: one grounded date repeated
    ("Day 1: UP -.5e3% with +.9 confidence", "odd-numbers"),  # why: signed, leading-dot and exponent numbers
    ("Day 1: UP 1% with 80% confidence. " + "(((((" * 10_000, "parens"),  # why: bracket spam
    ([{"role": "assistant", "content": None}], "chat-none"),  # why: chat message without content
    ([{"role": "assistant", "content": [{"type": "text", "text": "Day 1: UP 1%"}]}], "chat-blocks"),  # why: content blocks
    (None, "none"),  # why: not even a string
    (12345, "int"),  # why: a number instead of text
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("text", [t for t, _ in MALFORMED], ids=[i for _, i in MALFORMED])
def test_malformed_completions_are_finite_and_bounded(text):
    for mh in (False, True):
        b = score(text, EX, multi_horizon=mh)
        assert math.isfinite(b.total) and LO <= b.total <= HI
        assert all(math.isfinite(v) for v in b.components.values())
        for p in parse_all(text).values():
            assert p.percentage is None or math.isfinite(p.percentage)
            assert p.confidence is None or 0.0 <= p.confidence <= 100.0


def test_every_part_alone_is_bounded_on_malformed():
    for text, _ in MALFORMED:
        for fn in REWARD_FUNCS.values():
            assert math.isfinite(fn(text, EX, None))


# ------------------------------------------------------------------- property
try:  # hypothesis is an optional dev dependency: without it only this test is skipped
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:
    given = None

if given is not None:
    _pieces = st.sampled_from(["Day 1:", "Day 2:", "Day 3:", "UP", "DOWN", "%", "with", "confidence", "Justification:",
                               "$123.46", "2024-03-15", "1e308", "nan", "-", "**", "\n", " ", "1.3", "85", "999"])

    @settings(max_examples=200, deadline=None)
    @given(st.one_of(st.text(max_size=400), st.lists(_pieces, max_size=60).map(" ".join)),
           st.booleans(), st.one_of(st.none(), st.floats(0, 1)))
    def test_score_never_raises_and_stays_in_bounds(text, mh, p_up):
        freq = None if p_up is None else {"up": p_up, "down": 1 - p_up}
        b = score(text, EX, multi_horizon=mh, class_freq=freq)
        lo, hi = reward_bounds(bias_adaptation=freq is not None)
        assert math.isfinite(b.total) and lo <= b.total <= hi
else:
    def test_score_never_raises_and_stays_in_bounds():
        pytest.skip("hypothesis is not installed (pip install hypothesis)")


# ------------------------------------------------------------------------- TRL
def _trl_columns(rows):
    return {k: [r[k] for r in rows] for k in rows[0]}


def test_trl_functions_named_and_called_like_trl():
    funcs = trl_reward_funcs({"format": 2.0})
    assert [f.__name__ for f in funcs] == list(REWARD_PARTS)
    completions = [[{"role": "assistant", "content": FULL}], [{"role": "assistant", "content": "junk"}]]
    cols = _trl_columns([ROW, ROW])
    got = {f.__name__: f(prompts=["p", "p"], completions=completions, completion_ids=[[1], [2]],
                         trainer_state=None, log_extra=None, log_metric=None, **cols) for f in funcs}
    assert got["format"] == [2.0, 0.0] and got["direction"] == [2.5, 0.0]
    assert pickle.loads(pickle.dumps(funcs[0]))(completions=[FULL], **_trl_columns([ROW])) == [2.5]


def test_trl_missing_columns_say_what_to_do():
    with pytest.raises(ValueError, match="stonk data build"):
        trl_reward_funcs()[0](completions=["x"], ticker=["ACME"])


def test_trl_grpo_trainer_reward_plumbing():
    trl = pytest.importorskip("trl")
    from trl.trainer.grpo_trainer import GRPOTrainer
    from trl.trainer.utils import get_callable_name

    funcs = trl_reward_funcs(class_freq=lambda: {"up": 0.5, "down": 0.5})
    fake = SimpleNamespace(
        accelerator=SimpleNamespace(device="cpu", is_main_process=True), args=SimpleNamespace(report_to=[]),
        state=SimpleNamespace(global_step=0), reward_funcs=funcs, reward_processing_classes=[None] * len(funcs),
        reward_func_names=[get_callable_name(f) for f in funcs], environments=None,
        _log_completion_extra=lambda *a, **k: None, _log_metric=lambda *a, **k: None)
    inputs = [{"prompt": "p", **ROW}, {"prompt": "p", **ROW}]
    rewards = GRPOTrainer._calculate_rewards(fake, inputs, ["p", "p"], [FULL, "Day 1: DOWN 1%, confidence 90"],
                                             [[1], [2]])
    assert fake.reward_func_names == list(REWARD_PARTS) and trl.__version__
    assert rewards.shape == (2, 5)
    assert rewards.sum(dim=1).tolist() == pytest.approx([11.0, -1.5])
