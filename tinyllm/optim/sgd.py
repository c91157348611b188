"""Stochastic gradient descent with momentum, PyTorch's semantics (``torch.optim.SGD``).

For a parameter p with gradient g:

    g <- g + wd * p                          # weight_decay is L2, added to the gradient
    if momentum != 0:
        b <- g                               at the first step (no dampening yet)
        b <- momentum * b + (1 - dampening) * g   afterwards       (momentum_buffer)
        g <- g + momentum * b   if nesterov  else  b
    p <- p - lr * g

This is PyTorch's form, where lr multiplies the buffer (Sutskever et al. 2013); some texts put
lr inside the buffer instead, which differs when lr changes during training.

``sgd_reference`` is the NumPy specification; ``_sgd_numba`` does it in one pass. They round
the same way.
"""
from __future__ import annotations

import numpy as np

from ..kernels._nb import HAVE_NUMBA, njit
from .adam import _use_fused
from .optimizer import Optimizer, _check_number


def sgd_reference(p, g, buf, *, lr: float, momentum: float, dampening: float,
                  nesterov: bool, weight_decay: float, first: bool, tmp) -> None:
    """One SGD update of ``p`` (and of the momentum buffer ``buf``, None without momentum)
    in place. ``tmp`` is scratch of p's shape."""
    if weight_decay != 0.0:
        g = g + weight_decay * p                          # a new array: .grad is not changed
    if momentum != 0.0:
        if first:
            buf[...] = g                                  # b <- g
        else:
            buf *= momentum                               # b <- momentum b + (1 - damp) g
            np.multiply(g, 1.0 - dampening, out=tmp)
            buf += tmp
        if nesterov:
            np.multiply(buf, momentum, out=tmp)           # g <- g + momentum b
            tmp += g
            g = tmp
        else:
            g = buf
    np.multiply(g, lr, out=tmp)                           # p <- p - lr g
    p -= tmp


@njit(error_model="numpy")
def _sgd_numba(p, g, buf, lr, wd, momentum, c, nesterov, first):
    """``sgd_reference`` in one pass over flat arrays; scalars have the arrays' dtype,
    ``c`` = 1 - dampening. ``buf`` is ignored when momentum is 0."""
    for i in range(p.size):
        pi = p[i]
        gi = g[i]
        if wd != 0:
            gi = gi + wd * pi
        if momentum != 0:
            if first:
                b = gi
            else:
                b = momentum * buf[i] + c * gi
            buf[i] = b
            if nesterov:
                gi = gi + momentum * b
            else:
                gi = b
        p[i] = pi - lr * gi


class SGD(Optimizer):
    """``SGD(params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
    nesterov=False)``, the argument order of ``torch.optim.SGD``. ``weight_decay`` is L2
    (added to the gradient). Nesterov needs momentum > 0 and dampening 0. ``fused`` as in
    ``Adam``."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, fused=None):
        if fused and not HAVE_NUMBA:
            raise RuntimeError("SGD: fused=True needs Numba, which does not import here")
        self.fused = fused
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _check_group(self, group):
        super()._check_group(group)
        _check_number(self, "momentum", group["momentum"], lo=0.0)
        _check_number(self, "dampening", group["dampening"], lo=0.0, hi=1.0)
        _check_number(self, "weight_decay", group["weight_decay"], lo=0.0)
        if not isinstance(group["nesterov"], (bool, np.bool_)):
            raise ValueError(f"SGD: invalid nesterov={group['nesterov']!r} (must be a bool)")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"SGD: nesterov=True needs momentum > 0 and dampening = 0, got "
                             f"momentum={group['momentum']!r}, "
                             f"dampening={group['dampening']!r}")

    def _state_arrays(self, group):
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _update(self, p, g, state, group):
        lr, wd = float(group["lr"]), float(group["weight_decay"])
        momentum, damp = float(group["momentum"]), float(group["dampening"])
        nesterov = bool(group["nesterov"])
        buf = None
        first = False
        if momentum != 0.0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.empty(p.shape, p.dtype)
                first = True
        if _use_fused(self.fused, p, *(() if buf is None else (buf,))):
            f = p.dtype.type
            flat_buf = buf.reshape(-1) if buf is not None else p.reshape(-1)[:0]
            _sgd_numba(p.reshape(-1), np.ascontiguousarray(g).reshape(-1), flat_buf,
                       f(lr), f(wd), f(momentum), f(1.0 - damp), nesterov, first)
        else:
            sgd_reference(p, g, buf, lr=lr, momentum=momentum, dampening=damp,
                          nesterov=nesterov, weight_decay=wd, first=first, tmp=self._tmp(p))
