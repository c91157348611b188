"""Shape ops: reshape, transpose, indexing, concat, stack, split."""
from __future__ import annotations

import math

import numpy as np

from ... import backend, kernels
from ...errors import ShapeError
from ..tensor import Function, Tensor
from ._util import _dtype_of, lift


class Reshape(Function):
    @staticmethod
    def forward(ctx, x, shape):
        ctx.shape = x.shape
        try:
            return x.reshape(shape)
        except ValueError:
            raise ShapeError(f"reshape: cannot reshape {x.shape} ({x.size} elements) "
                             f"into {tuple(shape)}") from None

    @staticmethod
    def backward(ctx, dout):
        return dout.reshape(ctx.shape)


class Transpose(Function):
    @staticmethod
    def forward(ctx, x, axes=None):
        nd = x.ndim
        axes = tuple(reversed(range(nd))) if axes is None else tuple(axes)
        in_range = all(-nd <= a < nd for a in axes)
        norm = tuple(int(a) % nd for a in axes) if in_range and nd else tuple(axes)
        if not in_range or sorted(norm) != list(range(nd)):
            raise ShapeError(f"transpose: axes {axes} are not a permutation of the "
                             f"{nd} axes of shape {x.shape}")
        ctx.axes = norm
        return np.transpose(x, norm)

    @staticmethod
    def backward(ctx, dout):
        return np.transpose(dout, tuple(int(a) for a in np.argsort(ctx.axes)))


def _shape_arg(args):
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else args


def reshape(x, *shape): return Reshape.apply(x, shape=_shape_arg(shape))


def transpose(x, *axes):
    axes = _shape_arg(axes)
    return Transpose.apply(x, axes=axes if axes else None)


def swapaxes(x, a1, a2):
    axes = list(range(x.ndim))
    for a in (a1, a2):
        if not -x.ndim <= a < x.ndim:
            raise ShapeError(f"swapaxes: axis {a} is out of range for shape {x.shape}")
    axes[a1], axes[a2] = axes[a2], axes[a1]
    return Transpose.apply(x, axes=tuple(axes))


permute = transpose


# --- indexing ------------------------------------------------------------------------------


def _plain_index(idx):
    """Tensors and lists inside an index become arrays."""
    items = idx if isinstance(idx, tuple) else (idx,)
    items = tuple(i.data if isinstance(i, Tensor) else np.asarray(i) if isinstance(i, list)
                  else i for i in items)
    return items if isinstance(idx, tuple) else items[0]


def _is_advanced(idx):
    items = idx if isinstance(idx, tuple) else (idx,)
    return any(backend.is_array(i) for i in items)


def _index_on(idx, device):
    """The arrays inside an index on ``device`` (a device array indexes by device arrays)."""
    if device == "cpu":
        return idx
    if isinstance(idx, tuple):
        return tuple(backend.follow(i, device) for i in idx)
    return backend.follow(idx, device)


class GetItem(Function):
    """x[idx]. The backward scatters dout back, so repeated integer indices add up: with
    np.add.at on the host; on a device, the flat positions each output element came from
    are segment-summed (``select._segment_sum``: a sort, no atomics)."""

    @staticmethod
    def forward(ctx, x, idx):
        idx = _index_on(idx, backend.device_of(x))
        ctx.shape, ctx.dtype, ctx.idx = x.shape, x.dtype, idx
        try:
            return x[idx]
        except IndexError as e:
            raise IndexError(f"getitem: index {idx!r} is invalid for shape {x.shape}: {e}") \
                from None

    @staticmethod
    def backward(ctx, dout):
        xp = backend.xp(dout)
        if xp is not np and _is_advanced(ctx.idx):
            from .select import _segment_sum
            n = math.prod(ctx.shape)
            src = xp.arange(n).reshape(ctx.shape)[ctx.idx].reshape(-1)   # flat source of each
            rows = dout.astype(ctx.dtype).reshape(-1, 1)                   # (N, 1)
            return _segment_sum(src, rows, n).reshape(ctx.shape)
        dx = xp.zeros(ctx.shape, dtype=ctx.dtype)
        if _is_advanced(ctx.idx):
            np.add.at(dx, ctx.idx, dout)
        else:
            dx[ctx.idx] += dout    # basic indexing: no element is hit twice
        return dx


def getitem(x, idx): return GetItem.apply(x, idx=_plain_index(idx))


class Concat(Function):
    @staticmethod
    def forward(ctx, *xs, axis=0):
        _check_same_shapes("concat", xs, skip_axis=axis)
        ctx.axis = axis
        ctx.splits = np.cumsum([x.shape[axis] for x in xs])[:-1].tolist()   # ints: any device
        return np.concatenate(xs, axis=axis)

    @staticmethod
    def backward(ctx, dout):
        return tuple(np.split(dout, ctx.splits, axis=ctx.axis))


