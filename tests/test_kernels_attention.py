"""attention and decode_attention kernels: their own properties. The contract every family
keeps (every implementation against the reference on T=1, T one past a tile, odd and
extreme head sizes; central differences; determinism; layouts; bad dtypes) is
tests/test_kernel_contract.py, on ``FAMILY.test_sizes``. Here: the reference against an
explicit loop, the saved logsumexp, an explicit scale, huge scores, causality, a model's
(B, T, H, hs) layout, decode as a row of full and of causal attention, the parallel decode
path, the family-specific bad inputs and PyTorch's SDPA.

Tolerances, relative to the largest reference value: float64 1e-10, float32 1e-5. The Numba
versions sum in another order (64-wide tiles, an online softmax that rescales partial sums,
BLAS blocking) and scale q before the product, and their float32 exp is within 1 ulp; that
costs a few ulp per reduction, ~1e-6 at hs=256, and ~1e-15 in float64. With scores of
+-1e4 a float32 score carries an absolute error of ~1e-3 (ulp(1e4)), which moves near-tied
softmax weights by ~1e-3 relative, so that test allows 5e-3 in float32.
"""
import zlib

import numpy as np
import pytest

import tinyllm as tl
from tinyllm.errors import ShapeError
from tinyllm.kernels import decode_attention as dec_mod

A, DEC = "attention", "decode_attention"
IMPLS = tl.kernels.available(A)
FAST = [i for i in IMPLS if i != "numpy"]            # compared against the reference
DEC_IMPLS = tl.kernels.available(DEC)
DEC_FAST = [i for i in DEC_IMPLS if i != "numpy"]
DTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-5, np.float64: 1e-10}


def rel(a, b):
    b = np.asarray(b, np.float64)
    return np.max(np.abs(np.asarray(a, np.float64) - b)) / max(np.max(np.abs(b)), 1e-30)


def qkv(rng, shape, dtype, q_scale=1.0):
    q, k, v = (rng.standard_normal(shape) for _ in range(3))
    return (q * q_scale).astype(dtype), k.astype(dtype), v.astype(dtype)


def seed(*parts):
    """A generator seeded by the test's parameters (crc32: str hashes vary per process)."""
    return np.random.default_rng(zlib.crc32(repr(parts).encode()))


# ---------------------------------------------------------------- attention

def loop_oracle(q, k, v, causal):
    """out and lse by explicit loops in float64, written independently of the kernels."""
    B, H, T, hs = q.shape
    out = np.zeros((B, H, T, hs))
    lse = np.zeros((B, H, T))
    for b, h, t in np.ndindex(B, H, T):
        n = t + 1 if causal else T
        s = [float(np.dot(q[b, h, t], k[b, h, j])) / np.sqrt(hs) for j in range(n)]
        m = max(s)
        w = [np.exp(x - m) for x in s]
        z = sum(w)
        out[b, h, t] = sum(wj * v[b, h, j] for j, wj in enumerate(w)) / z
        lse[b, h, t] = m + np.log(z)
    return out, lse


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (2, 2, 7, 5)])
def test_reference_matches_loop_oracle(shape, causal):
    q, k, v = qkv(seed(shape, causal), shape, np.float64)
    out, cache = tl.kernels.get(A, "numpy").forward(q, k, v, causal=causal)
    o_want, lse_want = loop_oracle(q, k, v, causal)
    assert rel(out, o_want) <= 1e-12
    assert cache.lse.shape == shape[:3]
    assert rel(cache.lse, lse_want) <= 1e-12


def family_sizes(name):
    return [pytest.param(s.params, id=tl.kernels.family(name).label(s.params))
            for s in tl.kernels.family(name).sizes("test")]


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("params", family_sizes(A))
def test_lse_matches_reference(impl, dtype, params):
    """The saved logsumexp (what the backward needs instead of P) agrees with the
    reference's, in the input dtype."""
    arrays, opts = tl.kernels.family(A).inputs(params, np.dtype(dtype), seed(params))
    _, c_r = tl.kernels.get(A, "numpy").forward(*arrays, **opts)
    _, c = tl.kernels.get(A, impl).forward(*arrays, **opts)
    assert c.lse.dtype == dtype and c.lse.shape == arrays[0].shape[:3]
    # -inf exactly where the reference has it (a row with every key masked)
    np.testing.assert_array_equal(np.isneginf(c.lse), np.isneginf(c_r.lse))
    fin = np.isfinite(c_r.lse)
    assert rel(c.lse[fin], c_r.lse[fin]) <= TOL[dtype]


