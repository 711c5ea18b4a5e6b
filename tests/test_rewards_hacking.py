"""Reward-hacking probes: cheap tricks a policy could learn must not pay.

Same hand-made example as test_rewards.py (ACME 2024-03-15, actual day 1 +1.3%).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stonklib.data.records import Example
from stonklib.prompts import build_prompt
from stonklib.rewards import data_utilization_reward, ground, score

ROW = json.loads((Path(__file__).parent / "snapshots" / "acme_example.json").read_text())
EX = Example.from_row(ROW)
EX_DOWN = Example.from_row({**ROW, "direction_1": "down", "change_pct_1": -1.3})

ANSWER = ("Day 1: UP 1.3% with 85% confidence\n"
          "Justification: close $123.46 on 2024-03-15 vs $121.00 on 2024-03-14, volume 1,234,567.\n"
          "Day 2: DOWN 0.8% with 65% confidence\nJustification: mean reversion.\n"
          "Day 3: UP 0.4% with 55% confidence\nJustification: trend.")
MODEST = "Day 1: UP 1.3% with 85% confidence\nJustification: the close was $123.46."


@pytest.mark.parametrize("text", [
    # why: invented ISO dates, repeated
    "Justification: 2031-01-01, 2031-01-02, 2031-01-03, 2031-01-04, 2031-01-05 " * 20,
    # why: invented prices with dollar signs
    "Justification: $1.00 $2.00 $3.00 $4.00 $5.00 $6.00 $7.00 " * 20,
    # why: invented percentages
    "Justification: 11.11% 22.22% 33.33% 44.44% 55.55% " * 20,
    # why: invented volumes in every format
    "Justification: volume of 5555555, 6,666,666 shares, 7.77M, 8.88 million",
    # why: dates written in words that are not in the prompt
    "Justification: January 1, 2031 and 2 Feb 2031 and 03/04/2031.",
    # why: a 1-to-1000 integer spray that covers every close, plus a few hundredths
    "Justification: " + " ".join(str(i) for i in range(1, 1001)) + " 123.46 121.00",
    # why: a decimal spray stepping through the price range
    "Justification: " + " ".join(f"${100 + i / 100:.2f}" for i in range(0, 3000, 7)),
    # why: real values placed only on the prediction line do not count
    "Day 1: UP 2.03% with 21.5% confidence",
    # why: small integers ("5-day", "3 days") are not data
    "Justification: the 5-day and 10-day windows over 3 days.",
    # why: history rows 16-17 exist in the record but are not shown in the prompt
    "Justification: 2024-02-21 and 2024-02-22 closes $108.91 and $109.83.",
], ids=["dates", "prices", "percents", "volumes", "word-dates", "int-spray", "decimal-spray", "pred-line",
        "small-ints", "hidden-rows"])
def test_ungrounded_or_sprayed_references_earn_nothing(text):
    assert data_utilization_reward(text, EX) == 0.0


def test_spray_diluting_real_references_is_zeroed():
    # why: five real values hidden in 200 fake ones: the spray guard wins
    real = "2024-03-15 $123.46 $121.00 1,234,567 2.03%"
    fake = " ".join(f"{900 + i}.{i % 100:02d}" for i in range(200))
    g = ground(f"Justification: {real} {fake}", EX)
    assert g.sprayed and g.n_references == 0


@pytest.mark.parametrize("padding", [
    "\n" + "lorem ipsum dolor sit amet " * 2000,  # why: junk words
    "\n" + "$999.99 2031-01-01 77.7% " * 200,  # why: invented data
    "\n" + "Day 1: DOWN 9% with 99% confidence\n" * 50,  # why: contradicting lines after the answer
    "\n" + "Day 4: UP 1% with 90% confidence\nDay 5: UP 1% with 90% confidence",  # why: days that are not asked
    "\n```\nDay 1: UP 1.3% with 85% confidence\n```" * 10,  # why: the answer again in code fences
    "\n" + "x" * 1_000_000,  # why: a megabyte of filler
], ids=["junk", "fake-data", "contradict", "extra-days", "fenced-repeats", "megabyte"])
@pytest.mark.parametrize("answer", [ANSWER, MODEST], ids=["full", "modest"])
def test_padding_an_answer_never_raises_its_reward(answer, padding):
    assert score(answer + padding, EX).total <= score(answer, EX).total


@pytest.mark.parametrize("n", [2, 10, 500], ids=lambda n: f"x{n}")
def test_repeating_the_day1_line_does_not_help(n):
    # why: each part is capped per completion; repetition adds no new day, value or line credit
    once = score(MODEST, EX).total
    assert score("\n".join([MODEST] * n), EX).total <= once


@pytest.mark.parametrize("hedge", [
    "Day 1: UP/DOWN 1.3% with 85% confidence",  # why: both in one slot
    "Day 1: UP or DOWN 1.3% with 85% confidence",  # why: spelled-out hedge
    "Day 1: DOWN 1.3% with 85% confidence\nDay 1: UP 1.3% with 85% confidence",  # why: two Day 1 lines
    "Day 1: UP 1.3% with 85% confidence\nDay 1: DOWN 1.3% with 85% confidence",  # why: the other order
], ids=["slash", "or", "down-then-up", "up-then-down"])
def test_claiming_both_directions_does_not_beat_committing(hedge):
    # Summed over an up day and a down day, the hedge must not beat the best single committed answer.
    singles = [f"Day 1: {d} 1.3% with 85% confidence" for d in ("UP", "DOWN")]
    best_single = max(score(s, EX).total + score(s, EX_DOWN).total for s in singles)
    assert score(hedge, EX).total + score(hedge, EX_DOWN).total <= best_single
    assert score(hedge, EX).prediction.direction in ("unknown", "down", "up")


def test_first_day1_line_wins_so_a_revision_cannot_fish():
    # why: "revising" after a wrong first answer must not collect the right direction
    wrong_then_right = "Day 1: DOWN 1.3% with 10% confidence\nDay 1 (revised): UP 1.3% with 90% confidence"
    assert score(wrong_then_right, EX).components["direction"] == 0.0


def test_confidence_above_100_is_no_better_than_100():
    a = score("Day 1: UP 1.3% with 100% confidence", EX).total
    b = score("Day 1: UP 1.3% with 100000% confidence", EX).total
    assert b <= a


def test_echoing_the_prompt_is_capped_like_a_good_justification():
    # why: quoting every prompt value is still at most the 5-reference tier (3.0), never more
    echo = build_prompt(EX) + "\n" + ANSWER
    assert score(echo, EX).components["data_utilization"] == 3.0
    assert score(echo, EX).total <= score(ANSWER, EX).total


def test_giant_percentage_earns_only_the_lowest_magnitude_tier():
    assert score("Day 1: UP 1e300% with 85% confidence", EX).components["magnitude"] == 0.5
