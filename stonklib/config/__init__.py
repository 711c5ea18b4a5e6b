"""Typed configs, one dataclass per stage, with help text and validation.

``DataConfig`` (``stonk data build``), ``WarmupConfig`` (``stonk warmup``), ``TrainConfig`` (``stonk
train``: GRPO, Stage I or II) and ``EvalConfig`` (``stonk evaluate``). The same field names are used
everywhere: the CLI flags (``--batch_size``), the YAML keys in ``configs/*.yaml`` (one section per
dataclass: ``data:``, ``warmup:``, ``train:``, ``eval:``) and the notebooks' parameters cells. Every
field carries its help text in ``metadata["help"]``; ``stonklib.cli`` turns the fields into flags, so
the two can never drift apart.

Validation lives in ``__post_init__`` and runs before any model is loaded. An error says which field
is wrong and how to fix it.
"""

from stonklib.config.core import (
    ConfigError,
    base_type,
    build,
    coerce,
    drop_retired,
    dump_yaml,
    field_types,
    load_yaml,
    to_dict,
)
from stonklib.config.stages import (
    ADVANTAGE_SCALES,
    BEST_METRICS,
    DIRECTION_SOURCES,
    IS_LEVELS,
    KERNEL_SWITCH,
    LOSS_TYPES,
    REWARD_PARTS,
    DataConfig,
    EvalConfig,
    TrainConfig,
    WarmupConfig,
    kernels_arg,
)

#: The YAML section each config reads from a combined file (``configs/smoke.yaml``).
SECTIONS = {DataConfig: "data", WarmupConfig: "warmup", TrainConfig: "train", EvalConfig: "eval"}

__all__ = ["ADVANTAGE_SCALES", "BEST_METRICS", "DIRECTION_SOURCES", "IS_LEVELS", "KERNEL_SWITCH", "LOSS_TYPES", "REWARD_PARTS", "SECTIONS", "ConfigError", "DataConfig",
           "EvalConfig", "TrainConfig", "WarmupConfig", "base_type", "build", "coerce", "drop_retired", "dump_yaml", "field_types", "kernels_arg",
           "load_yaml", "to_dict"]
