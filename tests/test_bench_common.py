"""benchmarks/bench_common.py helpers that the throughput numbers depend on."""

from __future__ import annotations

import gc
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bc():
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "benchmarks" / "bench_common.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_common", mod)
    spec.loader.exec_module(mod)
    return mod


def test_gc_clock_counts_collections_between_takes_and_detaches(bc):
    with bc.GCClock() as clock:
        assert clock.take() == (0.0, 0)
        gc.collect(0)
        gc.collect()  # a full collection
        seconds, full = clock.take()
        assert seconds > 0 and full == 1
        assert clock.take() == (0.0, 0)  # take() starts a new interval
    n_callbacks = len(gc.callbacks)
    gc.collect()
    assert clock.take() == (0.0, 0) and len(gc.callbacks) == n_callbacks  # no longer listening
