"""Property tests for the primitive ops: hypothesis draws the shapes, axes and values.

For every op the forward matches the same computation in NumPy (float64) and the backward
passes ``tl.gradcheck`` (float64 central differences against a random upstream gradient).
Drawn shapes include broadcast pairs (size-1 dimensions, missing leading dimensions), batched
and 1-D matmul operands, reductions over None / one axis / several axes (negative ones too),
with and without keepdims, and basic, integer-array and boolean indexing.

Inputs stay away from the points where an op is not smooth, because a central difference
straddling a kink is not a derivative: relu near 0, ties in max, division by ~0 and log/sqrt of
non-positive numbers.
"""
from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import tinyllm as tl

F = tl.functional

# Modest example counts: the whole file runs in seconds on 2 cores.
PROPS = settings(max_examples=40, deadline=None)

# Tighter than gradcheck's defaults: float64 central differences with eps=1e-6 on these small,
# O(1) problems are accurate to ~1e-9, so a backward that is off by a small term still fails.
GC = dict(eps=1e-6, atol=1e-6, rtol=1e-5)


def check_forward(out: tl.Tensor, expected) -> None:
    expected = np.asarray(expected)
    assert isinstance(out, tl.Tensor)
    assert out.shape == expected.shape, f"shape {out.shape} != NumPy's {expected.shape}"
    assert out.dtype == np.float64
    np.testing.assert_allclose(out.data, expected, rtol=1e-12, atol=1e-14)


def check_backward(fn, *inputs) -> None:
    assert tl.gradcheck(fn, list(inputs), **GC)


# --- value strategies ----------------------------------------------------------------------


def floats(lo=-3.0, hi=3.0):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def away_from_zero(lo=0.5, hi=3.0):
    """|v| in [lo, hi], either sign."""
    return st.builds(lambda m, s: m * s, floats(lo, hi), st.sampled_from([-1.0, 1.0]))


def arrays(shape, elements=None):
    return hnp.arrays(np.float64, shape, elements=elements if elements is not None else floats())


@st.composite
def distinct_array(draw, shape):
    """An array with all values distinct and at least 0.25 apart: max has no ties, and a
    +-eps perturbation never changes which element is the max."""
    n = math.prod(shape)
    perm = draw(st.permutations(range(n)))
    shift = draw(floats(-2.0, 2.0))
    return (np.array(perm, dtype=np.float64) * 0.25 - n * 0.125 + shift).reshape(shape)


# --- shape strategies ----------------------------------------------------------------------

# Two shapes that broadcast: size-1 dims and missing leading dims, scalars included.
broadcast_pairs = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4,
                                                    min_side=1, max_side=3)

# matmul: batch dims broadcast, either operand may be 1-D (NumPy's own gufunc signature).
matmul_pairs = hnp.mutually_broadcastable_shapes(signature=np.matmul.signature, max_dims=2,
                                                 min_side=1, max_side=3)

shapes_1_to_4d = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4)


@st.composite
def reduction_case(draw, allow_0d=True):
    """(shape, axis, keepdims): axis is None, an int or a tuple, possibly negative."""
    shape = draw(hnp.array_shapes(min_dims=0 if allow_0d else 1, max_dims=4, min_side=1,
                                  max_side=4))
    nd = len(shape)
    if nd == 0:
        axis = None
    else:
        kind = draw(st.sampled_from(["none", "int", "tuple"]))
        if kind == "none":
            axis = None
        elif kind == "int":
            axis = draw(st.integers(-nd, nd - 1))
        else:
            axes = draw(st.lists(st.integers(0, nd - 1), unique=True, min_size=0, max_size=nd))
            axis = tuple(a - nd if draw(st.booleans()) else a for a in axes)
    return shape, axis, draw(st.booleans())


def _prime_factors(n: int) -> list:
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


@st.composite
def reshape_case(draw):
    """(shape, target): target has the same size, maybe with one -1 and extra 1s."""
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=4))
    primes = draw(st.permutations(_prime_factors(math.prod(shape))))
    k = draw(st.integers(1, 4)) if primes else draw(st.integers(0, 3))
    target = [1] * k
    for p in primes:
        target[draw(st.integers(0, k - 1))] *= p
    if target and draw(st.booleans()):
        target[draw(st.integers(0, len(target) - 1))] = -1
    return shape, tuple(target)


