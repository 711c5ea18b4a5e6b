"""The evaluation's figures: one function per figure, ``plot_xxx(..., ax=None) -> Figure``.

``stonk evaluate`` saves five of them next to ``metrics.json``; notebook 05 shows them. Functions
take already-computed tables and only draw. Without ``ax`` they build a standalone
``matplotlib.figure.Figure`` (no pyplot state, so they work headless and don't leak figures in
long runs); with ``ax`` they draw into it and return its figure. Save with :func:`save`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def new_axes(ax: Axes | None, figsize: tuple[float, float] = (6, 4)) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def save(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path


def plot_reliability(table: pd.DataFrame, ax: Axes | None = None, title: str = "Reliability") -> Figure:
    """Accuracy per confidence bin against the diagonal; ``table`` has lo, hi, n, mean_p, accuracy."""
    fig, ax = new_axes(ax, (5, 5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    if len(table):
        width = (table["hi"] - table["lo"]).to_numpy()
        ax.bar(table["lo"], table["accuracy"], width=width, align="edge", alpha=0.6, edgecolor="k", label="accuracy")
        ax.plot(table["mean_p"], table["accuracy"], "o", color="C3", label="mean confidence")
        for lo, w, acc, n in zip(table["lo"], width, table["accuracy"], table["n"], strict=True):
            ax.annotate(f"n={int(n)}", (lo + w / 2, acc), ha="center", va="bottom", fontsize=7)
    else:
        ax.text(0.5, 0.5, "no parsed predictions", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="stated confidence c/100", ylabel="accuracy", title=title)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def plot_confusion(confusion: Mapping[str, Any], ax: Axes | None = None, title: str = "Confusion matrix") -> Figure:
    """Counts, rows = actual, columns = predicted (the ``confusion_matrix`` entry of metrics)."""
    fig, ax = new_axes(ax, (5, 3.5))
    counts = np.asarray(confusion["counts"])
    ax.imshow(counts, cmap="Blues")
    for (i, j), v in np.ndenumerate(counts):
        ax.text(j, i, str(int(v)), ha="center", va="center",
                color="white" if v > counts.max() / 2 else "black")
    ax.set_xticks(range(counts.shape[1]), confusion["predicted"])
    ax.set_yticks(range(counts.shape[0]), confusion["actual"])
    ax.set(xlabel="predicted", ylabel="actual", title=title)
    return fig


def plot_accuracy_vs_baselines(metrics: Mapping[str, Any], ax: Axes | None = None,
                               title: str = "Accuracy with 95% Wilson CI") -> Figure:
    """The model's accuracy and CI next to each baseline's; the dashed line is the majority rate."""
    rows = [("model", metrics)] + list((metrics.get("baselines") or {}).items())
    fig, ax = new_axes(ax, (6, 0.6 * len(rows) + 1.5))
    for i, (name, m) in enumerate(rows):
        lo, hi = m["accuracy_ci95"]
        ax.errorbar(m["accuracy"], i, xerr=[[m["accuracy"] - lo], [hi - m["accuracy"]]], fmt="o", capsize=4,
                    color="C3" if name == "model" else "C0")
    ax.axvline(metrics["majority_rate"], ls="--", color="grey", lw=1,
               label=f"majority rate {metrics['majority_rate']:.3f}")
    ax.set_yticks(range(len(rows)), [name for name, _ in rows])
    ax.set_ylim(len(rows) - 0.5, -1.2)  # top to bottom, with room for the legend above the model
    ax.set(xlabel="accuracy", title=title)
    ax.legend(loc="upper right", fontsize=8)
    return fig


def plot_equity_curve(strategy: pd.Series, benchmark: pd.Series | None = None, ax: Axes | None = None,
                      labels: tuple[str, str] = ("strategy", "buy and hold"),
                      title: str = "Backtest equity") -> Figure:
    """Cumulative product of 1 + daily return (fractions indexed by ISO date), against a benchmark."""
    return plot_equity_curves({labels[0]: strategy, labels[1]: benchmark}, ax=ax, title=title)


def plot_up_rates(table: pd.DataFrame, ax: Axes | None = None, title: str = "Predicted vs actual up-rate") -> Figure:
    """``table`` indexed by period with ``predicted_up_rate``, ``actual_up_rate`` and ``n`` columns."""
    fig, ax = new_axes(ax, (7, 4))
    x = pd.to_datetime(table.index.astype(str))
    ax.plot(x, table["actual_up_rate"], marker="o", label="actual up-rate")
    ax.plot(x, table["predicted_up_rate"], marker="s", label="predicted up-rate (parsed rows)")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set(ylim=(-0.02, 1.02), ylabel="share of rows that are up", title=title)
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    return fig


def plot_equity_curves(curves: Mapping[str, pd.Series], ax: Axes | None = None,
                       title: str = "Backtest equity (same rows)") -> Figure:
    """Several daily-return series (fractions indexed by ISO date) as equity curves on one axis."""
    fig, ax = new_axes(ax, (7, 4))
    for label, series in curves.items():
        if series is not None and len(series):
            ax.plot(pd.to_datetime(series.index), np.cumprod(1 + series.to_numpy(float)), label=label,
                    marker="." if len(series) < 40 else None)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set(ylabel="equity (start = 1)", title=title)
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    return fig


def plot_accuracy_by_samples(rows: list[Mapping[str, Any]], majority_rate: float | None = None, ax: Axes | None = None,
                             title: str = "Accuracy against samples per prompt") -> Figure:
    """Accuracy of the vote of n samples per prompt, with date-clustered 95% intervals, against n."""
    fig, ax = new_axes(ax)
    n = [r["num_samples"] for r in rows]
    acc = np.array([r["accuracy"] for r in rows])
    ci = np.array([r.get("accuracy_ci95_dates") or r["accuracy_ci95"] for r in rows], dtype=float)
    ax.errorbar(n, acc, yerr=[acc - ci[:, 0], ci[:, 1] - acc], marker="o", capsize=4, label="vote of n samples")
    if majority_rate is not None:
        ax.axhline(majority_rate, ls="--", color="grey", label=f"majority rate {majority_rate:.2f}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(n, [str(k) for k in n])
    ax.set_xlabel("samples per prompt (n = 1: one answer)")
    ax.set_ylabel("accuracy (95% interval, dates resampled)")
    ax.set_title(title)
    ax.legend()
    return fig


def plot_audit(audit: Mapping[str, Any]) -> Figure:
    """The memorisation audit: named against anonymised accuracy, and each row's familiarity with its next close."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    names = ["named", "anonymized"]
    acc = np.array([audit[k]["accuracy"] for k in names])
    ci = np.array([audit[k].get("accuracy_ci95_dates") or [audit[k]["accuracy"]] * 2 for k in names], dtype=float)
    a.bar(names, acc, yerr=[acc - ci[:, 0], ci[:, 1] - acc], capsize=6, color=["tab:blue", "tab:grey"])
    a.axhline(audit["named"]["majority_rate"], ls="--", color="k", label="majority rate")
    a.set_ylabel("accuracy (95% interval, dates resampled)")
    a.set_title(f"Same rows, McNemar p={audit['mcnemar']['p_value']:.3f}")
    a.legend()
    fam = np.array([r["familiarity"] for r in audit["per_row"]])
    b.hist(fam, bins=30, color="tab:blue", alpha=0.8)
    corr = audit["familiarity"]["corr_with_correct"]
    b.set_xlabel("mean token log-prob of the actual next close (named prompt)")
    b.set_ylabel("rows")
    b.set_title("Familiarity" + (f" (corr. with correct {corr:+.3f})" if corr is not None else ""))
    fig.tight_layout()
    return fig
