"""The autodiff engine itself, and what it does with bad input.

Graph reuse and accumulation, deep graphs, no_grad / detach / retain_graph, Tensor
construction and dtype rules, clear errors (ShapeError, backward misuse), detect_anomaly,
custom Functions, and the ops whose gradients are easy to get subtly wrong (scatter-add
indexing, dropout, embedding and cross-entropy edge cases).
"""
from __future__ import annotations

import gc
import os
import sys
import weakref

import numpy as np
import pytest

import tinyllm as tl
from _functions import Cube  # noqa: E402

F = tl.functional
THIS_FILE = os.path.basename(__file__)


def rand(*shape, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# --- custom Functions used by several tests ----------------------------------------------


class ScaleBy(tl.Function):
    """x * k for an integer positional k (a non-Tensor argument: no gradient)."""

    @staticmethod
    def forward(ctx, x, k):
        ctx.k = k
        ctx.seen_needs = ctx.needs_input_grad
        return x * k

    @staticmethod
    def backward(ctx, dout):
        return dout * ctx.k, None


class InfBackward(tl.Function):
    """Identity forward, a backward that returns inf."""

    @staticmethod
    def forward(ctx, x):
        return x.copy()

    @staticmethod
    def backward(ctx, dout):
        return np.full_like(dout, np.inf)


# --- reuse and accumulation --------------------------------------------------------------


def test_reuse_b_equals_a_plus_a_then_b_times_b():
    a_np = np.array([1.0, -2.0, 3.0])
    a = tl.Tensor(a_np, requires_grad=True)
    b = a + a
    c = b * b            # c = 4 a^2, dc/da = 8 a
    c.sum().backward()
    np.testing.assert_allclose(a.grad, 8 * a_np)


def test_tensor_used_several_times_gets_the_sum():
    x_np = np.array([0.5, 2.0, -1.5])
    x = tl.Tensor(x_np, requires_grad=True)
    y = x * 3.0 + x * x + x.exp() + x      # d/dx = 3 + 2x + e^x + 1
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 3 + 2 * x_np + np.exp(x_np) + 1, rtol=1e-12)


def test_two_tensors_sharing_a_parent_through_different_paths():
    # y = sum(w @ x) + sum(w * 2): w appears in two ops
    w_np = rand(3, 4)
    x_np = rand(4, 2, seed=1)
    w = tl.Tensor(w_np, requires_grad=True)
    x = tl.Tensor(x_np, requires_grad=True)
    ((w @ x).sum() + (w * 2.0).sum()).backward()
    np.testing.assert_allclose(w.grad, np.ones((3, 2)) @ x_np.T + 2.0, rtol=1e-12)
    np.testing.assert_allclose(x.grad, w_np.T @ np.ones((3, 2)), rtol=1e-12)


# --- a deep chain: iterative topological sort --------------------------------------------


def test_ten_thousand_deep_chain_mul():
    n = 10_000
    x0 = tl.Tensor(np.array([1.5]), requires_grad=True)
    x = x0
    for _ in range(n):
        x = x * 1.0001
    x.sum().backward()
    np.testing.assert_allclose(x.data, 1.5 * 1.0001 ** n, rtol=1e-9)
    np.testing.assert_allclose(x0.grad, [1.0001 ** n], rtol=1e-9)


def test_ten_thousand_deep_chain_add_keeps_float32():
    n = 10_000
    x0 = tl.Tensor(np.zeros(3, np.float32), requires_grad=True)
    x = x0
    for _ in range(n):
        x = x + 1
    (x * x).sum().backward()       # d/dx0 sum((x0 + n)^2) = 2 (x0 + n)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x.data, n)
    np.testing.assert_allclose(x0.grad, 2.0 * n)
    assert x0.grad.dtype == np.float32


# --- no_grad, detach, accumulation, retain_graph, freeing ---------------------------------


def test_no_grad_records_nothing():
    x = tl.Tensor(rand(3), requires_grad=True)
    assert tl.is_grad_enabled()
    with tl.no_grad():
        assert not tl.is_grad_enabled()
        y = (x * 2.0).exp().sum()
    assert tl.is_grad_enabled()
    assert y.requires_grad is False
    assert y._ctx is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()
    assert x.grad is None


def test_no_grad_restored_after_exception():
    with pytest.raises(ZeroDivisionError):
        with tl.no_grad():
            1 / 0
    assert tl.is_grad_enabled()


def test_no_grad_as_decorator():
    @tl.no_grad()
    def f(t):
        assert not tl.is_grad_enabled()
        return t * t

    x = tl.Tensor(rand(2), requires_grad=True)
    y = f(x)
    assert tl.is_grad_enabled()
    assert not y.requires_grad and y._ctx is None
    np.testing.assert_array_equal(y.data, x.data * x.data)


def test_no_grad_as_bare_decorator_and_in_recursion():
    @tl.no_grad
    def f(t, depth):
        assert not tl.is_grad_enabled()
        return t * 2.0 if depth == 0 else f(t, depth - 1)

    x = tl.Tensor(rand(2), requires_grad=True)
    assert not f(x, 3).requires_grad
    assert tl.is_grad_enabled()