# --- binary ops with broadcasting ----------------------------------------------------------


BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@PROPS
@given(data=st.data(), shapes=broadcast_pairs)
def test_binary_broadcast(name, data, shapes):
    fn, ref = BINARY[name]
    sa, sb = shapes.input_shapes
    a = data.draw(arrays(sa), label="a")
    b = data.draw(arrays(sb, away_from_zero() if name == "div" else None), label="b")
    out = fn(tl.Tensor(a), tl.Tensor(b))
    check_forward(out, ref(a, b))
    assert out.shape == shapes.result_shape
    check_backward(fn, a, b)


@pytest.mark.parametrize("name", sorted(BINARY))
@PROPS
@given(data=st.data(), shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=3),
       scalar=away_from_zero(), reflected=st.booleans())
def test_binary_with_scalar_and_array_constants(name, data, shape, scalar, reflected):
    """A Python scalar or a plain ndarray on either side: the reflected ops give a Tensor
    whose gradient reaches the Tensor operand only."""
    fn, ref = BINARY[name]
    x = data.draw(arrays(shape, away_from_zero()), label="x")
    const = data.draw(st.sampled_from([scalar, np.full(shape[-1:], scalar)]), label="const")
    if reflected:
        out = fn(const, tl.Tensor(x))
        expected = ref(const, x)
        g = lambda t: fn(const, t)  # noqa: E731
    else:
        out = fn(tl.Tensor(x), const)
        expected = ref(x, const)
        g = lambda t: fn(t, const)  # noqa: E731
    check_forward(out, expected)
    check_backward(g, x)


@PROPS
@given(data=st.data(), shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=3))
def test_reused_operand_gets_the_sum_of_its_gradients(data, shape):
    """x * x + x / (x * x): every use of x adds into x.grad."""
    x = data.draw(arrays(shape, away_from_zero()), label="x")
    fn = lambda t: t * t + t / (t * t) - t  # noqa: E731
    check_forward(fn(tl.Tensor(x)), x * x + x / (x * x) - x)
    check_backward(fn, x)


@PROPS
@given(data=st.data(), shapes=matmul_pairs)
def test_matmul(data, shapes):
    sa, sb = shapes.input_shapes
    a = data.draw(arrays(sa), label="a")
    b = data.draw(arrays(sb), label="b")
    out = tl.Tensor(a) @ tl.Tensor(b)
    check_forward(out, np.matmul(a, b))
    assert out.shape == shapes.result_shape
    check_backward(lambda p, q: p @ q, a, b)
    check_backward(lambda p, q: tl.matmul(p, q), a, b)


# --- unary ops -----------------------------------------------------------------------------


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


_erf = np.vectorize(math.erf, otypes=[np.float64])

UNARY = {
    # name: (tinyllm fn, NumPy reference, value strategy keeping away from non-smooth points)
    "exp": (lambda t: t.exp(), np.exp, floats(-3, 3)),
    "log": (lambda t: t.log(), np.log, floats(0.1, 5)),
    "sqrt": (lambda t: t.sqrt(), np.sqrt, floats(0.1, 5)),
    "tanh": (lambda t: t.tanh(), np.tanh, floats(-4, 4)),
    "sigmoid": (lambda t: t.sigmoid(), lambda x: 1.0 / (1.0 + np.exp(-x)), floats(-8, 8)),
    "relu": (lambda t: t.relu(), lambda x: np.maximum(x, 0.0), away_from_zero(0.05, 3)),
    "neg": (lambda t: -t, np.negative, floats()),
    "pow3": (lambda t: t ** 3, lambda x: x ** 3, floats()),
    "pow_half": (lambda t: t ** 0.5, np.sqrt, floats(0.1, 5)),
    "gelu_tanh": (lambda t: F.gelu(t, approximate="tanh"), _gelu_tanh, floats(-5, 5)),
    "gelu_none": (lambda t: F.gelu(t, approximate="none"),
                  lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))), floats(-5, 5)),
    "tl.exp": (lambda t: tl.exp(t), np.exp, floats(-3, 3)),
    "tl.gelu_default": (lambda t: tl.gelu(t), _gelu_tanh, floats(-5, 5)),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@PROPS
