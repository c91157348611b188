"""Extractive QA on the encoder: inputs, the span head's loss, decoding and evaluation.

Input. ``[CLS] question [SEP] context`` at character level, token types 0 then 1; the
context's character i is at position o + i with o = len(question) + 2. Batches are padded at
the end with [PAD] and a key mask (False at padding).

Span head. The encoder's states h (B, T, C) give start and end logits s_t, e_t (qa_outputs,
C -> 2). They are restricted to word boundaries inside the context: a start only at a
word's first character, an end only at a word's last one (a word is a maximal run of
letters and digits), every other position gets -1e9 added (exp of it is 0 in float32):

    s~_t = s_t + m^s_t,   e~_t = e_t + m^e_t,    m = 0 where allowed, -1e9 elsewhere
    L    = 1/2 (CE(s~, start) + CE(e~, end))       mean over the batch

Without the restriction a character-level span head must first learn where words begin
and end, which took it far longer (EM 10-20 after 1-2 epochs in the calibration runs).

Decoding picks the allowed (i, j) with i <= j < i + max_answer_len maximising s_i + e_j;
the answer is the context's characters i - o .. j - o.

Batching. ``epoch_batches`` shuffles the examples, sorts them by length inside windows of
50 batches (bucketing: a batch of similar lengths wastes little on padding) and shuffles
the batch order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..autograd import Tensor, no_grad
from ..autograd import functional as F
from ..errors import ShapeError
from .metrics import squad_scores
from .vocab import CLS, PAD, SEP

NEG = -1e9


def word_bounds(text: str):
    """(starts, ends) bool (len(text),): a word's first and last characters."""
    a = np.fromiter((c.isalnum() for c in text), bool, len(text))
    prev = np.concatenate([[False], a[:-1]])
    nxt = np.concatenate([a[1:], [False]])
    return a & ~prev, a & ~nxt


@dataclass
class QAFeatures:
    """The encoded examples: ids/types per example (length T_i), the context offsets, the
    allowed start/end masks and the target positions (-1 when unknown)."""
    ids: list
    types: list
    offset: np.ndarray
    allow_start: list
    allow_end: list
    start: np.ndarray
    end: np.ndarray

    def __len__(self):
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(i) for i in self.ids])


def encode_examples(examples, vocab, max_len: int) -> QAFeatures:
    """Encode QA examples (``tl.data.QAExample``) for a model of window ``max_len``."""
    ids, types, off, al_s, al_e, st, en = [], [], [], [], [], [], []
    for ex in examples:
        q, c = vocab.encode(ex.question), vocab.encode(ex.context)
        o = len(q) + 2
        T = o + len(c)
        if T > max_len:
            raise ShapeError(f"example {ex.id!r}: question + context is {T} tokens, the "
                             f"model's window is {max_len}")
        ids.append(np.concatenate([[CLS], q, [SEP], c]).astype(np.int64))
        types.append(np.concatenate([np.zeros(o, np.int64), np.ones(len(c), np.int64)]))
        ws, we = word_bounds(ex.context)
        a0 = ex.answer_start
        a1 = a0 + len(ex.answer_text) - 1
        ws[a0] = we[a1] = True           # an answer that starts or ends inside a word
        al_s.append(np.concatenate([np.zeros(o, bool), ws]))
        al_e.append(np.concatenate([np.zeros(o, bool), we]))
        off.append(o)
        st.append(o + a0)
        en.append(o + a1)
    return QAFeatures(ids, types, np.array(off), al_s, al_e, np.array(st), np.array(en))


def make_batch(f: QAFeatures, index) -> dict:
    """The padded batch of examples ``index``: ids, token_type, key_mask, the start/end
    additive masks (B, T) and targets (B,)."""
    index = np.asarray(index)
    T = max(len(f.ids[i]) for i in index)
    B = len(index)
    ids = np.full((B, T), PAD, np.int64)
    tt = np.zeros((B, T), np.int64)
    km = np.zeros((B, T), bool)
    ms = np.full((B, T), NEG, np.float32)
    me = np.full((B, T), NEG, np.float32)
    for r, i in enumerate(index):
        n = len(f.ids[i])
        ids[r, :n] = f.ids[i]
        tt[r, :n] = f.types[i]
        km[r, :n] = True
        ms[r, :n][f.allow_start[i]] = 0.0
        me[r, :n][f.allow_end[i]] = 0.0
    return {"ids": ids, "token_type": tt, "key_mask": km, "mask_start": ms, "mask_end": me,
            "start": f.start[index], "end": f.end[index], "index": index}


def epoch_batches(lengths, batch_size: int, rng: np.random.Generator, window: int = 50):
    """Index arrays of one epoch: shuffled, bucketed by length, batches in random order."""
    n = len(lengths)
    perm = rng.permutation(n)
    span = batch_size * window
    out = []
    for lo in range(0, n, span):
        chunk = perm[lo:lo + span]
        chunk = chunk[np.argsort(np.asarray(lengths)[chunk], kind="stable")]
        out += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def span_loss(start_logits: Tensor, end_logits: Tensor, batch: dict) -> Tensor:
    """1/2 (CE(start) + CE(end)) with the word-boundary masks added."""
    s = start_logits + batch["mask_start"].astype(start_logits.dtype)
    e = end_logits + batch["mask_end"].astype(end_logits.dtype)
    return (F.cross_entropy(s, batch["start"]) + F.cross_entropy(e, batch["end"])) * 0.5


def best_spans(s: np.ndarray, e: np.ndarray, mask_s: np.ndarray, mask_e: np.ndarray,
               max_answer_len: int = 15):
    """The best (i, j) per row: i <= j < i + max_answer_len, both allowed, max s_i + e_j."""
    B, T = s.shape
    sc = (s + mask_s)[:, :, None] + (e + mask_e)[:, None, :]          # (B, T, T)
    i = np.arange(T)
    band = (i[None, :] >= i[:, None]) & (i[None, :] < i[:, None] + max_answer_len)
    sc = np.where(band[None], sc, -np.inf)
    flat = sc.reshape(B, -1).argmax(axis=1)
    return flat // T, flat % T


@no_grad()
def predict(model, examples, feats: QAFeatures, batch_size: int = 64,
            max_answer_len: int = 15, encode=None) -> dict:
    """{id: answer text} for every example. ``encode(batch) -> h`` (default: the model's
    full encoder) lets cached-feature strategies reuse their cache."""
    was = model.training
    model.eval()
    order = np.argsort(feats.lengths, kind="stable")
    preds = {}
    for lo in range(0, len(order), batch_size):
        b = make_batch(feats, order[lo:lo + batch_size])
        h = encode(b) if encode else model.encode(b["ids"], b["key_mask"], b["token_type"])
        s, e = model.span_logits(h)
        i, j = best_spans(s.data, e.data, b["mask_start"], b["mask_end"], max_answer_len)
        for r, k in enumerate(b["index"]):
            ex, o = examples[k], feats.offset[k]
            preds[ex.id] = ex.context[i[r] - o: j[r] - o + 1]
    model.train(was)
    return preds


def evaluate(model, examples, feats, max_answer_len: int = 15, encode=None) -> dict:
    """SQuAD v1.1 scores (EM, F1, per question type) of the model on ``examples``."""
    preds = predict(model, examples, feats, max_answer_len=max_answer_len, encode=encode)
    return squad_scores(preds, examples)


__all__ = ["word_bounds", "QAFeatures", "encode_examples", "make_batch", "epoch_batches",
           "span_loss", "best_spans", "predict", "evaluate"]
