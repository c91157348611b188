"""Reduced precision: float32 -> bfloat16 and float32 -> float16, written out as bit
manipulation, and two ways of running a model in them.

The three formats are sign / exponent / mantissa (fraction) bit fields::

    float32   1 | 8 (bias 127) | 23        value = (-1)^s * 1.m * 2^(e - 127), e in 1..254
    bfloat16  1 | 8 (bias 127) |  7        the top 16 bits of a float32
    float16   1 | 5 (bias 15)  | 10        value = (-1)^s * 1.m * 2^(e - 15),  e in 1..30

e = 0 is zero or a subnormal (no implicit leading 1: value = 0.m * 2^(1 - bias)); e = all
ones is +-inf (m = 0) or NaN (m != 0; the top mantissa bit set = a quiet NaN).

Because the sign is a separate bit and the exponent sits above the mantissa, the bits of
|x| read as an unsigned integer grow with |x|: the next representable value up is the next
integer. Rounding a float32 to fewer mantissa bits is therefore integer arithmetic on
``a = bits & 0x7FFFFFFF``: keep the high bits (``a >> s``, the value truncated toward zero)
and decide from the ``s`` discarded bits whether to add 1. A carry out of the mantissa
bumps the exponent, which is exactly the right answer (1.111..1 * 2^k rounds up to 1.0 *
2^(k+1)), and a carry out of the largest exponent gives the all-ones exponent with a zero
mantissa: infinity. Three ways to decide (``rounding=``):

    "rne"         round to nearest, ties to even: add 1 when the discarded bits are more
                  than half an ulp, or exactly half and the kept lsb is odd. As one addition:
                  (a + (2^(s-1) - 1) + lsb) >> s  (for bf16, s = 16: a + 0x7FFF + lsb).
                  An exact tie with lsb 0 stays below the carry; with lsb 1 it carries.
    "truncate"    toward zero: a >> s. Never rounds a finite value up to infinity (a float16
                  overflow truncates to the largest finite value, 65504, as IEEE's
                  round-toward-zero does).
    "stochastic"  add 1 with probability (discarded bits) / 2^s, the fraction of the way to
                  the next value up: E[result] = x, unbiased (values past the largest finite
                  one step to inf with the fraction of the gap to 2^(emax+1)). Needs
                  ``rng`` (a ``np.random.Generator`` or an int seed).

float16 also re-biases the exponent (127 -> 15): for |x| >= 2^-14 (float16's smallest
normal) the float32 bits minus (127 - 15) << 23 are the float16 layout with 13 extra
mantissa bits, rounded off as above. |x| >= 2^16 is past the top exponent: inf (or 65504
under truncation). Below 2^-14 a float16 is a subnormal, m * 2^-24 with m in 0..1023
(gradual underflow): with the implicit 1 put back, the 24-bit significand M of a float32 of
exponent e is worth M * 2^(e - 150), so m = M * 2^(e - 126): M shifted right by 126 - e and
rounded with the same rule (the shift can be > 24: everything is discarded; RNE then gives
0, as |x| < 2^-25 is under half of the smallest subnormal). A carry from m = 1023 gives 1024
= 0x400, the smallest normal: again the right bits.

Special values: +-0 keep their sign; +-inf stay +-inf in every mode; a NaN stays a NaN with
its sign, made quiet. bfloat16 returns the canonical quiet NaN (sign | 0x7FC0, the payload
dropped), as ``ml_dtypes`` and PyTorch do; float16 keeps the top 10 payload bits and sets the
quiet bit (0x0200), as x86's F16C conversion does (NumPy's software cast keeps a signalling
NaN signalling; it agrees on every quiet NaN).

Back to float32 is exact (every bf16/fp16 value is a float32): bf16 bits << 16; fp16 by
re-biasing the exponent, or m * 2^-24 for a subnormal.

Two modes for a model (anything with ``parameters()`` returning objects with ``.data``):

- ``store_weights(model, fmt)`` rounds every parameter in place to the values a bf16/fp16
  checkpoint holds and returns that checkpoint's size in bytes (2 per weight).
- ``with everywhere(fmt, rounding):`` rounds the output of every autograd op (every
  ``Function.apply``) to the format while it is on. Each op still computes in float32, so a
  matrix product accumulates in float32 and only its result is rounded (what bf16 tensor
  cores do). Forward outputs only: gradients are not rounded. The hook lives in
  ``tinyllm.autograd.tensor.Function.apply``, which reads ``_ACTIVE["round"]`` (None when
  off: one dict lookup per op).

float64 arrays are first cast to float32 (NumPy's RNE) and then rounded: a double rounding,
which for RNE can differ from a direct float64 -> bf16 rounding on rare near-ties.
"""
from __future__ import annotations

import contextlib

import numpy as np

FORMATS = ("bf16", "fp16")
ROUNDINGS = ("rne", "truncate", "stochastic")
_ALIASES = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16",
            "half": "fp16"}