@given(data=st.data(), shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))
def test_unary(name, data, shape):
    fn, ref, values = UNARY[name]
    x = data.draw(arrays(shape, values), label="x")
    check_forward(fn(tl.Tensor(x)), ref(x))
    check_backward(fn, x)


# --- reductions ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sum", "mean"])
@PROPS
@given(data=st.data(), case=reduction_case())
def test_sum_mean(name, data, case):
    shape, axis, keepdims = case
    x = data.draw(arrays(shape), label="x")
    fn = lambda t: getattr(t, name)(axis=axis, keepdims=keepdims)  # noqa: E731
    check_forward(fn(tl.Tensor(x)), getattr(np, name)(x, axis=axis, keepdims=keepdims))
    check_backward(fn, x)


@PROPS
@given(data=st.data(), case=reduction_case())
def test_max(data, case):
    shape, axis, keepdims = case
    x = data.draw(distinct_array(shape), label="x")
    fn = lambda t: t.max(axis=axis, keepdims=keepdims)  # noqa: E731
    check_forward(fn(tl.Tensor(x)), np.max(x, axis=axis, keepdims=keepdims))
    check_backward(fn, x)


@PROPS
@given(data=st.data(), case=reduction_case(), ddof=st.sampled_from([0, 1]))
def test_var(data, case, ddof):
    shape, axis, keepdims = case
    axes = range(len(shape)) if axis is None else [axis] if isinstance(axis, int) else axis
    n = math.prod(shape[a] for a in axes)
    assume(n - ddof > 0)
    x = data.draw(arrays(shape), label="x")
    fn = lambda t: t.var(axis=axis, keepdims=keepdims, ddof=ddof)  # noqa: E731
    check_forward(fn(tl.Tensor(x)), np.var(x, axis=axis, keepdims=keepdims, ddof=ddof))
    check_backward(fn, x)


@PROPS
@given(data=st.data(), case=reduction_case(allow_0d=False))
def test_max_gradient_goes_to_the_argmax_only(data, case):
    """Without ties, the whole upstream gradient lands on the max element of each slice."""
    shape, axis, keepdims = case
    x = data.draw(distinct_array(shape), label="x")
    t = tl.Tensor(x, requires_grad=True)
    out = t.max(axis=axis, keepdims=keepdims)
    dy = np.arange(1, out.size + 1, dtype=np.float64).reshape(out.shape)
    out.backward(dy)
    is_max = x == np.max(x, axis=axis, keepdims=True)
    dy_kept = dy if keepdims else np.expand_dims(dy, _axes_tuple(axis, len(shape)))
    expected = np.where(is_max, np.broadcast_to(dy_kept, x.shape), 0.0)
    np.testing.assert_array_equal(t.grad, expected)


def _axes_tuple(axis, nd):
    if axis is None:
        return tuple(range(nd))
    axes = (axis,) if isinstance(axis, int) else axis
    return tuple(a % nd for a in axes)


# --- shape ops -----------------------------------------------------------------------------


@PROPS
@given(data=st.data(), case=reshape_case(), star=st.booleans())
def test_reshape(data, case, star):
    shape, target = case
    x = data.draw(arrays(shape), label="x")
    fn = (lambda t: t.reshape(*target)) if star else (lambda t: t.reshape(target))
    check_forward(fn(tl.Tensor(x)), x.reshape(target))
    check_backward(fn, x)


@PROPS
@given(data=st.data(), shape=shapes_1_to_4d, star=st.booleans())
def test_transpose_permutation(data, shape, star):
    nd = len(shape)
    perm = data.draw(st.permutations(range(nd)), label="perm")
    perm = tuple(a - nd if data.draw(st.booleans()) else a for a in perm)   # negative axes too
    x = data.draw(arrays(shape), label="x")
    fn = (lambda t: t.transpose(*perm)) if star else (lambda t: t.transpose(perm))
    check_forward(fn(tl.Tensor(x)), np.transpose(x, perm))
    check_backward(fn, x)


@PROPS
@given(data=st.data(), shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=4))
def test_T_and_swapaxes(data, shape):
    x = data.draw(arrays(shape), label="x")
    check_forward(tl.Tensor(x).T, x.T)
    check_backward(lambda t: t.T, x)
    if len(shape) >= 1:
        nd = len(shape)
        a1 = data.draw(st.integers(-nd, nd - 1), label="a1")
        a2 = data.draw(st.integers(-nd, nd - 1), label="a2")
        fn = lambda t: t.swapaxes(a1, a2)  # noqa: E731
        check_forward(fn(tl.Tensor(x)), np.swapaxes(x, a1, a2))
        check_backward(fn, x)


