"""tl.nn: Module bookkeeping (names, state_dict, freezing, modes) and the layers, whose
gradients (inputs and parameters) are checked against finite differences in float64."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import nn
from tinyllm.errors import ShapeError

F = tl.functional
IMPLS = tl.kernels.available("attention")


def dims(n_embd, n_head, dropout=0.0, bias=True):
    """A GPTConfig holding what the transformer layers read (n_embd, n_head, dropout, bias)."""
    return tl.models.GPTConfig(vocab_size=1, block_size=1, n_layer=1, n_head=n_head,
                               n_embd=n_embd, dropout=dropout, bias=bias)


def rand(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 5, rng=0)
        self.norm = nn.LayerNorm(5)
        self.out = nn.Linear(5, 2, bias=False, rng=1)

    def forward(self, x):
        return self.out(self.norm(self.fc(x)))


# ------------------------------------------------------------------ Module bookkeeping

def test_parameter_names_follow_registration_order():
    names = [n for n, _ in TwoLayer().named_parameters()]
    assert names == ["fc.weight", "fc.bias", "norm.weight", "norm.bias", "out.weight"]


def test_block_parameter_names_are_gpt2s():
    names = [n for n, _ in nn.Block(dims(8, 2), rng=0).named_parameters()]
    assert names == [f"{m}.{p}" for m in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2",
                                          "mlp.c_fc", "mlp.c_proj") for p in ("weight", "bias")]


def test_linear_layout_is_in_out_and_computes_x_w_plus_b():
    lin = nn.Linear(3, 4, rng=0, dtype=np.float64)
    assert lin.weight.shape == (3, 4) and lin.bias.shape == (4,)
    x = rand(2, 5, 3)
    y = lin(tl.Tensor(x))
    assert y.shape == (2, 5, 4)
    np.testing.assert_allclose(y.data, x @ lin.weight.data + lin.bias.data, rtol=1e-14)
    assert nn.Linear(3, 4, bias=False).bias is None
    with pytest.raises(ShapeError, match="last dimension must be 3"):
        lin(tl.Tensor(rand(2, 4)))


def test_state_dict_round_trip():
    a, b = TwoLayer(), TwoLayer()
    for p in b.parameters():
        p.data[...] = 0.0
    b.load_state_dict({k: v.copy() for k, v in a.state_dict().items()})
    x = tl.Tensor(rand(4, 3, dtype=np.float32))
    np.testing.assert_array_equal(a(x).data, b(x).data)
    assert all(b.state_dict()[k].dtype == np.float32 for k in b.state_dict())


def test_load_state_dict_shape_mismatch_names_the_parameter():
    m = TwoLayer()
    sd = {k: v.copy() for k, v in m.state_dict().items()}
    sd["norm.bias"] = np.zeros(6, np.float32)
    before = m.fc.weight.data.copy()
    sd["fc.weight"] = sd["fc.weight"] + 1
    with pytest.raises(ShapeError, match="norm.bias"):
        m.load_state_dict(sd)
    np.testing.assert_array_equal(m.fc.weight.data, before)   # nothing changed
    del sd["norm.bias"]
    with pytest.raises(KeyError, match="missing norm.bias"):
        m.load_state_dict(sd)


def test_freeze_and_unfreeze_by_pattern():
    blk = nn.Block(dims(8, 2), rng=0, dtype=np.float64)
    frozen = blk.freeze("ln_*")
    assert frozen == ["ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias"]
    x = tl.Tensor(rand(2, 3, 8), requires_grad=True)
    (blk(x) * rand(2, 3, 8, seed=1)).sum().backward()
    grads = {n: p.grad for n, p in blk.named_parameters()}
    assert all(grads[n] is None for n in frozen)
    assert all(g is not None for n, g in grads.items() if n not in frozen)
    assert blk.num_parameters(trainable_only=True) == blk.num_parameters() - 4 * 8
    blk.unfreeze("*")
    assert all(p.requires_grad for p in blk.parameters())
    with pytest.raises(KeyError, match="no parameter matches"):
        blk.freeze("wte*")


def test_parameter_count_of_a_known_block():
    C = 24
    blk = nn.Block(dims(C, 4), rng=0)
    # ln_1 2C, c_attn 3C^2 + 3C, c_proj C^2 + C, ln_2 2C, c_fc 4C^2 + 4C, c_proj 4C^2 + C
    assert blk.num_parameters() == 12 * C * C + 13 * C
    no_bias = nn.Block(dims(C, 4, bias=False), rng=0)
    assert no_bias.num_parameters() == 12 * C * C + 2 * C             # ln weights only


def test_init_is_reproducible_from_a_seed_and_float32_is_float64_rounded():
    a = nn.Block(dims(16, 2), rng=5, std=0.02)
    b = nn.Block(dims(16, 2), rng=5, std=0.02, dtype=np.float64)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert p.dtype == np.float32 and q.dtype == np.float64
        np.testing.assert_array_equal(p.data, q.data.astype(np.float32), err_msg=n)
    c = nn.Block(dims(16, 2), rng=6, std=0.02)
    assert not np.array_equal(a.attn.c_attn.weight.data, c.attn.c_attn.weight.data)


def test_bad_layer_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="n_head"):
        nn.CausalSelfAttention(SimpleNamespace(n_embd=10, n_head=3, dropout=0.0, bias=True))
    with pytest.raises(TypeError, match="Block: cfg must be a config with n_embd, bias .*'bias'"):
        nn.Block(SimpleNamespace(n_embd=8, n_head=2, dropout=0.0))
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(0, 3)
    with pytest.raises(ValueError, match="p must be"):
        nn.Dropout(1.5)
    with pytest.raises(ValueError, match="eps"):
        nn.LayerNorm(4, eps=0)


# ------------------------------------------------------------------ dropout and modes

def test_dropout_follows_the_training_flag():
    d = nn.Dropout(0.5, rng=0)
    x = tl.Tensor(np.ones((200, 50), np.float32))
    y = d(x).data
    assert y.dtype == np.float32
    assert set(np.unique(y)) == {0.0, 2.0} and 0.4 < (y == 0).mean() < 0.6
    d.eval()
    assert d(x) is x
    d.train()
    assert (d(x).data == 0).any()


def test_dropout_is_reproducible_and_its_rng_state_saveable():
    x = tl.Tensor(np.ones((64,), np.float64))
    a, b = nn.Dropout(0.3, rng=7), nn.Dropout(0.3, rng=7)
    np.testing.assert_array_equal(a(x).data, b(x).data)
    state = a.rng.bit_generator.state
    first = a(x).data
    assert not np.array_equal(first, a(x).data)          # the stream moves on
    a.rng.bit_generator.state = state
    np.testing.assert_array_equal(a(x).data, first)


def test_eval_mode_reaches_nested_dropouts():
    blk = nn.Block(dims(8, 2, dropout=0.5), rng=0, dtype=np.float64)
    x = tl.Tensor(rand(2, 4, 8))
    assert not np.array_equal(blk(x).data, blk(x).data)
    blk.eval()
    assert not blk.mlp.dropout.training and not blk.attn.resid_dropout.training
    np.testing.assert_array_equal(blk(x).data, blk(x).data)


# ------------------------------------------------------------------ gradients

def _with_params(module, fn):
    """(f, inputs) for gradcheck: f(x, *params) runs fn(module, x) with the module's
    parameters replaced by gradcheck's Tensors, so parameter gradients are checked too."""
    names = [n for n, _ in module.named_parameters()]
    owners = []
    for n in names:
        *path, attr = n.split(".")
        m = module
        for p in path:
            m = getattr(m, p)
        owners.append((m, attr))

    def f(x, *ps):
        for (m, attr), p in zip(owners, ps):
            object.__setattr__(m, attr, p)       # bypass registration: a test-only swap
        return fn(module, x)

    return f, [p.data.copy() for p in module.parameters()]