def test_detach_cuts_the_graph_and_shares_data():
    x = tl.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    d = (x * 3.0).detach()
    assert not d.requires_grad and d.is_leaf
    y = x * d            # d is a constant: dy/dx = d
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [3.0, 6.0])
    xd = x.detach()
    assert xd.data is x.data and not xd.requires_grad


def test_grad_accumulates_over_two_backwards():
    x_np = np.array([1.0, -2.0])
    x = tl.Tensor(x_np, requires_grad=True)
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x_np)
    (x * 5.0).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x_np + 5.0)
    x.zero_grad()
    assert x.grad is None


def test_retain_graph_allows_a_second_backward():
    x_np = np.array([1.0, 3.0])
    x = tl.Tensor(x_np, requires_grad=True)
    y = (x * x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * 3 * x_np ** 2)


def test_second_backward_without_retain_graph_raises():
    x = tl.Tensor(np.array([1.0, 3.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()


def test_saved_buffers_are_freed_after_backward():
    x = tl.Tensor(rand(1000), requires_grad=True)
    y = Cube.apply(x)
    ctx = y._ctx
    assert len(ctx.saved) == 1 and ctx.saved[0] is x.data
    y.sum().backward()
    assert ctx.freed
    assert not hasattr(ctx, "saved")
    assert not hasattr(ctx, "parents")


def test_saved_buffer_of_intermediate_is_released():
    # exp saves its output (a new array): after backward nothing refers to it any more
    x = tl.Tensor(rand(100), requires_grad=True)
    e = x.exp()
    ref = weakref.ref(e._ctx.saved[0])
    y = e.sum()
    del e
    y.backward()
    gc.collect()
    assert ref() is None


def test_retain_graph_keeps_saved_buffers():
    x = tl.Tensor(rand(4), requires_grad=True)
    y = Cube.apply(x)
    y.sum().backward(retain_graph=True)
    assert not y._ctx.freed and len(y._ctx.saved) == 1


# --- Tensor construction -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_dtypes_are_kept(dtype):
    arr = np.arange(6, dtype=dtype).reshape(2, 3)
    t = tl.Tensor(arr, requires_grad=True)
    assert t.dtype == dtype
    assert t.shape == (2, 3)
    assert t.data is arr
    assert t.grad is None
    (t * t).sum().backward()
    assert t.grad.dtype == dtype and t.grad.shape == (2, 3)
    np.testing.assert_allclose(t.grad, 2 * arr)


def test_python_lists_and_numbers_become_float32():
    assert tl.Tensor([[1, 2], [3, 4]]).dtype == np.float32
    assert tl.Tensor([1.5, 2.5]).dtype == np.float32
    assert tl.Tensor(3.0).dtype == np.float32
    assert tl.Tensor(3.0).shape == ()


def test_integer_arrays_allowed_but_cannot_require_grad():
    t = tl.Tensor(np.arange(5))
    assert t.dtype.kind == "i" and not t.requires_grad
    with pytest.raises(TypeError, match="float32/float64"):
        tl.Tensor(np.arange(5), requires_grad=True)
    with pytest.raises(TypeError, match="require grad"):
        tl.Tensor(np.array([True, False]), requires_grad=True)


@pytest.mark.parametrize("bad", [
    "hello",
    ["a", "b"],
    {"x": 1.0},
    np.array(["a", "b"]),
    np.array([object(), object()], dtype=object),
    np.array([1 + 2j]),
    None,
])
def test_non_numeric_data_raises_type_error(bad):
    with pytest.raises(TypeError, match="Tensor") as info:
        tl.Tensor(bad)
    assert len(str(info.value)) > 20


def test_float16_is_rejected_with_a_message():
    with pytest.raises(TypeError, match="float16"):
        tl.Tensor(np.zeros(2, np.float16))


def test_detach_properties():
    t = tl.Tensor(np.ones((2, 3), np.float32), requires_grad=True)
    d = t.detach()
    assert d.shape == (2, 3) and d.dtype == np.float32
    assert isinstance(d.data, np.ndarray)


# --- dtype rules -------------------------------------------------------------------------


@pytest.mark.parametrize("op", [
    lambda x, s: x + s, lambda x, s: s + x, lambda x, s: x * s, lambda x, s: s * x,
    lambda x, s: x - s, lambda x, s: s - x, lambda x, s: x / s, lambda x, s: s / x,
])
@pytest.mark.parametrize("scalar", [2.0, 2, np.float64(2.0), np.int64(2)])
def test_float32_op_scalar_stays_float32(op, scalar):
    x = tl.Tensor(np.array([1.0, 3.0], np.float32), requires_grad=True)
    y = op(x, scalar)
    assert isinstance(y, tl.Tensor)
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_float32_pow_and_exp_stay_float32():
    x = tl.Tensor(np.array([1.0, 3.0], np.float32), requires_grad=True)
    assert (x ** 2).dtype == np.float32
    assert (x ** 0.5).dtype == np.float32
    assert (2.0 ** x).dtype == np.float32
    assert F.gelu(x).dtype == np.float32
    assert F.softmax(x).dtype == np.float32


def test_float32_array_op_float64_array_promotes_and_grads_keep_dtype():
    a = tl.Tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    b = tl.Tensor(np.array([3.0, 4.0], np.float64), requires_grad=True)
    y = a * b
    assert y.dtype == np.float64
    y.sum().backward()
    assert a.grad.dtype == np.float32
    assert b.grad.dtype == np.float64
    np.testing.assert_allclose(a.grad, [3.0, 4.0])
    np.testing.assert_allclose(b.grad, [1.0, 2.0])


def test_float32_tensor_op_float64_ndarray_promotes():
    a = tl.Tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    y = a + np.array([0.5, 0.5])
    assert y.dtype == np.float64
    y.sum().backward()
    assert a.grad.dtype == np.float32


# --- ShapeError --------------------------------------------------------------------------


def test_shape_error_is_a_value_error():
    assert issubclass(tl.ShapeError, ValueError)


@pytest.mark.parametrize("op_name, fn, shapes", [
    ("add", lambda a, b: a + b, ((2, 3), (4, 3))),
    ("mul", lambda a, b: a * b, ((2, 3), (2, 4))),
    ("sub", lambda a, b: a - b, ((5,), (3,))),
    ("div", lambda a, b: a / b, ((2, 3), (3, 2))),
])
def test_broadcast_mismatch_names_op_and_shapes(op_name, fn, shapes):
    a = tl.Tensor(np.ones(shapes[0]), requires_grad=True)
    b = tl.Tensor(np.ones(shapes[1]))
    with pytest.raises(tl.ShapeError) as info:
        fn(a, b)
    msg = str(info.value)
    assert op_name in msg
    assert str(shapes[0]) in msg and str(shapes[1]) in msg


def test_matmul_inner_dim_mismatch():
    a = tl.Tensor(np.ones((2, 3)))
    b = tl.Tensor(np.ones((4, 5)))
    with pytest.raises(tl.ShapeError) as info:
        a @ b
    msg = str(info.value)
    assert "matmul" in msg and "(2, 3)" in msg and "(4, 5)" in msg


def test_reshape_size_mismatch():
    a = tl.Tensor(np.ones((2, 3)))
    with pytest.raises(tl.ShapeError) as info:
        a.reshape(4, 2)
    msg = str(info.value)
    assert "reshape" in msg and "(2, 3)" in msg and "(4, 2)" in msg


def test_concat_mismatch():
    a = tl.Tensor(np.ones((2, 3)))
    b = tl.Tensor(np.ones((2, 4)))
    with pytest.raises(tl.ShapeError) as info:
        tl.concat([a, b], axis=0)
    msg = str(info.value)
    assert "concat" in msg and "(2, 3)" in msg and "(2, 4)" in msg
    # along axis 1 the same pair is fine
    assert tl.concat([a, b], axis=1).shape == (2, 7)


def test_concat_and_stack_backward_split_the_gradient():
    a = tl.Tensor(rand(2, 3), requires_grad=True)
    b = tl.Tensor(rand(2, 1, seed=1), requires_grad=True)
    dy = rand(2, 4, seed=2)
    tl.concat([a, b], axis=1).backward(dy)
    np.testing.assert_array_equal(a.grad, dy[:, :3])
    np.testing.assert_array_equal(b.grad, dy[:, 3:])
    c = tl.Tensor(rand(3), requires_grad=True)
    d = tl.Tensor(rand(3, seed=1), requires_grad=True)
    ds = rand(3, 2, seed=3)
    tl.stack([c, d], axis=1).backward(ds)
    np.testing.assert_array_equal(c.grad, ds[:, 0])
    np.testing.assert_array_equal(d.grad, ds[:, 1])


# --- backward misuse ---------------------------------------------------------------------


def test_backward_on_non_scalar_without_gradient():
    x = tl.Tensor(rand(2, 3), requires_grad=True)
    y = x * 2.0
    with pytest.raises(RuntimeError) as info:
        y.backward()
    assert "(2, 3)" in str(info.value) and "gradient" in str(info.value)


def test_backward_on_tensor_without_grad():
    y = tl.Tensor(rand(3)) * 2.0
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_backward_with_wrong_shape_gradient():
    x = tl.Tensor(rand(2, 3), requires_grad=True)
    y = x * 2.0
    with pytest.raises(tl.ShapeError) as info:
        y.backward(np.ones((3, 2)))
    assert "(3, 2)" in str(info.value) and "(2, 3)" in str(info.value)
    assert x.grad is None


def test_backward_with_explicit_gradient():
    x_np = rand(2, 3)
    x = tl.Tensor(x_np, requires_grad=True)
    dy = rand(2, 3, seed=5)
    (x * x).backward(dy)
    np.testing.assert_allclose(x.grad, 2 * x_np * dy)


def test_custom_backward_returning_wrong_shape_raises_shape_error():
    class BadShape(tl.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, dout):
            return dout[:1]

    x = tl.Tensor(rand(3), requires_grad=True)
    with pytest.raises(tl.ShapeError, match="BadShape"):
        BadShape.apply(x).sum().backward()


# --- detect_anomaly ----------------------------------------------------------------------


def test_anomaly_log_of_negative_names_op_and_site():
    x = tl.Tensor(np.array([1.0, -1.0]), requires_grad=True)
    with tl.detect_anomaly():
        with pytest.raises(tl.AnomalyError) as info, np.errstate(invalid="ignore"):
            x.log()
    msg = str(info.value)
    assert "Log" in msg
    assert "NaN" in msg
    assert THIS_FILE in msg


def test_anomaly_names_where_the_input_was_created():
    with tl.detect_anomaly():
        line = sys._getframe().f_lineno + 1
        x = tl.Tensor(np.array([-2.0]), requires_grad=True)
        with pytest.raises(tl.AnomalyError) as info, np.errstate(invalid="ignore"):
            x.log()
    created = str(info.value).split("created at", 1)[1]
    assert f"{THIS_FILE}:{line}" in created


def test_anomaly_builtin_backward_inf():
    # sqrt is finite at 0 but its derivative is not
    with tl.detect_anomaly():
        x = tl.Tensor(np.array([0.0, 4.0]), requires_grad=True)
        y = x.sqrt().sum()
        with pytest.raises(tl.AnomalyError, match="Sqrt backward") as info, \
                np.errstate(divide="ignore"):
            y.backward()
    assert "Inf" in str(info.value)


def test_anomaly_error_is_a_floating_point_error():
    assert issubclass(tl.AnomalyError, FloatingPointError)


def test_anomaly_in_backward_names_the_op():
    x = tl.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    with tl.detect_anomaly():
        y = (InfBackward.apply(x) * 2.0).sum()     # forward is finite
        with pytest.raises(tl.AnomalyError) as info:
            y.backward()
    msg = str(info.value)
    assert "InfBackward" in msg and "backward" in msg and "Inf" in msg
    assert THIS_FILE in msg


def test_no_anomaly_error_outside_detect_anomaly():
    x = tl.Tensor(np.array([1.0, -1.0]), requires_grad=True)
    with np.errstate(invalid="ignore"):
        y = x.log()
    assert np.isnan(y.data[1])
    z = InfBackward.apply(x).sum()
    z.backward()
    assert np.isinf(x.grad).all()


def test_anomaly_allows_a_minus_inf_mask_passed_along():
    # masking scores with -inf before a softmax is legal: the Inf comes from the fill value and
    # later ops only pass it on; no NaN or new Inf appears, so nothing may be flagged
    x = tl.Tensor(np.random.default_rng(0).standard_normal((3, 4)), requires_grad=True)
    mask = np.triu(np.ones((3, 4), bool), 1)
    with tl.detect_anomaly():
        p = F.softmax(tl.masked_fill(x, mask, float("-inf")))
        (p * p).sum().backward()
    assert np.isfinite(x.grad).all() and (x.grad[mask] == 0).all()


def test_anomaly_flags_an_inf_that_an_op_creates():
    with tl.detect_anomaly(), np.errstate(over="ignore"):
        with pytest.raises(tl.AnomalyError, match=r"Exp forward produced \+Inf"):
            tl.Tensor(np.array([1000.0]), requires_grad=True).exp()


def test_anomaly_tells_a_new_plus_inf_from_a_passed_on_minus_inf():
    x = tl.Tensor(np.array([-np.inf, 1000.0]), requires_grad=True)
    with tl.detect_anomaly(), np.errstate(over="ignore"):
        with pytest.raises(tl.AnomalyError, match=r"Exp forward produced \+Inf"):
            x.exp()


def test_anomaly_does_not_blame_an_op_for_a_nan_it_passes_on():
    x = tl.Tensor(np.array([np.nan, 1.0]), requires_grad=True)
    with tl.detect_anomaly():
        y = x + 1.0                       # the NaN came from the data, not from add
        with np.errstate(invalid="ignore"), pytest.raises(tl.AnomalyError, match="Log"):
            (y - 3.0).log()               # log(-1) makes a new NaN: flagged
    assert np.isnan(y.data[0])


def test_detect_anomaly_is_restored_and_finite_work_passes():
    x = tl.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    with tl.detect_anomaly():
        x.log().sum().backward()
    np.testing.assert_allclose(x.grad, [1.0, 0.5])
    with np.errstate(invalid="ignore"):
        tl.Tensor(np.array([-1.0])).log()    # would raise if anomaly mode leaked


# --- custom Functions --------------------------------------------------------------------


def test_custom_function_forward_backward():
    x_np = np.array([1.0, -2.0, 0.5])
    x = tl.Tensor(x_np, requires_grad=True)
    y = Cube.apply(x)
    assert isinstance(y, tl.Tensor) and y.requires_grad
    np.testing.assert_allclose(y.data, x_np ** 3)
    dy = np.array([1.0, 2.0, 3.0])
    y.backward(dy)
    np.testing.assert_allclose(x.grad, 3 * x_np ** 2 * dy)


def test_custom_function_integer_arg_gets_no_gradient():
    x = tl.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = ScaleBy.apply(x, 3)
    assert y._ctx.needs_input_grad == (True, False)
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [3.0, 3.0])


def test_custom_function_needs_input_grad_reflects_requires_grad():
    seen = {}

    class Mul2(tl.Function):
        @staticmethod
        def forward(ctx, a, b):
            ctx.save_for_backward(a, b)
            return a * b

        @staticmethod
        def backward(ctx, dout):
            seen["needs"] = ctx.needs_input_grad
            a, b = ctx.saved
            return (dout * b if ctx.needs_input_grad[0] else None,
                    dout * a if ctx.needs_input_grad[1] else None)

    a = tl.Tensor(np.array([2.0]), requires_grad=True)
    b = tl.Tensor(np.array([5.0]))
    Mul2.apply(a, b).sum().backward()
    assert seen["needs"] == (True, False)
    np.testing.assert_allclose(a.grad, [5.0])
    assert b.grad is None


def test_custom_function_without_grad_inputs_records_nothing():
    y = Cube.apply(tl.Tensor(np.array([2.0])))
    assert not y.requires_grad and y._ctx is None
    np.testing.assert_allclose(y.data, [8.0])


def test_custom_function_wrong_number_of_gradients():
    class TwoGrads(tl.Function):
        @staticmethod
        def forward(ctx, x):
            return x + 0

        @staticmethod
        def backward(ctx, dout):
            return dout, dout

    x = tl.Tensor(np.array([1.0]), requires_grad=True)
    with pytest.raises(RuntimeError, match="TwoGrads"):
        TwoGrads.apply(x).sum().backward()


# --- Functions with several outputs ------------------------------------------------------


class SumProd(tl.Function):
    """Two outputs from two inputs: s = a + b and p = a * b (elementwise). Records which
    upstream gradients its backward received (None = that output sent none)."""

    calls = []

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a + b, a * b

    @staticmethod
    def backward(ctx, ds, dp):
        SumProd.calls.append((ds is not None, dp is not None))
        a, b = ctx.saved
        da = np.zeros_like(a)
        db = np.zeros_like(b)
        if ds is not None:
            da = da + ds
            db = db + ds
        if dp is not None:
            da = da + dp * b
            db = db + dp * a
        return da, db


def _sumprod_inputs():
    a = tl.Tensor(rand(3, 4, seed=1), requires_grad=True)
    b = tl.Tensor(rand(3, 4, seed=2), requires_grad=True)
    return a, b


def test_several_outputs_apply_returns_a_tuple_of_tensors():
    a, b = _sumprod_inputs()
    out = SumProd.apply(a, b)
    assert isinstance(out, tuple) and len(out) == 2
    s, p = out
    assert all(isinstance(t, tl.Tensor) and t.requires_grad for t in out)
    np.testing.assert_array_equal(s.data, a.data + b.data)
    np.testing.assert_array_equal(p.data, a.data * b.data)
    assert s._ctx is p._ctx and s._ctx.n_outputs == 2
    with tl.no_grad():
        s2, p2 = SumProd.apply(a, b)
    assert s2._ctx is None and not p2.requires_grad


@pytest.mark.parametrize("use", ["first", "second", "both", "first twice"])
def test_several_outputs_gradcheck(use):
    """Central differences through the 2-output Function, whichever outputs are used."""
    def fn(a, b):
        s, p = SumProd.apply(a, b)
        if use == "first":
            return s.tanh()
        if use == "second":
            return p.exp()
        if use == "both":
            return s * p, p.sum(axis=0)
        return s * s + s.exp()                     # one output used twice

    assert tl.gradcheck(fn, [rand(3, 4, seed=1), rand(3, 4, seed=2)])


@pytest.mark.parametrize("use,expect", [("first", (True, False)), ("second", (False, True)),
                                        ("both", (True, True))])
def test_unused_output_gets_none_and_the_backward_runs_once(use, expect):
    a, b = _sumprod_inputs()
    s, p = SumProd.apply(a, b)
    SumProd.calls.clear()
    if use == "first":
        loss = (s * 2.0).sum()
        ga, gb = 2.0 * np.ones((3, 4)), 2.0 * np.ones((3, 4))
    elif use == "second":
        loss = (p * 3.0).sum()
        ga, gb = 3.0 * b.data, 3.0 * a.data
    else:                                  # both, through two different paths
        loss = (s * 2.0).sum() + (p * 3.0).sum() + s.sum()
        ga, gb = 3.0 + 3.0 * b.data, 3.0 + 3.0 * a.data
    loss.backward()
    assert SumProd.calls == [expect]       # one call, after both outputs' gradients arrived
    np.testing.assert_allclose(a.grad, ga)
    np.testing.assert_allclose(b.grad, gb)


def test_output_used_twice_gets_the_summed_gradient_in_one_call():
    a, b = _sumprod_inputs()
    s, p = SumProd.apply(a, b)
    SumProd.calls.clear()
    (p * 2.0 + p * 5.0).sum().backward()
    assert SumProd.calls == [(False, True)]
    np.testing.assert_allclose(a.grad, 7.0 * b.data)
    np.testing.assert_allclose(b.grad, 7.0 * a.data)


def test_several_outputs_backward_from_one_output_directly():
    a, b = _sumprod_inputs()
    s, p = SumProd.apply(a, b)
    dp = rand(3, 4, seed=3)
    p.backward(dp)
    np.testing.assert_allclose(a.grad, dp * b.data)


def test_several_outputs_accumulate_retain_and_free():
    a, b = _sumprod_inputs()
    s, p = SumProd.apply(a, b)
    s.retain_grad()
    loss = (s * p).sum()
    loss.backward(retain_graph=True)
    first = a.grad.copy()
    np.testing.assert_allclose(s.grad, p.data)            # d(s p)/ds, kept by retain_grad
    np.testing.assert_allclose(first, p.data + s.data * b.data)
    ctx = s._ctx
    assert not ctx.freed
    loss.backward()                                       # accumulates, then frees
    np.testing.assert_allclose(a.grad, 2 * first)
    np.testing.assert_allclose(s.grad, 2 * p.data)
    assert ctx.freed and p._ctx.freed and not hasattr(ctx, "saved")
    with pytest.raises(RuntimeError, match="SumProd.*retain_graph"):
        (p * 1.0).sum().backward()                        # its graph is gone


def test_several_outputs_in_a_deep_chain():
    """2-output nodes chained 2,000 deep: the iterative sort handles them, each runs once."""
    a = tl.Tensor(np.array([0.5]), requires_grad=True)
    b = tl.Tensor(np.array([0.25]), requires_grad=True)
    s, p = a, b
    for _ in range(2000):
        s, p = SumProd.apply(s * 0.5, p * 0.5)
    SumProd.calls.clear()
    (s + p).sum().backward()
    assert len(SumProd.calls) == 2000
    assert np.isfinite(a.grad).all() and np.isfinite(b.grad).all()


def test_several_outputs_under_detect_anomaly_names_the_output():
    class Pair(tl.Function):
        @staticmethod
        def forward(ctx, x):
            return x.copy(), np.log(x - 10.0)      # NaN in output 1 only

        @staticmethod
        def backward(ctx, d0, d1):
            return d0

    x = tl.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    with tl.detect_anomaly(), pytest.warns(RuntimeWarning):
        with pytest.raises(tl.AnomalyError, match="Pair forward produced NaN in output 1"):
            Pair.apply(x)

    class BadBackward(tl.Function):
        @staticmethod
        def forward(ctx, x):
            return x.copy(), x.copy()

        @staticmethod
        def backward(ctx, d0, d1):
            return np.full_like(d0 if d0 is not None else d1, np.inf)

    with tl.detect_anomaly():
        u, v = BadBackward.apply(x)
        with pytest.raises(tl.AnomalyError, match="BadBackward backward produced"):
            v.sum().backward()


def test_several_outputs_forward_must_not_return_an_empty_tuple():
    class Nothing(tl.Function):
        @staticmethod
        def forward(ctx, x):
            return ()

    with pytest.raises(RuntimeError, match="Nothing.forward returned an empty tuple"):
        Nothing.apply(tl.Tensor(np.array([1.0]), requires_grad=True))


# --- getitem, dropout, embedding, cross_entropy ------------------------------------------


def test_getitem_repeated_indices_scatter_add():
    x = tl.Tensor(np.arange(5.0), requires_grad=True)
    y = x[np.array([0, 2, 2, 2, 4])]
    y.backward(np.array([1.0, 10.0, 20.0, 30.0, 5.0]))
    np.testing.assert_allclose(x.grad, [1.0, 0.0, 60.0, 0.0, 5.0])


def test_getitem_list_and_2d_advanced_index():
    x = tl.Tensor(rand(3, 4), requires_grad=True)
    rows = np.array([0, 0, 2])
    cols = np.array([1, 1, 3])
    x[rows, cols].sum().backward()
    expect = np.zeros((3, 4))
    expect[0, 1] = 2.0
    expect[2, 3] = 1.0
    np.testing.assert_allclose(x.grad, expect)
    z = tl.Tensor(rand(4), requires_grad=True)
    z[[1, 1, 1]].sum().backward()
    np.testing.assert_allclose(z.grad, [0.0, 3.0, 0.0, 0.0])


def test_getitem_slice_backward():
    x = tl.Tensor(rand(4, 3), requires_grad=True)
    dy = rand(2, 3, seed=1)
    x[1:3].backward(dy)
    expect = np.zeros((4, 3))
    expect[1:3] = dy
    np.testing.assert_allclose(x.grad, expect)


def test_getitem_boolean_mask_backward():
    x = tl.Tensor(np.arange(4.0), requires_grad=True)
    x[x > 1.5].backward(np.array([10.0, 20.0]))
    np.testing.assert_allclose(x.grad, [0.0, 0.0, 10.0, 20.0])


def test_getitem_out_of_range_raises_index_error():
    x = tl.Tensor(rand(3), requires_grad=True)
    with pytest.raises(IndexError, match="getitem"):
        x[np.array([5])]


def test_dropout_seeded_is_reproducible():
    x = tl.Tensor(np.ones((50, 40), np.float32), requires_grad=True)
    y1 = F.dropout(x, 0.5, True, np.random.default_rng(123))
    y2 = F.dropout(x, 0.5, True, np.random.default_rng(123))
    y3 = F.dropout(x, 0.5, True, np.random.default_rng(124))
    np.testing.assert_array_equal(y1.data, y2.data)
    assert not np.array_equal(y1.data, y3.data)
    assert y1.dtype == np.float32
    # inverted dropout: kept entries scaled by 1/(1-p), about half dropped
    assert set(np.unique(y1.data)) <= {0.0, 2.0}
    frac = (y1.data == 0).mean()
    assert 0.4 < frac < 0.6
    y1.sum().backward()
    np.testing.assert_array_equal(x.grad, y1.data)    # grad = mask * 2 = y1 for x = 1


def test_dropout_eval_mode_is_identity():
    x = tl.Tensor(rand(5, 5), requires_grad=True)
    y = F.dropout(x, 0.5, False, np.random.default_rng(0))
    assert y is x or np.array_equal(y.data, x.data)
    np.testing.assert_array_equal(y.data, x.data)


def test_dropout_bad_p():
    x = tl.Tensor(rand(3))
    with pytest.raises(ValueError, match="dropout"):
        F.dropout(x, 1.5, True, np.random.default_rng(0))


def test_embedding_forward_backward():
    W_np = rand(5, 3)
    W = tl.Tensor(W_np, requires_grad=True)
    idx = np.array([[1, 4], [1, 0]])
    out = F.embedding(idx, W)
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out.data, W_np[idx])
    out.sum().backward()
    counts = np.array([1, 2, 0, 0, 1])[:, None] * np.ones((1, 3))
    np.testing.assert_allclose(W.grad, counts)


@pytest.mark.parametrize("bad", [5, -1, 100])
def test_embedding_out_of_range(bad):
    W = tl.Tensor(rand(5, 3), requires_grad=True)
    with pytest.raises(IndexError) as info:
        F.embedding(np.array([0, bad]), W)
    msg = str(info.value)
    assert "embedding" in msg and str(bad) in msg and "5" in msg


def test_embedding_float_indices_rejected():
    W = tl.Tensor(rand(5, 3), requires_grad=True)
    with pytest.raises(TypeError, match="embedding"):
        F.embedding(np.array([0.0, 1.0]), W)


def _ce_reference(logits, targets):
    m = logits.max(axis=1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(targets)), targets].mean()


