"""tinyllm.optim: SGD, Adam, AdamW against hand-written NumPy and against PyTorch; in-place
float32 updates; bitwise resume from a state dict; no-decay groups; gradient clipping;
warmup-cosine schedule; errors."""
import json
import math

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import optim
from tinyllm.errors import ShapeError

SHAPES = [(4, 3), (3,), (2, 2, 2)]
FUSED = [pytest.param(False, id="numpy"), pytest.param(True, id="numba")]


def make_params(dtype=np.float64, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [tl.Tensor(rng.standard_normal(s).astype(dtype), requires_grad=True) for s in shapes]


def grad_seq(n_steps, dtype=np.float64, seed=1, shapes=SHAPES):
    """grads[t][i]: the gradient of parameter i at step t (fixed, so runs can be compared)."""
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(n_steps)]


def run(opt, params, grads, sched=None):
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = None if g is None else g.copy()
        opt.step()
        if sched is not None:
            sched.step()


# --- hand-written update equations (plain NumPy, new arrays everywhere) -------------------

def np_sgd(ps, grads, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
    ps = [p.copy() for p in ps]
    bufs = [None] * len(ps)
    for gs in grads:
        for i, g in enumerate(gs):
            d = g + weight_decay * ps[i]
            if momentum:
                bufs[i] = d.copy() if bufs[i] is None else \
                    momentum * bufs[i] + (1 - dampening) * d
                d = d + momentum * bufs[i] if nesterov else bufs[i]
            ps[i] = ps[i] - lr * d
    return ps


def np_adam(ps, grads, lr, betas, eps, weight_decay, decoupled):
    b1, b2 = betas
    ps = [p.copy() for p in ps]
    m = [np.zeros_like(p) for p in ps]
    v = [np.zeros_like(p) for p in ps]
    for t, gs in enumerate(grads, start=1):
        for i, g in enumerate(gs):
            if decoupled:
                ps[i] = ps[i] * (1 - lr * weight_decay)
            else:
                g = g + weight_decay * ps[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g ** 2
            m_hat = m[i] / (1 - b1 ** t)
            v_hat = v[i] / (1 - b2 ** t)
            ps[i] = ps[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return ps


SGD_CASES = [dict(lr=0.1), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9,
             dampening=0.3, weight_decay=0.01), dict(lr=0.05, momentum=0.8, nesterov=True,
             weight_decay=0.1)]
ADAM_CASES = [dict(lr=1e-2), dict(lr=3e-2, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.1),
              dict(lr=1e-2, betas=(0.0, 0.5), eps=1e-6, weight_decay=0.0)]


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("kw", SGD_CASES)
def test_sgd_matches_equations(kw, fused):
    ps, grads = make_params(), grad_seq(6)
    want = np_sgd([p.data for p in ps], grads, **kw)
    run(optim.SGD(ps, fused=fused, **kw), ps, grads)
    for p, w in zip(ps, want):
        np.testing.assert_allclose(p.data, w, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("kw", ADAM_CASES)
@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW])
def test_adam_matches_equations(cls, kw, fused):
    ps, grads = make_params(), grad_seq(6)
    full = dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01 if cls is optim.AdamW else 0.0)
    full.update(kw)
    want = np_adam([p.data for p in ps], grads, decoupled=cls is optim.AdamW, **full)
    run(cls(ps, fused=fused, **kw), ps, grads)
    for p, w in zip(ps, want):
        np.testing.assert_allclose(p.data, w, rtol=1e-12, atol=1e-14)


def test_adam_l2_differs_from_adamw():
    """The two decays are different algorithms: same hyperparameters, different results."""
    a, b = make_params(), make_params()
    grads = grad_seq(3)
    run(optim.Adam(a, lr=0.1, weight_decay=0.5), a, grads)
    run(optim.AdamW(b, lr=0.1, weight_decay=0.5), b, grads)
    assert not np.allclose(a[0].data, b[0].data, rtol=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make", [lambda ps, f: optim.AdamW(ps, lr=0.01, fused=f),
                                  lambda ps, f: optim.Adam(ps, lr=0.01, weight_decay=0.1,
                                                           fused=f),
                                  lambda ps, f: optim.SGD(ps, lr=0.1, momentum=0.9,
                                                          weight_decay=0.1, nesterov=True,
                                                          fused=f)],
                         ids=["AdamW", "Adam", "SGD"])
def test_numba_kernel_rounds_like_reference(make, dtype):
    """The one-pass kernel does the reference's operations in the same order, unfused."""
    a, b = make_params(dtype), make_params(dtype)
    grads = grad_seq(4, dtype)
    run(make(a, True), a, grads)
    run(make(b, False), b, grads)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.data, y.data)


# --- PyTorch as the oracle ---------------------------------------------------------------

