"""The dense kernels' own properties: cross_entropy, layernorm, mlp (every implementation on
this machine). The contract every family keeps (against the reference, against central
differences, determinism, layouts, bad dtypes and shapes) is tests/test_kernel_contract.py.

- forward of every implementation against an independent float64 NumPy formula, at every
  ``FAMILY.test_sizes``;
- awkward values (+-1e4 logits, ignored rows, constant rows, offsets), None weights and
  biases, leading axes, thread-count independence, the family-specific bad inputs;
- PyTorch as an extra oracle where it is installed (``-m torch`` marker, skipped without it).
"""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm.errors import ShapeError
from tinyllm.kernels._harness import max_rel_err, random_like

FAMILIES = ("cross_entropy", "layernorm", "mlp")
DTYPES = (np.float32, np.float64)
TOL = {np.float32: 1e-5, np.float64: 1e-10}     # fast vs reference, as FAMILY.tol

S = np.sqrt(2 / np.pi)


def impls(name):
    return tl.kernels.available(name)


def fast_impls(name):
    return [i for i in tl.kernels.available(name) if i != "numpy"]


def family_impl(fast=False):
    """(family, impl) pairs for parametrize."""
    return [pytest.param(f, i, id=f"{f}-{i}") for f in FAMILIES
            for i in (fast_impls(f) if fast else impls(f))]


def make_inputs(name, dtype, seed=0, **params):
    """(positional arrays, options) from the family's own input builder (FAMILY.inputs)."""
    return tl.kernels.family(name).inputs(params, np.dtype(dtype), np.random.default_rng(seed))


def ln(*shape):
    """layernorm parameters for an x of this shape."""
    p = {"N": int(np.prod(shape[:-1])), "C": shape[-1]}
    return p if len(shape) == 2 else dict(p, shape=list(shape))


def upstream(out, rng):
    return random_like(out, rng)


def family_sizes():
    return [pytest.param(f, s.params, id=f"{f}-{tl.kernels.family(f).label(s.params)}")
            for f in FAMILIES for s in tl.kernels.family(f).sizes("test")]


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


# ---------------------------------------------------------------- forward vs oracle

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("impl", ["numpy", "numba"])
@pytest.mark.parametrize("name,params", family_sizes())
def test_forward_matches_float64_oracle(name, params, impl, dtype):
    if impl not in impls(name):
        pytest.skip(f"{impl} not available")
    args, opts = make_inputs(name, dtype, 1, **params)
    out, _ = tl.kernels.get(name, impl).forward(*args, **opts)
    assert out.dtype == dtype
    want = oracle_forward(name, args, opts)
    assert np.shape(out) == np.shape(want)
    # float32: inputs are exact float32 values, so the oracle sees the same problem
    tol = 1e-12 if dtype == np.float64 else 2e-6
    assert max_rel_err(out, want) <= tol


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
    params = ln(3, 2, 9) if name == "layernorm" else {"N": 5, "C": 4, "H": 6, "Co": 3}
    args, opts = make_inputs(name, np.float64, 12, **params)
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
    args, _ = make_inputs("mlp", np.float64, 13, N=6, C=5, H=8, Co=4)
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


# ---------------------------------------------------------------- thread count

DET_SIZES = {"cross_entropy": {"N": 67, "V": 301}, "layernorm": ln(3, 70, 129),
             "mlp": {"N": 130, "C": 24, "H": 72, "Co": 20}}


@pytest.mark.parametrize("name,impl", family_impl(fast=True))
def test_numba_result_independent_of_thread_count(name, impl):
    """The cross-row sums (dweight, dbias, db1) use a chunking fixed by the row count, so the
    numba thread count does not change a single bit."""
    numba = pytest.importorskip("numba")
    rng = np.random.default_rng(15)
    args, opts = make_inputs(name, np.float32, 15, **DET_SIZES[name])
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


# ---------------------------------------------------------------- bad input
# (bad dtypes, 0-d inputs, extra axes and a bad upstream gradient: the contract test)

def bad_calls(name, dtype):
    """(call, exception) pairs beyond the contract's; each must raise naming the kernel."""
    rng = np.random.default_rng(17)
    f32 = np.float32
    if name == "cross_entropy":
        z = rng.standard_normal((4, 6)).astype(dtype)
        t = np.array([0, 1, 2, 3])
        return [
            (lambda f: f(z[0], t[:1]), ShapeError),                   # logits 1-d
            (lambda f: f(z, t[:3]), ShapeError),                      # N mismatch
            (lambda f: f(z[:, :0], t), ShapeError),                   # V = 0
            (lambda f: f(z, t.astype(f32)), TypeError),               # float targets
            (lambda f: f(z, t > 1), TypeError),                       # bool targets
            (lambda f: f(z, t, ignore_index=1.5), TypeError),         # float ignore_index
        ]
    if name == "layernorm":
        x = rng.standard_normal((3, 8)).astype(dtype)
        w, b = np.ones(8, dtype), np.zeros(8, dtype)
        return [
            (lambda f: f(x, w[:7], b), ShapeError),
            (lambda f: f(x, w, np.zeros(9, dtype)), ShapeError),
            (lambda f: f(x[:, :0], w[:0], b[:0]), ShapeError),              # C = 0
            (lambda f: f(x, w, b, eps=-1.0), ValueError),
            (lambda f: f(x, w, b, eps=None), TypeError),
        ]
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
        ]
    raise KeyError(name)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name,impl", family_impl())
