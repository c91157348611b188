"""The kernel registry and contract: lookup, switching, the module layout, lazy compilation,
and ``tl.functional`` giving the same results whichever implementation runs."""
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import kernels
from tinyllm.autograd import functional as F


def test_get_returns_the_named_implementation():
    k = kernels.get("softmax", impl="numpy")
    assert (k.name, k.impl) == ("softmax", "numpy")
    assert callable(k.forward) and callable(k.backward)
    assert "softmax[numpy]" in repr(k)


def test_unknown_names_are_errors():
    with pytest.raises(KeyError, match="unknown kernel 'sofmax'"):
        kernels.get("sofmax")
    with pytest.raises(ValueError, match="unknown kernel implementation 'fortran'"):
        kernels.get("softmax", impl="fortran")
    with pytest.raises(ValueError, match="unknown kernel implementation"):
        with kernels.use("fortran"):
            pass
    with pytest.raises(ValueError, match="unknown kernel implementation 'cupy'"):
        kernels.get("softmax", impl="cupy")          # no GPU version yet: not a name
    assert kernels.IMPLS == ("numpy", "numba", "cuda")


def test_use_switches_and_restores():
    outer = kernels.default_impl()
    with kernels.use("numpy"):
        assert kernels.default_impl() == "numpy"
        assert kernels.get("softmax").impl == "numpy"
        if "numba" in kernels.available("softmax"):
            with kernels.use("numba"):
                assert kernels.get("softmax").impl == "numba"
            assert kernels.default_impl() == "numpy"
    assert kernels.default_impl() == outer
    with pytest.raises(ZeroDivisionError):
        with kernels.use("numpy"):
            1 / 0
    assert kernels.default_impl() == outer


def _run(code, **env):
    e = dict(os.environ, **env)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e)
    return r


def test_environment_variable_chooses_the_default():
    r = _run("import tinyllm as tl; print(tl.kernels.default_impl(), "
             "tl.kernels.get('softmax').impl)", TINYLLM_KERNELS="numpy")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["numpy", "numpy"]
    r = _run("import tinyllm as tl; tl.kernels.default_impl()", TINYLLM_KERNELS="julia")
    assert r.returncode != 0 and "TINYLLM_KERNELS: unknown kernel implementation 'julia'" \
        in r.stderr


def test_default_is_numba_when_it_imports():
    env = dict(os.environ)
    env.pop("TINYLLM_KERNELS", None)
    r = subprocess.run([sys.executable, "-c", "import tinyllm as tl; "
                        "print(tl.kernels.default_impl())"], capture_output=True, text=True,
                       env=env)
    assert r.stdout.strip() == "numba", r.stderr


def test_families_come_from_the_package_files():
    import pathlib
    here = pathlib.Path(kernels.__file__).parent
    files = sorted(p.stem for p in here.glob("*.py") if not p.stem.startswith("_"))
    assert list(kernels.FAMILIES) == files
    assert {"softmax", "cross_entropy", "layernorm", "mlp", "attention", "additive_attention",
            "decode_attention"} <= set(kernels.FAMILIES)


@pytest.mark.parametrize("name", kernels.FAMILIES)
def test_every_family_keeps_the_layout(name):
    mod = importlib.import_module(f"tinyllm.kernels.{name}")
    assert mod.__doc__ and len(mod.__doc__) > 100          # the equations live there
    assert mod.REFERENCE.impl == "numpy" and mod.REFERENCE.name == name
    assert mod.NUMBA.impl == "numba" and mod.NUMBA.name == name
    assert not hasattr(mod, "CUPY")                        # no placeholder GPU slot
    assert mod.REFERENCE.inputs == mod.NUMBA.inputs
    assert isinstance(mod.FAMILY, kernels.Family) and kernels.family(name) is mod.FAMILY


def test_nothing_compiles_at_import():
    code = (
        "import numba, tinyllm, tinyllm.kernels as K, importlib\n"
        "from numba.core.registry import CPUDispatcher\n"
        "n = 0\n"
        "for name in K.FAMILIES + ('_nb',):\n"
        "    mod = importlib.import_module('tinyllm.kernels.' + name)\n"
        "    for v in vars(mod).values():\n"
        "        if isinstance(v, CPUDispatcher):\n"
        "            n += 1\n"
        "            assert not v.signatures, (name, v)\n"
        "print(n)\n")
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) >= len(kernels.FAMILIES)            # there were kernels to look at


@pytest.mark.parametrize("impl", kernels.available("softmax"))
def test_module_main_checks_and_times(impl):
    r = subprocess.run([sys.executable, "-m", "tinyllm.kernels.softmax", "--impl", impl,
                        "--repeat", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "GB/s" in r.stdout and "FAILED" not in r.stdout


# ---------------------------------------------------------------- tl.functional routing

def _grads(fn, arrays):
    ts = [tl.Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = fn(*ts)
    outs = out if isinstance(out, tuple) else (out,)
    rng = np.random.default_rng(9)
    total = None
    for o in outs:
        term = (o * rng.standard_normal(o.shape).astype(o.dtype)).sum()
        total = term if total is None else total + term
    total.backward()
    return [o.data for o in outs], [t.grad for t in ts]


def _cases():
    rng = np.random.default_rng(0)
    r = lambda *s: rng.standard_normal(s)  # noqa: E731
    t = rng.integers(0, 11, 13)
    t[3] = -100
    mask = np.ones((2, 6), bool)
    mask[1, 4:] = False
    return {
        "softmax": (lambda x: F.softmax(x), [r(3, 4, 9)]),
        "softmax_axis0": (lambda x: F.softmax(x, axis=0), [r(5, 7)]),
        "cross_entropy": (lambda x: F.cross_entropy(x, t), [r(13, 11)]),
        "layer_norm": (F.layer_norm, [r(2, 3, 8), r(8), r(8)]),
        "mlp": (F.mlp, [r(2, 5, 6), r(6, 12), r(12), r(12, 6), r(6)]),
        "attention": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
                      [r(2, 2, 7, 4), r(2, 2, 7, 4), r(2, 2, 7, 4)]),
        "additive_attention": (lambda h, x, wq, wk, va: F.additive_attention(
            h, x, wq, wk, va, mask), [r(2, 5), r(2, 6, 4), r(5, 3), r(4, 3), r(3)]),
    }


CASES = _cases()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_functional_gives_the_same_results_under_every_implementation(case, dtype):
    fn, arrays = CASES[case]
    arrays = [a.astype(dtype) for a in arrays]
    results = {}
    for impl in kernels.available("softmax"):
        with kernels.use(impl):
            results[impl] = _grads(fn, arrays)
    tol = 1e-5 if dtype == np.float32 else 1e-10
    (o_ref, g_ref) = results["numpy"]
    for impl, (o, g) in results.items():
        for a, b in zip(o + g, o_ref + g_ref):
            assert a.dtype == dtype
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())


@pytest.mark.parametrize("case", list(CASES))
def test_functional_gradients_pass_gradcheck(case):
    fn, arrays = CASES[case]
    for impl in kernels.available("softmax"):
        with kernels.use(impl):
            assert tl.gradcheck(fn, [tl.Tensor(a, requires_grad=True) for a in arrays])


def test_functional_softmax_of_a_fully_masked_row_is_zero():
    x = tl.Tensor(np.full((2, 4), -np.inf), requires_grad=True)
    y = F.softmax(x)
    assert (y.data == 0).all()
    (y * 2.0).sum().backward()
    assert (x.grad == 0).all()
