"""Decode attention: one new query against a KV cache (a generation step).

For each batch b and head h (dropped below), with the new query q (length hs), the cached
keys k_s and values v_s for s < L = ``length`` (all in the query's past, so no mask), and
scale c = 1/sqrt(hs) unless given:

    S_s   = c q . k_s                            s = 0 .. L-1
    P_s   = exp(S_s - m) / sum_r exp(S_r - m),   m = max_s S_s
    out   = sum_s P_s v_s                        (forward)
    lse   = m + log sum_s exp(S_s - m)

This is row t of causal attention when the cache holds positions 0..t (L = t+1). With dO the
upstream gradient and D = dO . out:

    dv_s  = P_s dO
    dS_s  = P_s (dO . v_s - D)
    dq    = c sum_s dS_s k_s
    dk_s  = c dS_s q                             (backward; zero for s >= L)

forward(q, k_cache, v_cache, length, scale=None) -> (out, cache)
    q (B, H, 1, hs); k_cache, v_cache (B, H, Lmax, hs), one float dtype, of which the first
    ``length`` positions are valid (1 <= length <= Lmax). out (B, H, 1, hs); ``cache.lse``
    (B, H, 1) is the logsumexp, in the input dtype.
backward(dout, cache) -> (dq, dk_cache, dv_cache), the cache gradients zero past ``length``.

The Numba version is latency-bound at generation sizes (B=1, H=4, hs=32, L <= 128: a few
thousand multiply-adds per call), so it takes the caches as they are (no slicing to ``length``,
which would force a copy) and runs one head after another in a plain loop; a prange only pays
for itself on bigger batches.

The backward pass is derived step by step in docs/derivations/attention.md.
"""
from __future__ import annotations

import math
import numbers
from types import SimpleNamespace

import numpy as np

from . import Kernel
from . import softmax as _softmax
from ._check import dout_like, floats
from ._family import GBPS, Family, Size, Work
from ._nb import LANES, dot, fexp, lane_sum, neg_inf, njit, one, prange, zero
from ..errors import ShapeError

NAME = "decode_attention"


def _check(q, k_cache, v_cache, length, scale):
    """Validate; return (length as int, scale as a scalar of the input dtype)."""
    dt = floats(NAME, q=q, k_cache=k_cache, v_cache=v_cache)
    if q.ndim != 4 or q.shape[2] != 1:
        raise ShapeError(f"{NAME}: q must be (B, H, 1, hs), got shape {q.shape}")
    if k_cache.ndim != 4 or k_cache.shape != v_cache.shape:
        raise ShapeError(f"{NAME}: k_cache and v_cache must both be (B, H, Lmax, hs), got "
                         f"{k_cache.shape} and {v_cache.shape}")
    B, H, _, hs = q.shape
    if (k_cache.shape[0], k_cache.shape[1], k_cache.shape[3]) != (B, H, hs) or 0 in q.shape:
        raise ShapeError(f"{NAME}: q {q.shape} and k_cache {k_cache.shape} must agree on "
                         f"B, H and hs (all >= 1)")
    if type(length) is not int and (isinstance(length, bool)
                                    or not isinstance(length, numbers.Integral)):
        raise TypeError(f"{NAME}: length must be an int, got {type(length).__name__}")
    length = int(length)
    if not 1 <= length <= k_cache.shape[2]:
        raise ValueError(f"{NAME}: length must be in 1..Lmax = {k_cache.shape[2]}, "
                         f"got {length}")
    if scale is None:
        scale = 1.0 / math.sqrt(hs)
    return length, dt.type(scale)


def _cache(q, k, v, length, out, lse, scale):
    return SimpleNamespace(q=q, k=k, v=v, length=length, out=out, lse=lse, scale=scale)


# ---------------------------------------------------------------- NumPy reference

