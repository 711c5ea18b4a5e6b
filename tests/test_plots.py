"""Every plot function returns a Figure, draws into a given ax, and copes with empty input."""

from __future__ import annotations

import pandas as pd
import pytest
from matplotlib.figure import Figure

from stonklib.evaluate.breakdowns import up_rates_over_time
from stonklib.evaluate.metrics import compute_metrics, daily_returns, reliability_table
from stonklib.workbook import plots

DF = pd.DataFrame({
    "ticker": list("ABABAB"), "date": ["2024-01-02"] * 2 + ["2024-02-05"] * 2 + ["2024-03-04"] * 2,
    "actual_change_pct": [1.0, -2.0, 0.5, -1.0, 0.0, 3.0],
    "predicted_direction": ["up", "up", "down", "down", "unknown", "up"],
    "predicted_pct": [0.5, 1.0, 1.5, 2.0, None, 2.5], "confidence": [80, 60, 70, 90, None, 100]})


@pytest.fixture(scope="module")
def figures() -> dict:
    m = compute_metrics(DF)
    m["baselines"] = {"majority": compute_metrics(DF.assign(predicted_direction="up", confidence=50.0))}
    return {
        "reliability": lambda ax=None: plots.plot_reliability(reliability_table(DF), ax=ax),
        "confusion": lambda ax=None: plots.plot_confusion(m["confusion_matrix"], ax=ax),
        "accuracy": lambda ax=None: plots.plot_accuracy_vs_baselines(m, ax=ax),
        "equity": lambda ax=None: plots.plot_equity_curve(daily_returns(DF), daily_returns(DF, 0.0), ax=ax),
        "up_rates": lambda ax=None: plots.plot_up_rates(up_rates_over_time(DF), ax=ax),
    }


@pytest.mark.parametrize("name", ["reliability", "confusion", "accuracy", "equity", "up_rates"])
def test_plot_returns_figure_and_saves(figures, name, tmp_path):
    fig = figures[name]()
    assert isinstance(fig, Figure) and fig.axes
    path = plots.save(fig, tmp_path / f"{name}.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", ["reliability", "equity"])
def test_plot_draws_into_given_ax(figures, name):
    outer = Figure()
    ax = outer.add_subplot()
    assert figures[name](ax=ax) is outer and ax.has_data()


def test_reliability_without_parsed_rows():
    fig = plots.plot_reliability(reliability_table(DF.assign(predicted_direction="unknown")))
    assert isinstance(fig, Figure)
