"""The primitive ops: each a Function with its forward and backward side by side.

Shapes in comments: ``x`` is the input, ``out`` the output, ``dout`` the upstream gradient and
``dx`` the gradient the op returns. Broadcasting follows NumPy; ``unbroadcast`` sums a gradient
back down to an input's shape.
"""
from __future__ import annotations

import builtins
import math

import numpy as np
from scipy import special

from ..errors import ShapeError
from .tensor import Function, Tensor

# --- helpers -------------------------------------------------------------------------------


def lift(x, dtype=None):
    """Turn a non-Tensor operand into an array constant. Python and NumPy scalars are weak:
    they take ``dtype`` (the other operand's float dtype), so float32 stays float32."""
    if isinstance(x, (Tensor, np.ndarray)):
        return x
    if isinstance(x, (bool, int, float, np.generic)):
        if np.iscomplexobj(x):
            raise TypeError(f"complex numbers are not supported, got {x!r}")
        if dtype is not None and dtype.kind == "f":
            return np.asarray(x, dtype=dtype)
        return np.asarray(x)
    if isinstance(x, (list, tuple)):
        return Tensor(x).data
    raise TypeError(f"expected a Tensor, an ndarray or a number, got {type(x).__name__}")


def _dtype_of(*xs):
    for x in xs:
        if isinstance(x, (Tensor, np.ndarray)) and x.dtype.kind == "f":
            return x.dtype
    return None


def _binary_operands(a, b):
    dt = _dtype_of(a, b)
    return lift(a, dt), lift(b, dt)


def broadcast_shape(op: str, *shapes) -> tuple:
    """The broadcast shape, or a ShapeError naming the op and the shapes."""
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        raise ShapeError(f"{op}: cannot broadcast shapes "
                         + " and ".join(str(tuple(s)) for s in shapes)) from None


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
        if not -ndim <= a < builtins.max(ndim, 1):
            raise ShapeError(f"{op}: axis {a} is out of range for a {ndim}-d tensor")
        out.append(int(a) % builtins.max(ndim, 1))
    if len(set(out)) != len(out):
        raise ShapeError(f"{op}: repeated axis in {axis}")
    return tuple(sorted(out))


# --- arithmetic ----------------------------------------------------------------------------


class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        broadcast_shape("add", a.shape, b.shape)
        ctx.shapes = (a.shape, b.shape)
        return a + b

    @staticmethod
    def backward(ctx, dout):
        sa, sb = ctx.shapes
        return unbroadcast(dout, sa), unbroadcast(dout, sb)


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        broadcast_shape("sub", a.shape, b.shape)
        ctx.shapes = (a.shape, b.shape)
        return a - b

    @staticmethod
    def backward(ctx, dout):
        sa, sb = ctx.shapes
        db = unbroadcast(-dout, sb) if ctx.needs_input_grad[1] else None
        return unbroadcast(dout, sa), db


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        broadcast_shape("mul", a.shape, b.shape)
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, dout):
        a, b = ctx.saved
        da = unbroadcast(dout * b, a.shape) if ctx.needs_input_grad[0] else None
        db = unbroadcast(dout * a, b.shape) if ctx.needs_input_grad[1] else None
        return da, db


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        broadcast_shape("div", a.shape, b.shape)
        out = a / b
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx, dout):
        a, b, out = ctx.saved
        da = unbroadcast(dout / b, a.shape) if ctx.needs_input_grad[0] else None
        db = unbroadcast(-dout * out / b, b.shape) if ctx.needs_input_grad[1] else None
        return da, db


class Neg(Function):
    @staticmethod
    def forward(ctx, x):
        return -x

    @staticmethod
    def backward(ctx, dout):
        return -dout


def _int_power(x, p):
    # x*x*x, not x**3: float32 np.power is about 160x slower here.
    if p == 2:
        return x * x
    if p == 3:
        return x * x * x
    return np.power(x, p)


class Pow(Function):
    """x ** p for a scalar exponent p."""

    @staticmethod
    def forward(ctx, x, p):
        ctx.save_for_backward(x)
        ctx.p = p
        return _int_power(x, p)

    @staticmethod
    def backward(ctx, dout):
        (x,) = ctx.saved
        p = ctx.p
        return dout * p * _int_power(x, p - 1), None


def add(a, b): return Add.apply(*_binary_operands(a, b))
def sub(a, b): return Sub.apply(*_binary_operands(a, b))
def mul(a, b): return Mul.apply(*_binary_operands(a, b))
def div(a, b): return Div.apply(*_binary_operands(a, b))
def neg(x): return Neg.apply(x)


