"""cross_entropy: fused log-softmax + negative log-likelihood, mean over the kept rows.

logits z (N, V), integer targets t (N,). Row i is kept when t_i != ignore_index; n = #kept.

    m_i   = max_j z_ij,   l_i = log sum_j exp(z_ij - m_i),   lse_i = m_i + l_i   (logsumexp)
    loss  = (1/n) sum_{i kept} ((m_i - z_{i,t_i}) + l_i)                            (forward)
    dz_ij = dloss/n (exp((z_ij - m_i) - l_i) - [j == t_i])   for kept rows         (backward)
    dz_ij = 0                                                for ignored rows

exp(z_ij - lse_i) is softmax(z)_ij: the backward rebuilds it from the saved per-row
logsumexp in one pass, with no softmax stored between the passes. The logsumexp is saved as
its two parts (m_i, l_i), not as the sum: with logits of 1e4 in float32, m + l rounds to a
multiple of ~1e-3, and exp(z - lse) would carry that error (~0.1%) into every gradient.
Subtracting the row max keeps exp from overflowing, so logits of +-1e4 give a finite loss
and finite gradients. If every row is ignored (n = 0) the loss is 0 and the gradient is 0,
not the NaN of 0/0.

A target that is not ignore_index and lies outside [0, V) raises IndexError; targets that
are not integers raise TypeError; shapes that do not fit raise ShapeError.

forward(logits, targets, ignore_index=-100) -> (loss, cache)     loss: 0-d, logits' dtype
backward(dloss, cache) -> (dlogits,)
cache = (logits, targets, lse, n, ignore_index), lse (N, 2) holding the columns (m, l)

The backward pass is derived step by step in docs/derivations/cross-entropy.md.
"""
from __future__ import annotations

import math

import numpy as np

from . import Kernel
from ._check import contiguous, floats
from ._family import GBPS, Family, Size, Work
from ._nb import LANES as _LANES
from ._nb import chunk, chunks, fexp, lane_max, neg_inf, njit, prange, row_sum, zero
from ..errors import ShapeError

NAME = "cross_entropy"


def _check(logits, targets, ignore_index):
    """Validate; return (logits, targets as contiguous int64, kept-row mask)."""
    floats(NAME, logits=logits)
    if logits.ndim != 2:
        raise ShapeError(f"{NAME}: logits must be (N, V), got shape {logits.shape}")
    N, V = logits.shape
    if V == 0:
        raise ShapeError(f"{NAME}: logits must have at least one class, got shape "
                         f"{logits.shape}")
    t = np.asarray(targets)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{NAME}: targets must be integers, got {t.dtype}")
    if t.shape != (N,):
        raise ShapeError(f"{NAME}: targets shape {t.shape} does not match logits "
                         f"{logits.shape}; expected ({N},)")
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index,
                                                                   (int, np.integer)):
        raise TypeError(f"{NAME}: ignore_index must be an int, got {ignore_index!r}")
    keep = t != ignore_index
    bad = keep & ((t < 0) | (t >= V))
    if bad.any():
        i = int(np.argmax(bad))
        raise IndexError(f"{NAME}: target {t[i]} at row {i} is out of range for V={V} classes "
                         f"(valid: 0..{V - 1}, or ignore_index={ignore_index})")
    return contiguous(logits), np.ascontiguousarray(t, dtype=np.int64), keep


def _dloss(dloss, dtype):
    """The upstream gradient of the 0-d loss, as a scalar of ``dtype``. (``_check.dout_like``
    is not used: ``np.ascontiguousarray`` turns a 0-d array into shape (1,).)"""
    d = np.asarray(dloss)
    if d.shape != ():
        raise ShapeError(f"{NAME}: dloss must be a scalar (shape ()) like the loss, got shape "
                         f"{d.shape}")
    return d.astype(dtype)[()]


def _mean(nll, keep, n, dtype):
    """(1/n) sum of the kept rows' nll as a 0-d array of ``dtype`` (0 when n = 0); the sum
    accumulates in float64, so float32 losses do not drift with N."""
    if n == 0:
        return np.zeros((), dtype)
    return np.asarray(np.sum(nll[keep], dtype=np.float64) / n, dtype=dtype)


# ---------------------------------------------------------------- NumPy reference

def forward_ref(logits, targets, ignore_index=-100):
    z, t, keep = _check(logits, targets, ignore_index)
    N, V = z.shape
    m = z.max(axis=1)                                         # (N,)   row max
    lg = np.log(np.exp(z - m[:, None]).sum(axis=1))           # (N,)   l = logsumexp - m
    n = int(keep.sum())                                       # kept rows
    tt = np.where(keep, t, 0)                                 # (N,) a safe index everywhere
    nll = (m - z[np.arange(N), tt]) + lg                      # (N,)   -log softmax(z)[i, t_i]
    lse = np.stack([m, lg], axis=1)                           # (N, 2) the logsumexp, in parts
    loss = _mean(nll, keep, n, z.dtype)                       # ()
    return loss, (z, t, lse, n, ignore_index)