def test_cross_entropy_matches_reference():
    logits_np = rand(4, 6)
    t = np.array([0, 5, 2, 2])
    loss = F.cross_entropy(tl.Tensor(logits_np), t)
    np.testing.assert_allclose(loss.item(), _ce_reference(logits_np, t), rtol=1e-12)


@pytest.mark.parametrize("bad", [6, -1, 99])
def test_cross_entropy_out_of_range_target(bad):
    logits = tl.Tensor(rand(3, 6), requires_grad=True)
    with pytest.raises((IndexError, ValueError)) as info:
        F.cross_entropy(logits, np.array([0, bad, 1]))
    msg = str(info.value)
    assert "cross_entropy" in msg and str(bad) in msg and "6" in msg


def test_cross_entropy_ignore_index_rows_are_ignored():
    logits_np = rand(4, 5)
    t = np.array([1, -100, 3, -100])
    logits = tl.Tensor(logits_np, requires_grad=True)
    loss = F.cross_entropy(logits, t)
    keep = np.array([0, 2])
    np.testing.assert_allclose(loss.item(), _ce_reference(logits_np[keep], t[keep]),
                               rtol=1e-12)
    loss.backward()
    np.testing.assert_array_equal(logits.grad[[1, 3]], 0.0)
    assert np.abs(logits.grad[[0, 2]]).sum() > 0
    # softmax(row) - onehot, divided by the number of kept rows
    p = np.exp(logits_np[0]) / np.exp(logits_np[0]).sum()
    expect = p.copy()
    expect[1] -= 1
    np.testing.assert_allclose(logits.grad[0], expect / 2, rtol=1e-10)