def _torch_run(torch_cls, kw, groups, grads, lr_change):
    import torch
    tparams = [[torch.tensor(p.data.copy(), requires_grad=True) for p in g["params"]]
               for g in groups]
    opt = torch_cls([{**{k: v for k, v in g.items() if k != "params"}, "params": tp}
                     for g, tp in zip(groups, tparams)], **kw)
    flat = [tp for g in tparams for tp in g]
    for t, gs in enumerate(grads):
        if t == lr_change[0]:
            for g in opt.param_groups:
                g["lr"] *= lr_change[1]
        for tp, g in zip(flat, gs):
            tp.grad = None if g is None else torch.tensor(g)
        opt.step()
    return [tp.detach().numpy() for tp in flat]


TORCH_CASES = [("SGD", dict(lr=0.1)),
               ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.2, weight_decay=0.05)),
               ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.05)),
               ("Adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-3, weight_decay=0.1)),
               ("Adam", dict(lr=0.02)),
               ("AdamW", dict(lr=0.02, betas=(0.85, 0.95), eps=1e-4, weight_decay=0.2)),
               ("AdamW", dict(lr=0.02))]


@pytest.mark.torch
@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("name,kw", TORCH_CASES,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(TORCH_CASES)])
def test_matches_torch(name, kw, fused):
    """float64, 10 steps, two param groups (the second with its own lr and weight decay), a
    parameter without a gradient for some steps, and the lr scaled after step 5."""
    torch = pytest.importorskip("torch")
    ps = make_params(np.float64)
    grads = grad_seq(10)
    for t in (2, 3, 7):
        grads[t][1] = None                                 # parameter 1 skips these steps
    groups = [{"params": ps[:2]}, {"params": ps[2:], "lr": kw["lr"] * 0.5,
                                   "weight_decay": 0.3}]
    want = _torch_run(getattr(torch.optim, name), kw, groups, grads, lr_change=(5, 0.3))
    opt = getattr(optim, name)(groups, fused=fused, **kw)
    for t, gs in enumerate(grads):
        if t == 5:
            for g in opt.param_groups:
                g["lr"] *= 0.3
        for p, g in zip(ps, gs):
            p.grad = None if g is None else g.copy()
        opt.step()
    for i, (p, w) in enumerate(zip(ps, want)):
        np.testing.assert_allclose(p.data, w, rtol=1e-10, atol=1e-12, err_msg=f"param {i}")
    assert opt.state[id(ps[1])]["step"] == 7


# --- dtype and in-place updates ------------------------------------------------------------

@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("make", [lambda ps, f: optim.AdamW(ps, lr=0.01, fused=f),
                                  lambda ps, f: optim.Adam(ps, lr=0.01, weight_decay=0.1,
                                                           fused=f),
                                  lambda ps, f: optim.SGD(ps, lr=0.1, momentum=0.9,
                                                          fused=f)],
                         ids=["AdamW", "Adam", "SGD"])
def test_float32_stays_float32_in_place(make, fused):
    ps = make_params(np.float32)
    base = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
    ps.append(tl.Tensor(base.T, requires_grad=True))       # a non-contiguous parameter
    arrays = [p.data for p in ps]
    before = [a.copy() for a in arrays]
    opt = make(ps, fused)
    run(opt, ps, grad_seq(3, np.float32, shapes=[p.shape for p in ps]))
    for p, a, b in zip(ps, arrays, before):
        assert p.data is a
        assert p.data.dtype == np.float32
        assert not np.array_equal(a, b)
    assert np.shares_memory(ps[-1].data, base)             # the view was updated through
    for st in opt.state.values():
        for v in st.values():
            if isinstance(v, np.ndarray):
                assert v.dtype == np.float32


def test_grad_none_is_skipped():
    ps = make_params()
    before = ps[1].data.copy()
    opt = optim.AdamW(ps, lr=0.1, weight_decay=0.5)
    grads = grad_seq(2)
    for gs in grads:
        gs[1] = None
    run(opt, ps, grads)
    np.testing.assert_array_equal(ps[1].data, before)     # not even decayed
    assert id(ps[1]) not in opt.state and opt.state[id(ps[0])]["step"] == 2


def test_zero_grad():
    ps = make_params()
    opt = optim.SGD(ps, lr=0.1)
    for p in ps:
        p.grad = np.ones(p.shape)
    g0 = ps[0].grad
    opt.zero_grad(set_to_none=False)
    assert ps[0].grad is g0 and not g0.any()
    opt.zero_grad()
    assert all(p.grad is None for p in ps)


# --- state dict and resume --------------------------------------------------------------------

def _roundtrip(sd, tmp_path):
    """Through JSON and safetensors (or plain copies without safetensors), as a checkpoint."""
    meta = json.loads(json.dumps(sd["meta"]))
    try:
        from safetensors.numpy import load_file, save_file
    except ImportError:                                   # pragma: no cover
        return {"meta": meta, "arrays": {k: v.copy() for k, v in sd["arrays"].items()}}
    save_file(sd["arrays"], str(tmp_path / "opt.safetensors"))
    return {"meta": meta, "arrays": load_file(str(tmp_path / "opt.safetensors"))}


