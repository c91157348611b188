"""PyTorch as an independent oracle: random op compositions, built twice, compared exactly.

Each seeded case grows a small expression graph one random op at a time, in tinyllm and, with
the same float64 data, in PyTorch: matmul (2-D, batched with broadcast, 1-D operands),
broadcasting add/sub/mul/div, tanh, exp, softmax, log_softmax, layer_norm, GELU (tanh and
exact), getitem with integer arrays, concat/stack, where/masked_fill, var, max, mean, reshape
and transposes. Values are compared after every op, then the graph ends in either a
cross-entropy with ignored rows or a random upstream gradient, and every input's gradient is
compared. Intermediate values are reused, so some tensors fan out to several consumers.

Skipped as a whole when torch is not installed.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pytest

import tinyllm as tl

torch = pytest.importorskip("torch")
TF = torch.nn.functional
F = tl.functional

pytestmark = pytest.mark.torch

RTOL, ATOL = 1e-10, 1e-12
N_CASES = 30


@pytest.fixture(autouse=True, scope="module")
def _few_threads():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


class V(NamedTuple):
    """One value in both worlds: the tinyllm Tensor and the torch tensor."""
    tl: tl.Tensor
    pt: "torch.Tensor"

    @property
    def shape(self):
        return self.tl.shape

    @property
    def data(self):
        return self.tl.data


def _pt(arr):
    return torch.as_tensor(np.asarray(arr))


def assert_close(a: np.ndarray, b: np.ndarray, what: str) -> None:
    assert a.shape == b.shape, f"{what}: shape {a.shape} (tinyllm) != {b.shape} (torch)"
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=what)


def _no_ties_at_max(arr: np.ndarray, axis) -> bool:
    m = np.max(arr, axis=axis, keepdims=True)
    return bool(((arr == m).sum(axis=axis) == 1).all())


class Graph:
    """Builds one random expression in tinyllm and torch side by side."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng([seed, 1234])
        self.leaves: list[tuple[str, V]] = []
        self.pool: list[V] = []       # every value so far, for reuse (fan-out)
        self.trace: list[str] = []

    def leaf(self, shape, lo=None, hi=None, scale=1.0) -> V:
        if lo is None:
            arr = self.rng.standard_normal(shape) * scale
        else:
            arr = self.rng.uniform(lo, hi, size=shape)
        v = V(tl.Tensor(arr.copy(), requires_grad=True),
              torch.tensor(arr, dtype=torch.float64, requires_grad=True))
        self.leaves.append((f"leaf{len(self.leaves)}{tuple(shape)}", v))
        return v

    def other_like(self, h: V) -> V:
        """A second operand of h's shape: an earlier value (fan-out) or a fresh input."""
        same = [p for p in self.pool if p.shape == h.shape and p is not h]
        if same and self.rng.random() < 0.6:
            return same[self.rng.integers(len(same))]
        return self.leaf(h.shape)

    def bcast_shape(self, h: V) -> tuple:
        N, C = h.shape
        shapes = [(C,), (1, C), (N, 1), (N, C), (), (1, 1)]
        return shapes[self.rng.integers(len(shapes))]

    def record(self, name: str, v: V) -> V:
        self.trace.append(f"{name} -> {v.shape}")
        assert v.tl.dtype == np.float64, f"{name} gave {v.tl.dtype}"
        assert_close(v.tl.data, v.pt.detach().numpy(), f"forward after {self.trace}")
        self.pool.append(v)
        return v


# --- the ops: each maps the current (N, C) value to a new 2-D value ----------------------


def op_matmul(g, h):
    W = g.leaf((h.shape[1], int(g.rng.integers(2, 6))), scale=1 / math.sqrt(h.shape[1]))
    return V(h.tl @ W.tl, h.pt @ W.pt)


