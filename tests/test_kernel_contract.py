"""The kernel contract, for every family x implementation x dtype x test size.

Every family module's ``FAMILY`` (``tinyllm/kernels/_family.py``) describes its inputs and its
test sizes; this file checks each of them the same way, so a new family is covered as soon as
its module exists:

- the backward against central differences in float64, with a random upstream gradient
  (never through ``out.sum()``, whose gradient hides a wrong softmax), for the reference and
  every other implementation (at most ``FD_ELEMENTS`` random elements of each input);
- each implementation against the reference, forward and backward, within ``FAMILY.tol``
  (max |impl - ref| / max |ref| per array), dtypes and shapes preserved;
- determinism: two calls give the same bits;
- non-contiguous (strided, transposed) inputs and upstream gradients give the results of
  their contiguous copies;
- bad dtypes raise TypeError and bad shapes ShapeError (or ValueError), naming the kernel.

A family without a backward (``FAMILY.backward = False``, e.g. an optimiser update that
changes its inputs in place) is checked on its forward only, and every call gets its own
deep copy of the inputs. ``test_finite_difference_check_catches_a_planted_bug`` shows the
finite-difference check can fail. Family-specific properties (causality, masked rows,
+-1e4 logits, loop and torch oracles, ...) live in tests/test_kernels_<family>.py.
"""
import copy
import inspect
import re

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import kernels
from tinyllm.errors import ShapeError
from tinyllm.kernels._harness import central_differences, max_rel_err, random_like

DTYPES = (np.float32, np.float64)
FD_ELEMENTS = 64            # finite differences on at most this many elements per input


def _cases(sizes="test", impls=True):
    out = []
    for name in kernels.FAMILIES:
        fam = kernels.family(name)
        for impl in (kernels.available(name) if impls else [None]):
            for size in (fam.sizes(sizes) if sizes else [None]):
                label = "" if size is None else "-" + fam.label(size.params).replace(" ", "_")
                out.append(pytest.param(name, impl, size,
                                        id=f"{name}-{impl or ''}{label}"))
    return out


CASES = _cases()
FAMILY_IMPL = _cases(sizes=None)
IDS = {np.float32: "f32", np.float64: "f64"}


def inputs(name, size, dtype, seed=0):
    fam = kernels.family(name)
    return fam.inputs(size.params, np.dtype(dtype), np.random.default_rng(seed))


def call(k, arrays, opts, backward_too=True, dout=None, seed=1):
    """(out, grads, the inputs after the call) of one forward (and backward). ``arrays`` is
    a tuple (deep-copied, since a family without a backward may update it in place) or a
    function returning fresh inputs; ``dout`` random (seeded) unless given."""
    arrays = arrays() if callable(arrays) else copy.deepcopy(arrays)
    out, cache = k.forward(*arrays, **opts)
    grads = None
    if backward_too and kernels.family(k.name).backward:
        if dout is None:
            dout = random_like(out, np.random.default_rng(seed))
        grads = k.backward(dout, cache)
    return out, grads, arrays


def diff_positions(k):
    """The positional indexes of the differentiable inputs (``Kernel.inputs``, the order of
    ``backward``'s gradients) in ``forward``'s signature."""
    params = list(inspect.signature(k.forward).parameters)
    return [params.index(n) for n in k.inputs]


def tol(name, dtype):
    return kernels.family(name).tol[np.dtype(dtype).name]


# ---------------------------------------------------------------- the family descriptions

@pytest.mark.parametrize("name", kernels.FAMILIES)
def test_family_description(name):
    fam = kernels.family(name)
    mod = kernels.module(name)
    assert fam.name == name == mod.NAME
    assert fam.unit in (kernels.GBPS, kernels.GFLOPS)
    assert set(fam.tol) == {"float32", "float64"}
    assert mod.NUMBA.inputs == mod.REFERENCE.inputs
    assert (mod.REFERENCE.backward is not None) == fam.backward
    for which in ("test", "quick", "full"):
        sizes = fam.sizes(which)
        assert sizes, which
        labels = [fam.label(s.params) for s in sizes]
        assert len(set(labels)) == len(labels), labels          # each size has its own name
        for s in sizes:
            w = fam.work(s.params, 4)
            counted = (w.flops, w.bytes) if fam.backward else (w.flops[:1], w.bytes[:1])
            assert all(v > 0 for part in counted for v in part), (which, s)
            assert fam.x(s.params) > 0
    with pytest.raises(KeyError, match=name):
        fam.sizes("huge")
    if fam.torch is not None:
        from tinyllm.bench.torch_peer import TORCH
        assert fam.torch in TORCH


