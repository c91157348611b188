"""Pruning (tinyllm.compress.prune): exact masks per scheme, the Wanda score, the 2:4 pattern,
masks kept bit for bit through a fine-tune with weight decay, structured removal equal to
masking, structured models decoding with a KV cache and surviving save/load, and the
``tinyllm compress --method prune`` command."""
from __future__ import annotations

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import cli
from tinyllm.compress import prune as P
from tinyllm.models import GPT, GPTConfig

from _tiny_runs import train_tiny_gpt


def _gpt(dtype=np.float64, **kw):
    cfg = dict(vocab_size=13, block_size=16, n_layer=2, n_head=4, n_embd=16)
    cfg.update(kw)
    m = GPT(GPTConfig(**cfg), seed=3, dtype=dtype)
    m.eval()
    return m


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(0).integers(0, 13, 600)


@pytest.fixture(scope="module")
def model():
    return _gpt()


def _weights(m):
    return {n: lin.weight.data for n, lin in P.prunable(m)}


@pytest.mark.parametrize("s", [0.1, 0.5, 0.73])
def test_magnitude_masks_exact(model, s):
    # per layer: each matrix loses exactly round(s n) of its smallest |W|
    pm, masks = P.prune(model, s, "magnitude-layer")
    W = _weights(model)
    for n, m in masks.items():
        assert set(np.unique(m)) <= {0.0, 1.0}
        assert (m == 0).sum() == round(s * m.size), n
        assert np.abs(W[n][m == 0]).max() <= np.abs(W[n][m == 1]).min()
        np.testing.assert_array_equal(_weights(pm)[n], W[n] * m)
    # global: exactly round(s N) zeros over all the prunable weights, one threshold
    pm, masks = P.prune(model, s, "magnitude")
    N = sum(m.size for m in masks.values())
    assert sum(int((m == 0).sum()) for m in masks.values()) == round(s * N)
    cut = max(np.abs(W[n][m == 0]).max() for n, m in masks.items())
    assert all(np.abs(W[n][m == 1]).min() >= cut for n, m in masks.items())
    assert P.sparsity_report(pm)["overall"] == pytest.approx(round(s * N) / N)
    # the input is left as it was; embeddings, norms and biases are never pruned
    assert all(not np.any(w == 0) for w in _weights(model).values())
    for n, a in pm.state_dict().items():
        if n not in masks:
            np.testing.assert_array_equal(a, model.state_dict()[n])


def test_wanda_score_hand_example():
    # W (in 4, out 2), input-feature norms ||X_i|| = 10, 0.1, 1, 1: score = |W_ij| ||X_i||
    W = np.array([[0.1, 2.0], [1.0, 0.5], [0.3, 0.2], [2.0, 0.1]])
    cal = P.Calibration(input_norms={"w": np.array([10.0, 0.1, 1.0, 1.0])})
    score = P._wanda_score(W, "w", cal)
    np.testing.assert_allclose(score, [[1.0, 20.0], [0.1, 0.05], [0.3, 0.2], [2.0, 0.1]])
    m = P._per_column(score, 2)                  # each output column loses its 2 lowest
    np.testing.assert_array_equal(m, [[1, 1], [0, 0], [0, 1], [1, 0]])
    # magnitude alone would have cut row 0 of column 0 (|0.1|) instead of row 1
    assert P._per_column(np.abs(W), 2)[0, 0] == 0


def test_calibration_is_the_models_forward(model, ids):
    cal = P.calibrate(model, ids, windows=3, seed=1)
    from tinyllm.train.evaluate import sample_windows
    starts = sample_windows(len(ids), 16, 3, 1)
    idx = ids[starts[:, None] + np.arange(16)]
    logits, _ = model(idx)
    np.testing.assert_allclose(cal.logits, logits.data, rtol=1e-10, atol=1e-10)
    t = model.transformer
    x = t.wte.weight.data[idx] + t.wpe.weight.data[:16]
    h = t.h[0].ln_1(tl.Tensor(x)).data.reshape(-1, 16)
    np.testing.assert_allclose(cal.input_norms["transformer.h.0.attn.c_attn.weight"],
                               np.sqrt((h ** 2).sum(axis=0)), rtol=1e-10)
    assert cal.tokens == 48 and cal.head_norms[1].shape == (4,)


