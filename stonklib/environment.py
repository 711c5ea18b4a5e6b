"""Process settings the entry points apply, and every environment variable the project reads.

Importing :mod:`stonklib` changes nothing in the process. The entry points call these functions
before torch loads or allocates: ``stonk`` (:func:`stonklib.cli.main`), the benchmarks
(``benchmarks/bench_common.py``) and the notebooks (:func:`stonklib.workbook.setup_notebook`).

Variables read, and where (nothing else in the package reads the environment):

===========================  ==============================================================
``OMP_WAIT_POLICY``          :func:`prefer_passive_omp` sets ``PASSIVE`` unless it is set.
``PYTORCH_CUDA_ALLOC_CONF``  :func:`prefer_expandable_segments` sets expandable segments unless set.
``STONK_HOME``               :mod:`stonklib.paths`: the project root (models/, runs/, data/).
``RANK``, ``WORLD_SIZE``,    :mod:`stonklib.grpo.distributed` and the CLI: the launcher's process
``LOCAL_RANK``               group (``torchrun``, ``accelerate launch``).
``TRITON_INTERPRET``         :func:`stonklib.kernels.available`: Triton's own switch for running
                             kernels on CPU (the tests use it).
``HF_HUB_OFFLINE``           :func:`hub_offline`: offline, a hub model id must already be cached, or
                             loading it fails at once (:func:`stonklib.models.check_hub_reachable`).
``HF_TOKEN``                 read by ``huggingface_hub`` itself, never by stonklib, never logged.
``STONK_OUTPUT_DIR``         ``train_stage1.sh`` / ``train_stage2.sh`` only: their default ``--output_dir``.
===========================  ==============================================================

Every switch of the training fast path is a :class:`~stonklib.config.TrainConfig` field
(``triton_kernels``, ``decode_mlp_kernel``, ``compile_decoder``, ``decode_graphs``,
``update_graphs``, ...), not an environment variable.
"""

from __future__ import annotations

import os

#: What the trainer asks of torch's CUDA allocator unless ``PYTORCH_CUDA_ALLOC_CONF`` is set.
CUDA_ALLOC_CONF = "expandable_segments:True"


def prefer_passive_omp() -> str:
    """Default OpenMP to passive waiting; returns the policy in force.

    OpenMP's default spin-waiting makes small matrix products many times slower when the cores are
    shared with another busy process, which dominates CPU decoding.
    Passive waiting costs nothing measurable on big products. OpenMP reads the variable when torch
    loads, so this only takes effect before that; a value the user set is left alone.
    """
    return os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def prefer_expandable_segments() -> str:
    """Default torch's CUDA allocator to expandable segments; returns the configuration in force.

    The update replays a CUDA graph whose memory pool stays reserved beside the allocator's cache
    for the sampling phase; with fixed-size segments the two fragment, with expandable segments
    they pack (``benchmarks/RESULTS.md`` has the reserved memory of both). Takes effect only before
    CUDA's first allocation in the process; a value the user set is left alone.
    """
    return os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", CUDA_ALLOC_CONF)


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks the hub client never to go online (it reads 1, true, yes or on)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