LAYERS = {
    "linear": (lambda: nn.Linear(4, 3, rng=0, dtype=np.float64), (2, 3, 4)),
    "layernorm": (lambda: nn.LayerNorm(5, dtype=np.float64), (3, 5)),
    "mlp": (lambda: nn.MLP(dims(4, 1), rng=0, hidden=6, std=0.5, dtype=np.float64), (2, 3, 4)),
    "attention": (lambda: nn.CausalSelfAttention(dims(6, 2), rng=0, std=0.5,
                                                       dtype=np.float64),
                  (2, 3, 6)),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layer", list(LAYERS))
def test_layer_gradients(layer, impl):
    make, shape = LAYERS[layer]
    module = make()
    for p in module.parameters():          # move LayerNorm off its (1, 0) start
        p.data += rand(*p.shape, seed=p.size) * 0.1
    f, params = _with_params(module, lambda m, x: m(x))
    with tl.kernels.use(impl):
        assert tl.gradcheck(f, [rand(*shape, seed=3)] + params, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_block_gradients_fast(impl):
    blk = nn.Block(dims(4, 2), rng=0, std=0.4, dtype=np.float64)
    f, params = _with_params(blk, lambda m, x: m(x))
    with tl.kernels.use(impl):
        assert tl.gradcheck(f, [rand(2, 3, 4, seed=3)] + params, atol=1e-6, rtol=1e-5,
                            fast=True)


def test_embedding_gradient_adds_repeated_rows():
    emb = nn.Embedding(5, 3, rng=0, dtype=np.float64)
    idx = np.array([[0, 2, 2], [4, 2, 0]])
    f, params = _with_params(emb, lambda m, x: m(idx) * x)
    assert tl.gradcheck(f, [rand(2, 3, 3)] + params)


def test_gradcheck_catches_a_wrong_layer():
    """The layer check can fail: a LayerNorm whose forward drops the bias from the graph."""
    ln = nn.LayerNorm(4, dtype=np.float64)
    ln.bias.data += 0.3
    f, params = _with_params(ln, lambda m, x: F.layer_norm(x, m.weight, None) + m.bias.data)
    with pytest.raises(tl.GradcheckError):
        tl.gradcheck(f, [rand(3, 4)] + params)
