"""softmax over the last axis, any leading shape.

    y_i = exp(x_i - m) / sum_j exp(x_j - m),   m = max_j x_j           (forward)
    dx_i = y_i (dy_i - sum_j dy_j y_j)                                  (backward)

Subtracting the row max changes nothing mathematically and keeps exp from overflowing, so
logits of +-1e4 are fine. A row that is entirely -inf (every position masked) gives zeros,
not the NaN of 0/0: "attend to nothing" contributes nothing. A row holding +inf or NaN gives
NaN, as it should. An axis of length 0 gives the empty result (as in PyTorch).

forward(x, out=None) -> (y, cache);  backward(dy, cache) -> (dx,)

``softmax_lse_ref(x)`` is the reference's math with the row logsumexp beside it
(lse = m + log sum_j exp(x_j - m)); the attention references build their probabilities with
it, so the softmax is written once.

The backward pass is derived step by step in docs/derivations/softmax.md.
"""
from __future__ import annotations

import math

import numpy as np

from . import Kernel
from ._check import contiguous, dout_like, floats, out_buffer
from ._family import GBPS, Family, Size, Work
from ._nb import LANES as _LANES
from ._nb import (chunk, chunks, fexp, lane_dot, lane_max, lane_sum, neg_inf, njit, one, prange,
                  zero)

NAME = "softmax"


def _check(x):
    floats(NAME, x=x)
    if x.ndim == 0:
        raise ValueError(f"{NAME}: x must have at least one axis, got a 0-d array")


# ---------------------------------------------------------------- NumPy reference

def _softmax_parts(x):
    """(y, m, s): the softmax of the rows of x, their shifted max m and sum s (..., 1)."""
    if x.shape[-1] == 0:                                  # no entries: the empty result
        z = np.zeros(x.shape[:-1] + (1,), x.dtype)
        return np.empty_like(x), z, z
    m = x.max(axis=-1, keepdims=True)                     # (..., 1) row max
    m = np.where(m == -np.inf, 0, m).astype(x.dtype)      # a fully -inf row: exp(-inf) = 0
    e = np.exp(x - m)                                     # (..., V), each <= 1
    s = e.sum(axis=-1, keepdims=True)                     # (..., 1), >= 1 unless all -inf
    return e / np.where(s == 0, 1, s).astype(x.dtype), m, s


def softmax_lse_ref(x):
    """(y, lse): the reference softmax of the rows of x and their logsumexp (..., 1),
    lse = m + log s (-inf for a row that is all -inf)."""
    y, m, s = _softmax_parts(x)
    return y, m + np.log(s, out=np.full_like(s, -np.inf), where=s > 0)


def forward_ref(x, out=None):
    _check(x)
    y = _softmax_parts(x)[0]
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
# Rows are split into a few chunks per thread (_nb.chunks). Max, sum and the backward's dot
# use 16 lane accumulators so LLVM vectorises them without fastmath (a plain float max/sum
# loop is a serial dependency chain); exp is the vectorisable polynomial from _nb.


@njit(parallel=True)
def _softmax_rows(x, y, nchunks):
    R, V = x.shape
    for c in prange(nchunks):
        acc = np.empty(_LANES, x.dtype)
        for r in range(*chunk(c, nchunks, R)):
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
    for c in prange(nchunks):
        acc = np.empty(_LANES, y.dtype)
        for r in range(*chunk(c, nchunks, R)):
            yr, gr, out = y[r], dy[r], dx[r]
            dot = lane_dot(gr, yr, acc)                  # sum_j dy_j y_j
            for j in range(V):
                out[j] = yr[j] * (gr[j] - dot)


def forward_numba(x, out=None):
    _check(x)
    x = contiguous(x)
    y = out_buffer(NAME, out, x.shape, x.dtype)
    if x.size:
        x2 = x.reshape(-1, x.shape[-1])
        _softmax_rows(x2, y.reshape(x2.shape), chunks(x2.shape[0]))
    return y, y