def forward_ref(q, k_cache, v_cache, length, scale=None):
    L, scale = _check(q, k_cache, v_cache, length, scale)
    k = k_cache[:, :, :L]                                 # (B, H, L, hs) valid keys
    v = v_cache[:, :, :L]                                 # (B, H, L, hs) valid values
    s = (q @ k.swapaxes(-1, -2)) * scale                  # (B, H, 1, L)  S_s = c q.k_s
    p, lse = _softmax.softmax_lse_ref(s)                  # (B, H, 1, L)  P_s; lse (.., 1)
    out = p @ v                                           # (B, H, 1, hs) sum_s P_s v_s
    lse = lse[..., 0]                                     # (B, H, 1)
    return out, _cache(q, k_cache, v_cache, L, out, lse, scale)


def backward_ref(dout, cache):
    c, L = cache, cache.length
    dout = dout_like(NAME, dout, c.out)                   # (B, H, 1, hs) dO
    k, v = c.k[:, :, :L], c.v[:, :, :L]                   # (B, H, L, hs)
    s = (c.q @ k.swapaxes(-1, -2)) * c.scale              # (B, H, 1, L)  recomputed S
    p = np.exp(s - c.lse[..., None])                      # (B, H, 1, L)  P = exp(S - lse)
    D = (dout * c.out).sum(axis=-1, keepdims=True)        # (B, H, 1, 1)  D = dO.out
    ds = p * (dout @ v.swapaxes(-1, -2) - D)              # (B, H, 1, L)  dS_s
    dq = (ds @ k) * c.scale                               # (B, H, 1, hs)
    dk = np.zeros_like(c.k)                               # (B, H, Lmax, hs), zero past L
    dv = np.zeros_like(c.v)
    dk[:, :, :L] = (ds.swapaxes(-1, -2) @ c.q) * c.scale  # dk_s = c dS_s q
    dv[:, :, :L] = p.swapaxes(-1, -2) @ dout              # dv_s = P_s dO
    return dq, dk, dv


REFERENCE = Kernel(NAME, "numpy", forward_ref, backward_ref, ("q", "k_cache", "v_cache"))


# ---------------------------------------------------------------- Numba CPU
# Per head (b, h): the scores are L dot products over the first L cache rows (_nb.dot,
# vectorised with reassociation), the softmax's exp is one vectorised fexp pass and its sum
# uses 16 lane accumulators (_nb.lane_sum), and the output is one BLAS matrix-vector
# product over the first L value rows (a contiguous slice, no copy).

_PARALLEL_WORK = 1 << 17      # BH * L * hs above which the prange version is used


@njit(inline="always")
def _decode_head(qv, kh, vh, L, scale, o, s, acc):
    """out row o for one head; s (L,) and acc (16,) are scratch. Returns the lse."""
    m = neg_inf(qv)
    for j in range(L):
        x = dot(kh[j], qv) * scale                       # S_j = c q . k_j
        s[j] = x
        m = x if x > m else m
    mu = m if m != neg_inf(qv) else zero(qv)
    for j in range(L):                                    # vectorises: no sum in this loop
        s[j] = fexp(s[j] - mu)
    tot = lane_sum(s[:L], acc)
    np.dot(s, vh[:L], o)                                  # o = sum_j p_j v_j
    inv = one(qv) / tot if tot > zero(qv) else zero(qv)
    for d in range(o.shape[0]):
        o[d] *= inv
    return m + math.log(tot) if tot > zero(qv) else neg_inf(qv)


@njit(inline="always")
def _fwd_bh(q, k, v, L, scale, out, lse, b, h, s, acc):
    lse[b, h, 0] = _decode_head(q[b, h, 0], k[b, h], v[b, h], L, scale, out[b, h, 0], s, acc)