# ---------------------------------------------------------------- finite differences

def check_backward(k, arrays, opts, rng, eps=1e-6, atol=1e-8, rtol=1e-6):
    """The analytic gradients of L = sum(forward(...) * dy), dy random, against central
    differences, on float64 inputs. Raises AssertionError naming the input that is off."""
    arrays = [a.copy() if isinstance(a, np.ndarray) else a for a in arrays]
    out, cache = k.forward(*arrays, **opts)
    dy = random_like(out, rng)
    grads = k.backward(dy, cache)
    pos = diff_positions(k)
    assert len(grads) == len(pos), (k, len(grads))
    # every test input is finite, so must every output and gradient be: a NaN would
    # otherwise read as an element the finite differences skipped
    for o in (out if isinstance(out, (tuple, list)) else (out,)):
        assert np.isfinite(o).all(), f"{k}: non-finite forward output"
    for name, g in zip(k.inputs, grads):
        assert g is None or np.isfinite(g).all(), f"{k} input {name}[]: non-finite gradient"

    def loss(a):
        o, _ = k.forward(*a, **opts)
        o, d = (o, dy) if isinstance(o, tuple) else ((o,), (dy,))
        return sum(float(np.sum(oi * di)) for oi, di in zip(o, d))

    at = []
    for p in pos:
        a = arrays[p]
        if a.size <= FD_ELEMENTS:
            at.append(None)                                 # every element
        else:
            flat = rng.choice(a.size, FD_ELEMENTS, replace=False)
            at.append([np.unravel_index(i, a.shape) for i in flat])
    numeric = central_differences(loss, arrays, wrt=pos, eps=eps, at=at)
    for name, p, g, num in zip(k.inputs, pos, grads, numeric):
        assert g is not None and g.shape == arrays[p].shape, (k, name)
        where = ~np.isnan(num)
        scale = max(1.0, float(np.max(np.abs(num[where]), initial=0.0)))
        err = np.where(where, np.abs(g - np.where(where, num, 0)), 0.0)
        bad = err > atol * scale + rtol * np.abs(np.where(where, num, 0))
        if bad.any():
            i = np.unravel_index(np.argmax(np.where(bad, err, -1)), err.shape)
            raise AssertionError(f"{k} input {name}{list(i)}: analytic {g[i]:.9g}, central "
                                 f"differences {num[i]:.9g}")


@pytest.mark.parametrize("name,impl,size", CASES)
def test_backward_matches_central_differences(name, impl, size):
    if not kernels.family(name).backward:
        pytest.skip(f"{name} has no backward")
    arrays, opts = inputs(name, size, np.float64)
    check_backward(kernels.get(name, impl), arrays, opts, np.random.default_rng(2))


def _planted():
    """(family, what, broken backward(ref, dout, cache), the input it gets wrong)."""
    def softmax_sum_trap(ref, dy, y):
        return (y * dy,)                                   # forgot - sum_j dy_j y_j

    def ce_ignores_dloss(ref, dloss, cache):
        return ref.backward(np.float64(1.0), cache)

    def ln_no_xhat_term(ref, dy, cache):
        x, w, b, mean, rstd = cache
        dx, dw, db = ref.backward(dy, cache)
        g = dy * w
        return rstd[..., None] * (g - g.mean(-1, keepdims=True)), dw, db

    def attention_dk_off(ref, dout, cache):
        dq, dk, dv = ref.backward(dout, cache)
        return dq, dk * 1.01, dv

    def attention_nan_dv(ref, dout, cache):
        dq, dk, dv = ref.backward(dout, cache)
        dv = dv.copy()
        dv[0, 0, -1, 0] = np.nan              # a padded key's gradient: 0 when right
        return dq, dk, dv

    def additive_no_value_path(ref, dout, cache):
        dh, dx, dW_q, dW_k, dv_a = ref.backward(dout, cache)
        alpha, dc = cache[7], dout[0]
        return dh, dx - alpha[:, :, None] * dc[:, None, :], dW_q, dW_k, dv_a

    def additive_no_centring(ref, dout, cache, which):
        # de_i = a_i g_i (softmax's - sum_j a_j g_j forgotten), pushed through by hand
        h, x, W_q, W_k, v_a, u, c, alpha = cache
        dc, dalpha = dout
        grads = list(ref.backward(dout, cache))
        de = alpha * (dalpha + np.einsum("bsd,bd->bs", x, dc))
        du = de[:, :, None] * v_a * (1 - u * u)
        if which == "v_a":
            grads[4] = np.einsum("bs,bsa->a", de, u)
        else:
            grads[0] = du.sum(axis=1) @ W_q.T
        return tuple(grads)

    return [
        ("softmax", "sum trap", softmax_sum_trap, "x", {"shape": [3, 7]}),
        ("cross_entropy", "dloss ignored", ce_ignores_dloss, "logits", {"N": 4, "V": 5}),
        ("layernorm", "no xhat term", ln_no_xhat_term, "x", {"N": 3, "C": 6}),
        ("attention", "dk off by 1%", attention_dk_off, "k",
         {"B": 1, "H": 2, "T": 6, "hs": 3, "causal": True}),
        ("attention", "a NaN in dv", attention_nan_dv, "v",
         {"B": 2, "H": 1, "T": 5, "hs": 3, "causal": False, "pad": "end"}),
        ("additive_attention", "no value path", additive_no_value_path, "x",
         {"B": 2, "S": 3, "Dh": 3, "Dx": 4, "A": 5, "masked": False}),
        ("additive_attention", "no centring (dv_a)",
         lambda r, d, c: additive_no_centring(r, d, c, "v_a"), "v_a",
         {"B": 2, "S": 3, "Dh": 3, "Dx": 4, "A": 5, "masked": False}),
        ("additive_attention", "no centring (dh)",
         lambda r, d, c: additive_no_centring(r, d, c, "h"), "h",
         {"B": 2, "S": 3, "Dh": 3, "Dx": 4, "A": 5, "masked": False}),
    ]


