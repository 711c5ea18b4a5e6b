"""Named prompt templates, ``build_prompt``, chat formatting, safe truncation and token statistics.

``TEMPLATES["seed"]`` (the default) reproduces, section for section, the Stage II
prompt of the seed (the DeepStock / Stonk-Trainer v2 ``train_stage2.py``
``format_prompt``): the analyst role; company information (ticker, description,
current price, previous close, day change %); up to 15 history rows of date,
close and volume, most recent first; up to 8 news items; the financial metrics;
and the task block asking for 3 trading days in the format::

    Day X: [UP/DOWN] [PERCENTAGE]% with [CONFIDENCE]% confidence
    Justification: [Your reasoning using specific data points]

Its wording, including the seed's "stonk", is kept so a Stage I model trained on
it sees the same text. Where it departs from the seed:

- the seed tokenised the raw prompt; here it is wrapped in the model's chat
  template (``apply_chat_template``, ``add_generation_prompt=True``);
- with no description (the S&P 500 source has none) the name, sector and
  industry stand in;
- the derived metrics (return_1d/5d/10d, volatility_10d in %, volume_ratio) are
  listed with the source's ``financial_metrics``; news items are plain strings;
- history rows dated after the as-of date are dropped, so every number in a
  prompt is dated on or before it (the data layer already guarantees this; the
  prompt does not trust it).

``TEMPLATES["compact"]`` says the same in far fewer tokens (5 rows, 3 news items,
terse wording) so a notebook can compare the two.

``TEMPLATES["compact_example"]`` is ``compact`` with the placeholders replaced by one
filled-in example answer (``Day 1: DOWN 1.2% with 60% confidence``). Small models echo
``[UP/DOWN] [PERCENTAGE]%`` placeholders back instead of answering, and the example
gives them a format to copy; but its fixed direction and numbers anchor the answer: a
policy that copies it answers DOWN to every prompt and GRPO goes silent
(``docs/learning.md``). It is kept for that comparison.

``TEMPLATES["compact_format"]`` shows the format with ``<up or down> <x.x>%`` slots that
fix no direction and no number; the shipped configs use it, after the format warm-up
(:mod:`stonklib.warmup`) has taught the model to fill them.

``fit_prompt`` keeps a prompt within ``max_prompt_tokens``: it drops the oldest
history rows first (keeping the most recent one), then news items, and as a last
resort cuts tokens from the *start* of the middle section (company text first),
never the role line or the task block.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from stonklib.data.anonymize import anonymize, is_anonymized, relative_dates
from stonklib.data.records import Example, HistoryRow

TRUNCATION_MARKER = "[...]\n"


class PromptParts(NamedTuple):
    head: str  # the role line: never truncated
    middle: str  # company info, history, news, metrics: truncated first
    task: str  # the instructions and answer format: never truncated

    @property
    def text(self) -> str:
        return self.head + self.middle + self.task


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    description: str
    max_history: int
    max_news: int
    render: Callable[[Example, int, int], PromptParts]  # (example, history rows, news items)

    def parts(self, example: Example, history_rows: int | None = None, news_items: int | None = None) -> PromptParts:
        """The prompt's pieces; an anonymised record (:mod:`stonklib.data.anonymize`) shows its dates relative to it."""
        h = self.max_history if history_rows is None else min(history_rows, self.max_history)
        n = self.max_news if news_items is None else min(news_items, self.max_news)
        parts = self.render(example, max(0, h), max(0, n))
        if is_anonymized(example):
            parts = PromptParts(*(relative_dates(p, example) for p in parts))
        return parts


# ----------------------------------------------------------------------- helpers
def visible_history(example: Example) -> list[HistoryRow]:
    """History rows on or before the as-of date, most recent first."""
    rows = [h for h in example.history if h.date <= example.date]
    return sorted(rows, key=lambda h: h.date, reverse=True)