def backward_ref(dloss, cache):
    z, t, lse, n, ignore_index = cache
    dloss = _dloss(dloss, z.dtype)
    N, V = z.shape
    keep = t != ignore_index                                  # (N,)
    if n == 0:
        return (np.zeros_like(z),)
    scale = dloss / z.dtype.type(n)                           # () dloss / n
    m, lg = lse[:, :1], lse[:, 1:]                            # (N, 1) each
    dz = np.exp((z - m) - lg) * scale                         # (N, V) softmax * scale
    rows = np.nonzero(keep)[0]
    dz[rows, t[rows]] -= scale                                # minus the one-hot
    dz[~keep] = 0                                             # ignored rows get nothing
    return (dz,)


REFERENCE = Kernel(NAME, "numpy", forward_ref, backward_ref, ("logits",))


# ---------------------------------------------------------------- Numba CPU
# Rows are split into a few chunks per thread. Per row: the max uses 16 lane accumulators
# (a plain float max loop is one serial dependency chain; the lanes give 16 independent
# ones, ~2x faster here), and exp is the vectorisable polynomial from _nb. exp is written to
# a per-chunk scratch row by a plain loop and then summed by _nb.row_sum (reassoc only): calling
# fexp inside the lane loop (acc[k] += fexp(...)) did not vectorise and ran ~10x slower, and
# the reassoc sum is ~3x faster than a 16-lane sum, which compiled to scalar adds here.
# The forward writes only the per-row (m, l) and nll; the backward recomputes
# exp((z - m) - l) straight into dlogits.



@njit(parallel=True, error_model="numpy")
def _ce_fwd_rows(z, t, ignore_index, lse, nll, nchunks):
    R, V = z.shape
    for c in prange(nchunks):
        acc = np.empty(_LANES, z.dtype)
        e = np.empty(V, z.dtype)
        for r in range(*chunk(c, nchunks, R)):
            if t[r] == ignore_index:            # ignored rows: no loss, no gradient
                lse[r, 0] = zero(z)
                lse[r, 1] = zero(z)
                nll[r] = zero(z)
                continue
            row = z[r]
            m = lane_max(row, acc)               # 1. row max, in 16 lanes
            if m == neg_inf(z):
                m = zero(z)                      # all -inf: l = log 0 = -inf, no NaN here
            # 2. e = exp(z - m) into the chunk's scratch row (a plain loop, so it
            #    vectorises), then its plain sum
            for j in range(V):
                e[j] = fexp(row[j] - m)
            s = row_sum(e)
            lg = np.log(s)
            lse[r, 0] = m
            lse[r, 1] = lg
            nll[r] = (m - row[t[r]]) + lg


@njit(parallel=True, error_model="numpy")
def _ce_bwd_rows(z, t, ignore_index, lse, scale, dz, nchunks):
    R, V = z.shape
    for c in prange(nchunks):
        for r in range(*chunk(c, nchunks, R)):
            out = dz[r]
            if t[r] == ignore_index:
                for j in range(V):
                    out[j] = zero(z)
                continue
            row = z[r]
            m = lse[r, 0]
            lg = lse[r, 1]
            for j in range(V):
                out[j] = fexp((row[j] - m) - lg) * scale
            out[t[r]] -= scale


def forward_numba(logits, targets, ignore_index=-100):
    z, t, keep = _check(logits, targets, ignore_index)
    N, V = z.shape
    lse = np.empty((N, 2), z.dtype)
    nll = np.empty(N, z.dtype)
    if N:
        _ce_fwd_rows(z, t, np.int64(ignore_index), lse, nll, chunks(N))
    n = int(keep.sum())
    return _mean(nll, keep, n, z.dtype), (z, t, lse, n, ignore_index)


def backward_numba(dloss, cache):
    z, t, lse, n, ignore_index = cache
    dloss = _dloss(dloss, z.dtype)
    dz = np.empty_like(z)
    if n == 0:
        dz[...] = 0
        return (dz,)
    scale = dloss / z.dtype.type(n)
    _ce_bwd_rows(z, t, np.int64(ignore_index), lse, scale, dz, chunks(z.shape[0]))
    return (dz,)


NUMBA = Kernel(NAME, "numba", forward_numba, backward_numba, ("logits",))


# ---------------------------------------------------------------- CUDA (numba.cuda)
# One block per row: the max and the sum of exp(z - m) are block trees; the forward writes
# (m, l) and the row's nll (0 for an ignored row), and the mean over the kept rows is one
# more block tree that accumulates in float64 (_cuda.total_f64), like the CPU versions'
# float64 sum. The backward rebuilds exp((z - m) - l) from (m, l) in one pass per row.

cuda = None          # numba.cuda, set by _cuda.kernels before a factory runs


