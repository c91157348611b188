"""The op registry: every differentiable op with sample inputs, for checks and teaching.

Each ``OpInfo`` names an op and knows how to draw a sample: float64 input arrays of random
shapes plus the op applied to Tensors, and a NumPy version of the forward for value checks.
One parametrised test gradchecks every entry; ``tinyllm gradcheck`` prints a table over them.

The fused kernels (softmax, cross_entropy, layer_norm, mlp, attention, decode_attention,
additive_attention) are reached through ``tl.functional``, so a check runs whichever
implementation the kernel registry picks (NumPy reference or Numba).

Samples keep away from points where an op is not differentiable (relu at 0, ties in max,
division by ~0, log and sqrt of non-positive numbers), where finite differences mean nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import special

from . import functional as F
from . import ops


@dataclass
class Sample:
    fn: Callable            # fn(*tensors) -> Tensor
    inputs: list            # float64 arrays, one per differentiable input
    ref: Callable | None    # ref(*arrays) -> ndarray, the same math in NumPy
    note: str = ""          # e.g. the axis or index used

    @property
    def shapes(self) -> str:
        return " ".join("x".join(map(str, x.shape)) or "()" for x in self.inputs)


@dataclass
class OpInfo:
    name: str
    sample: Callable[[np.random.Generator], Sample]


def _shape(rng, ndim=None, lo=1, hi=5):
    ndim = rng.integers(1, 4) if ndim is None else ndim
    return tuple(int(n) for n in rng.integers(lo, hi + 1, size=ndim))


def _broadcast_pair(rng):
    """Two shapes that broadcast: some dims set to 1, some leading dims dropped."""
    full = _shape(rng, rng.integers(1, 4))
    a = tuple(1 if rng.random() < 0.3 else n for n in full)
    b = tuple(1 if rng.random() < 0.3 else n for n in full)
    b = b[rng.integers(0, len(b)):] or b
    return a, b


def _away_from_zero(rng, shape, lo=0.3):
    return rng.uniform(lo, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)


def _positive(rng, shape):
    return rng.uniform(0.3, 3.0, size=shape)


def _binary(fn, ref, b_gen=None):
    def sample(rng):
        sa, sb = _broadcast_pair(rng)
        b = b_gen(rng, sb) if b_gen else rng.standard_normal(sb)
        return Sample(fn, [rng.standard_normal(sa), b], ref)
    return sample


def _unary(fn, ref, gen=None):
    def sample(rng):
        s = _shape(rng)
        return Sample(fn, [gen(rng, s) if gen else rng.standard_normal(s)], ref)
    return sample


def _matmul(rng):
    m, k, n = (int(v) for v in rng.integers(1, 5, size=3))
    kind = rng.integers(0, 4)
    if kind == 0:      # batched, broadcast batch dims
        sa, sb = (2, 1, m, k), (3, k, n)
    elif kind == 1:    # plain 2-d
        sa, sb = (m, k), (k, n)
    elif kind == 2:    # 1-d @ batched
        sa, sb = (k,), (2, k, n)
    else:              # batched @ 1-d
        sa, sb = (2, m, k), (k,)
    return Sample(lambda a, b: a @ b, [rng.standard_normal(sa), rng.standard_normal(sb)],
                  lambda a, b: a @ b)


def _linear(rng):
    n, i, o = (int(v) for v in rng.integers(1, 6, size=3))
    if rng.random() < 0.5:                 # x @ W + b, one node (ops.Linear)
        return Sample(F.linear, [rng.standard_normal((n, i)), rng.standard_normal((i, o)),
                                 rng.standard_normal(o)], lambda x, w, b: x @ w + b)
    return Sample(lambda x, w: F.linear(x, w), [rng.standard_normal((n, i)),
                                                rng.standard_normal((i, o))],
                  lambda x, w: x @ w, note="no bias")


def _split_heads(rng):
    B, T, H, hs = (int(v) for v in rng.integers(1, 4, size=4))

    def fn(z):                      # the three outputs weighted differently, so a swap shows
        q, k, v = ops.split_heads(z, B, T, H, hs)
        return q + 2.0 * k + 3.0 * v

    def ref(z):
        p = z.reshape(B, T, 3, H, hs).transpose(2, 0, 3, 1, 4)   # (3, B, H, T, hs)
        return p[0] + 2.0 * p[1] + 3.0 * p[2]
    return Sample(fn, [rng.standard_normal((B * T, 3 * H * hs))], ref,
                  note=f"B={B} T={T} H={H} hs={hs}")


def _reduction(method, ref):
    def sample(rng):
        x = rng.standard_normal(_shape(rng, rng.integers(1, 4), lo=2))
        axis = None if rng.random() < 0.25 else int(rng.integers(-x.ndim, x.ndim))
        keep = bool(rng.random() < 0.5)
        return Sample(lambda t: getattr(t, method)(axis=axis, keepdims=keep), [x],
                      lambda a: ref(a, axis=axis, keepdims=keep), f"axis={axis} keepdims={keep}")
    return sample


def _pow(rng):
    p = float(rng.choice([2, 3, 0.5, -1.5]))
    return Sample(lambda t: t ** p, [_positive(rng, _shape(rng))], lambda a: a ** p, f"p={p}")


def _getitem(rng):
    x = rng.standard_normal((5, 4, 3))
    idx = rng.integers(0, 5, size=7)     # repeats on purpose: the backward must add them up
    key = (idx, slice(1, None), None, 2)
    return Sample(lambda t: t[key], [x], lambda a: a[key], "[int array, 1:, None, 2]")


def _transpose(rng):
    x = rng.standard_normal(_shape(rng, 3))
    axes = tuple(int(a) for a in rng.permutation(3))
    return Sample(lambda t: t.transpose(axes), [x], lambda a: a.transpose(axes), f"{axes}")


def _reshape(rng):
    x = rng.standard_normal(_shape(rng, 3))
    return Sample(lambda t: t.reshape(-1, x.shape[-1]), [x],
                  lambda a: a.reshape(-1, x.shape[-1]))


def _concat(rng):
    xs = [rng.standard_normal((2, int(n), 3)) for n in rng.integers(1, 4, size=3)]
    return Sample(lambda *ts: ops.concat(ts, axis=1), xs, lambda *a: np.concatenate(a, 1))


def _stack(rng):
    xs = [rng.standard_normal((2, 3)) for _ in range(3)]
    return Sample(lambda *ts: ops.stack(ts, axis=-1), xs, lambda *a: np.stack(a, -1))


def _split(rng):
    x = rng.standard_normal((3, 6))
    return Sample(lambda t: ops.split(t, [1, 4], axis=1)[1] * ops.split(t, 3, axis=1)[0].sum(),
                  [x], lambda a: a[:, 1:4] * a[:, :2].sum())


def _where(rng):
    sa, sb = _broadcast_pair(rng)
    cond = rng.random(np.broadcast_shapes(sa, sb)) < 0.5
    return Sample(lambda a, b: ops.where(cond, a, b),
                  [rng.standard_normal(sa), rng.standard_normal(sb)],
                  lambda a, b: np.where(cond, a, b))


def _masked_fill(rng):
    x = rng.standard_normal((3, 4))
    mask = rng.random((1, 4)) < 0.5
    return Sample(lambda t: ops.masked_fill(t, mask, -2.0), [x], lambda a: np.where(mask, -2.0, a))


def _embedding(rng):
    idx = rng.integers(0, 6, size=(2, 5))
    return Sample(lambda w: ops.embedding(idx, w), [rng.standard_normal((6, 3))],
                  lambda w: w[idx])


def _dropout(rng):
    seed = int(rng.integers(0, 2**31))
    x = rng.standard_normal((4, 5))
    # a fresh Generator with the same seed per call: the same mask on every evaluation
    return Sample(lambda t: ops.dropout(t, 0.3, True, np.random.default_rng(seed)), [x], None,
                  "p=0.3")


def _np_softmax(a, axis=-1):
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _np_log_softmax(a, axis=-1):
    m = a.max(axis=axis, keepdims=True)
    return a - m - np.log(np.exp(a - m).sum(axis=axis, keepdims=True))


def _softmax_like(fn, ref):
    def sample(rng):
        x = rng.standard_normal(_shape(rng, rng.integers(1, 4), lo=2)) * 3
        axis = int(rng.integers(-x.ndim, x.ndim))
        return Sample(lambda t: fn(t, axis=axis), [x], lambda a: ref(a, axis=axis), f"axis={axis}")
    return sample


def _cross_entropy(rng):
    N, V = int(rng.integers(2, 7)), int(rng.integers(2, 9))
    t = rng.integers(0, V, size=N)
    t[0] = -100                           # one ignored row
    keep = t != -100
    return Sample(lambda x: F.cross_entropy(x, t), [rng.standard_normal((N, V))],
                  lambda x: -_np_log_softmax(x)[keep, t[keep]].mean(), "ignore_index=-100")


def _np_layer_norm(x, w, b, eps=1e-5):
    xc = x - x.mean(-1, keepdims=True)
    return xc / np.sqrt((xc * xc).mean(-1, keepdims=True) + eps) * w + b


def _distill(kind):
    """alpha T^2 KL + (1 - alpha) CE against a constant teacher (tl.functional.distill_loss)."""
    def sample(rng):
        N, V = int(rng.integers(2, 7)), int(rng.integers(2, 9))
        t = rng.integers(0, V, size=N)
        t[0] = -100                       # one ignored row (left out of both terms)
        keep = t != -100
        zt = rng.standard_normal((N, V)) * 2
        T, alpha = float(rng.uniform(0.5, 3.0)), float(rng.uniform(0.0, 1.0))

        def ref(x):
            ls, lt = _np_log_softmax(x / T)[keep], _np_log_softmax(zt / T)[keep]
            p, q = (np.exp(lt), np.exp(ls)) if kind == "forward" else (np.exp(ls), np.exp(lt))
            kl = (p * (np.log(p) - np.log(q))).sum(axis=1).mean()
            ce = -_np_log_softmax(x)[keep, t[keep]].mean()
            return alpha * T * T * kl + (1 - alpha) * ce
        return Sample(lambda x: F.distill_loss(x, zt, t, T=T, alpha=alpha, kind=kind),
                      [rng.standard_normal((N, V)) * 2], ref, f"T={T:.2f} alpha={alpha:.2f}")
    return sample


def _layer_norm(rng):
    s = _shape(rng, rng.integers(1, 4), lo=2)
    C = s[-1]
    return Sample(F.layer_norm, [rng.standard_normal(s), rng.standard_normal(C),
                                 rng.standard_normal(C)], _np_layer_norm)


def _np_gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _mlp(rng):
    N, C, Hd = 3, 4, 6
    arrays = [rng.standard_normal(s) * 0.5 for s in [(N, C), (C, Hd), (Hd,), (Hd, C), (C,)]]
    return Sample(F.mlp, arrays,
                  lambda x, W1, b1, W2, b2: _np_gelu_tanh(x @ W1 + b1) @ W2 + b2)


def _np_attention(q, k, v, causal=True, scale=None, length=None):
    """softmax(q k^T * scale [+ causal mask]) v in NumPy; ``length`` keeps the first keys."""
    if length is not None:
        k, v = k[..., :length, :], v[..., :length, :]
    c = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ np.swapaxes(k, -1, -2) * c                                   # (B, H, Tq, Tk)
    if causal:
        Tq, Tk = s.shape[-2:]
        s = np.where(np.tril(np.ones((Tq, Tk), bool), Tk - Tq), s, -np.inf)
    return _np_softmax(s) @ v


def _attention(rng):
    B, H, T, hs = 1, int(rng.integers(1, 3)), int(rng.integers(2, 6)), int(rng.integers(2, 5))
    causal = bool(rng.random() < 0.75)
    qkv = [rng.standard_normal((B, H, T, hs)) for _ in range(3)]
    return Sample(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=causal),
                  qkv, lambda q, k, v: _np_attention(q, k, v, causal), f"causal={causal}")


def _decode_attention(rng):
    B, H, Lmax, hs = 1, 2, 5, int(rng.integers(2, 5))
    L = int(rng.integers(1, Lmax + 1))
    arrays = [rng.standard_normal((B, H, 1, hs)), rng.standard_normal((B, H, Lmax, hs)),
              rng.standard_normal((B, H, Lmax, hs))]
    return Sample(lambda q, k, v: F.decode_attention(q, k, v, L), arrays,
                  lambda q, k, v: _np_attention(q, k, v, causal=False, length=L),
                  f"length={L}")


def _np_additive_attention(h, x, W_q, W_k, v_a, mask):
    """The document's eq. 4.2 in NumPy: (c, alpha), with alpha over positions where mask."""
    e = np.tanh((h @ W_q)[:, None, :] + x @ W_k) @ v_a                  # (B, S)
    alpha = _np_softmax(np.where(mask, e, -np.inf))
    return (alpha[:, :, None] * x).sum(1), alpha


