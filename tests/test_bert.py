"""The BERT-style encoder: padding never reaches real positions, layer ranges compose, the MLM
head's selected-row path, BERT's names, MLM masking, and pretraining's cache and resume."""
import json

import numpy as np
import pytest

import tinyllm as tl
from tinyllm.errors import ShapeError
from tinyllm.finetune.pretrain import (CorpusMLM, PretrainConfig, load_pretrained, mask_tokens,
                                       pretrain)
from tinyllm.finetune.vocab import MASK, PAD, EncoderVocab
from tinyllm.models import Bert, BertConfig

CFG = BertConfig(vocab_size=20, max_position=16, n_layer=2, n_head=2, n_embd=8, n_inner=16)


def _batch(rng, B=3, T=10):
    idx = rng.integers(5, 20, (B, T))
    km = np.ones((B, T), bool)
    km[1, 6:] = False
    km[2, 3:] = False
    idx[~km] = PAD
    tt = np.zeros((B, T), np.int64)
    tt[:, 4:] = 1
    return idx, km, tt


@pytest.mark.parametrize("impl", ["numpy", "numba"])
def test_a_padded_token_changes_nothing_at_real_positions(impl):
    rng = np.random.default_rng(0)
    m = Bert(CFG, seed=0)
    idx, km, tt = _batch(rng)
    with tl.kernels.use(impl), tl.no_grad():
        h = m.encode(idx, km, tt).data
        idx2 = idx.copy()
        idx2[~km] = rng.integers(5, 20, int((~km).sum()))   # other tokens at the padding
        tt2 = tt.copy()
        tt2[~km] = 0
        h2 = m.encode(idx2, km, tt2).data
        h_nomask = m.encode(idx2, None, tt2).data
    assert np.array_equal(h[km], h2[km])
    # without the mask the same change does reach the real positions: the test can fail
    assert not np.allclose(h[km], h_nomask[km])


def test_encode_layer_ranges_compose_and_all_true_mask_is_no_mask():
    rng = np.random.default_rng(1)
    m = Bert(CFG, seed=1)
    idx, km, tt = _batch(rng)
    with tl.no_grad():
        full = m.encode(idx, km, tt).data
        x1 = m.encode(idx, km, tt, stop=1)
        rest = m.encode(idx, km, tt, start=1, x=x1).data
        a = m.encode(idx, np.ones_like(km), tt).data
        b = m.encode(idx, None, tt).data
    np.testing.assert_allclose(full, rest, rtol=0, atol=0)
    assert np.array_equal(a, b)


def test_mlm_loss_uses_the_selected_positions_only():
    rng = np.random.default_rng(2)
    m = Bert(CFG, seed=2, dtype=np.float64)
    idx, _, _ = _batch(rng)
    y = np.full(idx.shape, -100)
    y[0, 2], y[1, 5], y[2, 0] = 7, 9, 11
    logits, loss = m(idx, y)
    assert logits.shape == (3, CFG.vocab_size)
    full, _ = m(idx)
    lf = full.data[[0, 1, 2], [2, 5, 0]]
    ref = np.mean([np.log(np.exp(r).sum()) - r[t] for r, t in zip(lf, [7, 9, 11])])
    assert abs(float(loss.data) - ref) < 1e-10
    with pytest.raises(ShapeError, match="no position is selected"):
        m(idx, np.full(idx.shape, -100))


def test_bert_names_and_parameter_count():
    m = Bert(BertConfig(vocab_size=108), seed=0)
    names = set(dict(m.named_parameters()))
    for n in ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
              "embeddings.token_type_embeddings.weight",
              "encoder.layer.0.attention.self.qkv.weight",
              "encoder.layer.3.attention.output.dense.bias",
              "encoder.layer.1.intermediate.dense.weight", "encoder.layer.2.output.dense.weight",
              "encoder.layer.0.attention.LayerNorm.weight", "encoder.LayerNorm.bias",
              "cls.predictions.transform.dense.weight", "cls.predictions.bias",
              "qa_outputs.weight"):
        assert n in names, n
    assert 210_000 < m.num_parameters() < 225_000       # the calibration model's size


def test_bad_inputs_name_what_is_wrong():
    m = Bert(CFG)
    with pytest.raises(ShapeError, match="max_position"):
        m.encode(np.zeros((1, 17), np.int64))
    with pytest.raises(ShapeError, match="key_mask"):
        m.encode(np.zeros((1, 4), np.int64), np.ones((1, 5), bool))
    with pytest.raises(ShapeError, match="token ids"):
        m.encode(np.full((1, 4), 99))


def test_mask_tokens_follows_the_80_10_10_rule():
    rng = np.random.default_rng(3)
    ids = rng.integers(5, 100, (200, 128))
    inp, tg = mask_tokens(ids, rng, 100, 5, 0.15)
    sel = tg != -100
    assert abs(sel.mean() - 0.15) < 0.005
    assert np.array_equal(tg[sel], ids[sel]) and np.array_equal(inp[~sel], ids[~sel])
    masked = (inp[sel] == MASK).mean()
    same = (inp[sel] == ids[sel]).mean()
    assert abs(masked - 0.8) < 0.01
    assert abs(same - 0.1 - 0.1 / 95) < 0.01          # kept, plus random draws of itself
    assert (inp[sel] >= 5).sum() + (inp[sel] == MASK).sum() == sel.sum()


def test_pretraining_is_cached_and_resumes(tmp_path):
    text = "the cat sat on the mat. " * 200
    cfg = PretrainConfig(n_layer=1, n_head=2, n_embd=8, n_inner=16, max_position=16,
                         steps=6, batch_size=4, eval_every=3, eval_batches=2, warmup_steps=2)
    a = pretrain(str(tmp_path / "a"), cfg, log=None, progress=False, text=text)
    assert a["steps"] == 6 and not a["reused"]
    again = pretrain(str(tmp_path / "a"), cfg, log=None, progress=False, text=text)
    assert again["reused"] and again["val_loss"] == a["val_loss"]
    # stop at step 3, then resume: the same weights as the straight run
    import dataclasses
    from tinyllm.finetune import pretrain as P
    half = dataclasses.replace(cfg)
    model = Bert(half.model_config(EncoderVocab.from_text(text).vocab_size), seed=0)
    data = CorpusMLM(EncoderVocab.from_text(text), text, 4, 16)
    tr = P._trainer(model, data, half, str(tmp_path / "b"), EncoderVocab.from_text(text),
                    None, False)
    tr.cfg.stop_at = 3
    tr.fit()
    b = pretrain(str(tmp_path / "b"), cfg, log=None, progress=False, text=text)
    assert b["resumed_from"] == 3 and b["steps"] == 6
    ma, _, _ = load_pretrained(str(tmp_path / "a"))
    mb, _, meta = load_pretrained(str(tmp_path / "b"))
    for (n, p), (_, q) in zip(ma.named_parameters(), mb.named_parameters()):
        assert np.array_equal(p.data, q.data), n
    other = dataclasses.replace(cfg, lr=1e-3)
    with pytest.raises(tl.train.checkpoint.CheckpointError, match="other settings"):
        pretrain(str(tmp_path / "a"), other, log=None, progress=False, text=text)
    assert json.loads((tmp_path / "a" / "pretrain.json").read_text())["steps"] == 6