class Stack(Function):
    @staticmethod
    def forward(ctx, *xs, axis=0):
        _check_same_shapes("stack", xs, skip_axis=None)
        ctx.axis, ctx.n = axis, len(xs)
        try:
            return np.stack(xs, axis=axis)
        except np.exceptions.AxisError as e:
            raise ShapeError(f"stack: {e}") from None

    @staticmethod
    def backward(ctx, dout):
        return tuple(np.take(dout, i, axis=ctx.axis) for i in range(ctx.n))


def _check_same_shapes(op, xs, skip_axis):
    if not xs:
        raise ShapeError(f"{op}: needs at least one tensor")
    ref = xs[0].shape
    if skip_axis is not None and not -len(ref) <= skip_axis < len(ref):
        raise ShapeError(f"{op}: axis {skip_axis} is out of range for shape {ref}")
    for x in xs[1:]:
        ok = len(x.shape) == len(ref) and all(
            a == b for i, (a, b) in enumerate(zip(x.shape, ref))
            if skip_axis is None or i != skip_axis % len(ref))
        if not ok:
            raise ShapeError(f"{op}: shapes {ref} and {x.shape} do not match"
                             + ("" if skip_axis is None else f" outside axis {skip_axis}"))


def _tensors(xs, op):
    xs = list(xs)
    dt = _dtype_of(*xs)
    return [x if isinstance(x, Tensor) else Tensor(lift(x, dt, op)) for x in xs]


def concat(xs, axis=0): return Concat.apply(*_tensors(xs, "concat"), axis=axis)
def stack(xs, axis=0): return Stack.apply(*_tensors(xs, "stack"), axis=axis)


def split(x, indices_or_sections, axis=0):
    """NumPy's split: an int n gives n equal parts, a list gives the cut points."""
    if not -x.ndim <= axis < x.ndim:
        raise ShapeError(f"split: axis {axis} is out of range for shape {x.shape}")
    n = x.shape[axis]
    if isinstance(indices_or_sections, (int, np.integer)):
        k = int(indices_or_sections)
        if k <= 0 or n % k:
            raise ShapeError(f"split: axis {axis} of shape {x.shape} does not split into "
                             f"{k} equal parts")
        cuts = [n // k * i for i in range(1, k)]
    else:
        cuts = list(indices_or_sections)
    bounds = [0] + cuts + [n]
    lead = (slice(None),) * (axis % x.ndim)
    return [x[lead + (slice(lo, hi),)] for lo, hi in zip(bounds[:-1], bounds[1:])]


class SplitHeads(Function):
    """The fused q, k, v projection's output cut into heads, as one node with three outputs:

        qkv (B T, 3 A) -> q, k, v   each (B, H, T, hs),   A = H hs,

    q = qkv[:, 0:A], k = qkv[:, A:2A], v = qkv[:, 2A:3A], each reshaped (B, T, H, hs) and
    transposed to (B, H, T, hs), written contiguous (what the attention kernel reads; the
    three are slices of one (3, B, H, T, hs) array, ``kernels.split_heads``). The
    backward writes dq, dk and dv into the three column blocks of one (B T, 3 A) gradient
    (zeros for an output that got none): no zero-filled gradient per slice and no sums of
    them, which is what made slicing a (B, T, 3C) product slower than three (C, C) ones."""

    @staticmethod
    def forward(ctx, qkv, B, T, H, hs):
        if qkv.ndim != 2 or qkv.shape != (B * T, 3 * H * hs):
            raise ShapeError(f"split_heads: qkv must be (B T, 3 H hs) = {(B * T, 3 * H * hs)}, "
                             f"got {qkv.shape}")
        ctx.dims = (B, T, H, hs)
        ctx.dtype = qkv.dtype
        out = kernels.split_heads(qkv, B, T, H, hs)              # (3, B, H, T, hs)
        return out[0], out[1], out[2]

    @staticmethod
    def backward(ctx, dq, dk, dv):
        B, T, H, hs = ctx.dims
        return kernels.merge_heads(dq, dk, dv, B, T, H, hs, ctx.dtype), None, None, None, None


def split_heads(qkv, B: int, T: int, n_head: int, head_size: int):
    """qkv (B T, 3 H hs) -> (q, k, v), each (B, H, T, hs) (``SplitHeads``)."""
    return SplitHeads.apply(qkv, int(B), int(T), int(n_head), int(head_size))
