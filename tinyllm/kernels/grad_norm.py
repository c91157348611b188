"""grad_norm: the global L2 norm of several arrays (all of a model's gradients).

    total = sqrt( sum over arrays a, sum over elements i of a[i]**2 )

The sum runs in float64 whatever the arrays' dtype: a float32 sum of a million squares loses
digits. Each array's sum of squares is a float64 number; those are added in the order the
arrays are given, then one square root.

    forward(*arrays) -> (total, None)      total: a 0-d float64 array (0 for no arrays)

The arrays may have any shapes and float dtypes, each its own; they are only read. No
backward.

How one array's sum of squares is formed (the two implementations agree to rounding; a
float64 array gives the same bits in both):

- reference: ``dot(a, a)`` of the array as float64 (a float32 array is converted first);
- Numba: float64 arrays use the same BLAS ``dot``, already one pass; a contiguous float32
  array is read once by a loop that widens each element to float64 and may reassociate the
  sum so that it vectorises. A non-contiguous or other-dtype array takes the reference path.

Memory traffic: every array is read once.
"""
from __future__ import annotations

import math

import numpy as np

from . import Kernel
from ._family import GBPS, Family, Size, Work
from ._nb import njit

NAME = "grad_norm"
INPUTS = ("*arrays",)


def _check(arrays):
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{NAME}: array {i} must be a NumPy array, got {type(a).__name__}")
        if not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"{NAME}: array {i} must be a float array, got {a.dtype}")


def _sumsq_ref(a):
    """sum(a**2) in float64, as a Python float."""
    flat = a.reshape(-1) if a.dtype == np.float64 else a.astype(np.float64).reshape(-1)
    return float(np.dot(flat, flat))


def _total(arrays, sumsq):
    total = 0.0
    for a in arrays:
        total += sumsq(a)
    return np.asarray(math.sqrt(total))                  # 0-d float64; NaN / inf pass through


# ---------------------------------------------------------------- NumPy reference

def forward_ref(*arrays):
    _check(arrays)
    return _total(arrays, _sumsq_ref), None


REFERENCE = Kernel(NAME, "numpy", forward_ref, None, INPUTS)


# ---------------------------------------------------------------- Numba CPU

@njit(fastmath={"reassoc"})   # a plain sum: reassociation lets it vectorise (docs/DESIGN.md §6)
def _sumsq_f32(a):
    acc = 0.0                                            # float64 on purpose: the accumulator
    for i in range(a.size):
        x = np.float64(a[i])
        acc += x * x
    return acc


def _sumsq_numba(a):
    if a.dtype == np.float32 and a.flags.c_contiguous:
        return float(_sumsq_f32(a.reshape(-1)))
    return _sumsq_ref(a)


def forward_numba(*arrays):
    _check(arrays)
    return _total(arrays, _sumsq_numba), None


NUMBA = Kernel(NAME, "numba", forward_numba, None, INPUTS)


# ---------------------------------------------------------------- the family description
# params: n values split into `parts` arrays of unequal sizes (a model's gradients).

def _inputs(params, dtype, rng):
    n, parts = int(params["n"]), int(params.get("parts", 4))
    cuts = np.sort(rng.choice(np.arange(1, n), size=min(parts, n) - 1, replace=False)) \
        if n > 1 and parts > 1 else np.array([], int)
    sizes = np.diff(np.concatenate([[0], cuts, [n]]))
    return tuple(rng.standard_normal(int(s)).astype(dtype) for s in sizes), {}


def _work(params, itemsize):
    n = int(params["n"])
    return Work(flops=(2 * n, 0), bytes=(n * itemsize, 0))   # one multiply-add per element


def _label(params):
    return f"n {params['n']} in {params.get('parts', 4)} arrays"


FAMILY = Family(
    name=NAME, inputs=_inputs, work=_work, label=_label, unit=GBPS, sweep="n",
    test_sizes=(Size({"n": 1, "parts": 1}), Size({"n": 17, "parts": 3}),
                Size({"n": 1000, "parts": 7})),
    quick_sizes=(Size({"n": 1 << 18}), Size({"n": 1 << 20})),
    full_sizes=tuple(Size({"n": 1 << k}) for k in (16, 18, 20, 22)),
    tol={"float32": 1e-12, "float64": 1e-12}, torch=None, backward=False,
    out_dtype="float64", free_inputs=True)


if __name__ == "__main__":
    from ._harness import run
    run(NAME)
