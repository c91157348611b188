"""tinyllm.data: tokenizers, corpus, batches, synthetic tasks."""
import json
import re
from collections import Counter
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm.data import (BOS, EOS, IGNORE_INDEX, PAD, SEP, BPETokenizer, CharTokenizer,
                          UnknownTokenError, copy_task, encode_text, exact_match, get_batch,
                          load_corpus, load_tokenizer, masked_exact_match, reversal_task,
                          train_val_split)
from tinyllm.data.bpe import SPLIT_PATTERN

SMALL_TEXT = ("The quick brown fox jumps over the lazy dog. The dog's owner didn't mind; "
              "she'll say it's fine, 1234 times!\n  Indented   spaces\tand tabs, "
              "déjà vu — naïve café, 日本語 text, emoji 🙂🙂.\n") * 3


@lru_cache(maxsize=None)
def small_bpe() -> BPETokenizer:
    return BPETokenizer.train(SMALL_TEXT, 300)


@lru_cache(maxsize=None)
def corpus_sample() -> str:
    return load_corpus()[:60_000]


# ---- BPE ------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.text())
def test_bpe_roundtrips_any_text(text):
    tok = small_bpe()
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_split_pattern_covers_every_character(text):
    assert "".join(re.findall(SPLIT_PATTERN, text)) == text


@pytest.mark.parametrize("text", ["", "\ud800 lone surrogate \udfff", "a" * 5000,
                                  " " * 17 + "x", "\x00\x01\n\r\n"])
def test_bpe_roundtrips_awkward_text(text):
    tok = small_bpe()
    assert tok.decode(tok.encode(text)) == text


def _naive_bpe(text, vocab_size):
    """Independent reference: full re-count of every pair before each merge."""
    words = [list(p.encode("utf-8")) for p in re.findall(SPLIT_PATTERN, text)]
    merges = []
    for new_id in range(256, vocab_size):
        counts = Counter(p for w in words for p in zip(w, w[1:]))
        if not counts:
            break
        best = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))
        merges.append(best)
        for k, w in enumerate(words):
            out, i = [], 0
            while i < len(w):
                if i < len(w) - 1 and (w[i], w[i + 1]) == best:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[k] = out
    return merges


def test_bpe_merges_match_naive_reference():
    text = corpus_sample()[:8000] + SMALL_TEXT
    assert BPETokenizer.train(text, 330).merges == _naive_bpe(text, 330)


def test_bpe_vocab_size_and_determinism():
    a = BPETokenizer.train(corpus_sample(), 400)
    b = BPETokenizer.train(corpus_sample(), 400)
    assert a.vocab_size == 400 == len(a.vocab)
    assert a.merges == b.merges
    assert len(set(a.vocab)) == 400                     # every id is a distinct byte string


def test_bpe_compresses_corpus_sample():
    tok = BPETokenizer.train(corpus_sample(), 512)
    sample = load_corpus()[-20_000:]                    # text not trained on
    ids = tok.encode(sample)
    assert len(ids) < 0.7 * len(sample.encode("utf-8"))
    assert tok.decode(ids) == sample


def test_bpe_stops_early_when_pairs_run_out():
    tok = BPETokenizer.train("ab", 1000)
    assert tok.merges == [(ord("a"), ord("b"))]
    assert tok.vocab_size == 257


@pytest.mark.parametrize("bad", [255, 0, -1, 300.0, True, "512"])
def test_bpe_rejects_bad_vocab_size(bad):
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train(SMALL_TEXT, bad)


def test_bpe_decode_of_arbitrary_ids_replaces_invalid_utf8():
    tok = small_bpe()
    assert tok.decode([0xE6]) == "\ufffd"               # first byte of a 3-byte character
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="outside"):
        tok.decode([-1])


def test_bpe_save_load_roundtrip(tmp_path):
    tok = small_bpe()
    path = tmp_path / "bpe.json"
    tok.save(path)
    again = BPETokenizer.load(path)
    assert again.merges == tok.merges
    assert again.encode(SMALL_TEXT) == tok.encode(SMALL_TEXT)
    assert load_tokenizer(path).encode(SMALL_TEXT) == tok.encode(SMALL_TEXT)
    assert json.loads(path.read_text())["type"] == "bpe"
    tok.save(path)                                      # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["bpe.json"]   # no temp file left


