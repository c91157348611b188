"""The additive_attention kernel family: the document's eq. 4.2 (e, alpha, c) and its backward.

The contract every family keeps (every implementation against the NumPy reference, central
finite differences of sum(c * dc) + sum(alpha * dalpha) with a random (dc, dalpha), with and
without masks; determinism; layouts; bad dtypes) is tests/test_kernel_contract.py. Here: the
partial upstreams (dc or dalpha alone) and the parallel row loop against the reference, the
masking properties, the forward against a composite of tinyllm autograd ops that spells the
equations out, and the family-specific bad inputs.
"""
import numpy as np
import pytest

import tinyllm as tl
import tinyllm.kernels  # noqa: F401  (tinyllm does not import its kernels layer by itself)
from tinyllm.errors import ShapeError
from tinyllm.kernels import additive_attention as AA

F = tl.functional
NAME = "additive_attention"
IMPLS = tl.kernels.available(NAME)
FAST = [i for i in IMPLS if i != "numpy"]
DTYPES = [np.float32, np.float64]
GRADS = ("dh", "dx", "dW_q", "dW_k", "dv_a")

# Tolerances, as max |got - want| / max |want| per output array (the harness's measure).
# float64: the fast versions differ from the reference only in summation order (the dot
# products are reassociated) and in exp/tanh being libm vs NumPy: ~1e-15 measured, 1e-10
# allowed. float32: the polynomial exp and the reordered sums give ~1e-6, 1e-5 allowed.
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}

# (B, S, Dh, Dx, A): odd and mismatched sizes, B = 1, S = 1, and one RNN-like shape
SHAPES = [(3, 5, 4, 6, 7), (1, 1, 3, 2, 5), (2, 17, 16, 33, 19), (4, 20, 24, 32, 40)]


def make(shape, dtype, seed=0, scale=1.0):
    """(h, x, W_q, W_k, v_a) from the family's builder, h and x times ``scale``."""
    B, S, Dh, Dx, A = shape
    p = {"B": B, "S": S, "Dh": Dh, "Dx": Dx, "A": A, "masked": False}
    h, x, W_q, W_k, v_a = AA.FAMILY.inputs(p, np.dtype(dtype), np.random.default_rng(seed))[0]
    return (h * dtype(scale)).astype(dtype), (x * dtype(scale)).astype(dtype), W_q, W_k, v_a