@pytest.mark.parametrize("impl", FAST)
def test_explicit_scale(impl):
    q, k, v = qkv(seed("scale"), (1, 2, 70, 8), np.float64)
    dout = seed("scale-dy").standard_normal(q.shape)
    ref, ker = tl.kernels.get(A, "numpy"), tl.kernels.get(A, impl)
    o_r, c_r = ref.forward(q, k, v, scale=0.7)
    o, c = ker.forward(q, k, v, scale=0.7)
    assert rel(o, o_r) <= 1e-10
    o_d, _ = ref.forward(q, k, v)
    assert rel(o_d, o_r) > 1e-3                         # the scale did change the result
    for g, g_r in zip(ker.backward(dout, c), ref.backward(dout, c_r)):
        assert rel(g, g_r) <= 1e-10


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_scores_stay_finite(impl, dtype):
    shape = (1, 2, 70, 16)
    rng = seed("huge", dtype.__name__)
    q, k, v = qkv(rng, shape, np.float64)
    s = np.abs(q @ k.swapaxes(-1, -2)).max() / 4.0      # scores are q.k / sqrt(16)
    q, k, v = (q * (1e4 / s)).astype(dtype), k.astype(dtype), v.astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    ref, ker = tl.kernels.get(A, "numpy"), tl.kernels.get(A, impl)
    o_r, c_r = ref.forward(q, k, v)
    o, c = ker.forward(q, k, v)
    grads = ker.backward(dout, c)
    assert all(np.isfinite(a).all() for a in (o, c.lse, *grads))
    tol = 5e-3 if dtype == np.float32 else 1e-9
    assert rel(o, o_r) <= tol
    assert rel(c.lse, c_r.lse) <= (1e-5 if dtype == np.float32 else 1e-12)
    assert np.abs(c.lse).max() > 5e3                    # the scores really were huge
    for g, g_r in zip(grads, ref.backward(dout, c_r)):
        assert rel(g, g_r) <= tol


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("which", [0, 1, 2])
def test_future_positions_do_not_change_the_past(impl, dtype, which):
    shape = (2, 2, 130, 16)
    rng = seed("causal", impl, dtype.__name__, which)
    ker = tl.kernels.get(A, impl)
    arrays = qkv(rng, shape, dtype)
    out, cache = ker.forward(*arrays)
    for t in (0, 62, 63, 64, 100, 128):                 # around the tile edges
        changed = [a.copy() for a in arrays]
        changed[which][:, :, t + 1:] = rng.standard_normal(shape)[:, :, t + 1:] * 5
        out2, cache2 = ker.forward(*changed)
        assert np.array_equal(out2[:, :, :t + 1], out[:, :, :t + 1])
        assert np.array_equal(cache2.lse[:, :, :t + 1], cache.lse[:, :, :t + 1])
        assert not np.array_equal(out2, out)           # the future did change
    if which == 0:
        return
    # and non-causal attention does see future keys and values
    changed = [a.copy() for a in arrays]
    changed[which][:, :, 100:] += 1
    assert not np.array_equal(ker.forward(*changed, causal=False)[0][:, :, :5],
                              ker.forward(*arrays, causal=False)[0][:, :, :5])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(impl, dtype):
    B, T, H, hs = 2, 70, 3, 8
    rng = seed("nc", dtype.__name__)
    # (B, T, H, hs) as a model's projections produce them, viewed as (B, H, T, hs)
    q, k, v = (rng.standard_normal((B, T, H, hs)).astype(dtype).transpose(0, 2, 1, 3)
               for _ in range(3))
    dout = rng.standard_normal((B, T, H, hs)).astype(dtype).transpose(0, 2, 1, 3)
    assert not q.flags.c_contiguous and not dout.flags.c_contiguous
    ker = tl.kernels.get(A, impl)
    o, c = ker.forward(q, k, v)
    qc, kc, vc = (np.ascontiguousarray(a) for a in (q, k, v))
    o_c, c_c = ker.forward(qc, kc, vc)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    assert rel(o, o_c) <= tol
    for g, g_c in zip(ker.backward(dout, c), ker.backward(np.ascontiguousarray(dout), c_c)):
        assert rel(g, g_c) <= tol


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_input(impl):
    ker = tl.kernels.get(A, impl)
    x = np.zeros((1, 2, 5, 4), np.float32)
    with pytest.raises(ShapeError, match="attention"):
        ker.forward(x[0], x[0], x[0])                                  # 3-D
    with pytest.raises(ShapeError, match="attention"):
        ker.forward(x, x[:, :, :4], x)                                  # T differs
    with pytest.raises(ShapeError, match="attention"):
        ker.forward(x, x, x[..., :3])                                   # hs differs
    with pytest.raises(ShapeError, match="attention"):
        ker.forward(x[:, :, :0], x[:, :, :0], x[:, :, :0])              # T = 0
    out, cache = ker.forward(x, x, x)
    with pytest.raises(ShapeError, match="attention"):
        ker.backward(np.zeros((1, 2, 5, 3), np.float32), cache)