def op_batched_matmul(g, h):
    """stack -> (2, N, C) @ W (2 or 1, C, C2) with batch broadcasting -> reduce axis 0."""
    o = g.other_like(h)
    C, C2 = h.shape[1], int(g.rng.integers(2, 6))
    W = g.leaf(((2, 1)[g.rng.integers(2)], C, C2), scale=1 / math.sqrt(C))
    s = V(tl.stack([h.tl, o.tl], axis=0) @ W.tl, torch.stack([h.pt, o.pt], dim=0) @ W.pt)
    if g.rng.random() < 0.5 and _no_ties_at_max(s.data, 0):
        return V(s.tl.max(axis=0), s.pt.amax(dim=0))
    return V(s.tl.mean(axis=0), s.pt.mean(dim=0))


def op_matvec(g, h):
    """(N, C) @ (C,) -> (N,), then [:, None] + (1, C2) broadcasts back to 2-D."""
    v = g.leaf((h.shape[1],))
    b = g.leaf((1, int(g.rng.integers(2, 5))))
    y = h.tl @ v.tl
    return V(y[:, None] + b.tl, (h.pt @ v.pt)[:, None] + b.pt)


def op_vecmat(g, h):
    """(N,) @ (N, C) -> (C,), broadcast back over the rows."""
    u = g.leaf((h.shape[0],), scale=0.5)
    return V(h.tl * (u.tl @ h.tl), h.pt * (u.pt @ h.pt))


def op_add(g, h):
    b = g.leaf(g.bcast_shape(h))
    if g.rng.random() < 0.5:
        return V(b.tl + h.tl, b.pt + h.pt)
    return V(h.tl + b.tl, h.pt + b.pt)


def op_sub(g, h):
    o = g.other_like(h)
    return V(h.tl - o.tl, h.pt - o.pt)


def op_mul(g, h):
    b = g.leaf(g.bcast_shape(h))
    return V(h.tl * b.tl, h.pt * b.pt)


def op_div(g, h):
    d = g.leaf(g.bcast_shape(h), lo=0.5, hi=2.0)
    if g.rng.random() < 0.5:
        return V(h.tl / d.tl, h.pt / d.pt)
    # a Tensor denominator that cannot reach 0, with a scalar on the left of the +
    return V(d.tl / (1.0 + h.tl * h.tl), d.pt / (1.0 + h.pt * h.pt))


def op_tanh(g, h):
    return V(h.tl.tanh(), h.pt.tanh())


def op_exp(g, h):
    if np.abs(h.data).max() > 4:        # keep exp's output O(1)..O(50)
        return V(h.tl.tanh().exp(), h.pt.tanh().exp())
    return V(h.tl.exp(), h.pt.exp())


def op_softmax(g, h):
    axis = int(g.rng.choice([-1, 0]))
    return V(F.softmax(h.tl, axis=axis), torch.softmax(h.pt, dim=axis))


def op_log_softmax(g, h):
    axis = int(g.rng.choice([-1, 0]))
    return V(F.log_softmax(h.tl, axis=axis), torch.log_softmax(h.pt, dim=axis))


def op_layer_norm(g, h):
    C = h.shape[1]
    w, b = g.leaf((C,)), g.leaf((C,))
    eps = float(g.rng.choice([1e-5, 1e-3]))
    return V(F.layer_norm(h.tl, w.tl, b.tl, eps=eps), TF.layer_norm(h.pt, (C,), w.pt, b.pt, eps))


def op_gelu_tanh(g, h):
    return V(F.gelu(h.tl, approximate="tanh"), TF.gelu(h.pt, approximate="tanh"))


def op_gelu_none(g, h):
    return V(F.gelu(h.tl, approximate="none"), TF.gelu(h.pt, approximate="none"))


def op_gather(g, h):
    """Integer-array indexing with repeats and negative indices."""
    N, C = h.shape
    kind = g.rng.integers(3)
    if kind == 0:                                        # rows
        idx = g.rng.integers(-N, N, size=int(g.rng.integers(2, 6)))
        return V(h.tl[idx], h.pt[_pt(idx)])
    if kind == 1:                                        # columns
        idx = g.rng.integers(-C, C, size=int(g.rng.integers(2, 6)))
        return V(h.tl[:, idx], h.pt[:, _pt(idx)])
    rows = g.rng.integers(0, N, size=(int(g.rng.integers(2, 5)), 1))     # (k1, 1)
    cols = g.rng.integers(0, C, size=(1, int(g.rng.integers(2, 5))))     # (1, k2)
    return V(h.tl[rows, cols], h.pt[_pt(rows), _pt(cols)])                # (k1, k2)