RESUME = [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
          lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.1),
          lambda ps: optim.AdamW(
              optim.param_groups_for_decay([(f"h.{i}.w", p) for i, p in enumerate(ps)], 0.1),
              lr=0.01)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make", RESUME, ids=["SGD", "Adam", "AdamW"])
def test_resume_is_bitwise(make, dtype, tmp_path):
    k, n = 3, 4
    grads = grad_seq(k + n, dtype)
    ref = make_params(dtype)
    ref_opt = make(ref)
    ref_sched = optim.WarmupCosineLR(ref_opt, warmup_steps=2, total_steps=6, min_lr=1e-3)
    run(ref_opt, ref, grads, ref_sched)

    ps = make_params(dtype)
    opt = make(ps)
    sched = optim.WarmupCosineLR(opt, warmup_steps=2, total_steps=6, min_lr=1e-3)
    run(opt, ps, grads[:k], sched)
    saved = _roundtrip(opt.state_dict(), tmp_path)
    saved_sched = json.loads(json.dumps(sched.state_dict()))
    saved_params = [p.data.copy() for p in ps]
    run(opt, ps, grads[k:k + 1], sched)                   # later steps don't change `saved`

    fresh = [tl.Tensor(a, requires_grad=True) for a in saved_params]
    opt2 = make(fresh)
    sched2 = optim.WarmupCosineLR(opt2, warmup_steps=2, total_steps=6, min_lr=1e-3)
    opt2.load_state_dict(saved)
    sched2.load_state_dict(saved_sched)
    run(opt2, fresh, grads[k:], sched2)
    for a, b in zip(fresh, ref):
        assert a.data.dtype == dtype
        np.testing.assert_array_equal(a.data, b.data)


def test_state_dict_form():
    ps = make_params(np.float32)
    opt = optim.AdamW(ps, lr=0.01)
    run(opt, ps, grad_seq(2, np.float32)[:1])
    sd = opt.state_dict()
    json.dumps(sd["meta"])
    assert sd["meta"]["type"] == "AdamW" and sd["meta"]["state"]["0"] == {"step": 1}
    assert sd["meta"]["param_shapes"] == [list(s) for s in SHAPES]
    assert sorted(sd["arrays"]) == sorted(f"state.{i}.{k}" for i in range(3)
                                          for k in ("exp_avg", "exp_avg_sq"))
    assert sd["arrays"]["state.0.exp_avg"].dtype == np.float32
    assert sd["arrays"]["state.0.exp_avg"] is not opt.state[id(ps[0])]["exp_avg"]


def _saved(make=lambda ps: optim.AdamW(ps, lr=0.01), dtype=np.float64):
    ps = make_params(dtype)
    opt = make(ps)
    run(opt, ps, grad_seq(2, dtype))
    return opt.state_dict()


def test_load_mismatch_raises_and_changes_nothing():
    sd = _saved()
    ps = make_params(shapes=[(4, 3), (5,), (2, 2, 2)])
    opt = optim.AdamW(ps, lr=0.5)
    with pytest.raises(ShapeError, match=r"parameter 1 has shape \(5,\) here but \(3,\)"):
        opt.load_state_dict(sd)
    assert opt.state == {} and opt.param_groups[0]["lr"] == 0.5

    with pytest.raises(ValueError, match="state has 3 parameters, this optimizer has 2"):
        optim.AdamW(make_params()[:2]).load_state_dict(sd)
    with pytest.raises(ValueError, match="saved by AdamW, not Adam"):
        optim.Adam(make_params()).load_state_dict(sd)
    with pytest.raises(ValueError, match="1 param groups, this optimizer has 2"):
        ps = make_params()
        optim.AdamW([{"params": ps[:1]}, {"params": ps[1:]}]).load_state_dict(sd)

    bad = {"meta": sd["meta"], "arrays": dict(sd["arrays"])}
    bad["arrays"]["state.2.exp_avg"] = np.zeros((2, 2))
    with pytest.raises(ShapeError, match=r"state.2.exp_avg has shape \(2, 2\) but parameter 2"):
        optim.AdamW(make_params()).load_state_dict(bad)
    del bad["arrays"]["state.2.exp_avg"]
    with pytest.raises(ValueError, match="no state.2.exp_avg array"):
        optim.AdamW(make_params()).load_state_dict(bad)
    bad["arrays"]["state.2.exp_avg"] = np.zeros((2, 2, 2))
    bad["arrays"]["state.0.momentum_buffer"] = np.zeros((4, 3))
    with pytest.raises(ValueError, match="unknown array 'state.0.momentum_buffer'"):
        optim.AdamW(make_params()).load_state_dict(bad)
    with pytest.raises(ValueError, match="'meta' and 'arrays'"):
        optim.AdamW(make_params()).load_state_dict(sd["arrays"])


