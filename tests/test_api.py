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


# ------------------------------------------------------------------ containers and activations

def test_sequential_runs_in_order_with_pytorch_names():
    seq = nn.Sequential(nn.Linear(2, 8, rng=0), nn.ReLU(), nn.Linear(8, 1, rng=1))
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "2.weight",
                                                      "2.bias"]
    x = tl.randn(5, 2, rng=3)
    want = seq[2](seq[1](seq[0](x)))
    np.testing.assert_array_equal(seq(x).data, want.data)
    assert len(seq) == 3 and isinstance(seq[1], nn.ReLU) and isinstance(seq[-1], nn.Linear)
    assert len(seq[:2]) == 2 and seq[:2][0] is seq[0]
    seq(x).sum().backward()
    assert seq[0].weight.grad is not None


def test_sequential_from_a_dict_and_append():
    seq = nn.Sequential({"fc": nn.Linear(2, 3, rng=0), "act": nn.Tanh()})
    assert [n for n, _ in seq.named_parameters()] == ["fc.weight", "fc.bias"]
    seq.append(nn.GELU())
    assert isinstance(seq[2], nn.GELU)
    with pytest.raises(TypeError, match="must be a Module"):
        nn.Sequential(nn.ReLU(), lambda x: x)


def test_activation_modules_match_the_functions():
    x = tl.tensor([-2.0, -0.5, 0.0, 0.7, 3.0])
    np.testing.assert_array_equal(nn.ReLU()(x).data, tl.relu(x).data)
    np.testing.assert_array_equal(nn.Tanh()(x).data, tl.tanh(x).data)
    np.testing.assert_array_equal(nn.GELU()(x).data, tl.gelu(x, approximate="none").data)
    np.testing.assert_array_equal(nn.GELU("tanh")(x).data, tl.gelu(x).data)
    with pytest.raises(ValueError, match="GELU: approximate"):
        nn.GELU("fast")


def test_module_dict_behaves_like_a_dict_with_pytorch_names():
    d = nn.ModuleDict({"enc": nn.Linear(2, 3, rng=0), "dec": nn.Linear(3, 2, rng=1)})
    assert [n for n, _ in d.named_parameters()] == ["enc.weight", "enc.bias", "dec.weight",
                                                    "dec.bias"]
    assert "enc" in d and len(d) == 2 and list(d) == ["enc", "dec"]
    d["act"] = nn.ReLU()
    assert list(d.keys()) == ["enc", "dec", "act"] and d["act"] is d.act
    del d["act"]
    assert "act" not in d and len(d) == 2
    with pytest.raises(KeyError, match="no module 'nope'"):
        d["nope"]
    with pytest.raises(KeyError, match="without dots"):
        d["a.b"] = nn.ReLU()
    with pytest.raises(KeyError, match="shadow"):
        d["items"] = nn.ReLU()


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 4, rng=0), nn.ReLU())
        self.head = nn.Linear(4, 1, rng=1)

    def forward(self, x):
        return self.head(self.body(x))


def test_modules_children_and_apply_walk_the_tree_like_pytorch():
    net = _Net()
    assert [type(m).__name__ for m in net.children()] == ["Sequential", "Linear"]
    assert [type(m).__name__ for m in net.modules()] == ["_Net", "Sequential", "Linear",
                                                         "ReLU", "Linear"]   # depth first
    assert [n for n, _ in net.named_modules()] == ["", "body", "body.0", "body.1", "head"]
    order = []
    assert net.apply(lambda m: order.append(type(m).__name__)) is net
    assert order == ["Linear", "ReLU", "Sequential", "Linear", "_Net"]   # children first

    def zero_linear(m):
        if isinstance(m, nn.Linear):
            m.weight.data[...] = 0
    net.apply(zero_linear)
    assert all(not p.data.any() for n, p in net.named_parameters() if n.endswith("weight"))


def test_requires_grad_freezes_and_unfreezes_everything():
    net = _Net()
    net(tl.randn(3, 2, rng=0)).sum().backward()
    assert net.requires_grad_(False) is net
    assert all(not p.requires_grad and p.grad is None for p in net.parameters())
    assert net.num_parameters(trainable_only=True) == 0
    net.body.requires_grad_()
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["body.0.weight",
                                                                       "body.0.bias"]


def test_repr_is_the_module_tree():
    seq = nn.Sequential(nn.Linear(2, 8, rng=0), nn.ReLU(), nn.Linear(8, 1, rng=0))
    assert repr(seq) == ("Sequential(\n  (0): Linear(2, 8, bias=True)\n  (1): ReLU()\n"
                         "  (2): Linear(8, 1, bias=True)\n)")
    assert repr(_Net()).splitlines()[-1] == ")"
    assert "(body): Sequential(\n    (0): Linear" in repr(_Net())


# ------------------------------------------------------------------ tl.save / tl.load