def op_concat(g, h):
    if g.rng.random() < 0.5:
        o = g.leaf((h.shape[0], int(g.rng.integers(1, 4))))
        return V(tl.concat([h.tl, o.tl], axis=1), torch.cat([h.pt, o.pt], dim=1))
    o = g.other_like(h)
    return V(tl.concat([o.tl, h.tl, o.tl], axis=0), torch.cat([o.pt, h.pt, o.pt], dim=0))


def op_stack(g, h):
    """stack on the last axis -> (N, C, 2), then reduce that axis again."""
    o = g.other_like(h)
    s = V(tl.stack([h.tl, o.tl], axis=-1), torch.stack([h.pt, o.pt], dim=-1))
    if _no_ties_at_max(s.data, -1):
        return V(s.tl.max(axis=-1) + s.tl.sum(axis=-1),
                 s.pt.amax(dim=-1) + s.pt.sum(dim=-1))
    return V(s.tl.sum(axis=-1), s.pt.sum(dim=-1))


def op_where(g, h):
    N, C = h.shape
    mshape = [(N, C), (N, 1), (1, C)][g.rng.integers(3)]
    mask = g.rng.random(mshape) < 0.4
    o = g.other_like(h)
    return V(tl.where(mask, h.tl, o.tl), torch.where(_pt(mask), h.pt, o.pt))


def op_masked_fill(g, h):
    N, C = h.shape
    mshape = [(N, C), (N, 1), (1, C), (C,)][g.rng.integers(4)]
    mask = g.rng.random(mshape) < 0.3
    value = float(g.rng.choice([0.0, -1.5, 2.25]))
    return V(tl.masked_fill(h.tl, mask, value), h.pt.masked_fill(_pt(mask), value))


def op_var(g, h):
    N = h.shape[0]
    if N > 1 and g.rng.random() < 0.5:
        return V(h.tl * h.tl.var(axis=0, keepdims=True, ddof=1),
                 h.pt * h.pt.var(dim=0, keepdim=True, correction=1))
    return V(h.tl - h.tl.var(axis=-1, keepdims=True), h.pt - h.pt.var(dim=-1, keepdim=True,
                                                                      correction=0))


def op_max(g, h):
    axis = int(g.rng.choice([-1, 0]))
    if _no_ties_at_max(h.data, axis):
        return V(h.tl - h.tl.max(axis=axis, keepdims=True),
                 h.pt - h.pt.amax(dim=axis, keepdim=True))
    return V(h.tl - h.tl.mean(axis=axis, keepdims=True),
             h.pt - h.pt.mean(dim=axis, keepdim=True))


def op_reduce_broadcast(g, h):
    """A reduced (C,) vector broadcast back against the rows; a full max as a scalar."""
    if _no_ties_at_max(h.data.reshape(-1), 0) and g.rng.random() < 0.5:
        return V(h.tl * h.tl.max(), h.pt * h.pt.max())
    return V(h.tl + h.tl.sum(axis=0) * 0.5, h.pt + h.pt.sum(dim=0) * 0.5)


def op_transpose(g, h):
    """(C, N) @ (N, N2) through .T / transpose / swapaxes, transposed back: (N2, C)."""
    N = h.shape[0]
    W = g.leaf((N, int(g.rng.integers(2, 6))), scale=1 / math.sqrt(N))
    kind = g.rng.integers(3)
    ht = h.tl.T if kind == 0 else h.tl.transpose(1, 0) if kind == 1 else h.tl.swapaxes(0, 1)
    return V((ht @ W.tl).transpose(), (h.pt.T @ W.pt).T)


def op_reshape(g, h):
    N, C = h.shape
    return V(h.tl.reshape(C, N).T, h.pt.reshape(C, N).T)


