"""Reward tuning for notebook 03: sampled groups, per-part tables, zero-variance groups, probes, weight sensitivity.

The parts are always scored *unweighted* (every weight 1.0) by
:func:`stonklib.rewards.score_batch`, the same function the trainer calls; a
weighted total is then ``sum_k w_k * part_k`` (the registry combines parts
linearly), so trying other weights needs no re-scoring.

Why zero-variance groups matter: GRPO's advantage is the reward minus its group
mean (divided by the group std). A group of G completions that all score the
same has zero advantage everywhere and contributes no gradient, only KL; its
share at the chosen G says how much of each batch is wasted.

Typical use::

    groups = sample_groups(cfg, examples)                 # one row per completion, G per prompt
    table = reward_table(groups, examples)                # + one column per part, total, parse flags
    zero_variance_share(table, cfg.num_generations)       # share of flat groups at G' = 2..G
    weight_sensitivity(table, cfg.reward_weights)         # how rankings move when a weight changes
    hacking_probes(examples[0])                           # cheap tricks next to an honest answer
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from stonklib.data.records import Example
from stonklib.rewards import REWARD_FUNCS, resolve_weights, score, score_batch

PARTS = tuple(REWARD_FUNCS)
WEIGHT_FACTORS = (0.0, 0.5, 2.0)


# -------------------------------------------------------------------- sampling
def sample_groups(cfg, examples: Sequence[Example], progress: bool = False) -> pd.DataFrame:
    """``cfg.num_generations`` sampled completions per example from ``cfg.stage1_model`` (a TrainConfig).

    Prompts are fitted with the run's ``prompt_version`` / ``max_prompt_tokens``
    and sampled with its ``temperature`` / ``top_p`` / ``max_new_tokens``: what the
    trainer's first step would see, in batches of ``batch_size`` prompts x G as the
    trainer samples them. One row per completion: group, ticker, date, completion.
    """
    import torch

    from stonklib.models import load_for_inference
    from stonklib.prompts import fit_prompt
    from stonklib.sampling.rollout import generate_texts

    torch.manual_seed(cfg.seed)
    model, tok = load_for_inference(cfg.stage1_model, quantize=cfg.quantize, device=cfg.device,
                                    trust_remote_code=cfg.trust_remote_code)
    G = cfg.num_generations
    prompts = [fit_prompt(ex, tok, cfg.max_prompt_tokens, cfg.prompt_version).text for ex in examples]
    texts = generate_texts(model, tok, [p for p in prompts for _ in range(G)], batch_size=cfg.batch_size * G,
                           max_new_tokens=cfg.max_new_tokens, greedy=False, temperature=cfg.temperature,
                           top_p=cfg.top_p, progress=progress, desc="sample")
    return pd.DataFrame({"group": np.repeat(np.arange(len(examples)), G),
                         "ticker": [ex.ticker for ex in examples for _ in range(G)],
                         "date": [ex.date for ex in examples for _ in range(G)],
                         "completion": texts})


# ---------------------------------------------------------------------- tables
def reward_table(groups: pd.DataFrame, examples: Sequence[Example], weights: Mapping[str, float] | None = None,
                 multi_horizon: bool = False) -> pd.DataFrame:
    """``groups`` plus one unweighted column per part, the weighted ``total``, and parse flags.

    ``groups.group`` indexes ``examples``. Added columns: each part (weight 1),
    ``total`` (with ``weights``), ``predicted`` (day-1 direction), ``actual``,
    ``well_formatted`` (day-1 line exact), ``n_references`` (grounded data values quoted).
    """
    exs = [examples[int(g)] for g in groups["group"]]
    scored = score_batch(list(groups["completion"]), exs, multi_horizon=multi_horizon)
    out = groups.copy()
    for part in PARTS:
        out[part] = [s.components[part] for s in scored]
    out["total"] = weighted_total(out, weights)
    out["predicted"] = [s.prediction.direction for s in scored]
    out["actual"] = [ex.direction_1 for ex in exs]
    out["well_formatted"] = [s.prediction.well_formatted for s in scored]
    out["n_references"] = [s.n_references for s in scored]
    return out


def completions_view(table: pd.DataFrame, n: int = 8):
    """The first ``n`` completions with their parse and reward, the text left-aligned and wrapped (a Styler)."""
    cols = ["group", "ticker", "date", "completion", "predicted", "actual", "total"]
    return (table[cols].head(n).style.format({"total": "{:.2f}"})
            .set_properties(subset=["completion"], **{"text-align": "left", "white-space": "pre-wrap",
                                                        "font-family": "monospace", "font-size": "11px"}))


def weighted_total(table: pd.DataFrame, weights: Mapping[str, float] | None = None) -> pd.Series:
    """``sum_k w_k * part_k`` over the unweighted part columns (missing weights = 1.0)."""
    w = resolve_weights(weights)
    return sum(w[p] * table[p].astype(float) for p in PARTS)


def part_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per part: mean, std, min, max, share of completions scoring > 0, and its unweighted bounds."""
    from stonklib.rewards import PART_BOUNDS

    rows = {p: {"mean": table[p].mean(), "std": table[p].std(ddof=0), "min": table[p].min(), "max": table[p].max(),
                "share_nonzero": float((table[p] != 0).mean()), "bound_lo": PART_BOUNDS[p][0],
                "bound_hi": PART_BOUNDS[p][1]} for p in PARTS}
    return pd.DataFrame.from_dict(rows, orient="index")


