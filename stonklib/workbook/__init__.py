"""What only the notebooks and ``stonk report`` use; nothing else in stonklib imports this package.

- :mod:`~stonklib.workbook.notebook`: set-up and the parameters cell (every notebook);
- :mod:`~stonklib.workbook.explore`: data and prompt tables (01, 02);
- :mod:`~stonklib.workbook.reward_lab`: sampled groups, reward parts and hacking probes (03);
- :mod:`~stonklib.workbook.training`: live curves and the checkpoint table (04);
- :mod:`~stonklib.workbook.evaluation`: the base / Stage I / Stage II plan and its tables (05);
- :mod:`~stonklib.workbook.findings`: each notebook's closing Findings cell, from its numbers;
- :mod:`~stonklib.workbook.plots`: every figure the notebooks show;
- :mod:`~stonklib.workbook.report`: notebooks 01-05 under papermill, one HTML index.

The notebook helpers are re-exported here: ``from stonklib import workbook; workbook.setup_notebook()``.
"""

from stonklib.workbook.evaluation import (
    breakdown_table,
    comparison_table,
    equity_curves,
    evaluation_plan,
    load_tokenizer_for,
    prediction_frames,
    run_config,
    run_plan,
    stage1_model_of,
    stage1_note,
)
from stonklib.workbook.notebook import (
    config_from,
    figure_png,
    fresh_output_dir,
    parameters_source,
    setup_notebook,
)
from stonklib.workbook.training import (
    before_after,
    checkpoint_table,
    read_metrics,
    run_chain_live,
    run_training_live,
    run_warmup_live,
    warmup_config,
    warmup_progress,
)

__all__ = ["before_after", "breakdown_table", "checkpoint_table", "comparison_table", "config_from", "equity_curves",
           "evaluation_plan", "figure_png", "fresh_output_dir", "load_tokenizer_for", "parameters_source",
           "prediction_frames", "read_metrics", "run_chain_live", "run_config", "run_plan", "run_training_live",
           "run_warmup_live", "setup_notebook", "stage1_model_of", "stage1_note", "warmup_config", "warmup_progress"]
