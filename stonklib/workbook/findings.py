"""The closing "Findings" cell of each notebook, written from the numbers it computed.

Each function takes the tables a notebook already showed and returns Markdown
that starts with :data:`MARKER`; a notebook displays it with
``IPython.display.Markdown``. No sentence is fixed in advance: every claim is a
comparison of computed numbers, and sample sizes that are too small to read
are called so, so the text stays true on whatever data and config it ran with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from stonklib.config import REWARD_PARTS
from stonklib.grpo.collapse import DISTINCT_LIMIT, WINDOW, ZERO_STD_LIMIT, collapse_steps

MARKER = "## Findings"
SMALL_N = 100  # below this many rows an accuracy's 95% interval is wider than +/- 10 points
FEW_STEPS = 20  # fewer optimizer steps than this cannot show a trend


def _md(bullets: list[str], planted: str | None = None) -> str:
    return MARKER + "\n\n" + planted_banner(planted) + "\n".join(f"- {b}" for b in bullets if b) + "\n"


def planted_banner(planted: str | None) -> str:
    """The banner every page built on planted labels carries (``stonk data build --plant``); '' for real data."""
    if not planted:
        return ""
    from stonklib.data.planted import PLANTED_RULES

    rule = PLANTED_RULES.get(planted, ("", planted))[1]
    return (f"> **Planted signal, not market data.** The labels follow the `{planted}` rule ({rule}), so what "
            "these numbers measure is whether the loop can learn a rule it is shown, not skill at the market.\n\n")


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, fmt)


# ----------------------------------------------------------------------- 01
def data_findings(source: str, splits: pd.DataFrame, by_sector: pd.DataFrame, by_month: pd.DataFrame,
                  returns: pd.DataFrame, mix: pd.DataFrame, leakage: pd.DataFrame, planted: str | None = None) -> str:
    """From :mod:`stonklib.workbook.explore`'s tables: the mix, where it varies, the tails, the sampling, the checks."""
    tr = splits.loc["train"]
    lean = "up" if tr["up"] > 0.5 else "down"
    b = [f"Source `{source}`: {int(splits['n'].sum()):,} examples, {int(tr['tickers'])} tickers in train, "
         f"{splits['date_min'].min()} to {splits['date_max'].max()}.",
         f"The natural mix leans {lean}: {_pct(tr['up'])} of training next-day moves are up "
         f"(val {_pct(splits.loc['val', 'up'])}, test {_pct(splits.loc['test', 'up'])}); always answering "
         f"'{lean}' scores {_pct(max(tr['up'], tr['down']))} on train without any skill. "
         f"{_pct(tr['flat'])} of moves are flat (counted as down)."]
    if len(by_sector) > 1:
        hi, lo = by_sector["up"].idxmax(), by_sector["up"].idxmin()
        b.append(f"By sector the up share runs from {_pct(by_sector.loc[lo, 'up'])} ({lo}) to "
                 f"{_pct(by_sector.loc[hi, 'up'])} ({hi}).")
    if len(by_month) > 1:
        hi, lo = by_month["up"].idxmax(), by_month["up"].idxmin()
        b.append(f"By month it swings more, from {_pct(by_month.loc[lo, 'up'])} ({lo}) to "
                 f"{_pct(by_month.loc[hi, 'up'])} ({hi}): the majority class changes with the market regime, so a "
                 f"model that learns the training period's lean can be wrong-footed on test."
                 if by_month["up"].max() - by_month["up"].min() > by_sector["up"].max() - by_sector["up"].min()
                 else f"By month it runs from {_pct(by_month.loc[lo, 'up'])} ({lo}) to "
                      f"{_pct(by_month.loc[hi, 'up'])} ({hi}).")
    if ("train", "change_pct_1") in returns.index:
        r = returns.loc[("train", "change_pct_1")]
        b.append(f"Next-day moves in train: median {_num(r['median'])}%, middle half {_num(r['p25'])}% to "
                 f"{_num(r['p75'])}%, 1st/99th percentiles {_num(r['p01'])}% / {_num(r['p99'])}%; "
                 f"{_pct(r['share_abs_gt_5'])} move more than 5%.")
    if ("train", "volatility_10d") in returns.index and ("test", "volatility_10d") in returns.index:
        vt, vs = returns.loc[("train", "volatility_10d"), "median"], returns.loc[("test", "volatility_10d"), "median"]
        b.append(f"Median 10-day volatility is {_num(vt)}% in train and {_num(vs)}% in test"
                 + (" (test is calmer)." if vs < vt else " (test is more volatile)." if vs > vt else "."))
    nat, bal = mix.iloc[0], mix.iloc[1]
    if abs(nat["up"] - bal["up"]) < 0.01:
        b.append(f"A Stage II (natural) sample of {int(nat['n']):,} is {_pct(nat['up'])} up, within a point of the "
                 f"Stage I (balanced) sample's {_pct(bal['up'])}: on this data the two stages see nearly the same "
                 f"label mix, so Stage I's balancing matters little here.")
    else:
        b.append(f"A Stage II (natural) sample of {int(nat['n']):,} is {_pct(nat['up'])} up; the Stage I (balanced) "
                 f"sample of {int(bal['n']):,} is {_pct(bal['up'])} up, so the majority baseline moves from "
                 f"{_pct(nat['majority_accuracy'])} to {_pct(bal['majority_accuracy'])}.")
    passed = int(leakage["passed"].sum())
    b.append(f"Leakage checks: {passed} of {len(leakage)} passed"
             + ("." if passed == len(leakage) else f"; failing: {', '.join(leakage.index[~leakage['passed']])}."))
    return _md(b, planted)