def test_load_checks_param_names():
    ps = make_params()
    named = [("a.weight", ps[0]), ("a.bias", ps[1]), ("b.weight", ps[2])]
    opt = optim.AdamW(optim.param_groups_for_decay(named, 0.1))
    run(opt, ps, grad_seq(1))
    sd = opt.state_dict()
    renamed = [("a.weight", ps[0]), ("a.bias", ps[1]), ("c.weight", ps[2])]
    opt2 = optim.AdamW(optim.param_groups_for_decay(renamed, 0.1))
    with pytest.raises(ValueError, match="'c.weight' here but 'b.weight' in the state"):
        opt2.load_state_dict(sd)


def test_load_restores_group_options():
    sd = _saved(lambda ps: optim.AdamW(ps, lr=0.01, betas=(0.8, 0.9), weight_decay=0.2))
    opt = optim.AdamW(make_params(), lr=1.0)
    opt.load_state_dict(sd)
    g = opt.param_groups[0]
    assert (g["lr"], g["betas"], g["weight_decay"]) == (0.01, (0.8, 0.9), 0.2)


# --- no-decay groups --------------------------------------------------------------------------

def test_param_groups_for_decay_gpt2_names():
    def t(*shape):
        return tl.Tensor(np.zeros(shape, np.float32), requires_grad=True)
    wte = t(50, 8)
    named = [("transformer.wte.weight", wte), ("transformer.wpe.weight", t(16, 8))]
    for i in range(2):
        h = f"transformer.h.{i}"
        named += [(f"{h}.ln_1.weight", t(8)), (f"{h}.ln_1.bias", t(8)),
                  (f"{h}.attn.c_attn.weight", t(8, 24)), (f"{h}.attn.c_attn.bias", t(24)),
                  (f"{h}.attn.c_proj.weight", t(8, 8)), (f"{h}.attn.c_proj.bias", t(8)),
                  (f"{h}.ln_2.weight", t(8)), (f"{h}.ln_2.bias", t(8)),
                  (f"{h}.mlp.c_fc.weight", t(8, 32)), (f"{h}.mlp.c_fc.bias", t(32)),
                  (f"{h}.mlp.c_proj.weight", t(32, 8)), (f"{h}.mlp.c_proj.bias", t(8))]
    named += [("transformer.ln_f.weight", t(8)), ("transformer.ln_f.bias", t(8)),
              ("lm_head.weight", wte), ("rnn.tok_emb.weight", t(50, 8)),
              ("enc.layernorm.gain", t(1, 8)), ("head.W_o", t(8, 50))]
    decay, none = optim.param_groups_for_decay(named, 0.1)
    assert decay["weight_decay"] == 0.1 and none["weight_decay"] == 0.0
    assert decay["param_names"] == [f"transformer.h.{i}.{n}.weight" for i in range(2)
                                    for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                              "mlp.c_proj")] + ["head.W_o"]
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
            "transformer.h.1.mlp.c_proj.bias", "transformer.ln_f.bias", "rnn.tok_emb.weight",
            "enc.layernorm.gain"} <= set(none["param_names"])
    assert "lm_head.weight" not in none["param_names"] + decay["param_names"]   # tied: once
    assert len(decay["params"]) + len(none["params"]) == len(named) - 1
    assert [id(p) for p in decay["params"]] == [id(p) for n, p in named
                                                if n in decay["param_names"]]


def test_no_decay_group_is_not_decayed():
    """With zero gradients Adam's step is 0, so only the decoupled decay moves parameters."""
    w, b = tl.Tensor(np.ones((2, 2)), requires_grad=True), tl.Tensor(np.ones(2),
                                                                      requires_grad=True)
    opt = optim.AdamW(optim.param_groups_for_decay([("l.weight", w), ("l.bias", b)], 0.5),
                      lr=0.1)
    w.grad, b.grad = np.zeros((2, 2)), np.zeros(2)
    opt.step()
    np.testing.assert_array_equal(w.data, np.full((2, 2), 1 - 0.1 * 0.5))
    np.testing.assert_array_equal(b.data, np.ones(2))


def test_param_groups_for_decay_custom_rule_and_errors():
    ps = make_params()
    named = [("a", ps[0]), ("b", ps[1]), ("c", ps[2])]
    decay, none = optim.param_groups_for_decay(named, 0.1, no_decay=lambda n, p: n == "c")
    assert decay["param_names"] == ["a", "b"] and none["param_names"] == ["c"]
    with pytest.raises(TypeError, match=r"\(name, Tensor\) pairs"):
        optim.param_groups_for_decay(ps, 0.1)


# --- gradient clipping --------------------------------------------------------------------