def make_mask(shape, kind, seed=1):
    B, S = shape[0], shape[1]
    if kind is None:
        return None
    rng = np.random.default_rng(seed)
    mask = rng.random((B, S)) < 0.6
    mask[:, 0] = True                       # every row keeps something ...
    if kind == "empty_row":
        mask[B // 2] = False                # ... except this one: attends to nothing
    return mask


def make_dout(shape, dtype, which, seed=2):
    B, S, _, Dx, _ = shape
    rng = np.random.default_rng(seed)
    dc = rng.standard_normal((B, Dx)).astype(dtype)
    dalpha = rng.standard_normal((B, S)).astype(dtype)
    return (dc if which in ("dc", "both") else None,
            dalpha if which in ("dalpha", "both") else None)


def assert_close(got, want, dtype, what):
    """max |got - want| <= TOL * max |want| (exact zeros must stay zeros)."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == np.dtype(dtype), f"{what}: dtype {got.dtype}, want {np.dtype(dtype)}"
    assert np.all(np.isfinite(got)), f"{what}: not finite"
    scale = max(float(np.max(np.abs(want), initial=0.0)), 1e-30)
    err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)), initial=0.0))
    assert err <= TOL[np.dtype(dtype)] * scale, \
        f"{what}: max abs error {err:.3e} against scale {scale:.3e}"


@pytest.fixture(params=["serial", "parallel"])
def path(request, monkeypatch):
    """The Numba version runs its row loops on the calling thread for small calls and in a
    prange above a work threshold; 'parallel' forces the prange for these small shapes."""
    if request.param == "parallel":
        monkeypatch.setattr(AA, "_PAR_WORK", 0)
    return request.param


# ---------------------------------------------------------------- fast vs reference
# (both upstreams on the serial path: the contract test)

@pytest.mark.parametrize("which,parallel", [("dc", False), ("dalpha", False), ("dc", True),
                                            ("dalpha", True), ("both", True)])
@pytest.mark.parametrize("mask_kind", [None, "random", "empty_row"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", FAST)
def test_matches_reference(impl, dtype, shape, mask_kind, which, parallel, monkeypatch):
    if parallel:                     # the prange row loop, forced for these small shapes
        monkeypatch.setattr(AA, "_PAR_WORK", 0)
    arrays = make(shape, dtype)
    mask = make_mask(shape, mask_kind)
    dout = make_dout(shape, dtype, which)
    ref, k = tl.kernels.get(NAME, "numpy"), tl.kernels.get(NAME, impl)
    (c_r, a_r), cache_r = ref.forward(*arrays, mask=mask)
    (c, a), cache = k.forward(*arrays, mask=mask)
    assert_close(c, c_r, dtype, "c")
    assert_close(a, a_r, dtype, "alpha")
    if mask is not None:
        assert np.all(a[~mask] == 0), "masked positions must get alpha exactly 0"
    for name, g, g_r in zip(GRADS, k.backward(dout, cache), ref.backward(dout, cache_r)):
        assert_close(g, g_r, dtype, name)


# ---------------------------------------------------------------- properties

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", IMPLS)
def test_alpha_is_a_distribution_over_unmasked(impl, dtype, path):
    shape = (5, 9, 6, 7, 8)
    arrays = make(shape, dtype, seed=7)
    k = tl.kernels.get(NAME, impl)
    (_, a), _ = k.forward(*arrays)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(a.sum(axis=1), 1, atol=tol)
    assert np.all(a > 0)
    mask = make_mask(shape, "empty_row")
    (c, a), _ = k.forward(*arrays, mask=mask)
    assert np.all(a[~mask] == 0)
    full = mask.any(axis=1)
    np.testing.assert_allclose(a[full].sum(axis=1), 1, atol=tol)
    assert np.all(a[~full] == 0) and np.all(c[~full] == 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", IMPLS)
def test_fully_masked_rows(impl, dtype, path):
    """A row that may attend to nothing: alpha = 0, c = 0, finite zero gradients for it."""
    shape = (3, 6, 4, 5, 7)
    arrays = make(shape, dtype, seed=8)
    mask = np.ones((3, 6), bool)
    mask[1] = False
    k = tl.kernels.get(NAME, impl)
    (c, a), cache = k.forward(*arrays, mask=mask)
    assert np.all(a[1] == 0) and np.all(c[1] == 0)
    assert np.all(np.isfinite(c)) and np.all(np.isfinite(a))
    grads = k.backward(make_dout(shape, dtype, "both"), cache)
    for name, g in zip(GRADS, grads):
        assert np.all(np.isfinite(g)), name
    dh, dx = grads[0], grads[1]
    assert np.all(dh[1] == 0) and np.all(dx[1] == 0)
    # every row masked: nothing at all flows
    none = np.zeros((3, 6), bool)
    (c, a), cache = k.forward(*arrays, mask=none)
    assert not c.any() and not a.any()
    for name, g in zip(GRADS, k.backward(make_dout(shape, dtype, "both"), cache)):
        assert np.all(g == 0), name


@pytest.mark.parametrize("impl", IMPLS)
def test_masked_positions_do_not_leak(impl):
    """Changing x at masked positions leaves c, alpha and the other rows' gradients bitwise
    unchanged, and dx there is 0."""
    shape = (4, 7, 5, 6, 8)
    h, x, W_q, W_k, v_a = make(shape, np.float64, seed=9)
    mask = make_mask(shape, "random", seed=10)
    k = tl.kernels.get(NAME, impl)
    dout = make_dout(shape, np.float64, "both")
    (c, a), cache = k.forward(h, x, W_q, W_k, v_a, mask=mask)
    g = k.backward(dout, cache)
    x2 = x.copy()
    x2[~mask] = 1e3 * np.random.default_rng(11).standard_normal(x2[~mask].shape)
    (c2, a2), cache2 = k.forward(h, x2, W_q, W_k, v_a, mask=mask)
    g2 = k.backward(dout, cache2)
    np.testing.assert_array_equal(c2, c)
    np.testing.assert_array_equal(a2, a)
    for name, gi, gi2 in zip(GRADS, g, g2):
        if name != "dW_k":           # dW_k = sum x_i^T du_i: 0 * x at masked i, same value
            np.testing.assert_array_equal(gi2, gi, err_msg=name)
    np.testing.assert_allclose(g2[3], g[3], rtol=1e-12, atol=1e-12)
    assert np.all(g[1][~mask] == 0)


@pytest.mark.parametrize("impl", IMPLS)
def test_all_true_mask_equals_no_mask(impl):
    shape = (3, 5, 4, 6, 7)
    arrays = make(shape, np.float32, seed=12)
    k = tl.kernels.get(NAME, impl)
    (c, a), cache = k.forward(*arrays)
    (c2, a2), cache2 = k.forward(*arrays, mask=np.ones((3, 5), bool))
    np.testing.assert_array_equal(c2, c)
    np.testing.assert_array_equal(a2, a)
    dout = make_dout(shape, np.float32, "both")
    for g, g2 in zip(k.backward(dout, cache), k.backward(dout, cache2)):
        np.testing.assert_array_equal(g2, g)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", IMPLS)
def test_single_position(impl, dtype):
    """S = 1: alpha = 1, c = x_0, and the score gets no gradient (softmax over one entry is
    constant), so only dx = dc is nonzero."""
    shape = (3, 1, 4, 5, 6)
    arrays = make(shape, dtype, seed=13)
    k = tl.kernels.get(NAME, impl)
    (c, a), cache = k.forward(*arrays)
    np.testing.assert_array_equal(a, 1)
    np.testing.assert_array_equal(c, arrays[1][:, 0])
    dc, dalpha = make_dout(shape, dtype, "both")
    dh, dx, dW_q, dW_k, dv_a = k.backward((dc, dalpha), cache)
    np.testing.assert_array_equal(dx[:, 0], dc)
    for g in (dh, dW_q, dW_k, dv_a):
        assert np.all(g == 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", IMPLS)
def test_large_magnitudes_stay_finite(impl, dtype, path):
    """Inputs of ~1e3 saturate tanh (u = +-1, tanh' = 0) and v_a of 1e4 makes scores of ~1e6:
    alpha is one-hot-like, everything stays finite and matches the reference."""
    shape = (4, 9, 5, 6, 7)
    h, x, W_q, W_k, v_a = make(shape, dtype, seed=14, scale=1e3)
    v_a = (v_a * 1e4).astype(dtype)
    arrays = (h, x, W_q, W_k, v_a)
    mask = make_mask(shape, "empty_row")
    ref, k = tl.kernels.get(NAME, "numpy"), tl.kernels.get(NAME, impl)
    dout = make_dout(shape, dtype, "both")
    (c, a), cache = k.forward(*arrays, mask=mask)
    (c_r, a_r), cache_r = ref.forward(*arrays, mask=mask)
    assert np.all(np.isfinite(c)) and np.all(np.isfinite(a))
    full = mask.any(axis=1)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(a[full].sum(axis=1), 1, atol=tol)
    assert_close(c, c_r, dtype, "c")
    assert_close(a, a_r, dtype, "alpha")
    for name, g, g_r in zip(GRADS, k.backward(dout, cache), ref.backward(dout, cache_r)):
        assert np.all(np.isfinite(g)), name
        assert_close(g, g_r, dtype, name)


@pytest.mark.parametrize("impl", IMPLS)
def test_upstream_none_means_zero(impl):
    shape = (3, 5, 4, 6, 7)
    arrays = make(shape, np.float64, seed=15)
    k = tl.kernels.get(NAME, impl)
    (c, a), cache = k.forward(*arrays, mask=make_mask(shape, "random"))
    dc, dalpha = make_dout(shape, np.float64, "both")
    zc, za = np.zeros_like(dc), np.zeros_like(dalpha)
    for dout, same in (((dc, None), (dc, za)), ((None, dalpha), (zc, dalpha))):
        for g, g2 in zip(k.backward(dout, cache), k.backward(same, cache)):
            np.testing.assert_allclose(g, g2, rtol=1e-14, atol=1e-15)
    for dout in ((None, None), None):
        for name, g in zip(GRADS, k.backward(dout, cache)):
            assert np.all(g == 0), name
    # linear in the upstream: grads of (dc, dalpha) = grads of (dc, 0) + grads of (0, dalpha)
    both = k.backward((dc, dalpha), cache)
    for g, g1, g2 in zip(both, k.backward((dc, None), cache), k.backward((None, dalpha), cache)):
        np.testing.assert_allclose(g, g1 + g2, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", IMPLS)
def test_dtypes_preserved(impl, dtype):
    shape = (2, 3, 4, 5, 6)
    arrays = make(shape, dtype)
    k = tl.kernels.get(NAME, impl)
    (c, a), cache = k.forward(*arrays)
    assert c.dtype == dtype and a.dtype == dtype
    for name, g, inp in zip(GRADS, k.backward(make_dout(shape, dtype, "both"), cache), arrays):
        assert g.dtype == dtype and g.shape == inp.shape, name


@pytest.mark.parametrize("impl", IMPLS)
def test_deterministic(impl, path):
    shape = (6, 11, 9, 10, 12)
    arrays = make(shape, np.float32, seed=16)
    mask = make_mask(shape, "empty_row")
    dout = make_dout(shape, np.float32, "both")
    k = tl.kernels.get(NAME, impl)
    runs = []
    for _ in range(2):
        out, cache = k.forward(*arrays, mask=mask)
        runs.append((*out, *k.backward(dout, cache)))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- bad input

def _good():
    return make((2, 3, 4, 5, 6), np.float32)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", [
    "h ndim", "x ndim", "W_q ndim", "W_k ndim", "v_a ndim", "batch", "W_q rows", "W_q cols",
    "W_k rows", "W_k cols", "S = 0"])
def test_bad_shapes(impl, case):
    h, x, W_q, W_k, v_a = _good()
    bad = {
        "h ndim": dict(h=h[0]), "x ndim": dict(x=x[0]), "W_q ndim": dict(W_q=W_q[None]),
        "W_k ndim": dict(W_k=W_k[0]), "v_a ndim": dict(v_a=v_a[None]),
        "batch": dict(h=np.concatenate([h, h])), "W_q rows": dict(W_q=W_q[:-1]),
        "W_q cols": dict(W_q=W_q[:, :-1]), "W_k rows": dict(W_k=W_k[:-1]),
        "W_k cols": dict(W_k=W_k[:, :-1]), "S = 0": dict(x=x[:, :0]),
    }[case]
    args = dict(h=h, x=x, W_q=W_q, W_k=W_k, v_a=v_a)
    args.update(bad)
    name, arr = next(iter(bad.items()))
    with pytest.raises(ShapeError, match=NAME) as info:
        tl.kernels.get(NAME, impl).forward(**args)
    assert str(tuple(arr.shape)) in str(info.value), "the message names the shape at fault"


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_mask(impl):
    h, x, W_q, W_k, v_a = _good()
    k = tl.kernels.get(NAME, impl)
    with pytest.raises(TypeError, match=NAME):
        k.forward(h, x, W_q, W_k, v_a, mask=np.ones((2, 3), np.int8))
    with pytest.raises(TypeError, match=NAME):
        k.forward(h, x, W_q, W_k, v_a, mask=[[True] * 3] * 2)
    with pytest.raises(ShapeError, match=NAME):
        k.forward(h, x, W_q, W_k, v_a, mask=np.ones((3, 2), bool))
    with pytest.raises(ShapeError, match=NAME):
        k.forward(h, x, W_q, W_k, v_a, mask=np.ones(3, bool))


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_upstream(impl):
    h, x, W_q, W_k, v_a = _good()
    k = tl.kernels.get(NAME, impl)
    (c, a), cache = k.forward(h, x, W_q, W_k, v_a)
    with pytest.raises(ShapeError, match="dc"):
        k.backward((np.ones((2, 4), np.float32), None), cache)
    with pytest.raises(ShapeError, match="dalpha"):
        k.backward((None, np.ones((3, 2), np.float32)), cache)
    with pytest.raises(TypeError, match=NAME):
        k.backward(np.ones_like(c), cache)                           # not the pair


# ---------------------------------------------------------------- tied to the document

def composite(arrays, mask, dout):
    """Eq. 4.2 spelt out in tinyllm autograd ops; returns (c, alpha) and the leaves' grads of
    sum(c * dc) + sum(alpha * dalpha)."""
    h, x, W_q, W_k, v_a = (tl.Tensor(a, requires_grad=True) for a in arrays)
    B, S, _ = x.shape
    A = v_a.shape[0]
    qp = h @ W_q                                       # (B, A)     W_q^T h_{t-1}
    kp = x @ W_k                                       # (B, S, A)  W_k^T x_i
    u = (kp + qp.reshape(B, 1, A)).tanh()
    e = (u * v_a).sum(axis=-1)                         # (B, S)     e_i, eq. 4.2b
    if mask is not None:
        e = e + np.where(mask, 0, -np.inf).astype(arrays[0].dtype)
    alpha = F.softmax(e, axis=-1)                      # (B, S)     eq. 4.2a
    c = (alpha.reshape(B, S, 1) * x).sum(axis=1)       # (B, Dx)    c = sum_i alpha_i x_i
    dc, dalpha = dout
    ((c * dc).sum() + (alpha * dalpha).sum()).backward()
    return (c.data, alpha.data), tuple(t.grad for t in (h, x, W_q, W_k, v_a))


@pytest.mark.parametrize("mask_kind", [None, "random"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_autograd_composite(impl, dtype, mask_kind):
    shape = (3, 7, 5, 6, 8)
    arrays = make(shape, dtype, seed=19)
    mask = make_mask(shape, mask_kind)
    dout = make_dout(shape, dtype, "both")
    (c_t, a_t), grads_t = composite(arrays, mask, dout)
    k = tl.kernels.get(NAME, impl)
    (c, a), cache = k.forward(*arrays, mask=mask)
    assert_close(c, c_t, dtype, "c")
    assert_close(a, a_t, dtype, "alpha")
    for name, g, g_t in zip(GRADS, k.backward(dout, cache), grads_t):
        assert_close(g, g_t, dtype, name)


# ---------------------------------------------------------------- harness

def test_harness_checks_every_impl(capsys):
    """`python -m tinyllm.kernels.additive_attention` on its quick (RNN-sized) sizes: every
    implementation within the harness's tolerance of the reference (exit status 0)."""
    from tinyllm.kernels._harness import main
    assert main(NAME, ["--no-time", "--dtype", "float64", "--sizes", "quick"]) == 0
    out = capsys.readouterr().out
    for impl in IMPLS:
        assert f"\n  {impl}" in out


def test_nothing_compiles_at_import():
    """Importing the family compiles nothing: every Numba function has no signature yet."""
    import subprocess
    import sys
    code = ("import numba, tinyllm.kernels.additive_attention as m; "
            "D = numba.core.dispatcher.Dispatcher; "
            "fs = [v for v in vars(m).values() if isinstance(v, D)]; "
            "assert len(fs) >= 5, fs; "
            "assert not any(f.signatures for f in fs), [f for f in fs if f.signatures]")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_propagates(impl):
    """A NaN input makes its own row NaN (as softmax does), never a silent 0; other rows are
    untouched."""
    shape = (3, 4, 5, 6, 7)
    h, x, W_q, W_k, v_a = make(shape, np.float32, seed=20)
    h[1, 2] = np.nan
    (c, a), _ = tl.kernels.get(NAME, impl).forward(h, x, W_q, W_k, v_a)
    assert np.all(np.isnan(a[1])) and np.all(np.isnan(c[1]))
    assert np.all(np.isfinite(a[[0, 2]])) and np.all(np.isfinite(c[[0, 2]]))


@pytest.mark.parametrize("impl", IMPLS)
def test_functional_wrapper_uses_the_kernel(impl):
    """tl.functional.additive_attention under kernels.use(impl) gives the kernel's values and
    gradients."""
    shape = (2, 5, 3, 4, 6)
    arrays = make(shape, np.float64, seed=21)
    mask = make_mask(shape, "random")
    dc, dalpha = make_dout(shape, np.float64, "both")
    ts = [tl.Tensor(a, requires_grad=True) for a in arrays]
    with tl.kernels.use(impl):
        c, a = F.additive_attention(*ts, mask=mask)
        ((c * dc).sum() + (a * dalpha).sum()).backward()
    k = tl.kernels.get(NAME, impl)
    (c_k, a_k), cache = k.forward(*arrays, mask=mask)
    np.testing.assert_allclose(c.data, c_k, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(a.data, a_k, rtol=1e-13, atol=1e-14)
    for name, t, g in zip(GRADS, ts, k.backward((dc, dalpha), cache)):
        np.testing.assert_allclose(t.grad, g, rtol=1e-12, atol=1e-13, err_msg=name)
