"""Finite-difference gradient checks.

The check is on the scalar ``L(x) = sum_k sum(fn(x)_k * dy_k)`` with a **random** upstream
gradient ``dy``, in float64, by central differences ``(L(x + eps e_j) - L(x - eps e_j)) / 2eps``.
It is never on ``fn(x).sum()``: the sum of a softmax is constant, so that check passes a softmax
backward that ignores its upstream gradient (the "sum trap").

An element passes when ``|analytic - numeric| <= atol + rtol * |numeric|``. The relative error
reported is ``|analytic - numeric| / max(|numeric|, atol)``. Outputs that share a graph (a
``split``, say) are fine: the analytic gradient comes from one backward through ``L``.

The fast mode checks one random direction per input, ``<grad, u>`` against
``(L(x + eps u) - L(x - eps u)) / 2eps``: two forward passes per input instead of two per
element, for inputs too big to perturb one element at a time.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import GradcheckError
from .tensor import Tensor, no_grad


@dataclass
class InputReport:
    """How one input's gradient compared with finite differences."""

    input_index: int
    shape: tuple
    max_abs_err: float
    max_rel_err: float
    worst_index: tuple    # index of the worst element (() in fast mode)
    analytic: float
    numeric: float
    worst_abs_err: float  # the errors at worst_index
    worst_rel_err: float
    n_bad: int            # elements (or directions) out of tolerance
    passed: bool


class _Problem:
    """fn, its inputs in float64 and a fixed random dy: evaluates L(x) and its gradient."""

    def __init__(self, fn, inputs, seed, dtype=np.float64):
        self.fn, self.dtype = fn, np.dtype(dtype)
        self.rng = np.random.default_rng(seed)
        if not isinstance(inputs, (list, tuple)):
            raise TypeError(f"gradcheck: inputs must be a list or tuple of arrays/Tensors, "
                            f"got {type(inputs).__name__}")
        self.diff, self.values = [], []     # which inputs are differentiable; their arrays
        for i, x in enumerate(inputs):
            arr = x.data if isinstance(x, Tensor) else x
            if isinstance(x, Tensor) and not x.requires_grad:
                self.diff.append(False)
                self.values.append(x)       # a constant, passed through untouched
                continue
            arr = np.asarray(arr)
            if arr.dtype.kind != "f":
                raise TypeError(f"gradcheck: input {i} has dtype {arr.dtype}; only float inputs "
                                f"can be checked (pass indices inside fn, or as a Tensor with "
                                f"requires_grad=False)")
            self.diff.append(True)
            self.values.append(np.array(arr, dtype=np.float64))
        if not any(self.diff):
            raise ValueError("gradcheck: no differentiable input to check")
        self.dy = None
        self._dtype_checked = False

    def _call(self, arrays, requires_grad):
        args = [Tensor(a.astype(self.dtype), requires_grad=requires_grad) if d else a
                for a, d in zip(arrays, self.diff)]
        outs = self.fn(*args)
        outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
        if not all(isinstance(o, Tensor) for o in outs):
            raise TypeError("gradcheck: fn must return a Tensor or a tuple of Tensors")
        if not self._dtype_checked:
            self._dtype_checked = True
            for o in outs:
                if o.dtype != self.dtype:
                    warnings.warn(f"gradcheck: fn returned {o.dtype} for {self.dtype} inputs; "
                                  f"the check is not in {self.dtype}", stacklevel=4)
        if self.dy is None:
            self.dy = [self.rng.standard_normal(o.shape) for o in outs]
        return args, outs

    def loss(self, arrays) -> float:
        """L(x) = sum_k sum(out_k * dy_k), accumulated in float64."""
        with no_grad():
            _, outs = self._call(arrays, False)
        return float(sum(np.sum(o.data.astype(np.float64) * d) for o, d in zip(outs, self.dy)))

    def analytic(self) -> list:
        """dL/dx for every differentiable input, from backward() with upstream dy."""
        args, outs = self._call(self.values, True)
        # one backward through L = sum_k sum(out_k * dy_k): outputs may share a graph
        terms = [(o * Tensor(d.astype(o.dtype))).sum() for o, d in zip(outs, self.dy)
                 if o.requires_grad]
        if terms:
            total = terms[0]
            for t in terms[1:]:
                total = total + t
            total.backward()
        return [None if not d else
                (a.grad.astype(np.float64) if a.grad is not None else np.zeros(a.shape))
                for a, d in zip(args, self.diff)]