def test_clip_scales_to_max_norm():
    ps = make_params(np.float32)
    rng = np.random.default_rng(3)
    for p in ps:
        p.grad = (rng.standard_normal(p.shape) * 10).astype(np.float32)
    g0 = [p.grad for p in ps]
    want = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in g0))
    total = optim.clip_grad_norm_(ps, 1.5)
    assert isinstance(total, float)
    assert total == pytest.approx(want, rel=1e-12)        # the norm before clipping
    assert all(p.grad is g and g.dtype == np.float32 for p, g in zip(ps, g0))
    after = math.sqrt(sum(float(np.sum(p.grad.astype(np.float64) ** 2)) for p in ps))
    assert after == pytest.approx(1.5, rel=1e-6)
    assert optim.grad_norm(ps) == pytest.approx(after, rel=1e-12)


def test_clip_leaves_small_grads_and_skips_none():
    ps = make_params()
    ps[0].grad = np.full(ps[0].shape, 0.01)
    ps[1].grad = None
    before = ps[0].grad.copy()
    total = optim.clip_grad_norm_(ps + [ps[0]], 1.0)      # a repeated (tied) param counts once
    assert total == pytest.approx(0.01 * math.sqrt(12), rel=1e-12)
    np.testing.assert_array_equal(ps[0].grad, before)


def test_clip_float64_accumulation():
    """A float32 sum of a million squares drifts; the float64 one does not."""
    g = np.random.default_rng(0).standard_normal(1_000_003).astype(np.float32)
    p = tl.Tensor(np.zeros_like(g), requires_grad=True)
    p.grad = g
    want = math.sqrt(float(np.dot(g.astype(np.float64), g.astype(np.float64))))
    assert optim.clip_grad_norm_([p], 1e9) == pytest.approx(want, rel=1e-13)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_clip_non_finite_is_returned_unscaled(bad):
    ps = make_params()
    for p in ps:
        p.grad = np.ones(p.shape)
    ps[2].grad[0, 0, 0] = bad
    before = [p.grad.copy() for p in ps]
    total = optim.clip_grad_norm_(ps, 1.0)
    assert not math.isfinite(total)
    for p, b in zip(ps, before):
        np.testing.assert_array_equal(p.grad, b)
    with pytest.raises(ValueError, match="max_norm"):
        optim.clip_grad_norm_(ps, -1.0)


# --- schedules ---------------------------------------------------------------------------------

def test_warmup_cosine_shape():
    lr = [optim.warmup_cosine(s, 1.0, 10, 100, min_lr=0.1) for s in range(120)]
    np.testing.assert_allclose(lr[:10], np.arange(1, 11) / 10, rtol=1e-15)   # linear warmup
    assert lr[0] == 0.1 and lr[9] == 1.0 and lr[10] == 1.0                    # peak
    assert all(a >= b for a, b in zip(lr[10:101], lr[11:101]))                 # monotone decay
    assert lr[10] > lr[11] and lr[99] > lr[100]
    assert lr[55] == pytest.approx(0.55, rel=1e-12)                           # cosine midpoint
    assert lr[100:] == [0.1] * 20                                             # min from total
    assert optim.warmup_cosine(0, 2.0, 0, 10) == 2.0                          # no warmup


@pytest.mark.parametrize("args,what", [((-1, 1.0, 10, 100), "step"),
                                       ((0, -1.0, 10, 100), "max_lr"),
                                       ((0, 1.0, 10, 5), "total_steps"),
                                       ((0, 1.0, -1, 5), "warmup_steps"),
                                       ((0, 1.0, 1, 5, 2.0), "min_lr")])
def test_warmup_cosine_bad_args(args, what):
    with pytest.raises(ValueError, match=what):
        optim.warmup_cosine(*args)


