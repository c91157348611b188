"""``tl.functional`` (``F``): the neural-network ops, as compositions of the primitives.

They are composites for now: each is a few lines of primitive ops, so autodiff derives its
backward. The kernels layer will swap in fused forward/backward kernels behind the same names.
Shapes: N = rows, V = vocabulary (classes), C = channels.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .ops import dropout, embedding, gelu, relu, sigmoid, tanh  # noqa: F401  (re-exported)
from .tensor import Tensor


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """exp(x - max) / sum(exp(x - max)) along ``axis``. Subtracting the (detached) max changes
    nothing mathematically and keeps exp from overflowing."""
    m = x.max(axis=axis, keepdims=True).detach()
    e = (x - m).exp()
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """x - max - log(sum(exp(x - max))) along ``axis``."""
    m = x.max(axis=axis, keepdims=True).detach()
    shifted = x - m
    return shifted - shifted.exp().sum(axis=axis, keepdims=True).log()


def cross_entropy(logits: Tensor, targets, ignore_index: int = -100) -> Tensor:
    """Mean negative log-likelihood of ``targets`` under softmax(logits).

    logits (N, V); targets int (N,). Rows whose target equals ``ignore_index`` are left out of
    the sum and of the count. If every row is ignored the loss is 0 (with zero gradient), not
    the NaN of 0/0.
    """
    t = targets.data if isinstance(targets, Tensor) else np.asarray(targets)
    if logits.ndim != 2:
        raise ShapeError(f"cross_entropy: logits must be (N, V), got {logits.shape}")
    if t.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: targets must be integers, got {t.dtype}")
    N, V = logits.shape
    if t.shape != (N,):
        raise ShapeError(f"cross_entropy: targets shape {t.shape} does not match logits "
                         f"{logits.shape}; expected ({N},)")
    keep = t != ignore_index
    bad = keep & ((t < 0) | (t >= V))
    if bad.any():
        raise IndexError(f"cross_entropy: target {t[bad][0]} is out of range for {V} classes "
                         f"(ignore_index={ignore_index})")
    rows = np.nonzero(keep)[0]
    if rows.size == 0:
        return (logits * 0.0).sum()
    logp = log_softmax(logits, axis=-1)                      # (N, V)
    picked = logp[rows, t[rows]]                             # (n_kept,)
    return -picked.sum() / float(rows.size)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis; weight, bias (C,)."""
    C = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != (C,):
            raise ShapeError(f"layer_norm: {name} shape {p.shape} does not match the last "
                             f"dimension of x {x.shape}")
    mu = x.mean(axis=-1, keepdims=True)                      # (..., 1)
    xc = x - mu
    var = (xc * xc).mean(axis=-1, keepdims=True)             # (..., 1)
    xhat = xc / (var + eps).sqrt()
    out = xhat * weight if weight is not None else xhat
    return out + bias if bias is not None else out


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ W + b with W (in, out): (..., in) @ (in, out) -> (..., out)."""
    out = x @ weight
    return out + bias if bias is not None else out


def mlp(x: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor) -> Tensor:
    """GELU(x @ W1 + b1) @ W2 + b2, tanh GELU."""
    return linear(gelu(linear(x, W1, b1)), W2, b2)


__all__ = ["softmax", "log_softmax", "cross_entropy", "layer_norm", "linear", "mlp", "gelu",
           "relu", "sigmoid", "tanh", "dropout", "embedding"]
