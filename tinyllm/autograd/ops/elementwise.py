"""Elementwise functions: exp, log, sqrt, tanh, sigmoid, relu, gelu."""
from __future__ import annotations

import math

import numpy as np

from ... import backend
from ..tensor import Function


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
        out = backend.special(x).expit(x)   # stable for large |x|; cupyx's on a device
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
            cdf = 0.5 * (1 + backend.special(x).erf(x * _INV_SQRT2))
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