# ----------------------------------------------------------------------- 02
def prompt_findings(stats: pd.DataFrame, max_prompt_tokens: int, prompt_version: str, planted: str | None = None) -> str:
    """From :func:`stonklib.prompts.token_stats` over several template versions."""
    g = stats.groupby("version", sort=False)
    med = g["n_tokens_full"].median()
    trunc = g["truncated"].mean()
    b = [f"{stats['example'].nunique()} examples rendered with each of {', '.join(f'`{v}`' for v in med.index)} "
         f"and the model's chat template."]
    for v in med.index:
        s = g.get_group(v)
        b.append(f"`{v}`: median {int(med[v])} tokens (max {int(s['n_tokens_full'].max())}); "
                 f"{_pct(trunc[v])} exceed max_prompt_tokens = {max_prompt_tokens}"
                 + (f" and lose history rows (median {int(s.loc[s['truncated'], 'history_rows_kept'].median())} kept)."
                    if trunc[v] > 0 else "."))
    if len(med) > 1:
        small, big = med.idxmin(), med.idxmax()
        b.append(f"`{small}` is {med[big] / max(med[small], 1):.1f}x shorter than `{big}`: prefill cost and "
                 f"memory scale with it, so it buys that factor in rollout throughput.")
    if prompt_version in trunc.index:
        b.append(f"The configured template `{prompt_version}` is truncated for {_pct(trunc[prompt_version])} of "
                 f"prompts at this limit" + (": raise max_prompt_tokens or shorten the template."
                                            if trunc[prompt_version] > 0.05 else "."))
    return _md(b, planted)