def describe(example: Example) -> str:
    """The description (after the company's name, unless it already says it), or name/sector/industry when
    the source has none."""
    text, name = example.description.strip(), example.name.strip()
    if text:
        return text if not name or name.lower() in text.lower() else f"{name}. {text}"
    bits = [example.name.strip() or example.ticker]
    if example.sector.strip():
        bits.append(f"Sector: {example.sector.strip()}")
    if example.industry.strip():
        bits.append(f"Industry: {example.industry.strip()}")
    return ". ".join(bits) + "."


def metrics(example: Example) -> list[tuple[str, str]]:
    """(name, formatted value): the source's numeric metrics (after their report's date, where the source
    dates them), then the derived ones that exist."""
    out = [(str(k), _num(v)) for k, v in dict(example.financial_metrics).items() if _finite(v)]
    if out and example.financials_date:
        out.insert(0, ("report_date", example.financials_date))
    for k in ("return_1d", "return_5d", "return_10d", "volatility_10d"):
        v = getattr(example, k)
        if _finite(v):
            out.append((k, f"{v:.2f}%"))
    if _finite(example.volume_ratio):
        out.append(("volume_ratio", f"{example.volume_ratio:.2f}"))
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _num(v: float) -> str:
    if isinstance(v, int) or float(v).is_integer():
        return str(int(v))
    return f"{v:.4f}".rstrip("0").rstrip(".")


def _volume(v: float) -> str:
    return str(int(round(v))) if math.isfinite(v) else "n/a"


# --------------------------------------------------------------------- templates
_SEED_TASK = """
TASK:
Based on the information provided, predict the stonk price movement for the next 3 trading days.
For each day, provide:
1. Direction (up or down)
2. Percentage change estimate (e.g., up 1.2%)
3. Your confidence level (0-100%)
4. Brief justification referencing specific data points

Use this format for each day:
Day X: [UP/DOWN] [PERCENTAGE]% with [CONFIDENCE]% confidence
Justification: [Your reasoning using specific data points]

Respond with your analysis and predictions below:
"""


def _render_seed(ex: Example, n_hist: int, n_news: int) -> PromptParts:
    head = f"You are a stonk market analyst tasked with predicting the price movement for {ex.ticker}.\n\n"
    lines = [
        "COMPANY INFORMATION:",
        f"Ticker: {ex.ticker}",
        f"Description: {describe(ex)}",
        f"Current Price: ${ex.close:.2f}",
        f"Previous Close: ${ex.previous_close:.2f}",
        f"Day Change: {ex.day_change_pct:.2f}%",
        "",
        "RECENT HISTORICAL DATA:",
    ]
    rows = visible_history(ex)[:n_hist]
    lines += [f"- {h.date}: Close ${h.close:.2f}, Volume: {_volume(h.volume)}" for h in rows]
    if not rows:
        lines.append("No historical data available")
    if ex.news and n_news:
        lines += ["", "RECENT NEWS:", *(f"- {item}" for item in ex.news[:n_news])]
    mets = metrics(ex)
    if mets:
        lines += ["", "FINANCIAL METRICS:", *(f"- {k}: {v}" for k, v in mets)]
    return PromptParts(head, "\n".join(lines) + "\n", _SEED_TASK)


_COMPACT_TASK = """
Predict the next 3 trading days. For each day write exactly:
Day X: [UP/DOWN] [PERCENTAGE]% with [CONFIDENCE]% confidence
Justification: [one sentence citing the data above]
"""


_EXAMPLE_TASK = """
Predict the next 3 trading days. Answer in exactly this form (the numbers are only an example):
Day 1: DOWN 1.2% with 60% confidence
Day 2: UP 0.4% with 55% confidence
Day 3: UP 0.7% with 52% confidence
Justification: [one sentence citing the data above]
"""