def test_bpe_from_dict_rejects_bad_merges():
    with pytest.raises(ValueError, match="merge 0"):
        BPETokenizer.from_dict({"type": "bpe", "merges": [[300, 1]]})
    with pytest.raises(ValueError, match="merges"):
        BPETokenizer.from_dict({"type": "bpe", "merges": "nope"})


# ---- CharTokenizer --------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1), st.data())
def test_char_roundtrips_text_from_its_alphabet(alphabet, data):
    tok = CharTokenizer.from_text(alphabet)
    text = data.draw(st.text(alphabet=sorted(set(alphabet))))
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.vocab_size == len(set(alphabet))


def test_char_vocab_is_sorted_unique_chars():
    tok = CharTokenizer("hello")
    assert tok.chars == ["e", "h", "l", "o"]
    assert tok.encode("hole") == [1, 3, 2, 0]
    assert tok.encode_array("ll").dtype == np.int64


def test_char_unknown_character_raises_naming_it():
    tok = CharTokenizer("abc")
    with pytest.raises(UnknownTokenError, match=r"2 unknown.*'x'.*'z'"):
        tok.encode("abxcz")
    with pytest.raises(ValueError):                     # UnknownTokenError is a ValueError
        tok.encode("Q")
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer("")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([3])


def test_char_save_load_and_load_tokenizer(tmp_path):
    tok = CharTokenizer("some text with ünïcode\n")
    path = tmp_path / "char.json"
    tok.save(path)
    for again in (CharTokenizer.load(path), load_tokenizer(path), load_tokenizer(tok.to_dict())):
        assert isinstance(again, CharTokenizer)
        assert again.chars == tok.chars
    with pytest.raises(ValueError, match="unknown tokenizer type 'nope'"):
        load_tokenizer({"type": "nope"})
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="expected 'char'"):
        CharTokenizer.from_dict(small_bpe().to_dict())


# ---- corpus ---------------------------------------------------------------------------------

def test_default_corpus_is_deterministic_and_large():
    from pydoc_data.topics import topics
    text = load_corpus()
    assert isinstance(text, str) and len(text) > 400_000
    assert text == "".join(topics[k] for k in sorted(topics))
    train, val = train_val_split(text)
    assert train + val == text
    assert len(train) == int(0.9 * len(text))


def test_train_val_split_of_ids():
    ids = np.arange(100)
    train, val = train_val_split(ids, 0.9)
    np.testing.assert_array_equal(train, np.arange(90))
    np.testing.assert_array_equal(val, np.arange(90, 100))
    for frac in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="frac"):
            train_val_split(ids, frac)
    with pytest.raises(ValueError, match="1 item"):
        train_val_split("a")


def test_load_corpus_from_file(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("héllo\n", encoding="utf-8")
    assert load_corpus(p) == "héllo\n"
    assert load_corpus(str(p)) == "héllo\n"


def test_load_corpus_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.txt"):
        load_corpus(tmp_path / "nothere.txt")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.txt.*is empty"):
        load_corpus(empty)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt.*not UTF-8.*0xe9 at offset 3"):
        load_corpus(bad)
    with pytest.raises(ValueError, match="folder"):
        load_corpus(tmp_path)


# ---- batches --------------------------------------------------------------------------------

def test_get_batch_shapes_shift_and_determinism():
    data = np.arange(1000, 1100, dtype=np.int32)
    x, y = get_batch(data, 8, 16, np.random.default_rng(0))
    assert x.shape == y.shape == (8, 16)
    assert x.dtype == y.dtype == np.int64
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
    np.testing.assert_array_equal(y[:, -1], x[:, -1] + 1)      # consecutive in data
    np.testing.assert_array_equal(np.diff(x, axis=1), 1)       # each row is one window
    x2, y2 = get_batch(data, 8, 16, np.random.default_rng(0))
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _ = get_batch(data, 8, 16, np.random.default_rng(1))
    assert not np.array_equal(x, x3)


def test_get_batch_reaches_both_ends():
    data = np.arange(6)
    starts = {int(get_batch(data, 1, 5, np.random.default_rng(s))[0][0, 0]) for s in range(50)}
    assert starts == {0}                                # only one window fits: 0..4 -> 1..5
    starts = {int(x[0]) for x in get_batch(np.arange(10), 500, 3, np.random.default_rng(0))[0]}
    assert starts == set(range(7))                      # every valid start, the last included


def test_get_batch_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="has 8 ids, need at least block_size \\+ 1 = 9"):
        get_batch(np.arange(8), 2, 8, rng)
    with pytest.raises(ValueError, match="1-D integer"):
        get_batch(np.zeros(100), 2, 8, rng)
    with pytest.raises(ValueError, match="batch_size"):
        get_batch(np.arange(100), 0, 8, rng)
    with pytest.raises(TypeError, match="Generator"):
        get_batch(np.arange(100), 2, 8, 0)


