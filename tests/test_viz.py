"""tl.viz: attention weights that reproduce the model's attention, previous-token heads,
gradient x input saliency against finite differences, the randomisation sanity check, the
figures' structure, and ``tinyllm attention``."""
import json
import math

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import cli, viz
from tinyllm.autograd import Tensor, no_grad
from tinyllm.models import GPT, AttentionRNN, GPTConfig, RNNConfig

from _tiny_runs import train_tiny_gpt, train_tiny_rnn  # noqa: E402  (tests/ is on sys.path)

PNG = b"\x89PNG\r\n\x1a\n"


def _gpt(dtype=np.float64, seed=0, scale=1.0, **kw):
    cfg = dict(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16)
    cfg.update(kw)
    m = GPT(GPTConfig(**cfg), seed=seed, dtype=dtype)
    if scale != 1.0:                          # larger weights: a less linear, peakier model
        for _, p in m.named_parameters():
            p.data *= scale
    m.eval()
    return m


IDX = np.array([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3]])


# ------------------------------------------------------------------ attention weights

def test_gpt_attention_shape_rows_and_causality():
    m = _gpt()
    P = viz.gpt_attention(m, IDX)
    assert P.shape == (2, 1, 2, 10, 10)
    np.testing.assert_allclose(P.sum(-1), 1.0, atol=1e-12)
    assert np.all(P[..., np.triu_indices(10, 1)[0], np.triu_indices(10, 1)[1]] == 0)
    assert np.all(P[..., 0, 0] == 1.0)                        # the first query sees itself
    np.testing.assert_array_equal(viz.gpt_attention(m, IDX[0]), P)   # (T,) is one row


def test_gpt_attention_reproduces_each_blocks_attention_output():
    """c_proj(P @ v) with the returned P equals the block's own (fused-kernel) attention,
    layer after layer along the real residual stream."""
    m = _gpt(scale=4.0)
    P = viz.gpt_attention(m, IDX)
    t = m.transformer
    B, T = IDX.shape
    with no_grad():
        x = t.wte(IDX) + t.wpe.weight[:T]
        for layer, blk in enumerate(t.h):
            a = blk.ln_1(x)
            H, hs = blk.attn.n_head, blk.attn.head_size
            v = blk.attn.c_attn(a).data.reshape(B, T, 3, H, hs)[:, :, 2].transpose(0, 2, 1, 3)
            y = (P[layer] @ v).transpose(0, 2, 1, 3).reshape(B, T, H * hs)   # (B, T, A)
            mine = blk.attn.c_proj(Tensor(y)).data
            theirs = blk.attn(a).data
            np.testing.assert_allclose(mine, theirs, rtol=1e-10, atol=1e-12)
            x = blk(x)
    assert P.std() > 0.05                                     # not a near-uniform model


def test_gpt_attention_leaves_training_mode_and_refuses_bad_input():
    m = _gpt()
    m.train()
    viz.gpt_attention(m, IDX)
    assert m.training
    with pytest.raises(ValueError, match="token ids"):
        viz.gpt_attention(m, np.array([[0, 11]]))
    with pytest.raises(tl.ShapeError, match="block_size"):
        viz.gpt_attention(m, np.zeros((1, 17), np.int64))
    with pytest.raises(TypeError, match="rnn_attention"):
        viz.gpt_attention(AttentionRNN(RNNConfig(vocab_size=7, max_len=8)), IDX)


def test_a_head_pruned_gpt_gives_one_array_per_layer():
    m = _gpt(layer_heads=[2, 1])
    P = viz.gpt_attention(m, IDX)
    assert [p.shape for p in P] == [(1, 2, 10, 10), (1, 1, 10, 10)]
    s = viz.previous_token_score(P)
    assert s.shape == (2, 2) and np.isnan(s[1, 1]) and not np.isnan(s[:, 0]).any()
    fig = viz.plot_heads(P)
    assert sum(ax.axison for ax in fig.axes) == 3 + 1         # 3 heads + colour bar


