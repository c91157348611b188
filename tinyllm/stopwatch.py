"""The one stopwatch: how tinyllm times a call, everywhere it times one.

``python -m tinyllm.kernels.<family>``, ``tinyllm bench`` (kernels, ceilings, end to end) and
the torch peer process all time with ``measure`` and report with ``summarize``, so their
figures are comparable. This module imports nothing from tinyllm (NumPy only): the torch
peer, a plain script that must not import tinyllm or Numba, loads it by its file path.

    times = measure(fn, warmup=2, min_repeats=5, max_repeats=50, budget_s=1.0)
    stats = summarize(times)      # {"median_ms", "min_ms", "max_ms", "repeats"}

``warmup`` untimed calls come first (they load caches, compile, fault in memory); then at
least ``min_repeats`` timed calls, and more while ``budget_s`` seconds last, up to
``max_repeats``. The median is the figure; min and max show the spread.
"""
from __future__ import annotations

import time

import numpy as np


def measure(fn, warmup: int = 2, min_repeats: int = 5, max_repeats: int = 50,
            budget_s: float = 1.0, sync=None) -> list:
    """Seconds of each of at least ``min_repeats`` (and, while ``budget_s`` lasts, up to
    ``max_repeats``) calls of ``fn``, after ``warmup`` untimed calls. ``sync`` (e.g. a GPU
    synchronise) runs inside each timed interval."""
    for _ in range(warmup):
        fn()
        if sync is not None:
            sync()
    times = []
    t_end = time.perf_counter() + budget_s
    while len(times) < min_repeats or (len(times) < max_repeats
                                       and time.perf_counter() < t_end):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t0)
    return times


def summarize(times) -> dict:
    """Median, min and max in milliseconds, and how many repeats."""
    t = np.asarray(times, dtype=np.float64) * 1e3
    return {"median_ms": float(np.median(t)), "min_ms": float(t.min()),
            "max_ms": float(t.max()), "repeats": int(t.size)}


__all__ = ["measure", "summarize"]