# ---------------------------------------------------------------- attention with a key mask

def end_mask(B, T, lengths):
    """(B, T) bool: row b is a sequence of lengths[b] real tokens, then padding."""
    return np.arange(T)[None, :] < np.asarray(lengths)[:, None]


def masks(T):
    """Key masks of a 4-row batch: padding at the end (a full row, one across a tile edge,
    length 1, all padding), and leading + scattered padding (causal rows with no key)."""
    lead = np.ones((4, T), bool)
    lead[0, :3] = False                                 # causal rows 0..2 see no key
    lead[1, ::2] = False
    lead[2, T // 2:] = False
    lead[3, :] = False
    return {"end": end_mask(4, T, [T, 65, 1, 0]), "lead": lead}


def additive_mask_oracle(q, k, v, causal, key_mask, dout):
    """out, lse and (dq, dk, dv) in plain float64 NumPy from an additive mask M_ts (0 where
    allowed, -inf where not), with a row that allows nothing defined as P = 0."""
    B, H, T, hs = q.shape
    allowed = np.broadcast_to(key_mask[:, None, None, :], (B, H, T, T)).copy()
    if causal:
        allowed &= np.tril(np.ones((T, T), bool))
    M = np.where(allowed, 0.0, -np.inf)
    S = np.einsum("bhtd,bhsd->bhts", q, k) / np.sqrt(hs) + M
    P = np.zeros_like(S)
    lse = np.full((B, H, T), -np.inf)
    for b, h, t in np.ndindex(B, H, T):
        row = S[b, h, t]
        if np.isfinite(row).any():
            m = row[np.isfinite(row)].max()
            w = np.exp(row - m)
            P[b, h, t] = w / w.sum()
            lse[b, h, t] = m + np.log(w.sum())
    out = P @ v
    dP = dout @ v.swapaxes(-1, -2)
    dS = P * (dP - (P * dP).sum(-1, keepdims=True))
    dq = dS @ k / np.sqrt(hs)
    dk = dS.swapaxes(-1, -2) @ q / np.sqrt(hs)
    dv = P.swapaxes(-1, -2) @ dout
    return out, lse, (dq, dk, dv)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("which", ["end", "lead"])
def test_key_mask_matches_additive_mask_oracle(impl, causal, which):
    shape = (4, 2, 70, 5)
    rng = seed("oracle", impl, causal, which)
    q, k, v = qkv(rng, shape, np.float64)
    dout = rng.standard_normal(shape)
    m = masks(shape[2])[which]
    ker = tl.kernels.get(A, impl)
    o, c = ker.forward(q, k, v, causal=causal, key_mask=m)
    o_w, lse_w, grads_w = additive_mask_oracle(q, k, v, causal, m, dout)
    assert rel(o, o_w) <= 1e-12
    np.testing.assert_array_equal(np.isneginf(c.lse), np.isneginf(lse_w))
    assert np.isneginf(lse_w).any()                     # some rows do attend to nothing
    fin = np.isfinite(lse_w)
    assert rel(c.lse[fin], lse_w[fin]) <= 1e-12
    for g, g_w in zip(ker.backward(dout, c), grads_w):
        assert rel(g, g_w) <= 1e-12
    # the mask mattered: without it the result is another one
    assert rel(ker.forward(q, k, v, causal=causal)[0], o_w) > 1e-2


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
def test_padding_does_not_reach_real_rows(impl, dtype, causal):
    """q, k, v at padded positions, changed to anything finite, leave out, lse and dq of
    every real query row bitwise unchanged (k, v: of every row, and dk, dv at the real keys;
    a padded query row still attends to the real keys, so its q does move their dk, dv);
    dk and dv at padded keys are exactly 0."""
    B, H, T, hs = 4, 2, 130, 8
    rng = seed("pad", impl, dtype.__name__, causal)
    m = end_mask(B, T, [T, 65, 1, 0]) & (rng.random((B, T)) < 0.9)
    ker = tl.kernels.get(A, impl)
    arrays = qkv(rng, (B, H, T, hs), dtype)
    dout = rng.standard_normal((B, H, T, hs)).astype(dtype)
    real = np.broadcast_to(m[:, None, :], (B, H, T))   # (B, H, T) real query rows
    pad = ~real
    out, c = ker.forward(*arrays, causal=causal, key_mask=m)
    grads = ker.backward(dout, c)
    for g in grads[1:]:
        assert (g[pad] == 0).all()                      # dk, dv at padded keys
    assert (grads[2][real] != 0).any()
    for which in range(3):
        changed = [a.copy() for a in arrays]
        changed[which][pad] = (rng.standard_normal(changed[which][pad].shape) * 5).astype(dtype)
        out2, c2 = ker.forward(*changed, causal=causal, key_mask=m)
        rows = real if which == 0 else np.ones_like(real)
        assert np.array_equal(out2[rows], out[rows])
        assert np.array_equal(c2.lse[rows], c.lse[rows])
        grads2 = ker.backward(dout, c2)
        for j, (g, g2) in enumerate(zip(grads, grads2)):
            if which == 0 and j > 0:
                continue
            assert np.array_equal(g2[real], g[real]), (which, j)
    changed = [a.copy() for a in arrays]
    changed[1][real] += 1                               # a real key does change the result
    assert not np.array_equal(ker.forward(*changed, causal=causal, key_mask=m)[0][real],
                              out[real])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
def test_rows_with_no_key_give_zeros_not_nan(impl, dtype, causal):
    B, H, T, hs = 4, 3, 67, 4
    rng = seed("nokey", impl, dtype.__name__, causal)
    m = masks(T)["lead"]
    ker = tl.kernels.get(A, impl)
    q, k, v = qkv(rng, (B, H, T, hs), dtype)
    dout = rng.standard_normal(q.shape).astype(dtype)
    with np.errstate(all="raise"):                      # no invalid / overflow on the way
        out, c = ker.forward(q, k, v, causal=causal, key_mask=m)
        dq, dk, dv = ker.backward(dout, c)
    allowed = np.broadcast_to(m[:, None, None, :], (B, H, T, T))
    if causal:
        allowed = allowed & np.tril(np.ones((T, T), bool))
    none = ~allowed.any(-1)                             # (B, H, T) rows with no key
    assert none[3].all() and not none[:3].all()         # the all-padding batch row
    if causal:
        assert none[0, :, :3].all()                     # leading padding: rows 0..2 too
    assert all(np.isfinite(a).all() for a in (out, dq, dk, dv))
    assert (out[none] == 0).all() and np.isneginf(c.lse[none]).all()
    assert np.isfinite(c.lse[~none]).all()
    assert (dq[none] == 0).all()
    # every gradient of the all-padding batch row is exactly 0
    assert all((g[3] == 0).all() for g in (dq, dk, dv))
    assert (out[~none] != 0).any() and (dq[~none] != 0).any()


@pytest.mark.parametrize("impl", IMPLS)
def test_unmasked_key_mask_is_no_mask(impl):
    """An all-True key mask gives the unmasked result bit for bit."""
    rng = seed("alltrue", impl)
    q, k, v = qkv(rng, (2, 2, 70, 8), np.float32)
    dout = rng.standard_normal(q.shape).astype(np.float32)
    ker = tl.kernels.get(A, impl)
    for causal in (True, False):
        o, c = ker.forward(q, k, v, causal=causal)
        o_m, c_m = ker.forward(q, k, v, causal=causal, key_mask=np.ones((2, 70), bool))
        assert np.array_equal(o, o_m) and np.array_equal(c.lse, c_m.lse)
        for g, g_m in zip(ker.backward(dout, c), ker.backward(dout, c_m)):
            assert np.array_equal(g, g_m)


def test_key_block_table():
    """What the Numba kernels skip: a 64-key block of padding only is _SKIP, a block mixing
    real keys and padding _PART, one of real keys only _FULL; no mask: no table at all."""
    from tinyllm.kernels import attention as mod
    T = 130                                             # blocks of 64, 64 and 2 keys
    m = end_mask(6, T, [T, 65, 64, 1, 0, 129])
    has, state, km = mod._key_blocks(m, 6, T, 64)
    S, P, F = mod._SKIP, mod._PART, mod._FULL
    assert has and km is m and state.dtype == np.int8
    np.testing.assert_array_equal(state, [[F, F, F], [F, P, S], [F, S, S], [P, S, S],
                                          [S, S, S], [F, F, P]])
    assert mod._key_blocks(None, 6, T, 64)[0] is False


def masked_family_sizes():
    fam = tl.kernels.family(A)
    return [pytest.param(s.params, id=fam.label(s.params))
            for s in fam.sizes("test") if s.params.get("pad")]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("params", masked_family_sizes())
def test_masked_family_sizes_give_checkable_gradients(impl, params):
    """The contract test's finite differences skip NaN and cannot judge a gradient that is
    zero everywhere: on every masked test size the outputs and gradients are finite, exactly
    0 where the mask says so, and not 0 elsewhere, so the check has something to judge."""
    arrays, opts = tl.kernels.family(A).inputs(params, np.dtype(np.float64), seed(params))
    m = opts["key_mask"]
    assert m is not None and not m.all()
    ker = tl.kernels.get(A, impl)
    out, c = ker.forward(*arrays, **opts)
    grads = ker.backward(seed("dy", params).standard_normal(out.shape), c)
    assert all(np.isfinite(a).all() for a in (out, *grads))
    pad = np.broadcast_to(~m[:, None, :], out.shape[:3])
    for g in grads[1:]:
        assert (g[pad] == 0).all()
    for g in grads:
        assert (g[~pad] != 0).any()
    if params["pad"] == "end" and params["B"] > 1:
        assert all((g[1] == 0).all() for g in (out, *grads))     # the all-padding row


def test_finite_differences_catch_a_backward_that_forgets_the_mask():
    """A backward that recomputes the scores without the key mask (P = exp(S - lse) then
    leaks onto padded keys) fails the contract's check on a masked size."""
    from types import SimpleNamespace

    from test_kernel_contract import check_backward
    ref = tl.kernels.get(A, "numpy")
    params = {"B": 3, "H": 2, "T": 5, "hs": 3, "causal": False, "pad": "end"}
    arrays, opts = tl.kernels.family(A).inputs(params, np.dtype(np.float64), seed("plant"))
    check_backward(ref, arrays, opts, np.random.default_rng(0))

    def forgets(dout, cache):
        return ref.backward(dout, SimpleNamespace(**{**vars(cache), "key_mask": None}))
    bad = tl.kernels.Kernel(A, "planted", ref.forward, forgets, ref.inputs)
    with pytest.raises(AssertionError, match=r"input [qkv]\["):
        check_backward(bad, arrays, opts, np.random.default_rng(0))


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_key_mask(impl):
    ker = tl.kernels.get(A, impl)
    x = np.zeros((2, 3, 5, 4), np.float32)
    good = np.ones((2, 5), bool)
    for bad in (good.astype(np.int64), good.astype(np.float32), good.tolist()):
        with pytest.raises(TypeError, match=r"attention: key_mask must be a bool"):
            ker.forward(x, x, x, key_mask=bad)
    for bad in (good[:, :4], good[:1], good[0], good[:, None], np.ones((2, 3, 5), bool)):
        with pytest.raises(ShapeError, match=r"attention: key_mask must be \(B, T\)"):
            ker.forward(x, x, x, key_mask=bad)
    ker.forward(x, x, x, key_mask=good[:, ::-1])        # any layout of the right shape


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("causal", [True, False])
def test_functional_key_mask_gradcheck(impl, causal):
    F = tl.functional
    rng = seed("F", causal)
    q, k, v = qkv(rng, (3, 2, 6, 3), np.float64)
    m = end_mask(3, 6, [6, 3, 0])
    m[1, 0] = False                                     # leading padding too
    with tl.kernels.use(impl):
        assert tl.gradcheck(
            lambda a, b, c: F.scaled_dot_product_attention(a, b, c, causal, key_mask=m),
            [q, k, v])
        # a Tensor mask is read as its array; the padded keys get exactly zero gradient
        ts = [tl.Tensor(a, requires_grad=True) for a in (q, k, v)]
        y = F.scaled_dot_product_attention(*ts, causal=causal, key_mask=tl.Tensor(m))
        (y * tl.Tensor(rng.standard_normal(y.shape))).sum().backward()
    pad = np.broadcast_to(~m[:, None, :], (3, 2, 6))
    assert (ts[1].grad[pad] == 0).all() and (ts[2].grad[pad] == 0).all()
    assert np.isfinite(y.data).all() and (y.data[2] == 0).all()
    assert (ts[0].grad[~pad] != 0).any()


@pytest.mark.torch
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("causal", [True, False])
def test_key_mask_matches_torch_sdpa(impl, causal):
    """Against SDPA with a boolean attn_mask (True = take part), on rows that keep at least
    one key (torch gives NaN on a row with none; tinyllm defines it as 0)."""
    torch = pytest.importorskip("torch")
    B, H, T, hs = 3, 2, 70, 8
    rng = seed("torch-mask", impl, causal)
    q, k, v = qkv(rng, (B, H, T, hs), np.float64)
    dout = rng.standard_normal(q.shape)
    m = end_mask(B, T, [T, 66, 1])
    m[1, 5:9] = False                                   # some padding inside a row
    ker = tl.kernels.get(A, impl)
    o, c = ker.forward(q, k, v, causal=causal, key_mask=m)
    grads = ker.backward(dout, c)
    allowed = np.broadcast_to(m[:, None, None, :], (B, 1, T, T))
    if causal:
        allowed = allowed & np.tril(np.ones((T, T), bool))
    assert allowed.any(-1).all()                        # no row without a key here
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    to = torch.nn.functional.scaled_dot_product_attention(
        tq, tk, tv, attn_mask=torch.from_numpy(np.ascontiguousarray(allowed)))
    to.backward(torch.tensor(dout))
    assert rel(o, to.detach().numpy()) <= 1e-10
    for g, t in zip(grads, (tq, tk, tv)):
        assert rel(g, t.grad.numpy()) <= 1e-10


# ---------------------------------------------------------------- decode_attention

def dec_inputs(rng, B, H, Lmax, hs, dtype, poison_from=None):
    """q, k_cache, v_cache from the family's builder; with ``poison_from``, the cache past
    that position is NaN (positions past the length must never be read)."""
    p = {"B": B, "H": H, "L": Lmax, "Lmax": Lmax, "hs": hs}
    q, k, v, _ = tl.kernels.family(DEC).inputs(p, np.dtype(dtype), rng)[0]
    if poison_from is not None:
        k[:, :, poison_from:] = np.nan
        v[:, :, poison_from:] = np.nan
    return q, k, v


# the prange version (used for big batches) shares its per-head code with the serial one, so
# float32 alone covers it and saves two compiles; the serial one is the contract test's
@pytest.mark.parametrize("dtype, parallel",
                         [(np.float32, False), (np.float64, False), (np.float32, True)])
@pytest.mark.parametrize("impl", DEC_FAST)
@pytest.mark.parametrize("params", family_sizes(DEC))
def test_decode_matches_reference(impl, dtype, params, parallel, monkeypatch):
    """Both paths against the reference, the lse too; the cache gradients are zero past the
    length and dv is not zero before it."""
    if parallel:
        monkeypatch.setattr(dec_mod, "_PARALLEL_WORK", 0)
    (q, k, v, L), _ = tl.kernels.family(DEC).inputs(params, np.dtype(dtype), seed(params))
    dout = seed("dy", params).standard_normal(q.shape).astype(dtype)
    ref, ker = tl.kernels.get(DEC, "numpy"), tl.kernels.get(DEC, impl)
    o_r, c_r = ref.forward(q, k, v, L)
    o, c = ker.forward(q, k, v, L)
    assert c.lse.dtype == dtype and c.lse.shape == q.shape[:3]
    assert rel(o, o_r) <= TOL[dtype]
    assert rel(c.lse, c_r.lse) <= TOL[dtype]
    grads = ker.backward(dout, c)
    for g, g_r in zip(grads, ref.backward(dout, c_r)):
        assert rel(g, g_r) <= TOL[dtype]
    for g in grads[1:]:
        assert (g[:, :, L:] == 0).all()
    assert (grads[2][:, :, :L] != 0).all()              # dv_s = P_s dO


@pytest.mark.parametrize("impl", DEC_IMPLS)
def test_decode_length_one(impl):
    """One cached position: P = 1, so out = v_0, and dq, dk are 0 up to rounding (the exact
    value the contract's relative comparison cannot judge); the finite differences agree."""
    from test_kernel_contract import check_backward
    rng = seed("dec-one", impl)
    q, k, v = dec_inputs(rng, 2, 2, 12, 5, np.float64)
    ker = tl.kernels.get(DEC, impl)
    o, c = ker.forward(q, k, v, 1)
    np.testing.assert_allclose(o, v[:, :, :1], rtol=1e-15, atol=1e-15)
    dq, dk, dv = ker.backward(np.ones_like(o), c)
    assert np.abs(dq).max() < 1e-14 and np.abs(dk).max() < 1e-14
    np.testing.assert_array_equal(dv[:, :, 0], np.ones_like(o[:, :, 0]))
    check_backward(ker, [q, k, v, 1], {}, rng)


@pytest.mark.parametrize("impl", DEC_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_is_the_last_row_of_full_attention(impl, dtype):
    B, H, Lmax, L, hs = 2, 3, 90, 70, 8
    rng = seed("dec-full", dtype.__name__)
    q, k, v = dec_inputs(rng, B, H, Lmax, hs, dtype, poison_from=L)
    o, c = tl.kernels.get(DEC, impl).forward(q, k, v, L)
    assert np.isfinite(o).all()
    # full (non-causal) attention over the first L keys, with q as the last query
    Q = rng.standard_normal((B, H, L, hs)).astype(dtype)
    Q[:, :, -1] = q[:, :, 0]
    o_full, c_full = tl.kernels.get(A, "numpy").forward(Q, k[:, :, :L], v[:, :, :L],
                                                        causal=False)
    assert rel(o, o_full[:, :, -1:]) <= TOL[dtype]
    assert rel(c.lse, c_full.lse[:, :, -1:]) <= TOL[dtype]


@pytest.mark.parametrize("impl", DEC_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_is_row_t_of_causal_attention(impl, dtype):
    B, H, T, hs, Lmax = 1, 4, 70, 16, 80
    rng = seed("dec-causal", dtype.__name__)
    q, k, v = qkv(rng, (B, H, T, hs), dtype)
    # causal attention with the fast kernel where there is one: the two must agree
    attn = tl.kernels.get(A, impl if impl in IMPLS else "numpy")
    out, cache = attn.forward(q, k, v, causal=True)
    ker = tl.kernels.get(DEC, impl)
    kc = np.full((B, H, Lmax, hs), np.nan, dtype)
    vc = np.full((B, H, Lmax, hs), np.nan, dtype)
    for t in range(T):                                  # a generation loop filling the cache
        kc[:, :, t], vc[:, :, t] = k[:, :, t], v[:, :, t]
        if t in (0, 1, 31, 63, 64, 69):
            o, c = ker.forward(q[:, :, t:t + 1], kc, vc, t + 1)
            assert rel(o, out[:, :, t:t + 1]) <= TOL[dtype]
            assert rel(c.lse, cache.lse[:, :, t:t + 1]) <= TOL[dtype]


@pytest.mark.parametrize("impl", DEC_IMPLS)
def test_decode_huge_scores_and_non_contiguous(impl):
    rng = seed("dec-huge")
    B, H, Lmax, L, hs = 1, 3, 30, 25, 16
    q, k, v = dec_inputs(rng, B, H, Lmax, hs, np.float64)
    q *= 1e4 / np.abs(q @ k.swapaxes(-1, -2)).max() * 4
    ref, ker = tl.kernels.get(DEC, "numpy"), tl.kernels.get(DEC, impl)
    o, c = ker.forward(q, k, v, L)
    assert np.isfinite(o).all() and np.abs(c.lse).max() > 5e3
    assert rel(o, ref.forward(q, k, v, L)[0]) <= 1e-9
    # a cache laid out (B, Lmax, H, hs), viewed as (B, H, Lmax, hs)
    kt = np.ascontiguousarray(k.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    vt = np.ascontiguousarray(v.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    assert not kt.flags.c_contiguous
    o2, c2 = ker.forward(q, kt, vt, L)
    assert rel(o2, o) <= 1e-13
    dout = rng.standard_normal(o.shape)
    for g, g2 in zip(ker.backward(dout, c), ker.backward(dout, c2)):
        assert rel(g2, g) <= 1e-13


@pytest.mark.parametrize("impl", DEC_IMPLS)
def test_decode_bad_input(impl):
    ker = tl.kernels.get(DEC, impl)
    q = np.zeros((1, 2, 1, 4), np.float32)
    kc = np.zeros((1, 2, 8, 4), np.float32)
    with pytest.raises(ShapeError, match="decode_attention"):
        ker.forward(np.zeros((1, 2, 2, 4), np.float32), kc, kc, 3)     # two queries
    with pytest.raises(ShapeError, match="decode_attention"):
        ker.forward(q[0], kc, kc, 3)                                    # 3-D q
    with pytest.raises(ShapeError, match="decode_attention"):
        ker.forward(q, kc, kc[:, :, :7], 3)                             # k, v differ
    with pytest.raises(ShapeError, match="decode_attention"):
        ker.forward(q, kc[..., :3], kc[..., :3], 3)                     # hs differs
    with pytest.raises(ShapeError, match="decode_attention"):
        ker.forward(q, kc[:, :1], kc[:, :1], 3)                         # H differs
    for bad in (0, -1, 9):
        with pytest.raises(ValueError, match="decode_attention"):
            ker.forward(q, kc, kc, bad)
    for bad in (2.0, True, None):
        with pytest.raises(TypeError, match="decode_attention"):
            ker.forward(q, kc, kc, bad)
    o, c = ker.forward(q, kc, kc, np.int64(8))                          # NumPy ints are fine
    with pytest.raises(ShapeError, match="decode_attention"):
        ker.backward(np.zeros((1, 2, 2, 4), np.float32), c)


# ---------------------------------------------------------------- PyTorch oracle

@pytest.mark.torch
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("causal", [True, False])
def test_matches_torch_sdpa(impl, causal):
    torch = pytest.importorskip("torch")
    shape = (2, 3, 70, 16)
    rng = seed("torch", impl, causal)
    q, k, v = qkv(rng, shape, np.float64)
    dout = rng.standard_normal(shape)
    ker = tl.kernels.get(A, impl)
    o, c = ker.forward(q, k, v, causal=causal)
    grads = ker.backward(dout, c)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    to = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
    to.backward(torch.tensor(dout))
    assert rel(o, to.detach().numpy()) <= 1e-10
    for g, t in zip(grads, (tq, tk, tv)):
        assert rel(g, t.grad.numpy()) <= 1e-10
