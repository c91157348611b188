"""The dense kernels: cross_entropy, layernorm, mlp (every implementation on this machine).

- forward of every implementation against an independent float64 NumPy formula;
- fast implementations against the reference, forward and backward, on random inputs;
- every implementation's backward against central finite differences in float64, with a
  random upstream gradient (never through ``out.sum()``), on every input;
- awkward sizes and values, determinism, non-contiguous inputs, bad input errors;
- PyTorch as an extra oracle where it is installed (``-m torch`` marker, skipped without it).

Tolerances: fast vs reference is measured as max|fast - ref| / max|ref| per array, and must be
<= 1e-10 in float64 (the two differ only in summation order and in libm vs NumPy exp/tanh)
and <= 1e-5 in float32 (float32 rounding, and the float32 exp/tanh polynomials of
``_nb``, <= 1 ulp, accumulated over a row of a few hundred elements).
"""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm.errors import ShapeError
from tinyllm.kernels import Kernel
from tinyllm.kernels._harness import max_rel_err

FAMILIES = ("cross_entropy", "layernorm", "mlp")
DTYPES = (np.float32, np.float64)
TOL = {np.float32: 1e-5, np.float64: 1e-10}     # fast vs reference, see the module docstring

S = np.sqrt(2 / np.pi)


def impls(name):
    return tl.kernels.available(name)


def fast_impls(name):
    return [i for i in tl.kernels.available(name) if i != "numpy"]


def family_impl(fast=False):
    """(family, impl) pairs for parametrize."""
    return [pytest.param(f, i, id=f"{f}-{i}") for f in FAMILIES
            for i in (fast_impls(f) if fast else impls(f))]


# ---------------------------------------------------------------- inputs

def make_inputs(name, dims, dtype, rng):
    """(positional arrays, options) for one family. ``dims`` per family:
    cross_entropy (N, V), layernorm x's shape, mlp (N, C, H, C_out)."""
    if name == "cross_entropy":
        N, V = dims
        z = rng.standard_normal((N, V)) * 3
        t = rng.integers(0, V, size=N)
        if N > 2:
            t[1] = -100                                   # one ignored row
        return (z.astype(dtype), t), {}
    if name == "layernorm":
        C = dims[-1]
        x = rng.standard_normal(dims) * 2 + 0.7
        w = 1 + 0.3 * rng.standard_normal(C)
        b = 0.3 * rng.standard_normal(C)
        return tuple(a.astype(dtype) for a in (x, w, b)), {"eps": 1e-5}
    if name == "mlp":
        N, C, H, Co = dims
        shapes = [(N, C), (C, H), (H,), (H, Co), (Co,)]
        scale = [1.0, C ** -0.5 * 1.5, 0.5, H ** -0.5, 0.5]
        return tuple((rng.standard_normal(s) * f).astype(dtype)
                     for s, f in zip(shapes, scale)), {}
    raise KeyError(name)


SHAPES = {
    "cross_entropy": [(1, 1), (1, 7), (6, 17), (33, 100), (8, 257)],
    "layernorm": [(1, 1), (1, 7), (5, 33), (2, 3, 48), (70, 100)],
    "mlp": [(1, 1, 1, 1), (1, 3, 5, 2), (7, 13, 37, 11), (65, 32, 96, 16)],
}


def family_shape():
    return [pytest.param(f, s, id=f"{f}-{'x'.join(map(str, s))}") for f in FAMILIES
            for s in SHAPES[f]]


def diff_positions(name, args):
    """Which positional arguments are differentiable (backward returns their grads)."""
    return [0] if name == "cross_entropy" else list(range(len(args)))


def upstream(out, rng):
    return rng.standard_normal(np.shape(out)).astype(np.asarray(out).dtype)


# ---------------------------------------------------------------- independent oracles (float64)

