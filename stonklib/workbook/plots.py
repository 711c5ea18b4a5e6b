"""Figures for the notebooks and reports: one function per figure, ``plot_xxx(..., ax=None) -> Figure``.

Functions take already-computed tables (from :mod:`stonklib.workbook.explore`,
:mod:`stonklib.workbook.reward_lab` and the training logs) and only draw. Without ``ax`` they
build a standalone ``matplotlib.figure.Figure`` (no pyplot state, so they work headless and don't
leak figures in long runs); with ``ax`` they draw into it and return its figure. The evaluation's
figures live in :mod:`stonklib.evaluate.figures` and are re-exported here, so a notebook needs one
``plots`` module.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from stonklib.evaluate.figures import (  # noqa: F401  the evaluation's figures, for notebook 05
    new_axes,
    plot_accuracy_by_samples,
    plot_accuracy_vs_baselines,
    plot_audit,
    plot_confusion,
    plot_equity_curve,
    plot_equity_curves,
    plot_reliability,
    plot_up_rates,
    save,
)


# ------------------------------------------------------------------ data (01)
def plot_label_shares(table: pd.DataFrame, ax: Axes | None = None, title: str = "Next-day up share",
                      overall: float | None = None) -> Figure:
    """Share of up moves per group (``table`` from :func:`stonklib.workbook.explore.label_distribution`).

    Bars are labelled with n; the dashed line is ``overall`` (the whole split's
    up share) or 50% when not given. Many groups are drawn horizontally.
    """
    horizontal = len(table) > 8 and not str(table.index.name).startswith("month")
    fig, ax = new_axes(ax, (7, 0.35 * len(table) + 1.5) if horizontal else (7, 3.5))
    names = [str(i) for i in table.index]
    up = table["up"].to_numpy(float)
    ref = 0.5 if overall is None else overall
    if horizontal:
        ax.barh(names, up, color="C2", alpha=0.8)
        ax.axvline(ref, ls="--", color="grey", lw=1)
        for i, (u, n) in enumerate(zip(up, table["n"], strict=True)):
            ax.annotate(f"n={int(n):,}", (u, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        ax.invert_yaxis()
        ax.set(xlim=(0, 1), xlabel="share up")
    else:
        ax.bar(names, up, color="C2", alpha=0.8)
        ax.axhline(ref, ls="--", color="grey", lw=1)
        ax.set(ylim=(0, 1), ylabel="share up")
        ax.tick_params(axis="x", labelrotation=45)
    ax.set_title(f"{title} (dashed: {'overall ' if overall is not None else ''}{ref:.1%})")
    return fig


def plot_distributions(series: Mapping[str, pd.Series], ax: Axes | None = None, title: str = "",
                       xlabel: str = "", bins: int = 80, clip_quantile: float = 0.995) -> Figure:
    """Overlaid density histograms of one quantity per split; tails beyond ``clip_quantile`` are folded in."""
    fig, ax = new_axes(ax, (7, 3.5))
    vals = {k: pd.to_numeric(v, errors="coerce").dropna().to_numpy(float) for k, v in series.items()}
    pooled = np.concatenate([v for v in vals.values() if len(v)] or [np.zeros(1)])
    lo, hi = np.quantile(pooled, [1 - clip_quantile, clip_quantile])
    edges = np.linspace(lo, hi, bins + 1) if hi > lo else bins
    for name, v in vals.items():
        if len(v):
            ax.hist(np.clip(v, lo, hi), bins=edges, density=True, histtype="step", lw=1.5, label=f"{name} (n={len(v):,})")
    ax.set(xlabel=xlabel, ylabel="density", title=title)
    ax.legend(fontsize=8)
    return fig


def plot_mix_comparison(table: pd.DataFrame, ax: Axes | None = None,
                        title: str = "Training mix: natural vs balanced") -> Figure:
    """Stacked up/down shares per sampling scheme (``table`` from :func:`stonklib.workbook.explore.mix_comparison`)."""
    fig, ax = new_axes(ax, (6, 3))
    names = [str(i) for i in table.index]
    up, down = table["up"].to_numpy(float), table["down"].to_numpy(float)
    ax.barh(names, up, color="C2", label="up")
    ax.barh(names, down, left=up, color="C3", label="down")
    for i, u in enumerate(up):
        ax.text(u / 2, i, f"{u:.1%}", ha="center", va="center", color="white", fontsize=9)
        ax.text(u + (1 - u) / 2, i, f"{1 - u:.1%}", ha="center", va="center", color="white", fontsize=9)
    ax.axvline(0.5, color="k", lw=0.8, ls=":")
    ax.set(xlim=(0, 1), xlabel="share of sampled examples", title=title)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_split_timeline(timeline: pd.DataFrame, ax: Axes | None = None,
                        title: str = "Chronological splits and embargo") -> Figure:
    """One bar per segment (``timeline`` from :func:`stonklib.workbook.explore.split_timeline`), embargo in grey."""
    import matplotlib.dates as mdates

    fig, ax = new_axes(ax, (8, 2.6))
    colors = {"train": "C0", "val": "C1", "test": "C2"}
    for i, r in enumerate(timeline.itertuples()):
        start, end = pd.Timestamp(r.start), pd.Timestamp(r.end) + pd.Timedelta(days=1)
        x0, w = mdates.date2num(start), mdates.date2num(end) - mdates.date2num(start)
        ax.broken_barh([(x0, w)], (i - 0.4, 0.8), color=colors.get(r.segment, "grey"),
                       hatch="//" if r.kind == "embargo" else None, alpha=0.9)
        label = f"{r.start} .. {r.end}" + (f"  ({int(r.n_dates)} dates dropped)" if r.kind == "embargo"
                                           else f"  (n={int(r.n):,})")
        ax.annotate(label, (x0 + w, i), xytext=(4, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_yticks(range(len(timeline)), list(timeline["segment"]))
    ax.invert_yaxis()
    ax.xaxis_date()
    lo, hi = ax.get_xlim()
    ax.set_xlim(lo, hi + 0.45 * (hi - lo))  # room for the labels
    ax.set_title(title)
    return fig


# --------------------------------------------------------------- prompts (02)
def plot_token_lengths(stats: pd.DataFrame, max_prompt_tokens: int | None = None, ax: Axes | None = None,
                       title: str = "Prompt length per template (chat-rendered, before truncation)") -> Figure:
    """Histograms of ``n_tokens_full`` per ``version`` (``stats`` from :func:`stonklib.prompts.token_stats`)."""
    fig, ax = new_axes(ax, (7, 3.5))
    for v, g in stats.groupby("version", sort=False):
        ax.hist(g["n_tokens_full"], bins=30, alpha=0.6, label=f"{v} (median {int(g['n_tokens_full'].median())})")
    if max_prompt_tokens:
        ax.axvline(max_prompt_tokens, color="k", ls="--", lw=1, label=f"max_prompt_tokens = {max_prompt_tokens}")
    ax.set(xlabel="tokens", ylabel="prompts", title=title)
    ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------- rewards (03)
def plot_reward_parts(table: pd.DataFrame, parts: tuple[str, ...] | list[str], ax: Axes | None = None,
                      title: str = "Reward parts over sampled completions (unweighted)") -> Figure:
    """A box per part with every completion as a jittered dot."""
    fig, ax = new_axes(ax, (7, 3.5))
    data = [table[p].to_numpy(float) for p in parts]
    ax.boxplot(data, tick_labels=list(parts), showmeans=True)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, start=1):
        ax.plot(i + rng.uniform(-0.12, 0.12, len(d)), d, ".", color="C0", alpha=0.4, ms=4)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(ylabel="reward", title=title)
    ax.tick_params(axis="x", labelrotation=20)
    return fig


def plot_correlation(corr: pd.DataFrame, ax: Axes | None = None, title: str = "Correlation between parts") -> Figure:
    """A heatmap of a correlation matrix; blank cells are undefined (a part that never varied)."""
    fig, ax = new_axes(ax, (5.5, 4.5))
    m = corr.to_numpy(float)
    im = ax.imshow(np.ma.masked_invalid(m), cmap="RdBu_r", vmin=-1, vmax=1)
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(corr.columns)), list(corr.columns), rotation=30, ha="right")
    ax.set_yticks(range(len(corr.index)), list(corr.index))
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(title)
    return fig


def plot_zero_variance(table: pd.DataFrame, ax: Axes | None = None,
                       title: str = "Groups with zero reward variance (no gradient)") -> Figure:
    """``zero_variance_share`` against the group size G (``table`` from :func:`stonklib.workbook.reward_lab.zero_variance_share`)."""
    fig, ax = new_axes(ax, (5, 3.2))
    ax.plot(table.index, table["zero_variance_share"], marker="o")
    ax.set(xlabel="group size G", ylabel="share of groups", ylim=(-0.02, 1.02), title=title)
    ax.set_xticks(list(table.index))
    return fig


def plot_weight_sensitivity(table: pd.DataFrame, ax: Axes | None = None,
                            title: str = "Ranking stability when one weight changes") -> Figure:
    """Mean within-group Kendall tau per part and factor (``table`` from :func:`stonklib.workbook.reward_lab.weight_sensitivity`)."""
    fig, ax = new_axes(ax, (7, 3.5))
    parts = list(dict.fromkeys(table["part"]))
    factors = list(dict.fromkeys(table["factor"]))
    width = 0.8 / max(len(factors), 1)
    for k, f in enumerate(factors):
        t = table[table["factor"] == f].set_index("part").reindex(parts)
        ax.bar(np.arange(len(parts)) + k * width - 0.4 + width / 2, t["kendall_tau"].fillna(0), width,
               label=f"weight x {f:g}")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(parts)), parts, rotation=20)
    ax.set(ylim=(-1.05, 1.05), ylabel="mean Kendall tau vs current weights", title=title)
    ax.legend(fontsize=8)
    return fig


# --------------------------------------------------------------- training (04)
def plot_metric_curves(metrics: pd.DataFrame, keys: list[str] | tuple[str, ...], ax: Axes | None = None,
                       title: str = "", ylabel: str = "") -> Figure:
    """Columns ``keys`` of a per-step metrics table (index = step) as lines; missing keys are skipped."""
    fig, ax = new_axes(ax, (6, 3.5))
    drawn = 0
    for k in keys:
        if k in metrics and metrics[k].notna().any():
            s = metrics[k].dropna()
            ax.plot(s.index, s.to_numpy(float), marker="o" if len(s) < 30 else None, ms=3, label=k)
            drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "not logged yet", ha="center", va="center", transform=ax.transAxes)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    if drawn > 1:
        ax.legend(fontsize=7)
    return fig


def plot_up_rate_curve(metrics: pd.DataFrame, ax: Axes | None = None,
                       title: str = "Predicted vs actual up-rate (running)") -> Figure:
    """``market/predicted_up_rate`` against ``market/actual_up_rate``: a model that always says up is caught here."""
    fig = plot_metric_curves(metrics, ["market/actual_up_rate", "market/predicted_up_rate"], ax=ax, title=title,
                             ylabel="share up")
    ax = ax or fig.axes[0]
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_ylim(-0.02, 1.02)
    pred = metrics.get("market/predicted_up_rate")
    if pred is None or pred.isna().all():
        ax.text(0.5, 0.25, "no parsed prediction yet:\npredicted up-rate undefined", ha="center", va="center",
                transform=ax.transAxes, fontsize=8, color="grey")
    return fig


TRAINING_PANELS = (
    ("reward (total and parts)", ("reward/total", "reward/direction", "reward/magnitude", "reward/confidence",
                                  "reward/data_utilization", "reward/format")),
    ("KL to the reference", ("kl",)),
    ("loss", ("loss",)),
    ("clip fraction, groups with no reward spread", ("clip_fraction", "reward/zero_std_groups")),
    ("validation", ("val/reward", "val/accuracy", "val/format_rate", "val/predicted_up_rate", "val/sampled_up_rate")),
)


def plot_training_overview(metrics: pd.DataFrame, title: str = "GRPO training") -> Figure:
    """A 2x3 grid: reward total and parts, KL, loss, clip fraction, up-rates, validation (a whole figure, no ax)."""
    fig = Figure(figsize=(13, 6.5), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    for ax, (name, keys) in zip(axes, TRAINING_PANELS[:4], strict=False):
        plot_metric_curves(metrics, keys, ax=ax, title=name)
    plot_up_rate_curve(metrics, ax=axes[4])
    plot_metric_curves(metrics, TRAINING_PANELS[4][1], ax=axes[5], title=TRAINING_PANELS[4][0])
    fig.suptitle(title)
    return fig


def plot_warmup(metrics: pd.DataFrame, title: str = "Format warm-up") -> Figure:
    """The warm-up's target-token loss, and its validation answers' format, parse rate, up-rate and variety."""
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax_loss, ax_val = fig.subplots(1, 2)
    plot_metric_curves(metrics, ["loss"], ax=ax_loss, title="loss (mean NLL of the target tokens)", ylabel="nats")
    plot_metric_curves(metrics, ["val/format_rate", "val/parse_rate", "val/predicted_up_rate", "val/distinct_day1_share"],
                       ax=ax_val, title="greedy validation answers", ylabel="share of answers")
    ax_val.set_ylim(-0.03, 1.03)
    fig.suptitle(title)
    return fig
