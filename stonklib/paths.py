"""Project folders, computed from the package location (one place, no magic strings).

``STONK_HOME`` overrides the project root, e.g. when the package is installed
non-editable and you want models/ and runs/ somewhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(os.environ.get("STONK_HOME", Path(__file__).resolve().parent.parent))
DATA = ROOT / "data"
BUILT_DATA = DATA / "built"
MODELS = ROOT / "models"
RUNS = ROOT / "runs"
REPORTS = ROOT / "reports"
CONFIGS = ROOT / "configs"
NOTEBOOKS = ROOT / "notebooks"

EMBEDDED_MODEL_NAME = "smollm2-135m-instruct"
EMBEDDED_MODEL = MODELS / EMBEDDED_MODEL_NAME
HUB_DEFAULT_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"
HF_DATASET = "2084Collective/deepstock-sp500-companies-with-info-and-user-prompt_buy_sell_v2"


def default_data_dir(source: str = "sp500") -> Path:
    """Where `stonk data build --source SOURCE` writes when no --out is given."""
    return BUILT_DATA / source
