"""Process-wide tuning of the Python runtime for a long-running worker."""

from __future__ import annotations

import gc

# The older generations keep CPython's ratios: a middle collection every 20 young ones, a
# full one every 10 middle ones (and only when the long-lived set has grown by a quarter).
_MIDDLE, _OLD = 20, 10


def tune_gc(young_threshold: int) -> None:
    """Fewer, larger young collections, and the objects alive at start-up (the imported
    modules) moved out of every later collection's reach. For a process's entry point (the
    `run` command): tests that run workers in their own process keep Python's defaults.

    Measured on the accept-heavy drain (40,000 earns): with CPython's thresholds (700, 10, 10)
    the collector took 4.7 s of the worker's 15.2 s of CPU — each full collection ~100 ms —;
    with a young threshold of 20,000 and the start-up objects frozen, 0.46 s (`bench/ab.py`)."""
    if young_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(young_threshold, _MIDDLE, _OLD)
