"""additive (Bahdanau) attention: the document's eq. 4.2, one query per batch row.

    qp   = h W_q                                  (B, A)     query projection
    kp_i = x_i W_k                                (B, S, A)  key projections
    u_i  = tanh(qp + kp_i)                        (B, S, A)
    e_i  = v_a . u_i                              (4.2b)     scores (B, S); -inf where masked
    a_i  = exp(e_i - m) / sum_j exp(e_j - m)      (4.2a)     alpha (B, S), m = max_j e_j
    c    = sum_i a_i x_i                                     context (B, Dx)

The document writes W_q^T h + W_k^T x_i; tinyllm keeps the ``x @ W`` layout of Linear, so
W_q is (Dh, A) and W_k is (Dx, A). The query h is the RNN state h_{t-1} (docs/DESIGN.md §1), and
x_1..x_S are at once the keys and the values.

``mask`` (B, S) bool, True = may attend. Masked scores are -inf, so their alpha is exactly 0.
A row with every position masked follows the softmax kernel's convention: alpha = 0 and c = 0
("attend to nothing" contributes nothing), never the NaN of 0/0, and its gradients are 0.

Backward, with upstream dc (B, Dx) and dalpha (B, S) (either may be None, meaning zero):

    g_i   = dalpha_i + dc . x_i                   alpha's total upstream (through c too)
    de_i  = a_i (g_i - sum_j a_j g_j)             softmax backward
    du_i  = de_i v_a * (1 - u_i^2)                tanh' = 1 - tanh^2
    dv_a  = sum_{b,i} de_i u_i
    dqp   = sum_i du_i;   dh = dqp W_q^T;   dW_q = h^T dqp
    dx_i  = a_i dc + du_i W_k^T;            dW_k = sum_{b,i} x_i^T du_i

forward(h, x, W_q, W_k, v_a, mask=None) -> ((c, alpha), cache)
backward((dc, dalpha), cache)          -> (dh, dx, dW_q, dW_k, dv_a)

The backward pass is derived step by step in docs/derivations/additive-attention.md.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from . import Kernel
from . import softmax as _softmax
from ._check import contiguous, dout_like, floats, ndim, shape
from ._family import GFLOPS, Family, Size, Work
from ._nb import chunk, dot, fexp, neg_inf, njit, num_threads, one, prange, zero

NAME = "additive_attention"


def _check(h, x, W_q, W_k, v_a, mask):
    floats(NAME, h=h, x=x, W_q=W_q, W_k=W_k, v_a=v_a)
    ndim(NAME, "h", h, 2, "(B, Dh)")
    ndim(NAME, "x", x, 3, "(B, S, Dx)")
    ndim(NAME, "W_q", W_q, 2, "(Dh, A)")
    ndim(NAME, "W_k", W_k, 2, "(Dx, A)")
    ndim(NAME, "v_a", v_a, 1, "(A,)")
    B, Dh = h.shape
    _, S, Dx = x.shape
    A = v_a.shape[0]
    if x.shape[0] != B:
        raise ShapeError(f"{NAME}: h {h.shape} and x {x.shape} disagree on the batch size B")
    if S == 0:
        raise ShapeError(f"{NAME}: x {x.shape} has no positions to attend over (S = 0)")
    shape(NAME, "W_q", W_q, (Dh, A), "(Dh, A)")
    shape(NAME, "W_k", W_k, (Dx, A), "(Dx, A)")
    if mask is not None:
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
            got = mask.dtype if isinstance(mask, np.ndarray) else type(mask).__name__
            raise TypeError(f"{NAME}: mask must be a bool array (True = may attend), got {got}")
        shape(NAME, "mask", mask, (B, S), "(B, S)")


def _split_dout(dout, c, alpha):
    """(dc, dalpha) checked against the forward outputs; None stays None."""
    if dout is None:
        return None, None
    if not isinstance(dout, (tuple, list)) or len(dout) != 2:
        raise TypeError(f"{NAME}: dout must be the pair (dc, dalpha), either may be None; "
                        f"got {type(dout).__name__}")
    dc, dalpha = dout
    dc = None if dc is None else dout_like(NAME, dc, c, "dc")
    dalpha = None if dalpha is None else dout_like(NAME, dalpha, alpha, "dalpha")
    return dc, dalpha


# ---------------------------------------------------------------- NumPy reference

def forward_ref(h, x, W_q, W_k, v_a, mask=None):
    _check(h, x, W_q, W_k, v_a, mask)
    qp = h @ W_q                                          # (B, A)      W_q^T h
    kp = x @ W_k                                          # (B, S, A)   W_k^T x_i
    u = np.tanh(qp[:, None, :] + kp)                      # (B, S, A)
    e = u @ v_a                                           # (B, S)      eq. 4.2b
    if mask is not None:
        e = np.where(mask, e, -np.inf).astype(e.dtype)    # masked: -inf, so exp -> 0
    alpha, _ = _softmax.forward_ref(e)                    # (B, S)      eq. 4.2a, -inf row -> 0
    c = np.einsum("bs,bsd->bd", alpha, x)                 # (B, Dx)     sum_i alpha_i x_i
    return (c, alpha), (h, x, W_q, W_k, v_a, u, c, alpha)


def backward_ref(dout, cache):
    h, x, W_q, W_k, v_a, u, c, alpha = cache
    (B, S, Dx), A = x.shape, v_a.shape[0]
    dc, dalpha = _split_dout(dout, c, alpha)
    if dc is None:
        dc = np.zeros_like(c)                             # (B, Dx)
    if dalpha is None:
        dalpha = np.zeros_like(alpha)                     # (B, S)
    # alpha reaches the loss directly and through c = sum_i alpha_i x_i:
    g = dalpha + np.einsum("bsd,bd->bs", x, dc)           # (B, S)      g_i = dalpha_i + dc.x_i
    # softmax backward; a masked i has alpha_i = 0 exactly, so de_i = 0 there
    (de,) = _softmax.backward_ref(g, alpha)               # (B, S)      a_i (g_i - sum_j a_j g_j)
    du = de[:, :, None] * v_a * (1 - u * u)               # (B, S, A)   de_i v_a (1 - u_i^2)
    dv_a = np.einsum("bs,bsa->a", de, u)                  # (A,)        sum_{b,i} de_i u_i
    dqp = du.sum(axis=1)                                  # (B, A)      qp is broadcast over i
    dh = dqp @ W_q.T                                      # (B, Dh)
    dW_q = h.T @ dqp                                      # (Dh, A)
    dx = alpha[:, :, None] * dc[:, None, :] + du @ W_k.T  # (B, S, Dx)  value path + key path
    dW_k = x.reshape(B * S, Dx).T @ du.reshape(B * S, A)  # (Dx, A)
    return dh, dx, dW_q, dW_k, dv_a


REFERENCE = Kernel(NAME, "numpy", forward_ref, backward_ref, ("h", "x", "W_q", "W_k", "v_a"))


# ---------------------------------------------------------------- Numba CPU
# BLAS does the projections (qp = h W_q, kp = x W_k); a Numba loop adds qp over kp in place
# and NumPy's SIMD tanh turns that into u = tanh(kp + qp) (see "Why NumPy's tanh" below).
# One Numba loop over the batch rows then does the rest per row b: e_i = v_a . u_i (skipped
# where masked), the masked softmax over S, and c = sum_i alpha_i x_i. Backward mirrors it:
# one loop over b makes g, de, du, dqp and a per-row partial dv_a; BLAS then does dh, dW_q,
# dW_k and dx's key path du W_k^T, and a last loop adds dx's value path alpha_i dc.
#
# The loops over b run in parallel (prange over one chunk per thread) only when a call has
# enough work to repay waking the threads (~25 us measured for an empty prange); RNN-sized
# calls (B*S*(A+Dx) < 2**21, e.g. B=64 S=40 A=Dx=128) measured faster on the calling thread.
# The two one-line elementwise passes (kp + qp, dx += alpha_i dc) always run on this thread:
# each parallel function costs seconds of cold compile for little gain.
#
# Dot products are _nb.dot, compiled with fastmath {'reassoc', 'contract'} (a plain sum,
# docs/DESIGN.md §6) so they vectorise; 16 lane accumulators, as in softmax, were ~4x slower on
# rows of 128.
#
# Why NumPy's tanh: _nb.ftanh inside the loop measured slower at B=64 S=20 A=128 on this
# machine. Under Numba's default error model its division (1-e)/(1+e) carries a
# ZeroDivisionError check that keeps the loop scalar (~10 ns an element); with
# error_model="numpy" it vectorises but still ran ~3x slower than NumPy's AVX-512 tanh, and
# the float64 path (math.tanh, a scalar libm call) ~12x slower. u is then also bitwise the
# reference's u.

_PAR_WORK = 1 << 21        # B*S*(A+Dx) from which the row loops use every thread


@njit
def _add_query(u, qp):
    """u[b, i] += qp[b] (NumPy's broadcast add measured 2.5x slower)."""
    B, S, A = u.shape
    for b in range(B):
        q = qp[b]
        for i in range(S):
            r = u[b, i]
            for a in range(A):
                r[a] += q[a]


@njit
def _fwd_range(b0, b1, u, x, v, mask, has_mask, alpha, c):
    """Rows b0..b1-1. u (B, S, A) = tanh(qp + kp); x (B, S, Dx); v (A,); mask (B, S) bool
    (read only when has_mask). Writes alpha (B, S) and c (B, Dx)."""
    S = u.shape[1]
    Dx = x.shape[2]
    for b in range(b0, b1):
        ab = alpha[b]
        m = neg_inf(u)
        for i in range(S):
            if has_mask and not mask[b, i]:
                ab[i] = neg_inf(u)                        # masked: exp(-inf) = 0
                continue
            ei = dot(u[b, i], v)                         # e_i = v_a . u_i      (4.2b)
            ab[i] = ei
            m = ei if ei > m else m
        if m == neg_inf(u):
            m = zero(u)                                   # fully masked row -> all zeros
        s = zero(u)
        for i in range(S):
            p = fexp(ab[i] - m)
            ab[i] = p
            s += p
        inv = one(u) / s if s != zero(u) else zero(u)    # (4.2a); NaN stays NaN
        cb = c[b]
        for d in range(Dx):
            cb[d] = zero(u)
        for i in range(S):
            ai = ab[i] * inv
            ab[i] = ai
            if ai != zero(u):
                xi = x[b, i]
                for d in range(Dx):
                    cb[d] += ai * xi[d]                   # c = sum_i alpha_i x_i


@njit
def _bwd_range(b0, b1, x, u, alpha, v, dc, has_dc, dalpha, has_dalpha, du, dqp, dvp):
    """Rows b0..b1-1. x (B, S, Dx); u (B, S, A); alpha (B, S); v (A,); dc (B, Dx) and
    dalpha (B, S) (read only when has_dc / has_dalpha). Writes du (B, S, A), dqp (B, A) and
    dvp (B, A), row b's share of dv_a."""
    S, A = u.shape[1], u.shape[2]
    g = np.empty(S, u.dtype)
    for b in range(b0, b1):
        ab = alpha[b]
        sg = zero(u)
        for i in range(S):
            gi = zero(u)
            if has_dalpha:
                gi = dalpha[b, i]
            if has_dc and ab[i] != zero(u):               # alpha_i = 0: g_i is never used
                gi += dot(dc[b], x[b, i])                # g_i = dalpha_i + dc . x_i
            g[i] = gi
            sg += ab[i] * gi
        dq = dqp[b]
        dv = dvp[b]
        for a in range(A):
            dq[a] = zero(u)
            dv[a] = zero(u)
        for i in range(S):
            dei = ab[i] * (g[i] - sg)                     # de_i = a_i (g_i - sum_j a_j g_j)
            dur = du[b, i]
            if dei == zero(u):                            # masked (alpha_i = 0): nothing flows
                for a in range(A):
                    dur[a] = zero(u)
                continue
            ur = u[b, i]
            # two loops: one loop writing du, dq and dv together measured 1.5x slower
            for a in range(A):
                ua = ur[a]
                dur[a] = dei * v[a] * (one(u) - ua * ua)  # du_i = de_i v_a (1 - u_i^2)
            for a in range(A):
                dq[a] += dur[a]                           # dqp = sum_i du_i
                dv[a] += dei * ur[a]                      # dv_a += de_i u_i


@njit
def _add_value_path(alpha, dc, dx):
    """dx[b, i] += alpha[b, i] dc[b]: dx's value path."""
    B, S, Dx = dx.shape
    for b in range(B):
        dcb = dc[b]
        for i in range(S):
            ai = alpha[b, i]
            out = dx[b, i]
            for d in range(Dx):
                out[d] += ai * dcb[d]


@njit(parallel=True)
def _fwd_par(nchunks, u, x, v, mask, has_mask, alpha, c):
    for ch in prange(nchunks):
        lo, hi = chunk(ch, nchunks, u.shape[0])
        _fwd_range(lo, hi, u, x, v, mask, has_mask, alpha, c)


@njit(parallel=True)
def _bwd_par(nchunks, x, u, alpha, v, dc, has_dc, dalpha, has_dalpha, du, dqp, dvp):
    for ch in prange(nchunks):
        lo, hi = chunk(ch, nchunks, u.shape[0])
        _bwd_range(lo, hi, x, u, alpha, v, dc, has_dc, dalpha, has_dalpha, du, dqp, dvp)


def _nchunks(B, S, A, Dx) -> int:
    """1 (run on this thread) for small calls, else one chunk of rows per thread."""
    if B * S * (A + Dx) < _PAR_WORK:
        return 1
    return max(1, min(B, num_threads()))


def forward_numba(h, x, W_q, W_k, v_a, mask=None):
    _check(h, x, W_q, W_k, v_a, mask)
    h, x, W_q, W_k, v_a = contiguous(h, x, W_q, W_k, v_a)
    B, S, Dx = x.shape
    A = v_a.shape[0]
    qp = h @ W_q                                                  # (B, A)
    u = (x.reshape(B * S, Dx) @ W_k).reshape(B, S, A)             # kp, then u in place
    alpha = np.empty((B, S), x.dtype)
    c = np.empty((B, Dx), x.dtype)
    has_mask = mask is not None
    m = contiguous(mask) if has_mask else np.ones((1, 1), np.bool_)
    if B:
        _add_query(u, qp)                                         # kp + qp
        np.tanh(u, out=u)                                         # u = tanh(kp + qp)
        n = _nchunks(B, S, A, Dx)
        if n > 1:
            _fwd_par(n, u, x, v_a, m, has_mask, alpha, c)
        else:
            _fwd_range(0, B, u, x, v_a, m, has_mask, alpha, c)
    return (c, alpha), (h, x, W_q, W_k, v_a, u, c, alpha)


def backward_numba(dout, cache):
    h, x, W_q, W_k, v_a, u, c, alpha = cache
    (B, S, Dx), A = x.shape, v_a.shape[0]
    dc, dalpha = _split_dout(dout, c, alpha)
    has_dc, has_dalpha = dc is not None, dalpha is not None
    du = np.empty((B, S, A), x.dtype)
    dqp = np.empty((B, A), x.dtype)
    dvp = np.empty((B, A), x.dtype)
    n = _nchunks(B, S, A, Dx)
    args = (x, u, alpha, v_a, dc if has_dc else c, has_dc, dalpha if has_dalpha else alpha,
            has_dalpha, du, dqp, dvp)
    if n > 1:
        _bwd_par(n, *args)
    elif B:
        _bwd_range(0, B, *args)
    du2 = du.reshape(B * S, A)
    dx = (du2 @ W_k.T).reshape(B, S, Dx)                          # key path: du_i W_k^T
    if has_dc and B:
        _add_value_path(alpha, dc, dx)                            # value path: + alpha_i dc
    dv_a = dvp.sum(axis=0)
    dh = dqp @ W_q.T
    dW_q = h.T @ dqp
    dW_k = x.reshape(B * S, Dx).T @ du2
    return dh, dx, dW_q, dW_k, dv_a


NUMBA = Kernel(NAME, "numba", forward_numba, backward_numba, ("h", "x", "W_q", "W_k", "v_a"))

# ---------------------------------------------------------------- the family

def _mask(p, rng):
    """The (B, S) mask of ``params["masked"]``: False/None none; True causal-like (row b may
    attend to the first 1 + b % S positions); "random" ~60% kept, position 0 always;
    "empty_row" the same with row B // 2 attending to nothing."""
    B, S, kind = p["B"], p["S"], p.get("masked")
    if not kind:
        return None
    if kind is True:
        return np.arange(S)[None, :] <= (np.arange(B) % S)[:, None]
    mask = rng.random((B, S)) < 0.6
    mask[:, 0] = True
    if kind == "empty_row":
        mask[B // 2] = False
    return mask


def _inputs(p, dtype, rng):
    B, S, Dh, Dx, A = p["B"], p["S"], p["Dh"], p["Dx"], p["A"]

    def randn(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(dtype)
    arrays = (randn(B, Dh), randn(B, S, Dx), randn(Dh, A, scale=Dh ** -0.5),
              randn(Dx, A, scale=Dx ** -0.5), randn(A))
    mask = _mask(p, rng)
    return arrays, ({} if mask is None else {"mask": mask})


def _work(p, it):
    B, S, Dh, Dx, A = p["B"], p["S"], p["Dh"], p["Dx"], p["A"]
    # forward: the GEMMs 2BDhA + 2BSDxA, then per (b, i) A adds + A tanh + 2A for the
    # score, and 2Dx for the context. Backward: g (2BSDx), du (~4BSA), dqp and dv_a
    # (4BSA), dh and dW_q (4BDhA), dx and dW_k (4BSDxA), the value path (2BSDx).
    fwd = 2 * B * Dh * A + 2 * B * S * Dx * A + B * S * (4 * A + 2 * Dx)
    bwd = 4 * B * Dh * A + 4 * B * S * Dx * A + B * S * (8 * A + 4 * Dx)
    # bytes: forward reads h, x, W_q, W_k, v_a, writes c and alpha; backward reads them again
    # with dc, dalpha, writes dh, dx, dW_q, dW_k
    fb = (B * Dh + B * S * Dx + Dh * A + Dx * A + A + B * Dx + B * S) * it
    bb = (2 * B * Dh + 2 * B * S * Dx + 2 * Dh * A + 2 * Dx * A + 2 * B * S + B * Dx) * it
    return Work((fwd, bwd), (fb, bb))


def _size(B, S, Dh, Dx=None, A=None, masked=False):
    Dx, A = Dh if Dx is None else Dx, Dh if A is None else A
    return Size({"B": B, "S": S, "Dh": Dh, "Dx": Dx, "A": A, "masked": masked})


def _label(p):
    if p["Dh"] == p["Dx"] == p["A"]:
        dims = f"D={p['Dh']}"
    else:
        dims = f"Dh={p['Dh']} Dx={p['Dx']} A={p['A']}"
    kind = p["masked"]
    return f"B={p['B']} S={p['S']} {dims}" + ("" if not kind else " masked" if kind is True
                                              else f" mask={kind}")


FAMILY = Family(
    NAME, _inputs, _work, label=_label, unit=GFLOPS, sweep="S",
    # odd and mismatched sizes, B = 1, S = 1, an RNN-like shape; with and without masks
    test_sizes=tuple(_size(*s, masked=m) for s in ((3, 5, 4, 6, 7), (1, 1, 3, 2, 5),
                                                  (3, 4, 3, 5, 6), (2, 17, 16, 33, 19),
                                                  (4, 20, 24, 32, 40))
                     for m in (False, "random", "empty_row")),
    quick_sizes=(_size(16, 8, 64), _size(16, 16, 64)),
    full_sizes=tuple(_size(64, S, 128) for S in (16, 32, 64, 128, 256)),
    torch="additive_attention")


if __name__ == "__main__":
    from ._harness import run
    run(NAME)
