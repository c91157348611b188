"""The knowledge-distillation loss (Hinton et al.): a student's logits pulled towards a frozen
teacher's softened distribution, mixed with the ordinary cross-entropy on the data.

Shapes: N = positions (rows), V = vocabulary. z_s = student logits (N, V), a graph input;
z_t = teacher logits (N, V), a constant (no gradient flows into the teacher); y = targets (N,).

    p_s = softmax(z_s / T),  p_t = softmax(z_t / T)        temperature T > 0, per row
    log p = z / T - max(z / T) - log sum exp(z / T - max(z / T))    (max subtracted: stable)

    forward KL   KL_i = KL(p_t || p_s) = sum_j p_t,ij (log p_t,ij - log p_s,ij)
    reverse KL   KL_i = KL(p_s || p_t) = sum_j p_s,ij (log p_s,ij - log p_t,ij)
    KL           = (1/n) sum_{i kept} KL_i        n = rows whose target is not ignore_index
    loss         = alpha T^2 KL + (1 - alpha) CE(z_s, y)

The T^2 keeps the soft term's gradient on the scale of the hard one as T grows (the
gradients below carry a 1/T, and the soft targets' differences shrink like 1/T).

Backward of the KL node, per kept row i (g = dloss / n):

    forward:  dKL_i / dz_s,ik = (p_s,ik - p_t,ik) / T
        (log p_s,j = a_j - lse(a) with a = z_s / T, so d log p_s,j / da_k = [j = k] - p_s,k
        and -sum_j p_t,j ([j = k] - p_s,k) = p_s,k - p_t,k since sum_j p_t,j = 1)
    reverse:  dKL_i / dz_s,ik = p_s,ik (d_ik - KL_i) / T,   d_ij = log p_s,ij - log p_t,ij
        (dKL/da_k = sum_j (d p_s,j / da_k) d_j + sum_j p_s,j (d log p_s,j / da_k)
                  = sum_j p_s,j ([j = k] - p_s,k) d_j + (p_s,k - p_s,k)
                  = p_s,k (d_k - KL))

Ignored rows get no gradient; if every row is ignored KL is 0 (not 0/0). The row sums
accumulate in float64; the result has the student logits' dtype. Non-finite logits raise
ValueError (a -inf teacher logit would make the reverse KL infinite and the forward one
0 * inf); T <= 0, alpha outside [0, 1] and an unknown kind raise ValueError naming them.
Both terms are always computed, so alpha = 0 is plain cross-entropy plus an exact zero
(the same gradient bit for bit) and alpha = 1 is the soft term alone.

The backward pass is derived step by step in docs/derivations/distillation.md.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from .tensor import Function, Tensor

KINDS = ("forward", "reverse")


def _log_softmax_rows(a: np.ndarray) -> np.ndarray:
    """log softmax over the last axis of (N, V), max subtracted, in a's dtype."""
    s = a - a.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


class DistillKL(Function):
    """The mean KL term over the kept rows as one graph node (see the module docstring).
    ``apply(z_s, z_t, keep, T=, kind=)``: z_s a Tensor (N, V); z_t an array (N, V) of the same
    dtype; keep bool (N,). Returns a 0-d tensor."""

    @staticmethod
    def forward(ctx, zs, zt, keep, T, kind):
        t = zs.dtype.type(T)
        logp_s = _log_softmax_rows(zs / t)                              # (N, V)
        logp_t = _log_softmax_rows(zt / t)                              # (N, V)
        p_s = np.exp(logp_s)
        d = logp_t - logp_s if kind == "forward" else logp_s - logp_t   # (N, V)
        w = np.exp(logp_t) if kind == "forward" else p_s                # the averaging p
        kl = (w * d).sum(axis=1)                                        # (N,) KL_i
        n = int(keep.sum())
        ctx.saved = (p_s, w, d, kl, keep, n, t, kind)
        if n == 0:
            return np.zeros((), zs.dtype)
        return np.asarray(np.sum(kl[keep], dtype=np.float64) / n, dtype=zs.dtype)

    @staticmethod
    def backward(ctx, dout):
        p_s, w, d, kl, keep, n, t, kind = ctx.saved
        if n == 0:
            return np.zeros_like(p_s), None, None
        g = np.asarray(dout, p_s.dtype) / p_s.dtype.type(n) / t         # () dloss / (n T)
        if kind == "forward":
            dz = (p_s - w) * g                                          # (p_s - p_t) / T
        else:
            dz = p_s * (d - kl[:, None]) * g                            # p_s (d - KL) / T
        dz[~keep] = 0
        return dz, None, None