def test_cross_entropy_custom_ignore_index():
    logits_np = rand(3, 4)
    t = np.array([2, 0, 3])
    loss = F.cross_entropy(tl.Tensor(logits_np), t, ignore_index=0)
    keep = np.array([0, 2])
    np.testing.assert_allclose(loss.item(), _ce_reference(logits_np[keep], t[keep]),
                               rtol=1e-12)


def test_cross_entropy_all_ignored_gives_zero_not_nan():
    logits = tl.Tensor(rand(3, 4), requires_grad=True)
    loss = F.cross_entropy(logits, np.full(3, -100))
    assert loss.item() == 0.0
    assert not np.isnan(loss.item())
    loss.backward()
    np.testing.assert_array_equal(logits.grad, np.zeros((3, 4)))


def test_cross_entropy_bad_shapes():
    logits = tl.Tensor(rand(3, 4))
    with pytest.raises(tl.ShapeError, match="cross_entropy"):
        F.cross_entropy(logits, np.array([0, 1]))
    with pytest.raises(tl.ShapeError, match="cross_entropy"):
        F.cross_entropy(tl.Tensor(rand(3)), np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="cross_entropy"):
        F.cross_entropy(logits, np.array([0.0, 1.0, 2.0]))


# --- corner cases found in review --------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda x: x.transpose(1, 2),                       # axis 2 of a 2-d tensor
    lambda x: x.transpose(0, 3),
    lambda x: tl.split(x, 3, axis=5),
    lambda x: tl.concat([x.sum(), x.sum()]),           # 0-d tensors have no axis to join
    lambda x: x.sum().sum(axis=0),
    lambda x: x.sum().max(axis=0),
], ids=["transpose-1-2", "transpose-0-3", "split-axis", "concat-0d", "sum-0d", "max-0d"])
def test_bad_axes_raise_shape_error(make):
    with pytest.raises(tl.ShapeError):
        make(tl.Tensor(np.ones((2, 3))))