def pow(x, p):
    """x ** p with p a scalar (int or float); the result keeps x's dtype."""
    if isinstance(p, (Tensor, np.ndarray)) or not isinstance(p, (int, float, np.number)):
        raise TypeError(f"pow: the exponent must be a number, got {type(p).__name__}")
    p = float(p)
    return Pow.apply(x, int(p) if p.is_integer() else p)


def rpow(base, x):
    """base ** x for a positive scalar base, as exp(x * log(base))."""
    if not isinstance(base, (int, float, np.number)) or base <= 0:
        raise TypeError(f"pow: a scalar base must be a positive number, got {base!r}")
    return exp(x * math.log(float(base)))


# --- matmul --------------------------------------------------------------------------------


class MatMul(Function):
    """a @ b with NumPy's rules: batch dims broadcast, a 1-D operand gets a dim added
    (and removed again from the result)."""

    @staticmethod
    def forward(ctx, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ShapeError(f"matmul: operands must be at least 1-d, got {a.shape} and {b.shape}")
        k_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
        if a.shape[-1] != k_b:
            raise ShapeError(f"matmul: inner dimensions differ: {a.shape} @ {b.shape}")
        broadcast_shape("matmul", a.shape[:-2], b.shape[:-2])
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, dout):
        a, b = ctx.saved
        a2 = a[None, :] if a.ndim == 1 else a           # (..., m, k)
        b2 = b[:, None] if b.ndim == 1 else b           # (..., k, n)
        d = dout[..., None] if b.ndim == 1 else dout
        d = d[..., None, :] if a.ndim == 1 else d       # (..., m, n)
        da = db = None
        if ctx.needs_input_grad[0]:
            da = unbroadcast(d @ np.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)
        if ctx.needs_input_grad[1]:
            db = unbroadcast(np.swapaxes(a2, -1, -2) @ d, b2.shape).reshape(b.shape)
        return da, db


def matmul(a, b): return MatMul.apply(*_binary_operands(a, b))


# --- elementwise ---------------------------------------------------------------------------


class Exp(Function):
    @staticmethod
    def forward(ctx, x):
        out = np.exp(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, dout):
        (out,) = ctx.saved
        return dout * out


class Log(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return np.log(x)

    @staticmethod
    def backward(ctx, dout):
        (x,) = ctx.saved
        return dout / x


class Sqrt(Function):
    @staticmethod
    def forward(ctx, x):
        out = np.sqrt(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, dout):
        (out,) = ctx.saved
        return dout / (2 * out)


class Tanh(Function):
    @staticmethod
    def forward(ctx, x):
        out = np.tanh(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, dout):
        (out,) = ctx.saved
        return dout * (1 - out * out)


class Sigmoid(Function):
    @staticmethod
    def forward(ctx, x):
        out = special.expit(x)   # stable for large |x|
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, dout):
        (out,) = ctx.saved
        return dout * out * (1 - out)


class Relu(Function):
    @staticmethod
    def forward(ctx, x):
        mask = x > 0
        ctx.save_for_backward(mask)
        return np.where(mask, x, 0).astype(x.dtype, copy=False)

    @staticmethod
    def backward(ctx, dout):
        (mask,) = ctx.saved
        return np.where(mask, dout, 0).astype(dout.dtype, copy=False)


_GELU_C = math.sqrt(2.0 / math.pi)   # Python floats, so float32 stays float32
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


class Gelu(Function):
    """GELU(x) = x * Phi(x).

    approximate="tanh": 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  (GPT-2's)
    approximate="none": 0.5 x (1 + erf(x / sqrt(2)))                      (exact)
    """

    @staticmethod
    def forward(ctx, x, approximate="tanh"):
        ctx.approximate = approximate
        if approximate == "tanh":
            t = np.tanh(_GELU_C * (x + 0.044715 * x * x * x))
            ctx.save_for_backward(x, t)
            return 0.5 * x * (1 + t)
        if approximate == "none":
            cdf = 0.5 * (1 + special.erf(x * _INV_SQRT2))
            ctx.save_for_backward(x, cdf)
            return x * cdf
        raise ValueError(f"gelu: approximate must be 'tanh' or 'none', got {approximate!r}")

    @staticmethod
    def backward(ctx, dout):
        x, s = ctx.saved
        if ctx.approximate == "tanh":
            du = _GELU_C * (1 + 3 * 0.044715 * x * x)
            return dout * (0.5 * (1 + s) + 0.5 * x * (1 - s * s) * du)
        pdf = _INV_SQRT2PI * np.exp(-0.5 * x * x)
        return dout * (s + x * pdf)


