"""softmax kernel: its own properties. The contract every family keeps (against the
reference, against central differences, determinism, layouts, bad input) is
tests/test_kernel_contract.py, on ``FAMILY.test_sizes``.
"""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm.errors import ShapeError

K = "softmax"
IMPLS = tl.kernels.available(K)


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
def test_bad_input_messages(impl):
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


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0, 0), (0,), (2, 0, 4), (2, 4, 0)])
def test_empty_arrays_give_the_empty_result(impl, dtype, shape):
    """No rows, or rows of length 0 (as PyTorch: an empty result, no error), both ways."""
    k = tl.kernels.get(K, impl)
    y, c = k.forward(np.ones(shape, dtype))
    assert y.shape == shape and y.dtype == dtype
    (dx,) = k.backward(np.ones(shape, dtype), c)
    assert dx.shape == shape and dx.dtype == dtype
