"""Numba plumbing shared by the kernel families.

Nothing here compiles at import: ``njit`` only wraps functions, which compile on their first
call (and then come from the on-disk cache, ``cache=True``; CI points ``NUMBA_CACHE_DIR`` at a
writable folder).

Helpers for the kernels (each written once here, used by the families):

- ``fexp(x)``: e**x. For float32 it is a vectorisable polynomial exp (below), within 1 ulp of
  the true value over [-87, 88]; ``math.exp`` is a scalar libm call that stops LLVM from
  vectorising a loop. For float64 it is ``math.exp``, so float64 results stay exact enough to
  check the reference to ~1e-12.
- ``ftanh(x)``: tanh built on ``fexp`` the same way.
- ``neg_inf(x)`` / ``zero(x)`` / ``one(x)``: constants typed like ``x``. A bare ``-np.inf`` or
  ``0.5`` is a float64 literal, and one of them in a float32 loop silently makes it float64.
- ``lane_max(row, acc)``, ``lane_sum(row, acc)``, ``lane_dot(a, b, acc)``: a row's max, sum
  and dot product in 16 independent lanes (``acc`` is scratch of length ``LANES``), which
  vectorise without fastmath and give the same bits on every call.
- ``row_sum(row)`` and ``dot(a, b)``: a plain sum and a dot product compiled with
  reassociation allowed (DESIGN 6: at most reassoc on plain sums), so LLVM vectorises them
  with several accumulators; no exp, max or masking inside.
- The chunked parallel-row loop: ``chunks(rows)`` (Python) is how many chunks a call splits
  its rows into (a few per thread), and inside ``for c in prange(nchunks)`` the rows of
  chunk ``c`` are ``range(*chunk(c, nchunks, rows))``.

Numba's on-disk cache tracks each kernel's own file only: after editing this module, delete
the cache folder (``NUMBA_CACHE_DIR``) so the families recompile against it. The threading
layer is a process-wide setting and is chosen by ``tinyllm.runtime``, not here.

If Numba does not import, ``HAVE_NUMBA`` is False, ``njit`` returns functions that raise on
call, and the registry falls back to the NumPy references.
"""
from __future__ import annotations

import math

import numpy as np

try:
    import numba
    from numba import prange, types
    from numba.extending import intrinsic, overload
    HAVE_NUMBA = True
except ImportError:                                   # pragma: no cover - numba is a dependency
    numba = None
    HAVE_NUMBA = False
    prange = range

def njit(*args, **kwargs):
    """``numba.njit`` with ``cache=True`` and ``error_model="numpy"`` by default
    (``parallel``/``fastmath`` passed through). The NumPy error model makes x / 0 give inf or
    NaN as NumPy does, instead of a ZeroDivisionError check that keeps LLVM from vectorising
    any loop that divides. Without Numba the decorated function raises when called."""
    kwargs.setdefault("cache", True)
    kwargs.setdefault("error_model", "numpy")
    if HAVE_NUMBA:
        return numba.njit(*args, **kwargs)

    def wrap(fn):
        def missing(*a, **k):
            raise RuntimeError(f"{fn.__name__}: Numba is not installed")
        return missing
    if args and callable(args[0]):
        return wrap(args[0])
    return wrap


def num_threads() -> int:
    """Threads Numba's parallel loops use now."""
    return numba.get_num_threads() if HAVE_NUMBA else 1


def fexp(x):
    """e**x (see the module docstring); the Python body serves outside Numba."""
    return np.exp(x)


def ftanh(x):
    return np.tanh(x)


def neg_inf(x):
    return np.asarray(x).dtype.type(-np.inf)


def zero(x):
    return np.asarray(x).dtype.type(0)


def one(x):
    return np.asarray(x).dtype.type(1)


