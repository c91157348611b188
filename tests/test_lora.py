"""tl.nn.lora: the LoRA Function's hand-derived backward against finite differences (and two
planted bugs that the check must catch), the zero-B start, frozen base weights under AdamW,
merge / unmerge, adapter save / load and their errors, apply_lora on dotted paths."""
import json
import os

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import nn
from tinyllm.autograd import functional as F
from tinyllm.nn.lora import LoRAFunction, lora_linear

C = 4                                   # width of the tiny fused-QKV tests: (C, 3C)
QV = {"q": (0, C), "v": (2 * C, 3 * C)}


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ------------------------------------------------------------------ the Function
def _inputs(trainable_base: bool, bias: bool = True):
    """x (B, T, C), W (C, 3C), b (3C,), then A_q, B_q, A_v, B_v with non-zero B's (with
    B = 0, dA = 0 whatever the scale, so a wrong dA would pass)."""
    r = 2
    W, b = rand(C, 3 * C, seed=1), rand(3 * C, seed=2)
    if not trainable_base:
        W = tl.Tensor(W)                 # requires_grad False: a constant for gradcheck
        b = tl.Tensor(b)
    ab = [rand(C, r, seed=3), rand(r, C, seed=4), rand(C, r, seed=5), rand(r, C, seed=6)]
    return [rand(2, 3, C, seed=0), W] + ([b] if bias else []) + ab


def _fn(scale=1.5, bias=True):
    def f(x, W, b, Aq, Bq, Av, Bv):
        return lora_linear(x, W, b, [Aq, Av], [Bq, Bv], list(QV.values()), scale)
    return f if bias else (lambda x, W, *ab: f(x, W, None, *ab))


@pytest.mark.parametrize("trainable_base", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_two_slices_of_fused_qkv(trainable_base, bias):
    """dx, every dA and dB (and dW, db when the base is trainable), leading dims (B, T)."""
    inputs = _inputs(trainable_base, bias)
    assert tl.gradcheck(_fn(bias=bias), inputs, atol=1e-6, rtol=1e-5)


def test_gradcheck_when_x_wants_no_gradient():
    """The dx branch is skipped (a frozen embedding below): dA must still be right."""
    inputs = _inputs(False)
    inputs[0] = tl.Tensor(inputs[0])
    assert tl.gradcheck(_fn(), inputs, atol=1e-6, rtol=1e-5)


def test_forward_matches_numpy():
    x, W, b, Aq, Bq, Av, Bv = _inputs(True)
    y = _fn(0.7)(*(tl.Tensor(a) for a in (x, W, b, Aq, Bq, Av, Bv))).data
    ref = x @ W + b
    ref[..., 0:C] += 0.7 * (x @ Aq) @ Bq
    ref[..., 2 * C:] += 0.7 * (x @ Av) @ Bv
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


def _planted(monkeypatch, bug):
    orig = LoRAFunction.backward

    def bad(ctx, dout):
        W, s = ctx.saved[1], ctx.scale
        g = list(orig(ctx, dout))
        if bug == "no scale in dA":
            g[3] = g[3] / s
        elif bug == "no adapter term in dx":
            g[0] = (dout.reshape(-1, W.shape[1]) @ W.T).reshape(g[0].shape)
        return tuple(g)

    monkeypatch.setattr(LoRAFunction, "backward", staticmethod(bad))


@pytest.mark.parametrize("bug,index", [("no scale in dA", 3), ("no adapter term in dx", 0)])
def test_gradcheck_catches_a_planted_backward_bug(monkeypatch, bug, index):
    _planted(monkeypatch, bug)
    with pytest.raises(tl.GradcheckError) as e:
        tl.gradcheck(_fn(), _inputs(False), atol=1e-6, rtol=1e-5)
    assert e.value.input_index == index


def test_lora_linear_rejects_bad_shapes():
    x, W, b, Aq, Bq, Av, Bv = (tl.Tensor(a) for a in _inputs(True))
    with pytest.raises(tl.ShapeError, match="adapter 1"):
        lora_linear(x, W, b, [Aq, Av], [Bq, Aq], list(QV.values()), 1.0)
    with pytest.raises(ValueError, match="slice 0"):
        lora_linear(x, W, b, [Aq], [Bq], [(8, 16)], 1.0)
    with pytest.raises(tl.ShapeError, match="last dimension must be 4"):
        lora_linear(tl.Tensor(rand(2, 5)), W, b, [Aq], [Bq], [(0, C)], 1.0)


# ------------------------------------------------------------------ the module
def test_zero_b_gives_the_base_output_exactly_and_keeps_its_parameters():
    base = nn.Linear(8, 24, rng=0)
    x = tl.Tensor(rand(2, 3, 8).astype(np.float32))
    y0 = base(x).data
    m = nn.LoRALinear(base, 4, 8.0, {"q": (0, 8), "v": (16, 24)}, rng=1)
    assert m.weight is base.weight and m.bias is base.bias
    assert not m.weight.requires_grad and not m.bias.requires_grad
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias", "lora_A_q", "lora_B_q",
                                                    "lora_A_v", "lora_B_v"]
    assert m.lora_A_q.shape == (8, 4) and m.lora_B_v.shape == (4, 8)
    assert m.lora_A_q.dtype == np.float32 and not m.lora_B_q.data.any()
    assert m.scale == 2.0
    y = m(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y.data, y0)


