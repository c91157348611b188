"""Answer-free baselines for the synthetic QA set: how far a shortcut gets without reading.

For each validation example, with T = the answer's entity type (``answer_type``: a place for
"Where is ...?", a person for "Who has ...?", a colour for "What color ...?"):

    first_of_type    the first word of type T in the context
    last_of_type     the last word of type T in the context
    random_of_type   a uniformly random one of the distinct words of type T in the context
    majority         the most common training answer of the question's qtype
    random_word      a uniformly random whitespace word of the context (punctuation and
                     articles vanish in the normalisation)

Scores are ``squad_scores`` dicts (EM / F1 in percent). A model that reads the question must
beat ``random_of_type`` by a clear margin; the generator's rejection rules keep the first two
near it. Measured EM on ``make_qa_files`` defaults (train 5000 seed 1, valid 1000 seed 2),
then the mean over 10 other 1000-example validation seeds:

    first_of_type 44.9 (44.2)   last_of_type 39.3 (39.0)   random_of_type 44.2 (44.7)
    majority 13.2 (12.7)        random_word 6.6 (6.6)

Per type, the asymmetric rejection (0.6 last, 0.3 first) favours the first word where a
context holds exactly two words of the type: first_of_type scores about 60 on what_color.
"""
from __future__ import annotations

import random
from collections import Counter
from typing import Sequence

from ..data.stories import answer_type, type_words
from .metrics import squad_scores

__all__ = ["baseline_predictions", "baseline_scores", "BASELINES"]

BASELINES = ("first_of_type", "last_of_type", "random_of_type", "majority", "random_word")


def baseline_predictions(train: Sequence, valid: Sequence, seed: int = 0
                         ) -> dict[str, dict[str, str]]:
    """{baseline name: {example id: predicted text}} on ``valid`` (majority counted on train)."""
    counts: dict[str, Counter] = {}
    for ex in train:
        counts.setdefault(ex.qtype, Counter())[ex.answer_text] += 1
    # ties broken by the answer text, so the result does not depend on the train order
    majority = {q: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for q, c in counts.items()}
    rng_type, rng_word = random.Random(seed), random.Random(seed + 1)
    preds: dict[str, dict[str, str]] = {name: {} for name in BASELINES}
    for ex in valid:
        etype = answer_type(ex)
        words = type_words(ex.context, etype) if etype is not None else []
        if words:
            preds["first_of_type"][ex.id] = words[0]
            preds["last_of_type"][ex.id] = words[-1]
            preds["random_of_type"][ex.id] = rng_type.choice(sorted(set(words)))
        preds["majority"][ex.id] = majority.get(ex.qtype, "")
        preds["random_word"][ex.id] = rng_word.choice(ex.context.split())
    return preds


def baseline_scores(train: Sequence, valid: Sequence, seed: int = 0) -> dict[str, dict]:
    """{baseline name: squad_scores} on ``valid``; see the module docstring for the five."""
    if len(valid) == 0:
        raise ValueError("baseline_scores: the validation set is empty")
    preds = baseline_predictions(train, valid, seed)
    return {name: squad_scores(p, valid) for name, p in preds.items()}