def backward_numba(dy, y):
    dy = dout_like(NAME, dy, y, "dy")
    dx = np.empty_like(y)
    if y.size:
        V = y.shape[-1]
        _softmax_bwd_rows(dy.reshape(-1, V), y.reshape(-1, V), dx.reshape(-1, V),
                          chunks(y.size // V))
    return (dx,)


NUMBA = Kernel(NAME, "numba", forward_numba, backward_numba, ("x",))


# ---------------------------------------------------------------- CUDA (numba.cuda)
# One block per row, nt threads (a power of two, _cuda.threads). Thread i owns the elements
# j = i, i + nt, ...; the first _ITEMS of them stay in registers (a constant-trip loop that
# unrolls), so a row of up to _ITEMS * nt elements is read from memory once; longer rows
# read the rest again. The row max and the sum are block trees in shared memory
# (_cuda.block_max / block_sum). Backward: the same layout, dot = sum_j dy_j y_j by a tree.

_ITEMS = 8


cuda = None          # numba.cuda, set by _cuda.kernels before a factory runs


def _cuda_factory(dtype):
    from . import _cuda
    block_sum, block_max = _cuda.reductions()
    st = _cuda.shared_type(dtype)
    MAXT, ITEMS = _cuda.MAX_THREADS, _ITEMS

    @cuda.jit
    def softmax_fwd(x, y, cst):
        sm = cuda.shared.array(MAXT, st)
        vals = cuda.local.array(ITEMS, st)
        r = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        V = x.shape[1]
        zero, ninf = cst[0], cst[1]
        m = ninf
        for it in range(ITEMS):                           # 1. row max (registers first)
            j = tid + it * nt
            v = x[r, j] if j < V else ninf
            vals[it] = v
            m = v if v > m else m
        for j in range(tid + ITEMS * nt, V, nt):
            v = x[r, j]
            m = v if v > m else m
        m = block_max(sm, m, tid, nt)
        if m == ninf:
            m = zero                                      # a fully -inf row -> all zeros
        s = zero
        for it in range(ITEMS):                           # 2. e = exp(x - m), its sum
            j = tid + it * nt
            if j < V:
                e = math.exp(vals[it] - m)
                vals[it] = e
                s += e
        for j in range(tid + ITEMS * nt, V, nt):
            e = math.exp(x[r, j] - m)
            y[r, j] = e
            s += e
        s = block_sum(sm, s, tid, nt)
        inv = cst[2] / s if s != zero else zero           # NaN stays NaN
        for it in range(ITEMS):                           # 3. normalise
            j = tid + it * nt
            if j < V:
                y[r, j] = vals[it] * inv
        for j in range(tid + ITEMS * nt, V, nt):
            y[r, j] = y[r, j] * inv

    @cuda.jit
    def softmax_bwd(dy, y, dx, cst):
        sm = cuda.shared.array(MAXT, st)
        r = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        d = cst[0]
        for j in range(tid, y.shape[1], nt):
            d += dy[r, j] * y[r, j]
        d = block_sum(sm, d, tid, nt)                     # sum_j dy_j y_j
        for j in range(tid, y.shape[1], nt):
            dx[r, j] = y[r, j] * (dy[r, j] - d)

    return softmax_fwd, softmax_bwd


def _cuda_consts(dtype):
    from . import _cuda
    return _cuda.consts(dtype, 0.0, -np.inf, 1.0)


def forward_cuda(x, out=None):
    from . import _cuda
    _check(_cuda.shadow(x))
    call = _cuda.Call(NAME, x, out)
    xd = call.dev(x)
    if out is not None:
        out_buffer(NAME, _cuda.shadow(out), x.shape, xd.dtype)
    y = call.empty(x.shape, xd.dtype) if out is None or call.host else out
    if x.size:
        V = x.shape[-1]
        fwd, _ = _cuda.kernels(_cuda_factory, xd.dtype.name)
        x2 = xd.reshape(-1, V)
        _cuda.launch(fwd, x2.shape[0], _cuda.threads(V, _ITEMS), x2, y.reshape(x2.shape),
                     _cuda_consts(xd.dtype))
    if out is not None and call.host:
        out[...] = call.out(y)
        return out, (call, y)
    return call.out(y), (call, y)


def backward_cuda(dy, cache):
    from . import _cuda
    call, y = cache
    dy = _cuda.dout(call, NAME, dy, y.shape, y.dtype, "dy")
    dx = call.empty(y.shape, y.dtype)
    if y.size:
        V = y.shape[-1]
        _, bwd = _cuda.kernels(_cuda_factory, y.dtype.name)
        R = y.size // V
        _cuda.launch(bwd, R, _cuda.threads(V), dy.reshape(R, V), y.reshape(R, V),
                     dx.reshape(R, V), _cuda_consts(y.dtype))
    return (call.out(dx),)


CUDA = Kernel(NAME, "cuda", forward_cuda, backward_cuda, ("x",))

# ---------------------------------------------------------------- the family

def _inputs(p, dtype, rng):
    return ((rng.standard_normal(p["shape"]) * 3).astype(dtype),), {}


def _work(p, it):
    n = int(np.prod(p["shape"]))
    # forward reads x, writes y; backward reads dy, y, writes dx. FLOPs (nominal): max, sub,
    # exp, sum, div (5 n) and dy*y, sum, sub, mul (4 n)
    return Work((5 * n, 4 * n), (2 * n * it, 3 * n * it))


def _size(*shape):
    return Size({"shape": list(shape)})


FAMILY = Family(
    NAME, _inputs, _work, label=lambda p: f"x {tuple(p['shape'])}", unit=GBPS,
    sweep="elements", sweep_value=lambda p: int(np.prod(p["shape"])),
    # one row of one; odd row lengths around the 16 lanes; rows of 1000; leading axes
    test_sizes=(_size(1, 1), _size(3, 7), _size(3, 17), _size(1, 33), _size(2, 5, 64),
                _size(4, 1000)),
    quick_sizes=(_size(8, 64, 256), _size(8, 128, 1024)),
    full_sizes=tuple(_size(8, T, 1024) for T in (128, 256, 512, 1024, 2048)),
    torch="softmax")


if __name__ == "__main__":
    from ._harness import run
    run(NAME)
