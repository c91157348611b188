"""Quantised matrix products: y = x @ deq(Q), weights stored as int8 or packed int4.

Weight-only, symmetric quantisation of a Linear weight W (in, out) (tinyllm's layout,
y = x @ W, so output channel j is column j). With b bits, qmax = 2^(b-1) - 1 (127 or 7):

    s     = max |W over the block| / qmax            (s = 1 where that max is 0)
    Q     = clip(rint(W / s), -qmax, qmax)            int8; rint rounds half to even
    deq   = Q * s                                     |W - deq| <= s / 2 elementwise

The blocks sharing one scale (``granularity``):

    "tensor"   one scale for all of W               scales (1, 1)
    "channel"  one per output column                scales (1, out)
    "group"    one per ``group`` consecutive input  scales (ceil(in / group), out);
               rows of a column (llama.cpp Q8_0 /   scales[g, j] covers rows
               Q4_0 style); the last may be short   g*group .. min(in, (g+1)*group) - 1

int4 is packed two values per byte along the input axis: byte (r, j) of the (ceil(in/2), out)
uint8 array holds row 2r in its low nibble and row 2r+1 in its high nibble, each stored
offset-binary as Q + 8 (so 1..15 for Q in -7..7); an odd ``in`` pads the last high nibble
with Q = 0 (nibble 8), which the products never read.

    byte = (Q[2r] + 8) | (Q[2r+1] + 8) << 4          Q[2r] = (byte & 15) - 8,
                                                     Q[2r+1] = (byte >> 4) - 8

The array helpers (pure NumPy): ``quantize(w, bits, granularity, group=32) -> (q, scales)``
(q unpacked int8), ``pack_int4(q) -> uint8``, ``unpack_int4(packed, in_features) -> int8``,
``dequantize(qweight, scales, bits, granularity, group=32, in_features=None)`` -> W in the
scales' dtype (float32 for a model), ``scales_shape``, ``pack``.

The kernel (inference only: no backward):

    forward(x, qweight, scales, bits, granularity, group, in_features) -> (y, None)
    x (..., in) float32/float64; qweight int8 (in, out) for bits=8, uint8 (ceil(in/2), out)
    for bits=4; scales (as above) in x's dtype; y (..., out) in x's dtype:
    y[n, j] = sum_g scales[g, j] sum_{k in group g} x[n, k] Q[k, j]

The reference dequantises W and multiplies. The Numba version never builds W. For one row
(a batch-1 decoding step, the case that is bound by reading the weight) it walks the
weight's rows front to back, accumulating x[k] * Q[k, :] into a partial of the full width
(up to 4096 columns: a block's matrices), so every weight byte is read exactly once, in
memory order, and the inner loop over the columns (convert, multiply-add) vectorises; the
sum over a group's rows is kept in that partial and scaled once per group. On two threads
each takes a contiguous range of rows (split at group edges) into a partial output of its
own, and the partials are added in a fixed order. A wider product (the tied head) is cut
into column blocks instead, one per task. Walking whole rows made the 48 matrices of a
GPT-2-small decoding step (int8) about 1.3x faster on two threads than column blocks of
the same code, which read each row in strided pieces (benchmarks/COMPRESSION.md). For several
rows (a prefill, an evaluation batch) each task dequantises a small (rows x columns) tile of
its block at a time into scratch and multiplies all rows of x by it, so the weight is again
read once and only a tile is ever in float.
"""
from __future__ import annotations

import functools
import numbers

import numpy as np

from . import Kernel
from ._check import floats
from ._family import GBPS, Family, Size, Work
from ._nb import chunk, njit, num_threads, prange, zero
from ..errors import ShapeError
from ..runtime import cheap_launches

NAME = "qmatmul"
GRANULARITIES = ("tensor", "channel", "group")
BITS = (4, 8)


def qmax(bits: int) -> int:
    """The largest magnitude a b-bit symmetric code holds: 2^(b-1) - 1."""
    return 2 ** (bits - 1) - 1