def _cuda_factory(dtype):
    from . import _cuda
    block_sum, block_max = _cuda.reductions()
    st = _cuda.shared_type(dtype)
    MAXT = _cuda.MAX_THREADS

    @cuda.jit
    def ce_fwd(z, t, ignore_index, lse, nll, cst):
        sm = cuda.shared.array(MAXT, st)
        r = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        V = z.shape[1]
        zero, ninf = cst[0], cst[1]
        if t[r] == ignore_index:                          # no loss, no gradient
            if tid == 0:
                lse[r, 0] = zero
                lse[r, 1] = zero
                nll[r] = zero
            return
        m = ninf
        for j in range(tid, V, nt):
            v = z[r, j]
            m = v if v > m else m
        m = block_max(sm, m, tid, nt)
        if m == ninf:
            m = zero                                      # all -inf: l = log 0 = -inf
        s = zero
        for j in range(tid, V, nt):
            s += math.exp(z[r, j] - m)
        s = block_sum(sm, s, tid, nt)
        if tid == 0:
            lg = math.log(s) if s > zero else ninf
            lse[r, 0] = m
            lse[r, 1] = lg
            nll[r] = (m - z[r, t[r]]) + lg

    @cuda.jit
    def ce_bwd(z, t, ignore_index, lse, scale, dz):
        r = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        V = z.shape[1]
        if t[r] == ignore_index:
            for j in range(tid, V, nt):
                dz[r, j] = scale - scale                  # 0, in the dtype
            return
        m = lse[r, 0]
        lg = lse[r, 1]
        tr = t[r]
        for j in range(tid, V, nt):
            p = math.exp((z[r, j] - m) - lg) * scale
            dz[r, j] = p - scale if j == tr else p

    return ce_fwd, ce_bwd


def forward_cuda(logits, targets, ignore_index=-100):
    from . import _cuda
    _, t_host, keep = _check(_cuda.shadow(logits), _cuda.host(targets), ignore_index)
    call = _cuda.Call(NAME, logits)
    z = call.dev(logits)
    dt = z.dtype
    N, V = z.shape
    t = call.dev(t_host)
    lse = call.empty((N, 2), dt)
    nll = call.empty((N,), dt)
    fwd, _ = _cuda.kernels(_cuda_factory, dt.name)
    _cuda.launch(fwd, N, _cuda.threads(V), z, t, np.int64(ignore_index), lse, nll,
                 _cuda.consts(dt, 0.0, -np.inf))
    n = int(keep.sum())
    if n == 0 or N == 0:
        loss = call.zeros((), dt)
    else:
        loss = call.xp.asarray(_cuda.total_f64(call, nll)[0] / n).astype(dt)
    return call.out(loss), (call, z, t, lse, n, ignore_index)


def backward_cuda(dloss, cache):
    from . import _cuda
    call, z, t, lse, n, ignore_index = cache
    dloss = _dloss(_cuda.host(dloss), z.dtype)
    if n == 0:
        return (call.out(call.zeros(z.shape, z.dtype)),)
    dz = call.empty(z.shape, z.dtype)
    _, bwd = _cuda.kernels(_cuda_factory, z.dtype.name)
    scale = z.dtype.type(dloss / z.dtype.type(n))
    _cuda.launch(bwd, z.shape[0], _cuda.threads(z.shape[1]), z, t, np.int64(ignore_index),
                 lse, scale, dz)
    return (call.out(dz),)


CUDA = Kernel(NAME, "cuda", forward_cuda, backward_cuda, ("logits",))

# ---------------------------------------------------------------- the family

def _inputs(p, dtype, rng):
    N, V = p["N"], p["V"]
    t = rng.integers(0, V, size=N)
    if p.get("ignored", True):
        t[::7] = -100                                     # some ignored rows
    return ((rng.standard_normal((N, V)) * 3).astype(dtype), t), {}


def _work(p, it):
    N, V = p["N"], p["V"]
    n = N * V
    # forward reads the logits (and the int64 targets); backward reads them and writes
    # dlogits. FLOPs (nominal): max, sub, exp, sum (4 n) and exp, scale, one-hot (3 n)
    return Work((4 * n, 3 * n), (n * it + 8 * N, 2 * n * it + 8 * N))


def _size(N, V, ignored=True):
    return Size({"N": N, "V": V} if ignored else {"N": N, "V": V, "ignored": False})


FAMILY = Family(
    NAME, _inputs, _work, label=lambda p: f"logits ({p['N']}, {p['V']})", unit=GBPS,
    sweep="N",
    # one class; one row; odd V around the 16 lanes; V past a few hundred; every 7th row
    # (row 0 first) ignored where ``ignored``
    test_sizes=(_size(1, 1, False), _size(1, 7, False), _size(5, 7), _size(6, 17),
                _size(33, 100), _size(8, 257)),
    quick_sizes=(_size(256, 1024), _size(1024, 1024)),
    full_sizes=tuple(_size(N, 8192) for N in (512, 1024, 2048, 4096, 8192)),
    torch="cross_entropy")


if __name__ == "__main__":
    from ._harness import run
    run(NAME)