def _gpt_and_tok(dtype=np.float32):
    from tinyllm.data import CharTokenizer
    tok = CharTokenizer("hello world, it was the best of times")
    cfg = tl.models.GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2,
                              n_embd=16)
    return tl.models.GPT(cfg, seed=5, dtype=dtype), tok


def _rnn_and_task():
    task = tl.data.copy_task(n_symbols=6, min_len=2, max_len=4)
    cfg = tl.models.RNNConfig(vocab_size=task.vocab_size, max_len=task.block_size, d_embed=8,
                              d_hidden=12, d_attn=8)
    return tl.models.AttentionRNN(cfg, seed=2), task


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_load_round_trip_gpt_gives_identical_logits(tmp_path, dtype):
    model, tok = _gpt_and_tok(dtype)
    for p in model.parameters():                      # not the seeded init: "trained" weights
        p.data += np.random.default_rng(1).standard_normal(p.shape).astype(dtype) * 0.1
    idx = np.array([tok.encode("it was the")])
    want, _ = model(idx)
    assert tl.save(model, tmp_path / "gpt", tokenizer=tok) == str(tmp_path / "gpt")
    back, tok2 = tl.load(tmp_path / "gpt")
    assert type(back) is tl.models.GPT and back.config == model.config
    assert not back.training and back.parameters()[0].dtype == dtype
    assert tok2.encode("it was the") == tok.encode("it was the")
    got, _ = back(idx)
    np.testing.assert_array_equal(got.data, want.data)


def test_save_load_round_trip_rnn_gives_identical_logits(tmp_path):
    model, task = _rnn_and_task()
    for p in model.parameters():
        p.data += np.random.default_rng(1).standard_normal(p.shape).astype(p.dtype) * 0.1
    idx = np.array([task.prompt([0, 1, 2])])
    want, _ = model(idx)
    tl.save(model, str(tmp_path / "rnn"), tokenizer=task)
    back, task2 = tl.load(str(tmp_path / "rnn"))
    assert type(back) is tl.models.AttentionRNN and task2 == task
    got, _ = back(idx)
    np.testing.assert_array_equal(got.data, want.data)


def test_tinyllm_generate_reads_what_tl_save_wrote(tmp_path, capsys):
    from tinyllm import cli
    model, tok = _gpt_and_tok()
    tl.save(model, tmp_path / "gpt", tokenizer=tok)
    assert cli.main(["generate", "--checkpoint", str(tmp_path / "gpt"), "--prompt", "it was",
                     "--max-new-tokens", "5", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("it was")
    rnn, task = _rnn_and_task()
    tl.save(rnn, tmp_path / "rnn", tokenizer=task)
    assert cli.main(["generate", "--checkpoint", str(tmp_path / "rnn"), "--prompt",
                     "a b c"]) == 0


def test_save_replaces_a_checkpoint_but_refuses_another_folder(tmp_path):
    model, tok = _gpt_and_tok()
    tl.save(model, tmp_path / "ck", tokenizer=tok)
    model.parameters()[0].data[...] = 0.5
    tl.save(model, tmp_path / "ck", tokenizer=tok)                     # replaced
    assert (tl.load(tmp_path / "ck")[0].parameters()[0].data == 0.5).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]       # no .tmp / .old left
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(tl.train.CheckpointError, match="non-empty folder"):
        tl.save(model, tmp_path / "run", tokenizer=tok)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_save_names_what_is_missing_or_wrong(tmp_path):
    model, tok = _gpt_and_tok()
    with pytest.raises(ValueError, match="with its tokenizer"):
        tl.save(model, tmp_path / "a")
    with pytest.raises(ValueError, match="tokenizer has 5 tokens"):
        tl.save(model, tmp_path / "a", tokenizer=tl.data.CharTokenizer("abcde"))
    rnn, _ = _rnn_and_task()
    with pytest.raises(ValueError, match="task it was trained on"):
        tl.save(rnn, tmp_path / "a")
    with pytest.raises(ValueError, match="does not fit the task"):
        tl.save(rnn, tmp_path / "a", tokenizer=tl.data.copy_task(n_symbols=3))
    with pytest.raises(TypeError, match="GPT or AttentionRNN"):
        tl.save(nn.Linear(2, 2), tmp_path / "a")
    with pytest.raises(tl.train.CheckpointError, match="does not exist"):
        tl.load(tmp_path / "nothing")
    assert not (tmp_path / "a").exists()


def test_load_takes_a_run_folder_as_generate_does(tmp_path):
    model, tok = _gpt_and_tok()
    tl.save(model, tmp_path / "run" / "last", tokenizer=tok)     # how `tinyllm train` lays it out
    back, _ = tl.load(tmp_path / "run")
    idx = np.array([tok.encode("hello")])
    np.testing.assert_array_equal(back(idx)[0].data, model(idx)[0].data)