def _check_scheme(op, bits, granularity, group):
    if isinstance(bits, bool) or bits not in BITS:
        raise ValueError(f"{op}: bits must be 4 or 8, got {bits!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"{op}: granularity must be one of {', '.join(GRANULARITIES)}, got "
                         f"{granularity!r}")
    if (isinstance(group, bool) or not isinstance(group, numbers.Integral) or group < 1):
        raise ValueError(f"{op}: group must be a positive int, got {group!r}")
    return int(bits), granularity, int(group)


def scales_shape(in_features: int, out_features: int, granularity: str, group: int = 32):
    """The shape of the scales of an (in, out) weight: (1, 1), (1, out) or (G, out)."""
    if granularity == "tensor":
        return (1, 1)
    if granularity == "channel":
        return (1, out_features)
    return (-(-in_features // group), out_features)


def _row_scales(scales, in_features, granularity, group):
    """Scales broadcastable against the (in, out) weight: (1, 1), (1, out) or (in, out)."""
    if granularity == "group":
        return np.repeat(scales, group, axis=0)[:in_features]
    return scales


def quantize(w, bits: int, granularity: str, group: int = 32):
    """Symmetric round-half-to-even quantisation of w (in, out) float: ``(q, scales)`` with
    q int8 (in, out) in [-qmax, qmax] (unpacked, also for 4 bits: see ``pack_int4``) and
    scales in w's dtype, shaped by ``scales_shape``."""
    bits, granularity, group = _check_scheme("quantize", bits, granularity, group)
    if not isinstance(w, np.ndarray) or w.dtype not in (np.float32, np.float64):
        raise TypeError(f"quantize: w must be a float32 or float64 array, got "
                        f"{getattr(w, 'dtype', type(w).__name__)}")
    if w.ndim != 2 or 0 in w.shape:
        raise ShapeError(f"quantize: w must be a non-empty (in, out) matrix, got {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("quantize: w holds NaN or inf values")
    n_in, n_out = w.shape
    a = np.abs(w)
    if granularity == "tensor":
        m = a.max(keepdims=True)                               # (1, 1)
    elif granularity == "channel":
        m = a.max(axis=0, keepdims=True)                       # (1, out)
    else:
        G = -(-n_in // group)
        pad = np.zeros((G * group - n_in, n_out), w.dtype)
        m = np.concatenate([a, pad]).reshape(G, group, n_out).max(axis=1)   # (G, out)
    qm = qmax(bits)
    s = np.where(m > 0, m / w.dtype.type(qm), w.dtype.type(1)).astype(w.dtype)
    r = np.rint(w / _row_scales(s, n_in, granularity, group))  # round half to even
    q = np.clip(r, -qm, qm).astype(np.int8)                    # (in, out)
    return q, s


def pack_int4(q):
    """int8 (in, out) with values in [-8, 7] -> uint8 (ceil(in/2), out): row 2r in the low
    nibble, row 2r+1 in the high one, each as Q + 8; an odd last row padded with Q = 0."""
    q = np.asarray(q)
    if q.ndim != 2 or q.dtype.kind not in "iu":
        raise ShapeError(f"pack_int4: q must be an integer (in, out) matrix, got {q.dtype} "
                         f"{q.shape}")
    if q.size and (q.min() < -8 or q.max() > 7):
        raise ValueError("pack_int4: values must lie in [-8, 7]")
    u = q.astype(np.int16) + 8                                 # 0..15
    if u.shape[0] % 2:
        u = np.concatenate([u, np.full((1, u.shape[1]), 8, np.int16)])
    return (u[0::2] | (u[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed, in_features: int):
    """uint8 (ceil(in/2), out) -> int8 (in, out), the inverse of ``pack_int4``."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[0] != -(-in_features // 2):
        raise ShapeError(f"unpack_int4: packed must be uint8 (ceil({in_features} / 2), out), "
                         f"got {packed.dtype} {packed.shape}")
    q = np.empty((2 * packed.shape[0], packed.shape[1]), np.int8)
    q[0::2] = (packed & 15).astype(np.int8) - 8
    q[1::2] = (packed >> 4).astype(np.int8) - 8
    return q[:in_features]


def pack(q, bits: int):
    """The stored form of unpacked codes: q itself (int8) for 8 bits, ``pack_int4(q)``."""
    return q.astype(np.int8) if bits == 8 else pack_int4(q)


def dequantize(qweight, scales, bits: int, granularity: str, group: int = 32,
               in_features: int | None = None):
    """Q * s as a dense (in, out) array in the scales' dtype. ``qweight`` is the stored
    form (int8, or packed uint8 for 4 bits, whose ``in_features`` must then be given)."""
    bits, granularity, group = _check_scheme("dequantize", bits, granularity, group)
    if bits == 4:
        if in_features is None:
            raise ValueError("dequantize: in_features is needed to unpack 4-bit weights")
        q = unpack_int4(qweight, in_features)
    else:
        q = np.asarray(qweight)
    return q.astype(scales.dtype) * _row_scales(scales, q.shape[0], granularity, group)


# ---------------------------------------------------------------- checks

def _check(x, qweight, scales, bits, granularity, group, in_features):
    """Validate; return (bits, granularity, group, in, out)."""
    floats(NAME, x=x, scales=scales)
    bits, granularity, group = _check_scheme(NAME, bits, granularity, group)
    if (isinstance(in_features, bool) or not isinstance(in_features, numbers.Integral)
            or in_features < 1):
        raise ValueError(f"{NAME}: in_features must be a positive int, got {in_features!r}")
    n_in = int(in_features)
    want = np.int8 if bits == 8 else np.uint8
    if not isinstance(qweight, np.ndarray) or qweight.dtype != want:
        raise TypeError(f"{NAME}: qweight must be a {np.dtype(want)} array for {bits}-bit "
                        f"weights, got {getattr(qweight, 'dtype', type(qweight).__name__)}")
    rows = n_in if bits == 8 else -(-n_in // 2)
    if qweight.ndim != 2 or qweight.shape[0] != rows or qweight.shape[1] < 1:
        layout = "(in, out)" if bits == 8 else "(ceil(in / 2), out)"
        raise ShapeError(f"{NAME}: qweight must be {layout} with in = {n_in}, got "
                         f"{qweight.shape}")
    n_out = qweight.shape[1]
    if x.ndim < 1 or x.shape[-1] != n_in:
        raise ShapeError(f"{NAME}: x must be (..., in = {n_in}), got {x.shape}")
    ss = scales_shape(n_in, n_out, granularity, group)
    if scales.shape != ss:
        raise ShapeError(f"{NAME}: scales must be {ss} for {granularity} scales of a "
                         f"({n_in}, {n_out}) weight, got {scales.shape}")
    return bits, granularity, group, n_in, n_out


# ---------------------------------------------------------------- NumPy reference

def forward_ref(x, qweight, scales, bits, granularity, group, in_features):
    bits, granularity, group, n_in, n_out = _check(x, qweight, scales, bits, granularity,
                                                   group, in_features)
    w = dequantize(qweight, scales, bits, granularity, group, n_in)   # (in, out) Q * s
    return x @ w, None                                                # (..., out)


REFERENCE = Kernel(NAME, "numpy", forward_ref, None, ("x",))


# ---------------------------------------------------------------- Numba CPU
# The scales reach the loops as a (G, out) matrix with G groups of ``gs`` rows (tensor and
# channel scales are one group of all ``in`` rows, a tensor scale repeated over the columns),
# so one loop serves every granularity. Column blocks of _JB: the partial and the
# accumulator of a block (2 x _JB floats) stay in L1 while the weight streams through.

_JB = 128                 # output columns per task
_KB = 64                  # weight rows per dequantised tile (several-row case)
_MV_JB = 1024             # output columns per task of a wide one-row product (the head):
                          # long inner loops; the partial and accumulator (8 KB) in L1
_FULL_W = 4096            # up to this many columns a one-row product walks whole rows, so
                          # the weight streams front to back (partial + accumulator <= 32 KB)
# in * out * rows from which the column blocks run in parallel. It depends on what a launch
# costs (tinyllm.runtime.cheap_launches): on Numba's "workqueue" layer ~105 us, so a
# parallel launch lost to the serial loop at every GPT-2-small block matrix (768 x 3072 int8:
# 0.23 ms against 0.12 ms) and broke even on the 768 x 50257 head; on "omp" ~1.5 us, so both
# cores share anything from a few hundred thousand weights up (a 768 x 768 product)
_PARALLEL = 1 << 23
_PARALLEL_CHEAP = 1 << 18


@njit(inline="always", fastmath={"contract"})
def _mv8_block(x, q, s, gs, y, j0, j1, part, acc, k_lo, k_hi):
    """y[j0:j1] = x[k_lo:k_hi] @ deq(Q)[k_lo:k_hi, j0:j1], Q int8 (in, out)."""
    w = j1 - j0
    for j in range(w):
        acc[j] = 0
    for g in range(k_lo // gs, (k_hi - 1) // gs + 1):
        for j in range(w):
            part[j] = 0
        k, k1 = max(k_lo, g * gs), min(k_hi, (g + 1) * gs)
        while k + 4 <= k1:                                       # four rows per pass over
            x0, x1, x2, x3 = x[k], x[k + 1], x[k + 2], x[k + 3]  # the partial (fewer loads
            q0, q1, q2, q3 = q[k, j0:j1], q[k + 1, j0:j1], q[k + 2, j0:j1], q[k + 3, j0:j1]
            for j in range(w):                                   # and stores of it)
                part[j] += (x0 * q0[j] + x1 * q1[j]) + (x2 * q2[j] + x3 * q3[j])
            k += 4
        for kk in range(k, k1):
            xk, qr = x[kk], q[kk, j0:j1]
            for j in range(w):
                part[j] += xk * qr[j]                            # int8 * float -> float
        sr = s[g, j0:j1]
        for j in range(w):
            acc[j] += part[j] * sr[j]
    for j in range(w):
        y[j0 + j] = acc[j]


@njit(inline="always", fastmath={"contract"})
def _mv4_block(x, p, s, gs, y, j0, j1, part, acc, cst, k_lo, k_hi):
    """y[j0:j1] = x (in,) @ deq(Q)[:, j0:j1], Q packed two rows per byte (ceil(in/2), out).

    Whole bytes are unpacked in float, 16 lanes wide (nibble arithmetic in integers would
    run in int64 lanes): with b = 16 hi + lo, hi = floor(b / 16) and the stored offset 8,
    x0 (lo - 8) + x1 (hi - 8) = x0 b - (16 x0 - x1) hi - 8 (x0 + x1), whose last term is
    the same for every column and is taken out once per group (``off``). The floor is
    rint((b - 7.5) / 16) (never a tie for an integer b) by the add-and-subtract of
    M = 1.5 * 2^mantissa, exact in IEEE arithmetic (FMA contraction, the one fast-math
    flag the one-row loops take, leaves it exact: the product by 1/16 is exact, so fusing
    it with the add changes nothing; reassociation would break it); ``cst`` holds the
    constants in x's dtype (a float64 literal would turn the loop into float64)."""
    w = j1 - j0
    one, sixteen, eight, sixteenth, half15, magic = cst[0], cst[1], cst[2], cst[3], cst[4], \
        cst[5]
    for j in range(w):
        acc[j] = 0
    for g in range(k_lo // gs, (k_hi - 1) // gs + 1):
        for j in range(w):
            part[j] = 0
        off = cst[6]                                             # 0
        k, k1 = max(k_lo, g * gs), min(k_hi, (g + 1) * gs)
        while k < k1:
            r = k >> 1
            if k % 2 == 0 and k + 3 < k1:                        # two bytes: rows k..k+3
                b0, b1 = p[r, j0:j1], p[r + 1, j0:j1]
                x0, x2 = x[k], x[k + 2]
                c0, c1 = x0 * sixteen - x[k + 1], x2 * sixteen - x[k + 3]
                off += (x0 + x[k + 1] + x2 + x[k + 3]) * eight
                for j in range(w):
                    f0, f1 = b0[j] * one, b1[j] * one
                    h0 = ((f0 - half15) * sixteenth + magic) - magic      # floor(f0 / 16)
                    h1 = ((f1 - half15) * sixteenth + magic) - magic
                    part[j] += (x0 * f0 - c0 * h0) + (x2 * f1 - c1 * h1)
                k += 4
            elif k % 2 == 0 and k + 1 < k1:                      # one byte: rows k, k+1
                br, x0 = p[r, j0:j1], x[k]
                c0 = x0 * sixteen - x[k + 1]
                off += (x0 + x[k + 1]) * eight
                for j in range(w):
                    f0 = br[j] * one
                    part[j] += x0 * f0 - c0 * (((f0 - half15) * sixteenth + magic) - magic)
                k += 2
            else:                                                # one row: a group edge
                br, xk, sh = p[r, j0:j1], x[k], (k % 2) * 4
                for j in range(w):
                    part[j] += xk * np.int8(((br[j] >> sh) & 15) - 8)
                k += 1
        sr = s[g, j0:j1]
        for j in range(w):
            acc[j] += (part[j] - off) * sr[j]
    for j in range(w):
        y[j0 + j] = acc[j]


@njit(inline="always", fastmath={"contract"})
def _mv_block(x, qw, s, gs, bits, y, j0, j1, part, acc, cst, k_lo, k_hi):
    if bits == 8:
        _mv8_block(x, qw, s, gs, y, j0, j1, part, acc, k_lo, k_hi)
    else:
        _mv4_block(x, qw, s, gs, y, j0, j1, part, acc, cst, k_lo, k_hi)


# The one-row loops are plain multiply-accumulates: they take FMA contraction (the design's
# rule allows {'reassoc', 'contract'} on plain sums; reassociation is left out because the
# int4 floor trick needs IEEE order). In same-session runs of benchmarks/quant_decode.py it
# raised GPT-2-small-shaped decode from 1.09x to 1.16-1.22x fp32 (int8) and from 1.01x to
# 1.19-1.33x (int4 group-32). The parallel path (the head, > 8M weights) stays without it:
# there it measured no faster.
@njit(fastmath={"contract"})
def _mv_serial(x, qw, s, gs, bits, y, jb, cst):
    part, acc = np.empty(jb, x.dtype), np.empty(jb, x.dtype)
    n_out = y.shape[0]
    for j0 in range(0, n_out, jb):
        _mv_block(x, qw, s, gs, bits, y, j0, min(n_out, j0 + jb), part, acc, cst, 0,
                  x.shape[0])


@njit(parallel=True)
def _mv_par(x, qw, s, gs, bits, y, jb, cst):
    """Column blocks of jb on the threads (a wide product: the tied head)."""
    n_out = y.shape[0]
    for c in prange((n_out + jb - 1) // jb):
        part, acc = np.empty(jb, x.dtype), np.empty(jb, x.dtype)
        j0 = c * jb
        _mv_block(x, qw, s, gs, bits, y, j0, min(n_out, j0 + jb), part, acc, cst, 0,
                  x.shape[0])


@njit(parallel=True, fastmath={"contract"})
def _mv_rows_par(x, qw, s, gs, bits, y, Y, bounds, cst):
    """Row ranges bounds[t]..bounds[t+1] on the threads, each over the full width into
    Y[t] (T, out); then y = Y[0] + Y[1] + ... in that order. Each thread reads one contiguous
    stretch of the weight, front to back."""
    n_out, T = y.shape[0], bounds.shape[0] - 1
    for t in prange(T):
        part, acc = np.empty(n_out, x.dtype), np.empty(n_out, x.dtype)
        _mv_block(x, qw, s, gs, bits, Y[t], 0, n_out, part, acc, cst, bounds[t],
                  bounds[t + 1])
    for j in range(n_out):
        v = Y[0, j]
        for t in range(1, T):
            v += Y[t, j]
        y[j] = v


@functools.lru_cache(maxsize=256)
def _row_bounds(n_in, gs, tasks):
    """Split rows 0..n_in into ``tasks`` ranges at group edges (several groups) or at
    multiples of 4 (one group: the four-row passes, whole int4 bytes). Cached: a decoding
    step asks for the same few splits ~50 times (the array is read-only)."""
    G = -(-n_in // gs)
    if G > 1:
        b = [min(n_in, (G * t // tasks) * gs) for t in range(tasks + 1)]
    else:
        b = [min(n_in, (n_in * t // tasks) // 4 * 4) for t in range(tasks + 1)]
    b[-1] = n_in
    out = np.array(sorted(set(b)), np.int64)
    out.flags.writeable = False
    return out


@njit(inline="always")
def _dequant_tile(qw, s, gs, bits, k0, k1, j0, j1, tile):
    """tile[:k1-k0, :j1-j0] = deq(Q)[k0:k1, j0:j1]."""
    for k in range(k0, k1):
        sr, tr = s[k // gs, j0:j1], tile[k - k0]
        if bits == 8:
            qr = qw[k, j0:j1]
            for j in range(j1 - j0):
                tr[j] = qr[j] * sr[j]
        else:
            br, sh = qw[k >> 1, j0:j1], (k % 2) * 4
            for j in range(j1 - j0):
                tr[j] = np.int8(((br[j] >> sh) & 15) - 8) * sr[j]


@njit(inline="always")
def _mm_block(x, qw, s, gs, bits, y, j0, j1, tile, acc):
    """y[:, j0:j1] = x (N, in) @ deq(Q)[:, j0:j1], one dequantised tile of rows at a time."""
    N, n_in, w = x.shape[0], x.shape[1], j1 - j0
    for n in range(N):
        for j in range(w):
            acc[n, j] = 0
    for k0 in range(0, n_in, _KB):
        k1 = min(n_in, k0 + _KB)
        _dequant_tile(qw, s, gs, bits, k0, k1, j0, j1, tile)
        for n in range(N):
            xr, ar = x[n], acc[n]
            k = k0
            while k + 4 <= k1:                                   # four tile rows per pass
                x0, x1, x2, x3 = xr[k], xr[k + 1], xr[k + 2], xr[k + 3]
                t0, t1, t2, t3 = (tile[k - k0], tile[k - k0 + 1], tile[k - k0 + 2],
                                  tile[k - k0 + 3])
                for j in range(w):
                    ar[j] += (x0 * t0[j] + x1 * t1[j]) + (x2 * t2[j] + x3 * t3[j])
                k += 4
            for kk in range(k, k1):
                xv, tr = xr[kk], tile[kk - k0]
                for j in range(w):
                    ar[j] += xv * tr[j]
    for n in range(N):
        for j in range(w):
            y[n, j0 + j] = acc[n, j]


@njit
def _mm_serial(x, qw, s, gs, bits, y):
    tile, acc = np.empty((_KB, _JB), x.dtype), np.empty((x.shape[0], _JB), x.dtype)
    n_out = y.shape[1]
    for j0 in range(0, n_out, _JB):
        _mm_block(x, qw, s, gs, bits, y, j0, min(n_out, j0 + _JB), tile, acc)


@njit(parallel=True)
def _mm_par(x, qw, s, gs, bits, y, nrow_chunks):
    # tasks: column blocks x row chunks (an evaluation batch has many rows, few blocks)
    n_out, N = y.shape[1], x.shape[0]
    nb = (n_out + _JB - 1) // _JB
    for t in prange(nb * nrow_chunks):
        c, rc = t % nb, t // nb
        r0, r1 = chunk(rc, nrow_chunks, N)
        if r1 <= r0:
            continue
        tile, acc = np.empty((_KB, _JB), x.dtype), np.empty((r1 - r0, _JB), x.dtype)
        j0 = c * _JB
        _mm_block(x[r0:r1], qw, s, gs, bits, y[r0:r1], j0, min(n_out, j0 + _JB), tile, acc)


# 1, 16, 8, 1/16, 7.5, M = 1.5 * 2^(mantissa bits) (rounds to an integer by adding), 0
_CONSTS = {np.dtype(dt): np.array([1, 16, 8, 1 / 16, 7.5, 1.5 * 2.0 ** m, 0], dt)
           for dt, m in ((np.float32, 23), (np.float64, 52))}


def _group_scales(scales, n_in, n_out, granularity, group):
    """(G, out) scales and the rows per group ``gs`` the loops use."""
    if granularity == "group":
        return np.ascontiguousarray(scales), group
    if granularity == "tensor":
        return np.full((1, n_out), scales[0, 0], scales.dtype), n_in
    return np.ascontiguousarray(scales), n_in


def prepare(qweight, scales, bits, granularity, group, in_features):
    """The Numba loops' operands of a validated quantised weight: ``(qw, s, gs)``, the codes
    as given, the scales as a (G, out) matrix and the rows per group. A layer that calls the
    kernel on every token (``QuantLinear``) makes them once and calls ``forward_prepared``,
    skipping the checks and conversions (~10 us a call, against ~1 us of work for a
    768-wide decoding step's smallest product)."""
    x = np.zeros((0, in_features), scales.dtype)
    bits, granularity, group, n_in, n_out = _check(x, qweight, scales, bits, granularity,
                                                   group, in_features)
    s, gs = _group_scales(scales, n_in, n_out, granularity, group)
    return np.ascontiguousarray(qweight), s, gs


def forward_prepared(x2, qw, s, gs, bits):
    """y (N, out) = x2 (N, in) @ deq(Q), x2 C-contiguous in the scales' dtype, the operands
    from ``prepare``: the Numba version without the checks."""
    N, n_in = x2.shape
    n_out = qw.shape[1]
    y = np.empty((N, n_out), x2.dtype)                                # (N, out)
    if N == 0:
        return y
    par = N * n_in * n_out >= (_PARALLEL_CHEAP if cheap_launches() else _PARALLEL)
    cst = _CONSTS[x2.dtype]
    if N == 1:
        if par and n_out <= _FULL_W:           # a block's matrix: contiguous row ranges
            bounds = _row_bounds(n_in, gs, num_threads())
            if bounds.shape[0] > 2:
                Y = np.empty((bounds.shape[0] - 1, n_out), x2.dtype)
                _mv_rows_par(x2[0], qw, s, gs, bits, y[0], Y, bounds, cst)
                return y
        if par and n_out > _FULL_W:  # the head: column blocks for every thread
            jb = min(_MV_JB, max(_JB, -(-n_out // (2 * num_threads()) // 16) * 16))
            _mv_par(x2[0], qw, s, gs, bits, y[0], jb, cst)
        else:                         # full rows, front to back, up to _FULL_W wide
            _mv_serial(x2[0], qw, s, gs, bits, y[0],
                       n_out if n_out <= _FULL_W else _MV_JB, cst)
    elif par:
        nb = -(-n_out // _JB)
        rc = max(1, min(N, -(-4 * num_threads() // nb)))
        _mm_par(x2, qw, s, gs, bits, y, rc)
    else:
        _mm_serial(x2, qw, s, gs, bits, y)
    return y


def forward_numba(x, qweight, scales, bits, granularity, group, in_features):
    bits, granularity, group, n_in, n_out = _check(x, qweight, scales, bits, granularity,
                                                   group, in_features)
    lead = x.shape[:-1]
    x2 = np.ascontiguousarray(x.reshape(-1, n_in))                    # (N, in)
    s, gs = _group_scales(scales, n_in, n_out, granularity, group)
    y = forward_prepared(x2, np.ascontiguousarray(qweight), s, gs, bits)
    return y.reshape(lead + (n_out,)), None


NUMBA = Kernel(NAME, "numba", forward_numba, None, ("x",))


# ---------------------------------------------------------------- a float head, on Numba
# A quantised model whose tied embedding stays in float still needs logits = x @ E^T, E the
# (V, C) table. Through BLAS that one call fights Numba's thread pool: the "omp" layer's
# workers spin for a while after each quantised product, OpenBLAS's threads spin after the
# head, and on two cores each side then waits for a core. GPT-2-small-shaped int8 decoding
# measured 0.47x fp32 that way (the same model with the table quantised too: 2.0x). On
# Numba, every product of the step shares one pool.

@njit(parallel=True, fastmath={"reassoc", "contract"})
def _rows_dot_par(x, E, y, rb):
    V, C = E.shape
    for c in prange((V + rb - 1) // rb):
        for v in range(c * rb, min(V, (c + 1) * rb)):
            e = E[v]
            for n in range(x.shape[0]):
                xr = x[n]
                a = zero(xr)
                for d in range(C):                   # a plain dot product (reassociated)
                    a += xr[d] * e[d]
                y[n, v] = a


def rows_dot(x, E):
    """x (N, C) @ E^T for a float table E (V, C) in row-major order -> (N, V): one dot
    product per row of E, the rows split over Numba's threads (the float tied head of a
    quantised model; see above). x and E in the same float dtype."""
    floats("rows_dot", x=x, E=E)
    if x.ndim != 2 or E.ndim != 2 or x.shape[1] != E.shape[1]:
        raise ShapeError(f"rows_dot: x must be (N, C) and E (V, C), got {x.shape} and "
                         f"{E.shape}")
    x = np.ascontiguousarray(x)
    y = np.empty((x.shape[0], E.shape[0]), x.dtype)
    if x.shape[0] and E.shape[0]:
        _rows_dot_par(x, np.ascontiguousarray(E), y, 256)
    return y


# ---------------------------------------------------------------- the family

def _inputs(p, dtype, rng):
    n_in, n_out, bits, gran = p["in"], p["out"], p["bits"], p["gran"]
    group = p.get("group", 32)
    w = rng.standard_normal((n_in, n_out)).astype(dtype)
    q, s = quantize(w, bits, gran, group)
    x = rng.standard_normal((p["N"], n_in)).astype(dtype)
    return (x, pack(q, bits), s), {"bits": bits, "granularity": gran, "group": group,
                                   "in_features": n_in}


def _work(p, it):
    N, n_in, n_out, bits = p["N"], p["in"], p["out"], p["bits"]
    wbytes = n_out * (n_in if bits == 8 else -(-n_in // 2))
    G = scales_shape(n_in, n_out, p["gran"], p.get("group", 32))
    sbytes = G[0] * G[1] * it
    # decode is bound by the weight bytes + scales; x and y are small beside them
    return Work((2 * N * n_in * n_out, 0), (wbytes + sbytes + N * (n_in + n_out) * it, 0))


def _label(p):
    g = f"{p['group']}" if p["gran"] == "group" else ""
    return f"N{p['N']} {p['in']}x{p['out']} int{p['bits']} {p['gran']}{g}"


def _size(N, n_in, n_out, bits, gran, group=32, ref=True):
    d = {"N": N, "in": n_in, "out": n_out, "bits": bits, "gran": gran}
    if gran == "group":
        d["group"] = group
    return Size(d, ref)


_GPT2 = ((768, 2304), (768, 768), (768, 3072), (3072, 768))

FAMILY = Family(
    NAME, _inputs, _work, label=_label, unit=GBPS, sweep="in",
    sweep_value=lambda p: p["in"] * p["out"],
    # in = 1; odd in and out around the 16 lanes; a group not dividing the row (33 = 32 + 1,
    # 45 = 2 x 16 + 13); odd in with int4 (a padded nibble); a group edge inside a byte
    # (group 5); several rows (the tiled path); the last one (bad-input cases) has in > 1
    test_sizes=(_size(1, 1, 1, 8, "channel"), _size(1, 1, 3, 4, "group", 32),
                _size(3, 33, 17, 4, "group", 32), _size(1, 45, 31, 4, "group", 16),
                _size(2, 7, 5, 8, "tensor"), _size(1, 70, 40, 8, "group", 32),
                _size(1, 13, 9, 4, "group", 5), _size(4, 64, 130, 4, "channel"),
                _size(5, 100, 67, 4, "tensor"), _size(1, 129, 140, 8, "channel"),
                _size(2, 31, 19, 8, "group", 32)),
    quick_sizes=(_size(1, 768, 2304, 8, "channel"), _size(1, 768, 2304, 4, "group")),
    full_sizes=tuple(_size(1, i, o, b, g) for i, o in _GPT2
                     for b, g in ((8, "channel"), (4, "group"))),
    torch=None, backward=False)


if __name__ == "__main__":
    from ._harness import run
    run(NAME)
