"""adam: one Adam / AdamW update of a parameter and its two moments, in place.

For a parameter p with gradient g at step t = 1, 2, ... (PyTorch's single-tensor order):

    Adam  (L2):        g <- g + wd * p                   # the decay joins the gradient
    AdamW (decoupled): p <- p * (1 - lr * wd)            # the decay shrinks p directly
    m <- b1 * m + (1 - b1) * g                           # first moment  (exp_avg)
    v <- b2 * v + (1 - b2) * g * g                       # second moment (exp_avg_sq)
    p <- p - (lr / (1 - b1**t)) * m / (sqrt(v) / sqrt(1 - b2**t) + eps)

The two ``1 - b**t`` factors undo the bias toward zero of moments that start at zero.

    forward(p, g, m, v, *, lr, step, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
            decoupled=False, tmp=None) -> ((p, m, v), None)

p, g, m, v share one shape and one dtype (float32 or float64). p, m and v are updated in
place and returned (the same objects); g is not changed. ``tmp`` is optional scratch of p's
shape and dtype for the reference (an optimiser passes one it reuses); the Numba version
needs none. There is no backward: an update is not differentiated.

Both implementations do the same operations in the same order with every scalar rounded to
the arrays' dtype first, and neither contracts a multiply-add into an FMA, so they agree
bitwise. Memory traffic per element: read p, g, m, v, write p, m, v (7 values).

The backward pass is derived step by step in docs/derivations/adamw.md.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ..errors import ShapeError
from . import Kernel
from ._check import floats
from ._family import GBPS, Family, Size, Work
from ._nb import njit, zero

NAME = "adam"
INPUTS = ("p", "g", "m", "v")


def _check(p, g, m, v, lr, step, tmp):
    floats(NAME, p=p, g=g, m=m, v=v, tmp=tmp)
    for name, a in (("g", g), ("m", m), ("v", v), ("tmp", tmp)):
        if a is not None and a.shape != p.shape:
            raise ShapeError(f"{NAME}: {name} has shape {a.shape} but p has shape {p.shape}")
    for name, a in (("p", p), ("m", m), ("v", v), ("tmp", tmp)):
        if a is not None and not a.flags.writeable:
            raise ValueError(f"{NAME}: {name} is read-only; the update writes it in place")
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 1:
        raise ValueError(f"{NAME}: step must be an integer >= 1 (the update's count), "
                         f"got {step!r}")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise TypeError(f"{NAME}: lr must be a number, got {type(lr).__name__}")


# ---------------------------------------------------------------- NumPy reference

def update_arrays(xp, p, g, m, v, tmp, *, lr, step, beta1, beta2, eps, weight_decay,
                  decoupled):
    """The update itself in array-module ``xp`` code (NumPy here; CuPy, or the simulator's
    stand-in, for the optimisers' device update): p, m, v in place, ``tmp`` scratch."""
    bc1 = 1.0 - beta1 ** step
    bc2_sqrt = math.sqrt(1.0 - beta2 ** step)
    if weight_decay != 0.0:
        if decoupled:
            p *= 1.0 - lr * weight_decay                  # AdamW: p <- p (1 - lr wd)
        else:
            g = g + weight_decay * p                      # Adam: g <- g + wd p (new array)
    m *= beta1                                            # m <- b1 m + (1 - b1) g
    xp.multiply(g, 1.0 - beta1, out=tmp)
    m += tmp
    v *= beta2                                            # v <- b2 v + (1 - b2) g g
    xp.multiply(g, g, out=tmp)
    tmp *= 1.0 - beta2
    v += tmp
    xp.sqrt(v, out=tmp)                                   # denom = sqrt(v) / sqrt(bc2) + eps
    tmp /= bc2_sqrt
    tmp += eps
    xp.divide(m, tmp, out=tmp)                            # p <- p - (lr / bc1) m / denom
    tmp *= lr / bc1
    p -= tmp


def forward_ref(p, g, m, v, *, lr, step, beta1=0.9, beta2=0.999, eps=1e-8,
                weight_decay=0.0, decoupled=False, tmp=None):
    """The specification: in-place ufuncs, one scratch array. The scalars are Python floats,
    which NumPy rounds to the arrays' dtype, so float32 stays float32."""
    _check(p, g, m, v, lr, step, tmp)
    lr, eps, wd = float(lr), float(eps), float(weight_decay)
    beta1, beta2 = float(beta1), float(beta2)
    if tmp is None:
        tmp = np.empty_like(p)
    update_arrays(np, p, g, m, v, tmp, lr=lr, step=step, beta1=beta1, beta2=beta2, eps=eps,
                  weight_decay=wd, decoupled=decoupled)
    return (p, m, v), None


REFERENCE = Kernel(NAME, "numpy", forward_ref, None, INPUTS)


# ---------------------------------------------------------------- Numba CPU
# One serial pass over flat arrays: read p, g, m, v once, write p, m, v once. The scalars
# arrive already rounded to the arrays' dtype (float32 scalars for float32 arrays), so no
# float64 value enters a float32 loop. With the NumPy error model x / 0 gives inf and the
# loop vectorises.

@njit
def _adam_flat(p, g, m, v, decay, l2, b1, c1, b2, c2, bc2_sqrt, eps, step_size):
    """decay = 1 - lr wd (AdamW) or 1; l2 = wd (Adam) or 0; c1 = 1 - b1, c2 = 1 - b2;
    step_size = lr / (1 - b1**t)."""
    for i in range(p.size):
        pi = p[i]
        gi = g[i]
        if l2 != zero(p):
            gi = gi + l2 * pi
        pi = pi * decay
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] = pi - step_size * (mi / (np.sqrt(vi) / bc2_sqrt + eps))


