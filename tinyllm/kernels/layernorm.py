"""layernorm over the last axis, any leading shape. x (..., C); weight w, bias b (C,).

Per row (biased variance, two passes over the row so no catastrophic cancellation):

    mu   = (1/C) sum_j x_j
    var  = (1/C) sum_j (x_j - mu)^2
    rstd = 1 / sqrt(var + eps)
    xhat_j = (x_j - mu) rstd
    y_j  = xhat_j w_j + b_j                                                  (forward)

Backward, with g_j = dy_j w_j (the gradient reaching xhat):

    dx_j = rstd (g_j - (1/C) sum_k g_k - xhat_j (1/C) sum_k g_k xhat_k)
    dw_j = sum_rows dy_j xhat_j
    db_j = sum_rows dy_j                                                     (backward)

``weight`` or ``bias`` may be None (no scale / no shift); its gradient is then None.

forward(x, weight, bias, eps=1e-5) -> (y, cache)    cache = (x, weight, bias, mean, rstd)
backward(dy, cache) -> (dx, dweight, dbias)
"""
from __future__ import annotations

import numpy as np

from . import Kernel
from ._check import contiguous, dout_like, floats, shape
from ._family import GBPS, Family, Size, Work
from ._nb import SERIAL_WORK, chunk, chunks, njit, one, prange, row_sum, zero
from ..errors import ShapeError

NAME = "layernorm"