def test_pow_zero_has_zero_gradient_even_at_zero():
    x = tl.Tensor(np.array([0.0, 1.0, -2.0]), requires_grad=True)
    (x ** 0).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 0.0])


def test_integer_arrays_do_not_upcast_float32():
    x = tl.Tensor(np.ones(4, np.float32), requires_grad=True)
    assert (x * np.arange(4)).dtype == np.float32
    assert tl.where(np.arange(4) > 1, x, np.zeros(4, np.int64)).dtype == np.float32


@pytest.mark.parametrize("other", [np.array(["a"]), np.str_("a"), "a"])
def test_non_numeric_operand_is_a_type_error_naming_the_op(other):
    with pytest.raises(TypeError, match="mul"):
        tl.Tensor(np.ones(1)) * other


def test_backward_with_a_non_numeric_gradient_is_a_type_error():
    x = tl.Tensor(np.ones(2), requires_grad=True)
    with pytest.raises(TypeError, match="backward"):
        (x * 2.0).backward(np.array(["a", "b"]))


# --- empty tensors and masked_fill's fill value (issue 9's PyTorch-input bugs) -------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_softmax_and_max_of_an_empty_batch_are_empty(dtype):
    """(0, V) reduced over its non-empty last axis: the empty result, forward and backward,
    as in NumPy and PyTorch."""
    for op, out_shape in ((lambda t: F.log_softmax(t, axis=-1), (0, 5)),
                          (lambda t: t.max(axis=-1), (0,)),
                          (lambda t: t.max(axis=1, keepdims=True), (0, 1))):
        x = tl.Tensor(np.zeros((0, 5), dtype), requires_grad=True)
        y = op(x)
        assert y.shape == out_shape and y.dtype == dtype
        y.backward(np.zeros(out_shape, dtype))
        assert x.grad.shape == (0, 5) and x.grad.dtype == dtype
    x = tl.Tensor(np.zeros((2, 0, 3)), requires_grad=True)      # empty middle axis, kept
    y = F.log_softmax(x, axis=2)
    y.sum().backward()
    assert y.shape == (2, 0, 3) and x.grad.shape == (2, 0, 3)
    assert x.max(axis=-1).shape == (2, 0)