# ----------------------------------------------------------------------- 03
def reward_findings(table: pd.DataFrame, parts: pd.DataFrame, corr: pd.DataFrame, zero_var: pd.DataFrame,
                    probes: pd.DataFrame, sensitivity: pd.DataFrame, num_generations: int, planted: str | None = None) -> str:
    """From the :mod:`stonklib.workbook.reward_lab` tables."""
    n, groups = len(table), table["group"].nunique()
    parsed = float((table["predicted"] != "unknown").mean())
    b = [f"{n} completions ({groups} prompts x G={num_generations}): {_pct(parsed)} name a day-1 direction, "
         f"{_pct(table['well_formatted'].mean())} have an exact day-1 line; mean total reward "
         f"{_num(table['total'].mean())} (std {_num(table['total'].std(ddof=0))})."]
    active = parts[parts["share_nonzero"] > 0]
    silent = [p for p in parts.index if p not in active.index]
    if len(active):
        top = active["mean"].abs().idxmax()
        b.append(f"`{top}` carries the most reward on average ({_num(active.loc[top, 'mean'])})"
                 + (f"; {', '.join(f'`{p}`' for p in silent)} never paid on these samples, so "
                    f"{'it gives' if len(silent) == 1 else 'they give'} no signal yet." if silent else "."))
    else:
        b.append("No part paid on any sampled completion: the policy gets no learning signal until some "
                 "completion scores, so check the prompt's answer format and max_new_tokens first.")
    c = corr.where(np.triu(np.ones(corr.shape, dtype=bool), k=1)).stack().dropna()
    if len(c):
        (a, bb), v = c.abs().idxmax(), c[c.abs().idxmax()]
        b.append(f"Strongest correlation between parts: `{a}` and `{bb}` ({_num(v)}); "
                 + ("they largely double-count one behaviour." if abs(v) > 0.8 else "the parts measure different things."))
    zv = zero_var.loc[num_generations, "zero_variance_share"] if num_generations in zero_var.index else np.nan
    b.append(f"At G={num_generations}, {_pct(zv)} of groups have zero reward variance, so "
             f"{_pct(zv)} of prompts contribute no policy gradient"
             + (f" (at G=2: {_pct(zero_var['zero_variance_share'].iloc[0])})." if len(zero_var) > 1 else "."))
    others = probes.drop(index=[i for i in probes.index if str(i).startswith("honest")])
    beat = list(others.index[others["beats_honest"]])
    worst = others["total"].idxmax()
    b.append(f"Reward-hacking probes: {'none beats' if not beat else ', '.join(beat) + ' beat'} the honest answer "
             f"({_num(probes.loc['honest', 'total'])}); the best trick is '{worst}' at {_num(others.loc[worst, 'total'])}.")
    b.append(_sensitivity_sentence(sensitivity, zero_var.loc[num_generations, "zero_variance_share"]
                                   if num_generations in zero_var.index else 0.0))
    if groups < 10:
        b.append(f"Only {groups} prompts were sampled: read these shares as a smoke check, not an estimate.")
    return _md(b, planted)


def _sensitivity_sentence(sensitivity: pd.DataFrame, flat_now: float) -> str:
    flattens = sensitivity[sensitivity["flat_share"] > flat_now + 1e-9]
    parts = []
    if len(flattens):
        w = flattens.loc[flattens["flat_share"].idxmax()]
        parts.append(f"scaling `{w['part']}` by {w['factor']:g} leaves {_pct(w['flat_share'])} of groups with no "
                     f"reward variance (now {_pct(flat_now)}): it is what separates these completions")
    s = sensitivity.dropna(subset=["kendall_tau"])
    if not len(s):
        parts.append("no group had varied rewards, so the rankings' sensitivity cannot be measured here")
    elif s["kendall_tau"].min() > 0.999 and not (s["best_changed"] > 0).any():
        parts.append("no single weight change (x" + ", x".join(f"{f:g}" for f in dict.fromkeys(s["factor"]))
                     + ") reorders the completions of any group with varied rewards")
    else:
        w = s.loc[s["kendall_tau"].idxmin()]
        parts.append(f"the ranking moves most when `{w['part']}` is scaled x{w['factor']:g} (mean Kendall tau "
                     f"{_num(w['kendall_tau'])}; the best completion changes in {_pct(w['best_changed'])} of "
                     f"{int(w['groups_compared'])} group(s))")
    return "Weights: " + "; ".join(parts) + "."