def test_a_is_drawn_with_variance_one_over_in():
    m = nn.LoRALinear(nn.Linear(400, 8, rng=0), 50, 1.0, rng=0)
    assert abs(m.lora_A_all.data.std() - 1 / np.sqrt(400)) < 0.002


def test_repr_and_bad_arguments():
    base = nn.Linear(4, 12, rng=0)
    m = nn.LoRALinear(base, 2, 16, QV)
    assert repr(m) == ("LoRALinear(4, 12, bias=True, r=2, alpha=16, slices={q=(0, 4), "
                       "v=(8, 12)})")
    with pytest.raises(TypeError, match="must be a tl.nn.Linear"):
        nn.LoRALinear(nn.LayerNorm(4), 2, 1.0)
    with pytest.raises(ValueError, match="r must be a positive int"):
        nn.LoRALinear(base, 0, 1.0)
    with pytest.raises(ValueError, match="alpha must be a positive finite"):
        nn.LoRALinear(base, 2, float("nan"))
    with pytest.raises(ValueError, match="0 <= lo < hi <= 12"):
        nn.LoRALinear(base, 2, 1.0, {"q": (8, 16)})
    with pytest.raises(ValueError, match="overlap"):
        nn.LoRALinear(base, 2, 1.0, {"q": (0, 6), "k": (4, 8)})
    with pytest.raises(ValueError, match="identifier"):
        nn.LoRALinear(base, 2, 1.0, {"q.x": (0, 4)})
    with pytest.raises(tl.ShapeError, match="last dimension must be 4"):
        m(tl.Tensor(rand(2, 5).astype(np.float32)))


# ------------------------------------------------------------------ a tiny model
class Layer(nn.Module):
    def __init__(self, rng):
        super().__init__()
        self.qkv = nn.Linear(C, 3 * C, rng=rng)
        self.fc1 = nn.Linear(C, 4 * C, rng=rng)
        self.fc2 = nn.Linear(4 * C, C, rng=rng)

    def forward(self, h):
        qkv = self.qkv(h)
        q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
        h = h + (q * k).tanh() * v
        return h + self.fc2(F.gelu(self.fc1(h)))


class Tiny(nn.Module):
    """Embedding -> 2 layers (fused qkv, fc1, fc2) -> head: enough to train adapters."""
    V = 7

    def __init__(self, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.emb = nn.Embedding(self.V, C, rng=rng)
        self.layers = nn.ModuleList([Layer(rng), Layer(rng)])
        self.head = nn.Linear(C, self.V, rng=rng)

    def forward(self, idx):
        h = self.emb(idx)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


TARGETS = {"layers.0.qkv": QV, "layers.1.qkv": QV, "layers.1.fc1": None}
IDX = np.random.default_rng(9).integers(0, Tiny.V, (3, 5))
TGT = np.random.default_rng(10).integers(0, Tiny.V, (3, 5))


def _loss(model):
    return F.cross_entropy(model(IDX).reshape(-1, Tiny.V), TGT.reshape(-1))


def _lora_model(seed=0, r=2, alpha=4.0, targets=TARGETS, lora_seed=1):
    model = Tiny(seed)
    names = nn.apply_lora(model, targets, r=r, alpha=alpha, seed=lora_seed)
    model.freeze("*")
    model.unfreeze("*lora_*")
    return model, names


def _train(model, steps=6, lr=3e-2):
    opt = tl.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                         weight_decay=0.0)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = _loss(model)
        loss.backward()
        opt.step()
        losses.append(float(loss.data))
    return losses