def test_scheduler_sets_group_lrs():
    ps = make_params()
    opt = optim.SGD([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.5}], lr=1.0)
    sched = optim.WarmupCosineLR(opt, warmup_steps=4, total_steps=10)
    seen = []
    for _ in range(12):
        seen.append(sched.get_last_lr())
        sched.step()
    assert seen[0] == [0.25, 0.125] and seen[3] == [1.0, 0.5] and seen[10] == [0.0, 0.0]
    for s, lrs in enumerate(seen):
        assert lrs == [optim.warmup_cosine(s, b, 4, 10) for b in (1.0, 0.5)]
    sd = json.loads(json.dumps(sched.state_dict()))
    with pytest.raises(ValueError, match="2 param groups, the optimizer has 1"):
        optim.WarmupCosineLR(optim.SGD(make_params(), lr=3.0), 4, 10).load_state_dict(sd)
    opt2 = optim.SGD([{"params": ps[:1]}, {"params": ps[1:]}], lr=3.0)
    sched2 = optim.WarmupCosineLR(opt2, 4, 10)
    sched2.load_state_dict(sd)
    assert sched2.last_step == 12 and sched2.get_last_lr() == [0.0, 0.0]
    sd["last_step"] = 2
    sched2.load_state_dict(sd)
    assert [g["lr"] for g in opt2.param_groups] == [0.75, 0.375]


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,what", [
    (lambda ps: optim.AdamW(ps, lr=-1e-3), "lr=-0.001"),
    (lambda ps: optim.AdamW(ps, lr=float("nan")), "lr=nan"),
    (lambda ps: optim.Adam(ps, betas=(1.0, 0.999)), r"betas\[0\]"),
    (lambda ps: optim.Adam(ps, betas=(0.9, -0.1)), r"betas\[1\]"),
    (lambda ps: optim.AdamW(ps, betas=(0.9,)), "betas"),
    (lambda ps: optim.AdamW(ps, eps=-1.0), "eps"),
    (lambda ps: optim.AdamW(ps, weight_decay=-0.1), "weight_decay"),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=-0.5), "momentum"),
    (lambda ps: optim.SGD(ps, lr=0.1, nesterov=True), "nesterov"),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
     "nesterov"),
    (lambda ps: optim.AdamW([{"params": ps[:1], "lr": -1.0}, {"params": ps[1:]}]), "lr"),
])
def test_bad_hyperparameters(make, what):
    with pytest.raises(ValueError, match=what):
        make(make_params())


def test_bad_lr_written_between_steps():
    ps = make_params()
    opt = optim.AdamW(ps)
    opt.param_groups[0]["lr"] = -0.1
    for p in ps:
        p.grad = np.ones(p.shape)
    with pytest.raises(ValueError, match="lr=-0.1"):
        opt.step()


def test_bad_params():
    ps = make_params()
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.AdamW([])
    with pytest.raises(TypeError, match="single Tensor"):
        optim.AdamW(ps[0])
    with pytest.raises(TypeError, match=r"\(name, Tensor\) pair"):
        optim.AdamW([("w", ps[0])])
    with pytest.raises(ValueError, match="more than once"):
        optim.AdamW([ps[0], ps[0]])
    with pytest.raises(TypeError, match="not a Tensor"):
        optim.SGD([np.zeros(3)], lr=0.1)
    opt = optim.SGD(ps, lr=0.1)
    ps[0].grad = np.ones((3, 4))
    with pytest.raises(ShapeError, match=r"parameter 0 has shape \(4, 3\) but its grad has "
                                         r"shape \(3, 4\)"):
        opt.step()


# --- the update kernels: families sgd, adam, grad_norm ----------------------------------------

from tinyllm import kernels                                            # noqa: E402
from tinyllm.kernels import Kernel                                     # noqa: E402

UPDATE_FAMILIES = ("sgd", "adam", "grad_norm")
UPDATE_IMPLS = [pytest.param(f, i, id=f"{f}-{i}") for f in UPDATE_FAMILIES
                for i in kernels.available(f)]
DTYPES = [np.float32, np.float64]


def _family_cases(name):
    sizes = kernels.module(name).FAMILY.test_sizes
    return [pytest.param(name, s.params, id="-".join([name] + [f"{k}{v}" for k, v in
                                                                s.params.items()]))
            for s in sizes]


FAMILY_CASES = [c for f in UPDATE_FAMILIES for c in _family_cases(f)]


def _call(name, impl, arrays, opts):
    """Run one implementation on its own copies; returns (copies, outputs)."""
    mine = tuple(a.copy() for a in arrays)
    out, cache = kernels.get(name, impl).forward(*mine, **opts)
    assert cache is None
    return mine, out


@pytest.mark.parametrize("name", UPDATE_FAMILIES)
def test_update_families_keep_the_layout(name):
    mod = kernels.module(name)
    doc = mod.__doc__ or ""
    assert "forward(" in doc and ("<-" in doc or "sqrt" in doc)   # the equations live there
    assert isinstance(mod.REFERENCE, Kernel) and isinstance(mod.NUMBA, Kernel)
    assert (mod.REFERENCE.name, mod.REFERENCE.impl) == (name, "numpy")
    assert (mod.NUMBA.name, mod.NUMBA.impl) == (name, "numba")
    assert mod.REFERENCE.backward is None and mod.NUMBA.backward is None
    assert mod.REFERENCE.inputs == mod.NUMBA.inputs
    fam = mod.FAMILY
    assert fam.name == name and fam.backward is False and fam.unit == "GB/s"
    for which in ("test", "quick", "full"):
        assert fam.sizes(which)
        for s in fam.sizes(which):
            json.dumps(s.params)
            assert fam.sweep in s.params and isinstance(fam.label(s.params), str)


