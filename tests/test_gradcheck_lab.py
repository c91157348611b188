"""The gradient-check lab: gradcheck, its error report, planted bugs it must catch (including
the softmax "sum trap"), the Taylor-remainder test and the eps sweep."""
from __future__ import annotations

import numpy as np
import pytest

import tinyllm as tl
from _functions import Cube, WrongCube

F = tl.functional


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# --- planted-error Functions -------------------------------------------------------------


def _softmax_rows(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class GoodSoftmax(tl.Function):
    @staticmethod
    def forward(ctx, x):
        s = _softmax_rows(x)
        ctx.save_for_backward(s)
        return s

    @staticmethod
    def backward(ctx, dout):
        (s,) = ctx.saved
        return s * (dout - (s * dout).sum(axis=-1, keepdims=True))


class SumTrapSoftmax(GoodSoftmax):
    """Backward ignores dout: it applies the softmax Jacobian to a vector of ones.

    J^T 1 = s * (1 - sum(s)) = 0, which is exactly the gradient of softmax(x).sum(), so any
    check through the sum passes. With any other upstream gradient it is wrong."""

    @staticmethod
    def backward(ctx, dout):
        (s,) = ctx.saved
        ones = np.ones_like(dout)
        return s * (ones - (s * ones).sum(axis=-1, keepdims=True))


class MulOneBadElement(tl.Function):
    """a * b whose gradient for b is off by exactly 1 at element (1, 2)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, dout):
        a, b = ctx.saved
        db = dout * a
        db[1, 2] += 1.0
        return dout * b, db


def naive_sum_check(fn, x, eps=1e-6, tol=1e-6):
    """The check docs/DESIGN.md forbids: compare the backward of fn(x).sum() with central
    differences of fn(x).sum()."""
    t = tl.Tensor(x.copy(), requires_grad=True)
    fn(t).sum().backward()
    analytic = t.grad
    numeric = np.zeros_like(x)
    for j in range(x.size):
        xp, xm = x.copy(), x.copy()
        xp.flat[j] += eps
        xm.flat[j] -= eps
        with tl.no_grad():
            numeric.flat[j] = (fn(tl.Tensor(xp)).sum().item()
                               - fn(tl.Tensor(xm)).sum().item()) / (2 * eps)
    return bool(np.allclose(analytic, numeric, atol=tol))


# --- gradcheck on correct ops ------------------------------------------------------------


@pytest.mark.parametrize("name, fn, shapes", [
    ("mul", lambda a, b: a * b, [(3, 4), (4,)]),
    ("div", lambda a, b: a / (b * b + 1.0), [(3, 4), (3, 1)]),
    ("matmul", lambda a, b: a @ b, [(2, 3, 4), (4, 5)]),
    ("softmax", lambda x: F.softmax(x, axis=-1), [(3, 5)]),
    ("log_softmax", lambda x: F.log_softmax(x, axis=0), [(4, 3)]),
    ("layer_norm", lambda x, w, b: F.layer_norm(x, w, b), [(3, 6), (6,), (6,)]),
    ("gelu", lambda x: F.gelu(x), [(7,)]),
    ("tanh_sigmoid", lambda x: x.tanh() * x.sigmoid(), [(2, 3)]),
    ("sum_mean_var",
     lambda x: x.sum(axis=0) + x.mean(axis=1, keepdims=True) + x.var(axis=1, keepdims=True),
     [(3, 4)]),
    ("reshape_transpose", lambda x: x.reshape(4, 3).transpose(1, 0) * 2.0, [(3, 4)]),
    ("getitem", lambda x: x[np.array([0, 2, 2])], [(3, 2)]),
    ("cube", Cube.apply, [(3, 4)]),
    ("good_softmax", GoodSoftmax.apply, [(3, 4)]),
])
def test_gradcheck_passes_correct_ops(name, fn, shapes):
    inputs = [rand(*s, seed=i) for i, s in enumerate(shapes)]
    assert tl.gradcheck(fn, inputs) is True
    assert tl.gradcheck(fn, inputs, fast=True) is True


def test_gradcheck_cross_entropy_with_integer_targets_in_closure():
    targets = np.array([0, 3, -100, 1])
    assert tl.gradcheck(lambda z: F.cross_entropy(z, targets), [rand(4, 5)])


def test_gradcheck_accepts_float32_tensors_and_constants():
    x = tl.Tensor(rand(3, 4).astype(np.float32), requires_grad=True)
    c = tl.Tensor(rand(3, 4, seed=1))           # requires_grad=False: a constant
    seen = {}

    def fn(a, b):
        seen["a"], seen["b"] = a.dtype, b.requires_grad
        return a * b

    assert tl.gradcheck(fn, [x, c])
    assert seen["a"] == np.float64          # the check runs in float64
    assert seen["b"] is False


def test_check_gradients_reports_each_input():
    reports = tl.check_gradients(lambda a, b: a * b, [rand(2, 3), rand(2, 3, seed=1)])
    assert [r.input_index for r in reports] == [0, 1]
    assert all(r.passed and r.n_bad == 0 for r in reports)
    assert all(r.max_abs_err < 1e-7 for r in reports)


# --- gradcheck's error report ------------------------------------------------------------


def test_gradcheck_error_names_input_element_and_errors():
    a, b = rand(3, 4), rand(3, 4, seed=1)
    with pytest.raises(tl.GradcheckError) as info:
        tl.gradcheck(MulOneBadElement.apply, [a, b])
    e = info.value
    assert isinstance(e, AssertionError)
    assert e.input_index == 1
    assert tuple(int(i) for i in e.index) == (1, 2)
    assert e.analytic - e.numeric == pytest.approx(1.0, abs=1e-6)
    assert e.abs_err == pytest.approx(1.0, abs=1e-6)
    assert e.rel_err == pytest.approx(1.0 / abs(e.numeric), rel=1e-6)
    msg = str(e)
    assert "input 1" in msg
    assert "(1, 2)" in msg
    assert "analytic" in msg and "numeric" in msg
    assert f"{e.analytic:.8g}" in msg and f"{e.numeric:.8g}" in msg
    assert "abs err" in msg and "rel err" in msg
    assert "1 element(s)" in msg


def test_gradcheck_raise_exception_false_returns_false():
    assert tl.gradcheck(WrongCube.apply, [rand(3)], raise_exception=False) is False
    assert tl.gradcheck(WrongCube.apply, [rand(3)], raise_exception=False, fast=True) is False
    assert tl.gradcheck(Cube.apply, [rand(3)], raise_exception=False) is True


@pytest.mark.parametrize("bad", [np.arange(6).reshape(2, 3), np.array([True, False])])
def test_gradcheck_rejects_integer_inputs(bad):
    with pytest.raises(TypeError) as info:
        tl.gradcheck(lambda x: x * 2, [bad])
    msg = str(info.value)
    assert "gradcheck" in msg and "input 0" in msg and str(bad.dtype) in msg


def test_gradcheck_without_differentiable_inputs():
    with pytest.raises(ValueError, match="no differentiable input"):
        tl.gradcheck(lambda x: x * 2, [tl.Tensor(rand(3))])


# --- planted error: a wrong cube backward ------------------------------------------------


@pytest.mark.parametrize("fast", [False, True])
def test_wrong_cube_fails_gradcheck(fast):
    x = rand(3, 4)
    with pytest.raises(tl.GradcheckError) as info:
        tl.gradcheck(WrongCube.apply, [x], fast=fast)
    e = info.value
    assert e.input_index == 0
    # analytic is 2x^2 dy, numeric 3x^2 dy: the ratio is 2/3 wherever it is measured
    assert e.analytic / e.numeric == pytest.approx(2 / 3, rel=1e-4)
    if not fast:
        assert len(e.index) == 2
        assert "12 element(s)" in str(e)
    else:
        assert "random direction" in str(e)


def test_taylor_slope_tells_wrong_from_right():
    x = rand(3, 4)
    good = tl.taylor_test(Cube.apply, [x])
    bad = tl.taylor_test(WrongCube.apply, [x])
    assert good > 1.8
    assert bad < 1.5
    assert bad > 0.5


def test_taylor_full_result_remainders_halve_or_quarter():
    x = rand(5)
    good = tl.taylor_test(Cube.apply, [x], full=True)
    bad = tl.taylor_test(WrongCube.apply, [x], full=True)
    assert isinstance(good, tl.TaylorResult)
    assert float(good) == good.slope
    assert len(good.h) == len(good.remainders) == 8
    np.testing.assert_allclose(good.h[1:] / good.h[:-1], 0.5)
    # halving h quarters an O(h^2) remainder and halves an O(h) one
    assert np.median(good.remainders[1:] / good.remainders[:-1]) == pytest.approx(0.25, abs=0.05)
    assert np.median(bad.remainders[1:] / bad.remainders[:-1]) == pytest.approx(0.5, abs=0.05)


def test_taylor_result_explains_an_infinite_slope():
    lin = tl.taylor_test(lambda x: x * 3.0, [rand(4)], full=True)
    assert lin.linear and lin.passed and "round-off" in lin.verdict()
    cube = tl.taylor_test(Cube.apply, [rand(4)], full=True)
    assert not cube.linear and cube.verdict() == "ok"
    bad = tl.taylor_test(WrongCube.apply, [rand(4)], full=True)
    assert not bad.passed and "WRONG" in bad.verdict()


def test_taylor_linear_function_is_inf():
    # along any direction a linear map has zero second-order remainder
    assert tl.taylor_test(lambda x: x * 3.0, [rand(4)]) == float("inf")


# --- the sum trap ------------------------------------------------------------------------


def test_sum_trap_softmax_passes_naive_sum_check():
    x = rand(3, 5)
    # the naive check is fooled: d/dx sum(softmax(x)) = 0 and the broken backward gives 0
    assert naive_sum_check(SumTrapSoftmax.apply, x) is True
    # ... and so is gradcheck itself when pointed at fn(x).sum() (a scalar upstream gradient)
    assert tl.gradcheck(lambda t: SumTrapSoftmax.apply(t).sum(), [x]) is True


def test_sum_trap_softmax_fails_gradcheck_with_random_dy():
    x = rand(3, 5)
    with pytest.raises(tl.GradcheckError) as info:
        tl.gradcheck(SumTrapSoftmax.apply, [x])
    assert info.value.input_index == 0
    assert abs(info.value.analytic) < 1e-12        # the broken backward returns (about) 0
    assert abs(info.value.numeric) > 1e-3
    assert tl.gradcheck(SumTrapSoftmax.apply, [x], fast=True, raise_exception=False) is False
    assert tl.taylor_test(SumTrapSoftmax.apply, [x]) < 1.5


def test_correct_softmax_passes_both_checks():
    x = rand(3, 5)
    assert naive_sum_check(GoodSoftmax.apply, x) is True
    assert tl.gradcheck(GoodSoftmax.apply, [x]) is True
    assert tl.taylor_test(GoodSoftmax.apply, [x]) > 1.8


def test_naive_sum_check_is_not_blind_to_everything():
    # a sanity check of the helper itself: it catches a wrong cube
    assert naive_sum_check(WrongCube.apply, rand(4)) is False
    assert naive_sum_check(Cube.apply, rand(4)) is True


# --- eps sweep ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["softmax", "tanh"])
def sweep(request):
    fn = {"softmax": lambda t: F.softmax(t, axis=-1), "tanh": lambda t: t.tanh()}[request.param]
    return tl.eps_sweep(fn, [rand(3, 5)])


def test_eps_sweep_best_eps_per_dtype(sweep):
    assert isinstance(sweep, tl.EpsSweep)
    assert set(sweep.errors) == {"float32", "float64"}
    assert len(sweep.eps) == 10 and all(len(e) == 10 for e in sweep.errors.values())
    assert 1e-7 <= sweep.best("float64") <= 1e-3
    assert 1e-4 <= sweep.best("float32") <= 1e-1


def test_eps_sweep_float64_much_more_accurate(sweep):
    best64 = np.nanmin(sweep.errors["float64"])
    best32 = np.nanmin(sweep.errors["float32"])
    assert best64 < 1e-7
    assert best64 < 1e-3 * best32


def test_eps_sweep_has_v_shape(sweep):
    for name in ("float32", "float64"):
        err = sweep.errors[name]
        k = int(np.nanargmin(err))
        assert 0 < k < len(err) - 1, name             # the minimum is inside the range
        assert err[-1] > 10 * err[k], name            # round-off arm on the left (small eps)
        assert err[0] > 10 * err[k], name             # truncation arm on the right (large eps)


def test_eps_sweep_truncation_arm_has_slope_two(sweep):
    # float64, large eps: error ~ eps^2, so one decade of eps is two decades of error
    err = sweep.errors["float64"]
    assert err[0] / err[1] == pytest.approx(100, rel=0.1)
    assert err[1] / err[2] == pytest.approx(100, rel=0.1)


def test_eps_sweep_table_and_custom_values():
    s = tl.eps_sweep(lambda t: t.tanh(), [rand(4)], eps_values=[1e-2, 1e-5, 1e-9],
                     dtypes=("float64",))
    np.testing.assert_array_equal(s.eps, [1e-2, 1e-5, 1e-9])
    assert list(s.errors) == ["float64"]
    assert s.best("float64") == 1e-5
    table = s.table()
    assert "float64" in table and "best" in table
    assert len(table.splitlines()) == 1 + 3 + 1


def test_eps_sweep_plot_returns_figure(sweep):
    from matplotlib.figure import Figure

    fig = sweep.plot()
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    labels = [line.get_label() for line in ax.get_lines()]
    assert "float32" in labels and "float64" in labels


def test_eps_sweep_plot_saves_a_png(sweep, tmp_path):
    path = tmp_path / "sweep.png"
    sweep.plot().savefig(path)                  # a bare Figure: no pyplot, no backend
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tuple_outputs_sharing_a_graph():
    # both halves of a split come from one product: one backward must serve both outputs
    x = np.random.default_rng(0).standard_normal((3, 4))
    assert tl.gradcheck(lambda t: tl.split(t * 2.0, 2, axis=1), [x])
    assert tl.taylor_test(lambda t: tuple(h.tanh() for h in tl.split(t * 2.0, 2, axis=1)),
                          [x]) > 1.8


def test_inputs_must_be_a_sequence():
    with pytest.raises(TypeError, match="list or tuple"):
        tl.gradcheck(lambda t: t, np.ones(3))


def test_zero_atol_reports_finite_errors():
    reports = tl.check_gradients(lambda t: t.tanh(), [np.array([0.5, 1.0])], atol=0.0)
    assert all(np.isfinite(r.max_rel_err) and r.passed for r in reports)