def exp(x): return Exp.apply(x)
def log(x): return Log.apply(x)
def sqrt(x): return Sqrt.apply(x)
def tanh(x): return Tanh.apply(x)
def sigmoid(x): return Sigmoid.apply(x)
def relu(x): return Relu.apply(x)
def gelu(x, approximate="tanh"): return Gelu.apply(x, approximate=approximate)


# --- reductions ----------------------------------------------------------------------------


def _expand(dout, in_shape, axes, keepdims):
    """Reshape a reduced gradient so it broadcasts against the input."""
    if not keepdims:
        dout = np.expand_dims(dout, axes)
    return np.broadcast_to(dout, in_shape)


class Sum(Function):
    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.axes = normalize_axes("sum", axis, x.ndim)
        ctx.shape, ctx.keepdims = x.shape, keepdims
        return np.sum(x, axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, dout):
        return _expand(dout, ctx.shape, ctx.axes, ctx.keepdims)


class Mean(Function):
    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.axes = normalize_axes("mean", axis, x.ndim)
        ctx.shape, ctx.keepdims = x.shape, keepdims
        ctx.n = math.prod(x.shape[a] for a in ctx.axes)
        return np.mean(x, axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, dout):
        return _expand(dout, ctx.shape, ctx.axes, ctx.keepdims) / ctx.n


class Max(Function):
    """Max over axes. Tied maxima share the gradient equally."""

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        if x.size == 0:
            raise ShapeError(f"max: cannot reduce an empty tensor of shape {x.shape}")
        ctx.axes = normalize_axes("max", axis, x.ndim)
        ctx.keepdims = keepdims
        out = np.max(x, axis=ctx.axes, keepdims=True)
        ctx.save_for_backward(x, out)
        return out if keepdims else np.squeeze(out, axis=ctx.axes)

    @staticmethod
    def backward(ctx, dout):
        x, out = ctx.saved
        mask = x == out                                              # (x.shape)
        count = mask.sum(axis=ctx.axes, keepdims=True)
        return _expand(dout, x.shape, ctx.axes, ctx.keepdims) * mask / count.astype(x.dtype)


class Var(Function):
    """Variance over axes: mean((x - mean)^2) * n / (n - ddof)."""

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False, ddof=0):
        ctx.axes = normalize_axes("var", axis, x.ndim)
        ctx.keepdims = keepdims
        n = math.prod(x.shape[a] for a in ctx.axes)
        if n - ddof <= 0:
            raise ShapeError(f"var: {n} elements with ddof={ddof} leave no degrees of freedom")
        xc = x - np.mean(x, axis=ctx.axes, keepdims=True)
        ctx.save_for_backward(xc)
        ctx.scale = 1.0 / (n - ddof)
        return np.sum(xc * xc, axis=ctx.axes, keepdims=keepdims) * ctx.scale

    @staticmethod
    def backward(ctx, dout):
        (xc,) = ctx.saved
        return _expand(dout, xc.shape, ctx.axes, ctx.keepdims) * (2 * ctx.scale) * xc


def sum(x, axis=None, keepdims=False): return Sum.apply(x, axis=axis, keepdims=keepdims)
def mean(x, axis=None, keepdims=False): return Mean.apply(x, axis=axis, keepdims=keepdims)
def max(x, axis=None, keepdims=False): return Max.apply(x, axis=axis, keepdims=keepdims)


def var(x, axis=None, keepdims=False, ddof=0):
    return Var.apply(x, axis=axis, keepdims=keepdims, ddof=ddof)


# --- shape ops -----------------------------------------------------------------------------


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
        norm = tuple(int(a) % nd for a in axes) if nd else tuple(axes)
        if sorted(norm) != list(range(nd)):
            raise ShapeError(f"transpose: axes {axes} are not a permutation of the "
                             f"{nd} axes of shape {x.shape}")
        ctx.axes = norm
        return np.transpose(x, norm)

    @staticmethod
    def backward(ctx, dout):
        return np.transpose(dout, np.argsort(ctx.axes))


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
    return any(isinstance(i, np.ndarray) for i in items)


