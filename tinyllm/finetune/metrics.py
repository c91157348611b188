"""SQuAD v1.1 answer metrics: exact match and token F1 after normalisation.

    normalize(s) = collapse_spaces(drop_articles(drop_punctuation(lower(s))))
    EM(p, g)     = [normalize(p) == normalize(g)]
    F1(p, g)     = 2 P R / (P + R),  P = c / |tok(p)|,  R = c / |tok(g)|,
                   c = sum over words w of min(count_p(w), count_g(w))   (overlap with multiplicity)

``tok`` splits the normalised string on whitespace; punctuation is ``string.punctuation`` and
the articles are the whole words a, an, the. As in SQuAD v1.1, F1 is 0 whenever the overlap
c is 0, which includes an empty prediction and an empty (normalised) gold answer (v2.0 would
give 1 when both are empty; v1.1 has no unanswerable questions).

An example scores the maximum over its gold answers; ``squad_scores`` averages over the
examples (missing predictions score 0) and reports percentages, 0-100, overall and per qtype.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Mapping, Sequence

__all__ = ["normalize_answer", "exact_match", "f1_score", "squad_scores"]

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    if not isinstance(s, str):
        raise TypeError(f"normalize_answer: expected str, got {type(s).__name__}")
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(pred: str, gold: str) -> float:
    """1.0 if the normalised strings are equal, else 0.0."""
    return float(normalize_answer(pred) == normalize_answer(gold))


def f1_score(pred: str, gold: str) -> float:
    """Token F1 of the normalised strings (overlap counted with multiplicity); 0 on no overlap."""
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Mapping[str, str], examples: Sequence) -> dict:
    """EM and F1 in percent over ``examples`` (QAExample-like: ``id``, ``answers``, ``qtype``).

    Returns {"em", "f1", "n", "missing", "extra", "per_type": {qtype: {"em", "f1", "n"}}};
    "missing" counts examples without a prediction (scored 0), "extra" predictions whose id is
    not an example. Examples with qtype None are grouped under "None" in per_type.
    """
    if not isinstance(predictions, Mapping):
        raise TypeError(f"squad_scores: predictions must be a dict id -> str, got "
                        f"{type(predictions).__name__}")
    if len(examples) == 0:
        raise ValueError("squad_scores: no examples to score")
    totals: dict[str, list[float]] = {}
    em_sum = f1_sum = 0.0
    missing = 0
    ids = set()
    for ex in examples:
        ids.add(ex.id)
        golds = tuple(ex.answers) or (ex.answer_text,)
        pred = predictions.get(ex.id)
        if pred is None:
            missing += 1
            em = f1 = 0.0
        elif not isinstance(pred, str):
            raise TypeError(f"squad_scores: prediction for example {ex.id!r} is "
                            f"{type(pred).__name__}, expected str")
        else:
            em = max(exact_match(pred, g) for g in golds)
            f1 = max(f1_score(pred, g) for g in golds)
        em_sum += em
        f1_sum += f1
        t = totals.setdefault(str(ex.qtype), [0.0, 0.0, 0])
        t[0] += em
        t[1] += f1
        t[2] += 1
    n = len(examples)
    per_type = {k: {"em": 100.0 * e / c, "f1": 100.0 * f / c, "n": c}
                for k, (e, f, c) in sorted(totals.items())}
    return {"em": 100.0 * em_sum / n, "f1": 100.0 * f1_sum / n, "n": n, "missing": missing,
            "extra": sum(1 for k in predictions if k not in ids), "per_type": per_type}