# the state read by Function.apply on every op output (see everywhere())
_ACTIVE = {"round": None}


def _fmt(fmt) -> str:
    key = _ALIASES.get(str(fmt).lower()) if isinstance(fmt, str) else None
    if key is None:
        raise ValueError(f"precision: format must be one of {FORMATS}, got {fmt!r}")
    return key


def _check_rounding(rounding, rng):
    if rounding not in ROUNDINGS:
        raise ValueError(f"precision: rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if rounding != "stochastic":
        return None
    if rng is None:
        raise ValueError("precision: rounding='stochastic' needs rng= (a np.random.Generator "
                         "or an int seed) so that the draws are reproducible")
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"precision: rng must be a np.random.Generator or an int seed, got "
                        f"{type(rng).__name__}")
    return rng


def _f32_bits(x, what: str) -> np.ndarray:
    """x as float32 bits (uint32), any shape. Real numbers only."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{what}: x must be real numbers, got dtype {arr.dtype}")
    a32 = np.asarray(arr, dtype=np.float32)
    if not a32.flags.c_contiguous:
        a32 = a32.copy()             # view() needs contiguous memory; 0-d arrays stay 0-d
    return a32.view(np.uint32)


def _shift_round(v: np.ndarray, s, rounding: str, rng) -> np.ndarray:
    """v >> s rounded by ``rounding`` (v: uint64 magnitudes, s: int or int array >= 1).

    Shifts are capped at 40 bits (v < 2^32 here, so a bigger shift discards everything
    anyway; RNE and truncation then give 0); the stochastic probability uses the true s."""
    s = np.asarray(s, np.int64)
    sc = np.minimum(s, 40).astype(np.uint64)
    one = np.uint64(1)
    kept = v >> sc                                                  # truncated toward zero
    if rounding == "truncate":
        return kept
    if rounding == "rne":
        half_minus_1 = (one << (sc - one)) - one                    # 0x7FFF for s = 16
        return (v + half_minus_1 + (kept & one)) >> sc
    rest = v & ((one << sc) - one)                                  # the discarded bits
    frac = np.ldexp(rest.astype(np.float64), -s)                    # exact: rest < 2^40
    return kept + (rng.random(np.shape(v)) < frac).astype(np.uint64)


def f32_to_bf16_bits(x, rounding: str = "rne", rng=None) -> np.ndarray:
    """bfloat16 bit patterns (uint16, x's shape) of float32 ``x`` rounded by ``rounding``."""
    rng = _check_rounding(rounding, rng)
    u = _f32_bits(x, "f32_to_bf16_bits")
    sign = u & np.uint32(0x80000000)
    a = (u & np.uint32(0x7FFFFFFF)).astype(np.uint64)               # |x| as an integer
    # Same exponent as float32: only the low 16 mantissa bits go. Infinity (0x7F800000)
    # has zero low bits and no rounding moves it; the largest finite values carry into it.
    if rounding == "rne":
        lsb = (a >> np.uint64(16)) & np.uint64(1)
        mag = (a + np.uint64(0x7FFF) + lsb) >> np.uint64(16)        # the bias trick, s = 16
    else:
        mag = _shift_round(a, 16, rounding, rng)
    out = (sign >> np.uint32(16)) | mag.astype(np.uint32)
    nan = a > 0x7F800000
    out = np.where(nan, (sign >> np.uint32(16)) | np.uint32(0x7FC0), out)  # canonical quiet
    return out.astype(np.uint16)


def bf16_bits_to_f32(b) -> np.ndarray:
    """float32 values of bfloat16 bit patterns ``b`` (exact: the bits become the high half)."""
    b = np.asarray(b)
    if b.dtype != np.uint16:
        raise TypeError(f"bf16_bits_to_f32: bits must be uint16, got dtype {b.dtype}")
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)


