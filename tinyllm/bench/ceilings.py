"""The machine's measured ceilings, which every kernel figure is a fraction of.

- ``copy_GBps``: memory bandwidth of a plain copy of an array far larger than the caches,
  counted as bytes read + bytes written (STREAM's convention, and the kernels' byte counts
  use it too). The best of NumPy's single-threaded ``np.copyto`` and the same copy split
  over the pinned thread count (``np.copyto`` releases the GIL and calls ``memcpy``).
- ``sgemm_GFLOPs`` / ``dgemm_GFLOPs``: NumPy's BLAS matrix product of two square n x n
  matrices, float32 / float64, 2 n^3 FLOPs per call.

Each is the median over repeats after a warm-up (more repeats than a kernel gets, since
every fraction depends on it), with its spread kept in ``detail``. They are measured at the
start of a run and again at the end; the higher of the two is the ceiling (``combine``).

A fraction above 100% is possible and means something: small sizes live in cache, while
the copy ceiling is a DRAM figure; and torch's own BLAS or SciPy's OpenBLAS (which
Numba's ``np.dot`` calls) can beat NumPy's own BLAS, which sets the GEMM ceiling.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..stopwatch import measure, summarize


def copy_bandwidth(mib: int, threads: int, timing: dict) -> dict:
    n = mib * (1 << 20) // 8
    src = np.ones(n)                            # touched, so no page faults are timed
    dst = np.zeros(n)
    nbytes = 2 * src.nbytes
    out = {"bytes_per_call": nbytes, "array_MiB": mib}
    t = summarize(measure(lambda: np.copyto(dst, src), **timing))
    out["numpy_copyto"] = dict(t, GBps=nbytes / t["median_ms"] / 1e6)
    if threads > 1:
        per = -(-n // threads)
        parts = [(dst[i:i + per], src[i:i + per]) for i in range(0, n, per)]
        with ThreadPoolExecutor(threads) as pool:
            def par():
                for f in [pool.submit(np.copyto, d, s) for d, s in parts]:
                    f.result()
            t = summarize(measure(par, **timing))
        out[f"copyto_{threads}_threads"] = dict(t, GBps=nbytes / t["median_ms"] / 1e6)
    best = max((v for v in out.values() if isinstance(v, dict)), key=lambda v: v["GBps"])
    out["GBps"] = best["GBps"]
    return out


def gemm_rate(n: int, dtype, timing: dict) -> dict:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    c = np.empty((n, n), dtype)
    t = summarize(measure(lambda: np.matmul(a, b, out=c), **timing))
    flops = 2 * n ** 3
    return dict(t, n=n, flops_per_call=flops, GFLOPs=flops / t["median_ms"] / 1e6)


def combine(start: dict, end: dict) -> tuple:
    """(ceilings, note or None) from a measurement before and one after the kernels: each
    ceiling is the higher of the two (a busy host only ever lowers a figure); both stay in
    ``start`` / ``end``, and a note says when they differ by more than 10%."""
    keys = ("copy_GBps", "sgemm_GFLOPs", "dgemm_GFLOPs")
    out = {k: max(start[k], end[k]) for k in keys}
    out["start"] = {k: start[k] for k in keys}
    out["end"] = {k: end[k] for k in keys}
    out["detail"] = {"start": start["detail"], "end": end["detail"]}
    drift = [f"{k} {start[k]:.1f} -> {end[k]:.1f}" for k in keys
             if abs(start[k] - end[k]) > 0.1 * max(start[k], end[k])]
    note = None
    if drift:
        note = ("the ceilings moved by more than 10% during the run (" + ", ".join(drift)
                + "): the host's speed changed; the higher value is used")
    return out, note


def measure_ceilings(quick: bool, threads: int) -> dict:
    """{"copy_GBps", "sgemm_GFLOPs", "dgemm_GFLOPs", "detail": {...}}."""
    # the L3 here is reported as 300 MiB (shared with other guests): the full run copies
    # 1 GiB arrays so that nothing is served from cache
    mib, n = (256, 2048) if quick else (1024, 2048)
    t = ({"warmup": 2, "min_repeats": 10, "max_repeats": 30, "budget_s": 0.5} if quick else
         {"warmup": 3, "min_repeats": 20, "max_repeats": 100, "budget_s": 3.0})
    copy = copy_bandwidth(mib, threads, t)
    s = gemm_rate(n, np.float32, t)
    d = gemm_rate(n, np.float64, t)
    return {"copy_GBps": copy["GBps"], "sgemm_GFLOPs": s["GFLOPs"], "dgemm_GFLOPs": d["GFLOPs"],
            "detail": {"copy": copy, "sgemm": s, "dgemm": d}}
