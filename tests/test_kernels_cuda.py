"""The ``cuda`` kernels (numba.cuda), against each family's NumPy reference.

Where no GPU is visible, tests/conftest.py switches Numba's CUDA simulator on before
numba.cuda is imported, and the very same kernel code runs on the CPU with NumPy arrays.
The simulator spends tens of milliseconds per block, so the sizes here are tiny, and
``tinyllm.kernels._cuda`` gives it 8-thread blocks and 8 x 8 attention tiles: T = 9 is
"tile + 1". Checked, for float32 and float64, forward and backward within the family's
tolerance: T = 1, T = tile + 1, odd head sizes, fully masked rows and all-padding batch rows,
logits of +-1e4, all-ignored cross-entropy rows, rows longer than a block holds in registers,
missing weights and biases; determinism; non-contiguous inputs; bad input naming the kernel;
``tl.kernels.use("cuda")`` routing ``tl.functional``.

``test_every_kernel_compiles_for_sm90`` compiles every kernel to PTX for the H200's sm_90 in
a subprocess without the simulator (NVVM from the ``ptx`` extra's wheels, no GPU needed; it
skips without them) and
checks that the float32 kernels do no float64 arithmetic (only the cross-entropy's mean is
meant to). Tests that need a real GPU (CuPy arrays, cuBLAS) skip when none is present.
"""
import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import kernels
from tinyllm.errors import ShapeError
from tinyllm.kernels import _cuda
from tinyllm.kernels._harness import max_rel_err, random_like

WHY = kernels.cuda_unavailable()       # None, or why the cuda kernels cannot run here
MODE = None if WHY else _cuda.mode()
SIM, GPU = MODE == "sim", MODE == "gpu"
TILE = _cuda.tile() if MODE else _cuda.SIM_TILE


@pytest.fixture(autouse=True)
def _needs_cuda(request):
    if WHY and request.function.__name__ not in RUN_WITHOUT_CUDA:
        pytest.skip(WHY)