@njit
def _decode_fwd(q, k, v, L, scale, out, lse):
    B, H = q.shape[0], q.shape[1]
    s, acc = np.empty(L, q.dtype), np.empty(LANES, q.dtype)     # one scratch for all heads
    for bh in range(B * H):
        _fwd_bh(q, k, v, L, scale, out, lse, bh // H, bh % H, s, acc)


@njit(parallel=True)
def _decode_fwd_par(q, k, v, L, scale, out, lse):
    H = q.shape[1]
    for bh in prange(q.shape[0] * H):
        s, acc = np.empty(L, q.dtype), np.empty(LANES, q.dtype)
        _fwd_bh(q, k, v, L, scale, out, lse, bh // H, bh % H, s, acc)


@njit(inline="always")
def _decode_bwd_head(qv, kh, vh, L, scale, o, lse, g, dqv, dkh, dvh, s, dp):
    hs = qv.shape[0]
    Dv = zero(qv)
    for d in range(hs):
        Dv += g[d] * o[d]                                 # D = dO . out
        dqv[d] = zero(qv)
    for j in range(L):
        s[j] = dot(kh[j], qv) * scale                    # S_j, as the forward has it
        dp[j] = dot(vh[j], g)                            # dp_j = dO . v_j
    for j in range(L):
        p = fexp(s[j] - lse)                              # P_j = exp(S_j - lse)
        ds = p * (dp[j] - Dv) * scale                     # c dS_j
        kr, dkr, dvr = kh[j], dkh[j], dvh[j]
        for d in range(hs):
            dqv[d] += ds * kr[d]
            dkr[d] = ds * qv[d]
            dvr[d] = p * g[d]
    dkh[L:, :] = zero(qv)
    dvh[L:, :] = zero(qv)


@njit(inline="always")
def _bwd_bh(q, k, v, L, scale, out, lse, dout, dq, dk, dv, b, h, s, dp):
    _decode_bwd_head(q[b, h, 0], k[b, h], v[b, h], L, scale, out[b, h, 0], lse[b, h, 0],
                     dout[b, h, 0], dq[b, h, 0], dk[b, h], dv[b, h], s, dp)


@njit
def _decode_bwd(q, k, v, L, scale, out, lse, dout, dq, dk, dv):
    B, H = q.shape[0], q.shape[1]
    s, dp = np.empty(L, q.dtype), np.empty(L, q.dtype)
    for bh in range(B * H):
        _bwd_bh(q, k, v, L, scale, out, lse, dout, dq, dk, dv, bh // H, bh % H, s, dp)


@njit(parallel=True)
def _decode_bwd_par(q, k, v, L, scale, out, lse, dout, dq, dk, dv):
    H = q.shape[1]
    for bh in prange(q.shape[0] * H):
        s, dp = np.empty(L, q.dtype), np.empty(L, q.dtype)
        _bwd_bh(q, k, v, L, scale, out, lse, dout, dq, dk, dv, bh // H, bh % H, s, dp)


def forward_numba(q, k_cache, v_cache, length, scale=None):
    L, scale = _check(q, k_cache, v_cache, length, scale)
    # the (contiguous) caches a generation loop keeps pass straight through: no slice to
    # ``length``, no copy, no reshape (the kernels index the 4-D arrays themselves)
    q, k, v = (a if a.flags.c_contiguous else np.ascontiguousarray(a)
               for a in (q, k_cache, v_cache))
    B, H, _, hs = q.shape
    out = np.empty((B, H, 1, hs), q.dtype)
    lse = np.empty((B, H, 1), q.dtype)
    f = _decode_fwd_par if B * H * L * hs >= _PARALLEL_WORK else _decode_fwd
    f(q, k, v, L, scale, out, lse)
    return out, _cache(q, k, v, L, out, lse, scale)


def backward_numba(dout, cache):
    c = cache
    dout = dout_like(NAME, dout, c.out)
    B, H, Lmax, hs = c.k.shape
    dq, dk, dv = np.empty_like(c.q), np.empty_like(c.k), np.empty_like(c.v)
    f = _decode_bwd_par if B * H * c.length * hs >= _PARALLEL_WORK else _decode_bwd
    f(c.q, c.k, c.v, c.length, c.scale, c.out, c.lse, dout, dq, dk, dv)
    return dq, dk, dv


NUMBA = Kernel(NAME, "numba", forward_numba, backward_numba, ("q", "k_cache", "v_cache"))


# ---------------------------------------------------------------- CUDA (numba.cuda)
# One block per head (b, h), nt threads. Forward: thread i scores the keys s = i, i + nt, ...
# (each a dot over hs), into a (BH, L) scratch row in global memory; the max and the sum of
# exp(S - m) are block trees; then thread d sums P_s v_sd over s for its output element(s)
# (adjacent threads read adjacent elements of a value row). Backward: the same block layout;
# thread s writes dS_s and P_s to scratch, then dk and dv element by element (zero past
# L), then dq_d = c sum_s dS_s k_sd by one thread per d. No atomics.

cuda = None          # numba.cuda, set by _cuda.kernels before a factory runs


def _cuda_factory(dtype):
    from . import _cuda
    block_sum, block_max = _cuda.reductions()
    st = _cuda.shared_type(dtype)
    MAXT = _cuda.MAX_THREADS

    @cuda.jit
    def dec_fwd(q, k, v, L, scale, out, lse, sbuf, cst):
        sm = cuda.shared.array(MAXT, st)
        bh = cuda.blockIdx.x
        H = q.shape[1]
        b = bh // H
        h = bh - b * H
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        hs = q.shape[3]
        zero, ninf, one = cst[0], cst[1], cst[2]
        m = ninf
        for j in range(tid, L, nt):
            x = zero
            for d in range(hs):
                x += k[b, h, j, d] * q[b, h, 0, d]
            x = x * scale                                  # S_j = c q . k_j
            sbuf[bh, j] = x
            m = x if x > m else m
        m = block_max(sm, m, tid, nt)
        mu = m if m != ninf else zero
        tot = zero
        for j in range(tid, L, nt):
            e = math.exp(sbuf[bh, j] - mu)
            sbuf[bh, j] = e
            tot += e
        tot = block_sum(sm, tot, tid, nt)                  # syncs: sbuf is complete
        inv = one / tot if tot > zero else zero
        for d in range(tid, hs, nt):
            o = zero
            for j in range(L):
                o += sbuf[bh, j] * v[b, h, j, d]
            out[b, h, 0, d] = o * inv
        if tid == 0:
            lse[b, h, 0] = m + math.log(tot) if tot > zero else ninf

    @cuda.jit
    def dec_bwd(q, k, v, L, scale, out, lse, dout, dq, dk, dv, pbuf, dsbuf, cst):
        sm = cuda.shared.array(MAXT, st)
        bh = cuda.blockIdx.x
        H = q.shape[1]
        b = bh // H
        h = bh - b * H
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        hs = q.shape[3]
        Lmax = k.shape[2]
        zero = cst[0]
        Dv = zero
        for d in range(tid, hs, nt):
            Dv += dout[b, h, 0, d] * out[b, h, 0, d]
        Dv = block_sum(sm, Dv, tid, nt)                    # D = dO . out
        lz = lse[b, h, 0]
        for j in range(tid, L, nt):
            x = zero
            g = zero
            for d in range(hs):
                x += k[b, h, j, d] * q[b, h, 0, d]
                g += v[b, h, j, d] * dout[b, h, 0, d]
            p = math.exp(x * scale - lz)                   # P_j = exp(S_j - lse)
            pbuf[bh, j] = p
            dsbuf[bh, j] = p * (g - Dv) * scale            # c dS_j
        cuda.syncthreads()
        for e in range(tid, Lmax * hs, nt):
            j = e // hs
            d = e - j * hs
            if j < L:
                dk[b, h, j, d] = dsbuf[bh, j] * q[b, h, 0, d]
                dv[b, h, j, d] = pbuf[bh, j] * dout[b, h, 0, d]
            else:
                dk[b, h, j, d] = zero
                dv[b, h, j, d] = zero
        for d in range(tid, hs, nt):
            a = zero
            for j in range(L):
                a += dsbuf[bh, j] * k[b, h, j, d]
            dq[b, h, 0, d] = a

    return dec_fwd, dec_bwd


def forward_cuda(q, k_cache, v_cache, length, scale=None):
    from . import _cuda
    L, scale = _check(*map(_cuda.shadow, (q, k_cache, v_cache)), length, scale)
    call = _cuda.Call(NAME, q, k_cache, v_cache)
    qd, kd, vd = map(call.dev, (q, k_cache, v_cache))
    dt = qd.dtype
    B, H, _, hs = q.shape
    out = call.empty((B, H, 1, hs), dt)
    lse = call.empty((B, H, 1), dt)
    sbuf = call.empty((B * H, L), dt)
    fwd, _ = _cuda.kernels(_cuda_factory, dt.name)
    _cuda.launch(fwd, B * H, _cuda.threads(max(L, hs), 2), qd, kd, vd, L, scale, out, lse,
                 sbuf, _cuda.consts(dt, 0.0, -np.inf, 1.0))
    cache = _cache(qd, kd, vd, L, out, lse, scale)
    cache.call = call
    return call.out(out), cache


def backward_cuda(dout, cache):
    from . import _cuda
    c = cache
    call = c.call
    dt = c.q.dtype
    g = _cuda.dout(call, NAME, dout, c.out.shape, dt)
    B, H, Lmax, hs = c.k.shape
    dq = call.empty(c.q.shape, dt)
    dk, dv = call.empty(c.k.shape, dt), call.empty(c.v.shape, dt)
    pbuf, dsbuf = call.empty((B * H, c.length), dt), call.empty((B * H, c.length), dt)
    _, bwd = _cuda.kernels(_cuda_factory, dt.name)
    _cuda.launch(bwd, B * H, _cuda.threads(max(c.length, hs), 2), c.q, c.k, c.v, c.length,
                 c.scale, c.out, c.lse, g, dq, dk, dv, pbuf, dsbuf,
                 _cuda.consts(dt, 0.0, -np.inf, 1.0))
    return tuple(call.out(a) for a in (dq, dk, dv))


CUDA = Kernel(NAME, "cuda", forward_cuda, backward_cuda, ("q", "k_cache", "v_cache"))

# ---------------------------------------------------------------- the family

def _inputs(p, dtype, rng):
    B, H, Lmax, hs = p["B"], p["H"], p["Lmax"], p["hs"]
    return (rng.standard_normal((B, H, 1, hs)).astype(dtype),
            rng.standard_normal((B, H, Lmax, hs)).astype(dtype),
            rng.standard_normal((B, H, Lmax, hs)).astype(dtype), p["L"]), {}


def _work(p, it):
    B, H, L, hs = p["B"], p["H"], p["L"], p["hs"]
    n = B * H * L * hs
    # FLOPs: q.k_s and sum_s P_s v_s are 2 L hs each per head; backward about 3x.
    # bytes: forward reads the L cached keys and values; backward reads them, writes dk, dv
    return Work((4 * n, 12 * n), ((2 * n + 2 * B * H * hs) * it, (4 * n + 4 * B * H * hs) * it))


def _size(B, H, L, hs, Lmax=None):
    return Size({"B": B, "H": H, "L": L, "Lmax": L if Lmax is None else Lmax, "hs": hs})


def _label(p):
    cap = f"/{p['Lmax']}" if p["Lmax"] != p["L"] else ""
    return f"B{p['B']} H{p['H']} L{p['L']}{cap} hs{p['hs']}"


FAMILY = Family(
    NAME, _inputs, _work, label=_label, unit=GBPS, sweep="L",
    # the GPT generation size; a short prefix of the cache; length 1 with hs 1 (with hs > 1
    # the true dq and dk at length 1 are 0 and both versions return rounding noise, which
    # a relative comparison cannot judge: tests/test_kernels_attention.py checks that case);
    # odd sizes; small ones for the finite differences
    test_sizes=(_size(1, 4, 128, 32), _size(1, 4, 17, 32, Lmax=128), _size(1, 1, 1, 1, Lmax=5),
                _size(2, 3, 33, 17, Lmax=40), _size(2, 2, 9, 5, Lmax=12), _size(2, 2, 12, 5)),
    quick_sizes=(_size(1, 8, 64, 64), _size(1, 8, 128, 64)),
    full_sizes=tuple(_size(1, 8, L, 64) for L in (128, 256, 512, 1024, 2048)),
    torch="decode_attention")


if __name__ == "__main__":
    from ._harness import run
    run(NAME)