def _render_compact(ex: Example, n_hist: int, n_news: int, task: str = _COMPACT_TASK) -> PromptParts:
    head = f"You are a stock analyst. Ticker: {ex.ticker}.\n"
    lines = [
        describe(ex),
        f"Close ${ex.close:.2f} on {ex.date} (previous ${ex.previous_close:.2f}, {ex.day_change_pct:+.2f}%).",
    ]
    rows = visible_history(ex)[:n_hist]
    if rows:
        lines.append("Date, close, volume (newest first):")
        lines += [f"{h.date} {h.close:.2f} {_volume(h.volume)}" for h in rows]
    if ex.news and n_news:
        lines.append("News: " + " | ".join(ex.news[:n_news]))
    mets = metrics(ex)
    if mets:
        lines.append("Metrics: " + ", ".join(f"{k} {v}" for k, v in mets))
    return PromptParts(head, "\n".join(lines) + "\n", task)


_FORMAT_TASK = """
Predict the next 3 trading days. Answer with exactly these four lines, filling in each <...>:
Day 1: <up or down> <x.x>% with <nn>% confidence
Day 2: <up or down> <x.x>% with <nn>% confidence
Day 3: <up or down> <x.x>% with <nn>% confidence
Justification: <one sentence citing at least five numbers shown above>
"""


def _render_compact_example(ex: Example, n_hist: int, n_news: int) -> PromptParts:
    return _render_compact(ex, n_hist, n_news, _EXAMPLE_TASK)


def _render_compact_format(ex: Example, n_hist: int, n_news: int) -> PromptParts:
    return _render_compact(ex, n_hist, n_news, _FORMAT_TASK)


TEMPLATES: dict[str, PromptTemplate] = {
    "seed": PromptTemplate("seed", "The seed's Stage II prompt: 15 history rows, 8 news items.", 15, 8, _render_seed),
    "compact": PromptTemplate("compact", "Terse wording, 5 history rows, 3 news items.", 5, 3, _render_compact),
    "compact_example": PromptTemplate("compact_example", "compact, with a filled-in example answer instead of placeholders.",
                                      5, 3, _render_compact_example),
    "compact_format": PromptTemplate("compact_format", "compact, with the answer format shown by <...> slots that fix no "
                                     "direction and no number.", 5, 3, _render_compact_format),
}


def get_template(version: str) -> PromptTemplate:
    if version not in TEMPLATES:
        raise ValueError(f"prompt_version={version!r} is not a template; use one of {', '.join(TEMPLATES)}.")
    return TEMPLATES[version]


# -------------------------------------------------------------------- public API
def build_prompt(example: Example | Mapping[str, Any], version: str = "seed", anonymized: bool = False) -> str:
    """The plain prompt text (before any chat template) for an Example or a parquet-row dict (``anonymized``:
    :func:`stonklib.data.anonymize.anonymize` first)."""
    ex = Example.from_row(example)
    return get_template(version).parts(anonymize(ex) if anonymized else ex).text


def chat_messages(example: Example | Mapping[str, Any], version: str = "seed",
                  system: str | None = None) -> list[dict[str, str]]:
    """``[{"role": "user", "content": prompt}]``, with an optional system message first."""
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": build_prompt(example, version)}]


def apply_chat_template(tokenizer: Any, prompt_text: str, system: str | None = None) -> str:
    """Render one user turn with the tokenizer's chat template, ready for generation.

    Tokenizers without a chat template get the plain text (system text first) plus "\\n".
    """
    if not getattr(tokenizer, "chat_template", None):
        return (f"{system}\n\n" if system else "") + prompt_text + "\n"
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": prompt_text})
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens in chat-rendered text; the template already holds any special tokens, so none are added."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class FittedPrompt:
    text: str  # chat-rendered
    n_tokens: int
    truncated: bool
    history_rows_kept: int
    news_kept: int