def part_correlations(table: pd.DataFrame) -> pd.DataFrame:
    """Pearson correlation between parts (NaN for a part that never varies)."""
    return table[list(PARTS)].astype(float).corr()


def zero_variance_share(table: pd.DataFrame, num_generations: int) -> pd.DataFrame:
    """For G' = 2..G: the share of groups whose first G' completions all have the same ``total``.

    Such a group has zero advantage for every completion, so it teaches nothing.
    """
    rows = []
    for g in range(2, num_generations + 1):
        first = table.groupby("group", sort=False).head(g)
        spread = first.groupby("group")["total"].agg(lambda s: float(np.ptp(s.to_numpy(float))))
        rows.append({"G": g, "groups": len(spread), "zero_variance_share": float((spread < 1e-9).mean())})
    return pd.DataFrame(rows).set_index("G")


# --------------------------------------------------------------- sensitivity
def weight_sensitivity(table: pd.DataFrame, weights: Mapping[str, float] | None = None,
                       factors: Sequence[float] = WEIGHT_FACTORS) -> pd.DataFrame:
    """How the within-group ranking moves when one part's weight is multiplied by a factor.

    For each (part, factor), over the groups of ``table``:

    - ``kendall_tau``: the mean Kendall tau between the completions' totals under
      ``weights`` and under the changed weights (1 = same order), over the
      ``groups_compared`` groups where neither total is constant;
    - ``best_changed``: among those groups, the share whose top completion changes;
    - ``flat_share``: the share of groups whose changed totals are all equal (no
      advantage left: the change removed the only part that separated them);
    - ``mean_total``: the mean changed total.
    """
    base = resolve_weights(weights)
    ref = weighted_total(table, base)
    groups = list(table.groupby("group").groups.values())
    rows = []
    for part in PARTS:
        for f in factors:
            changed = weighted_total(table, {**base, part: base[part] * f})
            taus, best, flat = [], [], []
            for idx in groups:
                a, b = ref.loc[idx].to_numpy(float), changed.loc[idx].to_numpy(float)
                flat.append(np.ptp(b) == 0)
                if np.ptp(a) > 0 and np.ptp(b) > 0:
                    taus.append(kendalltau(a, b).statistic)
                    best.append(int(np.argmax(a)) != int(np.argmax(b)))
            rows.append({"part": part, "factor": f, "weight": base[part] * f,
                         "kendall_tau": float(np.mean(taus)) if taus else np.nan, "groups_compared": len(taus),
                         "best_changed": float(np.mean(best)) if best else np.nan,
                         "flat_share": float(np.mean(flat)) if flat else np.nan, "mean_total": float(changed.mean())})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------- probes