def op_permute3d(g, h):
    """stack -> (2, N, C), permute to (C, 2, N) (not its own inverse), scale, flatten back."""
    o = g.other_like(h)
    N, C = h.shape
    w = g.leaf((1, 2, 1))
    s_tl = (tl.stack([h.tl, o.tl], axis=0).transpose(2, 0, 1) * w.tl)     # (C, 2, N)
    s_pt = (torch.stack([h.pt, o.pt], dim=0).permute(2, 0, 1) * w.pt)
    return V(s_tl.reshape(C, 2 * N).T, s_pt.reshape(C, 2 * N).T)          # (2N, C)


def op_sigmoid(g, h):
    return V(h.tl.sigmoid(), torch.sigmoid(h.pt))


def op_square(g, h):
    return V(h.tl ** 2 * 0.5 + h.tl, h.pt ** 2 * 0.5 + h.pt)


OPS = {f.__name__[3:]: f for f in [
    op_matmul, op_batched_matmul, op_matvec, op_vecmat, op_add, op_sub, op_mul, op_div,
    op_tanh, op_exp, op_softmax, op_log_softmax, op_layer_norm, op_gelu_tanh, op_gelu_none,
    op_gather, op_concat, op_stack, op_where, op_masked_fill, op_var, op_max,
    op_reduce_broadcast, op_transpose, op_reshape, op_permute3d, op_sigmoid, op_square]}
OP_NAMES = sorted(OPS)


def build(seed: int):
    """A random graph whose first op is OP_NAMES[seed % len(OP_NAMES)], so that the cases
    between them start from every op at least once."""
    g = Graph(seed)
    N, C = (int(n) for n in g.rng.integers(2, 6, size=2))
    h = g.record("input", g.leaf((N, C)))
    names = [OP_NAMES[seed % len(OP_NAMES)]]
    names += list(g.rng.choice(OP_NAMES, size=int(g.rng.integers(3, 8))))
    for name in names:
        h = g.record(name, OPS[name](g, h))
    return g, h


def finish(g: Graph, h: V, use_cross_entropy: bool) -> None:
    """Backward through both graphs: a cross-entropy with ignored rows, or a random dy."""
    if use_cross_entropy:
        N, V_ = h.shape
        targets = g.rng.integers(0, V_, size=N)
        targets[g.rng.random(N) < 0.3] = -100
        targets[g.rng.integers(N)] = g.rng.integers(V_)      # at least one row counts
        loss_tl = F.cross_entropy(h.tl, targets, ignore_index=-100)
        loss_pt = TF.cross_entropy(h.pt, _pt(targets), ignore_index=-100)
        assert loss_tl.shape == ()
        assert_close(loss_tl.data, loss_pt.detach().numpy(), f"cross_entropy after {g.trace}")
        loss_tl.backward()
        loss_pt.backward()
    else:
        dy = g.rng.standard_normal(h.shape)
        h.tl.backward(dy)
        h.pt.backward(_pt(dy))


def assert_grads_match(g: Graph) -> None:
    assert g.leaves
    for name, v in g.leaves:
        got = v.tl.grad if v.tl.grad is not None else np.zeros(v.shape)
        want = v.pt.grad.numpy() if v.pt.grad is not None else np.zeros(v.shape)
        assert got.dtype == np.float64
        assert_close(got, want, f"gradient of {name} through {g.trace}")


@pytest.mark.parametrize("seed", range(N_CASES))
def test_random_graph_matches_torch(seed):
    g, h = build(seed)
    assert g.trace[1].startswith(OP_NAMES[seed % len(OP_NAMES)])
    finish(g, h, use_cross_entropy=(seed % 3 == 0))
    assert_grads_match(g)


def test_cases_start_from_every_op():
    """The seeds between them exercise every op in OPS (a new op must not go untested)."""
    assert N_CASES >= len(OP_NAMES), (N_CASES, len(OP_NAMES))


