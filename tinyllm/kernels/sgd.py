"""sgd: one SGD update with momentum of a parameter (and its momentum buffer), in place.

PyTorch's semantics (``torch.optim.SGD``), for a parameter p with gradient g:

    g <- g + wd * p                              # weight_decay is L2, added to the gradient
    if momentum != 0:
        b <- g                                   at the first step (no dampening yet)
        b <- momentum * b + (1 - dampening) * g  afterwards             (momentum_buffer)
        g <- g + momentum * b   if nesterov  else  b
    p <- p - lr * g

lr multiplies the buffer (Sutskever et al. 2013, PyTorch's form); texts that put lr inside
the buffer differ when lr changes during training.

    forward(p, g, buf=None, *, lr, momentum=0.0, dampening=0.0, nesterov=False,
            weight_decay=0.0, first=False, tmp=None) -> ((p, buf), None)  with momentum
                                                     -> ((p,), None)      without

p, g (and buf) share one shape and one dtype (float32 or float64). p and buf are updated in
place and returned (the same objects); g is not changed. ``buf`` is needed when momentum is
not 0 and ignored otherwise; ``first`` says this is its first step, so buf's old contents are
not read. ``tmp`` is optional scratch of p's shape for the reference. No backward.

Both implementations do the same operations in the same order, scalars rounded to the
arrays' dtype, no FMA contraction: they agree bitwise. Memory traffic per element: read p, g
(and buf after the first step), write p (and buf): 3 values, 5 with momentum.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..errors import ShapeError
from . import Kernel
from ._check import floats
from ._family import GBPS, Family, Size, Work
from ._nb import njit, zero

NAME = "sgd"
INPUTS = ("p", "g", "buf")


def _check(p, g, buf, lr, momentum, tmp):
    floats(NAME, p=p, g=g, buf=buf, tmp=tmp)
    for name, a in (("g", g), ("buf", buf), ("tmp", tmp)):
        if a is not None and a.shape != p.shape:
            raise ShapeError(f"{NAME}: {name} has shape {a.shape} but p has shape {p.shape}")
    for name, a in (("p", p), ("buf", buf), ("tmp", tmp)):
        if a is not None and not a.flags.writeable:
            raise ValueError(f"{NAME}: {name} is read-only; the update writes it in place")
    for name, x in (("lr", lr), ("momentum", momentum)):
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            raise TypeError(f"{NAME}: {name} must be a number, got {type(x).__name__}")
    if float(momentum) != 0.0 and buf is None:
        raise ValueError(f"{NAME}: momentum={momentum!r} needs a momentum buffer buf "
                         f"(p's shape), got None")


def _outputs(p, buf, momentum):
    return ((p, buf) if momentum != 0.0 else (p,)), None


# ---------------------------------------------------------------- NumPy reference

def forward_ref(p, g, buf=None, *, lr, momentum=0.0, dampening=0.0, nesterov=False,
                weight_decay=0.0, first=False, tmp=None):
    """The specification: in-place ufuncs, one scratch array, Python-float scalars."""
    _check(p, g, buf, lr, momentum, tmp)
    lr, momentum, dampening = float(lr), float(momentum), float(dampening)
    wd = float(weight_decay)
    if tmp is None:
        tmp = np.empty_like(p)
    if wd != 0.0:
        g = g + wd * p                                    # a new array: g is not changed
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
    return _outputs(p, buf, momentum)


REFERENCE = Kernel(NAME, "numpy", forward_ref, None, INPUTS)


# ---------------------------------------------------------------- Numba CPU
# One serial pass over flat arrays; every scalar arrives rounded to the arrays' dtype.

@njit
def _sgd_flat(p, g, buf, lr, wd, momentum, c, nesterov, first):
    """c = 1 - dampening. ``buf`` is not touched when momentum is 0."""
    for i in range(p.size):
        pi = p[i]
        gi = g[i]
        if wd != zero(p):
            gi = gi + wd * pi
        if momentum != zero(p):
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


def forward_numba(p, g, buf=None, *, lr, momentum=0.0, dampening=0.0, nesterov=False,
                  weight_decay=0.0, first=False, tmp=None):
    """The same update in one pass; non-contiguous p or buf go through a contiguous copy
    that is written back."""
    _check(p, g, buf, lr, momentum, tmp)
    momentum = float(momentum)
    f = p.dtype.type
    pc = np.ascontiguousarray(p)
    bc = np.ascontiguousarray(buf) if momentum != 0.0 else None
    if p.size:
        flat_buf = bc.reshape(-1) if bc is not None else pc.reshape(-1)[:0]
        _sgd_flat(pc.reshape(-1), np.ascontiguousarray(g).reshape(-1), flat_buf,
                  f(lr), f(weight_decay), f(momentum), f(1.0 - float(dampening)),
                  bool(nesterov), bool(first))
    if pc is not p:
        p[...] = pc
    if bc is not None and bc is not buf:
        buf[...] = bc
    return _outputs(p, buf, momentum)


NUMBA = Kernel(NAME, "numba", forward_numba, None, INPUTS)


# ---------------------------------------------------------------- the family description
# params: n values in one flat parameter; momentum (0: no buffer), nesterov, wd, and first
# (the buffer's first step).

def _inputs(params, dtype, rng):
    n = int(params["n"])
    momentum = float(params.get("momentum", 0.9))
    p = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    opts = dict(lr=0.05, momentum=momentum, dampening=0.0,
                nesterov=bool(params.get("nesterov", False)),
                weight_decay=float(params.get("wd", 0.01)), first=bool(params.get("first", False)))
    if momentum == 0.0:
        return (p, g), opts
    return (p, g, rng.standard_normal(n).astype(dtype)), opts


def _work(params, itemsize):
    n = int(params["n"])
    momentum = float(params.get("momentum", 0.9)) != 0.0
    first = bool(params.get("first", False))
    nesterov = bool(params.get("nesterov", False))
    # values moved: p, g read, p written; the buffer is written, and read after step 1
    moved = 3 + (2 - first) * momentum
    # flops: decay 2, buffer 3 (0 at step 1), nesterov 2, step 2
    flops = 2 * (float(params.get("wd", 0.01)) != 0.0) + 2 + momentum * (
        3 * (not first) + 2 * nesterov)
    return Work(flops=(flops * n, 0), bytes=(moved * n * itemsize, 0))


def _label(params):
    m = float(params.get("momentum", 0.9))
    extra = (" nesterov" if params.get("nesterov") else "") + \
        (" first" if params.get("first") else "")
    return f"n {params['n']} momentum {m:g}{extra}"


FAMILY = Family(
    name=NAME, inputs=_inputs, work=_work, label=_label, unit=GBPS, sweep="n",
    test_sizes=(Size({"n": 1}), Size({"n": 17, "momentum": 0.0}),
                Size({"n": 1000, "nesterov": True}), Size({"n": 333, "first": True})),
    quick_sizes=(Size({"n": 1 << 16}), Size({"n": 1 << 18})),
    full_sizes=tuple(Size({"n": 1 << k}) for k in (16, 18, 20, 22)),
    torch=None, backward=False)


if __name__ == "__main__":
    from ._harness import run
    run(NAME)