@PROPS
@given(data=st.data(), shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=4))
def test_getitem_basic(data, shape):
    """Ints, slices (negative steps too), None and Ellipsis."""
    idx = data.draw(hnp.basic_indices(shape, min_dims=0, allow_newaxis=True,
                                      allow_ellipsis=True), label="idx")
    x = data.draw(arrays(shape), label="x")
    fn = lambda t: t[idx]  # noqa: E731
    check_forward(fn(tl.Tensor(x)), x[idx])
    check_backward(fn, x)


@PROPS
@given(data=st.data(), shape=shapes_1_to_4d)
def test_getitem_integer_arrays(data, shape):
    """Integer arrays (with repeats and negatives): repeated indices add their gradients."""
    idx = data.draw(hnp.integer_array_indices(
        shape, result_shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=5)), label="idx")
    x = data.draw(arrays(shape), label="x")
    fn = lambda t: t[idx]  # noqa: E731
    check_forward(fn(tl.Tensor(x)), x[idx])
    check_backward(fn, x)
    # the scatter-add, spelled out: each element's gradient is the sum of dy where it was read
    t = tl.Tensor(x, requires_grad=True)
    out = t[idx]
    dy = np.arange(1.0, out.size + 1.0).reshape(out.shape)
    out.backward(dy)
    expected = np.zeros(shape)
    np.add.at(expected, idx, dy)
    np.testing.assert_array_equal(t.grad, expected)


@PROPS
@given(data=st.data(), shape=hnp.array_shapes(min_dims=2, max_dims=3, max_side=4))
def test_getitem_mixed_slice_and_integer_array(data, shape):
    """x[:, idx] and x[idx, ..., 1:]: advanced and basic indices together."""
    rows = data.draw(hnp.arrays(np.intp, data.draw(st.integers(1, 5)),
                                elements=st.integers(-shape[1], shape[1] - 1)), label="rows")
    first = data.draw(hnp.arrays(np.intp, data.draw(st.integers(1, 5)),
                                 elements=st.integers(-shape[0], shape[0] - 1)), label="first")
    x = data.draw(arrays(shape), label="x")
    for idx in [(slice(None), rows), (first, Ellipsis, slice(1, None)), (first, rows[:1])]:
        fn = lambda t, idx=idx: t[idx]  # noqa: E731
        check_forward(fn(tl.Tensor(x)), x[idx])
        check_backward(fn, x)
    # a Python list is an integer array too
    as_list = [int(i) for i in first]
    check_forward(tl.Tensor(x)[as_list], x[np.array(as_list)])


@PROPS
@given(data=st.data(), shape=shapes_1_to_4d)
def test_getitem_boolean_mask(data, shape):
    mask = data.draw(hnp.arrays(np.bool_, shape), label="mask")
    x = data.draw(arrays(shape), label="x")
    fn = lambda t: t[mask]  # noqa: E731
    check_forward(fn(tl.Tensor(x)), x[mask])
    check_backward(fn, x)


# --- composites built from the primitives --------------------------------------------------


@PROPS
@given(data=st.data(), shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=4),
       axis=st.integers(-1, 0))
def test_softmax_and_log_softmax(data, shape, axis):
    x = data.draw(arrays(shape, floats(-5, 5)), label="x")
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    p = e / e.sum(axis=axis, keepdims=True)
    check_forward(F.softmax(tl.Tensor(x), axis=axis), p)
    check_forward(F.log_softmax(tl.Tensor(x), axis=axis), np.log(p))
    np.testing.assert_allclose(F.softmax(tl.Tensor(x), axis=axis).data.sum(axis=axis), 1.0,
                               rtol=1e-12)
    check_backward(lambda t: F.softmax(t, axis=axis), x)
    check_backward(lambda t: F.log_softmax(t, axis=axis), x)


# --- joining and selecting -----------------------------------------------------------------


