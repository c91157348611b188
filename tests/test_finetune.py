"""QA fine-tuning: the inputs and the span head's decoding, every strategy end to end on a
tiny encoder (frozen parts bitwise unchanged, the feature cache equal to the full path), the
command line's loop, files and bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tinyllm as tl
from tinyllm.data import QAExample, generate_stories
from tinyllm.finetune.pretrain import CorpusMLM, PretrainConfig, load_pretrained, pretrain
from tinyllm.finetune.qa import (best_spans, encode_examples, make_batch, span_loss,
                                 word_bounds)
from tinyllm.finetune.run import FeatureCache, FinetuneConfig, FinetuneError, build, finetune
from tinyllm.finetune.vocab import CLS, SEP, EncoderVocab

TINY = PretrainConfig(n_layer=2, n_head=2, n_embd=16, n_inner=32, max_position=128, steps=4,
                      batch_size=4, eval_every=4, eval_batches=1, warmup_steps=1)


def test_word_bounds_and_inputs():
    s, e = word_bounds("Mary went to the kitchen.")
    assert [i for i in np.flatnonzero(s)] == [0, 5, 10, 13, 17]
    assert [i for i in np.flatnonzero(e)] == [3, 8, 11, 15, 23]
    ex = QAExample("a", "t", "Mary went to the kitchen.", "Where is Mary?", "kitchen", 17)
    vocab = EncoderVocab.from_text(ex.context + ex.question)
    f = encode_examples([ex], vocab, 64)
    o = len(ex.question) + 2
    assert f.offset[0] == o and f.ids[0][0] == CLS and f.ids[0][o - 1] == SEP
    assert f.types[0][:o].sum() == 0 and f.types[0][o:].all()
    assert vocab.decode(f.ids[0][f.start[0]:f.end[0] + 1]) == "kitchen"
    assert not f.allow_start[0][:o].any()                    # never inside the question
    with pytest.raises(tl.errors.ShapeError, match="example 'a'.*window is 20"):
        encode_examples([ex], vocab, 20)


def test_best_spans_respects_order_length_and_boundaries():
    T = 12
    s = np.zeros((1, T))
    e = np.zeros((1, T))
    s[0, 8], e[0, 2] = 6.0, 5.0                  # the best pair would end before it starts
    e[0, 9] = 1.0
    ms = np.zeros((1, T))
    me = np.zeros((1, T))
    i, j = best_spans(s, e, ms, me, max_answer_len=3)
    assert (i[0], j[0]) == (8, 9)
    me[0, 9] = -1e9                                         # 9 is not a word end any more
    e[0, 10] = 0.5
    i, j = best_spans(s, e, ms, me, max_answer_len=3)
    assert (i[0], j[0]) == (8, 10)
    i, j = best_spans(s, e, ms, me, max_answer_len=1)
    assert i[0] == j[0] == 8


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("enc"))
    pretrain(folder, TINY, log=None, progress=False)
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    model, vocab, _ = load_pretrained(tiny_folder)
    train = generate_stories(48, seed=1)
    valid = generate_stories(24, seed=2)
    corpus = CorpusMLM(vocab, tl.data.load_corpus()[:20000], 4, 128)
    return model, vocab, train, valid, corpus


def test_feature_cache_gives_the_full_encoders_states(tiny):
    model, vocab, train, _, _ = tiny
    f = encode_examples(train[:10], vocab, 128)
    b = make_batch(f, np.arange(10))
    with tl.no_grad():
        ref = model.encode(b["ids"], b["key_mask"], b["token_type"]).data
        for k in (1, 2):
            h = FeatureCache(model, f, k).encoder(model)(b).data
            km = b["key_mask"]
            np.testing.assert_allclose(h[km], ref[km], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strategy", ["full", "frozen", "last-k", "lora", "scratch", "joint"])
def test_every_strategy_trains_and_keeps_its_frozen_part(tiny, strategy, tmp_path):
    model, vocab, train, valid, corpus = tiny
    before = {k: v.copy() for k, v in model.state_dict().items()}
    cfg = FinetuneConfig(strategy=strategy, epochs=2, batch_size=16, lora_targets="q,v,fc2")
    lines = []
    r = finetune(cfg, model, vocab, train, valid, str(tmp_path), corpus, lines.append,
                 progress=False)
    assert [ln.split(",")[0] for ln in lines if ln.startswith("Epoch")] == ["Epoch 1",
                                                                         "Epoch 2"]
    assert lines[-1].startswith("Validation Accuracy: ")
    assert r["steps"] == 2 * 3 and len(r["epochs"]) == 2
    assert 0 <= r["em"] <= 100 and set(r["per_type"]) <= {"where_person", "who_has",
                                                          "what_color", "where_object"}
    assert r["frozen_unchanged"] is True
    n = {"frozen": 34, "last-k": None}.get(strategy)
    if n is not None:
        assert r["trainable"] == n                          # qa_outputs: 16 x 2 + 2
    if strategy in ("full", "scratch", "joint"):
        assert r["trainable_share"] > 0.9
    if strategy == "lora":
        assert 0 < r["trainable_share"] < 0.5
        assert os.path.exists(tmp_path / "adapters" / "adapters.safetensors")
    assert r["mlm_loss_after"] is not None
    for k, v in model.state_dict().items():                 # the pretrained model is a copy
        assert np.array_equal(v, before[k]), k
    assert (tmp_path / "curves.png").stat().st_size > 1000
    recs = [json.loads(ln) for ln in open(tmp_path / "metrics.jsonl")]
    assert sum("em" in m for m in recs) == 2 and sum("loss" in m for m in recs) == 6


def test_lora_training_changes_only_adapters_and_head(tiny):
    model, vocab, train, _, _ = tiny
    cfg = FinetuneConfig(strategy="lora", lora_targets="q,v")
    setup = build(cfg, model)
    names = [n for n, _ in setup.trainable]
    assert all("lora_" in n or n.startswith("qa_outputs") for n in names)
    assert any(n.endswith("qkv.lora_A_q") for n in names)
    f = encode_examples(train[:8], vocab, 128)
    b = make_batch(f, np.arange(8))
    m = setup.model
    s, e = m.span_logits(m.encode(b["ids"], b["key_mask"], b["token_type"]))
    span_loss(s, e, b).backward()
    for n, p in m.named_parameters():
        assert (p.grad is not None) == (n in names) or p.grad is None, n


def test_settings_are_checked():
    with pytest.raises(FinetuneError, match="strategy must be one of"):
        FinetuneConfig(strategy="partial")
    with pytest.raises(FinetuneError, match="dropout"):
        FinetuneConfig(dropout=1.5)


def _cli(*args, env_extra=None, cwd=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "tinyllm", "finetune", *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


SMALL = ["--n_train=48", "--n_valid=24", "--pretrain_steps=4", "--pretrain_n_layer=1",
         "--pretrain_n_embd=16", "--pretrain_n_inner=32", "--pretrain_batch_size=4",
         "--pretrain_eval_every=4", "--pretrain_eval_batches=1", "--batch_size=16"]


def test_cli_runs_the_documents_loop_and_writes_its_files(tmp_path):
    env = {"TINYLLM_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "run"
    p = _cli("--task", "qa", "--strategy", "lora", "--epochs", "2", "--out", str(out), *SMALL,
             env_extra=env)
    assert p.returncode == 0, p.stderr
    assert "Epoch 1, Loss: " in p.stdout and "Epoch 2, Loss: " in p.stdout
    assert "Validation Accuracy: " in p.stdout
    for f in ("result.json", "metrics.jsonl", "curves.png", "data/train.json",
              "data/valid.json"):
        assert (out / f).exists(), f
    enc = list((tmp_path / "cache" / "encoders").iterdir())
    assert len(enc) == 1 and (enc[0] / "last").is_dir()
    again = _cli("--strategy", "frozen", "--epochs", "1", "--out", str(tmp_path / "r2"),
                 *SMALL, env_extra=env)
    assert again.returncode == 0, again.stderr
    assert "(cached" in again.stdout                           # the encoder is reused


@pytest.mark.parametrize("args, msg", [
    (["--lr=fast"], "lr='fast': expected float"),
    (["--colour=1"], "unknown setting 'colour'"),
    (["--train", "x.json"], "--train and --valid go together"),
    (["--strategy=lora", "--lora_targets=q,z"], "LoRA targets must be some of"),
    (["--compare", "--strategy", "full"], "--compare runs every strategy"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, args, msg):
    p = _cli(*args, "--out", str(tmp_path / "o"), *SMALL,
             env_extra={"TINYLLM_CACHE": str(tmp_path / "c")})
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert msg in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_cli_malformed_squad_file_names_the_example(tmp_path):
    bad = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{
        "context": "Mary went to the kitchen.", "qas": [{"id": "q7", "question": "Where?",
                                                         "answers": [{"text": "kitchen",
                                                                      "answer_start": 3}]}]}]}]}
    tr = tmp_path / "train.json"
    tr.write_text(json.dumps(bad))
    p = _cli("--train", str(tr), "--valid", str(tr), "--out", str(tmp_path / "o"), *SMALL,
             env_extra={"TINYLLM_CACHE": str(tmp_path / "c")})
    assert p.returncode == 2 and "q7" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_lora_on_the_encoder_merges_to_the_same_logits_and_reloads(tiny, tmp_path):
    model, vocab, train, _, _ = tiny
    setup = build(FinetuneConfig(strategy="lora", lora_targets="q,v,fc1,fc2"), model)
    m = setup.model
    rng = np.random.default_rng(0)
    for n, p in m.named_parameters():                  # adapters as if trained
        if "lora_B" in n:
            p.data[...] = rng.standard_normal(p.data.shape).astype(p.data.dtype) * 0.05
    f = encode_examples(train[:6], vocab, 128)
    b = make_batch(f, np.arange(6))
    m.eval()
    with tl.no_grad():
        base = model.encode(b["ids"], b["key_mask"], b["token_type"]).data
        un = m.encode(b["ids"], b["key_mask"], b["token_type"]).data
        tl.nn.merge_lora(m)
        merged = m.encode(b["ids"], b["key_mask"], b["token_type"]).data
        tl.nn.unmerge_lora(m)
        back = m.encode(b["ids"], b["key_mask"], b["token_type"]).data
    km = b["key_mask"]
    assert not np.allclose(un[km], base[km], atol=1e-3)      # the adapters do something
    np.testing.assert_allclose(merged[km], un[km], rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(back[km], un[km], rtol=1e-5, atol=2e-5)
    tl.nn.save_adapters(m, str(tmp_path / "ad"))
    fresh = build(FinetuneConfig(strategy="lora", lora_targets="q,v,fc1,fc2", seed=3),
                  model).model
    tl.nn.load_adapters(fresh, str(tmp_path / "ad"))
    fresh.eval()
    with tl.no_grad():
        again = fresh.encode(b["ids"], b["key_mask"], b["token_type"]).data
    assert np.array_equal(again, un)


def test_the_regularisation_comparison_writes_its_table(tiny_folder, tmp_path):
    from tinyllm.finetune import lab
    res = lab.compare("regularisation", {"epochs": 2, "batch_size": 16}, TINY, None, None,
                      str(tmp_path), {"n_train": 48, "n_valid": 24}, tiny_folder, log=None,
                      progress=False)
    names = [r["name"] for r in res["rows"]]
    assert names == [n for n, _ in lab.REGULARISATION]
    by = {r["name"]: r for r in res["rows"]}
    aug = by["augmentation (1 renamed copy)"]
    assert 80 < aug["train_examples"] <= 96        # copies that outgrow the window are dropped
    assert aug["steps"] == by["no regularisation"]["steps"]   # half the epochs, twice the data
    # decoupled decay and the L2 term end at different weights from the same start
    wd, l2 = by["AdamW decay 0.01"]["weight_norm"], by["L2 term 0.01"]["weight_norm"]
    assert wd != l2 and by["no regularisation"]["weight_norm"] > 0
    md = (tmp_path / "compare.md").read_text()
    assert md.startswith("## Regularisation") and "norm of decayed W" in md
    assert (tmp_path / "compare.png").stat().st_size > 1000
    assert json.loads((tmp_path / "compare.json").read_text())["kind"] == "regularisation"
