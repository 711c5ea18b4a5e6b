"""Planted labels: a positive control whose next-day direction is a rule of what the prompt shows.

Next-day moves are close to a coin flip, so a model at the base rate may mean that the method cannot
learn or that there is nothing to learn. A planted dataset separates the two: every field and every
prompt stays as in the real data, but each label follows a rule that reads only values the prompt
shows, so a loop that can learn must find it.

- ``momentum``: day-k direction = the sign of the 1-day return the prompt shows (``return_1d``);
- ``threshold``: up iff the 5-day return the prompt shows (``return_5d``) is above 0.

The rule reads each value as the prompts print it (two decimals: ``return_1d -0.50%``), so the label
is a deterministic function of the prompt's text; "0.00%" counts as not above 0, hence down. The
magnitude of each ``change_pct_k`` is the real one, its sign the rule's, so the magnitude reward part
still scores something real. ``summary.json`` says ``"planted": RULE``, and the workbook marks every
page built on it as "planted signal, not market data".
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

#: rule -> (the column it reads, its description)
PLANTED_RULES = {
    "momentum": ("return_1d", "day-k direction = the sign of the 1-day return the prompt shows"),
    "threshold": ("return_5d", "up iff the 5-day return the prompt shows is above 0"),
}


def planted_up(values: np.ndarray) -> np.ndarray:
    """The rule's answer for each shown value: up iff it prints (two decimals) above 0."""
    return np.round(np.asarray(values, dtype=float), 2) > 0


def plant(table: pa.Table, rule: str) -> pa.Table:
    """``table`` with ``direction_1..3`` and the signs of ``change_pct_1..3`` set by ``rule``."""
    if rule not in PLANTED_RULES:
        raise ValueError(f"plant={rule!r}: use one of {', '.join(PLANTED_RULES)}.")
    up = planted_up(table.column(PLANTED_RULES[rule][0]).to_numpy(zero_copy_only=False))
    for k in (1, 2, 3):
        change = np.abs(table.column(f"change_pct_{k}").to_numpy(zero_copy_only=False))
        table = table.set_column(table.schema.get_field_index(f"change_pct_{k}"), f"change_pct_{k}",
                                 pa.array(np.where(up, change, -change), pa.float64()))
        table = table.set_column(table.schema.get_field_index(f"direction_{k}"), f"direction_{k}",
                                 pa.array(np.where(up, "up", "down"), pa.string()))
    return table
