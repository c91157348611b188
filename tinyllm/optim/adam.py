"""Adam and AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019), with PyTorch's semantics.

The update's equations are in the ``adam`` kernel family's docstring
(``tinyllm.kernels.adam``). m and v start at zero; the two ``1 - b**t`` factors undo that
start's bias toward zero. Under Adam's L2 the decay is divided by sqrt(v) like the gradient, so parameters with large
gradients are barely decayed; AdamW's decoupled decay shrinks every parameter by the same
factor. The bias correction and the order of operations follow ``torch.optim.Adam`` (its
single-tensor path), so float64 results agree with PyTorch to rounding.

The update itself is the ``adam`` kernel family (``tinyllm.kernels.adam``): a NumPy
reference, the specification, and a one-pass Numba version that rounds the same way. The
kernel registry picks one (``with tl.kernels.use("numpy"):``, ``TINYLLM_KERNELS``) unless
``fused`` says otherwise.
"""
from __future__ import annotations

import numpy as np

from .. import kernels
from .optimizer import Optimizer, _check_number

__all__ = ["Adam", "AdamW", "adam_reference"]


def adam_reference(*args, **kwargs):
    """The NumPy reference update (``tinyllm.kernels.adam``), fetched when called so that
    ``python -m tinyllm.kernels.adam`` does not find its module already imported."""
    return kernels.get("adam", "numpy").forward(*args, **kwargs)


def _impl(fused) -> str | None:
    """``fused`` -> the kernel implementation: None = the registry's default, False = the
    NumPy reference, True = Numba (checked when the optimiser is built)."""
    return None if fused is None else ("numba" if fused else "numpy")


def _check_fused(opt, fused) -> None:
    if fused and not kernels.numba_available():
        raise RuntimeError(f"{type(opt).__name__}: fused=True needs Numba, which does not "
                           f"import here")


class Adam(Optimizer):
    """``Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)``.

    ``weight_decay`` is L2: it is added to the gradient (``g + wd * p``) before the moments,
    as in ``torch.optim.Adam``. For decoupled decay use ``AdamW``. ``fused`` (keyword):
    None = the kernel registry's choice (Numba unless ``tl.kernels.use("numpy")`` or
    ``TINYLLM_KERNELS=numpy``), False = the NumPy reference, True = Numba, which must be
    installed.
    """

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
                 fused=None):
        _check_fused(self, fused)
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
        k = kernels.get("adam", _impl(self.fused))
        k.forward(p, g, m, v, lr=group["lr"], step=state["step"], beta1=group["betas"][0],
                  beta2=group["betas"][1], eps=group["eps"], weight_decay=group["weight_decay"],
                  decoupled=self._decoupled,
                  tmp=self._tmp(p) if k.impl == "numpy" else None)   # scratch: reference only


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
