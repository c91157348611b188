"""Arithmetic with NumPy broadcasting, scalar powers and matmul."""
from __future__ import annotations

import math

import numpy as np

from ... import kernels
from ...errors import ShapeError
from ..tensor import Function, Tensor
from ._util import _binary_operands, broadcast_shape, broadcasting, unbroadcast
from .elementwise import exp


class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (a.shape, b.shape)
        return broadcasting("add", np.add, a, b)

    @staticmethod
    def backward(ctx, dout):
        sa, sb = ctx.shapes
        return unbroadcast(dout, sa), unbroadcast(dout, sb)


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (a.shape, b.shape)
        return broadcasting("sub", np.subtract, a, b)

    @staticmethod
    def backward(ctx, dout):
        sa, sb = ctx.shapes
        db = unbroadcast(-dout, sb) if ctx.needs_input_grad[1] else None
        return unbroadcast(dout, sa), db


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return broadcasting("mul", np.multiply, a, b)

    @staticmethod
    def backward(ctx, dout):
        a, b = ctx.saved
        da = unbroadcast(dout * b, a.shape) if ctx.needs_input_grad[0] else None
        db = unbroadcast(dout * a, b.shape) if ctx.needs_input_grad[1] else None
        return da, db


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        out = broadcasting("div", np.true_divide, a, b)
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
        if p == 0:                       # d(x^0)/dx = 0, also at x = 0 (not 0 * 0^-1 = NaN)
            return np.zeros_like(dout), None
        return dout * p * _int_power(x, p - 1), None


def add(a, b): return Add.apply(*_binary_operands(a, b, "add"))
def sub(a, b): return Sub.apply(*_binary_operands(a, b, "sub"))
def mul(a, b): return Mul.apply(*_binary_operands(a, b, "mul"))
def div(a, b): return Div.apply(*_binary_operands(a, b, "div"))
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


def _grads_2d(want_a: bool, want_b: bool, dout, a, b) -> list:
    """[d a, d b] of a @ b (2-D): dout b^T and a^T dout, None where not wanted; both as one
    parallel region when both are (``kernels.matmul_batch``)."""
    todo = [(want_a, (dout, b.T)), (want_b, (a.T, dout))]
    outs = iter(kernels.matmul_batch([p for w, p in todo if w]))
    return [next(outs) if w else None for w, _ in todo]


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
        if a.ndim == 2 and b.ndim == 2:
            return kernels.matmul(a, b)                 # one pool of threads (kernels._gemm)
        return a @ b

    @staticmethod
    def backward(ctx, dout):
        a, b = ctx.saved
        if a.ndim == 2 and b.ndim == 2:                 # (m, k) @ (k, n): no copies of a.T, b.T
            return tuple(_grads_2d(ctx.needs_input_grad[0], ctx.needs_input_grad[1], dout, a, b))
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


def matmul(a, b): return MatMul.apply(*_binary_operands(a, b, "matmul"))


class Linear(Function):
    """x @ W + b as one node: x (N, in), W (in, out), b (out,) or None.

    Forward is one product with the bias added in the same pass (``kernels.matmul``); the
    backward is dx = dy W^T, dW = x^T dy, db = sum_n dy. As a MatMul node and an Add node
    it cost a second pass over the (N, out) output each way and a fresh array for it."""

    @staticmethod
    def forward(ctx, x, w, b=None):
        if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
            raise ShapeError(f"linear: x must be (N, in) and W (in, out), got {x.shape} and "
                             f"{w.shape}")
        if b is not None and b.shape != (w.shape[1],):
            raise ShapeError(f"linear: bias must be ({w.shape[1]},), got {b.shape}")
        dt = np.result_type(x, w) if b is None else np.result_type(x, w, b)
        x, w = x.astype(dt, copy=False), w.astype(dt, copy=False)
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return kernels.matmul(x, w, None if b is None else b.astype(dt, copy=False))

    @staticmethod
    def backward(ctx, dout):
        x, w = ctx.saved
        need = ctx.needs_input_grad
        dx, dw = _grads_2d(need[0], need[1], dout, x, w)
        db = dout.sum(axis=0) if ctx.has_bias and need[2] else None
        return dx, dw, db


def linear(x, w, b=None):
    """x (N, in) @ W (in, out) + b (out,) as one graph node (``Linear``)."""
    return Linear.apply(x, w, b)