@pytest.mark.parametrize("name,params", FAMILY_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_update_implementations_agree_with_the_reference(name, params, dtype):
    """sgd and adam round identically (bitwise); grad_norm to float64 rounding. Updates
    return the very arrays they were given, changed in place, and leave g alone."""
    fam = kernels.module(name).FAMILY
    arrays, opts = fam.inputs(params, dtype, np.random.default_rng(0))
    assert all(a.dtype == dtype for a in arrays)
    before = [a.copy() for a in arrays]
    ref_in, ref_out = _call(name, "numpy", arrays, opts)
    for a, b in zip(arrays, before):                          # fam.inputs' arrays untouched
        np.testing.assert_array_equal(a, b)
    if name == "grad_norm":
        want = math.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2)) for a in arrays))
        assert ref_out.shape == () and ref_out.dtype == np.float64
        assert float(ref_out) == pytest.approx(want, rel=1e-13)
    else:
        assert all(o is a for o, a in zip(ref_out, ref_in[:1] + ref_in[2:]))   # in place
        np.testing.assert_array_equal(ref_in[1], before[1])                  # g is read only
        assert not np.array_equal(ref_in[0], before[0])
    for impl in kernels.available(name):
        mine, out = _call(name, impl, arrays, opts)
        if name == "grad_norm":
            tol = 0.0 if dtype == np.float64 else fam.tol[np.dtype(dtype).name]
            assert float(out) == pytest.approx(float(ref_out), rel=tol, abs=0)
            continue
        assert len(out) == len(ref_out)
        for o, a, r in zip(out, mine[:1] + mine[2:], ref_out):
            assert o is a and o.dtype == dtype
            np.testing.assert_array_equal(o, r)
        np.testing.assert_array_equal(mine[1], before[1])


def test_adam_kernel_matches_the_equations():
    """One AdamW and one Adam step of the reference kernel against new-array NumPy."""
    rng = np.random.default_rng(4)
    p, g, m = (rng.standard_normal(50) for _ in range(3))
    v = rng.random(50)
    for decoupled in (True, False):
        lr, b1, b2, eps, wd, t = 0.01, 0.8, 0.9, 1e-6, 0.3, 4
        gg = g if decoupled else g + wd * p
        pp = p * (1 - lr * wd) if decoupled else p
        m2 = b1 * m + (1 - b1) * gg
        v2 = b2 * v + (1 - b2) * gg ** 2
        p2 = pp - lr * (m2 / (1 - b1 ** t)) / (np.sqrt(v2 / (1 - b2 ** t)) + eps)
        for impl in kernels.available("adam"):
            (po, mo, vo), _ = kernels.get("adam", impl).forward(
                p.copy(), g, m.copy(), v.copy(), lr=lr, step=t, beta1=b1, beta2=b2, eps=eps,
                weight_decay=wd, decoupled=decoupled)
            for got, want in ((po, p2), (mo, m2), (vo, v2)):
                np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name,impl", [p for p in UPDATE_IMPLS if p.values[0] != "grad_norm"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_update_kernels_write_through_non_contiguous_views(name, impl, dtype):
    """Strided p and state arrays (every other column of a bigger array) are updated through
    the view, with the same values as contiguous ones."""
    fam = kernels.module(name).FAMILY
    arrays, opts = fam.inputs({"n": 24}, dtype, np.random.default_rng(1))
    _, want = _call(name, "numpy", arrays, opts)
    big = [np.zeros((24, 2), dtype) for _ in arrays]
    views = []
    for b, a in zip(big, arrays):
        b[:, 0] = a
        views.append(b[:, 0])
    assert not views[0].flags.c_contiguous
    out, _ = kernels.get(name, impl).forward(*views, **opts)
    for o, v, w in zip(out, views[:1] + views[2:], want):
        assert o is v
        np.testing.assert_array_equal(o, w)
    for b in big:
        assert not b[:, 1].any()                              # nothing written beside the view


@pytest.mark.parametrize("impl", kernels.available("grad_norm"))
def test_grad_norm_kernel_edges(impl):
    k = kernels.get("grad_norm", impl)
    assert float(k.forward()[0]) == 0.0                       # no arrays: norm 0
    assert float(k.forward(np.zeros((0, 3), np.float32))[0]) == 0.0
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([2.0, -1.0])                                 # float64 beside float32
    want = math.sqrt(float((np.arange(6) ** 2).sum()) + 5.0)
    assert float(k.forward(a, b)[0]) == want
    assert float(k.forward(a.T, b)[0]) == want                # non-contiguous
    assert float(k.forward(a.astype(np.float16))[0]) == math.sqrt(55.0)
    assert math.isnan(float(k.forward(a, np.array([np.nan]))[0]))
    assert math.isinf(float(k.forward(np.array([np.inf], np.float32))[0]))
    with pytest.raises(TypeError, match="grad_norm: array 1 must be a float array"):
        k.forward(a, np.arange(3))
    with pytest.raises(TypeError, match="grad_norm: array 0 must be a NumPy array"):
        k.forward([1.0, 2.0])


