"""Helpers the ops share: weak scalars, broadcasting, axes."""
from __future__ import annotations

import numpy as np

from ... import backend
from ...errors import ShapeError
from ..tensor import Tensor


def lift(x, dtype=None, op="op"):
    """Turn a non-Tensor operand into an array constant.

    Python and NumPy scalars are weak: they take ``dtype`` (the other operand's float dtype),
    so float32 stays float32. Integer and boolean arrays are data, not precision: they take
    ``dtype`` too. Float arrays keep their dtype (NumPy promotion applies).
    """
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray) or backend.is_device(x):
        if x.dtype.kind not in "fiub":
            raise TypeError(f"{op}: expected numbers, got an array of dtype {x.dtype}")
        if x.dtype.kind in "iub" and dtype is not None and dtype.kind == "f":
            return x.astype(dtype)
        return x
    if isinstance(x, (bool, int, float, np.generic)):
        if np.asarray(x).dtype.kind not in "fiub":
            raise TypeError(f"{op}: expected a real number, got {x!r}")
        if dtype is not None and dtype.kind == "f":
            return np.asarray(x, dtype=dtype)
        return np.asarray(x)
    if isinstance(x, (list, tuple)):
        return Tensor(x).data
    raise TypeError(f"{op}: expected a Tensor, an ndarray or a number, "
                    f"got {type(x).__name__}")


def _dtype_of(*xs):
    for x in xs:
        if (isinstance(x, Tensor) or backend.is_array(x)) and x.dtype.kind == "f":
            return x.dtype
    return None


def _binary_operands(a, b, op):
    dt = _dtype_of(a, b)
    return lift(a, dt, op), lift(b, dt, op)


def broadcast_shape(op: str, *shapes) -> tuple:
    """The broadcast shape, or a ShapeError naming the op and the shapes."""
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        raise ShapeError(f"{op}: cannot broadcast shapes "
                         + " and ".join(str(tuple(s)) for s in shapes)) from None


def broadcasting(op: str, ufunc, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ufunc(a, b); if the shapes do not broadcast, a ShapeError naming the op and the shapes.
    The shapes are only examined after NumPy refuses, so the common case costs nothing extra."""
    try:
        return ufunc(a, b)
    except ValueError:
        broadcast_shape(op, a.shape, b.shape)
        raise


def unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum g over the axes that broadcasting added or stretched, so it has ``shape``."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1)
    g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def normalize_axes(op: str, axis, ndim: int) -> tuple:
    """axis (None, int or tuple) as a sorted tuple of non-negative ints."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ShapeError(f"{op}: axis {a} is out of range for a {ndim}-d tensor")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"{op}: repeated axis in {axis}")
    return tuple(sorted(out))