def test_apply_lora_names_and_paths():
    model = Tiny()
    before = [n for n, _ in model.named_parameters()]
    w = model.layers[0].qkv.weight
    names = nn.apply_lora(model, TARGETS, r=2, alpha=4.0)
    assert names == ["layers.0.qkv.lora_A_q", "layers.0.qkv.lora_B_q", "layers.0.qkv.lora_A_v",
                     "layers.0.qkv.lora_B_v", "layers.1.qkv.lora_A_q", "layers.1.qkv.lora_B_q",
                     "layers.1.qkv.lora_A_v", "layers.1.qkv.lora_B_v", "layers.1.fc1.lora_A_all",
                     "layers.1.fc1.lora_B_all"]
    assert isinstance(model.layers[0].qkv, nn.LoRALinear)        # ModuleList indexing too
    assert model.layers[0].qkv.weight is w
    after = [n for n, _ in model.named_parameters()]
    assert [n for n in after if "lora_" not in n] == before      # base names, same order
    assert sorted(nn.lora_state_dict(model)) == sorted(names)
    own = dict(model.named_parameters())
    assert all(own[n].requires_grad for n in names)
    assert not own["layers.0.qkv.weight"].requires_grad
    assert own["layers.0.fc1.weight"].requires_grad              # untouched layers as they were


def test_apply_lora_keeps_sequential_order():
    seq = nn.Sequential(nn.Linear(3, 5, rng=0), nn.ReLU(), nn.Linear(5, 2, rng=1))
    names = [n for n, _ in seq.named_parameters()]
    nn.apply_lora(seq, {"2": None, "0": None}, r=1, alpha=1.0)
    assert [n for n, _ in seq.named_parameters() if "lora" not in n] == names
    assert seq(tl.Tensor(rand(4, 3).astype(np.float32))).shape == (4, 2)


def test_apply_lora_errors_name_the_path_and_change_nothing():
    model = Tiny()
    with pytest.raises(KeyError, match="layers.0.nope"):
        nn.apply_lora(model, {"layers.0.qkv": QV, "layers.0.nope": None}, r=2, alpha=1.0)
    with pytest.raises(KeyError, match="layers.5"):
        nn.apply_lora(model, {"layers.5.qkv": None}, r=2, alpha=1.0)
    with pytest.raises(TypeError, match="'layers.0' is a Layer, not a Linear"):
        nn.apply_lora(model, {"layers.0": None}, r=2, alpha=1.0)
    with pytest.raises(ValueError, match="'layers.0.fc2'.*0 <= lo < hi <= 4"):
        nn.apply_lora(model, {"layers.0.fc2": {"q": (0, 8)}}, r=2, alpha=1.0)
    assert not nn.lora.lora_modules(model)                        # all checked first
    nn.apply_lora(model, {"layers.0.qkv": QV}, r=2, alpha=1.0)
    with pytest.raises(TypeError, match="already has LoRA"):
        nn.apply_lora(model, {"layers.0.qkv": QV}, r=2, alpha=1.0)


def test_adamw_trains_adapters_and_leaves_base_weights_bitwise():
    model, names = _lora_model()
    frozen = {n: p.data.copy() for n, p in model.named_parameters() if "lora_" not in n}
    start = nn.lora_state_dict(model)
    losses = _train(model)
    for n, p in model.named_parameters():
        if "lora_" not in n:
            np.testing.assert_array_equal(p.data, frozen[n], err_msg=n)
            assert p.grad is None, n                            # never even computed
    after = nn.lora_state_dict(model)
    for n in names:
        assert not np.array_equal(after[n], start[n]), f"{n} did not change"
    assert losses[-1] < losses[0]


# ------------------------------------------------------------------ merge / unmerge
MERGE_TOL = dict(rtol=1e-6, atol=1e-6)   # float32 logits ~1; measured <= 2.5e-7 (2 ulps)


def test_merge_matches_unmerged_and_unmerge_restores_w():
    model, _ = _lora_model()
    _train(model, steps=4)
    model.eval()
    w0 = {p: m.weight.data.copy() for p, m in nn.lora.lora_modules(model).items()}
    y = model(IDX).data
    assert nn.merge_lora(model) == list(TARGETS)
    mod = model.layers[0].qkv
    assert mod.merged and "merged" in repr(mod)
    assert not np.array_equal(mod.weight.data, w0["layers.0.qkv"])
    ym = model(IDX).data
    np.testing.assert_allclose(ym, y, **MERGE_TOL)
    # merged, the forward is the base Linear's: one GEMM with the folded weight
    x = tl.Tensor(rand(2, 3, C).astype(np.float32))
    plain = nn.Linear(C, 3 * C)
    plain.weight, plain.bias = mod.weight, mod.bias
    np.testing.assert_array_equal(mod(x).data, plain(x).data)
    with pytest.raises(RuntimeError, match="already merged"):
        nn.merge_lora(model)
    with pytest.raises(RuntimeError, match="already merged"):
        mod.merge()
    model.train()
    with pytest.raises(RuntimeError, match="training a merged LoRALinear is refused"):
        model(IDX)
    model.eval()
    with pytest.raises(RuntimeError, match="are merged; unmerge_lora"):
        nn.load_adapters(model, "nowhere")
    nn.unmerge_lora(model)
    for p, m in nn.lora.lora_modules(model).items():
        assert not m.merged
        np.testing.assert_allclose(m.weight.data, w0[p], rtol=0, atol=2.5e-7)  # ~2 ulps
    np.testing.assert_allclose(model(IDX).data, y, **MERGE_TOL)
    with pytest.raises(RuntimeError, match="not merged"):
        nn.unmerge_lora(model)
    with pytest.raises(RuntimeError, match="not merged"):
        mod.unmerge()