if HAVE_NUMBA:
    from llvmlite import ir

    @intrinsic
    def _bits_as_f32(typingctx, i):
        """Reinterpret the low 32 bits of an integer as a float32 (numba has no scalar
        ``.view``)."""
        if not isinstance(i, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            v = args[0]
            if v.type.width != 32:
                v = builder.trunc(v, ir.IntType(32))
            return builder.bitcast(v, ir.FloatType())
        return types.float32(i), codegen

    # Cody-Waite reduction x = n*ln2 + r with ln2 split in two (C1 exact in few bits), then
    # e**r by the Cephes expf polynomial on |r| <= ln2/2, then 2**n from the exponent bits.
    _HI = np.float32(88.3762626647949)
    _LO = np.float32(-88.3762626647949)
    _LOG2E = np.float32(1.44269504088896341)
    _C1 = np.float32(0.693359375)
    _C2 = np.float32(-2.12194440e-4)
    _P0 = np.float32(1.9875691500e-4)
    _P1 = np.float32(1.3981999507e-3)
    _P2 = np.float32(8.3334519073e-3)
    _P3 = np.float32(4.1665795894e-2)
    _P4 = np.float32(1.6666665459e-1)
    _P5 = np.float32(5.0000001201e-1)
    _HALF = np.float32(0.5)
    _BIAS = np.float32(127.0)
    _MANT = np.float32(8388608.0)
    _ONE = np.float32(1.0)
    _ZERO = np.float32(0.0)
    _INF = np.float32(np.inf)

    @numba.njit(cache=True)
    def _exp32(x):
        # clamp first: converting inf or NaN to int is undefined in LLVM
        xc = x if x < _HI else _HI
        xc = xc if xc > _LO else _LO
        xc = xc if x == x else _ZERO
        n = np.floor(xc * _LOG2E + _HALF)
        r = xc - n * _C1
        r = r - n * _C2
        p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
        y = p * (r * r) + r + _ONE
        # 2**n from the exponent field: (n + 127) * 2**23 is exact in float32 and below 2**31,
        # so one float -> int32 conversion gives the bits (all-int32 math, which vectorises;
        # Numba would widen an int32 shift to int64, which AVX2 converts element by element)
        y = y * _bits_as_f32(np.int32((n + _BIAS) * _MANT))
        y = _INF if x > _HI else y
        y = _ZERO if x < _LO else y
        return x if x != x else y

    @overload(fexp)
    def _fexp_ov(x):
        if x == types.float32:
            return lambda x: _exp32(x)
        return lambda x: math.exp(x)

    @overload(ftanh)
    def _ftanh_ov(x):
        if x == types.float32:
            def impl(x):
                # tanh(u) = sign(u) (1 - e) / (1 + e), e = exp(-2|u|), never overflows
                a = x if x >= _ZERO else -x
                e = _exp32(np.float32(-2.0) * a)
                t = (_ONE - e) / (_ONE + e)
                return t if x >= _ZERO else -t
            return impl
        return lambda x: math.tanh(x)

    def _typed_constant(fn, value):
        """Overload ``fn(x)`` to return ``value`` in x's float type (x a scalar or array)."""
        v32, v64 = np.float32(value), float(value)

        @overload(fn)
        def _ov(x):
            if getattr(x, "dtype", x) == types.float32:
                return lambda x: v32
            return lambda x: v64

    _typed_constant(neg_inf, -np.inf)
    _typed_constant(zero, 0.0)
    _typed_constant(one, 1.0)

LANES = 16


@njit(inline="always")
def _lanes_start(acc, value, n):
    """Fill the LANES accumulators with ``value``; return where the whole groups of LANES
    elements of a row of ``n`` end (the rest is a scalar tail)."""
    for k in range(LANES):
        acc[k] = value
    return n - n % LANES


@njit
def lane_max(row, acc):
    """max of a 1-d row, or -inf if empty. Float max does not vectorise as one running value
    (each step depends on the last) and fastmath would drop NaN/Inf care, so 16 independent
    lane maxima (``acc``, scratch of length LANES) are kept and reduced at the end."""
    n = row.shape[0]
    nv = _lanes_start(acc, neg_inf(row), n)
    for j in range(0, nv, LANES):
        for k in range(LANES):
            v = row[j + k]
            acc[k] = v if v > acc[k] else acc[k]
    m = neg_inf(row)
    for k in range(LANES):
        m = acc[k] if acc[k] > m else m
    for j in range(nv, n):
        m = row[j] if row[j] > m else m
    return m


@njit
def lane_sum(row, acc):
    """sum of a 1-d row in 16 lanes (``acc`` is scratch of length LANES); the same order on
    every call, so results are bitwise reproducible."""
    n = row.shape[0]
    nv = _lanes_start(acc, zero(row), n)
    for j in range(0, nv, LANES):
        for k in range(LANES):
            acc[k] += row[j + k]
    s = zero(row)
    for k in range(LANES):
        s += acc[k]
    for j in range(nv, n):
        s += row[j]
    return s


@njit
def lane_dot(a, b, acc):
    """sum_j a_j b_j of two 1-d rows in 16 lanes, like ``lane_sum``."""
    n = a.shape[0]
    nv = _lanes_start(acc, zero(a), n)
    for j in range(0, nv, LANES):
        for k in range(LANES):
            acc[k] += a[j + k] * b[j + k]
    s = zero(a)
    for k in range(LANES):
        s += acc[k]
    for j in range(nv, n):
        s += a[j] * b[j]
    return s


@njit(fastmath={"reassoc"})
def row_sum(row):
    """A plain sum of a 1-d row, with reassociation allowed so LLVM vectorises it."""
    s = zero(row)
    for j in range(row.shape[0]):
        s += row[j]
    return s


@njit(fastmath={"reassoc", "contract"})
def dot(a, b):
    """sum_d a_d b_d of two 1-d rows: a plain sum, so reassociation is allowed and it
    vectorises (~2x faster than a BLAS gemv on rows of 32, ~4x faster than 16 lanes on rows
    of 128, measured)."""
    s = zero(a)
    for d in range(a.shape[0]):
        s += a[d] * b[d]
    return s


# Below this many elements a row loop runs on the calling thread: launching a parallel loop
# costs tens of microseconds (about 55 us per call measured for one 128-wide row on the
# workqueue layer), more than a decoding step's few rows take.
SERIAL_WORK = 1 << 15


def chunks(rows: int) -> int:
    """How many chunks a parallel row loop splits ``rows`` rows into: four per thread (so
    uneven rows balance), at most one per row, at least one."""
    return max(1, min(rows, 4 * num_threads()))


@njit(inline="always")
def chunk(c, nchunks, rows):
    """(first, end) of chunk ``c`` of ``nchunks`` over ``rows`` rows:
    per = ceil(rows / nchunks), rows c*per .. min(rows, (c+1)*per) - 1."""
    per = (rows + nchunks - 1) // nchunks
    return c * per, min(rows, (c + 1) * per)


__all__ = ["HAVE_NUMBA", "LANES", "lane_max", "lane_sum", "lane_dot", "row_sum", "dot",
           "chunks", "chunk", "SERIAL_WORK", "njit", "prange", "num_threads", "fexp", "ftanh",
           "neg_inf", "zero", "one"]
