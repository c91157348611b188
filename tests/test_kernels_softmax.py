"""softmax kernel: every implementation against the reference, the reference against finite
differences, and the awkward cases.

Tolerances (relative to the largest reference value): float64 1e-10, float32 1e-5. The Numba
float32 exp is within 1 ulp, and the sums run in a different order from NumPy's pairwise sum,
so float32 differs from the reference by a few ulp; float64 only by summation order.
"""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm.errors import ShapeError

K = "softmax"
IMPLS = tl.kernels.available(K)
TOL = {np.float32: 1e-5, np.float64: 1e-10}
SHAPES = [(1, 1), (3, 17), (2, 5, 64), (4, 1000), (1, 33)]


def rel(a, b):
    return np.max(np.abs(a.astype(np.float64) - b)) / max(np.max(np.abs(b)), 1e-30)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(impl, dtype, shape):
    rng = np.random.default_rng(hash(shape) % 2**32)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    ref = tl.kernels.get(K, "numpy")
    k = tl.kernels.get(K, impl)
    y_r, c_r = ref.forward(x)
    y, c = k.forward(x)
    assert y.dtype == dtype and y.shape == shape
    assert rel(y, y_r) <= TOL[dtype]
    (dx_r,) = ref.backward(dy, c_r)
    (dx,) = k.backward(dy, c)
    assert dx.dtype == dtype
    assert rel(dx, dx_r) <= TOL[dtype]


def test_reference_backward_matches_central_differences():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 7))
    dy = rng.standard_normal((3, 7))                   # random: the sum's gradient is zero
    ref = tl.kernels.get(K, "numpy")
    (dx,) = ref.backward(dy, ref.forward(x)[1])
    eps = 1e-6
    num = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        num[i] = ((ref.forward(xp)[0] - ref.forward(xm)[0]) * dy).sum() / (2 * eps)
    np.testing.assert_allclose(dx, num, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_logits_stay_finite(impl, dtype):
    x = np.array([[1e4, -1e4, 0.0, 1e4 - 1], [-1e4, -1e4, -1e4, -1e4]], dtype)
    y, c = tl.kernels.get(K, impl).forward(x)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-6)
    e = np.exp(np.float64(-1.0))
    np.testing.assert_allclose(y[0], [1 / (1 + e), 0, 0, e / (1 + e)], rtol=1e-6, atol=1e-30)
    (dx,) = tl.kernels.get(K, impl).backward(np.ones_like(x), c)
    assert np.isfinite(dx).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fully_masked_row_gives_zeros(impl, dtype):
    x = np.array([[-np.inf] * 20, [0.0, -np.inf] + [-np.inf] * 18], dtype)
    k = tl.kernels.get(K, impl)
    y, c = k.forward(x)
    assert (y[0] == 0).all()
    assert y[1, 0] == 1 and (y[1, 1:] == 0).all()
    (dx,) = k.backward(np.ones_like(x), c)
    assert (dx[0] == 0).all() and np.isfinite(dx).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_in_a_row_is_not_hidden(impl):
    x = np.array([[0.0, np.nan, 1.0], [0.0, 1.0, 2.0]], np.float32)
    y, _ = tl.kernels.get(K, impl).forward(x)
    assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_deterministic(impl):
    x = np.random.default_rng(2).standard_normal((64, 777)).astype(np.float32)
    k = tl.kernels.get(K, impl)
    y1, c1 = k.forward(x)
    y2, c2 = k.forward(x)
    dy = np.ones_like(x) * np.linspace(-1, 1, 777, dtype=np.float32)
    assert y1.tobytes() == y2.tobytes()
    assert k.backward(dy, c1)[0].tobytes() == k.backward(dy, c2)[0].tobytes()


@pytest.mark.parametrize("impl", IMPLS)
def test_non_contiguous_input(impl):
    x = np.random.default_rng(3).standard_normal((40, 30)).astype(np.float32)
    k = tl.kernels.get(K, impl)
    for view in (x.T, x[::2, ::3]):                    # transposed and strided views
        y_v, c_v = k.forward(view)
        y_c, c_c = k.forward(np.ascontiguousarray(view))
        np.testing.assert_allclose(y_v, y_c, rtol=1e-6, atol=1e-7)
        dy = np.ones(view.shape, np.float32)[:, ::-1] * np.arange(view.shape[1])
        np.testing.assert_allclose(k.backward(dy, c_v)[0], k.backward(dy, c_c)[0],
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_preallocated_output(impl):
    x = np.random.default_rng(4).standard_normal((8, 50)).astype(np.float32)
    k = tl.kernels.get(K, impl)
    buf = np.empty_like(x)
    y, _ = k.forward(x, out=buf)
    assert y is buf
    np.testing.assert_array_equal(buf, k.forward(x)[0])
    with pytest.raises(ShapeError, match="softmax: out"):
        k.forward(x, out=np.empty((8, 49), np.float32))


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_input_names_the_kernel(impl):
    k = tl.kernels.get(K, impl)
    with pytest.raises(TypeError, match="softmax: x must be float32 or float64"):
        k.forward(np.ones((2, 3), np.int64))
    with pytest.raises(TypeError, match="softmax: x must be a NumPy array"):
        k.forward([[1.0, 2.0]])
    with pytest.raises(ValueError, match="softmax: x must have at least one axis"):
        k.forward(np.ones((), np.float32))
    y, c = k.forward(np.ones((2, 3), np.float32))
    with pytest.raises(ShapeError, match=r"softmax: dy shape \(3, 2\)"):
        k.backward(np.ones((3, 2), np.float32), c)


def test_empty_rows():
    for impl in IMPLS:
        y, c = tl.kernels.get(K, impl).forward(np.ones((0, 5), np.float32))
        assert y.shape == (0, 5)