def test_helpers_need_lora():
    with pytest.raises(ValueError, match="no LoRALinear"):
        nn.merge_lora(Tiny())


# ------------------------------------------------------------------ save / load
def test_save_load_reproduces_outputs_exactly(tmp_path):
    model, names = _lora_model()
    _train(model, steps=3)
    model.eval()
    y = model(IDX).data
    folder = nn.save_adapters(model, str(tmp_path / "ad"))
    assert sorted(os.listdir(folder)) == ["adapters.json", "adapters.safetensors"]
    meta = json.loads(open(os.path.join(folder, "adapters.json")).read())
    assert meta["r"] == 2 and meta["alpha"] == 4.0
    assert meta["targets"]["layers.0.qkv"] == {"q": [0, 4], "v": [8, 12]}
    assert meta["targets"]["layers.1.fc1"] == {"all": [0, 16]}
    fresh, _ = _lora_model(lora_seed=5)               # same base, other adapters
    fresh.eval()
    assert not np.array_equal(fresh(IDX).data, y)
    assert sorted(nn.load_adapters(fresh, folder)) == sorted(names)
    np.testing.assert_array_equal(fresh(IDX).data, y)


@pytest.fixture
def saved(tmp_path):
    model, _ = _lora_model()
    _train(model, steps=2)
    return nn.save_adapters(model, str(tmp_path / "ad"))


def _unchanged(model):
    return nn.lora_state_dict(model)


def test_load_wrong_r_names_it_and_changes_nothing(saved):
    other, _ = _lora_model(r=3)
    before = _unchanged(other)
    with pytest.raises(ValueError, match="layers.0.qkv: r is 2 in the file but 3 in the model"):
        nn.load_adapters(other, saved)
    for n, a in nn.lora_state_dict(other).items():
        np.testing.assert_array_equal(a, before[n])


def test_load_wrong_alpha_and_slices(saved):
    with pytest.raises(ValueError, match="alpha is 4.0 in the file but 8.0"):
        nn.load_adapters(_lora_model(alpha=8.0)[0], saved)
    t = dict(TARGETS, **{"layers.0.qkv": {"q": (0, C), "k": (C, 2 * C)}})
    with pytest.raises(ValueError, match="layers.0.qkv: slices"):
        nn.load_adapters(_lora_model(targets=t)[0], saved)


def test_load_missing_and_extra_adapters(saved):
    fewer = {k: v for k, v in TARGETS.items() if k != "layers.1.fc1"}
    with pytest.raises(ValueError, match="layers.1.fc1: in the file, not in the model"):
        nn.load_adapters(_lora_model(targets=fewer)[0], saved)
    more = dict(TARGETS, **{"layers.0.fc2": None})
    with pytest.raises(ValueError, match="layers.0.fc2: in the model, not in the file"):
        nn.load_adapters(_lora_model(targets=more)[0], saved)


def test_load_corrupt_or_missing_files(saved):
    model, _ = _lora_model()
    path = os.path.join(saved, "adapters.safetensors")
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        nn.load_adapters(model, saved)
    os.remove(path)
    with pytest.raises(FileNotFoundError, match="adapters.safetensors does not exist"):
        nn.load_adapters(model, saved)


def test_get_and_set_submodule():
    model = Tiny()
    assert model.get_submodule("layers.1.fc2") is model.layers[1].fc2
    assert model.get_submodule("") is model
    with pytest.raises(KeyError, match="layers.1 has no sub-module 'fc3'"):
        model.get_submodule("layers.1.fc3")
    new = nn.Linear(C, 4 * C, rng=3)
    model.set_submodule("layers.0.fc1", new)
    assert model.layers[0].fc1 is new and model.layers[0]._modules["fc1"] is new
    lst = nn.ModuleList([nn.ReLU(), nn.Tanh()])
    lst.set_submodule("1", new)
    assert lst[1] is new and list(lst)[1] is new and lst._modules["1"] is new
    with pytest.raises(KeyError, match="no sub-module 'extra'"):
        model.set_submodule("layers.0.extra", new)
    with pytest.raises(TypeError, match="expected a Module"):
        model.set_submodule("layers.0.fc1", "not a module")
