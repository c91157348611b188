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

Memory: ``rss_mb()`` reads this process's resident memory now and its high-water mark;
``reset_peak_rss()`` resets the mark, so a peak can be taken over one phase alone.
``train_and_generate`` is the end-to-end protocol that tinyllm's GPT and torch's both follow
in ``tinyllm bench``: warm-up steps, timed training steps with their peak memory, then timed
greedy generations with and without the KV cache.
"""
from __future__ import annotations

import contextlib
import sys
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


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's resident memory (Linux >= 4.0:
    writing 5 to /proc/self/clear_refs); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_mb() -> dict:
    """{"rss": now, "peak": high-water mark} in MiB (VmRSS / VmHWM, or ru_maxrss)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key = "rss" if line.startswith("VmRSS") else "peak"
                    out[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    if "peak" not in out:
        import resource
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["peak"] = kb / (1024 * 1024 if sys.platform == "darwin" else 1024)
        out.setdefault("rss", out["peak"])
    return out


def train_and_generate(step, generate, m: dict, base_mb: float, after_model_mb: float,
                       before_generate=None) -> dict:
    """The end-to-end protocol, the same for every engine.

    ``step()`` is one training step; ``generate(use_cache)`` one whole greedy generation of
    ``m["gen_tokens"]`` tokens. ``m["warm_steps"]`` untimed steps, then ``m["train_steps"]``
    timed ones (the peak resident memory is taken over those alone where the kernel allows
    it), then ``before_generate()`` if given, then for the cached and the uncached path one
    untimed and ``m["gen_repeats"]`` timed generations. ``base_mb`` / ``after_model_mb`` are
    the resident memory after the imports and after building the model."""
    for _ in range(m["warm_steps"]):
        step()
    exact = reset_peak_rss()
    train = measure(step, warmup=0, min_repeats=m["train_steps"], max_repeats=m["train_steps"],
                    budget_s=0.0)
    peak = rss_mb()["peak"]
    if before_generate is not None:
        before_generate()
    gen = {}
    for key, cache in (("gen_cache", True), ("gen_nocache", False)):
        times = measure(lambda c=cache: generate(c), warmup=1, min_repeats=m["gen_repeats"],
                        max_repeats=m["gen_repeats"], budget_s=0.0)
        gen[key] = {"times_s": times, "tokens": m["gen_tokens"]}
    return {"train": {"times_s": train}, **gen,
            "memory_MiB": {"base": base_mb, "after_model": after_model_mb, "peak_train": peak,
                           "peak_is_train_only": exact}}


class OpProfile:
    """Where a step's time goes, op by op: what ``tinyllm bench --profile`` prints.

    While one is active (``with OpProfile() as prof:``), the autograd engine records every
    graph node's forward and backward (``add(phase, name, seconds, fresh_bytes)``: seconds
    inside the op, and the bytes of the arrays it returned that own their memory, i.e. fresh
    allocations), and the matrix-product tiles (``kernels.matmul``) record themselves as
    ``"gemm"`` nested inside whichever node called them (``nested``). Nothing is recorded
    while none is active: the engine checks one global per op.

    ``phase(name)`` times a whole phase of the step (forward, backward, optimiser, ...);
    what a phase spends outside its ops is the Python and engine overhead between them.
    """

    _active = None

    def __init__(self):
        self.ops = {}        # (phase, name) -> [seconds, calls, fresh bytes]
        self.nested = {}     # (phase, node, name) -> [seconds, calls]
        self.phases = {}     # phase -> [seconds, calls]
        self.current = None  # the phase being timed
        self.node = None     # the graph node running now (set by the engine)

    def __enter__(self):
        OpProfile._active = self
        return self

    def __exit__(self, *exc):
        OpProfile._active = None
        return False

    def add(self, name: str, seconds: float, fresh_bytes: int = 0, phase: str | None = None):
        key = (phase or self.current or "-", name)
        r = self.ops.get(key)
        if r is None:
            r = self.ops[key] = [0.0, 0, 0]
        r[0] += seconds
        r[1] += 1
        r[2] += fresh_bytes

    def add_nested(self, name: str, seconds: float):
        key = (self.current or "-", self.node or "-", name)
        r = self.nested.get(key)
        if r is None:
            r = self.nested[key] = [0.0, 0]
        r[0] += seconds
        r[1] += 1

    @contextlib.contextmanager
    def phase(self, name: str):
        """``with prof.phase("forward"): ...``: time a phase; ops inside are filed under it."""
        prev, self.current = self.current, name
        t0 = time.perf_counter()
        try:
            yield
        finally:
            r = self.phases.setdefault(name, [0.0, 0])
            r[0] += time.perf_counter() - t0
            r[1] += 1
            self.current = prev


def active_profile() -> OpProfile | None:
    """The ``OpProfile`` recording now, or None (the common case: one attribute read)."""
    return OpProfile._active


def fresh_bytes(arrays) -> int:
    """Bytes of the arrays among ``arrays`` that own their memory (not views)."""
    n = 0
    for a in arrays:
        if isinstance(a, np.ndarray) and a.base is None:
            n += a.nbytes
    return n


__all__ = ["measure", "summarize", "rss_mb", "reset_peak_rss", "train_and_generate",
           "OpProfile", "active_profile", "fresh_bytes"]
