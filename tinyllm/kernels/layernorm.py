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

The backward pass is derived step by step in docs/derivations/layernorm.md.
"""
from __future__ import annotations

import math

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


# ---------------------------------------------------------------- CUDA (numba.cuda)
# Forward: one block per row, two block trees (mean, then the biased variance of x - mu:
# the same two passes as the CPU versions). Backward: dx one block per row with two trees
# (sum g, sum g xhat); dweight and dbias are column sums done without atomics: fixed chunks
# of rows each summed in row order into a (chunks, C) partial (one thread per column), then
# the chunks added in order, so the bits never depend on scheduling.

cuda = None          # numba.cuda, set by _cuda.kernels before a factory runs


def _cuda_factory(dtype):
    from . import _cuda
    block_sum, _ = _cuda.reductions()
    st = _cuda.shared_type(dtype)
    MAXT = _cuda.MAX_THREADS

    @cuda.jit
    def ln_fwd(x, w, b, eps, y, mean, rstd, cst):
        sm = cuda.shared.array(MAXT, st)
        r = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        C = x.shape[1]
        cf = cst[1]                                        # C, in the dtype
        s = cst[0]
        for j in range(tid, C, nt):
            s += x[r, j]
        mu = block_sum(sm, s, tid, nt) / cf                # pass 1: mean
        s = cst[0]
        for j in range(tid, C, nt):
            d = x[r, j] - mu
            s += d * d
        var = block_sum(sm, s, tid, nt) / cf               # pass 2: biased variance
        rs = cst[2] / math.sqrt(var + eps)
        if tid == 0:
            mean[r] = mu
            rstd[r] = rs
        for j in range(tid, C, nt):                        # pass 3: y
            y[r, j] = (x[r, j] - mu) * rs * w[j] + b[j]

    @cuda.jit
    def ln_bwd_dx(dy, x, w, mean, rstd, dx, cst):
        sm = cuda.shared.array(MAXT, st)
        r = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        C = x.shape[1]
        mu = mean[r]
        rs = rstd[r]
        s1 = cst[0]
        s2 = cst[0]
        for j in range(tid, C, nt):
            g = dy[r, j] * w[j]
            s1 += g
            s2 += g * ((x[r, j] - mu) * rs)
        m1 = block_sum(sm, s1, tid, nt) / cst[1]           # (1/C) sum_k g_k
        m2 = block_sum(sm, s2, tid, nt) / cst[1]           # (1/C) sum_k g_k xhat_k
        for j in range(tid, C, nt):
            dx[r, j] = rs * (dy[r, j] * w[j] - m1 - (x[r, j] - mu) * rs * m2)

    @cuda.jit
    def ln_bwd_params(dy, x, mean, rstd, pw, pb, rows_per):
        # pw[c, j] = sum over chunk c's rows of dy xhat, pb[c, j] of dy (row order)
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        c = cuda.blockIdx.y
        R, C = x.shape
        if j < C:
            sw = pw[c, j]                                  # 0 (zeroed), in the dtype
            sb = pb[c, j]
            for r in range(c * rows_per, min(R, (c + 1) * rows_per)):
                g = dy[r, j]
                sw += g * ((x[r, j] - mean[r]) * rstd[r])
                sb += g
            pw[c, j] = sw
            pb[c, j] = sb

    @cuda.jit
    def ln_sum_chunks(pw, pb, dw, db):
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if j < dw.shape[0]:
            sw = pw[0, j]
            sb = pb[0, j]
            for c in range(1, pw.shape[0]):
                sw += pw[c, j]
                sb += pb[c, j]
            dw[j] = sw
            db[j] = sb

    return ln_fwd, ln_bwd_dx, ln_bwd_params, ln_sum_chunks


def forward_cuda(x, weight, bias, eps=1e-5):
    from . import _cuda
    _check(_cuda.shadow(x), _cuda.shadow(weight), _cuda.shadow(bias), eps)
    call = _cuda.Call(NAME, x, weight, bias)
    xd = call.dev(x)
    dt = xd.dtype
    C = x.shape[-1]
    R = x.size // C
    w = call.dev(weight) if weight is not None else call.xp.ones(C, dt)
    b = call.dev(bias) if bias is not None else call.xp.zeros(C, dt)
    y = call.empty(x.shape, dt)
    mean = call.empty(x.shape[:-1], dt)
    rstd = call.empty(x.shape[:-1], dt)
    fwd = _cuda.kernels(_cuda_factory, dt.name)[0]
    _cuda.launch(fwd, R, _cuda.threads(C), xd.reshape(R, C), w, b, dt.type(eps),
                 y.reshape(R, C), mean.reshape(R), rstd.reshape(R),
                 _cuda.consts(dt, 0.0, C, 1.0))
    cache = (call, xd, w, weight is not None, bias is not None, mean, rstd)
    return call.out(y), cache


def backward_cuda(dy, cache):
    from . import _cuda
    call, x, w, has_w, has_b, mean, rstd = cache
    dt = x.dtype
    dy = _cuda.dout(call, NAME, dy, x.shape, dt, "dy")
    C = x.shape[-1]
    R = x.size // C
    _, bwd_dx, bwd_p, sum_chunks = _cuda.kernels(_cuda_factory, dt.name)
    x2, dy2 = x.reshape(R, C), dy.reshape(R, C)
    dx = call.empty(x.shape, dt)
    _cuda.launch(bwd_dx, R, _cuda.threads(C), dy2, x2, w, mean.reshape(R), rstd.reshape(R),
                 dx.reshape(R, C), _cuda.consts(dt, 0.0, C, 1.0))
    nch = max(1, min(R, _BWD_CHUNKS))
    rows_per = -(-R // nch) if R else 1
    pw, pb = call.zeros((nch, C), dt), call.zeros((nch, C), dt)
    dw, db = call.empty((C,), dt), call.empty((C,), dt)
    nt = _cuda.threads(C, 1)
    _cuda.launch(bwd_p, (-(-C // nt), nch), nt, dy2, x2, mean.reshape(R), rstd.reshape(R),
                 pw, pb, rows_per)
    _cuda.launch(sum_chunks, -(-C // nt), nt, pw, pb, dw, db)
    return (call.out(dx), call.out(dw) if has_w else None, call.out(db) if has_b else None)


CUDA = Kernel(NAME, "cuda", forward_cuda, backward_cuda, ("x", "weight", "bias"))

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