@pytest.mark.parametrize("name,what,broken,wrong,params", _planted(),
                         ids=[f"{p[0]}-{p[1]}" for p in _planted()])
def test_finite_difference_check_catches_a_planted_bug(name, what, broken, wrong, params):
    """The check above passes the right backward and fails a plausible wrong one, naming the
    input whose gradient is off."""
    ref = kernels.get(name, "numpy")
    arrays, opts = kernels.family(name).inputs(params, np.dtype(np.float64),
                                               np.random.default_rng(5))
    check_backward(ref, arrays, opts, np.random.default_rng(6))
    bad = tl.kernels.Kernel(name, "planted", ref.forward,
                            lambda dout, cache: broken(ref, dout, cache), ref.inputs)
    with pytest.raises(AssertionError, match=rf"input {wrong}\["):
        check_backward(bad, arrays, opts, np.random.default_rng(6))


# ---------------------------------------------------------------- against the reference

def _structure(x):
    """[(shape, dtype)] of every array in a nested output."""
    if x is None:
        return [None]
    if isinstance(x, (tuple, list)):
        return [s for item in x for s in _structure(item)]
    return [(np.shape(x), np.asarray(x).dtype)]


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
@pytest.mark.parametrize("name,impl,size", CASES)
def test_matches_reference(name, impl, size, dtype):
    arrays, opts = inputs(name, size, dtype)
    k, ref = kernels.get(name, impl), kernels.get(name, "numpy")
    out, grads, after = call(k, arrays, opts)
    out_r, grads_r, after_r = call(ref, arrays, opts)
    assert _structure(out) == _structure(out_r)
    want = np.dtype(kernels.family(name).out_dtype or dtype)
    assert all(s is None or s[1] == want for s in _structure(out)), "dtype not kept"
    assert max_rel_err(out, out_r) <= tol(name, dtype)
    # what an in-place update left in its inputs must agree too
    assert max_rel_err([a for a in after if isinstance(a, np.ndarray)],
                       [a for a in after_r if isinstance(a, np.ndarray)]) <= tol(name, dtype)
    if grads is None:
        return
    assert len(grads) == len(grads_r) == len(k.inputs)
    for p, g, g_r in zip(diff_positions(k), grads, grads_r):
        assert g.dtype == dtype and g.shape == arrays[p].shape == g_r.shape
        err = max_rel_err(g, g_r)
        assert err <= tol(name, dtype), (impl, k.inputs[diff_positions(k).index(p)], err)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
@pytest.mark.parametrize("name,impl,size", CASES)
def test_deterministic(name, impl, size, dtype):
    arrays, opts = inputs(name, size, dtype)
    k = kernels.get(name, impl)
    runs = [call(k, arrays, opts) for _ in range(2)]
    flat = [[a.tobytes() for a in _flat(r)] for r in runs]
    assert flat[0] == flat[1]


def _flat(x):
    if x is None:
        return []
    if isinstance(x, (tuple, list)):
        return [a for item in x for a in _flat(item)]
    return [np.asarray(x)] if isinstance(x, (np.ndarray, np.generic)) else []