@pytest.mark.parametrize("call,name", [
    (lambda x: F.log_softmax(x, axis=-1), "log_softmax"),
    (lambda x: F.log_softmax(x.reshape(0, 3), axis=0), "log_softmax"),
    (lambda x: x.max(axis=-1), "max"),
    (lambda x: x.max(), "max"),
    (lambda x: x.max(axis=(0, 1)), "max"),
])
def test_reducing_an_empty_axis_raises_naming_the_op(call, name):
    x = tl.Tensor(np.zeros((3, 0)), requires_grad=True)
    with pytest.raises(tl.ShapeError, match=rf"^{name}: .*empty"):
        call(x)


def test_masked_fill_refuses_a_tensor_value_naming_the_op():
    x = tl.Tensor(rand(2, 3), requires_grad=True)
    mask = np.array([[True, False, True], [False, False, True]])
    for bad, what in ((tl.Tensor(np.array(1.0)), "a Tensor"),
                      (np.ones((2, 3)), r"an array of shape \(2, 3\)"),
                      ("0", "str")):
        with pytest.raises(TypeError, match=rf"masked_fill: value must be a Python or NumPy "
                                            rf"number .*got {what}"):
            tl.masked_fill(x, mask, bad)
    # what is accepted: Python and NumPy numbers (and a 0-d array, a NumPy number too)
    for ok in (-np.inf, 2, np.float32(0.5), np.array(3.0), True):
        y = tl.masked_fill(x, mask, ok)
        np.testing.assert_array_equal(y.data, np.where(mask, float(ok), x.data))