def test_asking_for_cuda_without_a_gpu_is_one_line_exit_2():
    """On the CLI TINYLLM_KERNELS=cuda with no GPU (and no simulator): one line, exit 2."""
    if _cuda.gpu_visible():
        pytest.skip("a GPU driver is visible here")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0", TINYLLM_KERNELS="cuda")
    env.pop("TINYLLM_CUDA_PTX", None)
    r = subprocess.run([sys.executable, "-m", "tinyllm", "train", "--model", "gpt",
                        "--config", "tiny", "--max_steps=1", "--out", "/nonexistent/x"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "TINYLLM_KERNELS=cuda" in lines[0], r.stderr


RUN_WITHOUT_CUDA = {test_asking_for_cuda_without_a_gpu_is_one_line_exit_2.__name__}
FAMILIES = ("softmax", "layernorm", "cross_entropy", "mlp", "attention", "decode_attention")
DTYPES = (np.float32, np.float64)
IDS = {np.float32: "f32", np.float64: "f64"}


def test_cuda_is_registered_in_every_family_it_covers():
    for name in FAMILIES:
        k = kernels.get(name, "cuda")
        assert (k.name, k.impl) == (name, "cuda")
        assert k.inputs == kernels.get(name, "numpy").inputs
    # the simulator is a test tool: only a real GPU lists cuda as available
    assert ("cuda" in kernels.available("softmax")) == GPU


def _att(B, H, T, hs, causal=True, pad=None):
    p = {"B": B, "H": H, "T": T, "hs": hs, "causal": causal}
    if pad:
        p["pad"] = pad
    return p


T1 = TILE + 1
SIZES = {
    # rows of one; odd lengths around the block; rows longer than 8 threads x 8 registers
    "softmax": [{"shape": [1, 1]}, {"shape": [3, 7]}, {"shape": [2, 3, 17]},
                {"shape": [2, 100]}],
    "layernorm": [{"N": 1, "C": 1}, {"N": 3, "C": 6}, {"N": 4, "C": 5, "shape": [2, 2, 5]},
                  {"N": 5, "C": 33}],
    # every 7th row ignored (row 0 too) unless "ignored" is False
    "cross_entropy": [{"N": 1, "V": 1, "ignored": False}, {"N": 5, "V": 7},
                      {"N": 6, "V": 17}, {"N": 3, "V": 40}],
    "mlp": [{"N": 1, "C": 1, "H": 1}, {"N": 4, "C": 5, "H": 7, "Co": 3},
            {"N": 7, "C": 13, "H": 37, "Co": 11}],
    # T = 1; T = tile + 1, causal and full, odd hs; hs = 1; padding at the end (a row of
    # length 1 and an all-padding batch row); random padding (causal rows with no key)
    "attention": [_att(1, 1, 1, 3), _att(2, 2, T1, 3), _att(1, 2, T1, 5, causal=False),
                  _att(1, 1, T1, 1), _att(1, 1, 2 * TILE + 3, 9, causal=False),
                  _att(3, 2, 5, 3, pad="end"), _att(3, 1, T1, 4, causal=False, pad="end"),
                  _att(2, 1, 10, 3, pad="random")],
    "decode_attention": [{"B": 1, "H": 1, "L": 1, "Lmax": 5, "hs": 1},
                         {"B": 2, "H": 2, "L": 9, "Lmax": 12, "hs": 5},
                         {"B": 1, "H": 3, "L": 17, "Lmax": 17, "hs": 3}],
}
CASES = [pytest.param(name, p, id=f"{name}-{kernels.family(name).label(p).replace(' ', '_')}")
         for name in FAMILIES for p in SIZES[name]]


def _run(k, arrays, opts, dout):
    out, cache = k.forward(*copy.deepcopy(arrays), **opts)
    return out, k.backward(dout, cache)


def _compare(name, arrays, opts, dtype, seed=1):
    """Forward and backward of cuda against the reference; returns the cuda results."""
    cu, ref = kernels.get(name, "cuda"), kernels.get(name, "numpy")
    out_r, cache_r = ref.forward(*copy.deepcopy(arrays), **opts)
    dout = random_like(out_r, np.random.default_rng(seed))
    grads_r = ref.backward(dout, cache_r)
    out, grads = _run(cu, arrays, opts, dout)
    tol = kernels.family(name).tol[np.dtype(dtype).name]
    assert isinstance(out, np.ndarray) and out.dtype == dtype and out.shape == np.shape(out_r)
    assert max_rel_err(out, out_r) <= tol, ("forward", max_rel_err(out, out_r))
    assert len(grads) == len(grads_r)
    for i, (g, g_r) in zip(kernels.get(name, "numpy").inputs, zip(grads, grads_r)):
        if g_r is None:
            assert g is None, i
            continue
        assert isinstance(g, np.ndarray) and g.dtype == dtype and g.shape == g_r.shape, i
        assert max_rel_err(g, g_r) <= tol, (i, max_rel_err(g, g_r))
    return out, grads


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
@pytest.mark.parametrize("name,params", CASES)
def test_cuda_matches_the_reference(name, params, dtype):
    arrays, opts = kernels.family(name).inputs(params, np.dtype(dtype),
                                               np.random.default_rng(0))
    _compare(name, arrays, opts, dtype)


# ---------------------------------------------------------------- the awkward inputs

@pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
def test_softmax_masked_rows_and_huge_logits(dtype):
    x = np.random.default_rng(3).standard_normal((5, 11)).astype(dtype)
    x[0] = -np.inf                                        # attend to nothing: zeros
    x[1, ::2] = -np.inf
    x[2] *= 1e4                                           # +-1e4 logits
    x[3, 4] = 1e4
    x[4, 1] = -1e4
    out, (dx,) = _compare("softmax", (x,), {}, dtype)
    assert (out[0] == 0).all() and (dx[0] == 0).all()
    assert np.isfinite(out).all() and np.isfinite(dx).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
def test_cross_entropy_huge_logits_and_all_ignored(dtype):
    rng = np.random.default_rng(4)
    z = (rng.standard_normal((4, 9)) * 1e4).astype(dtype)
    t = rng.integers(0, 9, 4)
    loss, _ = _compare("cross_entropy", (z, t), {}, dtype)
    assert np.isfinite(loss)
    out, (dz,) = _compare("cross_entropy", (z, np.full(4, -100)), {}, dtype)
    assert out == 0 and (dz == 0).all()                   # n = 0: no 0/0


def test_layernorm_without_weight_or_bias():
    x = np.random.default_rng(5).standard_normal((3, 10)).astype(np.float64)
    w = np.ones(10)
    out, grads = _compare("layernorm", (x, None, w), {}, np.float64)
    assert grads[1] is None and grads[2] is not None


def test_mlp_without_biases():
    rng = np.random.default_rng(6)
    a = [rng.standard_normal(s) for s in ((3, 4), (4, 6), (6, 2))]
    _, grads = _compare("mlp", (a[0], a[1], None, a[2], None), {}, np.float64)
    assert grads[2] is None and grads[4] is None


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
def test_attention_huge_scores_and_fully_masked_rows(dtype):
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal((2, 1, T1, 3)).astype(dtype) for _ in range(3))
    q *= 60                                               # scores of order 1e4 ...
    k *= 60
    km = np.ones((2, T1), bool)
    km[0, :3] = False                                     # causal rows 0..2 see no key
    km[1] = False                                         # a batch row that is all padding
    out, (dq, dk, dv) = _compare("attention", (q, k, v), {"key_mask": km}, dtype)
    assert (out[0, :, :3] == 0).all() and (out[1] == 0).all()
    assert (dk[1] == 0).all() and (dv[1] == 0).all() and (dk[0, :, :3] == 0).all()
    assert np.isfinite(out).all() and np.isfinite(dq).all()
    _, cache = kernels.get("attention", "cuda").forward(q, k, v, key_mask=km)
    lse = np.asarray(_cuda.host(cache.lse)).reshape(2, T1)
    assert np.isneginf(lse[1]).all() and np.isneginf(lse[0, :3]).all()


# ---------------------------------------------------------------- contract details

@pytest.mark.parametrize("name", ["softmax", "attention", "layernorm"])
def test_cuda_is_deterministic(name):
    params = SIZES[name][2]
    arrays, opts = kernels.family(name).inputs(params, np.dtype(np.float32),
                                               np.random.default_rng(0))
    k = kernels.get(name, "cuda")
    dout = None
    runs = []
    for _ in range(2):
        out, cache = k.forward(*copy.deepcopy(arrays), **opts)
        dout = random_like(out, np.random.default_rng(1)) if dout is None else dout
        runs.append([out.tobytes()] + [g.tobytes() for g in k.backward(dout, cache)
                                       if g is not None])
    assert runs[0] == runs[1]


def test_non_contiguous_inputs_give_the_contiguous_results():
    rng = np.random.default_rng(8)
    big = rng.standard_normal((2, 1, 6, 8))
    q, k, v = big[..., ::2], big[..., 1::2], np.asfortranarray(big[..., :4])
    assert not q.flags.c_contiguous
    cu = kernels.get("attention", "cuda")
    dout = rng.standard_normal(q.shape)
    a = _run(cu, (q, k, v), {}, dout)
    b = _run(cu, tuple(np.ascontiguousarray(t) for t in (q, k, v)), {}, dout)
    assert max_rel_err(a, b) == 0


@pytest.mark.parametrize("name", FAMILIES)
def test_bad_input_raises_naming_the_kernel(name):
    fam = kernels.family(name)
    arrays, opts = fam.inputs(SIZES[name][1], np.dtype(np.float32), np.random.default_rng(0))
    k = kernels.get(name, "cuda")
    bad = list(arrays)
    bad[0] = arrays[0].astype(np.int64)
    with pytest.raises(TypeError, match=rf"\b{name}\b"):
        k.forward(*bad, **opts)
    if name != "softmax":                                 # softmax takes any shape
        bad[0] = arrays[0][..., None]
        with pytest.raises((ShapeError, ValueError), match=rf"\b{name}\b"):
            k.forward(*bad, **opts)
    out, cache = k.forward(*copy.deepcopy(arrays), **opts)
    with pytest.raises(ShapeError, match=rf"\b{name}\b"):
        k.backward(np.ones(np.shape(out) + (2,), np.float32), cache)


def test_use_cuda_routes_functional_and_keeps_cpu_families():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 5))
    with kernels.use("cuda"):
        assert kernels.get("softmax").impl == "cuda"
        assert kernels.get("adam").impl in ("numba", "numpy")     # no cuda version: CPU
        t = tl.Tensor(x.copy(), requires_grad=True)
        (tl.functional.softmax(t) * tl.Tensor(x)).sum().backward()
    r = tl.Tensor(x.copy(), requires_grad=True)
    with kernels.use("numpy"):
        (tl.functional.softmax(r) * tl.Tensor(x)).sum().backward()
    np.testing.assert_allclose(t.grad, r.grad, rtol=1e-12, atol=1e-14)
    with pytest.raises(RuntimeError, match="no 'cuda' implementation"):
        kernels.get("adam", "cuda")


