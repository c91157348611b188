"""softmax over the last axis, any leading shape.

    y_i = exp(x_i - m) / sum_j exp(x_j - m),   m = max_j x_j           (forward)
    dx_i = y_i (dy_i - sum_j dy_j y_j)                                  (backward)

Subtracting the row max changes nothing mathematically and keeps exp from overflowing, so
logits of +-1e4 are fine. A row that is entirely -inf (every position masked) gives zeros,
not the NaN of 0/0: "attend to nothing" contributes nothing. A row holding +inf or NaN gives
NaN, as it should.

forward(x, out=None) -> (y, cache);  backward(dy, cache) -> (dx,)
"""
from __future__ import annotations

import numpy as np

from . import Kernel
from ._check import contiguous, dout_like, floats, out_buffer
from ._nb import LANES as _LANES
from ._nb import fexp, lane_max, lane_sum, neg_inf, njit, num_threads, one, prange, zero

NAME = "softmax"


def _check(x):
    floats(NAME, x=x)
    if x.ndim == 0:
        raise ValueError(f"{NAME}: x must have at least one axis, got a 0-d array")


# ---------------------------------------------------------------- NumPy reference

def forward_ref(x, out=None):
    _check(x)
    m = x.max(axis=-1, keepdims=True)                     # (..., 1) row max
    m = np.where(m == -np.inf, 0, m).astype(x.dtype)      # a fully -inf row: exp(-inf) = 0
    e = np.exp(x - m)                                     # (..., V), each <= 1
    s = e.sum(axis=-1, keepdims=True)                     # (..., 1), >= 1 unless all -inf
    y = e / np.where(s == 0, 1, s).astype(x.dtype)
    if out is not None:
        out_buffer(NAME, out, x.shape, x.dtype)[...] = y
        y = out
    return y, y                                           # the cache is y itself


def backward_ref(dy, y):
    dy = dout_like(NAME, dy, y, "dy")
    dot = (dy * y).sum(axis=-1, keepdims=True)            # (..., 1) sum_j dy_j y_j
    return (y * (dy - dot),)


REFERENCE = Kernel(NAME, "numpy", forward_ref, backward_ref, ("x",))


# ---------------------------------------------------------------- Numba CPU
# Rows are split into one chunk per thread. Max and sum use 16 lane accumulators so LLVM
# vectorises them without fastmath (a plain float max/sum loop is a serial dependency chain);
# exp is the vectorisable polynomial from _nb.


@njit(parallel=True)
def _softmax_rows(x, y, nchunks):
    R, V = x.shape
    per = (R + nchunks - 1) // nchunks
    for c in prange(nchunks):
        acc = np.empty(_LANES, x.dtype)
        for r in range(c * per, min(R, (c + 1) * per)):
            row = x[r]
            out = y[r]
            m = lane_max(row, acc)                       # 1. row max
            if m == neg_inf(x):
                m = zero(x)                              # fully -inf row -> all zeros
            # 2. e = exp(x - m) into the output (a plain loop: it vectorises), then its sum
            for j in range(V):
                out[j] = fexp(row[j] - m)
            s = lane_sum(out, acc)
            # 3. normalise
            inv = one(x) / s if s != zero(x) else zero(x)      # NaN stays NaN
            for j in range(V):
                out[j] = out[j] * inv


@njit(parallel=True)
def _softmax_bwd_rows(dy, y, dx, nchunks):
    R, V = y.shape
    per = (R + nchunks - 1) // nchunks
    for c in prange(nchunks):
        acc = np.empty(_LANES, y.dtype)
        for r in range(c * per, min(R, (c + 1) * per)):
            yr = y[r]
            gr = dy[r]
            out = dx[r]
            for k in range(_LANES):
                acc[k] = zero(y)
            nv = V - V % _LANES
            for j in range(0, nv, _LANES):
                for k in range(_LANES):
                    acc[k] += gr[j + k] * yr[j + k]
            dot = zero(y)
            for k in range(_LANES):
                dot += acc[k]
            for j in range(nv, V):
                dot += gr[j] * yr[j]
            for j in range(V):
                out[j] = yr[j] * (gr[j] - dot)


def _chunks(rows: int) -> int:
    return max(1, min(rows, 4 * num_threads()))


def forward_numba(x, out=None):
    _check(x)
    x = contiguous(x)
    y = out_buffer(NAME, out, x.shape, x.dtype)
    if x.size:
        x2 = x.reshape(-1, x.shape[-1])
        _softmax_rows(x2, y.reshape(x2.shape), _chunks(x2.shape[0]))
    return y, y


def backward_numba(dy, y):
    dy = dout_like(NAME, dy, y, "dy")
    dx = np.empty_like(y)
    if y.size:
        V = y.shape[-1]
        _softmax_bwd_rows(dy.reshape(-1, V), y.reshape(-1, V), dx.reshape(-1, V),
                          _chunks(y.size // V))
    return (dx,)


NUMBA = Kernel(NAME, "numba", forward_numba, backward_numba, ("x",))

# ---------------------------------------------------------------- CuPy GPU
CUPY = None        # slot for the GPU version (a later issue)


# ---------------------------------------------------------------- check and time

def _cases():
    from ._harness import Case

    def make(shape):
        return lambda dt, rng: ((rng.standard_normal(shape).astype(dt) * 3,), {})
    cases = []
    for shape in ((8, 1024, 1024), (4096, 6283), (64, 1000)):
        n = int(np.prod(shape))
        # bytes that must move: forward reads x, writes y; backward reads dy, y, writes dx
        cases.append(Case(f"x {shape}", make(shape), lambda it, n=n: 2 * n * it,
                          lambda it, n=n: 3 * n * it, "GB/s"))
    return cases


if __name__ == "__main__":
    from ._harness import run
    run(NAME, _cases())