def _numeric_full(prob: _Problem, i: int, eps: float) -> np.ndarray:
    x = prob.values[i]
    flat = x.reshape(-1)
    g = np.empty(x.size)
    for j in range(x.size):
        old = flat[j]
        flat[j] = old + eps
        up = prob.loss(prob.values)
        flat[j] = old - eps
        down = prob.loss(prob.values)
        flat[j] = old
        g[j] = (up - down) / (2 * eps)
    return g.reshape(x.shape)


def _compare(i, shape, analytic, numeric, atol, rtol, index_of) -> InputReport:
    err = np.abs(analytic - numeric)
    tol = atol + rtol * np.abs(numeric)
    rel = err / np.maximum(np.abs(numeric), max(atol, 1e-300))
    k = int(np.argmax(err - tol)) if err.size else 0
    return InputReport(
        input_index=i, shape=tuple(shape),
        max_abs_err=float(err.max(initial=0.0)), max_rel_err=float(rel.max(initial=0.0)),
        worst_index=index_of(k), analytic=float(analytic.reshape(-1)[k]) if err.size else 0.0,
        numeric=float(numeric.reshape(-1)[k]) if err.size else 0.0,
        worst_abs_err=float(err.reshape(-1)[k]) if err.size else 0.0,
        worst_rel_err=float(rel.reshape(-1)[k]) if err.size else 0.0,
        n_bad=int((err > tol).sum()), passed=bool((err <= tol).all()))


def check_gradients(fn, inputs, *, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0,
                    fast=False) -> list[InputReport]:
    """Compare analytic and numeric gradients of every differentiable input; never raises on
    a mismatch (see ``gradcheck``). Returns one ``InputReport`` per differentiable input."""
    prob = _Problem(fn, inputs, seed)
    grads = prob.analytic()
    reports = []
    for i, (x, d) in enumerate(zip(prob.values, prob.diff)):
        if not d:
            continue
        if not fast:
            numeric = _numeric_full(prob, i, eps)
            reports.append(_compare(i, x.shape, grads[i], numeric, atol, rtol,
                                    lambda k, s=x.shape: np.unravel_index(k, s) if s else ()))
            continue
        u = prob.rng.standard_normal(x.shape)
        u /= np.linalg.norm(u) or 1.0
        base = x.copy()
        prob.values[i] = base + eps * u
        up = prob.loss(prob.values)
        prob.values[i] = base - eps * u
        down = prob.loss(prob.values)
        prob.values[i] = base
        numeric = np.array([(up - down) / (2 * eps)])
        analytic = np.array([np.sum(grads[i] * u)])
        reports.append(_compare(i, x.shape, analytic, numeric, atol, rtol, lambda k: ()))
    return reports


def gradcheck(fn, inputs, *, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, raise_exception=True,
              fast=False) -> bool:
    """Check fn's backward against central differences in float64.

    ``inputs``: float arrays or Tensors; Tensors with ``requires_grad=False`` are passed
    through as constants. Inputs are copied to float64 before the check. Returns True, or
    raises ``GradcheckError`` naming the input, the worst element's index, the analytic and
    numeric values and the absolute and relative errors (returns False instead when
    ``raise_exception=False``). ``fast=True`` checks a random direction per input.
    """
    for r in check_gradients(fn, inputs, eps=eps, atol=atol, rtol=rtol, seed=seed, fast=fast):
        if r.passed:
            continue
        where = ("along a random direction" if fast
                 else f"at index {tuple(map(int, r.worst_index))}")
        msg = (f"gradcheck: gradient of input {r.input_index} (shape {r.shape}) is wrong {where}:"
               f" analytic {r.analytic:.8g}, numeric {r.numeric:.8g},"
               f" abs err {r.worst_abs_err:.3g}, rel err {r.worst_rel_err:.3g}"
               f" (atol={atol}, rtol={rtol}; {r.n_bad} element(s) out of tolerance)")
        if raise_exception:
            raise GradcheckError(msg, input_index=r.input_index, index=r.worst_index,
                                 analytic=r.analytic, numeric=r.numeric, abs_err=r.worst_abs_err,
                                 rel_err=r.worst_rel_err)
        return False
    return True
