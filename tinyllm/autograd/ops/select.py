"""Selection and masking: where, masked_fill, embedding gather, dropout."""
from __future__ import annotations

import numpy as np

from ... import backend
from ...errors import ShapeError
from ..tensor import Function, Tensor
from ._util import _binary_operands, broadcast_shape, unbroadcast


class Where(Function):
    @staticmethod
    def forward(ctx, cond, a, b):
        if cond.dtype != bool:
            raise TypeError(f"where: the condition must be boolean, got {cond.dtype}")
        broadcast_shape("where", np.shape(cond), a.shape, b.shape)
        ctx.save_for_backward(cond)
        ctx.shapes = (a.shape, b.shape)
        return np.where(cond, a, b)

    @staticmethod
    def backward(ctx, dout):
        (cond,) = ctx.saved
        sa, sb = ctx.shapes
        zero = dout.dtype.type(0)                   # a scalar: no host array on a device
        da = unbroadcast(np.where(cond, dout, zero), sa) if ctx.needs_input_grad[1] else None
        db = unbroadcast(np.where(cond, zero, dout), sb) if ctx.needs_input_grad[2] else None
        return None, da, db


def where(cond, a, b):
    cond = cond.data if isinstance(cond, Tensor) else _array(cond)
    a, b = _binary_operands(a, b, "where")
    return Where.apply(cond, a, b)


class MaskedFill(Function):
    @staticmethod
    def forward(ctx, x, mask, value):
        mask = _array(mask)
        if mask.dtype != bool:
            raise TypeError(f"masked_fill: the mask must be boolean, got {mask.dtype}")
        if broadcast_shape("masked_fill", x.shape, mask.shape) != x.shape:
            raise ShapeError(f"masked_fill: mask shape {mask.shape} does not broadcast to "
                             f"the input shape {x.shape}")
        ctx.save_for_backward(mask)
        return np.where(mask, x.dtype.type(value), x)

    @staticmethod
    def backward(ctx, dout):
        (mask,) = ctx.saved
        return np.where(mask, dout.dtype.type(0), dout), None, None


def masked_fill(x, mask, value):
    """x with the positions where mask is True set to value (they get no gradient).

    ``value`` is one Python or NumPy number (``-np.inf`` for attention masks); a Tensor or an
    array is refused, since the filled positions would take no gradient from it."""
    mask = mask.data if isinstance(mask, Tensor) else mask
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "fiub":
        value = value.item()                 # a 0-d array is a NumPy number too
    if not isinstance(value, (int, float, np.number, np.bool_)):
        what = ("a Tensor" if isinstance(value, Tensor) else
                f"an array of shape {value.shape}" if isinstance(value, np.ndarray) else
                f"{type(value).__name__} {value!r}")
        raise TypeError(f"masked_fill: value must be a Python or NumPy number (e.g. -inf or "
                        f"0.0), got {what}; to fill from a tensor, use where(mask, other, x)")
    return MaskedFill.apply(x, mask, float(value))


class Embedding(Function):
    """weight[idx]: rows of a (V, C) table gathered by an integer array of any shape."""

    @staticmethod
    def forward(ctx, idx, weight):
        idx = _array(idx)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"embedding: indices must be integers, got {idx.dtype}")
        if weight.ndim != 2:
            raise ShapeError(f"embedding: weight must be 2-d (V, C), got {weight.shape}")
        V = weight.shape[0]
        if idx.size and (idx.min() < 0 or idx.max() >= V):
            bad = idx.min() if idx.min() < 0 else idx.max()
            raise IndexError(f"embedding: index {bad} is out of range for {V} rows")
        ctx.save_for_backward(idx)
        ctx.shape = weight.shape
        return weight[idx]                                  # idx.shape + (C,)

    @staticmethod
    def backward(ctx, dout):
        (idx,) = ctx.saved
        if backend.is_device(dout):
            rows = dout.reshape(-1, ctx.shape[1])                   # (N, C)
            return None, _segment_sum(idx.reshape(-1), rows, ctx.shape[0])
        dW = np.zeros(ctx.shape, dtype=dout.dtype)
        flat = idx.reshape(-1)
        if flat.size:
            # dW[v] = sum of the dout rows whose index is v. A stable sort groups equal
            # indices (keeping their order, so the sums run in the same order np.add.at's
            # would) and reduceat adds each group: ~10x faster than np.add.at here.
            order = np.argsort(flat, kind="stable")
            sorted_idx = flat[order]
            starts = np.flatnonzero(np.r_[True, sorted_idx[1:] != sorted_idx[:-1]])
            rows = dout.reshape(-1, ctx.shape[1])[order]
            dW[sorted_idx[starts]] = np.add.reduceat(rows, starts, axis=0)
        return None, dW


def _array(a):
    """An array argument as it is (host or device); lists and numbers as NumPy arrays."""
    return a if backend.is_array(a) else np.asarray(a)


def _segment_sum(flat, rows, n):
    """out[v] = sum of rows[j] over the j with flat[j] == v, v in [0, n): (n, C), for device
    arrays and without atomics. A stable sort groups equal indices; a float64 prefix sum
    over the sorted rows (a scan: fixed order) is read at each group's last row, and
    differences of those give the group sums, rounded once to rows' dtype.
    flat int (N,), rows (N, C)."""
    xp = backend.xp(rows)
    out = xp.zeros((n, rows.shape[1]), rows.dtype)                  # (n, C)
    N = flat.shape[0]
    if N == 0:
        return out
    # CuPy's argsort is always stable and takes no kind; NumPy's must be asked
    order = xp.argsort(flat) if xp.__name__ == "cupy" else xp.argsort(flat, kind="stable")
    s = flat[order]                                                 # sorted indices (N,)
    csum = xp.cumsum(rows[order].astype(xp.float64), axis=0)        # (N, C) float64
    ends = xp.flatnonzero(s[1:] != s[:-1])                          # last row of each group
    ends = xp.concatenate([ends, xp.asarray([N - 1], dtype=ends.dtype)])   # ... but the end
    tot = csum[ends]                                                # (G, C) running totals
    seg = xp.concatenate([tot[:1], tot[1:] - tot[:-1]])             # (G, C) group sums
    out[s[ends]] = seg.astype(rows.dtype)
    return out


def embedding(idx, weight):
    return Embedding.apply(idx.data if isinstance(idx, Tensor) else idx, weight)


class Dropout(Function):
    @staticmethod
    def forward(ctx, x, p, rng):
        keep = rng.random(x.shape, dtype=x.dtype if x.dtype.kind == "f" else np.float64) >= p
        # the host Generator draws the mask (the same stream as on cpu), then it moves over
        keep = backend.to_device(keep, backend.device_of(x))
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return np.where(keep, x * ctx.scale, 0).astype(x.dtype, copy=False)

    @staticmethod
    def backward(ctx, dout):
        (keep,) = ctx.saved
        return np.where(keep, dout * ctx.scale, 0).astype(dout.dtype, copy=False), None, None


def dropout(x, p=0.5, training=True, rng=None):
    """Inverted dropout: zero each element with probability p and scale the rest by 1/(1-p).

    ``rng`` is a ``np.random.Generator`` (or an int seed); None draws from the default
    generator (``tl.manual_seed`` seeds it).
    In eval mode (training=False) or with p=0 it returns x itself.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    if rng is None:
        from ..creation import default_generator
        rng = default_generator()
    elif not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    return Dropout.apply(x, float(p), rng)