def oracle_forward(name, args, opts):
    a = [np.asarray(x, np.float64) if np.asarray(x).dtype.kind == "f" else x for x in args]
    if name == "cross_entropy":
        z, t = a
        ign = opts.get("ignore_index", -100)
        keep = t != ign
        if not keep.any():
            return np.float64(0)
        logp = z - z.max(1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
        return -logp[keep, t[keep]].mean()
    if name == "layernorm":
        x, w, b = a
        xc = x - x.mean(-1, keepdims=True)
        return xc / np.sqrt((xc ** 2).mean(-1, keepdims=True) + opts.get("eps", 1e-5)) * w + b
    if name == "mlp":
        x, W1, b1, W2, b2 = a
        u = x @ W1 + b1
        return 0.5 * u * (1 + np.tanh(S * (u + 0.044715 * u ** 3))) @ W2 + b2
    raise KeyError(name)


# ---------------------------------------------------------------- finite differences

def fd_check(kernel, args, opts, positions, rng, eps=1e-6, rtol=1e-6, atol=1e-8):
    """Central differences of L = sum(out * dy), dy random, for every element of every
    differentiable input (float64). Raises AssertionError on a mismatch."""
    args = list(args)
    out, cache = kernel.forward(*args, **opts)
    dy = upstream(out, rng)
    grads = kernel.backward(dy, cache)

    def L(a):
        o, _ = kernel.forward(*a, **opts)
        return float(np.sum(o * dy))
    for gi, p in enumerate(positions):
        x = args[p]
        num = np.empty(x.shape)
        for idx in np.ndindex(*x.shape):
            old = x[idx]
            x[idx] = old + eps
            up = L(args)
            x[idx] = old - eps
            down = L(args)
            x[idx] = old
            num[idx] = (up - down) / (2 * eps)
        g = grads[gi]
        assert g is not None and g.shape == x.shape, (kernel, p, None if g is None else g.shape)
        scale = max(1.0, float(np.abs(num).max(initial=0)))
        err = np.abs(g - num)
        bad = err > atol * scale + rtol * np.abs(num)
        assert not bad.any(), (f"{kernel} input {p}: worst |analytic - numeric| = "
                               f"{err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)}")


# ---------------------------------------------------------------- forward vs oracle

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("impl", ["numpy", "numba"])
@pytest.mark.parametrize("name,dims", family_shape())
def test_forward_matches_float64_oracle(name, dims, impl, dtype):
    if impl not in impls(name):
        pytest.skip(f"{impl} not available")
    rng = np.random.default_rng(1)
    args, opts = make_inputs(name, dims, dtype, rng)
    out, _ = tl.kernels.get(name, impl).forward(*args, **opts)
    assert out.dtype == dtype
    want = oracle_forward(name, args, opts)
    assert np.shape(out) == np.shape(want)
    # float32: inputs are exact float32 values, so the oracle sees the same problem
    tol = 1e-12 if dtype == np.float64 else 2e-6
    assert max_rel_err(out, want) <= tol


# ---------------------------------------------------------------- fast vs reference

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name,dims", family_shape())
def test_fast_matches_reference(name, dims, dtype):
    fast = fast_impls(name)
    if not fast:
        pytest.skip("no fast implementation here")
    rng = np.random.default_rng(2)
    args, opts = make_inputs(name, dims, dtype, rng)
    ref = tl.kernels.get(name, "numpy")
    out_r, cache_r = ref.forward(*args, **opts)
    dout = upstream(out_r, rng)
    grads_r = ref.backward(dout, cache_r)
    for impl in fast:
        k = tl.kernels.get(name, impl)
        out, cache = k.forward(*args, **opts)
        grads = k.backward(dout, cache)
        assert out.dtype == dtype and out.shape == out_r.shape
        assert len(grads) == len(grads_r) == len(k.inputs)
        for g, gr in zip(grads, grads_r):
            assert g.dtype == dtype and g.shape == gr.shape
        assert max_rel_err(out, out_r) <= TOL[dtype], impl
        for i, (g, gr) in enumerate(zip(grads, grads_r)):
            assert max_rel_err(g, gr) <= TOL[dtype], (impl, k.inputs[i], max_rel_err(g, gr))


# ---------------------------------------------------------------- backward vs finite differences

FD_SHAPES = {
    "cross_entropy": [(1, 1), (1, 5), (5, 7)],
    "layernorm": [(1, 1), (3, 6), (2, 2, 5)],
    "mlp": [(1, 1, 1, 1), (4, 5, 7, 3)],
}


@pytest.mark.parametrize("impl", ["numpy", "numba"])
@pytest.mark.parametrize("name,dims", [pytest.param(f, s, id=f"{f}-{'x'.join(map(str, s))}")
                                       for f in FAMILIES for s in FD_SHAPES[f]])
def test_backward_matches_finite_differences(name, dims, impl):
    if impl not in impls(name):
        pytest.skip(f"{impl} not available")
    rng = np.random.default_rng(3)
    args, opts = make_inputs(name, dims, np.float64, rng)
    k = tl.kernels.get(name, impl)
    fd_check(k, args, opts, diff_positions(name, args), rng)


def test_finite_difference_check_can_fail():
    """The check catches a backward that ignores its upstream gradient (the sum trap), and a
    layernorm dx missing the xhat term."""
    rng = np.random.default_rng(4)
    ce = tl.kernels.get("cross_entropy", "numpy")
    trap = Kernel("cross_entropy", "broken", ce.forward,
                  lambda dloss, cache: ce.backward(np.float64(1.0), cache), ce.inputs)
    args, opts = make_inputs("cross_entropy", (4, 5), np.float64, rng)
    fd_check(ce, args, opts, [0], np.random.default_rng(5))
    with pytest.raises(AssertionError):
        fd_check(trap, args, opts, [0], np.random.default_rng(5))

    ln = tl.kernels.get("layernorm", "numpy")

    def bad_ln_backward(dy, cache):
        x, w, b, mean, rstd = cache
        dx, dw, db = ln.backward(dy, cache)
        g = dy * w
        return rstd[..., None] * (g - g.mean(-1, keepdims=True)), dw, db
    broken = Kernel("layernorm", "broken", ln.forward, bad_ln_backward, ln.inputs)
    args, opts = make_inputs("layernorm", (3, 6), np.float64, rng)
    fd_check(ln, args, opts, [0, 1, 2], np.random.default_rng(6))
    with pytest.raises(AssertionError):
        fd_check(broken, args, opts, [0, 1, 2], np.random.default_rng(6))


# ---------------------------------------------------------------- cross_entropy specifics

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("impl", impls("cross_entropy"))
def test_cross_entropy_large_logits_are_finite(impl, dtype):
    rng = np.random.default_rng(7)
    k = tl.kernels.get("cross_entropy", impl)
    z = (np.sign(rng.standard_normal((9, 33))) * 1e4).astype(dtype)
    z[0, :] = 1e4                                         # a tie at the top
    z[1, :] = -1e4
    t = rng.integers(0, 33, size=9)
    loss, cache = k.forward(z, t)
    (dz,) = k.backward(np.asarray(1.0, dtype), cache)
    assert np.isfinite(loss) and np.isfinite(dz).all()
    want = oracle_forward("cross_entropy", (z, t), {})
    assert abs(float(loss) - want) <= 1e-6 * max(1.0, abs(want))
    # each kept row of dz sums to 0 (softmax minus one-hot)
    np.testing.assert_allclose(dz.sum(1), 0, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("impl", impls("cross_entropy"))
def test_cross_entropy_all_rows_ignored(impl, dtype):
    k = tl.kernels.get("cross_entropy", impl)
    z = np.random.default_rng(8).standard_normal((4, 6)).astype(dtype)
    for t, ign in ((np.full(4, -100), -100), (np.full(4, 3), 3)):
        loss, cache = k.forward(z, t, ignore_index=ign)
        assert loss.shape == () and loss.dtype == dtype and float(loss) == 0.0
        (dz,) = k.backward(np.asarray(2.5, dtype), cache)
        assert dz.dtype == dtype and dz.shape == z.shape
        assert not np.isnan(dz).any() and (dz == 0).all()
    loss, cache = k.forward(np.zeros((0, 5), dtype), np.zeros(0, np.int64))
    assert float(loss) == 0.0 and k.backward(1.0, cache)[0].shape == (0, 5)


@pytest.mark.parametrize("impl", impls("cross_entropy"))
def test_cross_entropy_some_rows_ignored(impl):
    rng = np.random.default_rng(9)
    k = tl.kernels.get("cross_entropy", impl)
    z = rng.standard_normal((10, 19))
    t = rng.integers(0, 19, size=10).astype(np.int32)
    ign = [0, 3, 4, 9]
    t[ign] = -1
    loss, cache = k.forward(z, t, ignore_index=-1)
    keep = np.setdiff1d(np.arange(10), ign)
    want = oracle_forward("cross_entropy", (z[keep], t[keep]), {})
    assert abs(float(loss) - want) < 1e-12
    (dz,) = k.backward(np.asarray(1.7), cache)
    assert (dz[ign] == 0).all() and (dz[keep] != 0).all()
    # the kept rows' gradient is the one of the kept rows alone
    _, c2 = k.forward(z[keep], t[keep], ignore_index=-1)
    np.testing.assert_allclose(dz[keep], k.backward(np.asarray(1.7), c2)[0], rtol=1e-13)
    # fully ignored (and out-of-range-valued) targets do not raise; unsigned targets work
    k.forward(z, np.full(10, -1), ignore_index=-1)
    k.forward(z, np.arange(10, dtype=np.uint8))


@pytest.mark.parametrize("impl", impls("cross_entropy"))
def test_cross_entropy_out_of_range_target_raises(impl):
    k = tl.kernels.get("cross_entropy", impl)
    z = np.zeros((3, 5), np.float32)
    for bad in (5, -1, 1000):
        t = np.array([0, bad, 1])
        with pytest.raises(IndexError, match="cross_entropy") as e:
            k.forward(z, t)
        assert str(bad) in str(e.value) and "5" in str(e.value)
    with pytest.raises(IndexError, match="cross_entropy"):       # -100 is valid only as
        k.forward(z, np.array([0, -100, 1]), ignore_index=-1)    # the ignore_index


@pytest.mark.parametrize("impl", impls("cross_entropy"))
def test_cross_entropy_python_float_dloss(impl):
    k = tl.kernels.get("cross_entropy", impl)
    z = np.random.default_rng(10).standard_normal((3, 4)).astype(np.float32)
    loss, cache = k.forward(z, np.array([0, 1, 2]))
    (a,) = k.backward(1.0, cache)
    (b,) = k.backward(np.float32(1.0), cache)
    assert a.dtype == np.float32 and np.array_equal(a, b)
    with pytest.raises(ShapeError, match="cross_entropy"):
        k.backward(np.ones(3, np.float32), cache)


# ---------------------------------------------------------------- layernorm / mlp specifics

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("impl", impls("layernorm"))
def test_layernorm_constant_rows_and_offsets(impl, dtype):
    """A constant row normalises to xhat = 0, so y = b and dx = (g - mean g) / sqrt(eps)
    with g = dy w; a large offset does not hurt the variance (two-pass)."""
    k = tl.kernels.get("layernorm", impl)
    rng = np.random.default_rng(11)
    C = 37
    w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    x = np.full((2, C), 3.25, dtype)
    y, cache = k.forward(x, w, b)
    np.testing.assert_array_equal(y, np.broadcast_to(b, y.shape))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db = k.backward(dy, cache)
    g = dy.astype(np.float64) * w
    want = (g - g.mean(-1, keepdims=True)) / np.sqrt(1e-5)
    assert max_rel_err(dx, want) <= (1e-10 if dtype == np.float64 else 1e-5)
    assert np.abs(dw).max() == 0 and max_rel_err(db, dy.sum(0)) <= 1e-6
    x = (1000 + rng.standard_normal((4, C))).astype(dtype)
    y, _ = k.forward(x, w, b)
    want = oracle_forward("layernorm", (x, w, b), {"eps": 1e-5})
    assert max_rel_err(y, want) <= (1e-10 if dtype == np.float64 else 1e-3)


@pytest.mark.parametrize("name,missing", [("layernorm", (1,)), ("layernorm", (2,)),
                                          ("layernorm", (1, 2)), ("mlp", (2,)), ("mlp", (4,)),
                                          ("mlp", (2, 4))])
def test_none_weight_or_bias(name, missing):
    """A None weight/bias means no scale/shift; its gradient is None; the rest match the
    same call with ones/zeros."""
    rng = np.random.default_rng(12)
    dims = (3, 2, 9) if name == "layernorm" else (5, 4, 6, 3)
    args, opts = make_inputs(name, dims, np.float64, rng)
    full = list(args)
    for p in missing:
        full[p] = np.ones_like(args[p]) if (name, p) == ("layernorm", 1) else np.zeros_like(args[p])
    part = [None if p in missing else a for p, a in enumerate(args)]
    for impl in impls(name):
        k = tl.kernels.get(name, impl)
        y1, c1 = k.forward(*full, **opts)
        y2, c2 = k.forward(*part, **opts)
        np.testing.assert_allclose(y2, y1, rtol=1e-13, atol=1e-13)
        dy = rng.standard_normal(y1.shape)
        g1, g2 = k.backward(dy, c1), k.backward(dy, c2)
        for p, (a, b) in enumerate(zip(g1, g2)):
            if p in missing:
                assert b is None
            else:
                np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("impl", impls("mlp"))
def test_mlp_leading_dims(impl):
    """x (B, T, C) is the same as its (B*T, C) rows."""
    rng = np.random.default_rng(13)
    args, _ = make_inputs("mlp", (6, 5, 8, 4), np.float64, rng)
    k = tl.kernels.get("mlp", impl)
    x3 = args[0].reshape(2, 3, 5)
    y3, c3 = k.forward(x3, *args[1:])
    y2, c2 = k.forward(*args)
    assert y3.shape == (2, 3, 4)
    np.testing.assert_array_equal(y3.reshape(6, 4), y2)
    dy = rng.standard_normal((6, 4))
    g3, g2 = k.backward(dy.reshape(2, 3, 4), c3), k.backward(dy, c2)
    assert g3[0].shape == (2, 3, 5)
    np.testing.assert_array_equal(g3[0].reshape(6, 5), g2[0])
    for a, b in zip(g3[1:], g2[1:]):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- determinism

DET_SHAPES = {"cross_entropy": (67, 301), "layernorm": (3, 70, 129), "mlp": (130, 24, 72, 20)}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name,impl", family_impl())
def test_deterministic(name, impl, dtype):
    rng = np.random.default_rng(14)
    args, opts = make_inputs(name, DET_SHAPES[name], dtype, rng)
    k = tl.kernels.get(name, impl)
    out1, c1 = k.forward(*args, **opts)
    dy = upstream(out1, rng)
    g1 = k.backward(dy, c1)
    out2, c2 = k.forward(*args, **opts)
    g2 = k.backward(dy, c2)
    assert np.array_equal(out1, out2)
    for a, b in zip(g1, g2):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("name,impl", family_impl(fast=True))
def test_numba_result_independent_of_thread_count(name, impl):
    """The cross-row sums (dweight, dbias, db1) use a chunking fixed by the row count, so the
    numba thread count does not change a single bit."""
    numba = pytest.importorskip("numba")
    rng = np.random.default_rng(15)
    args, opts = make_inputs(name, DET_SHAPES[name], np.float32, rng)
    k = tl.kernels.get(name, impl)
    out, c = k.forward(*args, **opts)
    dy = upstream(out, rng)
    g = k.backward(dy, c)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        out1, c1 = k.forward(*args, **opts)
        g1 = k.backward(dy, c1)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(out, out1)
    for a, b in zip(g, g1):
        assert np.array_equal(a, b)


# ---------------------------------------------------------------- non-contiguous inputs

def noncontiguous(a):
    """The same values in a strided (every other element) or transposed layout."""
    if not isinstance(a, np.ndarray):
        return a
    if a.ndim == 2 and a.shape[0] > 1 and a.shape[1] > 1:
        out = np.asfortranarray(a)
    else:
        big = np.empty(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        out = big[..., ::2]
    assert not out.flags.c_contiguous
    np.testing.assert_array_equal(out, a)
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name,impl", family_impl())
def test_noncontiguous_inputs(name, impl, dtype):
    rng = np.random.default_rng(16)
    dims = {"cross_entropy": (9, 21), "layernorm": (4, 5, 19), "mlp": (9, 7, 13, 5)}[name]
    args, opts = make_inputs(name, dims, dtype, rng)
    k = tl.kernels.get(name, impl)
    out, c = k.forward(*args, **opts)
    dy = upstream(out, rng)
    g = k.backward(dy, c)
    nargs = tuple(noncontiguous(a) for a in args)
    out_n, c_n = k.forward(*nargs, **opts)
    g_n = k.backward(noncontiguous(dy) if np.ndim(dy) else dy, c_n)
    np.testing.assert_array_equal(out_n, out)
    for a, b in zip(g, g_n):
        np.testing.assert_array_equal(b, a)


# ---------------------------------------------------------------- bad input

def bad_calls(name, dtype):
    """(call, exception) pairs; each call must raise exception naming the kernel."""
    rng = np.random.default_rng(17)
    f32, f64 = np.float32, np.float64
    other = f64 if dtype == f32 else f32
    k = lambda impl: tl.kernels.get(name, impl)  # noqa: E731
    if name == "cross_entropy":
        z = rng.standard_normal((4, 6)).astype(dtype)
        t = np.array([0, 1, 2, 3])
        return [
            (lambda f: f(z[0], t[:1]), ShapeError),                   # logits 1-d
            (lambda f: f(z[None], t), ShapeError),                    # logits 3-d
            (lambda f: f(z, t[:3]), ShapeError),                      # N mismatch
            (lambda f: f(z, t[:, None]), ShapeError),                 # targets 2-d
            (lambda f: f(z[:, :0], t), ShapeError),                   # V = 0
            (lambda f: f(z, t.astype(f32)), TypeError),               # float targets
            (lambda f: f(z, t > 1), TypeError),                       # bool targets
            (lambda f: f(z.astype(np.int64), t), TypeError),          # int logits
            (lambda f: f(z.astype(np.float16), t), TypeError),        # float16 logits
            (lambda f: f(z.tolist(), t), TypeError),                  # not an array
        ], k
    if name == "layernorm":
        x = rng.standard_normal((3, 8)).astype(dtype)
        w, b = np.ones(8, dtype), np.zeros(8, dtype)
        return [
            (lambda f: f(x, w[:7], b), ShapeError),
            (lambda f: f(x, w, b[:, None]), ShapeError),
            (lambda f: f(x, w, np.zeros(9, dtype)), ShapeError),
            (lambda f: f(np.asarray(x[0, 0]), w[:1], b[:1]), ShapeError),   # 0-d x
            (lambda f: f(x[:, :0], w[:0], b[:0]), ShapeError),              # C = 0
            (lambda f: f(x, w.astype(other), b), TypeError),
            (lambda f: f(x.astype(np.int32), w, b), TypeError),
            (lambda f: f(x, w, b, eps=-1.0), ValueError),
            (lambda f: f(x, w, b, eps=None), TypeError),
        ], k
    if name == "mlp":
        N, C, H, Co = 5, 4, 6, 3
        x = rng.standard_normal((N, C)).astype(dtype)
        W1, b1 = rng.standard_normal((C, H)).astype(dtype), np.zeros(H, dtype)
        W2, b2 = rng.standard_normal((H, Co)).astype(dtype), np.zeros(Co, dtype)
        return [
            (lambda f: f(x[:, :3], W1, b1, W2, b2), ShapeError),      # C mismatch
            (lambda f: f(x, W1[:, :5], b1, W2, b2), ShapeError),      # H mismatch with W2
            (lambda f: f(x, W1, b1[:5], W2, b2), ShapeError),
            (lambda f: f(x, W1, b1, W2, b2[:2]), ShapeError),
            (lambda f: f(x, W1[0], b1, W2, b2), ShapeError),          # W1 1-d
            (lambda f: f(x, W1, b1, W2[None], b2), ShapeError),       # W2 3-d
            (lambda f: f(np.asarray(x[0, 0]), W1, b1, W2, b2), ShapeError),
            (lambda f: f(x, W1.astype(other), b1, W2, b2), TypeError),
            (lambda f: f(x.astype(np.int64), W1, b1, W2, b2), TypeError),
        ], k
    raise KeyError(name)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name,impl", family_impl())
def test_bad_input_raises_naming_the_kernel(name, impl, dtype):
    calls, k = bad_calls(name, dtype)
    fwd = k(impl).forward
    for i, (call, exc) in enumerate(calls):
        with pytest.raises(exc, match=name):
            call(fwd)


@pytest.mark.parametrize("name,impl", family_impl())
def test_bad_upstream_gradient_raises(name, impl):
    rng = np.random.default_rng(18)
    dims = {"cross_entropy": (4, 6), "layernorm": (3, 8), "mlp": (5, 4, 6, 3)}[name]
    args, opts = make_inputs(name, dims, np.float64, rng)
    k = tl.kernels.get(name, impl)
    out, cache = k.forward(*args, **opts)
    with pytest.raises(ShapeError, match=name):
        k.backward(np.ones(np.shape(out) + (2,)), cache)


def test_registry_entries():
    for name, inputs in (("cross_entropy", ("logits",)), ("layernorm", ("x", "weight", "bias")),
                         ("mlp", ("x", "W1", "b1", "W2", "b2"))):
        assert "numpy" in impls(name)
        for impl in impls(name):
            k = tl.kernels.get(name, impl)
            assert k.name == name and k.impl == impl and k.inputs == inputs


# ---------------------------------------------------------------- bigger shapes (slow)

@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name,dims", [("cross_entropy", (512, 50257)),
                                       ("cross_entropy", (1000, 8192)),
                                       ("layernorm", (8, 128, 768)),
                                       ("mlp", (512, 768, 3072, 768))])
def test_fast_matches_reference_large(name, dims, dtype):
    test_fast_matches_reference(name, dims, dtype)


# ---------------------------------------------------------------- PyTorch oracle

@pytest.mark.torch
@pytest.mark.parametrize("name,impl", family_impl())
def test_against_torch(name, impl):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(19)
    dims = {"cross_entropy": (13, 29), "layernorm": (2, 7, 33), "mlp": (11, 11, 23, 7)}[name]
    args, opts = make_inputs(name, dims, np.float64, rng)
    k = tl.kernels.get(name, impl)
    out, cache = k.forward(*args, **opts)
    dy = upstream(out, rng)
    grads = k.backward(dy, cache)
    pos = diff_positions(name, args)
    ts = [torch.tensor(a, requires_grad=(p in pos)) for p, a in enumerate(args)]
    F = torch.nn.functional
    if name == "cross_entropy":
        tout = F.cross_entropy(ts[0], ts[1], ignore_index=-100)
    elif name == "layernorm":
        tout = F.layer_norm(ts[0], (dims[-1],), ts[1], ts[2], eps=opts["eps"])
    else:
        x, W1, b1, W2, b2 = ts
        tout = F.gelu(x @ W1 + b1, approximate="tanh") @ W2 + b2
    tout.backward(torch.tensor(dy))
    assert max_rel_err(out, tout.detach().numpy()) <= 1e-12
    for p, g in zip(pos, grads):
        assert max_rel_err(g, ts[p].grad.numpy()) <= 1e-11, (name, p)
