"""The tiled matrix product (``tinyllm.kernels.matmul`` / ``kernels._gemm.gemm``): the same
numbers as NumPy's matmul for every operand layout, with a fused bias and accumulation, and
the autograd nodes that use it (MatMul on 2-D operands, Linear)."""
import itertools

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import kernels
from tinyllm.autograd import functional as F
from tinyllm.kernels import _gemm

RNG = np.random.default_rng(0)
# under NUMPY_MACS, between it and SERIAL_MACS, above: NumPy's path, the tiles, in parallel
SHAPES = [(3, 5, 7), (64, 64, 64), (300, 17, 200), (17, 300, 400), (2048, 128, 8),
          (16, 4096, 64)]


def _arr(shape, dt, transposed):
    a = RNG.standard_normal(shape[::-1] if transposed else shape).astype(dt)
    return a.T if transposed else a


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_every_layout_matches_float64_numpy(dt, M, K, N):
    tol = 2e-5 if dt == np.float32 else 1e-12
    for ta, tb in itertools.product([False, True], repeat=2):
        a, b = _arr((M, K), dt, ta), _arr((K, N), dt, tb)
        bias = RNG.standard_normal(N).astype(dt)
        ref = a.astype(np.float64) @ b.astype(np.float64)
        for bb in (None, bias):
            want = ref + (0 if bb is None else bb)
            got = _gemm.gemm(a, b, bias=bb)
            assert got.dtype == dt and got.shape == (M, N)
            err = np.abs(got - want).max() / np.abs(want).max()
            assert err < tol, (ta, tb, bb is not None, err)


def test_the_tiled_path_really_runs():
    # a planted wrong pointer offset would break these; make sure they are not NumPy's
    M, K, N = 512, 128, 256
    assert M * N * K >= _gemm.SERIAL_MACS and _gemm._blas() is not None
    a, b = _arr((M, K), np.float32, False), _arr((K, N), np.float32, True)
    assert _gemm._operand(a) == ("N", K) and _gemm._operand(b) == ("T", K)
    np.testing.assert_allclose(_gemm.gemm(a, b), a @ b, rtol=1e-5, atol=1e-4)
    # SciPy's BLAS runs each tile on one thread, and its thread count is put back after
    libs = _gemm._blas()["libs"]
    before = [lib.get_num_threads() for lib in libs]
    seen = []
    real = _gemm._restore
    try:
        _gemm._restore = lambda ch: (seen.append([lib.get_num_threads() for lib in libs]),
                                     real(ch))
        _gemm.gemm(a, b)
        _gemm.gemm_batch([(a, b), (b.T, a.T)])
    finally:
        _gemm._restore = real
    assert seen == [[1] * len(libs)] * 2
    assert [lib.get_num_threads() for lib in libs] == before


def test_slices_out_accumulate_and_determinism():
    x = RNG.standard_normal((2048, 128)).astype(np.float32)
    W = RNG.standard_normal((128, 384)).astype(np.float32)
    for i in range(3):                                   # column slices of c_attn's weight
        cols = slice(i * 128, (i + 1) * 128)
        np.testing.assert_allclose(_gemm.gemm(x, W[:, cols]), x @ W[:, cols], rtol=1e-5,
                                   atol=1e-4)
    out = np.ones((2048, 128), np.float32)
    _gemm.gemm(x, W[:, :128], out=out, accumulate=True)
    np.testing.assert_allclose(out, 1 + x @ W[:, :128], rtol=1e-5, atol=1e-4)
    big = np.empty((2048, 512), np.float32)
    view = big[:, 100:228]                               # rows with a leading dimension
    _gemm.gemm(x, W[:, :128], out=view)
    np.testing.assert_allclose(view, x @ W[:, :128], rtol=1e-5, atol=1e-4)
    r1, r2 = _gemm.gemm(x, W), _gemm.gemm(x, W)
    assert np.array_equal(r1, r2)                        # same tiles, same bits


def test_fallbacks_and_errors():
    a = RNG.standard_normal((40, 50))
    b = RNG.standard_normal((50, 60)).astype(np.float32)
    np.testing.assert_allclose(_gemm.gemm(a, b), a @ b)           # mixed dtypes: NumPy
    s = RNG.standard_normal((80, 100, 3))[:, :, 0]                 # no unit stride
    np.testing.assert_allclose(_gemm.gemm(s, RNG.standard_normal((100, 90))).shape, (80, 90))
    empty = _gemm.gemm(np.zeros((70, 0)), np.zeros((0, 5000)))
    assert empty.shape == (70, 5000) and not empty.any()
    with pytest.raises(ValueError, match="do not chain"):
        _gemm.gemm(np.zeros((3, 4)), np.zeros((5, 6)))
    with pytest.raises(ValueError, match="bias"):
        _gemm.gemm(np.zeros((3, 4)), np.zeros((4, 6)), bias=np.zeros(5))


def test_kernels_matmul_follows_the_implementation_in_effect(monkeypatch):
    a, b = RNG.standard_normal((64, 64)), RNG.standard_normal((64, 64))
    called = []
    monkeypatch.setattr(_gemm, "gemm", lambda *x, **k: called.append(1) or x[0] @ x[1])
    kernels.matmul(a, b)
    assert called == [1]
    with kernels.use("numpy"):
        kernels.matmul(a, b)                             # the reference: NumPy's matmul
    assert called == [1]


@pytest.mark.parametrize("bias", [True, False])
def test_linear_node_gradients(bias):
    x = RNG.standard_normal((5, 4))
    w = RNG.standard_normal((4, 3))
    b = RNG.standard_normal(3)
    ins = [x, w, b] if bias else [x, w]
    assert tl.gradcheck(lambda *t: F.linear(*t) if bias else F.linear(t[0], t[1]), ins)


def test_linear_node_on_the_tiled_path_matches_the_composition():
    # large enough for the tiles: forward and all three gradients against x @ W + b
    x = tl.Tensor(RNG.standard_normal((256, 96)).astype(np.float32), requires_grad=True)
    w = tl.Tensor(RNG.standard_normal((96, 200)).astype(np.float32), requires_grad=True)
    b = tl.Tensor(RNG.standard_normal(200).astype(np.float32), requires_grad=True)
    dy = RNG.standard_normal((256, 200)).astype(np.float32)
    y = F.linear(x, w, b)
    assert y._ctx.op.__name__ == "Linear"                # one node, not MatMul + Add
    y.backward(dy)
    X, Wn, = x.data.astype(np.float64), w.data.astype(np.float64)
    np.testing.assert_allclose(y.data, X @ Wn + b.data, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(x.grad, dy @ Wn.T, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(w.grad, X.T @ dy, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(b.grad, dy.sum(0), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_gemm_batch_matches_each_product(n):
    shapes = [(512, 128, 128), (128, 2048, 256), (2048, 128, 64), (300, 200, 100)][:n]
    prods = []
    for i, (M, K, N) in enumerate(shapes):
        prods.append((_arr((M, K), np.float32, i % 2 == 1), _arr((K, N), np.float32, i == 2)))
    prods.append((RNG.standard_normal((4, 5)), RNG.standard_normal((5, 6))))   # NumPy's
    outs = _gemm.gemm_batch(prods)
    for (a, b), o in zip(prods, outs):
        np.testing.assert_allclose(o, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)
