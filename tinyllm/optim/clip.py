"""Gradient clipping by the global L2 norm.

    total = sqrt(sum over every parameter p, every element i of p.grad[i]**2)
    if total > max_norm:  p.grad *= max_norm / total       (for every p, in place)

The norm is the ``grad_norm`` kernel family (``tinyllm.kernels.grad_norm``), chosen by the
kernel registry: its sum runs in float64 whatever the gradients' dtype (a float32 sum of a
million squares loses digits). The scale factor is ``max_norm / total`` exactly (PyTorch adds
1e-6 to the denominator), so afterwards the norm is ``max_norm`` to rounding.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend, kernels


def _grads(params) -> list:
    if backend.is_array(getattr(params, "data", None)):
        params = [params]
    seen, out = set(), []
    for p in params:
        if id(p) in seen:                    # a tied parameter passed twice counts once
            continue
        seen.add(id(p))
        if getattr(p, "grad", None) is not None:
            out.append(p)
    return out


def _norm(ps) -> float:
    if any(backend.is_device(p.grad) for p in ps):
        return _norm_device(ps)
    total, _ = kernels.get("grad_norm").forward(*(np.asarray(p.grad) for p in ps))
    return float(total)


def _norm_device(ps) -> float:
    """The ``grad_norm`` kernel's reference on device gradients: per gradient a float64
    dot product on the device, summed in order as Python floats (one transfer each)."""
    if len({backend.device_of(p.grad) for p in ps}) > 1:
        raise _mixed_devices()
    total = 0.0
    for p in ps:
        g = p.grad
        flat = g.reshape(-1) if g.dtype == np.float64 else g.astype(np.float64).reshape(-1)
        total += float(backend.xp(g).dot(flat, flat))
    return math.sqrt(total)


def _mixed_devices():
    from ..errors import DeviceError
    return DeviceError("clip_grad_norm_: the gradients are on different devices (cpu and "
                       "cuda); move the model to one device")


def grad_norm(params) -> float:
    """The global L2 norm of all gradients (float64 accumulation); grads that are None are
    skipped."""
    return _norm(_grads(params))


def clip_grad_norm_(params, max_norm: float) -> float:
    """Scale every ``p.grad`` in place so that their global L2 norm is at most ``max_norm``.

    Returns the norm *before* clipping, as a Python float. A non-finite norm (a NaN or Inf in
    some gradient) is returned without scaling anything: the caller decides (skip the step,
    stop training). ``params`` is an iterable of Tensors or one Tensor.
    """
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float, np.floating)) \
            or not (math.isfinite(max_norm) and max_norm >= 0):
        raise ValueError(f"clip_grad_norm_: invalid max_norm={max_norm!r} "
                         f"(must be a finite number >= 0)")
    ps = _grads(params)
    total = _norm(ps)
    if math.isfinite(total) and total > max_norm:
        scale = float(max_norm) / total
        for p in ps:
            if backend.is_device(p.grad) or (isinstance(p.grad, np.ndarray)
                                             and p.grad.flags.writeable):
                p.grad *= scale                  # Python float: float32 stays float32
            else:
                p.grad = np.asarray(p.grad) * scale
    return total
