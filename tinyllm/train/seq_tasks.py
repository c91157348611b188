"""Score a next-token model on the synthetic sequence tasks of ``tinyllm.data.tasks``
(reversal, copy) by greedy-decoding its answers.

    test = task.make_split(500, seed=1, split="test")
    evaluate_exact_match(model, test)        # share of held-out answers decoded exactly

Training goes through ``Trainer`` like any other run (``tinyllm.train.runs.rnn_trainer``
builds one for the attention RNN). Decoding goes through ``tl.infer.decode``, the one decode
loop: a model that speaks the decoding protocol (``start`` / ``step``: GPT, AttentionRNN) is
decoded incrementally, one token at a time without recomputing the prefix; any other model
with the GPT convention ``model(idx) -> (logits, loss)`` by running it on the whole prefix
at every position.
"""
from __future__ import annotations

import numpy as np

from ..data.tasks import EOS, IGNORE_INDEX, TaskData, exact_match
from ..infer import decode

__all__ = ["greedy_answers", "evaluate_exact_match"]


def greedy_answers(model, data: TaskData, batch_size: int = 512) -> list:
    """The model's own answer to each prompt of ``data``, decoded greedily: each row is given
    its prompt ``<bos> symbols <sep>`` and then fed back its own argmax predictions (never
    the true answer), for as many tokens as the true answer has (L + 1). Each answer is cut
    after its first <eos>. Returns n int arrays."""
    out = []
    for lo in range(0, len(data), batch_size):
        rows = np.arange(lo, min(lo + batch_size, len(data)))
        out.extend(_decode_batch(model, data.inputs[rows], data.lengths[rows]))
    return out


def _decode_batch(model, inputs: np.ndarray, lengths: np.ndarray) -> list:
    """Lockstep greedy decoding of rows whose prompts differ in length: position t of a row
    holds its prompt token while t < L + 2 and its own previous prediction after that.

    The rows share their first P0 = min(L) + 2 positions as prompt, so the decode loop starts
    from those; every later position is fed per row, prompt token or prediction."""
    n = inputs.shape[0]
    prompt_len = (lengths + 2).astype(np.int64)                # <bos> L symbols <sep>
    T = int(2 * lengths.max() + 2)                             # inputs the last answer needs
    P0 = int(prompt_len.min())
    pred = np.zeros((n, T), dtype=np.int64)                    # pred[:, t] follows position t

    def choose(logits, i):
        t = P0 - 1 + i                                         # the position just fed
        pred[:, t] = logits.argmax(axis=-1)
        if t + 1 >= T:
            return None, None
        fed = np.where(t + 1 < prompt_len, inputs[:, t + 1], pred[:, t])
        return fed.astype(np.int64), None

    decode(model, inputs[:, :P0].astype(np.int64), T - P0 + 1, choose)
    answers = []
    for b in range(n):
        L = int(lengths[b])
        a = pred[b, L + 1: 2 * L + 2]                          # the L + 1 answer tokens
        stop = np.flatnonzero(a == EOS)
        answers.append(a[: stop[0] + 1] if stop.size else a)
    return answers


def evaluate_exact_match(model, data: TaskData, batch_size: int = 512) -> float:
    """The share of examples whose greedily decoded answer (see ``greedy_answers``) equals
    the true answer exactly, <eos> included."""
    if len(data) == 0:
        raise ValueError("evaluate_exact_match: no examples")
    preds = greedy_answers(model, data, batch_size)
    truth = [row[row != IGNORE_INDEX] for row in data.targets]
    return float(exact_match(preds, truth).mean())