# ---------------------------------------------------------------- the real target

_PTX = r"""
import json, os, re, sys, warnings
import numpy as np
from tinyllm import kernels
from tinyllm.kernels import _cuda
from tinyllm.kernels._harness import random_like
warnings.simplefilter("ignore")
sizes = json.loads(sys.argv[1])
dtypes = sys.argv[2].split(",")
try:
    from numba.cuda.cudadrv.nvvm import NVVM
    NVVM()
except Exception as e:
    print("NO-NVVM", str(e).splitlines()[0] if str(e) else type(e).__name__)
    sys.exit(0)
rows = []
try:
    for name, p in sizes:
        fam = kernels.family(name)
        k = kernels.get(name, "cuda")
        for dt in dtypes:
            arrays, opts = fam.inputs(p, np.dtype(dt), np.random.default_rng(0))
            n0 = len(_cuda.compiled)
            with np.errstate(all="ignore"):
                out, cache = k.forward(*arrays, **opts)
                k.backward(random_like(out, np.random.default_rng(1)), cache)
            for kern, types, ptx in _cuda.compiled[n0:]:
                f64 = len(re.findall(r"\.f64\b", ptx))
                rows.append([name, dt, kern, ".entry" in ptx, f64])
except Exception as e:
    # NVVM found but not the rest of the toolchain (NVRTC): the ptx extra is not installed
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "NotFound" in type(e).__name__ or "libnvrtc" in msg or "libnvvm" in msg:
        print("NO-NVVM", msg)
        sys.exit(0)
    raise
print(json.dumps(rows))
"""


