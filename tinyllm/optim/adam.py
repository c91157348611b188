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

from .. import backend, kernels
from ..kernels.adam import update_arrays
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
        m, v = _moments(p, state)
        k = kernels.get("adam", _impl(self.fused))
        k.forward(p, g, m, v, lr=group["lr"], step=state["step"], beta1=group["betas"][0],
                  beta2=group["betas"][1], eps=group["eps"], weight_decay=group["weight_decay"],
                  decoupled=self._decoupled,
                  tmp=self._tmp(p) if k.impl == "numpy" else None)   # scratch: reference only

    def _update_device(self, p, g, state, group):
        _adam_device(p, g, state, group, self._decoupled)


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


def _adam_device(p, g, state, group, decoupled):
    """The ``adam`` kernel's reference update (``kernels.adam.update_arrays``) in the
    device's array module, the same ufuncs in the same order (so the same bits;
    tests/test_device.py checks it): p, m, v in place on the
    device (Adam's ``_update_device``), one scratch array."""
    m, v = _moments(p, state)
    xp = backend.xp(p)
    update_arrays(xp, p, g, m, v, xp.empty_like(p), lr=float(group["lr"]), step=state["step"],
                  beta1=float(group["betas"][0]), beta2=float(group["betas"][1]),
                  eps=float(group["eps"]), weight_decay=float(group["weight_decay"]),
                  decoupled=decoupled)


def _moments(p, state) -> tuple:
    """(m, v): made the first time as zeros of p's shape and dtype, on p's device."""
    if "exp_avg" not in state:
        xp = backend.xp(p)
        state["exp_avg"] = xp.zeros(p.shape, p.dtype)
        state["exp_avg_sq"] = xp.zeros(p.shape, p.dtype)
    return state["exp_avg"], state["exp_avg_sq"]
