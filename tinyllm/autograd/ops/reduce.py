"""Reductions over axes: sum, mean, max, var (with keepdims)."""
from __future__ import annotations

import math

import numpy as np

from ...errors import ShapeError
from ..tensor import Function
from ._util import normalize_axes


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
    """Max over axes. Tied maxima share the gradient equally.

    An empty batch is fine as long as the reduced axes are not empty (NumPy's and PyTorch's
    rule): shape (0, V) reduced over axis -1 gives the empty (0,). The max over an axis of
    length 0 does not exist (it has no identity), so that raises ShapeError."""

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.axes = normalize_axes("max", axis, x.ndim)
        empty = [a for a in ctx.axes if x.shape[a] == 0]
        if empty:
            raise ShapeError(f"max: cannot reduce over axis {empty[0]} of shape {x.shape}: "
                             f"it is empty, and the max of no elements is undefined")
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