def fit_prompt(example: Example | Mapping[str, Any], tokenizer: Any, max_prompt_tokens: int,
               version: str = "seed", system: str | None = None, anonymized: bool = False) -> FittedPrompt:
    """The chat-rendered prompt within ``max_prompt_tokens``: oldest history rows, then news, then middle tokens
    (``anonymized``: of :func:`stonklib.data.anonymize.anonymize` of the example)."""
    ex, tmpl = Example.from_row(example), get_template(version)
    ex = anonymize(ex) if anonymized else ex
    n_hist = min(len(visible_history(ex)), tmpl.max_history)
    n_news = min(len(ex.news), tmpl.max_news)

    def render(h: int, n: int) -> tuple[str, int]:
        text = apply_chat_template(tokenizer, tmpl.parts(ex, h, n).text, system)
        return text, count_tokens(tokenizer, text)

    text, n_tok = render(n_hist, n_news)
    if n_tok <= max_prompt_tokens:
        return FittedPrompt(text, n_tok, False, n_hist, n_news)
    min_hist = min(1, n_hist)
    h = _largest_fitting(min_hist, n_hist - 1, lambda k: render(k, n_news)[1] <= max_prompt_tokens)
    if h is not None:
        return FittedPrompt(*render(h, n_news), True, h, n_news)
    n = _largest_fitting(0, n_news - 1, lambda k: render(min_hist, k)[1] <= max_prompt_tokens)
    if n is not None:
        return FittedPrompt(*render(min_hist, n), True, min_hist, n)
    return _cut_middle(tmpl.parts(ex, min_hist, 0), tokenizer, max_prompt_tokens, system, min_hist, version)


def _largest_fitting(lo: int, hi: int, fits: Callable[[int], bool]) -> int | None:
    """Largest k in [lo, hi] with fits(k), assuming fits is monotone (fewer rows -> fewer tokens)."""
    if hi < lo or not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _cut_middle(parts: PromptParts, tokenizer: Any, limit: int, system: str | None,
                hist: int, version: str) -> FittedPrompt:
    fixed = count_tokens(tokenizer, apply_chat_template(tokenizer, parts.head + TRUNCATION_MARKER + parts.task, system))
    if fixed > limit:
        raise ValueError(f"max_prompt_tokens={limit} cannot hold even the role line and task block of the "
                         f"{version!r} prompt ({fixed} tokens with the chat template): raise max_prompt_tokens.")
    ids = tokenizer(parts.middle, add_special_tokens=False)["input_ids"]
    budget = limit - fixed
    for _ in range(8):  # re-tokenising a decoded cut can merge or split a token or two
        kept = tokenizer.decode(ids[max(0, len(ids) - budget):], skip_special_tokens=True) if budget > 0 else ""
        text = apply_chat_template(tokenizer, parts.head + TRUNCATION_MARKER + kept + parts.task, system)
        n_tok = count_tokens(tokenizer, text)
        if n_tok <= limit:
            return FittedPrompt(text, n_tok, True, hist, 0)
        budget -= n_tok - limit
    text = apply_chat_template(tokenizer, parts.head + TRUNCATION_MARKER + parts.task, system)
    return FittedPrompt(text, count_tokens(tokenizer, text), True, 0, 0)


def token_stats(examples: Iterable[Example | Mapping[str, Any]], tokenizer: Any,
                versions: Sequence[str] = ("seed",), max_prompt_tokens: int = 1024,
                system: str | None = None):
    """One row per example x version: n_tokens (fitted), n_tokens_full, truncated, rows/news kept."""
    import pandas as pd

    rows = []
    for i, e in enumerate(examples):
        ex = Example.from_row(e)
        for v in versions:
            full = count_tokens(tokenizer, apply_chat_template(tokenizer, build_prompt(ex, v), system))
            fp = fit_prompt(ex, tokenizer, max_prompt_tokens, v, system)
            rows.append({"example": i, "ticker": ex.ticker, "date": ex.date, "version": v,
                         "n_tokens": fp.n_tokens, "n_tokens_full": full, "truncated": fp.truncated,
                         "history_rows_kept": fp.history_rows_kept, "news_kept": fp.news_kept})
    cols = ["example", "ticker", "date", "version", "n_tokens", "n_tokens_full", "truncated",
            "history_rows_kept", "news_kept"]
    return pd.DataFrame(rows, columns=cols)