@pytest.mark.parametrize("name,impl", [p for p in UPDATE_IMPLS if p.values[0] != "grad_norm"])
def test_update_kernels_reject_bad_input(name, impl):
    k = kernels.get(name, impl)
    z = np.zeros(4)
    args = (z.copy(), z.copy(), z.copy(), z.copy())[:len(k.inputs)]
    opts = dict(lr=0.1, step=1) if name == "adam" else dict(lr=0.1, momentum=0.9)
    with pytest.raises(ShapeError, match=rf"{name}: g has shape \(5,\) but p has shape \(4,\)"):
        k.forward(args[0], np.zeros(5), *args[2:], **opts)
    with pytest.raises(TypeError, match=f"{name}: g is float32 but p is float64"):
        k.forward(args[0], z.astype(np.float32), *args[2:], **opts)
    ro = z.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=f"{name}: p is read-only"):
        k.forward(ro, *args[1:], **opts)
    if name == "adam":
        with pytest.raises(ValueError, match="adam: step must be an integer >= 1"):
            k.forward(*args, lr=0.1, step=0)
    else:
        with pytest.raises(ValueError, match="sgd: momentum=0.9 needs a momentum buffer"):
            k.forward(z.copy(), z, lr=0.1, momentum=0.9)
        (p,), _ = k.forward(np.ones(4), np.ones(4), lr=0.5)  # no momentum: no buffer
        np.testing.assert_array_equal(p, np.full(4, 0.5))


# --- the registry picks the optimisers' kernels --------------------------------------------

@pytest.fixture
def kernel_calls(monkeypatch):
    """Wrap every implementation of the three families so calls are recorded as
    (family, impl)."""
    calls = []
    for name in UPDATE_FAMILIES:
        mod = kernels.module(name)
        for attr in ("REFERENCE", "NUMBA"):
            k = getattr(mod, attr)

            def fwd(*a, _k=k, **kw):
                calls.append((_k.name, _k.impl))
                return _k.forward(*a, **kw)
            monkeypatch.setattr(mod, attr, Kernel(k.name, k.impl, fwd, None, k.inputs))
    return calls


def _one_step(make, dtype=np.float32):
    ps = make_params(dtype)
    opt = make(ps)
    for p, g in zip(ps, grad_seq(1, dtype)[0]):
        p.grad = g
    optim.clip_grad_norm_(ps, 0.5)
    opt.step()
    return [p.data.copy() for p in ps]


OPTIMISERS = [pytest.param(lambda ps, **k: optim.AdamW(ps, lr=0.01, **k), "adam", id="AdamW"),
              pytest.param(lambda ps, **k: optim.Adam(ps, lr=0.01, weight_decay=0.1, **k),
                           "adam", id="Adam"),
              pytest.param(lambda ps, **k: optim.SGD(ps, lr=0.1, momentum=0.9, **k), "sgd",
                           id="SGD")]


@pytest.mark.parametrize("make,family", OPTIMISERS)
def test_kernels_use_numpy_switches_the_optimisers(make, family, kernel_calls, monkeypatch):
    monkeypatch.delenv("TINYLLM_KERNELS", raising=False)
    n = len(SHAPES)
    default = kernels.default_impl()
    got_default = _one_step(make)
    assert kernel_calls == [("grad_norm", default)] + [(family, default)] * n
    kernel_calls.clear()
    with kernels.use("numpy"):
        got_numpy = _one_step(make)
    assert kernel_calls == [("grad_norm", "numpy")] + [(family, "numpy")] * n
    kernel_calls.clear()
    monkeypatch.setenv("TINYLLM_KERNELS", "numpy")
    _one_step(make)
    assert kernel_calls == [("grad_norm", "numpy")] + [(family, "numpy")] * n
    for a, b in zip(got_default, got_numpy):                 # and the results agree
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("make,family", OPTIMISERS)
def test_fused_overrides_the_registry(make, family, kernel_calls):
    """fused=False is the reference whatever the registry says; fused=True is Numba."""
    n = len(SHAPES)
    _one_step(lambda ps: make(ps, fused=False))
    assert kernel_calls[1:] == [(family, "numpy")] * n
    if "numba" in kernels.available(family):
        kernel_calls.clear()
        with kernels.use("numpy"):
            _one_step(lambda ps: make(ps, fused=True))
        assert kernel_calls[1:] == [(family, "numba")] * n


def test_optim_main_runs(capsys):
    from tinyllm.optim.__main__ import main
    assert main(["--params", "2000", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "AdamW numpy step" in out and "SGD" in out and "clip_grad_norm_" in out
    if kernels.numba_available():
        assert "AdamW numba step" in out
    assert main(["--params", "10"]) == 2


def test_nothing_outside_kernels_imports_the_private_nb():
    import ast
    import pathlib
    root = pathlib.Path(tl.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path.parent.name == "kernels" and path.parent.parent == root:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n == "_nb" or n.endswith("._nb") or n.endswith("kernels._nb")
                   for n in names):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not offenders, offenders