def test_rnn_attention_is_the_documents_alpha():
    m = AttentionRNN(RNNConfig(vocab_size=7, max_len=12, d_embed=8, d_hidden=8, d_attn=4))
    idx = np.array([[1, 4, 5, 6, 2, 6, 5]])
    a = viz.rnn_attention(m, idx)
    assert a.shape == (1, 7, 7)
    np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.triu(a[0], 1) == 0)
    np.testing.assert_array_equal(viz.attention_maps(m, idx), a)
    with pytest.raises(ValueError, match="attention=False"):
        viz.rnn_attention(AttentionRNN(RNNConfig(vocab_size=7, max_len=8, attention=False)),
                          idx)


# ------------------------------------------------------------------ previous-token heads

def test_previous_token_score_on_constructed_maps():
    T = 6
    L, H = 2, 3
    maps = np.tril(np.ones((L, 1, H, T, T)))
    maps /= maps.sum(-1, keepdims=True)                       # uniform causal heads
    prev = np.eye(T, k=-1)
    prev[0, 0] = 1.0
    maps[1, 0, 2] = prev                                      # layer 1 head 2: t -> t-1
    s = viz.previous_token_score(maps)
    assert s.shape == (L, H)
    assert s[1, 2] == 1.0
    uniform = np.mean([1.0 / (t + 1) for t in range(1, T)])
    np.testing.assert_allclose(np.delete(s.ravel(), 5), uniform)
    assert viz.best_previous_token_head(maps) == (1, 2, 1.0)
    assert viz.best_previous_token_head(maps[:, 0]) == (1, 2, 1.0)   # (L, H, T, T) too


def _previous_token_gpt(T=12, gain=3.0):
    """A hand-built 1-layer GPT whose head 0 attends to the previous token: zero token
    embeddings, one-hot positions e_t, W_q = gain I and W_k = gain * shift (k_s ~ e_{s+1}),
    so q_t . k_s peaks at s = t - 1; head 1 keeps its random weights."""
    m = _gpt(n_layer=1, n_head=2, n_embd=2 * T, block_size=T, bias=False)
    t = m.transformer
    C, hs = 2 * T, T
    t.wte.weight.data[:] = 0.0
    t.wpe.weight.data[:] = np.eye(T, C)
    W = t.h[0].attn.c_attn.weight.data                        # (C, 3C): q | k | v
    W[:, :hs] = gain * np.eye(C, hs)                          # head 0's q: e_t -> e_t
    W[:, C:C + hs] = gain * np.eye(C, hs, k=1)                # head 0's k: e_s -> e_{s+1}
    return m


def test_a_constructed_previous_token_head_is_found_in_a_gpt():
    m = _previous_token_gpt()
    P = viz.gpt_attention(m, np.arange(1, 13)[None] % 11)
    layer, head, score = viz.best_previous_token_head(P)
    assert (layer, head) == (0, 0) and score > 0.9
    assert viz.previous_token_score(P)[0, 1] < 0.5


# ------------------------------------------------------------------ saliency

def test_saliency_matches_central_differences_per_token():
    """s_i = d/dr f(E_i -> r E_i) at r = 1: one central difference per prompt token."""
    m = _gpt(scale=5.0)
    idx = IDX[0]
    p = 7
    for score in ("logprob", "logit"):
        f, g, E, target = viz.input_gradient(m, idx, position=p, score=score)
        s = viz.saliency(m, idx, position=p, target=target, score=score)
        assert s.shape == (10,)
        np.testing.assert_allclose(s, (g * E).sum(-1))
        assert np.all(s[p + 1:] == 0)                          # causal: the future is inert
        h = 1e-5
        fd = np.zeros(10)
        for i in range(10):
            up, dn = E.copy(), E.copy()
            up[i] *= 1 + h
            dn[i] *= 1 - h
            fd[i] = (viz.score_from_embeddings(m, up, p, target, score)
                     - viz.score_from_embeddings(m, dn, p, target, score)) / (2 * h)
        np.testing.assert_allclose(s, fd, rtol=1e-6, atol=1e-9)
        assert np.abs(s[:p + 1]).max() > 1e-3                  # a map with something in it
        np.testing.assert_allclose(viz.score_from_embeddings(m, E, p, target, score), f)


