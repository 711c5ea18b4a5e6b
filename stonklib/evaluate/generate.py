"""Generate ``predictions.jsonl`` for a split with a model (base, Stage I or Stage II adapter).

Prompts are rendered with :func:`stonklib.prompts.fit_prompt` (``prompt_version``,
``max_prompt_tokens``), completions come from :func:`stonklib.sampling.rollout.generate_texts`
(greedy by default) and are parsed by the reward's parser, so the evaluation
and the reward read answers the same way.

Crash safety: rows go to ``predictions.jsonl.partial``, flushed and fsync'ed
after every batch, with a ``.partial.meta.json`` describing the run. A rerun
with the same settings on the same rows resumes after the last complete batch;
anything else starts over. The finished file is moved into place atomically,
so ``predictions.jsonl`` is either absent or complete.

With ``num_samples`` n > 1, each prompt gets n sampled answers (``temperature``, ``top_p``) in the same
batched call, and its row is their vote (:meth:`PredictionRecord.from_votes`).

``--limit`` keeps ``limit`` rows evenly spaced through the split's (date, ticker)
order (:func:`stonklib.data.load_examples`): deterministic, chronological, and
covering the whole date range, so a small limit is not just the first few days.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from stonklib.config import EvalConfig
from stonklib.data.records import Example
from stonklib.evaluate.predictions import PredictionRecord

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"


def load_eval_examples(cfg: EvalConfig) -> list[Example]:
    """The examples of ``cfg.split`` (bundled data built on first use), ``cfg.limit`` spread over its dates."""
    from stonklib.data import ensure_data, load_examples

    return load_examples(ensure_data(cfg.data), cfg.split, limit=cfg.limit)


def _run_meta(cfg: EvalConfig, examples: Sequence[Example]) -> dict:
    keys = ("model", "adapter", "split", "prompt_version", "max_prompt_tokens", "max_new_tokens", "greedy",
            "temperature", "top_p", "quantize", "seed", "num_samples", "anonymize")
    return {**{k: getattr(cfg, k) for k in keys}, "rows": [[e.ticker, e.date] for e in examples]}


def _resume_point(partial: Path, meta_path: Path, meta: dict, batch_size: int) -> int:
    """Rows already done in a matching partial file (truncated to whole batches), else 0."""
    if not (partial.is_file() and meta_path.is_file()):
        return 0
    try:
        same = json.loads(meta_path.read_text()) == meta
    except json.JSONDecodeError:
        same = False
    if not same:
        return 0
    lines = partial.read_text(encoding="utf-8").splitlines(keepends=True)
    done = 0
    for line, (ticker, date) in zip(lines, meta["rows"], strict=False):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if not line.endswith("\n") or row.get("ticker") != ticker or row.get("date") != date:
            break
        done += 1
    if done < len(meta["rows"]):  # keep batches aligned with an uninterrupted run (padding changes greedy output)
        done -= done % batch_size
    partial.write_text("".join(lines[:done]), encoding="utf-8")
    return done


def generate_predictions(cfg: EvalConfig, examples: Sequence[Example] | None = None, progress: bool = True) -> Path:
    """Write ``cfg.out/predictions.jsonl`` for ``examples`` (records or parquet-row dicts; default:
    ``cfg.split`` with ``cfg.limit``) and return its path."""
    if cfg.model is None:
        raise ValueError("generate_predictions needs cfg.model (a model directory or hub id).")
    examples = load_eval_examples(cfg) if examples is None else [Example.from_row(e) for e in examples]
    if not examples:
        raise ValueError(f"no examples to evaluate in split {cfg.split!r}: build the data with `stonk data build`.")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    final = out / PREDICTIONS_FILE
    partial = out / (PREDICTIONS_FILE + ".partial")
    meta_path = out / (PREDICTIONS_FILE + ".partial.meta.json")
    meta = _run_meta(cfg, examples)
    done = _resume_point(partial, meta_path, meta, cfg.batch_size)
    if done:
        log.info("resuming %s after %d of %d rows", partial, done, len(examples))
    else:
        partial.write_text("", encoding="utf-8")
        meta_path.write_text(json.dumps(meta))
    if done < len(examples):
        try:
            _generate_into(cfg, examples, partial, done, progress)
        except BaseException:
            if partial.stat().st_size == 0:  # nothing to resume from (the model did not load, say): leave nothing behind
                partial.unlink(missing_ok=True)
                meta_path.unlink(missing_ok=True)
            raise
    os.replace(partial, final)
    meta_path.unlink(missing_ok=True)
    log.info("wrote %d predictions to %s", len(examples), final)
    return final


def _generate_into(cfg: EvalConfig, examples: list[Example], partial: Path, start: int, progress: bool) -> None:
    import torch
    from tqdm.auto import tqdm

    from stonklib.models import load_for_inference
    from stonklib.prompts import fit_prompt
    from stonklib.sampling.rollout import generate_texts

    torch.manual_seed(cfg.seed)
    model, tokenizer = load_for_inference(cfg.model, cfg.adapter, quantize=cfg.quantize, device=cfg.device)
    desc = "predict" + (f" ({Path(cfg.adapter).name})" if cfg.adapter else "")
    with partial.open("a", encoding="utf-8") as f, \
            tqdm(total=len(examples), initial=start, desc=desc, unit="ex", disable=not progress) as bar:
        for i in range(start, len(examples), cfg.batch_size):
            batch = examples[i:i + cfg.batch_size]
            prompts = [fit_prompt(ex, tokenizer, cfg.max_prompt_tokens, cfg.prompt_version, anonymized=cfg.anonymize)
                       for ex in batch]
            n = cfg.num_samples
            texts = generate_texts(model, tokenizer, [p.text for p in prompts], batch_size=cfg.batch_size,
                                   max_new_tokens=cfg.max_new_tokens, greedy=cfg.greedy and n == 1,
                                   temperature=cfg.temperature, top_p=cfg.top_p, progress=False, num_samples=n)
            records = ([PredictionRecord.from_completion(ex, t, p) for ex, t, p in zip(batch, texts, prompts, strict=True)]
                       if n == 1 else [PredictionRecord.from_votes(ex, texts[j * n:(j + 1) * n], p)
                                       for j, (ex, p) in enumerate(zip(batch, prompts, strict=True))])
            f.write("".join(r.to_json() + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(batch))
