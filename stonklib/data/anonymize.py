"""Anonymised prompts: the same numbers, nothing a pretrained model could recognise.

The bundled data is 2009-2010 S&P 500, and SmolLM2 and Qwen2.5 were pretrained long after it: a prompt
that names the ticker, the company and the dates lets a model "predict" what it read. With
``anonymize: true`` (prompt, train and eval configs) a prompt shows instead:

- the ticker as a neutral id, ``STOCK-`` and six hex digits of a hash of the ticker (one id per ticker,
  so rows of one stock stay recognisable as one stock, and nothing else is);
- no company name, description, industry, headlines or financial statements (each can name the firm);
  the sector stays, as a generic label (e.g. "Health Care");
- dates relative to the as-of day: ``t`` for it, ``t-1``, ``t-2``, ... for the trading days shown
  before it (:func:`relative_dates`, applied to the rendered text);
- every price rescaled so that the as-of close is 100.00; returns, volatility, the volume ratio and the
  labels are percentages or ratios and stay as they are (volumes too).

:func:`anonymize` returns the rescaled record, and the rewards score against it, so ``data_utilization``
grounds the values the anonymised prompt shows. The record keeps its real as-of date (the key of a
prediction row); only the rendered text relabels dates.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import replace

from stonklib.data.records import Example, HistoryRow

TAG = "+anon"  # appended to ``source``: the record is anonymised (so anonymising twice is a no-op)
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}")


def neutral_id(ticker: str) -> str:
    """The ticker's stable neutral id."""
    return f"STOCK-{zlib.crc32(ticker.encode()) & 0xFFFFFF:06X}"


def is_anonymized(example: Example) -> bool:
    return example.source.endswith(TAG)


def anonymize(example: Example) -> Example:
    """The record an anonymised prompt is rendered from and scored against (module docstring)."""
    if is_anonymized(example):
        return example
    k = 100.0 / example.close if example.close else 1.0
    return replace(
        example, ticker=neutral_id(example.ticker), name="", description="", industry="", news=(),
        financial_metrics={}, financials_date="", news_date="", close=example.close * k,
        previous_close=example.previous_close * k,
        history=tuple(HistoryRow(h.date, h.close * k, h.volume) for h in example.history),
        source=example.source + TAG)


def relative_dates(text: str, example: Example) -> str:
    """``text`` with each shown trading date written relative to the as-of date (``t``, ``t-1``, ...); a date
    that is not one of the example's (there should be none) becomes ``t-?``."""
    days = sorted({h.date for h in example.history if h.date <= example.date} | {example.date}, reverse=True)
    label = {d: ("t" if i == 0 else f"t-{i}") for i, d in enumerate(days)}
    return _ISO.sub(lambda m: label.get(m.group(0), "t-?"), text)