def _ptx_rows(dtypes):
    sizes = [[name, SIZES[name][1]] for name in FAMILIES]
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0", TINYLLM_CUDA_PTX="sm_90")
    r = subprocess.run([sys.executable, "-c", _PTX, json.dumps(sizes), ",".join(dtypes)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    if r.stdout.startswith("NO-NVVM"):
        pytest.skip(f"no CUDA compiler libraries (NVVM, NVRTC) here to make PTX "
                    f"({r.stdout.strip()[8:]}); "
                    f"pip install -e \".[ptx]\"")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _check_ptx(rows, dtypes):
    assert {r[0] for r in rows} == set(FAMILIES)
    assert all(r[3] for r in rows), "a kernel compiled without an entry point"
    # every family compiled forward and backward kernels for each dtype
    assert {(r[0], r[1]) for r in rows} == {(n, d) for n in FAMILIES for d in dtypes}
    for name, dt, kern, _, f64 in rows:
        if dt == "float32" and kern != "total_f64":       # the float64 mean is on purpose
            assert f64 == 0, f"{name}: {kern} does {f64} float64 operations in float32"


def test_every_kernel_compiles_for_sm90():
    """The real-GPU path, without a GPU: PTX for sm_90, float32 kept float32."""
    _check_ptx(_ptx_rows(["float32"]), ["float32"])


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90_float64():
    _check_ptx(_ptx_rows(["float32", "float64"]), ["float32", "float64"])


# ---------------------------------------------------------------- only on a real GPU

gpu_only = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU with CuPy (here: "
                              f"{MODE or WHY})")


@gpu_only
@pytest.mark.parametrize("name", FAMILIES)
def test_cupy_in_cupy_out(name):
    import cupy
    fam = kernels.family(name)
    arrays, opts = fam.inputs(SIZES[name][-1], np.dtype(np.float32), np.random.default_rng(0))
    dev = tuple(cupy.asarray(a) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a
                for a in arrays)
    k, ref = kernels.get(name, "cuda"), kernels.get(name, "numpy")
    out, cache = k.forward(*dev, **opts)
    assert isinstance(out, cupy.ndarray)
    out_r, cache_r = ref.forward(*arrays, **opts)
    dout = random_like(out_r, np.random.default_rng(1))
    grads = k.backward(cupy.asarray(dout), cache)
    grads_r = ref.backward(dout, cache_r)
    tol = fam.tol["float32"]
    assert max_rel_err(cupy.asnumpy(out), out_r) <= tol
    for g, g_r in zip(grads, grads_r):
        if g_r is not None:
            assert isinstance(g, cupy.ndarray)
            assert max_rel_err(cupy.asnumpy(g), g_r) <= tol


@gpu_only
def test_gpu_attention_at_a_real_tile_size():
    """T = 64 + 1 and a masked tail on the device's 64-wide tiles."""
    for p in (_att(2, 2, 65, 64), _att(2, 3, 130, 17, causal=False, pad="end")):
        arrays, opts = kernels.family("attention").inputs(p, np.dtype(np.float32),
                                                          np.random.default_rng(0))
        _compare("attention", arrays, opts, np.float32)


def test_column_sums_and_float64_total_over_many_chunks():
    """The atomics-free reductions the biases and the losses use: 127 rows in 64 chunks of 2
    (the last one short), and a float64 total of 100 float32 values in one block."""
    rng = np.random.default_rng(10)
    a = rng.standard_normal((127, 3)).astype(np.float32)
    call = _cuda.Call("column_sums", a)
    got = _cuda.host(_cuda.column_sums(call, call.dev(a)))
    np.testing.assert_allclose(got, a.astype(np.float64).sum(axis=0), rtol=1e-5, atol=1e-5)
    x = rng.standard_normal(100).astype(np.float32)
    tot = _cuda.host(_cuda.total_f64(call, call.dev(x)))
    assert tot.dtype == np.float64
    np.testing.assert_allclose(tot[0], x.astype(np.float64).sum(), rtol=1e-12)
