"""``stonk evaluate --audit memorisation``: does the named prompt's accuracy survive anonymisation?

A model pretrained after 2010 may have read how each S&P 500 stock moved, and every named prompt gives it
the ticker, the company and the date. The audit scores the same rows twice, named and anonymised
(:mod:`stonklib.data.anonymize`), and measures, per row, how familiar the model is with what actually came next.
Definitions (``metrics.json`` under ``audit``):

- ``named`` / ``anonymized``: accuracy (unknown wrong), parse rate and the date-clustered interval of each
  (:mod:`stonklib.evaluate.uncertainty`), on the same rows; ``mcnemar``: the exact paired test of named
  against anonymised correctness.
- ``familiarity``: for each row, the model's mean log-probability per token of the actual next close,
  written as the prompts write prices (``45.12``), after the named prompt and the words
  ``The next trading day's close was $`` as the start of its answer (a Min-K%-style score with k = 100 %
  of the number's tokens, arXiv 2310.16789). The next close is ``close * (1 + change_pct_1 / 100)``, the
  next-close label's. Reported: its mean, and its Pearson correlation with the named prompt being right
  (``scipy.stats.pearsonr``; a point-biserial correlation), with the p-value.
- ``finding``: one sentence. An edge is a named accuracy above the majority rate with the date-clustered
  p < 0.05; it "survives" when the anonymised accuracy is not significantly lower (McNemar p >= 0.05);
  a significantly lower anonymised accuracy means part of the named accuracy is recognition.
- Read the familiarity correlation with care: a model that nearly always answers "up" is right exactly on
  the up days, whose next close is the larger number, so the correlation can come from the number's size
  rather than from memory.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import pearsonr

from stonklib.evaluate.metrics import compute_metrics
from stonklib.evaluate.uncertainty import correct_rows, date_bootstrap, mcnemar

CUE = "The next trading day's close was $"
SCORE_BATCH = 8


def next_close(example) -> float:
    """The actual next close implied by the next-close label."""
    return example.close * (1.0 + example.change_pct_1 / 100.0)


def familiarity(model, tokenizer, examples, cfg, progress: bool = True) -> np.ndarray:
    """Each example's mean token log-prob of its actual next close after its named prompt (module docstring)."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from stonklib.prompts import fit_prompt

    device = next(model.parameters()).device
    out = []
    for i in tqdm(range(0, len(examples), SCORE_BATCH), desc="familiarity", unit="batch", disable=not progress):
        seqs, spans = [], []
        for ex in examples[i:i + SCORE_BATCH]:
            head = tokenizer(fit_prompt(ex, tokenizer, cfg.max_prompt_tokens, cfg.prompt_version).text + CUE,
                             add_special_tokens=False)["input_ids"]
            num = tokenizer(f"{next_close(ex):.2f}", add_special_tokens=False)["input_ids"]
            seqs.append(head + num)
            spans.append((len(head), len(head) + len(num)))
        width = max(len(s) for s in seqs)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
        with torch.no_grad():
            logp = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        for row, (lo, hi) in enumerate(spans):
            targets = ids[row, lo:hi]
            out.append(float(logp[row, lo - 1:hi - 1].gather(-1, targets[:, None]).mean()))
    return np.asarray(out)


def run_audit(cfg, examples, named: pd.DataFrame, progress: bool = True) -> dict[str, Any]:
    """The memorisation audit of ``examples``, whose named predictions frame is ``named``."""
    from stonklib.evaluate.generate import generate_predictions
    from stonklib.evaluate.predictions import read_predictions
    from stonklib.models import load_for_inference

    anon_cfg = dataclasses.replace(cfg, anonymize=True, audit=None, vote_curve=[],
                                   out=str(Path(cfg.out) / "anonymized"))
    anon = read_predictions(generate_predictions(anon_cfg, examples, progress=progress)).frame
    sides = {}
    for name, df in (("named", named), ("anonymized", anon)):
        m = compute_metrics(df, cfg.cost_bps)
        b = date_bootstrap(df, cfg.cost_bps, cfg.bootstrap_resamples, cfg.seed)
        sides[name] = {"n": m["n"], "accuracy": m["accuracy"], "parse_rate": m["parse_rate"],
                       "accuracy_ci95_dates": b["accuracy_ci95_dates"], "majority_rate": m["majority_rate"],
                       "p_value_vs_majority": b["date_bootstrap"]["p_value"], "predicted_up_rate": m["predicted_up_rate"]}
    paired = mcnemar(named, anon)
    model, tok = load_for_inference(cfg.model, cfg.adapter, quantize=cfg.quantize, device=cfg.device)
    fam = familiarity(model, tok, list(examples), cfg, progress)
    right = correct_rows(named)
    keyed = pd.Series(fam, index=pd.MultiIndex.from_arrays([[e.ticker for e in examples], [e.date for e in examples]]))
    common = right.index.intersection(keyed.index)
    x, y = keyed.loc[common].to_numpy(float), right.loc[common].to_numpy(float)
    r, p = pearsonr(x, y) if len(common) > 2 and x.std() > 0 and y.std() > 0 else (math.nan, math.nan)
    return {"named": sides["named"], "anonymized": sides["anonymized"], "mcnemar": paired,
            "familiarity": {"definition": "mean token log-prob of the actual next close after the named prompt",
                            "mean": float(np.mean(fam)), "corr_with_correct": None if math.isnan(r) else float(r),
                            "corr_p_value": None if math.isnan(p) else float(p), "n": int(len(common))},
            "per_row": [{"ticker": e.ticker, "date": e.date, "familiarity": float(f)} for e, f in zip(examples, fam, strict=True)],
            "finding": finding(sides["named"], sides["anonymized"], paired)}


def finding(named: dict, anon: dict, paired: dict) -> str:
    """The audit's one sentence, stated plainly: an edge is the named accuracy above the majority rate with the
    date-clustered p < 0.05; it survives unless the anonymised prompts score significantly lower (McNemar)."""
    a, b, p = named["accuracy"], anon["accuracy"], paired["p_value"]
    head = f"Named prompts {a:.3f} vs anonymised {b:.3f} on the same {paired['n_common']} rows (McNemar p={p:.3f})"
    if p < 0.05 and a > b:
        return head + ": the named prompts score significantly higher, so part of their accuracy is recognition."
    if not (a > named["majority_rate"] and named.get("p_value_vs_majority", 1.0) < 0.05):
        return (head + f": the named prompts show no edge over the majority baseline {named['majority_rate']:.3f}, "
                "so there is no edge for memorisation to explain, and anonymising changes nothing measurable.")
    return head + ": the named prompts' edge survives anonymisation (no significant drop)."