def _rows(x, name, op):
    """x (..., V) as (N, V), keeping a Tensor a Tensor."""
    if x.ndim < 1:
        raise ShapeError(f"{op}: {name} must be (..., V), got a 0-d value")
    return x.reshape((-1, x.shape[-1])) if x.ndim != 2 else x


def check_settings(T, alpha, kind, op: str = "distill_loss") -> None:
    """ValueError naming the bad setting: T a finite number > 0, alpha in [0, 1], kind one of
    KINDS."""
    if isinstance(T, bool) or not isinstance(T, (int, float)) or not math.isfinite(T) \
            or T <= 0:
        raise ValueError(f"{op}: the temperature T must be a finite number > 0, got {T!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) \
            or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{op}: alpha must be a number in [0, 1], got {alpha!r}")
    if kind not in KINDS:
        raise ValueError(f"{op}: kind must be one of {', '.join(KINDS)}, got {kind!r}")


def distill_kl(student_logits, teacher_logits, T: float = 1.0, kind: str = "forward",
               targets=None, ignore_index: int = -100) -> Tensor:
    """The mean per-position KL term alone (no T^2, no cross-entropy): forward
    KL(p_t || p_s) or reverse KL(p_s || p_t) at temperature T. Logits (..., V); rows whose
    ``targets`` entry equals ``ignore_index`` are left out (every row counts without
    ``targets``)."""
    op = "distill_kl"
    check_settings(T, 0.0, kind, op)
    zs = student_logits if isinstance(student_logits, Tensor) else Tensor(student_logits)
    zs = _rows(zs, "student_logits", op)
    zt = teacher_logits.data if isinstance(teacher_logits, Tensor) else teacher_logits
    zt = np.asarray(zt)
    if zt.dtype.kind != "f":
        raise TypeError(f"{op}: teacher_logits must be floats, got {zt.dtype}")
    if zs.dtype.kind != "f":
        raise TypeError(f"{op}: student_logits must be floats, got {zs.dtype}")
    zt = _rows(zt, "teacher_logits", op)
    if zt.shape != zs.shape:
        raise ShapeError(f"{op}: teacher_logits {zt.shape} and student_logits {zs.shape} "
                         f"differ (as rows (N, V)); the two models must share the vocabulary "
                         f"and see the same positions")
    zt = np.ascontiguousarray(zt, dtype=zs.dtype)
    for name, a in (("student_logits", zs.data), ("teacher_logits", zt)):
        if not np.isfinite(a).all():
            raise ValueError(f"{op}: {name} holds NaN or inf; the KL needs finite logits")
    if targets is None:
        keep = np.ones(zs.shape[0], bool)
    else:
        y = np.asarray(targets.data if isinstance(targets, Tensor) else targets).reshape(-1)
        if y.shape != (zs.shape[0],):
            raise ShapeError(f"{op}: targets hold {y.size} positions but the logits "
                             f"{zs.shape[0]}")
        keep = y != ignore_index
    return DistillKL.apply(zs, zt, keep, T=float(T), kind=kind)


def distill_loss(student_logits, teacher_logits, targets, T: float = 1.0, alpha: float = 0.5,
                 kind: str = "forward", ignore_index: int = -100) -> Tensor:
    """alpha T^2 KL + (1 - alpha) CE(student_logits, targets) (the module docstring).

    student_logits (..., V) a Tensor; teacher_logits (..., V) the same shape, a constant (a
    Tensor's data is used, never its graph); targets int (...,), ``ignore_index`` rows left
    out of both terms. kind "forward" = KL(teacher_T || student_T), "reverse" =
    KL(student_T || teacher_T). Returns a 0-d Tensor in the student logits' dtype."""
    from .functional import cross_entropy
    check_settings(T, alpha, kind)
    zs = student_logits if isinstance(student_logits, Tensor) else Tensor(student_logits)
    zs = _rows(zs, "student_logits", "distill_loss")
    y = np.asarray(targets.data if isinstance(targets, Tensor) else targets).reshape(-1)
    kl = distill_kl(zs, teacher_logits, T, kind, y, ignore_index)
    ce = cross_entropy(zs, y, ignore_index=ignore_index)
    return kl * float(alpha * T * T) + ce * float(1.0 - alpha)


__all__ = ["distill_loss", "distill_kl", "DistillKL", "check_settings", "KINDS"]