def forward_numba(p, g, m, v, *, lr, step, beta1=0.9, beta2=0.999, eps=1e-8,
                  weight_decay=0.0, decoupled=False, tmp=None):
    """The same update in one pass. Non-contiguous p, m or v are updated through a
    contiguous copy that is written back (same results: the arithmetic is elementwise)."""
    _check(p, g, m, v, lr, step, tmp)
    lr, eps, wd = float(lr), float(eps), float(weight_decay)
    b1, b2 = float(beta1), float(beta2)
    f = p.dtype.type
    pc, mc, vc = (np.ascontiguousarray(a) for a in (p, m, v))
    if p.size:
        decay = f(1.0 - lr * wd) if (decoupled and wd != 0.0) else f(1.0)
        _adam_flat(pc.reshape(-1), np.ascontiguousarray(g).reshape(-1), mc.reshape(-1),
                   vc.reshape(-1), decay, f(0.0) if decoupled else f(wd),
                   f(b1), f(1.0 - b1), f(b2), f(1.0 - b2),
                   f(math.sqrt(1.0 - b2 ** step)), f(eps), f(lr / (1.0 - b1 ** step)))
    for a, c in ((p, pc), (m, mc), (v, vc)):
        if c is not a:
            a[...] = c
    return (p, m, v), None


NUMBA = Kernel(NAME, "numba", forward_numba, None, INPUTS)


# ---------------------------------------------------------------- the family description
# params: n values in one flat parameter; decoupled (AdamW) or L2 (Adam) weight decay wd;
# the update is step t of a run whose moments are already warm.

def _inputs(params, dtype, rng):
    n = int(params["n"])
    p = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    m = (0.1 * rng.standard_normal(n)).astype(dtype)
    v = (0.01 * rng.random(n)).astype(dtype)              # a second moment is >= 0
    opts = dict(lr=1e-3, step=int(params.get("step", 3)), beta1=0.9, beta2=0.95, eps=1e-8,
                weight_decay=float(params.get("wd", 0.1)),
                decoupled=bool(params.get("decoupled", True)))
    return (p, g, m, v), opts


def _work(params, itemsize):
    n = int(params["n"])
    # per element: decay 1, m 3, v 4, denominator 3, m / denominator 1, step 2;
    # L2 decay (Adam) adds 2
    l2 = float(params.get("wd", 0.1)) != 0.0 and not params.get("decoupled", True)
    return Work(flops=((14 + 2 * l2) * n, 0), bytes=(7 * n * itemsize, 0))


def _label(params):
    kind = "adamw" if params.get("decoupled", True) else "adam"
    return f"n {params['n']} {kind} wd {params.get('wd', 0.1)} t {params.get('step', 3)}"


FAMILY = Family(
    name=NAME, inputs=_inputs, work=_work, label=_label, unit=GBPS, sweep="n",
    test_sizes=(Size({"n": 1}), Size({"n": 17, "decoupled": False}),
                Size({"n": 1000, "step": 1}), Size({"n": 333, "wd": 0.0})),
    quick_sizes=(Size({"n": 1 << 16}), Size({"n": 1 << 18})),
    full_sizes=tuple(Size({"n": 1 << k}) for k in (16, 18, 20, 22)),
    torch=None, backward=False)


if __name__ == "__main__":
    from ._harness import run
    run(NAME)