def test_bad_input_raises_naming_the_kernel(name, impl, dtype):
    fwd = tl.kernels.get(name, impl).forward
    for call, exc in bad_calls(name, dtype):
        with pytest.raises(exc, match=name):
            call(fwd)


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
@pytest.mark.parametrize("name,params", [("cross_entropy", {"N": 512, "V": 50257}),
                                         ("cross_entropy", {"N": 1000, "V": 8192}),
                                         ("layernorm", ln(8, 128, 768)),
                                         ("mlp", {"N": 512, "C": 768, "H": 3072})])
def test_fast_matches_reference_large(name, params, dtype):
    args, opts = make_inputs(name, dtype, 2, **params)
    ref = tl.kernels.get(name, "numpy")
    out_r, cache_r = ref.forward(*args, **opts)
    dout = upstream(out_r, np.random.default_rng(3))
    grads_r = ref.backward(dout, cache_r)
    for impl in fast_impls(name):
        k = tl.kernels.get(name, impl)
        out, cache = k.forward(*args, **opts)
        assert max_rel_err(out, out_r) <= TOL[dtype], impl
        assert max_rel_err(k.backward(dout, cache), grads_r) <= TOL[dtype], impl


# ---------------------------------------------------------------- PyTorch oracle

@pytest.mark.torch
@pytest.mark.parametrize("name,impl", family_impl())
def test_against_torch(name, impl):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(19)
    params = {"cross_entropy": {"N": 13, "V": 29}, "layernorm": ln(2, 7, 33),
              "mlp": {"N": 11, "C": 11, "H": 23, "Co": 7}}[name]
    args, opts = make_inputs(name, np.float64, 19, **params)
    k = tl.kernels.get(name, impl)
    out, cache = k.forward(*args, **opts)
    dy = upstream(out, rng)
    grads = k.backward(dy, cache)
    pos = [0] if name == "cross_entropy" else list(range(len(args)))
    ts = [torch.tensor(a, requires_grad=(p in pos)) for p, a in enumerate(args)]
    F = torch.nn.functional
    if name == "cross_entropy":
        tout = F.cross_entropy(ts[0], ts[1], ignore_index=-100)
    elif name == "layernorm":
        tout = F.layer_norm(ts[0], (params["C"],), ts[1], ts[2], eps=opts.get("eps", 1e-5))
    else:
        x, W1, b1, W2, b2 = ts
        tout = F.gelu(x @ W1 + b1, approximate="tanh") @ W2 + b2
    tout.backward(torch.tensor(dy))
    assert max_rel_err(out, tout.detach().numpy()) <= 1e-12
    for p, g in zip(pos, grads):
        assert max_rel_err(g, ts[p].grad.numpy()) <= 1e-11, (name, p)


@pytest.mark.parametrize("name", ["layernorm", "mlp"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_serial_and_parallel_forward_agree_bitwise(name, dtype, monkeypatch):
    """Below ``_nb.SERIAL_WORK`` elements the Numba forward runs its rows on the calling
    thread (a decoding step's few rows); above it, in a parallel loop. Both paths must give
    the same bits, whichever size picks them."""
    if "numba" not in tl.kernels.available(name):
        pytest.skip("Numba is not available")
    mod = tl.kernels.module(name)
    k = tl.kernels.get(name, "numba")
    for rows in (1, 3, 70):
        size = {"layernorm": {"N": rows, "C": 96},
                "mlp": {"N": rows, "C": 32, "H": 96, "Co": 16}}[name]
        arrays, opts = tl.kernels.family(name).inputs(size, dtype, np.random.default_rng(rows))
        got = {}
        for path, limit in (("serial", 1 << 62), ("parallel", 0)):
            monkeypatch.setattr(mod, "SERIAL_WORK", limit)
            got[path] = k.forward(*arrays, **opts)[0]
        assert np.array_equal(got["serial"], got["parallel"]), (name, rows)
    loops = {"layernorm": ("_ln_fwd_rows_serial", "_ln_fwd_rows"),
             "mlp": ("_bias_gelu_fwd_serial", "_bias_gelu_fwd")}[name]
    assert all(getattr(mod, f).signatures for f in loops), "both loops must have run"
