"""Prompt templates: the seed snapshot, content, time safety, chat formatting, truncation, token stats.

Snapshots live in tests/snapshots/; after an intended template change, regenerate
them with ``STONK_UPDATE_SNAPSHOTS=1 pytest tests/test_prompts.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from stonklib.data.records import Example
from stonklib.prompts import (
    TEMPLATES,
    TRUNCATION_MARKER,
    apply_chat_template,
    build_prompt,
    chat_messages,
    count_tokens,
    fit_prompt,
    token_stats,
)

SNAP = Path(__file__).parent / "snapshots"
ROW = json.loads((SNAP / "acme_example.json").read_text())
EX = Example.from_row(ROW)
TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "models" / "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def tok():
    if not (TOKENIZER_DIR / "tokenizer.json").exists():
        pytest.skip("embedded SmolLM2 tokenizer not fetched (stonk model fetch smollm2)")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def plain_tok(tok):
    """The same tokenizer without a chat template."""
    from transformers import AutoTokenizer
    t = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    t.chat_template = None
    return t


# --------------------------------------------------------------------- snapshots
@pytest.mark.parametrize("version", ["seed", "compact", "compact_example"])
def test_snapshot(version):
    path = SNAP / f"prompt_{version}.txt"
    text = build_prompt(EX, version)
    if os.environ.get("STONK_UPDATE_SNAPSHOTS"):
        path.write_text(text)
    assert text == path.read_text(), f"{version} prompt changed; if intended, regenerate (see module docstring)"


def test_example_template_is_compact_with_a_filled_in_answer_that_scores_as_well_formatted():
    from stonklib.rewards import parse_all

    compact, example = build_prompt(EX, "compact"), build_prompt(EX, "compact_example")
    assert example.split("Predict the next")[0] == compact.split("Predict the next")[0]  # same data section
    assert "[UP/DOWN]" not in example
    answer = "\n".join(line for line in example.splitlines() if line.startswith("Day "))
    assert all(p.well_formatted for p in parse_all(answer).values())  # the example is the rewarded format


def test_registry_has_seed_default_and_an_alternative():
    assert {"seed", "compact"} <= set(TEMPLATES)
    assert build_prompt(EX) == build_prompt(EX, "seed")
    with pytest.raises(ValueError, match="use one of"):
        build_prompt(EX, "nope")


# ----------------------------------------------------------------------- content
def test_seed_sections_in_order():
    text = build_prompt(EX)
    heads = ["COMPANY INFORMATION:", "RECENT HISTORICAL DATA:", "RECENT NEWS:", "FINANCIAL METRICS:", "TASK:"]
    assert [text.index(h) for h in heads] == sorted(text.index(h) for h in heads)
    assert text.startswith("You are a stonk market analyst tasked with predicting the price movement for ACME.")
    for needle in ("Current Price: $123.46", "Previous Close: $121.00", "Day Change: 2.03%",
                   "Description: Acme Corporation. Sector: Industrials. Industry: Machinery.",
                   "next 3 trading days", "Day X: [UP/DOWN] [PERCENTAGE]% with [CONFIDENCE]% confidence",
                   "Justification: [Your reasoning using specific data points]",
                   "- pe_ratio: 21.5", "- market_cap: 2500000000", "- return_5d: 4.94%", "- volume_ratio: 1.18"):
        assert needle in text


def test_seed_history_is_15_rows_most_recent_first():
    rows = re.findall(r"^- (\d{4}-\d{2}-\d{2}): Close \$[\d.]+, Volume: \d+$", build_prompt(EX), re.M)
    assert len(rows) == 15 and len(EX.history) == 17
    assert rows == sorted(rows, reverse=True) and rows[0] == EX.date


def test_news_capped_at_8_and_omitted_when_absent():
    many = Example.from_row({**ROW, "news": [f"headline {i}" for i in range(12)]})
    text = build_prompt(many)
    assert "headline 7" in text and "headline 8" not in text
    assert "RECENT NEWS" not in build_prompt(Example.from_row({**ROW, "news": []}))


@pytest.mark.parametrize("name,description,shown", [
    ("", "Makes anvils.", "Makes anvils."),
    ("Acme Corp", "Makes anvils.", "Acme Corp. Makes anvils."),  # the name is shown once, before the description
    ("Acme Corp", "Acme Corp makes anvils.", "Acme Corp makes anvils."),
])
def test_description_used_when_present(name, description, shown):
    ex = Example.from_row({**ROW, "name": name, "description": description})
    assert f"Description: {shown}\n" in build_prompt(ex)


def test_accepts_parquet_row_dict():
    assert build_prompt(ROW) == build_prompt(EX)


@pytest.mark.parametrize("version", sorted(TEMPLATES))
def test_every_number_is_dated_on_or_before_the_as_of_date(version):
    # A leaked future row and distinctive labels: none may reach the prompt.
    future = {"date": "2024-03-18", "close": 777.77, "volume": 8888888.0}
    leaky = Example.from_row({**ROW, "history": [future, *ROW["history"]], "change_pct_1": 6.54321,
                              "change_pct_2": -5.4321, "change_pct_3": 4.321})
    text = build_prompt(leaky, version)
    dates = re.findall(r"\d{4}-\d{2}-\d{2}", text)
    assert dates and all(d <= leaky.date for d in dates)
    for leaked in ("777.77", "8888888", "6.54", "5.43", "4.32", "2024-03-18"):
        assert leaked not in text
    assert text == build_prompt(EX, version)  # the leak changes nothing


def test_compact_is_shorter_and_keeps_the_answer_format():
    seed, compact = build_prompt(EX, "seed"), build_prompt(EX, "compact")
    assert len(compact) < len(seed) / 2
    assert "Day X: [UP/DOWN] [PERCENTAGE]% with [CONFIDENCE]% confidence" in compact


# ---------------------------------------------------------------------- chat
def test_chat_messages():
    assert chat_messages(EX) == [{"role": "user", "content": build_prompt(EX)}]
    msgs = chat_messages(EX, "compact", system="Be brief.")
    assert msgs[0] == {"role": "system", "content": "Be brief."} and msgs[1]["role"] == "user"


def test_apply_chat_template(tok, plain_tok):
    text = apply_chat_template(tok, "hello", system="sys")
    assert "hello" in text and "sys" in text and text.rstrip().endswith("assistant")
    assert apply_chat_template(plain_tok, "hello") == "hello\n"
    assert apply_chat_template(plain_tok, "hello", system="sys") == "sys\n\nhello\n"


# ------------------------------------------------------------------ truncation
LONG = Example.from_row({**ROW, "description": "Acme makes anvils, rockets and giant magnets. " * 60,
                         "news": [f"Acme headline number {i} about anvils" for i in range(10)]})


def test_fit_prompt_no_truncation_when_it_fits(tok):
    fp = fit_prompt(EX, tok, 4096)
    assert not fp.truncated and (fp.history_rows_kept, fp.news_kept) == (15, 2)
    assert fp.n_tokens == count_tokens(tok, fp.text) and build_prompt(EX) in fp.text


def test_fit_prompt_drops_oldest_history_first(tok):
    full = fit_prompt(LONG, tok, 100_000).n_tokens
    fp = fit_prompt(LONG, tok, full - 60)
    assert fp.truncated and fp.n_tokens <= full - 60
    assert 1 <= fp.history_rows_kept < 15 and fp.news_kept == 8
    kept = re.findall(r"^- (\d{4}-\d{2}-\d{2}): Close", fp.text, re.M)
    assert kept == [h.date for h in EX.history[: fp.history_rows_kept]]  # the most recent survive


def test_fit_prompt_then_drops_news(tok):
    one_row = count_tokens(tok, apply_chat_template(tok, TEMPLATES["seed"].parts(LONG, 1, 8).text))
    budget = one_row - 20  # even a single history row with all news does not fit
    fp = fit_prompt(LONG, tok, budget)
    assert fp.history_rows_kept == 1 and fp.news_kept < 8 and fp.n_tokens <= budget


@pytest.mark.parametrize("version", sorted(TEMPLATES))
def test_fit_prompt_last_resort_cuts_the_middle_not_the_task(tok, version):
    budget = 400
    fp = fit_prompt(LONG, tok, budget, version)
    assert fp.truncated and fp.n_tokens <= budget and fp.news_kept == 0
    assert TRUNCATION_MARKER in fp.text
    task = TEMPLATES[version].parts(EX).task
    head = TEMPLATES[version].parts(EX).head
    assert task in fp.text and head in fp.text


def test_fit_prompt_too_small_budget_says_how_to_fix(tok):
    with pytest.raises(ValueError, match="raise max_prompt_tokens"):
        fit_prompt(EX, tok, 50)


def test_token_stats(tok):
    df = token_stats([EX, ROW, LONG], tok, ["seed", "compact"], max_prompt_tokens=700)
    assert len(df) == 6 and {"n_tokens", "truncated", "version"} <= set(df.columns)
    assert (df["n_tokens"] <= 700).all()
    assert df.loc[df.version == "compact", "n_tokens"].max() < df.loc[df.version == "seed", "n_tokens_full"].min()
    assert df["truncated"].tolist() == (df["n_tokens_full"] > 700).tolist()