# --- two hand-written compositions the models use ----------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_causal_attention_block_matches_torch(seed):
    """layer_norm -> q, k, v -> masked (-inf) softmax(q k^T / sqrt(hs)) v -> MLP -> residual,
    with (B, T, C) batches and a broadcast causal mask."""
    g = Graph(100 + seed)
    B, T, C = 2, 4, 6
    x = g.leaf((B, T, C))
    w, b = g.leaf((C,)), g.leaf((C,))
    Wq, Wk, Wv = (g.leaf((C, C), scale=C ** -0.5) for _ in range(3))
    W1, b1 = g.leaf((C, 2 * C), scale=C ** -0.5), g.leaf((2 * C,))
    W2, b2 = g.leaf((2 * C, C), scale=(2 * C) ** -0.5), g.leaf((C,))
    future = np.triu(np.ones((T, T), dtype=bool), k=1)                  # (T, T)

    def block(x, w, b, Wq, Wk, Wv, W1, b1, W2, b2, lib):
        if lib == "tl":
            ln, sm, gelu = F.layer_norm, F.softmax, F.gelu
            fill = lambda a, m: tl.masked_fill(a, m, -np.inf)  # noqa: E731
            kT = lambda k: k.swapaxes(-1, -2)  # noqa: E731
        else:
            ln = lambda a, w, b, eps: TF.layer_norm(a, (C,), w, b, eps)  # noqa: E731
            sm = lambda a, axis: torch.softmax(a, dim=axis)  # noqa: E731
            gelu = TF.gelu
            fill = lambda a, m: a.masked_fill(_pt(m), -np.inf)  # noqa: E731
            kT = lambda k: k.transpose(-1, -2)  # noqa: E731
        hx = ln(x, w, b, 1e-5)                                          # (B, T, C)
        q, k, v = hx @ Wq, hx @ Wk, hx @ Wv                             # (B, T, C) each
        att = fill(q @ kT(k) / math.sqrt(C), future)                    # (B,T,C) @ (B,C,T)
        y = sm(att, axis=-1) @ v                                        # (B,T,T) @ (B,T,C)
        return x + gelu(y @ W1 + b1, approximate="tanh") @ W2 + b2      # (B, T, C)

    args = [x, w, b, Wq, Wk, Wv, W1, b1, W2, b2]
    out = V(block(*[a.tl for a in args], lib="tl"), block(*[a.pt for a in args], lib="pt"))
    g.record("block", out)
    dy = g.rng.standard_normal(out.shape)
    out.tl.backward(dy)
    out.pt.backward(_pt(dy))
    assert_grads_match(g)


def test_cross_entropy_with_repeated_targets_and_ignored_rows_matches_torch():
    g = Graph(7)
    N, V_ = 6, 4
    logits = g.leaf((N, V_), scale=3.0)
    targets = np.array([1, -100, 1, 3, -100, 1])
    loss_tl = F.cross_entropy(logits.tl * 2.0, targets, ignore_index=-100)
    loss_pt = TF.cross_entropy(logits.pt * 2.0, _pt(targets), ignore_index=-100)
    assert_close(loss_tl.data, loss_pt.detach().numpy(), "cross_entropy")
    loss_tl.backward()
    loss_pt.backward()
    assert_grads_match(g)
    assert np.all(logits.tl.grad[targets == -100] == 0.0)   # ignored rows get no gradient


@pytest.mark.parametrize("axis", [None, 0, 1, (0, 2)])
def test_max_with_ties_splits_the_gradient_like_torch_amax(axis):
    """Exact ties (kept out of the random graphs): both split the gradient equally."""
    g = Graph(11)
    x = g.leaf((3, 4, 2))
    data = g.rng.integers(0, 3, size=x.shape).astype(np.float64)   # 0, 1, 2: many ties
    assert not _no_ties_at_max(data, axis)
    x.tl.data[...] = data
    with torch.no_grad():
        x.pt.copy_(_pt(data))
    dims = tuple(range(3)) if axis is None else axis
    out = V(x.tl.max(axis=axis), x.pt.amax(dim=dims))
    g.record("max", out)
    dy = g.rng.standard_normal(out.shape)
    out.tl.backward(dy)
    out.pt.backward(_pt(dy))
    assert_grads_match(g)