@pytest.mark.parametrize("scheme", ["2:4", "2:4-wanda"])
def test_two_of_four_pattern(model, ids, scheme):
    pm, masks = P.prune(model, 0.5, scheme, calib=ids)
    for n, m in masks.items():
        g = m.reshape(m.shape[0] // 4, 4, m.shape[1])      # groups of 4 input rows
        assert np.all(g.sum(axis=1) == 2), n
    if scheme == "2:4":                                    # the 2 largest |W| of each group
        W = _weights(model)["transformer.h.0.mlp.c_fc.weight"]
        m = masks["transformer.h.0.mlp.c_fc.weight"]
        a = np.abs(W).reshape(-1, 4, W.shape[1])
        g = m.reshape(a.shape)
        assert np.all(np.where(g == 1, a, np.inf).min(axis=1)
                      >= np.where(g == 0, a, -np.inf).max(axis=1))


def test_finetune_keeps_the_mask_bit_for_bit(ids):
    m0 = _gpt(np.float32)
    pm, masks = P.prune(m0, 0.5, "wanda", calib=ids)
    before = {n: a.copy() for n, a in pm.state_dict().items()}
    P.finetune(pm, masks, ids, 3, batch_size=4, lr=1e-2, weight_decay=0.1, warmup_steps=0)
    after = pm.state_dict()
    for n, m in masks.items():
        assert np.all(after[n][m == 0] == 0), n                 # exactly zero, every one
        assert np.array_equal(after[n] * m, after[n])
        assert not np.array_equal(after[n][m == 1], before[n][m == 1])   # the rest trained
    assert P.masks_hold(pm, masks)
    # the check can fail: the same fine-tune without the masked forward revives them
    pm2, masks2 = P.prune(m0, 0.5, "wanda", calib=ids)
    P.finetune(pm2, None, ids, 3, batch_size=4, lr=1e-2, weight_decay=0.1, warmup_steps=0)
    assert not P.masks_hold(pm2, masks2)


def test_masked_forward_gradient_is_zero_where_pruned(ids):
    pm, masks = P.prune(_gpt(), 0.5, "magnitude")
    net = P.MaskedGPT(pm, masks)
    x = ids[:32].reshape(2, 16)
    _, loss = net(x, np.roll(x, -1, axis=1))
    loss.backward()
    own = dict(pm.named_parameters())
    for n, m in masks.items():
        assert np.all(own[n].grad[m == 0] == 0) and np.any(own[n].grad[m == 1] != 0)
    assert own["transformer.h.0.attn.c_attn.weight"] is pm.transformer.h[0].attn.c_attn.weight


@pytest.mark.parametrize("scheme,s", [("neurons", 0.25), ("neurons", 0.6), ("heads", 0.25),
                                      ("heads", 0.5)])
def test_structured_equals_masking(model, ids, scheme, s):
    small, masks = P.prune(model, s, scheme, calib=ids)
    cfg = small.config
    if scheme == "neurons":
        assert cfg.mlp_hidden == [64 - round(s * 64)] * 2 and cfg.layer_heads == [4, 4]
        assert small.transformer.h[0].mlp.c_fc.weight.shape == (16, cfg.mlp_hidden[0])
    else:
        assert cfg.layer_heads == [4 - round(s * 4)] * 2
        assert small.transformer.h[1].attn.c_attn.weight.shape == (16, 3 * 4 * cfg.layer_heads[1])
    assert small.num_parameters() < model.num_parameters()
    masked = P.apply_masks(P.copy_gpt(model), masks)
    x = ids[:48].reshape(3, 16)
    a, _ = small(x)
    b, _ = masked(x)
    np.testing.assert_allclose(a.data, b.data, rtol=1e-10, atol=1e-12)
    c, _ = model(x)
    assert np.abs(c.data - b.data).max() > 1e-6           # the removal did change the model


def test_structured_removal_can_fail(model, ids):
    """Keeping the wrong heads (a planted bug in the index bookkeeping) breaks the equality."""
    small, masks = P.prune(model, 0.5, "heads", calib=ids)
    kept = [np.flatnonzero(masks[f"transformer.h.{i}.attn.c_proj.weight"][::4, 0])
            for i in range(2)]
    wrong = P.shrink(model, [np.arange(64)] * 2, [np.setdiff1d(np.arange(4), k) for k in kept])
    x = ids[:32].reshape(2, 16)
    good = P.apply_masks(P.copy_gpt(model), masks)(x)[0].data
    assert np.allclose(small(x)[0].data, good)
    assert not np.allclose(wrong(x)[0].data, good)


def test_structured_decode_with_cache_equals_forward(ids):
    m = _gpt(np.float64, block_size=8)
    for scheme, s in (("neurons", 0.5), ("heads", 0.5)):
        small, _ = P.prune(m, s, scheme, calib=ids)
        if scheme == "neurons":                # per-layer widths differ: mix both kinds
            small, _ = P.prune(small, 0.25, "heads", calib=ids)
        seq = list(ids[:3])
        cache = small.new_kv_cache(1)
        logits = small.prefill(np.array([seq]), cache)
        for t in range(12):                    # past block_size: the cache re-prefills
            ctx = np.array([seq[-8:]])
            ref = small(ctx)[0].data[0, -1]
            np.testing.assert_allclose(logits[0], ref, rtol=1e-9, atol=1e-9)
            seq.append(int(ids[100 + t]))
            logits = small.decode_step(np.array([seq[-1]]), cache)
        assert cache.refills > 0
        got = tl.infer.generate(small, np.array([seq[:4]]), 10, temperature=0.0)
        assert got.shape == (1, 14)


def test_config_per_layer_widths_and_old_dicts():
    old = dict(vocab_size=13, block_size=16, n_layer=2, n_head=4, n_embd=16, dropout=0.0,
               bias=True)
    assert GPTConfig.from_dict(old).to_dict() == old          # old checkpoints unchanged
    c = GPTConfig(**old, mlp_hidden=[5, 7], layer_heads=[1, 3])
    assert GPTConfig.from_dict(c.to_dict()) == c and c.hidden_of(1) == 7 and c.heads_of(0) == 1
    for bad in (dict(mlp_hidden=[5]), dict(layer_heads=[0, 2]), dict(mlp_hidden="64")):
        with pytest.raises(ValueError, match="n_layer = 2 positive ints"):
            GPTConfig(**old, **bad)


def test_save_load_round_trip(tmp_path, ids):
    from tinyllm.data import CharTokenizer
    tok = CharTokenizer("abcdefghijklm")
    m = _gpt(np.float32)
    small, _ = P.prune(m, 0.5, "neurons", calib=ids)
    small, _ = P.prune(small, 0.25, "heads", calib=ids)
    P.save_pruned(small, tok, tmp_path / "p", {"scheme": "neurons+heads"})
    back, tok2 = tl.load(tmp_path / "p")
    assert back.config == small.config and tok2.to_dict() == tok.to_dict()
    x = ids[:32].reshape(2, 16)
    np.testing.assert_array_equal(back(x)[0].data, small(x)[0].data)
    dense, masks = P.prune(m, 0.6, "wanda", calib=ids)
    for n, mk in masks.items():               # each column: round(0.6 in) zeros exactly
        assert np.all((mk == 0).sum(axis=0) == round(0.6 * mk.shape[0])), n
    P.save_pruned(dense, tok, tmp_path / "d", {"scheme": "wanda"})
    back, _ = tl.load(tmp_path / "d")
    assert P.masks_hold(back, masks) and P.sparsity_report(back) == P.sparsity_report(dense)


@pytest.mark.parametrize("kw,match", [
    (dict(sparsity=0.0), "sparsity must be a number in"), (dict(sparsity=1.0), "in \\(0, 1\\)"),
    (dict(sparsity=float("nan")), "in \\(0, 1\\)"),
    (dict(sparsity=0.3, scheme="2:4"), "must be 0.5"),
    (dict(sparsity=0.5, scheme="nope"), "scheme must be one of"),
    (dict(sparsity=0.5, scheme="wanda"), "needs calibration"),
    (dict(sparsity=0.05, scheme="heads", calib="ids"), "removes 0 of block 0's 4 heads")])
def test_bad_arguments(model, ids, kw, match):
    kw = dict(kw)
    if kw.get("calib") == "ids":
        kw["calib"] = ids
    with pytest.raises(ValueError, match=match):
        P.prune(model, kw.pop("sparsity"), kw.pop("scheme", "magnitude"), **kw)


# ------------------------------------------------------------------ the command line

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train_tiny_gpt(tmp_path_factory.mktemp("prune"))


def test_cli_prune_then_eval(tiny_run, capsys):
    d, run = tiny_run
    out = d / "pruned"
    assert cli.main(["compress", "--checkpoint", str(run), "--method", "prune", "--sparsity",
                     "0.5", "--scheme", "wanda", "--finetune-steps", "2", "--out",
                     str(out)]) == 0
    assert "zeros in the prunable weights 0.5000" in capsys.readouterr().out
    m, _ = tl.load(out)
    assert P.sparsity_report(m)["overall"] == pytest.approx(0.5)
    assert cli.main(["eval", "--checkpoint", str(out), "--reference", str(run), "--windows",
                     "4", "--decode-tokens", "0"]) == 0
    assert "loss - reference" in capsys.readouterr().out
    small = d / "neurons"
    assert cli.main(["compress", "--checkpoint", str(run), "--method", "prune", "--sparsity",
                     "0.25", "--scheme", "neurons", "--out", str(small)]) == 0
    m, _ = tl.load(small)
    assert m.config.mlp_hidden == [48]
    assert cli.main(["generate", "--checkpoint", str(small), "--prompt", "It was",
                     "--max-new-tokens", "5"]) == 0


@pytest.mark.parametrize("extra,msg", [
    (["--sparsity", "1.5"], "--sparsity must be in (0, 1)"),
    (["--sparsity", "0"], "--sparsity must be in (0, 1)"),
    ([], "needs --sparsity"),
    (["--sparsity", "0.3", "--scheme", "2:4"], "must be 0.5"),
    (["--sparsity", "0.5", "--scheme", "random"], "--scheme must be one of"),
    (["--sparsity", "0.1", "--scheme", "heads"], "removes 0 of block 0's 2 heads"),
    (["--sparsity", "0.5", "--finetune-steps", "-3"], "--finetune-steps must be >= 0")])
def test_cli_bad_input_exit_2(tiny_run, capsys, extra, msg):
    d, run = tiny_run
    rc = cli.main(["compress", "--checkpoint", str(run), "--method", "prune", "--out",
                   str(d / "bad")] + extra)
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1
    assert not (d / "bad").exists()


def test_cli_prune_flags_need_prune(tiny_run, capsys):
    d, run = tiny_run
    assert cli.main(["compress", "--checkpoint", str(run), "--method", "int8", "--sparsity",
                     "0.5", "--out", str(d / "q")]) == 2
    assert "--sparsity is for --method prune" in capsys.readouterr().err
