"""Input checks shared by the kernels: every message names the kernel and what is wrong."""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def floats(kernel: str, **arrays) -> np.dtype:
    """Each named array must be a float32 or float64 ndarray, all of one dtype (``None``
    entries are skipped). Returns the dtype."""
    dtype = None
    first = None
    for name, a in arrays.items():
        if a is None:
            continue
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{kernel}: {name} must be a NumPy array, got {type(a).__name__}")
        if a.dtype not in FLOATS:
            raise TypeError(f"{kernel}: {name} must be float32 or float64, got {a.dtype}")
        if dtype is None:
            dtype, first = a.dtype, name
        elif a.dtype != dtype:
            raise TypeError(f"{kernel}: {name} is {a.dtype} but {first} is {dtype}; "
                            f"all inputs must share one dtype")
    return dtype


def ndim(kernel: str, name: str, a: np.ndarray, n: int, layout: str) -> None:
    if a.ndim != n:
        raise ShapeError(f"{kernel}: {name} must be {layout}, got shape {a.shape}")


def shape(kernel: str, name: str, a: np.ndarray, expected: tuple, layout: str) -> None:
    if tuple(a.shape) != tuple(expected):
        raise ShapeError(f"{kernel}: {name} must be {layout} = {tuple(expected)}, "
                         f"got {tuple(a.shape)}")


def contiguous(*arrays):
    """C-contiguous versions (no copy when already contiguous); ``None`` passes through."""
    out = tuple(None if a is None else np.ascontiguousarray(a) for a in arrays)
    return out if len(out) != 1 else out[0]


def dout_like(kernel: str, dout, ref: np.ndarray, name: str = "dout") -> np.ndarray:
    """The upstream gradient must match the forward output's shape; returned contiguous and
    in the output's dtype."""
    if not isinstance(dout, np.ndarray):
        dout = np.asarray(dout)
    if dout.shape != ref.shape:
        raise ShapeError(f"{kernel}: {name} shape {dout.shape} does not match the forward "
                         f"output {ref.shape}")
    return np.asarray(dout, dtype=ref.dtype, order="C")      # keeps 0-d arrays 0-d


def out_buffer(kernel: str, out, shape: tuple, dtype) -> np.ndarray:
    """A caller's preallocated output, checked; or a fresh one."""
    if out is None:
        return np.empty(shape, dtype)
    if (not isinstance(out, np.ndarray) or out.shape != tuple(shape) or out.dtype != dtype
            or not out.flags.c_contiguous):
        got = (f"{out.shape} {out.dtype}" if isinstance(out, np.ndarray)
               else type(out).__name__)
        raise ShapeError(f"{kernel}: out must be a C-contiguous {dtype} array of shape "
                         f"{tuple(shape)}, got {got}")
    return out