# ----------------------------------------------------------------------- 04
def warmup_findings(progress: pd.DataFrame) -> list[str]:
    """Bullets on the warm-up from its validation table (:func:`stonklib.workbook.warmup_progress`); [] without one."""
    if not len(progress) or "val/parse_rate" not in progress:
        return []
    first, last = progress.iloc[0], progress.iloc[-1]
    b = [f"The format warm-up took the greedy validation answers' parse rate from {_pct(first['val/parse_rate'])} "
         f"(step {int(progress.index[0])}) to {_pct(last['val/parse_rate'])} (step {int(progress.index[-1])}), "
         f"their mean data_utilization from {_num(first.get('val/data_utilization'))} to "
         f"{_num(last.get('val/data_utilization'))} (3 = five grounded values cited)."]
    up, distinct = last.get("val/predicted_up_rate"), last.get("val/distinct_day1_share")
    if up is not None and np.isfinite(up):
        b.append(f"After it, {_pct(up)} of the parsed answers say up and {_pct(distinct)} of the day-1 answers are "
                 "distinct" + (": the answers vary with the prompt." if 0.3 <= up <= 0.7 and distinct >= 0.5 else
                                "; answers this uniform leave GRPO little to compare within a group."))
    return b


def _collapse_sentence(metrics: pd.DataFrame) -> str:
    """What the collapse signals say (the rule of :class:`stonklib.grpo.collapse.CollapseMonitor`), or ''."""
    flat = metrics.get("reward/zero_std_groups", pd.Series(dtype=float))
    distinct = metrics.get("completions/distinct_share", pd.Series(1.0, index=flat.index, dtype=float))
    both = pd.concat([flat, distinct], axis=1).dropna()
    if not len(both):
        return ""
    hits = collapse_steps(both.iloc[:, 0].tolist(), both.iloc[:, 1].tolist())
    if hits:
        at = int(both.index[hits[0]])
        wrong = metrics.get("reward/zero_std_wrong_groups", pd.Series(dtype=float)).dropna()
        right_note = (f" In the last steps {_pct(wrong.tail(5).mean())} of the groups were spread-free *and* wrong."
                      if len(wrong) else "")
        return (f"Collapse: from step {at} on, for {WINDOW} steps in a row, at least {ZERO_STD_LIMIT:.0%} of the groups "
                f"gave all G completions the same reward or at most {DISTINCT_LIMIT:.0%} of the completions were "
                f"distinct, so GRPO had (almost) nothing to learn from; training.log warned.{right_note} Spread-free "
                "groups that are right mean a solved task; wrong ones mean learning has stalled: raise the "
                "temperature, G or entropy_coef, or try dynamic_sampling.")
    if len(flat.dropna()) and flat.dropna().tail(5).mean() >= 0.8:
        return (f"In the last steps {_pct(flat.dropna().tail(5).mean())} of the groups gave all G completions the same "
                "reward, so they carry no policy gradient: learning has stalled (often every completion is the "
                "same text). Raise the temperature or G, or change the reward.")
    return ""