@PROPS
@given(data=st.data(), shape=shapes_1_to_4d, n=st.integers(1, 3))
def test_concat(data, shape, n):
    nd = len(shape)
    axis = data.draw(st.integers(-nd, nd - 1), label="axis")
    shapes = [shape[:axis % nd] + (data.draw(st.integers(1, 3)),) + shape[axis % nd + 1:]
              for _ in range(n)]
    xs = [data.draw(arrays(s), label=f"x{i}") for i, s in enumerate(shapes)]
    fn = lambda *ts: tl.concat(ts, axis=axis)  # noqa: E731
    check_forward(fn(*[tl.Tensor(x) for x in xs]), np.concatenate(xs, axis=axis))
    check_backward(fn, *xs)


@PROPS
@given(data=st.data(), shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=3),
       n=st.integers(1, 3))
def test_stack(data, shape, n):
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)), label="axis")
    xs = [data.draw(arrays(shape), label=f"x{i}") for i in range(n)]
    fn = lambda *ts: tl.stack(ts, axis=axis)  # noqa: E731
    check_forward(fn(*[tl.Tensor(x) for x in xs]), np.stack(xs, axis=axis))
    check_backward(fn, *xs)


@PROPS
@given(data=st.data(), shapes=hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0,
                                                                 max_dims=3, max_side=3))
def test_where_broadcasts_all_three(data, shapes):
    sc, sa, sb = shapes.input_shapes
    cond = data.draw(hnp.arrays(np.bool_, sc), label="cond")
    a = data.draw(arrays(sa), label="a")
    b = data.draw(arrays(sb), label="b")
    fn = lambda p, q: tl.where(cond, p, q)  # noqa: E731
    check_forward(fn(tl.Tensor(a), tl.Tensor(b)), np.where(cond, a, b))
    check_backward(fn, a, b)


@PROPS
@given(data=st.data(), shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=3),
       value=st.sampled_from([0.0, -1.5, 1e9, -np.inf]))
def test_masked_fill(data, shape, value):
    # a mask that broadcasts *to* x: a suffix of x's shape with some sides set to 1
    keep = data.draw(st.integers(0, len(shape)), label="mask ndim")
    mshape = tuple(1 if data.draw(st.booleans()) else n for n in shape[len(shape) - keep:])
    mask = data.draw(hnp.arrays(np.bool_, mshape), label="mask")
    x = data.draw(arrays(shape), label="x")
    expected = np.where(mask, value, x)
    check_forward(tl.masked_fill(tl.Tensor(x), mask, value), expected)
    if abs(value) < 10:      # 1e9 in the loss would swamp a central difference's round-off
        check_backward(lambda t: tl.masked_fill(t, mask, value), x)
    t = tl.Tensor(x, requires_grad=True)
    tl.masked_fill(t, mask, value).backward(np.full(shape, 2.0))
    np.testing.assert_array_equal(t.grad, np.where(np.broadcast_to(mask, shape), 0.0, 2.0))


@PROPS
@given(data=st.data(), shape=shapes_1_to_4d, n_ties=st.integers(2, 4))
def test_max_splits_the_gradient_equally_between_ties(data, shape, n_ties):
    """A deliberate exception to "no ties": the documented rule, checked exactly."""
    n = math.prod(shape)
    assume(n >= n_ties)
    flat = data.draw(distinct_array((n,)), label="x") - 1000.0
    where = data.draw(st.lists(st.integers(0, n - 1), min_size=n_ties, max_size=n_ties,
                               unique=True), label="tied positions")
    flat[where] = 7.0                                  # the global max, n_ties times
    x = flat.reshape(shape)
    t = tl.Tensor(x, requires_grad=True)
    out = t.max()
    assert out.item() == 7.0
    out.backward(np.array(3.0))
    np.testing.assert_allclose(t.grad, np.where(x == 7.0, 3.0 / n_ties, 0.0), rtol=1e-15)


@given(value=floats(-1e6, 1e6), dtype=st.sampled_from([np.float32, np.float64]))
@PROPS
def test_numpy_scalar_keeps_its_dtype(value, dtype):
    """np.float64 is a subclass of Python float; a NumPy scalar still keeps its dtype
    (it once fell into the Python-number branch and became float32)."""
    s = dtype(value)
    t = tl.Tensor(s, requires_grad=True)
    assert t.dtype == dtype and t.shape == ()
    assert t.item() == s
    y = tl.Tensor(np.array([1.0, 2.0])) * t
    y.sum().backward()
    assert t.grad.dtype == dtype
