"""The Python API a learner reaches for (issue 10): scalars from tensors, argmax / softmax /
view, the creation functions and manual_seed, the container modules, tl.save / tl.load."""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm import nn


# ------------------------------------------------------------------ scalars and methods

def test_float_int_bool_of_one_element_tensors():
    loss = tl.Tensor(np.array([[2.5]], np.float32), requires_grad=True)
    assert float(loss) == 2.5 and isinstance(float(loss), float)
    assert int(tl.Tensor(np.array(7))) == 7
    assert int(tl.tensor(3.9)) == 3
    assert bool(tl.tensor(1.0)) and not bool(tl.tensor(0.0))
    assert f"{float(loss):.1f}" == "2.5"


@pytest.mark.parametrize("conv", [float, int])
def test_scalar_of_many_elements_names_the_shape(conv):
    with pytest.raises(TypeError, match=r"one-element.*shape \(2, 3\)"):
        conv(tl.zeros(2, 3))


def test_bool_of_many_elements_is_ambiguous():
    with pytest.raises(ValueError, match=r"ambiguous.*\(2,\)|\(2,\).*ambiguous"):
        bool(tl.ones(2))


def test_argmax_is_an_int_array_without_grad():
    x = tl.tensor([[0.1, 3.0, -1.0], [5.0, 0.0, 1.0]], requires_grad=True)
    a = x.argmax(axis=-1)
    assert isinstance(a, np.ndarray) and a.dtype == np.int64
    np.testing.assert_array_equal(a, [1, 0])
    assert int(x.argmax()) == 3                           # over the flattened tensor
    assert x.argmax(axis=1, keepdims=True).shape == (2, 1)


def test_softmax_method_is_functional_softmax_with_its_gradient():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 5)).astype(np.float32)
    x, y = tl.Tensor(a.copy(), requires_grad=True), tl.Tensor(a.copy(), requires_grad=True)
    w = rng.standard_normal((2, 5)).astype(np.float32)
    (x.softmax() * w).sum().backward()
    (tl.functional.softmax(y, -1) * w).sum().backward()
    np.testing.assert_allclose(x.grad, y.grad, rtol=1e-6)
    np.testing.assert_allclose(x.softmax(axis=0).data.sum(0), np.ones(5), rtol=1e-6)


def test_view_is_reshape():
    x = tl.tensor(np.arange(6.0), requires_grad=True)
    v = x.view(2, 3)
    assert v.shape == (2, 3) and x.view((3, 2)).shape == (3, 2) and x.view(-1, 2).shape == (3, 2)
    (v * tl.tensor(np.arange(6.0).reshape(2, 3))).sum().backward()
    np.testing.assert_array_equal(x.grad, np.arange(6.0))


# ------------------------------------------------------------------ creation and seeding

def test_tensor_copies_and_follows_the_dtype_rules():
    a = np.ones(3)
    t = tl.tensor(a)
    a[0] = 5
    assert t.data[0] == 1 and t.dtype == np.float64      # a copy; ndarrays keep their dtype
    assert tl.tensor([1, 2]).dtype == np.float32          # lists become float32
    assert tl.tensor([1, 2], dtype=np.int64).dtype == np.int64
    assert tl.tensor([1.0], requires_grad=True).requires_grad
    with pytest.raises(TypeError, match="require grad"):
        tl.tensor([1, 2], dtype=np.int64, requires_grad=True)


def test_zeros_ones_randn_shapes_and_dtypes():
    for make in (tl.zeros, tl.ones, tl.randn):
        assert make(2, 3).shape == (2, 3) and make((2, 3)).shape == (2, 3)
        assert make(4).dtype == np.float32
        assert make(4, dtype=np.float64).dtype == np.float64
        assert make(2, requires_grad=True).requires_grad
    assert tl.zeros(2).data.sum() == 0 and tl.ones(2, 2).data.sum() == 4
    with pytest.raises(ValueError, match="zeros: the shape"):
        tl.zeros(2, -1)


def test_manual_seed_governs_randn_dropout_and_layer_init():
    tl.manual_seed(123)
    a = tl.randn(5)
    drop_a = tl.dropout(tl.ones(100), 0.5).data
    lin_a = nn.Linear(3, 4).weight.data.copy()
    tl.manual_seed(123)
    np.testing.assert_array_equal(tl.randn(5).data, a.data)
    np.testing.assert_array_equal(tl.dropout(tl.ones(100), 0.5).data, drop_a)
    np.testing.assert_array_equal(nn.Linear(3, 4).weight.data, lin_a)
    assert not np.array_equal(tl.randn(5).data, a.data)  # the stream moves on
    # an explicit rng / seed is not affected
    np.testing.assert_array_equal(tl.randn(3, rng=7).data, tl.randn(3, rng=7).data)
    assert tl.manual_seed(0) is tl.default_generator()


def test_manual_seed_reseeds_a_dropout_layer_that_holds_the_default_generator():
    layer = nn.Dropout(0.5)
    tl.manual_seed(9)
    m1 = layer(tl.ones(50)).data
    tl.manual_seed(9)
    np.testing.assert_array_equal(layer(tl.ones(50)).data, m1)


def test_manual_seed_leaves_seeded_models_alone():
    cfg = tl.models.GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
    tl.manual_seed(1)
    w1 = tl.models.GPT(cfg, seed=3).state_dict()
    tl.manual_seed(2)
    w2 = tl.models.GPT(cfg, seed=3).state_dict()
    for k in w1:
        np.testing.assert_array_equal(w1[k], w2[k])


def test_manual_seed_refuses_a_bad_seed():
    with pytest.raises(ValueError, match="manual_seed"):
        tl.manual_seed(-1)
