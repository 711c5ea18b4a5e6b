"""The workbook's figures (data, prompts, rewards, training, equity): each returns a Figure, draws into a
given ax, saves as PNG, and copes with sparse input (a run with no parsed answers, no validation yet)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from stonklib.workbook import plots

RNG = np.random.default_rng(0)
METRICS = pd.DataFrame({
    "reward/total": [0.5, 0.8, 1.1], "reward/direction": [0.0, 0.5, 0.5], "reward/format": [0.5, 0.3, 0.6],
    "kl": [0.0, 0.01, 0.02], "loss": [0.1, -0.2, 0.0], "clip_fraction": [0.0, 0.05, 0.1],
    "market/actual_up_rate": [0.5, 0.52, 0.51], "market/predicted_up_rate": [np.nan, 0.9, 0.8],
    "val/reward": [np.nan, np.nan, 0.7]}, index=pd.Index([1, 2, 3], name="step"))
LABELS = pd.DataFrame({"n": [10, 20, 30], "up": [0.4, 0.5, 0.6]}, index=pd.Index(["A", "B", "C"], name="sector"))
MONTHS = pd.DataFrame({"n": [10] * 12, "up": np.linspace(0.3, 0.7, 12)},
                      index=pd.Index([f"2024-{m:02d}" for m in range(1, 13)], name="month"))
TIMELINE = pd.DataFrame({"segment": ["train", "embargo train/val", "val", "embargo val/test", "test"],
                         "kind": ["split", "embargo", "split", "embargo", "split"],
                         "start": ["2024-01-02", "2024-05-01", "2024-05-06", "2024-06-03", "2024-06-06"],
                         "end": ["2024-04-30", "2024-05-03", "2024-05-31", "2024-06-05", "2024-06-28"],
                         "n": [1000, 0, 100, 0, 100], "n_dates": [None, 3, None, 3, None]})
TOKENS = pd.DataFrame({"version": ["seed"] * 20 + ["compact"] * 20,
                       "n_tokens_full": np.r_[RNG.integers(770, 810, 20), RNG.integers(320, 340, 20)]})
PARTS = ("direction", "format")
REWARDS = pd.DataFrame({"direction": [0, 2.5, 0, 2.5], "format": [0.5, 1.0, 0.0, 0.5]})
SENS = pd.DataFrame({"part": ["direction", "direction", "format", "format"], "factor": [0.0, 2.0, 0.0, 2.0],
                     "kendall_tau": [0.5, 1.0, np.nan, 1.0]})
EQUITY = {"model": pd.Series([0.01, -0.02, 0.005], index=["2024-01-02", "2024-01-03", "2024-01-04"]),
          "buy and hold": pd.Series([0.0, 0.01, 0.0], index=["2024-01-02", "2024-01-03", "2024-01-04"])}

FIGURES = {
    "label_shares": lambda ax=None: plots.plot_label_shares(LABELS, ax=ax, overall=0.5),
    "label_shares_months": lambda ax=None: plots.plot_label_shares(MONTHS, ax=ax),
    "distributions": lambda ax=None: plots.plot_distributions(
        {"train": pd.Series(RNG.normal(0, 2, 500)), "test": pd.Series([np.nan, 1.0, 2.0])}, ax=ax),
    "mix": lambda ax=None: plots.plot_mix_comparison(
        pd.DataFrame({"up": [0.51, 0.5], "down": [0.49, 0.5]}, index=["natural", "balanced"]), ax=ax),
    "timeline": lambda ax=None: plots.plot_split_timeline(TIMELINE, ax=ax),
    "tokens": lambda ax=None: plots.plot_token_lengths(TOKENS, 400, ax=ax),
    "reward_parts": lambda ax=None: plots.plot_reward_parts(REWARDS, PARTS, ax=ax),
    "correlation": lambda ax=None: plots.plot_correlation(REWARDS.assign(flat=0.0).corr(), ax=ax),
    "zero_variance": lambda ax=None: plots.plot_zero_variance(
        pd.DataFrame({"zero_variance_share": [0.5, 0.25]}, index=pd.Index([2, 3], name="G")), ax=ax),
    "sensitivity": lambda ax=None: plots.plot_weight_sensitivity(SENS, ax=ax),
    "metric_curves": lambda ax=None: plots.plot_metric_curves(METRICS, ["reward/total", "kl"], ax=ax),
    "up_rate_curve": lambda ax=None: plots.plot_up_rate_curve(METRICS, ax=ax),
    "equity_curves": lambda ax=None: plots.plot_equity_curves(EQUITY, ax=ax),
}


@pytest.mark.parametrize("name", list(FIGURES))
def test_returns_figure_and_saves_png(name, tmp_path):
    fig = FIGURES[name]()
    assert isinstance(fig, Figure) and fig.axes and fig.axes[0].has_data()
    assert plots.save(fig, tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", list(FIGURES))
def test_draws_into_given_ax(name):
    outer = Figure()
    ax = outer.add_subplot()
    assert FIGURES[name](ax=ax) is outer and ax.has_data()


def test_training_overview_has_six_panels_and_copes_with_missing_keys():
    fig = plots.plot_training_overview(METRICS, title="run")
    assert len([a for a in fig.axes if a.get_title()]) >= 6
    sparse = plots.plot_training_overview(METRICS[["reward/total"]])
    texts = [t.get_text() for a in sparse.axes for t in a.texts]
    assert "not logged yet" in texts  # KL, loss, ... before they exist


def test_up_rate_curve_without_parsed_predictions():
    fig = plots.plot_up_rate_curve(METRICS.assign(**{"market/predicted_up_rate": np.nan}))
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "market/actual_up_rate" in labels and "market/predicted_up_rate" not in labels


def test_label_shares_orientation():
    many = pd.DataFrame({"n": [1] * 11, "up": np.linspace(0, 1, 11)},
                        index=pd.Index([f"sector {i}" for i in range(11)], name="sector"))
    assert len(plots.plot_label_shares(many).axes[0].get_yticklabels()) == 11  # many sectors: horizontal bars
    assert len(plots.plot_label_shares(MONTHS).axes[0].get_xticklabels()) == 12  # months stay on the x axis


def test_step_axis_has_integer_ticks_and_no_prediction_note():
    fig = plots.plot_up_rate_curve(METRICS[["market/actual_up_rate"]])
    ax = fig.axes[0]
    fig.canvas.draw()
    assert all(float(t).is_integer() for t in ax.get_xticks())
    assert any("undefined" in t.get_text() for t in ax.texts)