def f32_to_fp16_bits(x, rounding: str = "rne", rng=None) -> np.ndarray:
    """IEEE float16 bit patterns (uint16, x's shape) of float32 ``x`` rounded by ``rounding``."""
    rng = _check_rounding(rounding, rng)
    u = _f32_bits(x, "f32_to_fp16_bits")
    sign = ((u >> np.uint32(16)) & np.uint32(0x8000)).astype(np.uint16)
    a = (u & np.uint32(0x7FFFFFFF)).astype(np.uint64)
    e = (a >> np.uint64(23)).astype(np.int64)                       # float32 biased exponent
    # normal float16 (|x| >= 2^-14, e >= 113): re-bias the exponent by 127 - 15 = 112, then
    # drop 13 mantissa bits; a carry may reach 0x7C00 (inf) from 65520 up
    normal = a >= 0x38800000
    rebased = np.where(normal, np.maximum(a, np.uint64(0x38800000)) - np.uint64(112 << 23),
                       np.uint64(0))
    mag_n = _shift_round(rebased, 13, rounding, rng)
    # subnormal float16 (|x| < 2^-14): m = M >> (126 - e), M the significand with its
    # implicit 1 (none for e = 0, a float32 subnormal, whose exponent acts as 1)
    M = (a & np.uint64(0x7FFFFF)) | np.where(e > 0, np.uint64(1 << 23), np.uint64(0))
    shift = 126 - np.maximum(e, 1)
    mag_s = _shift_round(np.where(normal, np.uint64(0), M), np.where(normal, 14, shift),
                         rounding, rng)
    mag = np.where(normal, mag_n, mag_s)
    # past the top exponent (|x| >= 2^16, finite): inf, or the largest finite when truncating
    too_big = (a >= 0x47800000) & (a < 0x7F800000)
    mag = np.where(too_big, np.uint64(0x7BFF if rounding == "truncate" else 0x7C00), mag)
    mag = np.where(a == 0x7F800000, np.uint64(0x7C00), mag)         # +-inf
    # NaN: keep the top 10 payload bits, set the quiet bit
    nan_bits = np.uint64(0x7E00) | ((a >> np.uint64(13)) & np.uint64(0x3FF))
    mag = np.where(a > 0x7F800000, nan_bits, mag)
    return sign | mag.astype(np.uint16)


def fp16_bits_to_f32(b) -> np.ndarray:
    """float32 values of IEEE float16 bit patterns ``b`` (exact)."""
    b = np.asarray(b)
    if b.dtype != np.uint16:
        raise TypeError(f"fp16_bits_to_f32: bits must be uint16, got dtype {b.dtype}")
    b = b.astype(np.uint32)
    sign = (b & np.uint32(0x8000)) << np.uint32(16)
    e = (b >> np.uint32(10)) & np.uint32(0x1F)
    m = b & np.uint32(0x3FF)
    normal = ((e + np.uint32(112)) << np.uint32(23)) | (m << np.uint32(13))    # re-bias
    special = np.uint32(0x7F800000) | (m << np.uint32(13))          # inf, NaN with payload
    sub = np.ldexp(m.astype(np.float32), -24).view(np.uint32)       # m * 2^-24, exact
    mag = np.where(e == 0, sub, np.where(e == 31, special, normal))
    return (sign | mag).astype(np.uint32).view(np.float32)


_TO_BITS = {"bf16": (f32_to_bf16_bits, bf16_bits_to_f32),
            "fp16": (f32_to_fp16_bits, fp16_bits_to_f32)}


def round_to(x, fmt: str, rounding: str = "rne", rng=None) -> np.ndarray:
    """float32 ``x`` rounded to ``fmt`` ("bf16" or "fp16") and back: the float32 value
    a bf16/fp16 tensor would hold."""
    to_bits, from_bits = _TO_BITS[_fmt(fmt)]
    return from_bits(to_bits(x, rounding, rng))


def store_weights(model, fmt: str, rounding: str = "rne", rng=None) -> int:
    """Round every parameter of ``model`` to ``fmt`` in place (the values a bf16/fp16
    checkpoint of it holds; arrays keep their dtype) and return that checkpoint's size in
    bytes: 2 per weight, each shared (tied) parameter once. Copy the arrays first to undo."""
    fmt = _fmt(fmt)
    rng = _check_rounding(rounding, rng)
    params = model.parameters()
    n = 0
    for p in params:
        if p.data.dtype.kind != "f":
            raise TypeError(f"store_weights: parameter of dtype {p.data.dtype} is not float")
        p.data[...] = round_to(p.data, fmt, rounding, rng).astype(p.data.dtype, copy=False)
        n += p.data.size
    return 2 * n


@contextlib.contextmanager
def everywhere(fmt: str, rounding: str = "rne", rng=None):
    """Round the output of every autograd op to ``fmt`` while the block runs (forward
    outputs only; each op computes in float32, so matrix products accumulate in float32).
    Integer outputs (indices) pass through; float64 outputs are rounded and stay float64.
    Stochastic rounding draws from ``rng`` (a Generator or an int seed). Not nestable with
    a different setting: the inner block replaces the outer one until it ends."""
    fmt = _fmt(fmt)
    rng = _check_rounding(rounding, rng)
    to_bits, from_bits = _TO_BITS[fmt]

    def rnd(arr: np.ndarray) -> np.ndarray:
        if arr.dtype.kind != "f":
            return arr
        out = from_bits(to_bits(arr, rounding, rng))
        return out if out.dtype == arr.dtype else out.astype(arr.dtype)

    prev = _ACTIVE["round"]
    _ACTIVE["round"] = rnd
    try:
        yield
    finally:
        _ACTIVE["round"] = prev


__all__ = ["FORMATS", "ROUNDINGS", "f32_to_bf16_bits", "bf16_bits_to_f32", "f32_to_fp16_bits",
           "fp16_bits_to_f32", "round_to", "store_weights", "everywhere"]
