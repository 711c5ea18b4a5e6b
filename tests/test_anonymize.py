"""Anonymised prompts (stonklib.data.anonymize): nothing recognisable shown, the numbers kept, the rewards grounded alike."""

from __future__ import annotations

import re

import pytest

from stonklib.data.anonymize import anonymize, neutral_id, relative_dates
from stonklib.data.records import Example, HistoryRow
from stonklib.prompts import TEMPLATES, build_prompt
from stonklib.rewards import score

DATES = ["2010-06-08", "2010-06-07", "2010-06-04", "2010-06-03", "2010-06-02", "2010-06-01", "2010-05-28",
         "2010-05-27", "2010-05-26", "2010-05-25", "2010-05-24", "2010-05-21"]


def example() -> Example:
    closes = [29.84, 30.10, 30.34, 32.40, 32.22, 31.5, 31.0, 30.7, 30.2, 30.9, 31.4, 31.1]
    return Example(ticker="A", date=DATES[0], close=29.84, previous_close=30.10, change_pct_1=1.2, change_pct_2=-0.4,
                   change_pct_3=0.3, direction_1="up", direction_2="down", direction_3="up", flat_1=False,
                   history=tuple(HistoryRow(d, c, 1000.0 + i) for i, (d, c) in enumerate(zip(DATES, closes, strict=True))),
                   name="Agilent Technologies Inc.", sector="Health Care", industry="Health Care Equipment & Services",
                   description="Agilent makes instruments.", news=("Agilent beats estimates",),
                   return_1d=-0.86, return_5d=-5.21, return_10d=-4.97, volatility_10d=2.81, volume_ratio=1.82,
                   financial_metrics={"Basic EPS": 2.1}, financials_date="2009-10-31", news_date=DATES[0])


@pytest.mark.parametrize("version", list(TEMPLATES))
def test_an_anonymised_prompt_shows_nothing_recognisable(version):
    text = build_prompt(example(), version, anonymized=True)
    for clue in ("Agilent", "A.", "Ticker: A\n", "Equipment", "beats", "EPS", "29.84", "2010", "2009"):
        assert clue not in text, clue
    assert neutral_id("A") in text and "100.00" in text and "Health Care" in text
    assert not re.search(r"\d{4}-\d{2}-\d{2}", text)


def test_the_numbers_a_prompt_shows_are_rescaled_prices_and_unchanged_percentages():
    anon = anonymize(example())
    assert anon.close == pytest.approx(100.0) and anon.previous_close == pytest.approx(100 * 30.10 / 29.84)
    assert anon.day_change_pct == pytest.approx(example().day_change_pct)
    assert (anon.return_5d, anon.volatility_10d, anon.change_pct_1, anon.direction_1) == (-5.21, 2.81, 1.2, "up")
    assert anon.date == example().date and anonymize(anon) == anon  # the key stays; twice is once
    text = build_prompt(anon, "compact_format")
    assert "return_5d -5.21%" in text and "(previous $100.87, -0.86%)" in text


def test_relative_dates():
    ex = example()
    assert relative_dates("2010-06-08 then 2010-06-04 and 1999-01-01", ex) == "t then t-2 and t-?"


def test_the_rewards_ground_what_the_anonymised_prompt_shows():
    completion = ("Day 1: up 1.0% with 60% confidence\nDay 2: down 1.0% with 55% confidence\n"
                  "Day 3: up 1.0% with 55% confidence\nJustification: the close of $100.00 after $100.87, "
                  "return_5d -5.21%, return_10d -4.97%, volatility_10d 2.81%.")
    assert score(completion, anonymize(example())).components["data_utilization"] == 3.0
    assert score(completion, example()).components["data_utilization"] < 3.0  # $100.00 is no real price


def test_a_warmup_target_from_an_anonymised_record_grounds_in_full():
    from stonklib.warmup.targets import build_target

    t = build_target(anonymize(example()), "coin", seed=1)
    assert t is not None and t.data_utilization == 3.0 and t.format == 1.0


def test_the_anonymize_switch_reaches_the_training_examples(monkeypatch, tmp_path):
    from stonklib.config import TrainConfig
    from stonklib.grpo import launch

    cfg = TrainConfig(anonymize=True, max_train_samples=8, max_eval_samples=4)
    train, val = launch.load_examples_for(cfg)
    assert all(e.ticker.startswith("STOCK-") and e.close == pytest.approx(100.0) for e in train + val)