def test_encode_text_gives_int64_ids():
    tok = CharTokenizer("abc")
    ids = encode_text("cab", tok)
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, [2, 0, 1])


# ---- synthetic tasks ------------------------------------------------------------------------

def test_reversal_targets_are_reversed_inputs_and_mask_covers_answer():
    task = reversal_task(n_symbols=7, min_len=3, max_len=9)
    d = task.make_split(200, seed=0)
    assert d.inputs.shape == d.targets.shape == (200, task.block_size)
    assert set(np.unique(d.lengths)) == set(range(3, 10))
    for i, seq in enumerate(d.sequences):
        L = len(seq)
        assert d.lengths[i] == L and d.sep_pos[i] == L + 1
        row, tgt = d.inputs[i], d.targets[i]
        assert row[0] == BOS and row[L + 1] == SEP
        np.testing.assert_array_equal(row[1:L + 1] - 4, seq)
        ans = task.answer_slice(L)
        np.testing.assert_array_equal(tgt[ans][:-1] - 4, seq[::-1])
        assert tgt[ans][-1] == EOS
        mask = np.zeros(task.block_size, bool)
        mask[ans] = True
        np.testing.assert_array_equal(d.loss_mask[i], mask)     # loss only on the answer
        np.testing.assert_array_equal(row[2 * L + 2:], PAD)
        # targets are the inputs shifted by one wherever they count
        np.testing.assert_array_equal(tgt[ans][:-1], row[ans.start + 1: ans.stop])


def test_copy_task_answer_is_the_prompt():
    task = copy_task()
    seq = (3, 1, 4, 1, 5)
    assert task.encode_example(seq) == [BOS, 7, 5, 8, 5, 9, SEP, 7, 5, 8, 5, 9, EOS]
    assert task.decode(task.encode_example(seq)) == "<bos> d b e b f <sep> d b e b f <eos>"
    rev = reversal_task()
    assert rev.answer(seq) == [9, 5, 8, 5, 7, EOS]
    assert rev.vocab_size == 14 and len(rev.token_names) == 14


def test_tasks_are_deterministic_and_held_out_is_disjoint():
    task = reversal_task(n_symbols=3, min_len=2, max_len=5)      # small space: collisions likely
    train, test = task.make_splits(2000, 300, seed=1)
    assert not set(train.sequences) & set(test.sequences)
    other_train = task.make_split(2000, seed=2)
    assert not set(other_train.sequences) & set(test.sequences)
    again = task.make_split(2000, seed=1)
    np.testing.assert_array_equal(again.inputs, train.inputs)
    np.testing.assert_array_equal(again.targets, train.targets)
    assert not np.array_equal(other_train.inputs, train.inputs)
    assert all(task.is_held_out(s) for s in test.sequences)


def test_task_errors():
    with pytest.raises(ValueError, match="min_len"):
        reversal_task(min_len=5, max_len=4)
    with pytest.raises(ValueError, match="kind"):
        from tinyllm.data import SeqTask
        SeqTask("sort")
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        reversal_task().encode_example([10])
    with pytest.raises(ValueError, match="split"):
        reversal_task().make_split(3, 0, split="val")
    tiny = reversal_task(n_symbols=1, min_len=1, max_len=1)     # one sequence in all
    with pytest.raises(ValueError, match="too few distinct sequences"):
        tiny.make_split(1, 0, split="test" if not tiny.is_held_out([0]) else "train")


def test_exact_match_helpers():
    got = exact_match([[1, 2, 3], [1, 2], [4]], [[1, 2, 3], [1, 2, 3], [5]])
    np.testing.assert_array_equal(got, [True, False, False])
    with pytest.raises(ValueError, match="2 predictions but 1"):
        exact_match([[1], [2]], [[1]])
    d = reversal_task().make_split(5, seed=0)
    pred = np.where(d.loss_mask, d.targets, 0)                   # right on every answer column
    assert masked_exact_match(pred, d.targets).all()
    pred[0, task_col := int(d.sep_pos[0])] += 1
    assert masked_exact_match(pred, d.targets).tolist() == [False, True, True, True, True]
    assert d.targets[0, task_col] != IGNORE_INDEX
