"""Adam and AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019), with PyTorch's semantics.

For a parameter p with gradient g, at step t = 1, 2, ... (per parameter):

    Adam  (L2):        g <- g + wd * p                   # weight decay joins the gradient
    AdamW (decoupled): p <- p * (1 - lr * wd)            # weight decay shrinks p directly
    m <- b1 * m + (1 - b1) * g                           # first moment  (exp_avg)
    v <- b2 * v + (1 - b2) * g * g                       # second moment (exp_avg_sq)
    p <- p - (lr / (1 - b1**t)) * m / (sqrt(v) / sqrt(1 - b2**t) + eps)

m and v start at zero; the two ``1 - b**t`` factors undo that start's bias toward zero.
Under Adam's L2 the decay is divided by sqrt(v) like the gradient, so parameters with large
gradients are barely decayed; AdamW's decoupled decay shrinks every parameter by the same
factor. The bias correction and the order of operations follow ``torch.optim.Adam`` (its
single-tensor path), so float64 results agree with PyTorch to rounding.

Two implementations of the update: ``adam_reference`` (NumPy, the specification, in-place
ufuncs on a scratch array) and ``_adam_numba`` (one fused pass: read p, g, m, v once, write
p, m, v once). They round the same way (no FMA contraction). ``fused=None`` picks Numba when
it imports and the arrays are contiguous.
"""
from __future__ import annotations

import math

import numpy as np

from ..kernels._nb import HAVE_NUMBA, njit
from .optimizer import Optimizer, _check_number


def adam_reference(p, g, m, v, *, step: int, lr: float, beta1: float, beta2: float,
                   eps: float, weight_decay: float, decoupled: bool, tmp) -> None:
    """One Adam/AdamW update of ``p``, ``m``, ``v`` in place. ``tmp`` is scratch, p's shape.

    Scalars are Python floats, so float32 arrays stay float32.
    """
    bc1 = 1.0 - beta1 ** step
    bc2_sqrt = math.sqrt(1.0 - beta2 ** step)
    if weight_decay != 0.0:
        if decoupled:
            p *= 1.0 - lr * weight_decay                  # AdamW: p <- p (1 - lr wd)
        else:
            g = g + weight_decay * p                      # Adam: g <- g + wd p (new array)
    m *= beta1                                            # m <- b1 m + (1 - b1) g
    np.multiply(g, 1.0 - beta1, out=tmp)
    m += tmp
    v *= beta2                                            # v <- b2 v + (1 - b2) g g
    np.multiply(g, g, out=tmp)
    tmp *= 1.0 - beta2
    v += tmp
    np.sqrt(v, out=tmp)                                   # denom = sqrt(v) / sqrt(bc2) + eps
    tmp /= bc2_sqrt
    tmp += eps
    np.divide(m, tmp, out=tmp)                            # p <- p - (lr / bc1) m / denom
    tmp *= lr / bc1
    p -= tmp


@njit(error_model="numpy")   # numpy error model: x / 0 gives inf, so the loop vectorises
def _adam_numba(p, g, m, v, decay, l2, b1, c1, b2, c2, bc2_sqrt, eps, step_size):
    """The same update as ``adam_reference`` in one pass over flat arrays. All scalars have
    the arrays' dtype; ``decay`` = 1 - lr wd (AdamW) or 1, ``l2`` = wd (Adam) or 0."""
    for i in range(p.size):
        pi = p[i]
        gi = g[i]
        if l2 != 0:
            gi = gi + l2 * pi
        pi = pi * decay
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] = pi - step_size * (mi / (np.sqrt(vi) / bc2_sqrt + eps))


def _use_fused(fused, *arrays) -> bool:
    if fused is False or not HAVE_NUMBA:
        return False
    return all(a.flags.c_contiguous and a.flags.writeable for a in arrays)


class Adam(Optimizer):
    """``Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)``.

    ``weight_decay`` is L2: it is added to the gradient (``g + wd * p``) before the moments,
    as in ``torch.optim.Adam``. For decoupled decay use ``AdamW``. ``fused`` (keyword):
    None = the Numba kernel where possible, False = the NumPy reference, True = Numba, which
    must be installed.
    """

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
                 fused=None):
        if fused and not HAVE_NUMBA:
            raise RuntimeError(f"{type(self).__name__}: fused=True needs Numba, which does "
                               f"not import here")
        self.fused = fused
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _check_group(self, group):
        super()._check_group(group)
        betas = group["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"{type(self).__name__}: invalid betas={betas!r} "
                             f"(must be a pair (beta1, beta2))")
        _check_number(self, "betas[0] (beta1)", betas[0], lo=0.0, hi=1.0, hi_open=True)
        _check_number(self, "betas[1] (beta2)", betas[1], lo=0.0, hi=1.0, hi_open=True)
        _check_number(self, "eps", group["eps"], lo=0.0)
        _check_number(self, "weight_decay", group["weight_decay"], lo=0.0)

    def _state_arrays(self, group):
        return ("exp_avg", "exp_avg_sq")

    def _update(self, p, g, state, group):
        if "exp_avg" not in state:
            state["exp_avg"] = np.zeros(p.shape, p.dtype)
            state["exp_avg_sq"] = np.zeros(p.shape, p.dtype)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        t = state["step"]
        lr, wd, eps = float(group["lr"]), float(group["weight_decay"]), float(group["eps"])
        b1, b2 = float(group["betas"][0]), float(group["betas"][1])
        if _use_fused(self.fused, p, m, v):
            f = p.dtype.type
            decoupled = self._decoupled and wd != 0.0
            _adam_numba(p.reshape(-1), np.ascontiguousarray(g).reshape(-1), m.reshape(-1),
                        v.reshape(-1),
                        f(1.0 - lr * wd) if decoupled else f(1.0),
                        f(0.0) if self._decoupled else f(wd),
                        f(b1), f(1.0 - b1), f(b2), f(1.0 - b2),
                        f(math.sqrt(1.0 - b2 ** t)), f(eps), f(lr / (1.0 - b1 ** t)))
        else:
            adam_reference(p, g, m, v, step=t, lr=lr, beta1=b1, beta2=b2, eps=eps,
                           weight_decay=wd, decoupled=self._decoupled, tmp=self._tmp(p))


class AdamW(Adam):
    """``AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)``.

    Decoupled weight decay, ``p <- p * (1 - lr * wd)`` before the Adam step, as in
    ``torch.optim.AdamW``. It applies to every parameter of a group; to keep biases, norm
    weights and embeddings undecayed, build the groups with ``param_groups_for_decay``.
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, *,
                 fused=None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         fused=fused)
