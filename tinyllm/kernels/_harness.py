"""``python -m tinyllm.kernels.<family>``: check every implementation against the reference,
then time it (the way llm.c's ``dev/cuda`` files do), and the numerical helpers the checks and
the tests share.

The harness reads the family's ``FAMILY`` (``_family.py``): at each of its sizes (``--sizes``,
the full sweep by default, the same sizes as ``tinyllm bench``) it builds the inputs with
``FAMILY.inputs``, prints per implementation the largest error against the reference and
the median time (``tinyllm.stopwatch``) with the rate it implies from ``FAMILY.work``
(GFLOP/s for compute-bound families, GB/s for memory-bound ones). A size whose reference is
marked too slow (``Size.ref = False``) is timed without the check. An implementation fails the
check when it is further than 10 x ``FAMILY.tol`` from the reference (the sizes here are
much larger than the contract test's).

Helpers: ``max_rel_err`` (max |got - want| / max |want| over matching structures),
``random_like`` (a random upstream gradient shaped like an output) and
``central_differences`` (the one finite-difference gradient of the test suite).
"""
from __future__ import annotations

import argparse
import copy
import math
import sys

import numpy as np

from ..stopwatch import measure, summarize


def _flat(x):
    if x is None:
        return []
    if isinstance(x, (tuple, list)):
        return [a for item in x for a in _flat(item)]
    return [np.asarray(x)]


def max_rel_err(got, want) -> float:
    """max |got - want| / max |want| over every array in two matching structures. Equal
    infinities count as equal, as does NaN against NaN; NaN against a number is an infinite
    error (``max`` over Python floats would silently drop it)."""
    worst = 0.0
    for g, w in zip(_flat(got), _flat(want)):
        finite = np.isfinite(w)
        scale = max(float(np.max(np.abs(np.where(finite, w, 0.0)), initial=0.0)), 1e-30)
        with np.errstate(invalid="ignore"):
            diff = np.abs(g.astype(np.float64) - w.astype(np.float64))
        both_inf = np.isinf(g) & np.isinf(w) & (np.sign(g) == np.sign(w))
        both_nan = np.isnan(g) & np.isnan(w)
        diff = np.where(both_inf | both_nan, 0.0, diff)
        if np.isnan(diff).any():
            return math.inf
        worst = max(worst, float(np.max(diff, initial=0.0)) / scale)
    return worst


def random_like(out, rng):
    if isinstance(out, (tuple, list)):
        return tuple(random_like(o, rng) for o in out)
    return rng.standard_normal(np.shape(out)).astype(np.asarray(out).dtype)


def central_differences(loss, arrays, wrt=None, eps: float = 1e-6, at=None) -> list:
    """Numerical gradients of the scalar ``loss(arrays)`` with respect to the arrays
    ``arrays[j]`` for j in ``wrt`` (default: all), float64, each element nudged in place and
    restored:

        dL/dx_i ~ (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)        error O(eps^2)

    Returns one array per j in ``wrt``. ``at`` (optional) holds, per j in ``wrt``, the index
    tuples to differentiate (None: every element); the other elements come back NaN, which
    keeps big inputs cheap."""
    wrt = range(len(arrays)) if wrt is None else wrt
    grads = []
    for n, j in enumerate(wrt):
        a = arrays[j]
        g = np.full(a.shape, np.nan)
        idxs = np.ndindex(*a.shape) if at is None or at[n] is None else at[n]
        for idx in idxs:
            old = a[idx]
            a[idx] = old + eps
            up = float(loss(arrays))
            a[idx] = old - eps
            down = float(loss(arrays))
            a[idx] = old
            g[idx] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


def main(name: str, argv=None) -> int:
    from . import available, family, get
    from ._nb import num_threads

    fam = family(name)
    p = argparse.ArgumentParser(prog=f"python -m tinyllm.kernels.{name}",
                                description=f"Check and time the {name} kernels.")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--sizes", choices=("test", "quick", "full"), default="full",
                   help="which of the family's sizes (default: full, as tinyllm bench)")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--impl", action="append", help="only these implementations")
    p.add_argument("--no-time", action="store_true", help="check only")
    args = p.parse_args(argv)
    from .. import runtime
    runtime.configure()          # the layer tinyllm bench and the command line run Numba on
    dtype = np.dtype(args.dtype)
    impls = [i for i in available(name) if not args.impl or i in args.impl]
    print(f"{name}: {dtype}, {args.sizes} sizes, implementations {', '.join(impls)}, "
          f"numba threads {num_threads()}")
    tol = 10 * fam.tol[dtype.name]
    ref = get(name, "numpy")
    bad = False
    for size in fam.sizes(args.sizes):
        rng = np.random.default_rng(0)
        arrays, opts = fam.inputs(size.params, dtype, rng)
        check, dout = size.ref, None
        # a family without a backward may update its inputs in place: each call gets a copy
        fresh = (lambda: arrays) if fam.backward else (lambda: copy.deepcopy(arrays))
        if check:
            args_r = fresh()
            out_r, cache_r = ref.forward(*args_r, **opts)
            if not fam.backward:               # an in-place update: its inputs are outputs
                out_r = (out_r, args_r)
            dout = random_like(out_r, rng) if fam.backward else None
            grads_r = ref.backward(dout, cache_r) if fam.backward else None
        print(f"\n  {fam.label(size.params)}" + ("" if check else "  (reference skipped)"))
        print(f"  {'impl':6s} {'fwd err':>9s} {'bwd err':>9s} {'fwd ms':>9s} "
              f"{fam.unit:>8s} {'fwd+bwd ms':>11s} {fam.unit:>8s}")
        work = fam.work(size.params, dtype.itemsize)
        w_f, w_b = (work.bytes if fam.unit == "GB/s" else work.flops)
        for impl in impls:
            if impl == "numpy" and not check:
                continue
            k = get(name, impl)
            args_k = fresh()
            out, cache = k.forward(*args_k, **opts)
            if not fam.backward:
                out = (out, args_k)
            if not check:
                row = f"  {impl:6s} {'-':>9s} {'-':>9s}"
            else:
                e_f = max_rel_err(out, out_r)
                e_b = max_rel_err(k.backward(dout, cache), grads_r) if fam.backward else 0.0
                bad |= not (e_f <= tol and e_b <= tol)
                row = f"  {impl:6s} {e_f:9.1e} {e_b:9.1e}"
            if not args.no_time:
                if dout is None and fam.backward:
                    dout = random_like(out, rng)

                timed = fresh()           # an in-place update must not touch ``arrays``

                def fwd():
                    return k.forward(*timed, **opts)

                def fwd_bwd():
                    return k.backward(dout, k.forward(*timed, **opts)[1])

                timing = dict(warmup=1, min_repeats=args.repeat, max_repeats=100 * args.repeat,
                              budget_s=0.2)
                tf = summarize(measure(fwd, **timing))["median_ms"] / 1e3
                row += f" {tf * 1e3:9.3f} {w_f / tf / 1e9:8.1f}"
                if fam.backward:
                    tfb = summarize(measure(fwd_bwd, **timing))["median_ms"] / 1e3
                    row += f" {tfb * 1e3:11.3f} {(w_f + w_b) / tfb / 1e9:8.1f}"
            print(row, flush=True)
    if bad:
        print(f"\nFAILED: some implementation is further than {tol:g} from the reference")
    return 1 if bad else 0


def run(name: str) -> None:
    sys.exit(main(name))