def test_input_gradient_entries_match_central_differences():
    m = _gpt(scale=5.0, seed=3)
    f, g, E, target = viz.input_gradient(m, IDX, position=-1, target=4)
    assert target == 4 and g.shape == E.shape == (10, 16)
    rng = np.random.default_rng(0)
    h = 1e-6
    for i, c in zip(rng.integers(0, 10, 8), rng.integers(0, 16, 8)):
        up, dn = E.copy(), E.copy()
        up[i, c] += h
        dn[i, c] -= h
        fd = (viz.score_from_embeddings(m, up, -1, 4)
              - viz.score_from_embeddings(m, dn, -1, 4)) / (2 * h)
        assert math.isclose(g[i, c], fd, rel_tol=1e-5, abs_tol=1e-9), (i, c, g[i, c], fd)
    # the logits from the embeddings are the model's own
    with no_grad():
        logits, _ = m(IDX)
    lp = logits.data[0, -1] - np.log(np.exp(logits.data[0, -1]).sum())
    np.testing.assert_allclose(f, lp[4], rtol=1e-12)


def test_saliency_default_target_is_the_argmax_and_bad_input_is_named():
    m = _gpt(scale=5.0)
    _, _, _, target = viz.input_gradient(m, IDX, position=3)
    with no_grad():
        logits, _ = m(IDX)
    assert target == int(np.argmax(logits.data[0, 3]))
    with pytest.raises(ValueError, match="position"):
        viz.saliency(m, IDX, position=10)
    with pytest.raises(ValueError, match="target"):
        viz.saliency(m, IDX, target=11)
    with pytest.raises(ValueError, match="score"):
        viz.saliency(m, IDX, score="prob")
    with pytest.raises(tl.ShapeError, match="one prompt"):
        viz.saliency(m, np.vstack([IDX, IDX]))
    w = m.transformer.wte.weight
    w.grad = np.ones_like(w.data)
    viz.saliency(m, IDX)
    assert np.all(w.grad == 1.0)                              # the weights' grads untouched
    assert m.transformer.h[0].attn.c_attn.weight.grad is None