class GetItem(Function):
    """x[idx]. The backward scatters dout back with np.add.at, so repeated integer indices
    add up."""

    @staticmethod
    def forward(ctx, x, idx):
        ctx.shape, ctx.dtype, ctx.idx = x.shape, x.dtype, idx
        try:
            return x[idx]
        except IndexError as e:
            raise IndexError(f"getitem: index {idx!r} is invalid for shape {x.shape}: {e}") \
                from None

    @staticmethod
    def backward(ctx, dout):
        dx = np.zeros(ctx.shape, dtype=ctx.dtype)
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
        ctx.splits = np.cumsum([x.shape[axis] for x in xs])[:-1]
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
    if skip_axis is not None and not -len(ref) <= skip_axis < builtins.max(len(ref), 1):
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
    return [x if isinstance(x, Tensor) else Tensor(lift(x, dt)) for x in xs]


def concat(xs, axis=0): return Concat.apply(*_tensors(xs, "concat"), axis=axis)
def stack(xs, axis=0): return Stack.apply(*_tensors(xs, "stack"), axis=axis)


def split(x, indices_or_sections, axis=0):
    """NumPy's split: an int n gives n equal parts, a list gives the cut points."""
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


class Where(Function):
    @staticmethod
    def forward(ctx, cond, a, b):
        if np.asarray(cond).dtype != bool:
            raise TypeError(f"where: the condition must be boolean, got {np.asarray(cond).dtype}")
        broadcast_shape("where", np.shape(cond), a.shape, b.shape)
        ctx.save_for_backward(cond)
        ctx.shapes = (a.shape, b.shape)
        return np.where(cond, a, b)

    @staticmethod
    def backward(ctx, dout):
        (cond,) = ctx.saved
        sa, sb = ctx.shapes
        zero = np.zeros((), dout.dtype)
        da = unbroadcast(np.where(cond, dout, zero), sa) if ctx.needs_input_grad[1] else None
        db = unbroadcast(np.where(cond, zero, dout), sb) if ctx.needs_input_grad[2] else None
        return None, da, db


def where(cond, a, b):
    cond = cond.data if isinstance(cond, Tensor) else np.asarray(cond)
    a, b = _binary_operands(a, b)
    return Where.apply(cond, a, b)


class MaskedFill(Function):
    @staticmethod
    def forward(ctx, x, mask, value):
        mask = np.asarray(mask)
        if mask.dtype != bool:
            raise TypeError(f"masked_fill: the mask must be boolean, got {mask.dtype}")
        if broadcast_shape("masked_fill", x.shape, mask.shape) != x.shape:
            raise ShapeError(f"masked_fill: mask shape {mask.shape} does not broadcast to "
                             f"the input shape {x.shape}")
        ctx.save_for_backward(mask)
        return np.where(mask, np.asarray(value, dtype=x.dtype), x)

    @staticmethod
    def backward(ctx, dout):
        (mask,) = ctx.saved
        return np.where(mask, np.zeros((), dout.dtype), dout), None, None


def masked_fill(x, mask, value):
    """x with the positions where mask is True set to value (they get no gradient)."""
    mask = mask.data if isinstance(mask, Tensor) else mask
    return MaskedFill.apply(x, mask, float(value))


class Embedding(Function):
    """weight[idx]: rows of a (V, C) table gathered by an integer array of any shape."""

    @staticmethod
    def forward(ctx, idx, weight):
        idx = np.asarray(idx)
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
        dW = np.zeros(ctx.shape, dtype=dout.dtype)
        np.add.at(dW, idx.reshape(-1), dout.reshape(-1, ctx.shape[1]))
        return None, dW


def embedding(idx, weight):
    return Embedding.apply(idx.data if isinstance(idx, Tensor) else idx, weight)


class Dropout(Function):
    @staticmethod
    def forward(ctx, x, p, rng):
        keep = rng.random(x.shape, dtype=x.dtype if x.dtype.kind == "f" else np.float64) >= p
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return np.where(keep, x * ctx.scale, 0).astype(x.dtype, copy=False)

    @staticmethod
    def backward(ctx, dout):
        (keep,) = ctx.saved
        return np.where(keep, dout * ctx.scale, 0).astype(dout.dtype, copy=False), None, None


def dropout(x, p=0.5, training=True, rng=None):
    """Inverted dropout: zero each element with probability p and scale the rest by 1/(1-p).

    ``rng`` is a ``np.random.Generator`` (or an int seed); None draws fresh entropy.
    In eval mode (training=False) or with p=0 it returns x itself.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    return Dropout.apply(x, float(p), rng)