def _additive_attention(rng):
    B, S, Dh, Dx, A = 2, int(rng.integers(2, 5)), 3, 4, 3
    mask = np.ones((B, S), bool)
    mask[1, S - 1] = False                   # one padded position: its alpha is exactly 0
    arrays = [rng.standard_normal(s) * 0.7 for s in [(B, Dh), (B, S, Dx), (Dh, A), (Dx, A),
                                                     (A,)]]

    def fn(h, x, W_q, W_k, v_a):             # both outputs, so both backward paths count
        c, alpha = F.additive_attention(h, x, W_q, W_k, v_a, mask)
        return ops.concat([c, alpha], axis=1)

    def ref(*a):
        c, alpha = _np_additive_attention(*a, mask)
        return np.concatenate([c, alpha], axis=1)
    return Sample(fn, arrays, ref, "masked, out (c, alpha)")


OPS: list[OpInfo] = [
    OpInfo("add", _binary(lambda a, b: a + b, np.add)),
    OpInfo("sub", _binary(lambda a, b: a - b, np.subtract)),
    OpInfo("mul", _binary(lambda a, b: a * b, np.multiply)),
    OpInfo("div", _binary(lambda a, b: a / b, np.divide, _away_from_zero)),
    OpInfo("neg", _unary(lambda a: -a, np.negative)),
    OpInfo("pow", _pow),
    OpInfo("matmul", _matmul),
    OpInfo("linear", _linear),
    OpInfo("split_heads", _split_heads),
    OpInfo("exp", _unary(ops.exp, np.exp)),
    OpInfo("log", _unary(ops.log, np.log, _positive)),
    OpInfo("sqrt", _unary(ops.sqrt, np.sqrt, _positive)),
    OpInfo("tanh", _unary(ops.tanh, np.tanh)),
    OpInfo("sigmoid", _unary(ops.sigmoid, special.expit)),
    OpInfo("relu", _unary(ops.relu, lambda a: np.maximum(a, 0), _away_from_zero)),
    OpInfo("gelu_tanh", _unary(ops.gelu, _np_gelu_tanh)),
    OpInfo("gelu_erf", _unary(lambda t: ops.gelu(t, approximate="none"),
                              lambda a: 0.5 * a * (1 + special.erf(a / np.sqrt(2))))),
    OpInfo("sum", _reduction("sum", np.sum)),
    OpInfo("mean", _reduction("mean", np.mean)),
    OpInfo("max", _reduction("max", np.max)),
    OpInfo("var", _reduction("var", np.var)),
    OpInfo("reshape", _reshape),
    OpInfo("transpose", _transpose),
    OpInfo("swapaxes", lambda rng: Sample(lambda t: t.swapaxes(0, -1),
                                          [rng.standard_normal((2, 3, 4))],
                                          lambda a: a.swapaxes(0, -1))),
    OpInfo("T", lambda rng: Sample(lambda t: t.T, [rng.standard_normal((2, 3, 4))],
                                   lambda a: a.T)),
    OpInfo("getitem", _getitem),
    OpInfo("concat", _concat),
    OpInfo("stack", _stack),
    OpInfo("split", _split),
    OpInfo("where", _where),
    OpInfo("masked_fill", _masked_fill),
    OpInfo("embedding", _embedding),
    OpInfo("dropout", _dropout),
    OpInfo("softmax", _softmax_like(F.softmax, _np_softmax)),
    OpInfo("log_softmax", _softmax_like(F.log_softmax, _np_log_softmax)),
    OpInfo("cross_entropy", _cross_entropy),
    OpInfo("distill_forward", _distill("forward")),
    OpInfo("distill_reverse", _distill("reverse")),
    OpInfo("layer_norm", _layer_norm),
    OpInfo("mlp", _mlp),
    OpInfo("attention", _attention),
    OpInfo("decode_attention", _decode_attention),
    OpInfo("additive_attention", _additive_attention),
]

BY_NAME = {op.name: op for op in OPS}
