"""Stochastic gradient descent with momentum, PyTorch's semantics (``torch.optim.SGD``):
weight decay as L2 added to the gradient, an optional momentum buffer (Nesterov or not, with
dampening), and lr multiplying the buffer (PyTorch's form, Sutskever et al. 2013).

The update's equations, and the update itself, are the ``sgd`` kernel family
(``tinyllm.kernels.sgd``): the NumPy reference (``sgd_reference``, the specification) and a
one-pass Numba version that rounds the same way; the kernel registry picks one unless
``fused`` says otherwise.
"""
from __future__ import annotations

import numpy as np

from .. import backend, kernels
from .adam import _check_fused, _impl
from .optimizer import Optimizer, _check_number

__all__ = ["SGD", "sgd_reference"]


def sgd_reference(*args, **kwargs):
    """The NumPy reference update (``tinyllm.kernels.sgd``), fetched when called so that
    ``python -m tinyllm.kernels.sgd`` does not find its module already imported."""
    return kernels.get("sgd", "numpy").forward(*args, **kwargs)


class SGD(Optimizer):
    """``SGD(params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
    nesterov=False)``, the argument order of ``torch.optim.SGD``. ``weight_decay`` is L2
    (added to the gradient). Nesterov needs momentum > 0 and dampening 0. ``fused`` as in
    ``Adam``."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, fused=None):
        _check_fused(self, fused)
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
        k = kernels.get("sgd", _impl(self.fused))
        k.forward(p, g, buf, lr=lr, momentum=momentum, dampening=damp, nesterov=nesterov,
                  weight_decay=wd, first=first,
                  tmp=self._tmp(p) if k.impl == "numpy" else None)   # scratch: reference only

    def _update_device(self, p, g, state, group):
        """The ``sgd`` kernel's reference update in array-module code, the same ufuncs in the
        same order (so the same bits): p and the momentum buffer in place on the device."""
        xp = backend.xp(p)
        lr, wd = float(group["lr"]), float(group["weight_decay"])
        momentum, damp = float(group["momentum"]), float(group["dampening"])
        tmp = xp.empty_like(p)
        if wd != 0.0:
            g = g + wd * p                                # a new array: g is not changed
        if momentum != 0.0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()  # b <- g
            else:
                buf *= momentum                           # b <- momentum b + (1 - damp) g
                xp.multiply(g, 1.0 - damp, out=tmp)
                buf += tmp
            if bool(group["nesterov"]):
                xp.multiply(buf, momentum, out=tmp)       # g <- g + momentum b
                tmp += g
                g = tmp
            else:
                g = buf
        out = xp.empty_like(p)
        xp.multiply(g, lr, out=out)                       # p <- p - lr g
        p -= out
