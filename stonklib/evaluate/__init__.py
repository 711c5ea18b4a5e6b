"""Evaluation that tells skill from luck: predictions, metrics, baselines, breakdowns, backtest.

Run it as ``stonk evaluate --model DIR [--adapter DIR] --split test --limit 64 --out DIR``
(generate, then score) or ``stonk evaluate --predictions FILE.jsonl --out DIR``
(score a file). Both write ``DIR/metrics.json`` and five PNGs; from Python call
:func:`run_evaluate` with an :class:`~stonklib.config.EvalConfig`.

The modules follow the data:

- ``generate``: examples -> prompts -> greedy completions -> ``predictions.jsonl``
- ``predictions``: the row record, and reading a file (errors vs counted skips)
- ``metrics``: every metric with its exact definition, and the backtest
- ``baselines``: majority, momentum, logistic regression, the base model
- ``breakdowns``: per sector / month / volatility regime, and the ensemble vote
- ``run``: the whole command, ``metrics.json``, the plots and the verdict

Next-day direction is close to a coin flip and the up-rate drifts, so the
headline is never accuracy alone: it is accuracy with a Wilson interval, a
binomial test against the majority rate, and the baselines on the same rows.
"""

from stonklib.evaluate.baselines import compute_baselines
from stonklib.evaluate.breakdowns import compute_breakdowns, ensemble_predictions
from stonklib.evaluate.generate import generate_predictions, load_eval_examples
from stonklib.evaluate.metrics import backtest, compute_metrics, reliability_table
from stonklib.evaluate.predictions import (
    PredictionRecord,
    Predictions,
    PredictionsFileError,
    read_predictions,
)
from stonklib.evaluate.run import run_evaluate, verdict

__all__ = [
    "PredictionRecord", "Predictions", "PredictionsFileError", "backtest", "compute_baselines",
    "compute_breakdowns", "compute_metrics", "ensemble_predictions", "generate_predictions",
    "load_eval_examples", "read_predictions", "reliability_table", "run_evaluate", "verdict",
]
