"""Every registered op: forward against NumPy, backward against central differences."""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm.autograd.opinfo import OPS

SEEDS = [0, 1, 2]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_op_gradcheck(op, seed):
    s = op.sample(np.random.default_rng([seed, 7]))
    assert tl.gradcheck(s.fn, s.inputs, seed=seed)


@pytest.mark.parametrize("op", [op for op in OPS if op.name != "dropout"],
                         ids=[op.name for op in OPS if op.name != "dropout"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_op_forward_matches_numpy(op, dtype):
    s = op.sample(np.random.default_rng(11))
    xs = [x.astype(dtype) for x in s.inputs]
    out = s.fn(*[tl.Tensor(x) for x in xs])
    expected = s.ref(*xs)
    assert out.dtype == dtype, f"{op.name} changed dtype {dtype} -> {out.dtype}"
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(out.data, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_op_fast_mode(op):
    s = op.sample(np.random.default_rng(3))
    assert tl.gradcheck(s.fn, s.inputs, fast=True)


def test_registry_covers_the_issue_op_list():
    names = {op.name for op in OPS}
    required = {"add", "sub", "mul", "div", "neg", "pow", "matmul", "exp", "log", "sqrt", "tanh",
                "sigmoid", "relu", "gelu_tanh", "gelu_erf", "sum", "mean", "max", "var",
                "reshape", "transpose", "swapaxes", "T", "getitem", "concat", "stack", "split",
                "where", "masked_fill", "embedding", "dropout", "softmax", "log_softmax",
                "cross_entropy", "layer_norm", "mlp", "attention", "decode_attention",
                "additive_attention"}
    assert required <= names, required - names


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_op_gradcheck_many_seeds(op):
    """The same check over 50 random samples per op (pytest -m slow)."""
    for seed in range(50):
        s = op.sample(np.random.default_rng([seed, 1234]))
        assert tl.gradcheck(s.fn, s.inputs, seed=seed), f"{op.name} seed {seed}"