def test_spearman():
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert viz.spearman(a, a ** 3) == pytest.approx(1.0)
    assert viz.spearman(a, -a) == pytest.approx(-1.0)
    assert viz.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    assert math.isnan(viz.spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(tl.ShapeError):
        viz.spearman([1, 2], [1, 2, 3])


@pytest.fixture(scope="module")
def trained_tiny():
    """The `tiny` preset's GPT (2 layers, 32 wide, char-level) trained 300 steps on the
    embedded corpus: enough that its saliency reflects what it learnt."""
    from tinyllm.train.runs import gpt_trainer, make_preset
    p = make_preset("gpt", "tiny").replace(max_steps=300, eval_every=300, eval_batches=2)
    trainer, tok, _, _ = gpt_trainer(p, None, None, log=lambda *a, **k: None, progress=False)
    r = trainer.fit()
    return trainer.model, tok, r


PROMPTS = ["It was the best of times, it was", "The king and the queen went to ",
           "and then she said that it was n"]                # <= 32 chars: the window


def test_randomising_the_weights_changes_the_saliency_map(trained_tiny):
    """Adebayo et al.'s check: the trained model's map and a weight-randomised model's map
    of the same prompts and targets have a mean rank correlation below 0.3; the same model
    twice correlates perfectly (so the check can fail)."""
    model, tok, r = trained_tiny
    assert r.val_losses[-1][1] < 3.0                         # it learnt something (unigram ~3.3)
    rhos = []
    for text in PROMPTS:
        ids = np.array(tok.encode(text))
        for seed in (1, 2):
            c = viz.randomised_saliency_check(model, ids, seed=seed)
            assert c.trained.shape == c.randomised.shape == (len(ids),)
            assert not np.allclose(c.trained, c.randomised)
            rhos.append(c.rho)
    assert np.mean(rhos) < 0.3, rhos
    ids = np.array(tok.encode(PROMPTS[0]))
    same = viz.spearman(viz.saliency(model, ids), viz.saliency(model, ids))
    assert same == pytest.approx(1.0)


# ------------------------------------------------------------------ figures

def _images(ax):
    return ax.get_images()


def test_plot_attention_crops_marks_the_separator_and_has_a_colour_bar(tmp_path):
    w = np.random.default_rng(0).random((9, 9))
    names = list("abcdefghi")
    fig = viz.plot_attention(w, x_labels=names, y_labels=names, rows=slice(4, 9),
                             cols=(1, 4), separator=4, title="crop")
    assert len(fig.axes) == 2                                 # heatmap + colour bar
    ax = fig.axes[0]
    data = _images(ax)[0].get_array()
    assert data.shape == (5, 3)
    np.testing.assert_allclose(np.asarray(data), w[4:9, 1:4])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b", "c", "d"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["e", "f", "g", "h", "i"]
    assert ax.get_title() == "crop"
    sep = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(sep) == 1 and sep[0].get_xdata()[0] == pytest.approx(2.5)   # past col "d"
    assert "separator" in ax.get_legend().get_texts()[0].get_text()
    assert [t.get_color() for t in ax.get_yticklabels()] == ["red"] + ["black"] * 4
    inside = viz.plot_attention(w, separator=4).axes[0]       # uncropped: both axes marked
    assert sorted(ln.get_xdata()[0] for ln in inside.get_lines()) == [0.0, 3.5]
    assert inside.get_lines()[1].get_ydata()[0] == pytest.approx(3.5)
    out = tmp_path / "a.png"
    fig.savefig(out)
    assert out.read_bytes().startswith(PNG)
    assert fig._repr_png_().startswith(PNG)                   # inline in Jupyter


def test_plot_attention_bad_input():
    with pytest.raises(tl.ShapeError, match="2-D"):
        viz.plot_attention(np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="rows"):
        viz.plot_attention(np.zeros((3, 3)), rows=(2, 5))
    with pytest.raises(ValueError, match="x_labels"):
        viz.plot_attention(np.zeros((3, 3)), x_labels=["a"])


def test_plot_heads_grid():
    P = viz.gpt_attention(_gpt(n_layer=3, n_head=2), IDX)
    fig = viz.plot_heads(P, list("abcdefghij"))
    assert len(fig.axes) == 3 * 2 + 1                         # L x H heatmaps + colour bar
    assert fig.axes[3].get_title() == "layer 1 head 1"
    np.testing.assert_allclose(np.asarray(_images(fig.axes[3])[0].get_array()), P[1, 0, 1])
    one = viz.plot_heads(P, None, layer=2)
    assert len(one.axes) == 2 + 1
    assert one.axes[0].get_title() == "layer 2 head 0"
    with pytest.raises(ValueError, match="layer"):
        viz.plot_heads(P, None, layer=3)
    with pytest.raises(ValueError, match="tokens"):
        viz.plot_heads(P, ["a"])


def test_plot_saliency():
    s = np.array([0.5, -0.2, 0.0, 1.0])
    fig = viz.plot_saliency(s, ["a", " ", "c", "d"], target="e")
    ax = fig.axes[0]
    assert [round(b.get_height(), 6) for b in ax.patches] == [0.5, -0.2, 0.0, 1.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "␣", "c", "d"]
    assert "'e'" in ax.get_title()
    with pytest.raises(ValueError, match="finite"):
        viz.plot_saliency([np.nan, 1.0])
    with pytest.raises(ValueError, match="tokens"):
        viz.plot_saliency(s, ["a"])


def test_loss_curves_from_a_result_a_folder_and_records(tmp_path, trained_tiny):
    _, _, r = trained_tiny
    fig = viz.plot_loss_curves(r)
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == 2                                    # train, val
    np.testing.assert_allclose(lines[0].get_ydata(), [v for _, v in r.losses])
    recs = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}, {"step": 2, "val_loss": 2.7}]
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in recs) + "\n")
    assert viz.loss_history(run) == ([(1, 3.0), (2, 2.5)], [(2, 2.7)])
    both = viz.plot_loss_curves({"a": run, "b": recs})
    assert len(both.axes[0].get_lines()) == 4
    assert [t.get_text() for t in both.axes[0].get_legend().get_texts()] == \
        ["a train", "a val", "b train", "b val"]
    both.savefig(tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes().startswith(PNG)
    with pytest.raises(ValueError, match="metrics.jsonl"):
        viz.plot_loss_curves(tmp_path)
    with pytest.raises(ValueError, match="no losses"):
        viz.plot_loss_curves([])


# ------------------------------------------------------------------ tinyllm attention

@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    return train_tiny_gpt(tmp_path_factory.mktemp("attn"))[1]


def test_cli_attention_writes_the_heads_png(gpt_run, tmp_path, capsys):
    out = tmp_path / "heads.png"
    assert cli.main(["attention", "--checkpoint", str(gpt_run), "--prompt", "it was the",
                     "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG)
    line = capsys.readouterr().out
    assert "1 layers x 2 heads over 10 tokens" in line and "previous-token head" in line
    one = tmp_path / "one.png"
    assert cli.main(["attention", "--checkpoint", str(gpt_run), "--prompt", "it was",
                     "--out", str(one), "--layer", "0", "--head", "1"]) == 0
    assert one.read_bytes().startswith(PNG)


@pytest.mark.parametrize("args,message", [
    (["--checkpoint", "NOPE", "--prompt", "it"], "does not exist"),
    (["--prompt", ""], "--prompt is empty"),
    (["--prompt", "it", "--layer", "1"], "--layer 1 is out of range"),
    (["--prompt", "it", "--layer", "0", "--head", "2"], "--head 2 is out of range"),
    (["--prompt", "it", "--head", "0"], "--head needs --layer"),
    (["--prompt", "it Z"], "not in the vocabulary"),
    (["--prompt", "it was the best of times"], "window"),
    (["--prompt", "it", "--out", "x.jpg"], ".png"),
])
def test_cli_attention_bad_input_is_one_line_exit_2(gpt_run, tmp_path, capsys, args, message):
    argv = ["attention", "--checkpoint", str(gpt_run), "--out", str(tmp_path / "x.png")]
    argv += args
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x.png").exists()


def test_cli_attention_rnn(tmp_path, capsys):
    run = tmp_path / "rnn"
    train_tiny_rnn(run, 2)
    capsys.readouterr()
    out = tmp_path / "alpha.png"
    assert cli.main(["attention", "--checkpoint", str(run), "--prompt", "a b c d e",
                     "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG)
    assert "alpha of the copy RNN over 5 symbols" in capsys.readouterr().out
    assert cli.main(["attention", "--checkpoint", str(run), "--prompt", "a b c d e",
                     "--out", str(out), "--layer", "0"]) == 2
    assert cli.main(["attention", "--checkpoint", str(run), "--prompt", "a b q",
                     "--out", str(out)]) == 2


def test_cli_attention_options_have_help_with_defaults():
    import argparse
    sub = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    sp = sub.choices["attention"]
    fmt = sp.formatter_class(prog=sp.prog)
    for a in sp._actions:
        if a.option_strings and a.dest != "help":
            text = fmt._get_help_string(a)
            assert text and (a.required or "default" in text.lower()), a.option_strings