# ---------------------------------------------------------------- layouts

def noncontiguous(a):
    """The same values in another layout: column-major for a matrix, else every other
    element of a twice-as-wide buffer."""
    if not isinstance(a, np.ndarray) or a.ndim == 0:
        return a
    if a.ndim == 2 and min(a.shape) > 1:
        out = np.asfortranarray(a)
    else:
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        out = big[..., ::2]
    np.testing.assert_array_equal(out, a)
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
@pytest.mark.parametrize("name,impl,size", CASES)
def test_non_contiguous_inputs(name, impl, size, dtype):
    arrays, opts = inputs(name, size, dtype)
    k = kernels.get(name, impl)
    out, grads, _ = call(k, arrays, opts)
    nc_opts = {key: noncontiguous(v) for key, v in opts.items()}
    dout = None
    if grads is not None:
        d = random_like(out, np.random.default_rng(1))
        dout = tuple(map(noncontiguous, d)) if isinstance(d, tuple) else noncontiguous(d)
    # fresh strided buffers for the call (a deep copy would make them contiguous again)
    nc = tuple(noncontiguous(a) for a in arrays)
    assert any(isinstance(a, np.ndarray) and a.size > 1 and not a.flags.c_contiguous
               for a in nc) or all(np.size(a) <= 1 for a in arrays), "nothing non-contiguous"
    out_n, grads_n, _ = call(k, lambda: nc, nc_opts, dout=dout)
    assert max_rel_err(out_n, out) <= tol(name, dtype)
    if grads is not None:
        assert max_rel_err(grads_n, grads) <= tol(name, dtype)


# ---------------------------------------------------------------- bad input

def _bad_calls(name, arrays, opts):
    """(description, arrays, exception) for each bad call built from good inputs."""
    floats = [j for j, a in enumerate(arrays) if isinstance(a, np.ndarray) and a.dtype.kind == "f"]
    arrs = [j for j, a in enumerate(arrays) if isinstance(a, np.ndarray)]
    other = {np.float32: np.float64, np.float64: np.float32}[arrays[floats[0]].dtype.type]

    def swap(j, v):
        a = list(arrays)
        a[j] = v
        return tuple(a)
    free = kernels.family(name).free_inputs        # any shapes, any float dtype per array
    out = []
    for j in floats:
        out.append((f"input {j} int64", swap(j, arrays[j].astype(np.int64)), TypeError))
        if not free:
            out.append((f"input {j} 0-d", swap(j, np.asarray(arrays[j].reshape(-1)[0])),
                        ValueError))                               # ShapeError included
    j = floats[0]
    out.append(("a list", swap(j, arrays[j].tolist()), TypeError))
    if free:
        return out
    out.append(("float16", swap(j, arrays[j].astype(np.float16)), TypeError))
    if len(floats) > 1:
        out.append(("mixed dtypes", swap(floats[1], arrays[floats[1]].astype(other)),
                    TypeError))
    if len(arrs) > 1:                                              # shapes that disagree
        for j in arrs:
            out.append((f"input {j} with an extra axis", swap(j, arrays[j][..., None]),
                        ShapeError))
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
@pytest.mark.parametrize("name,impl,size", FAMILY_IMPL)
def test_bad_input_raises_naming_the_kernel(name, impl, size, dtype):
    size = kernels.family(name).sizes("test")[-1]
    arrays, opts = inputs(name, size, dtype)
    k = kernels.get(name, impl)
    named = rf"\b{re.escape(name)}\b"
    for what, bad, exc in _bad_calls(name, arrays, opts):
        with pytest.raises(exc, match=named):
            k.forward(*copy.deepcopy(bad), **opts)
    if not kernels.family(name).backward:
        return
    out, cache = k.forward(*copy.deepcopy(arrays), **opts)
    d = random_like(out, np.random.default_rng(0))
    wide = tuple(np.ones(np.shape(o) + (2,), dtype) for o in d) if isinstance(d, tuple) \
        else np.ones(np.shape(d) + (2,), dtype)
    with pytest.raises(ShapeError, match=named):
        k.backward(wide, cache)


def test_max_rel_err_counts_a_nan_as_an_infinite_error():
    a = np.array([1.0, 2.0, np.inf])
    assert max_rel_err(np.array([1.0, np.nan, np.inf]), a) == np.inf
    assert max_rel_err(a, np.array([1.0, np.nan, np.inf])) == np.inf
    assert max_rel_err(np.array([np.nan, 1.0]), np.array([np.nan, 1.0])) == 0.0
    assert max_rel_err(a, a.copy()) == 0.0