def training_findings(metrics: pd.DataFrame, checkpoints: pd.DataFrame, summary: Mapping[str, Any],
                      warmup: pd.DataFrame | None = None, planted: str | None = None) -> str:
    """From the per-step metrics, the checkpoint table, ``run_training``'s summary and the warm-up's table."""
    steps = int(summary.get("steps", len(metrics)))
    pre = warmup_findings(warmup) if warmup is not None else []
    if not len(metrics):
        return _md([*pre, f"{steps} steps ran but no metrics were logged."], planted)
    r = metrics["reward/total"].dropna()
    b = [*pre, f"{steps} GRPO optimizer steps; total reward {_num(r.iloc[0])} at step {int(r.index[0])} and "
         f"{_num(r.iloc[-1])} at step {int(r.index[-1])} (mean {_num(r.mean())})."]
    parts = [f"reward/{k}" for k in REWARD_PARTS if f"reward/{k}" in metrics]  # not reward/zero_std_groups
    if parts and len(r) > 1:
        delta = {c.split("/", 1)[1]: metrics[c].iloc[-1] - metrics[c].iloc[0] for c in parts}
        k = max(delta, key=lambda x: abs(delta[x]))
        b.append(f"The part that moved most is `{k}` ({delta[k]:+.2f} from first to last step).")
    if "kl" in metrics:
        b.append(f"KL to the reference ended at {_num(metrics['kl'].iloc[-1], '.4f')} (max "
                 f"{_num(metrics['kl'].max(), '.4f')}); the clip fraction averaged "
                 f"{_pct(metrics['clip_fraction'].mean()) if 'clip_fraction' in metrics else 'n/a'}.")
    pu = metrics.get("market/predicted_up_rate", pd.Series(dtype=float)).dropna()
    au = metrics.get("market/actual_up_rate", pd.Series(dtype=float)).dropna()
    if len(pu) and len(au):
        gap = pu.iloc[-1] - au.iloc[-1]
        b.append(f"Running predicted up-rate {_pct(pu.iloc[-1])} vs actual {_pct(au.iloc[-1])} "
                 + ("(the model says up more often than the market went up)." if gap > 0.1 else
                    "(the model says down more often than the market went down)." if gap < -0.1 else
                    "(no strong directional bias)."))
    else:
        b.append("No completion gave a parsable direction, so the predicted up-rate is undefined.")
    b.append(_collapse_sentence(metrics))
    vu = metrics.get("val/predicted_up_rate", pd.Series(dtype=float)).dropna()
    if len(vu) and vu.iloc[-1] in (0.0, 1.0):
        b.append(f"At the last validation every parsed held-out answer said {'up' if vu.iloc[-1] else 'down'}: "
                 "a constant prediction, whatever its accuracy.")
    best = summary.get("best_val", summary.get("best_val_reward"))
    metric = summary.get("best_metric", "val/reward")
    ck = ", ".join(str(i) for i in checkpoints.index) or "none"
    b.append(f"Saved: {ck}" + (f"; best/ holds the best `{metric}`, {_num(best)}." if best is not None and
                               np.isfinite(best) else "."))
    if steps < FEW_STEPS:
        b.append(f"{steps} steps cannot show a trend: any change above is noise. This run checks the pipeline.")
    return _md(b, planted)


# ----------------------------------------------------------------------- 05
def evaluation_findings(results: Mapping[str, Mapping[str, Any]], stage1_note: str, planted: str | None = None) -> str:
    """From notebook 05's evaluations (name -> metrics from ``run_evaluate``)."""
    b = []
    for name, m in results.items():
        b.append(f"**{name}**: {m['verdict']}")
    names = list(results)
    if len(names) > 1:
        first, last = results[names[0]], results[names[-1]]
        d = last["accuracy"] - first["accuracy"]
        paired = last.get("paired_vs_base")
        if paired:  # the paired test on the same rows, not overlapping intervals
            b.append(f"{names[-1]} vs {names[0]}: accuracy {d:+.2f}; against its base model on the same "
                     f"{paired['n_common']} rows, McNemar p={paired['p_value']:.3f}"
                     + (": the difference is established at the 5% level." if paired["p_value"] < 0.05
                        else ": the difference is not established."))
        else:
            overlap = (last["accuracy_ci95"][0] <= first["accuracy_ci95"][1]
                       and first["accuracy_ci95"][0] <= last["accuracy_ci95"][1])
            b.append(f"{names[-1]} vs {names[0]}: accuracy {d:+.2f}"
                     + ("; the 95% intervals overlap, so the difference is not established." if overlap
                        else "; the 95% intervals do not overlap."))
    b.append(stage1_note)
    n = min(m["n"] for m in results.values()) if results else 0
    if n < SMALL_N:
        b.append(f"Each model was scored on {n} rows: a 95% interval is roughly +/- {100 * 1.96 * 0.5 / np.sqrt(max(n, 1)):.0f} "
                 f"points wide, so only a very large effect could show. Raise `limit` for a real answer.")
    return _md(b, planted)
