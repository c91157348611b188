"""``python -m tinyllm.kernels.<family>``: check every implementation against the reference,
then time it (the way llm.c's ``dev/cuda`` files do).

A family module lists ``Case`` objects: a way to make inputs, and the work a forward and a
backward do (floating-point operations, or bytes that must move at least once). The harness
prints, per implementation, the largest error against the reference and the median time with
the rate it implies (GFLOP/s for compute-bound kernels, GB/s for memory-bound ones).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class Case:
    label: str
    make: Callable          # (dtype, rng) -> (arrays tuple, options dict)
    fwd_work: object        # FLOPs (unit="GFLOP/s") or bytes (unit="GB/s") of one forward,
    bwd_work: object        # and of one backward; a number, or a function of the itemsize
    unit: str = "GFLOP/s"


def _flat(x):
    if x is None:
        return []
    if isinstance(x, (tuple, list)):
        return [a for item in x for a in _flat(item)]
    return [np.asarray(x)]


def max_rel_err(got, want) -> float:
    """max |got - want| / max |want| over every array in two matching structures."""
    worst = 0.0
    for g, w in zip(_flat(got), _flat(want)):
        scale = max(float(np.max(np.abs(w), initial=0.0)), 1e-30)
        with np.errstate(invalid="ignore"):
            diff = np.abs(g.astype(np.float64) - w.astype(np.float64))
        both_inf = np.isinf(g) & np.isinf(w) & (np.sign(g) == np.sign(w))
        diff = np.where(both_inf, 0.0, diff)
        worst = max(worst, float(np.max(diff, initial=0.0)) / scale)
    return worst


def random_like(out, rng):
    if isinstance(out, (tuple, list)):
        return tuple(random_like(o, rng) for o in out)
    return rng.standard_normal(np.shape(out)).astype(np.asarray(out).dtype)


def timeit(fn, repeat: int, min_time: float = 0.2):
    """Median and min seconds of one call, after a warm-up call."""
    fn()
    times = []
    t_end = time.perf_counter() + min_time
    while len(times) < repeat or (time.perf_counter() < t_end and len(times) < 100 * repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.min(times))


def main(name: str, cases: list, argv=None) -> int:
    from . import available, get
    from ._nb import num_threads

    p = argparse.ArgumentParser(prog=f"python -m tinyllm.kernels.{name}",
                                description=f"Check and time the {name} kernels.")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--impl", action="append", help="only these implementations")
    p.add_argument("--no-time", action="store_true", help="check only")
    args = p.parse_args(argv)
    dtype = np.dtype(args.dtype)
    impls = [i for i in available(name) if not args.impl or i in args.impl]
    print(f"{name}: {dtype}, implementations {', '.join(impls)}, numba threads "
          f"{num_threads()}")
    bad = False
    for case in cases:
        rng = np.random.default_rng(0)
        arrays, opts = case.make(dtype, rng)
        ref = get(name, "numpy")
        out_r, cache_r = ref.forward(*arrays, **opts)
        dout = random_like(out_r, rng)
        grads_r = ref.backward(dout, cache_r)
        print(f"\n  {case.label}")
        print(f"  {'impl':6s} {'fwd err':>9s} {'bwd err':>9s} {'fwd ms':>9s} "
              f"{case.unit:>8s} {'fwd+bwd ms':>11s} {case.unit:>8s}")
        tol = 1e-4 if dtype == np.float32 else 1e-9
        for impl in impls:
            k = get(name, impl)
            out, cache = k.forward(*arrays, **opts)
            grads = k.backward(dout, cache)
            e_f, e_b = max_rel_err(out, out_r), max_rel_err(grads, grads_r)
            bad |= not (e_f <= tol and e_b <= tol)
            row = f"  {impl:6s} {e_f:9.1e} {e_b:9.1e}"
            if not args.no_time:
                tf, _ = timeit(lambda: k.forward(*arrays, **opts), args.repeat)
                tfb, _ = timeit(lambda: k.backward(dout, k.forward(*arrays, **opts)[1]),
                                args.repeat)
                wf, wb = (w(dtype.itemsize) if callable(w) else w
                          for w in (case.fwd_work, case.bwd_work))
                rf, rfb = wf / tf / 1e9, (wf + wb) / tfb / 1e9
                row += f" {tf * 1e3:9.3f} {rf:8.1f} {tfb * 1e3:11.3f} {rfb:8.1f}"
            print(row, flush=True)
    if bad:
        print(f"\nFAILED: some implementation is further than {tol:g} from the reference")
    return 1 if bad else 0


def run(name: str, cases: list) -> None:
    sys.exit(main(name, cases))