def _check(x, weight, bias, eps):
    floats(NAME, x=x, weight=weight, bias=bias)
    if x.ndim == 0:
        raise ShapeError(f"{NAME}: x must have at least one axis (..., C), got a 0-d array")
    C = x.shape[-1]
    if C == 0:
        raise ShapeError(f"{NAME}: x must have C >= 1 channels, got shape {x.shape}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            shape(NAME, name, p, (C,), "(C,), C = x.shape[-1]")
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise TypeError(f"{NAME}: eps must be a number, got {eps!r}") from None
    if not np.isfinite(e) or e < 0:
        raise ValueError(f"{NAME}: eps must be a finite number >= 0, got {eps!r}")
    return contiguous(x, weight, bias)


# ---------------------------------------------------------------- NumPy reference

def forward_ref(x, weight, bias, eps=1e-5):
    x, weight, bias = _check(x, weight, bias, eps)
    dt = x.dtype.type
    mean = x.mean(axis=-1, keepdims=True)                     # (..., 1)
    xc = x - mean                                             # (..., C)
    var = (xc * xc).mean(axis=-1, keepdims=True)              # (..., 1) biased
    rstd = dt(1) / np.sqrt(var + dt(eps))                     # (..., 1)
    y = xc * rstd                                             # (..., C) xhat
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y, (x, weight, bias, mean[..., 0], rstd[..., 0])


def backward_ref(dy, cache):
    x, weight, bias, mean, rstd = cache
    dy = dout_like(NAME, dy, x, "dy")
    C = x.shape[-1]
    mean, rstd = mean[..., None], rstd[..., None]             # (..., 1)
    xhat = (x - mean) * rstd                                  # (..., C)
    g = dy * weight if weight is not None else dy             # (..., C) dL/dxhat
    g_mean = g.mean(axis=-1, keepdims=True)                   # (..., 1)
    gx_mean = (g * xhat).mean(axis=-1, keepdims=True)         # (..., 1)
    dx = rstd * (g - g_mean - xhat * gx_mean)                 # (..., C)
    dyf, xhf = dy.reshape(-1, C), xhat.reshape(-1, C)
    dw = (dyf * xhf).sum(axis=0) if weight is not None else None  # (C,)
    db = dyf.sum(axis=0) if bias is not None else None        # (C,)
    return dx, dw, db


REFERENCE = Kernel(NAME, "numpy", forward_ref, backward_ref, ("x", "weight", "bias"))


# ---------------------------------------------------------------- Numba CPU
# Forward: row chunks in parallel; mean and variance are two passes over the row. Backward:
# the same row chunks give dx; each chunk also sums its rows' dy*xhat and dy into its own row
# of a (chunks, C) partial buffer, and those partials are added in a fixed order at the end.
# The chunking depends only on the row count (never on the thread count), so dweight/dbias
# are bitwise the same from run to run and from one thread setting to another.
#
# The row sums are small helpers (_nb.row_sum and the two below) compiled with
# fastmath={'reassoc'} only (DESIGN 6 allows it
# on plain sums; no exp, max or masking is involved, and NaN/Inf still propagate): LLVM then
# vectorises them with several accumulators. The 16-lane-accumulator trick of softmax
# compiled to scalar adds here, ~2.5x slower per pass than the reassoc sum (measured, 768
# columns, float32).

_BWD_CHUNKS = 64
_SUMS = {"reassoc"}


@njit(fastmath=_SUMS, error_model="numpy")
def _row_sq_dev(row, mu):
    """sum_j (row_j - mu)^2"""
    s = zero(row)
    for j in range(row.shape[0]):
        d = row[j] - mu
        s += d * d
    return s


@njit(fastmath=_SUMS, error_model="numpy")
def _row_g_sums(gr, w, xr, mu, rs, pw, pb):
    """sum_j g_j and sum_j g_j xhat_j (g = dy w, xhat = (x - mu) rs), returned; and the row's
    share of dweight and dbias added into pw, pb (elementwise, so reassoc does not touch
    their order)."""
    s1 = zero(xr)
    s2 = zero(xr)
    for j in range(xr.shape[0]):
        xh = (xr[j] - mu) * rs
        g = gr[j] * w[j]
        s1 += g
        s2 += g * xh
        pw[j] += gr[j] * xh
        pb[j] += gr[j]
    return s1, s2


@njit(inline="always", error_model="numpy")
def _ln_fwd_row(x, w, b, cf, eps, y, mean, rstd, r):
    row = x[r]
    out = y[r]
    mu = row_sum(row) / cf                               # pass 1: mean
    var = _row_sq_dev(row, mu) / cf                       # pass 2: biased variance
    rs = one(x) / np.sqrt(var + eps)
    mean[r] = mu
    rstd[r] = rs
    for j in range(x.shape[1]):                           # pass 3: y
        out[j] = (row[j] - mu) * rs * w[j] + b[j]


@njit(parallel=True, error_model="numpy")
def _ln_fwd_rows(x, w, b, cf, eps, y, mean, rstd, nchunks):
    R = x.shape[0]
    for c in prange(nchunks):
        for r in range(*chunk(c, nchunks, R)):
            _ln_fwd_row(x, w, b, cf, eps, y, mean, rstd, r)


@njit(error_model="numpy")
def _ln_fwd_rows_serial(x, w, b, cf, eps, y, mean, rstd):
    """The same rows on this thread: for a few rows (a decoding step's one token per
    sequence) a parallel loop costs more to launch than the rows take."""
    for r in range(x.shape[0]):
        _ln_fwd_row(x, w, b, cf, eps, y, mean, rstd, r)


@njit(parallel=True, error_model="numpy")
def _ln_bwd_rows(dy, x, w, mean, rstd, cf, dx, dwp, dbp, nchunks):
    R, C = x.shape
    for c in prange(nchunks):
        pw = dwp[c]
        pb = dbp[c]
        for j in range(C):
            pw[j] = zero(x)
            pb[j] = zero(x)
        for r in range(*chunk(c, nchunks, R)):
            xr = x[r]
            gr = dy[r]
            out = dx[r]
            mu = mean[r]
            rs = rstd[r]
            # pass 1: the two row sums, and the dweight/dbias partials
            s1, s2 = _row_g_sums(gr, w, xr, mu, rs, pw, pb)
            m1 = s1 / cf
            m2 = s2 / cf
            for j in range(C):                                # pass 2: dx
                out[j] = rs * (gr[j] * w[j] - m1 - (xr[j] - mu) * rs * m2)


def forward_numba(x, weight, bias, eps=1e-5):
    x, weight, bias = _check(x, weight, bias, eps)
    C = x.shape[-1]
    dt = x.dtype.type
    y = np.empty_like(x)
    lead = x.shape[:-1]
    mean = np.empty(lead, x.dtype)
    rstd = np.empty(lead, x.dtype)
    if x.size:
        x2 = x.reshape(-1, C)
        R = x2.shape[0]
        w = weight if weight is not None else np.ones(C, x.dtype)
        b = bias if bias is not None else np.zeros(C, x.dtype)
        args = (x2, w, b, dt(C), dt(eps), y.reshape(x2.shape), mean.reshape(R),
                rstd.reshape(R))
        if x2.size < SERIAL_WORK:
            _ln_fwd_rows_serial(*args)
        else:
            _ln_fwd_rows(*args, chunks(R))
    return y, (x, weight, bias, mean, rstd)


def backward_numba(dy, cache):
    x, weight, bias, mean, rstd = cache
    dy = dout_like(NAME, dy, x, "dy")
    C = x.shape[-1]
    R = x.size // C
    dx = np.empty_like(x)
    nch = max(1, min(R, _BWD_CHUNKS))
    dwp = np.empty((nch, C), x.dtype)
    dbp = np.empty((nch, C), x.dtype)
    if R:
        w = weight if weight is not None else np.ones(C, x.dtype)
        _ln_bwd_rows(dy.reshape(R, C), x.reshape(R, C), w, mean.reshape(R), rstd.reshape(R),
                     x.dtype.type(C), dx.reshape(R, C), dwp, dbp, nch)
    else:
        dwp[...] = 0
        dbp[...] = 0
    dw = dwp.sum(axis=0) if weight is not None else None
    db = dbp.sum(axis=0) if bias is not None else None
    return dx, dw, db


NUMBA = Kernel(NAME, "numba", forward_numba, backward_numba, ("x", "weight", "bias"))

# ---------------------------------------------------------------- the family

def _inputs(p, dtype, rng):
    N, C = p["N"], p["C"]
    dt = np.dtype(dtype)
    shp = tuple(p.get("shape", (N, C)))                   # leading axes, if given
    return ((rng.standard_normal(shp) * 2).astype(dt) + dt.type(0.5),
            1 + (rng.standard_normal(C) * 0.1).astype(dt),
            (rng.standard_normal(C) * 0.1).astype(dt)), {}


def _work(p, it):
    N, C = p["N"], p["C"]
    n = N * C
    # forward reads x, writes y; backward reads dy, x, writes dx (+ the C-sized params).
    # FLOPs (nominal): mean, var, normalise, scale+shift (~8 n); backward ~12 n
    return Work((8 * n, 12 * n), ((2 * n + 2 * C) * it, (3 * n + 3 * C) * it))


def _size(*shape):
    """x of this shape, rows N = prod(shape[:-1]), C = shape[-1]."""
    p = {"N": int(np.prod(shape[:-1])), "C": shape[-1]}
    return Size(p if len(shape) == 2 else dict(p, shape=list(shape)))


def _label(p):
    return f"x {tuple(p['shape'])}" if "shape" in p else f"x ({p['N']}, {p['C']})"


FAMILY = Family(
    NAME, _inputs, _work, label=_label, unit=GBPS, sweep="N",
    test_sizes=(_size(1, 1), _size(1, 7), _size(3, 6), _size(2, 2, 5), _size(5, 33),
                _size(2, 3, 48), _size(70, 100)),
    quick_sizes=(_size(256, 768), _size(1024, 768)),
    full_sizes=tuple(_size(N, 768) for N in (512, 1024, 2048, 4096, 8192)),
    torch="layernorm")


if __name__ == "__main__":
    from ._harness import run
    run(NAME)
