"""Multi-head scaled dot-product attention over the time axis, causal by default.

For each batch b and head h (dropped below), with queries q_t, keys k_s, values v_s (rows of
q, k, v, each of length hs) and scale c = 1/sqrt(hs) unless given:

    S_ts  = c q_t . k_s                          scores; causal: S_ts = -inf for s > t;
                                                 key_mask: S_ts = -inf for every t when
                                                 key s of that batch row is padding
    m_t   = max_s S_ts                           row max (only for stability)
    l_t   = sum_s exp(S_ts - m_t)
    P_ts  = exp(S_ts - m_t) / l_t                softmax over s
    out_t = sum_s P_ts v_s                       (forward)
    lse_t = m_t + log l_t = log sum_s exp(S_ts)  so that P_ts = exp(S_ts - lse_t)

With dO the upstream gradient (dout) and D_t = sum_d dO_td out_td = sum_s P_ts dP_ts:

    dv_s  = sum_t P_ts dO_t                      dV = P^T dO
    dP_ts = dO_t . v_s                           dP = dO V^T
    dS_ts = P_ts (dP_ts - D_t)                   the softmax backward, row by row
    dq_t  = c sum_s dS_ts k_s                    dQ = c dS K
    dk_s  = c sum_t dS_ts q_t                    dK = c dS^T Q                  (backward)

Without a key mask a causal row t always sees s = 0, so l_t >= 1. With one, a row can have
every key masked (a sequence that is all padding; causal attention over leading padding).
Such a row attends to nothing: P_t. = 0, out_t = 0, lse_t = -inf (the softmax kernel's
convention for an all -inf row), and the backward uses P_ts = 0 there (never
exp(-inf - (-inf)) = NaN), so it contributes nothing to dq, dk, dv. A masked key s has
P_ts = 0 for every t, hence dk_s = dv_s = 0 exactly, and its k_s, v_s never reach out (they
must be finite, as a model's padding embeddings are: 0 * NaN is NaN in the P V product).

forward(q, k, v, causal=True, scale=None, key_mask=None) -> (out, cache)
    q, k, v (B, H, T, hs), one float dtype; out (B, H, T, hs) in that dtype.
    key_mask: None, or bool (B, T), True = a real token that may be attended to, False =
    padding (never attended to, by any query, in any head); not differentiable.
    ``cache.lse`` (B, H, T) is each row's logsumexp lse_t, in the input dtype (it is what a
    backward needs instead of the T x T probabilities); the cache also keeps q, k, v, out,
    scale, causal and the key mask, so that the backward applies the same mask.
backward(dout, cache) -> (dq, dk, dv)

The NumPy reference builds the whole T x T score matrix. The Numba version is flash-style: it
walks 64 x 64 tiles of S with an online softmax (running max and sum per query, rescaling the
partial output when the max grows), so memory stays O(T hs); the backward recomputes each
tile's P from the saved lse instead of storing P. With a key mask, a 64-key block whose keys
are all padding is skipped outright, forward and backward (padding at the end of a batch row
costs nothing), and only a block mixing real and padded keys pays for masking its tile.

The backward pass is derived step by step in docs/derivations/attention.md.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from . import Kernel
from . import softmax as _softmax
from ._check import contiguous, dout_like, floats, ndim, shape
from ._family import GFLOPS, Family, Size, Work
from ._nb import fexp, neg_inf, njit, one, prange, zero
from ..errors import ShapeError

NAME = "attention"


def _check(q, k, v, scale, key_mask=None):
    """Validate the inputs; return the scale as a scalar of the input dtype (a Python float
    or NumPy float64 would turn float32 arithmetic into float64) and the key mask (None, or
    a C-contiguous bool (B, T) array)."""
    dt = floats(NAME, q=q, k=k, v=v)
    for nm, a in (("q", q), ("k", k), ("v", v)):
        ndim(NAME, nm, a, 4, "(B, H, T, hs)")
    if not (q.shape == k.shape == v.shape):
        raise ShapeError(f"{NAME}: q, k and v must have one shape (B, H, T, hs), got "
                         f"q {q.shape}, k {k.shape}, v {v.shape}")
    if 0 in q.shape:
        raise ShapeError(f"{NAME}: every axis of (B, H, T, hs) must be >= 1, got {q.shape}")
    if key_mask is not None:
        if not isinstance(key_mask, np.ndarray) or key_mask.dtype != np.bool_:
            got = key_mask.dtype if isinstance(key_mask, np.ndarray) \
                else type(key_mask).__name__
            raise TypeError(f"{NAME}: key_mask must be a bool array (B, T), True = a real "
                            f"token that may be attended to, got {got}")
        B, _, T, _ = q.shape
        shape(NAME, "key_mask", key_mask, (B, T), "(B, T) of q (B, H, T, hs)")
        key_mask = np.ascontiguousarray(key_mask)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    return dt.type(scale), key_mask


def _cache(q, k, v, out, lse, scale, causal, key_mask, **extra):
    return SimpleNamespace(q=q, k=k, v=v, out=out, lse=lse, scale=scale, causal=causal,
                           key_mask=key_mask, **extra)


def _finite_lse(lse):
    """lse with -inf (a row with every key masked) replaced by 0: such a row's scores are all
    -inf, so P = exp(S - 0) = 0 there instead of exp(-inf + inf) = NaN."""
    return np.where(lse == neg_inf(lse), np.zeros((), lse.dtype), lse)


# ---------------------------------------------------------------- NumPy reference

def _scores_ref(q, k, scale, causal, key_mask):
    s = (q @ k.swapaxes(-1, -2)) * scale                  # (B, H, T, T)  S_ts = c q_t.k_s
    if causal:
        T = q.shape[-2]
        future = np.triu(np.ones((T, T), dtype=bool), 1)  # (T, T) True where s > t
        s = np.where(future, neg_inf(s), s)
    if key_mask is not None:                              # (B, T) -> (B, 1, 1, T): every t, h
        s = np.where(key_mask[:, None, None, :], s, neg_inf(s))
    return s


def forward_ref(q, k, v, causal=True, scale=None, key_mask=None):
    scale, key_mask = _check(q, k, v, scale, key_mask)
    s = _scores_ref(q, k, scale, bool(causal), key_mask)  # (B, H, T, T)
    p, lse = _softmax.softmax_lse_ref(s)                  # P_ts (masked -> 0), lse_t (.., 1)
    out = p @ v                                           # (B, H, T, hs) out_t = sum_s P_ts v_s
    lse = lse[..., 0]                                     # (B, H, T)     lse_t (-inf: no key)
    return out, _cache(q, k, v, out, lse, scale, bool(causal), key_mask)


def backward_ref(dout, cache):
    c = cache
    dout = dout_like(NAME, dout, c.out)                   # (B, H, T, hs)  dO
    s = _scores_ref(c.q, c.k, c.scale, c.causal, c.key_mask)   # (B, H, T, T) recomputed S
    p = np.exp(s - _finite_lse(c.lse)[..., None])         # (B, H, T, T)   P = exp(S - lse)
    dv = p.swapaxes(-1, -2) @ dout                        # (B, H, T, hs)  dV = P^T dO
    dp = dout @ c.v.swapaxes(-1, -2)                      # (B, H, T, T)   dP = dO V^T
    D = (dout * c.out).sum(axis=-1, keepdims=True)        # (B, H, T, 1)   D_t = dO_t . out_t
    ds = p * (dp - D)                                     # (B, H, T, T)   dS
    dq = (ds @ c.k) * c.scale                             # (B, H, T, hs)  dQ = c dS K
    dk = (ds.swapaxes(-1, -2) @ c.q) * c.scale            # (B, H, T, hs)  dK = c dS^T Q
    return dq, dk, dv


REFERENCE = Kernel(NAME, "numpy", forward_ref, backward_ref, ("q", "k", "v"))


# ---------------------------------------------------------------- Numba CPU
# Heads are flattened to BH = B*H. The forward runs one task per (head, block of BQ queries)
# in a prange; each task walks the key blocks (only those at or left of the diagonal when
# causal) with an online softmax. Score tiles are kept transposed, St = Kb @ Qs^T of shape
# (nk, nq): the per-query running max and sum are then elementwise updates along the
# contiguous axis, which LLVM vectorises, and np.dot(St.T, Vb) hands the transpose to BLAS
# without a copy. Qs^T itself is stored transposed once per task: with scipy's OpenBLAS on
# the Xeon here, a 64x64x64 product with a transposed second operand took ~5.9 us against
# ~3.3 us for a plain one (a transposed first operand costs nothing). Each np.dot is at most
# 64 x 64 x 64 (bigger products inside a prange ran slower). The backward runs one task per
# head, so that head's dQ, dK and dV accumulate without races, and recomputes P tile by tile
# from lse.
#
# The key mask reaches the kernels as kstate (B, nkb) int8, one entry per batch row and block
# of BK keys: _SKIP (every key padding: the block is not visited at all; that is exactly what
# visiting it would give, since its P tile is 0), _PART (some keys padding: their rows of the
# transposed tile are set to -inf) or _FULL (no padding: nothing to do). Without a mask the
# kernels get has_mask=False and two 1 x 1 dummies, so the unmasked path allocates nothing
# more than before and pays one loop-invariant branch per tile.

_BQ = 64
_BK = 64
_SKIP, _PART, _FULL = 0, 1, 2


_NO_STATE = np.full((1, 1), _FULL, np.int8)             # never read: has_mask is False
_NO_MASK = np.ones((1, 1), np.bool_)


def _key_blocks(key_mask, B, T, BK):
    """(has_mask, kstate (B, nkb) int8, the (B, T) mask) for the kernels; dummies without a
    mask."""
    if key_mask is None:
        return False, _NO_STATE, _NO_MASK
    nkb = (T + BK - 1) // BK
    padded = np.zeros((B, nkb * BK), np.bool_)
    padded[:, :T] = key_mask
    real = padded.reshape(B, nkb, BK).sum(axis=-1)        # (B, nkb) real keys per block
    size = np.minimum(BK, T - BK * np.arange(nkb))        # (nkb,)   keys per block
    kstate = np.where(real == 0, _SKIP, np.where(real == size, _FULL, _PART))
    return True, kstate.astype(np.int8), key_mask


@njit(inline="always")
def _key_mask_tile(St, km, k0, nk):
    """Padding keys on a transposed tile: row j (key k0+j) becomes -inf where km is False."""
    for j in range(nk):
        if not km[k0 + j]:
            row = St[j]
            for i in range(row.shape[0]):
                row[i] = neg_inf(St)


@njit(inline="always")
def _mask_tile(St, k0, q0, nk, nq):
    """Causal mask on a transposed tile: key k0+j is in the future of query q0+i when
    k0 + j > q0 + i, i.e. for i < k0 + j - q0."""
    for j in range(nk):
        row = St[j]
        cut = min(k0 + j - q0, nq)
        for i in range(cut):
            row[i] = neg_inf(St)


@njit(parallel=True)
def _attn_fwd(q, k, v, scale, causal, has_mask, H, kstate, km, out, lse, BQ, BK):
    BH, T, hs = q.shape
    nqb = (T + BQ - 1) // BQ
    for task in prange(BH * nqb):
        bh = task // nqb
        row_b = bh // H                                   # the batch row: its key mask
        r = task % nqb
        # zig-zag the query blocks (0, last, 1, last-1, ...) so that any contiguous range of
        # tasks, the unit a thread gets, mixes cheap early blocks with costly late ones
        qb = r // 2 if r % 2 == 0 else nqb - 1 - r // 2
        q0 = qb * BQ
        nq = min(BQ, T - q0)
        qh = q[bh]
        kh = k[bh]
        vh = v[bh]
        QsT = np.empty((hs, nq), q.dtype)                 # (c q)^T for this block's queries
        for i in range(nq):
            src = qh[q0 + i]
            for d in range(hs):
                QsT[d, i] = src[d] * scale
        m = np.empty(nq, q.dtype)                         # running max per query
        lsum = np.zeros(nq, q.dtype)                      # running sum of exp(S - m)
        mnew = np.empty(nq, q.dtype)
        alpha = np.empty(nq, q.dtype)
        rs = np.empty(nq, q.dtype)
        acc = np.zeros((nq, hs), q.dtype)                 # running sum of exp(S - m) v
        pv = np.empty((nq, hs), q.dtype)
        sbuf = np.empty(BK * nq, q.dtype)
        for i in range(nq):
            m[i] = neg_inf(q)
        kend = q0 + nq if causal else T                   # keys past kend are all masked
        for kb in range((kend + BK - 1) // BK):
            state = kstate[row_b, kb] if has_mask else _FULL
            if state == _SKIP:                            # all padding: P tile = 0
                continue
            k0 = kb * BK
            nk = min(BK, kend - k0)
            Kb = kh[k0:k0 + nk]
            Vb = vh[k0:k0 + nk]
            St = sbuf[:nk * nq].reshape((nk, nq))
            np.dot(Kb, QsT, St)                           # St[j, i] = S[q0+i, k0+j]
            if causal and k0 + nk - 1 > q0:
                _mask_tile(St, k0, q0, nk, nq)
            if state == _PART:
                _key_mask_tile(St, km[row_b], k0, nk)
            # new running max (column max of St), elementwise over the queries
            for i in range(nq):
                mnew[i] = m[i]
            for j in range(nk):
                row = St[j]
                for i in range(nq):
                    x = row[i]
                    mnew[i] = x if x > mnew[i] else mnew[i]
            # alpha = exp(m_old - m_new) rescales what was summed so far; a query that has
            # seen only -inf keeps 0 as its shift so that exp(-inf - 0) = 0, not NaN
            for i in range(nq):
                mi = mnew[i]
                mu = mi if mi != neg_inf(q) else zero(q)
                alpha[i] = fexp(m[i] - mu)
                m[i] = mi
                mnew[i] = mu
                rs[i] = zero(q)
            # P tile = exp(St - m) in place, with its column sums
            for j in range(nk):
                row = St[j]
                for i in range(nq):
                    p = fexp(row[i] - mnew[i])
                    row[i] = p
                    rs[i] += p
            for i in range(nq):
                lsum[i] = lsum[i] * alpha[i] + rs[i]
            np.dot(St.T, Vb, pv)                          # (nq, hs) = P^T-tile @ Vb
            for i in range(nq):
                a = alpha[i]
                ar = acc[i]
                pr = pv[i]
                for d in range(hs):
                    ar[d] = ar[d] * a + pr[d]
        oh = out[bh]
        for i in range(nq):
            li = lsum[i]
            inv = one(q) / li if li > zero(q) else zero(q)
            ar = acc[i]
            dst = oh[q0 + i]
            for d in range(hs):
                dst[d] = ar[d] * inv
            lse[bh, q0 + i] = m[i] + math.log(li) if li > zero(q) else neg_inf(q)


@njit(parallel=True)
def _attn_bwd(q, k, v, out, dout, lse, scale, causal, has_mask, H, kstate, km, dq, dk, dv,
              BQ, BK):
    # lse: with a key mask, a row with no key has 0 here instead of -inf (_finite_lse)
    BH, T, hs = q.shape
    nqb = (T + BQ - 1) // BQ
    nkb = (T + BK - 1) // BK
    for bh in prange(BH):
        row_b = bh // H
        qh = q[bh]
        kh = k[bh]
        vh = v[bh]
        oh = out[bh]
        doh = dout[bh]
        lh = lse[bh]
        dqh = dq[bh]
        dkh = dk[bh]
        dvh = dv[bh]
        # c q, and c q and dO transposed block by block: query block qb is stored from
        # q0*hs on as an (hs, nq) array, so every tile product below is a plain (or
        # first-operand-transposed) GEMM; a transposed second operand ran ~2x slower.
        Qs = np.empty((T, hs), q.dtype)
        QsT = np.empty(T * hs, q.dtype)
        dOT = np.empty(T * hs, q.dtype)
        D = np.empty(T, q.dtype)                          # D_t = dO_t . out_t
        for qb in range(nqb):
            q0 = qb * BQ
            nq = min(BQ, T - q0)
            QbT = QsT[q0 * hs:(q0 + nq) * hs].reshape((hs, nq))
            dObT = dOT[q0 * hs:(q0 + nq) * hs].reshape((hs, nq))
            for i in range(nq):
                t = q0 + i
                src = qh[t]
                dst = Qs[t]
                o = oh[t]
                g = doh[t]
                s = zero(q)
                for d in range(hs):
                    x = src[d] * scale
                    dst[d] = x
                    QbT[d, i] = x
                    dObT[d, i] = g[d]
                    s += g[d] * o[d]
                D[t] = s
                dqh[t, :] = zero(q)
        pbuf = np.empty(BK * BQ, q.dtype)
        dpbuf = np.empty(BK * BQ, q.dtype)
        tk = np.empty((BK, hs), q.dtype)
        tq = np.empty((BQ, hs), q.dtype)
        for kb in range(nkb):
            k0 = kb * BK
            nk = min(BK, T - k0)
            Kb = kh[k0:k0 + nk]
            Vb = vh[k0:k0 + nk]
            dKb = dkh[k0:k0 + nk]
            dVb = dvh[k0:k0 + nk]
            dKb[:, :] = zero(q)
            dVb[:, :] = zero(q)
            state = kstate[row_b, kb] if has_mask else _FULL
            if state == _SKIP:                            # all padding: dK = dV = 0, no dQ
                continue
            tkb = tk[:nk]
            first = k0 // BQ if causal else 0             # query blocks that can see key k0
            for qb in range(first, nqb):
                q0 = qb * BQ
                nq = min(BQ, T - q0)
                Qb = Qs[q0:q0 + nq]
                QbT = QsT[q0 * hs:(q0 + nq) * hs].reshape((hs, nq))
                dOb = doh[q0:q0 + nq]
                dObT = dOT[q0 * hs:(q0 + nq) * hs].reshape((hs, nq))
                P = pbuf[:nk * nq].reshape((nk, nq))
                dP = dpbuf[:nk * nq].reshape((nk, nq))
                np.dot(Kb, QbT, P)                        # St tile, (nk, nq)
                if causal and k0 + nk - 1 > q0:
                    _mask_tile(P, k0, q0, nk, nq)
                if state == _PART:
                    _key_mask_tile(P, km[row_b], k0, nk)
                lq = lh[q0:q0 + nq]
                for j in range(nk):
                    row = P[j]
                    for i in range(nq):
                        row[i] = fexp(row[i] - lq[i])     # P = exp(S - lse)
                np.dot(P, dOb, tkb)                       # dV tile += P dO
                for j in range(nk):
                    a = dVb[j]
                    b = tkb[j]
                    for d in range(hs):
                        a[d] += b[d]
                np.dot(Vb, dObT, dP)                      # dP tile = V dO^T, (nk, nq)
                Dq = D[q0:q0 + nq]
                for j in range(nk):
                    pr = P[j]
                    dr = dP[j]
                    for i in range(nq):
                        dr[i] = pr[i] * (dr[i] - Dq[i])   # dS tile, in place
                np.dot(dP, Qb, tkb)                       # dK tile += dS (c Q)
                for j in range(nk):
                    a = dKb[j]
                    b = tkb[j]
                    for d in range(hs):
                        a[d] += b[d]
                tqb = tq[:nq]
                np.dot(dP.T, Kb, tqb)                     # dQ rows += dS^T K (times c below)
                for i in range(nq):
                    a = dqh[q0 + i]
                    b = tqb[i]
                    for d in range(hs):
                        a[d] += b[d]
        for t in range(T):
            a = dqh[t]
            for d in range(hs):
                a[d] *= scale


def forward_numba(q, k, v, causal=True, scale=None, key_mask=None):
    scale, key_mask = _check(q, k, v, scale, key_mask)
    q, k, v = contiguous(q, k, v)
    B, H, T, hs = q.shape
    out = np.empty_like(q)
    lse = np.empty((B, H, T), q.dtype)
    has_mask, kstate, km = _key_blocks(key_mask, B, T, _BK)
    _attn_fwd(q.reshape(B * H, T, hs), k.reshape(B * H, T, hs), v.reshape(B * H, T, hs),
              scale, bool(causal), has_mask, H, kstate, km, out.reshape(B * H, T, hs),
              lse.reshape(B * H, T), _BQ, _BK)
    return out, _cache(q, k, v, out, lse, scale, bool(causal), key_mask, has_mask=has_mask,
                       kstate=kstate, km=km)


def backward_numba(dout, cache):
    c = cache
    dout = dout_like(NAME, dout, c.out)
    B, H, T, hs = c.q.shape
    dq, dk, dv = np.empty_like(c.q), np.empty_like(c.k), np.empty_like(c.v)
    f = (B * H, T, hs)
    lse = c.lse if c.key_mask is None else _finite_lse(c.lse)
    _attn_bwd(c.q.reshape(f), c.k.reshape(f), c.v.reshape(f), c.out.reshape(f),
              dout.reshape(f), lse.reshape(B * H, T), c.scale, c.causal, c.has_mask, H,
              c.kstate, c.km, dq.reshape(f), dk.reshape(f), dv.reshape(f), _BQ, _BK)
    return dq, dk, dv


NUMBA = Kernel(NAME, "numba", forward_numba, backward_numba, ("q", "k", "v"))


# ---------------------------------------------------------------- CUDA (numba.cuda)
# Heads flattened to BH. Tiles of TILE queries or keys (_cuda.tile(): 64 on a device, 8 under
# the simulator); the head size HS is a compile-time constant (one kernel per HS), so the
# per-thread rows below unroll into registers.
#
# Forward, grid (query tiles, BH), one thread per query: the block loads each key tile
# (TILE x HS of K and of V, and which keys are real) into shared memory, then every thread
# walks the tile with the online softmax for its query: a score above the running max m
# rescales the running sum l and the output accumulator by exp(m_old - m_new). Causal: key
# tiles stop at the diagonal. The row's lse = m + log l is saved (-inf when every key was
# masked: l = 0, out = 0).
#
# Backward, deterministic without atomics, in three launches: D_t = dO_t . out_t; then dK, dV
# with one thread per key (grid over key tiles), walking the query tiles (c Q, dO, lse, D in
# shared memory) and recomputing P = exp(S - lse) tile by tile; then dQ with one thread per
# query walking the key tiles the same way. Each output element is summed by one thread in
# a fixed order, at the price of computing the scores twice (the atomics-free split).

cuda = None          # numba.cuda, set by _cuda.kernels before a factory runs


def _cuda_factory(dtype, HS, TILE):
    from . import _cuda
    st = _cuda.shared_type(dtype)
    it = _cuda.shared_type(np.int32)
    H4 = HS - HS % 4

    @cuda.jit(device=True)
    def rowdot(a, B, j):
        """sum_d a[d] B[j, d] in four interleaved partial sums (four independent FMA chains
        instead of one HS long: the per-thread dot products are latency-bound)."""
        s0 = a[0] * B[j, 0] - a[0] * B[j, 0]             # 0, in the dtype
        s1 = s0
        s2 = s0
        s3 = s0
        for d in range(0, H4, 4):
            s0 += a[d] * B[j, d]
            s1 += a[d + 1] * B[j, d + 1]
            s2 += a[d + 2] * B[j, d + 2]
            s3 += a[d + 3] * B[j, d + 3]
        for d in range(H4, HS):
            s0 += a[d] * B[j, d]
        return (s0 + s1) + (s2 + s3)

    @cuda.jit(device=True)
    def kv_tile(k, v, km, has_mask, bh, b, k0, T, i, Ks, Vs, Ms):
        """Keys and values k0..k0+TILE-1 into shared memory, cooperatively (thread i takes
        every TILE-th element), and Ms[i] = 1 where key k0+i exists and is not masked."""
        for e in range(i, TILE * HS, TILE):
            j = e // HS
            d = e - j * HS
            if k0 + j < T:
                Ks[j, d] = k[bh, k0 + j, d]
                Vs[j, d] = v[bh, k0 + j, d]
        kk = k0 + i
        Ms[i] = 1 if kk < T and (not has_mask or km[b, kk]) else 0

    @cuda.jit
    def attn_fwd(q, k, v, scale, causal, has_mask, H, km, out, lse, cst):
        Ks = cuda.shared.array((TILE, HS), st)
        Vs = cuda.shared.array((TILE, HS), st)
        Ms = cuda.shared.array(TILE, it)                 # 1: key k0+j may be attended to
        qv = cuda.local.array(HS, st)
        acc = cuda.local.array(HS, st)
        bh = cuda.blockIdx.y
        b = bh // H
        q0 = cuda.blockIdx.x * TILE
        i = cuda.threadIdx.x
        T = q.shape[1]
        t = q0 + i
        zero, ninf, one = cst[0], cst[1], cst[2]
        live = t < T
        for d in range(HS):
            qv[d] = q[bh, t, d] * scale if live else zero
            acc[d] = zero
        m = ninf
        l_ = zero
        kend = min(T, q0 + TILE) if causal else T
        for k0 in range(0, kend, TILE):
            kv_tile(k, v, km, has_mask, bh, b, k0, T, i, Ks, Vs, Ms)
            cuda.syncthreads()
            if live:
                for j in range(min(TILE, T - k0)):
                    if (causal and k0 + j > t) or Ms[j] == 0:
                        continue
                    s = rowdot(qv, Ks, j)                # S_tj = c q_t . k_j
                    if s > m:                            # new max: rescale what was summed
                        alpha = math.exp(m - s)          # exp(-inf) = 0 the first time
                        l_ = l_ * alpha
                        for d in range(HS):
                            acc[d] = acc[d] * alpha
                        m = s
                    p = math.exp(s - m)
                    l_ += p
                    for d in range(HS):
                        acc[d] += p * Vs[j, d]
            cuda.syncthreads()
        if live:
            inv = one / l_ if l_ > zero else zero
            for d in range(HS):
                out[bh, t, d] = acc[d] * inv
            lse[bh, t] = m + math.log(l_) if l_ > zero else ninf

    @cuda.jit
    def attn_bwd_D(dout, out, D, cst):
        bh = cuda.blockIdx.y
        t = cuda.blockIdx.x * TILE + cuda.threadIdx.x
        if t < out.shape[1]:
            s = cst[0]
            for d in range(HS):
                s += dout[bh, t, d] * out[bh, t, d]
            D[bh, t] = s

    @cuda.jit
    def attn_bwd_dkv(q, k, v, dout, lse, D, scale, causal, has_mask, H, km, dk, dv, cst):
        Qs = cuda.shared.array((TILE, HS), st)           # c q
        dOs = cuda.shared.array((TILE, HS), st)
        Ls = cuda.shared.array(TILE, st)
        Ds = cuda.shared.array(TILE, st)
        kv = cuda.local.array(HS, st)
        vv = cuda.local.array(HS, st)
        gk = cuda.local.array(HS, st)
        gv = cuda.local.array(HS, st)
        bh = cuda.blockIdx.y
        b = bh // H
        k0 = cuda.blockIdx.x * TILE
        i = cuda.threadIdx.x
        T = q.shape[1]
        s_ = k0 + i                                      # this thread's key
        zero, ninf = cst[0], cst[1]
        ok = s_ < T and (not has_mask or km[b, s_])
        for d in range(HS):
            kv[d] = k[bh, s_, d] if ok else zero
            vv[d] = v[bh, s_, d] if ok else zero
            gk[d] = zero
            gv[d] = zero
        qstart = k0 if causal else 0                     # earlier queries cannot see it
        for q0 in range(qstart, T, TILE):
            for e in range(i, TILE * HS, TILE):
                j = e // HS
                d = e - j * HS
                if q0 + j < T:
                    Qs[j, d] = q[bh, q0 + j, d] * scale
                    dOs[j, d] = dout[bh, q0 + j, d]
            if q0 + i < T:
                Ls[i] = lse[bh, q0 + i]
                Ds[i] = D[bh, q0 + i]
            cuda.syncthreads()
            if ok:
                for j in range(min(TILE, T - q0)):
                    if (causal and s_ > q0 + j) or Ls[j] == ninf:
                        continue
                    sc = rowdot(kv, Qs, j)               # S = c q_j . k_s
                    dp = rowdot(vv, dOs, j)              # dP = dO_j . v_s
                    p = math.exp(sc - Ls[j])             # P = exp(S - lse)
                    ds = p * (dp - Ds[j])                # dS = P (dP - D)
                    for d in range(HS):
                        gv[d] += p * dOs[j, d]           # dV = P^T dO
                        gk[d] += ds * Qs[j, d]           # dK = c dS^T Q
            cuda.syncthreads()
        if s_ < T:
            for d in range(HS):
                dk[bh, s_, d] = gk[d]
                dv[bh, s_, d] = gv[d]

    @cuda.jit
    def attn_bwd_dq(q, k, v, dout, lse, D, scale, causal, has_mask, H, km, dq, cst):
        Ks = cuda.shared.array((TILE, HS), st)
        Vs = cuda.shared.array((TILE, HS), st)
        Ms = cuda.shared.array(TILE, it)
        qv = cuda.local.array(HS, st)
        gv = cuda.local.array(HS, st)                    # dO_t
        gq = cuda.local.array(HS, st)
        bh = cuda.blockIdx.y
        b = bh // H
        q0 = cuda.blockIdx.x * TILE
        i = cuda.threadIdx.x
        T = q.shape[1]
        t = q0 + i
        zero, ninf = cst[0], cst[1]
        live = t < T
        lt = lse[bh, t] if live else ninf
        Dt = D[bh, t] if live else zero
        for d in range(HS):
            qv[d] = q[bh, t, d] * scale if live else zero
            gv[d] = dout[bh, t, d] if live else zero
            gq[d] = zero
        kend = min(T, q0 + TILE) if causal else T
        for k0 in range(0, kend, TILE):
            kv_tile(k, v, km, has_mask, bh, b, k0, T, i, Ks, Vs, Ms)
            cuda.syncthreads()
            if live and lt != ninf:
                for j in range(min(TILE, T - k0)):
                    if (causal and k0 + j > t) or Ms[j] == 0:
                        continue
                    sc = rowdot(qv, Ks, j)
                    dp = rowdot(gv, Vs, j)
                    ds = math.exp(sc - lt) * (dp - Dt)
                    for d in range(HS):
                        gq[d] += ds * Ks[j, d]           # dQ = c dS K (c below)
            cuda.syncthreads()
        if live:
            for d in range(HS):
                dq[bh, t, d] = gq[d] * scale

    return attn_fwd, attn_bwd_D, attn_bwd_dkv, attn_bwd_dq


_NO_MASK_CUDA = np.ones((1, 1), np.bool_)               # never read: has_mask is False


def forward_cuda(q, k, v, causal=True, scale=None, key_mask=None):
    from . import _cuda
    scale, key_mask = _check(_cuda.shadow(q), _cuda.shadow(k), _cuda.shadow(v), scale,
                             _cuda.host(key_mask))
    call = _cuda.Call(NAME, q, k, v)
    B, H, T, hs = q.shape
    f = (B * H, T, hs)
    qd, kd, vd = (call.dev(a).reshape(f) for a in (q, k, v))
    dt = qd.dtype
    km = call.dev(key_mask if key_mask is not None else _NO_MASK_CUDA)
    out = call.empty(f, dt)
    lse = call.empty((B * H, T), dt)
    tile = _cuda.tile()
    fwd = _cuda.kernels(_cuda_factory, dt.name, hs, tile)[0]
    cst = _cuda.consts(dt, 0.0, -np.inf, 1.0)
    _cuda.launch(fwd, (-(-T // tile), B * H), tile, qd, kd, vd, scale, bool(causal),
                 key_mask is not None, H, km, out, lse, cst)
    cache = _cache(qd, kd, vd, out, lse, scale, bool(causal), key_mask, call=call, km=km,
                   shape=q.shape)
    return call.out(out.reshape(q.shape)), cache


def backward_cuda(dout, cache):
    from . import _cuda
    c = cache
    call = c.call
    B, H, T, hs = c.shape
    f = (B * H, T, hs)
    dt = c.q.dtype
    g = _cuda.dout(call, NAME, dout, c.shape, dt).reshape(f)
    tile = _cuda.tile()
    _, bwd_D, bwd_dkv, bwd_dq = _cuda.kernels(_cuda_factory, dt.name, hs, tile)
    cst = _cuda.consts(dt, 0.0, -np.inf, 1.0)
    grid = (-(-T // tile), B * H)
    D = call.empty((B * H, T), dt)
    dq, dk, dv = call.empty(f, dt), call.empty(f, dt), call.empty(f, dt)
    has_mask = c.key_mask is not None
    _cuda.launch(bwd_D, grid, tile, g, c.out, D, cst)
    _cuda.launch(bwd_dkv, grid, tile, c.q, c.k, c.v, g, c.lse, D, c.scale, c.causal,
                 has_mask, H, c.km, dk, dv, cst)
    _cuda.launch(bwd_dq, grid, tile, c.q, c.k, c.v, g, c.lse, D, c.scale, c.causal,
                 has_mask, H, c.km, dq, cst)
    return tuple(call.out(a.reshape(c.shape)) for a in (dq, dk, dv))


CUDA = Kernel(NAME, "cuda", forward_cuda, backward_cuda, ("q", "k", "v"))

# ---------------------------------------------------------------- the family

def key_mask_for(pad, B, T, rng):
    """The key mask of a size's ``"pad"`` parameter: None (absent) -> None; "end" -> each
    batch row is a sequence padded at the end, row 0 of length 1, row 1 (when B > 1) all
    padding, the others of random lengths 2..T; "random" -> every key real or padding with
    probability 1/2 (causal attention then also meets leading padding: query rows with no
    key at all)."""
    if pad is None:
        return None
    if pad == "end":
        lengths = rng.integers(2, T + 1, B) if T > 1 else np.ones(B, np.int64)
        lengths[0] = 1
        if B > 1:
            lengths[1] = 0
        return np.arange(T)[None, :] < lengths[:, None]   # (B, T)
    if pad == "random":
        return rng.random((B, T)) < 0.5
    raise ValueError(f"{NAME}: pad must be None, 'end' or 'random', got {pad!r}")


def _inputs(p, dtype, rng):
    shape = (p["B"], p["H"], p["T"], p["hs"])
    arrays = tuple((rng.standard_normal(shape)).astype(dtype) for _ in range(3))
    opts = {"causal": p["causal"]}
    if p.get("pad") is not None:                          # unmasked sizes pass no key_mask
        opts["key_mask"] = key_mask_for(p["pad"], p["B"], p["T"], rng)
    return arrays, opts


def _work(p, it):
    B, H, T, hs, causal = p["B"], p["H"], p["T"], p["hs"], p["causal"]
    # FLOPs: Q K^T and P V are 2 T T hs each per head (half when causal); the backward does
    # five such products (recomputed S, dV, dP, dQ, dK): about 2.5x. A key mask's skipped
    # blocks are not subtracted: the bench's sizes are unmasked
    f = 2 * 2 * B * H * T * T * hs // (2 if causal else 1)
    n = B * H * T * hs
    # bytes: forward reads q, k, v, writes out (+ lse); backward reads q, k, v, out, dout,
    # lse, writes dq, dk, dv
    return Work((f, int(2.5 * f)), ((4 * n + B * H * T) * it, (8 * n + B * H * T) * it))


def _size(B, H, T, hs, causal=True, ref=True, pad=None):
    p = {"B": B, "H": H, "T": T, "hs": hs, "causal": causal}
    if pad is not None:
        p["pad"] = pad
    return Size(p, ref)


def _label(p):
    pad = f" pad-{p['pad']}" if p.get("pad") is not None else ""
    return (f"B{p['B']} H{p['H']} T{p['T']} hs{p['hs']} "
            f"{'causal' if p['causal'] else 'full'}{pad}")


FAMILY = Family(
    NAME, _inputs, _work, label=_label, unit=GFLOPS, sweep="T",
    # T=1; T = tile + 1 with odd hs; hs=1; hs=256 at small T; several tiles, B>1; and two
    # small ones for the finite differences; each causal and full. Then key masks: padding
    # at the end (a row of length 1, an all-padding row, random lengths; at T=130 whole
    # key blocks of padding are skipped) and random padding (rows with no key at all when
    # causal), small enough for the finite differences to see most elements
    test_sizes=tuple(_size(*s, causal=c) for s in ((1, 1, 1, 3), (2, 2, 6, 3), (1, 1, 67, 4),
                                                  (2, 3, 65, 17), (1, 2, 64, 1),
                                                  (1, 1, 40, 256))
                     for c in (True, False))
    + tuple(_size(*s, causal=c, pad=pad) for s, pad in (((3, 2, 5, 3), "end"),
                                                        ((2, 2, 6, 3), "random"),
                                                        ((4, 1, 67, 4), "end"),
                                                        ((4, 2, 130, 8), "end"),
                                                        ((2, 1, 70, 5), "random"))
            for c in (True, False))
    + tuple(_size(2, 2, 130, 32, causal=c) for c in (True, False)),
    quick_sizes=(_size(1, 8, 64, 64), _size(1, 8, 128, 64)),
    # the reference builds T x T scores and keeps four of them in its backward: at T=2048
    # that is ~0.5 GB and seconds per call, so it stops at 1024
    full_sizes=tuple(_size(1, 8, T, 64, ref=T <= 1024) for T in (128, 256, 512, 1024, 2048)),
    torch="attention")


if __name__ == "__main__":
    from ._harness import run
    run(NAME)
