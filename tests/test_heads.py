"""Cutting the fused q, k, v product into heads and back (kernels.split_heads /
merge_heads, the SplitHeads node): the Numba copy against NumPy's transposed view."""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm import kernels
from tinyllm.autograd.ops import split_heads


@pytest.mark.parametrize("B,T,H,hs", [(1, 1, 1, 1), (2, 5, 3, 4), (16, 128, 4, 32)])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_split_and_merge_against_numpy(B, T, H, hs, dt):
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((B * T, 3 * H * hs)).astype(dt)
    want = qkv.reshape(B, T, 3, H, hs).transpose(2, 0, 3, 1, 4)
    for impl in ("numba", "numpy"):
        with kernels.use(impl):
            got = kernels.split_heads(qkv, B, T, H, hs)
            assert got.flags.c_contiguous and got.dtype == dt
            assert np.array_equal(got, want), impl
            d = [rng.standard_normal((B, H, T, hs)).astype(dt) for _ in range(3)]
            for miss in (None, 0, 2):
                parts = [None if i == miss else d[i] for i in range(3)]
                g = kernels.merge_heads(*parts, B, T, H, hs, dt)
                ref = np.stack([np.zeros_like(d[i]) if i == miss else d[i]
                                for i in range(3)]).transpose(1, 3, 0, 2, 4)
                assert np.array_equal(g, ref.reshape(B * T, 3 * H * hs)), (impl, miss)


def test_split_heads_node_gradient_with_an_unused_output():
    rng = np.random.default_rng(1)
    z = tl.Tensor(rng.standard_normal((6, 3 * 2 * 2)), requires_grad=True)
    q, k, v = split_heads(z, 2, 3, 2, 2)
    (q * 2.0 + v).sum().backward()                   # k unused: its block gets zeros
    g = z.grad.reshape(2, 3, 3, 2, 2)
    assert np.all(g[:, :, 0] == 2.0) and np.all(g[:, :, 1] == 0.0) and np.all(g[:, :, 2] == 1.0)
    with pytest.raises(tl.errors.ShapeError, match="split_heads"):
        split_heads(z, 2, 3, 2, 3)