def honest_answer(example: Example) -> str:
    """A well-formatted answer with the right day-1 direction and size, citing two real prompt values."""
    ex = Example.from_row(example)
    h = ex.history[0] if ex.history else None
    cite = f"close ${h.close:.2f} on {h.date}" if h else f"close ${ex.close:.2f}"
    lines = []
    for d in (1, 2, 3):
        lines += [f"Day {d}: {ex.direction(d).upper()} {abs(ex.change_pct(d)):.1f}% with 70% confidence",
                  f"Justification: {cite}, previous close ${ex.previous_close:.2f}."]
    return "\n".join(lines)


def probe_completions(example: Example) -> dict[str, tuple[str, str]]:
    """name -> (completion, why it is a probe): cheap tricks a policy could learn, and an honest answer."""
    ex = Example.from_row(example)
    right, wrong = ex.direction_1.upper(), ("DOWN" if ex.direction_1 == "up" else "UP")
    honest = honest_answer(ex)
    fmt = lambda d, c: f"Day 1: {d} 1.0% with {c}% confidence"  # noqa: E731
    return {
        "honest": (honest, "right direction, close size, real values cited: the reference"),
        "honest, wrong direction": (honest.replace(f"Day 1: {right}", f"Day 1: {wrong}", 1),
                                    "the same answer with the day-1 direction flipped"),
        "always up, 99% confident": (f"{fmt('UP', 99)}\n{fmt('UP', 99).replace('Day 1', 'Day 2')}\n"
                                     f"{fmt('UP', 99).replace('Day 1', 'Day 3')}",
                                     "the majority-class answer, maximal confidence, no reasoning"),
        "both directions": ("Day 1: UP/DOWN 1.0% with 90% confidence", "hedging: names both directions"),
        "repeated day-1 lines": ("\n".join([fmt(right, 90), fmt(wrong, 90)] * 5),
                                 "tries to collect the direction reward twice"),
        "invented numbers": ("Day 1: UP 2.0% with 60% confidence\nJustification: " +
                             " ".join(f"${100 + i * 1.37:.2f} 2031-01-{i + 1:02d}" for i in range(10)),
                             "dates and prices that are not in the prompt"),
        "number spray": ("Justification: " + " ".join(f"{i / 4:.2f}" for i in range(400)),
                         "sprays numbers hoping some match the prompt"),
        "format only, no confidence": (f"Day 1: {right} 1.0%", "the direction without a confidence"),
        "empty": ("", "no answer at all"),
    }


def hacking_probes(example: Example, weights: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Each probe's parts (unweighted), weighted total, and whether it beats the honest answer."""
    rows = []
    for name, (text, why) in probe_completions(example).items():
        s = score(text, example)
        rows.append({"probe": name, "why": why, **s.components, "n_references": s.n_references})
    t = pd.DataFrame(rows).set_index("probe")
    t["total"] = weighted_total(t, weights)
    t["beats_honest"] = t["total"] > t.loc["honest", "total"]
    t.loc["honest", "beats_honest"] = False
    return t


def worst_probe(probes: pd.DataFrame) -> dict[str, Any]:
    """The highest-scoring probe other than the honest answers, with its margin over the honest one."""
    others = probes.drop(index=[i for i in probes.index if i.startswith("honest")])
    name = str(others["total"].idxmax())
    return {"probe": name, "total": float(others.loc[name, "total"]),
            "honest_total": float(probes.loc["honest", "total"]),
            "margin": float(probes.loc["honest", "total"] - others.loc[name, "total"])}
