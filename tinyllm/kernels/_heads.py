"""The fused q, k, v projection's output cut into heads and back, on Numba's threads.

    split:  qkv (B T, 3 A) -> out (3, B, H, T, hs),  out[i, b, h, t] = qkv[b T + t, i A + h hs :]
    merge:  dq, dk, dv (B, H, T, hs) -> g (B T, 3 A), the inverse (None: that block zero)

A = H hs. Pure data movement: each (b, t) row of qkv is 3 H runs of hs contiguous numbers.
NumPy's strided copy of the transposed view moved ~6 GB/s here (1 ms for config A's 3 MB);
rows in parallel, each run a contiguous slice, run near copy bandwidth.
"""
from __future__ import annotations

import numpy as np

from ._nb import njit, prange


@njit(parallel=True)
def _split(qkv, out, B, T, H, hs):
    A = H * hs
    for r in prange(B * T):
        b = r // T
        t = r - b * T
        row = qkv[r]
        for i in range(3):
            for h in range(H):
                c = i * A + h * hs
                out[i, b, h, t, :] = row[c:c + hs]


@njit(parallel=True)
def _merge(dq, dk, dv, g, has, B, T, H, hs):
    A = H * hs
    for r in prange(B * T):
        b = r // T
        t = r - b * T
        row = g[r]
        for h in range(H):
            c = h * hs
            if has[0]:
                row[c:c + hs] = dq[b, h, t, :]
            else:
                row[c:c + hs] = 0
            if has[1]:
                row[A + c:A + c + hs] = dk[b, h, t, :]
            else:
                row[A + c:A + c + hs] = 0
            if has[2]:
                row[2 * A + c:2 * A + c + hs] = dv[b, h, t, :]
            else:
                row[2 * A + c:2 * A + c + hs] = 0


def split_heads(qkv: np.ndarray, B: int, T: int, H: int, hs: int) -> np.ndarray:
    """qkv (B T, 3 H hs) -> (3, B, H, T, hs), a new contiguous array."""
    out = np.empty((3, B, H, T, hs), qkv.dtype)
    if qkv.size:
        _split(np.ascontiguousarray(qkv), out, B, T, H, hs)
    return out


def merge_heads(dq, dk, dv, B: int, T: int, H: int, hs: int, dtype) -> np.ndarray:
    """dq, dk, dv (B, H, T, hs) or None -> (B T, 3 H hs), the gradient of ``split_heads``."""
    g = np.empty((B * T, 3 * H * hs), dtype)
    if g.size:
        fill = np.zeros((1, 1, 1, 1), dtype)
        args = [np.ascontiguousarray(d, dtype) if d is not None else fill
                for d in (dq, dk, dv)]
        has = np.array([d is not None for d in (dq, dk, dv)])
        _merge(*args, g, has, B, T, H, hs)
    return g
