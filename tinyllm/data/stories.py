"""A seeded synthetic reading-comprehension set in SQuAD format (bAbI-like small worlds).

Vocabulary (``ENTITY_TYPES``): 8 people, 8 places, 6 objects, 6 colours. Sentences:

    move    "X went/moved/walked/ran to the P."
    take    "X took/picked up/grabbed the O."
    give    "X gave/handed the O to Y."
    colour  "The O is C."

A story simulates 3-4 actors and 4 objects for 3-6 facts; each fact is a move (p 0.5), a take
of an object nobody holds (0.2), a give from its holder to another actor (0.1) or the colour
of an uncoloured object (0.2); a fact that is impossible in the current world is redrawn.

The question type is drawn first, with weights 0.35 / 0.25 / 0.20 / 0.20:

    where_person  "Where is X?"          X's latest place; the span is in X's last move
    who_has       "Who has the O?"       the current holder; the span is in the take / give
    what_color    "What color is the O?" the span is in the colour sentence
    where_object  "Where is the O?"      the holder's latest place (two hops)

then stories are drawn until one fits. Rejected (and redrawn): no valid target for the type;
``2 + len(question) + len(context) > max_len`` (``[CLS] q [SEP] c``); fewer than 2 distinct
words of the answer's type in the context; with probability 0.6 when the answer is the last
word of its type in the context, and (independently) 0.3 when it is the first. Without the
last two rules "the last place / person / colour in the context" is right far too often.

``answer_start`` is the offset of the answer inside its supporting sentence, not its first
occurrence. Every character is ASCII and in the embedded corpus's character set.

Determinism: ``random.Random(seed)`` drives everything, so equal ``(n, seed, max_len, ...)``
give equal examples and ``write_squad`` equal bytes.

Augmentation: ``rename_entities`` applies one permutation per entity type (people, places,
objects, colours) to a whole example, so answers stay correct spans.
"""
from __future__ import annotations

import bisect
import itertools
import os
import random
import re
from typing import Sequence

from .squad import QAExample, write_squad

__all__ = ["ENTITY_TYPES", "QTYPES", "QTYPE_WEIGHTS", "ANSWER_TYPE", "generate_stories",
           "make_qa_files", "rename_entities", "augment", "answer_type", "type_words"]

NAMES = ("Mary", "John", "Sandra", "Daniel", "Bill", "Fred", "Julie", "Anna")
PLACES = ("kitchen", "garden", "office", "hallway", "bedroom", "cellar", "attic", "park")
OBJECTS = ("apple", "ball", "book", "key", "cup", "box")
COLORS = ("red", "green", "blue", "yellow", "black", "white")
ENTITY_TYPES: dict[str, tuple[str, ...]] = {"person": NAMES, "place": PLACES,
                                            "object": OBJECTS, "color": COLORS}
MOVE_VERBS = ("went", "moved", "walked", "ran")
TAKE_VERBS = ("took", "picked up", "grabbed")
GIVE_VERBS = ("gave", "handed")

QTYPES = ("where_person", "who_has", "what_color", "where_object")
QTYPE_WEIGHTS = (0.35, 0.25, 0.20, 0.20)
ANSWER_TYPE = {"where_person": "place", "who_has": "person", "what_color": "color",
               "where_object": "place"}
FACT_KINDS = ("move", "take", "give", "color")
FACT_WEIGHTS = (0.5, 0.2, 0.1, 0.2)

_WORD = re.compile(r"[A-Za-z]+")
_TYPE_OF = {w: t for t, ws in ENTITY_TYPES.items() for w in ws}
_MAX_TRIES = 20000
_MIN_QUESTION = min(len(f"Where is {x}?") for x in NAMES)   # the shortest question


def answer_type(example: QAExample) -> str | None:
    """The entity type ("person", "place", "object", "color") of an example's answer: from
    its qtype when known, else from the answer word itself; None when neither tells."""
    if example.qtype in ANSWER_TYPE:
        return ANSWER_TYPE[example.qtype]
    return _TYPE_OF.get(example.answer_text.strip())


def type_words(context: str, etype: str) -> list[str]:
    """The words of ``context`` that belong to entity type ``etype``, in order, repeats kept."""
    if etype not in ENTITY_TYPES:
        raise ValueError(f"type_words: unknown entity type {etype!r}, "
                         f"expected one of {sorted(ENTITY_TYPES)}")
    return [w for w in _WORD.findall(context) if _TYPE_OF.get(w) == etype]


def _story(rng: random.Random, n_facts: tuple[int, int], fact_weights: Sequence[float],
           budget: int):
    """Simulate one world. Returns (sentences, targets) where targets hold, per question type,
    (question, (sentence index, offset in the sentence, answer)) for each possible target;
    None as soon as the context exceeds ``budget`` characters (it would be rejected anyway)."""
    actors = rng.sample(NAMES, rng.choice((3, 4)))
    objects = rng.sample(OBJECTS, 4)
    place: dict[str, tuple[int, int, str]] = {}       # actor -> (sentence, offset, place)
    holder: dict[str, tuple[int, int, str]] = {}      # object -> (sentence, offset, actor)
    color: dict[str, tuple[int, int, str]] = {}       # object -> (sentence, offset, colour)
    cum = list(itertools.accumulate(fact_weights))
    sents: list[str] = []
    used = -1                                          # characters of " ".join(sents)
    for _ in range(rng.randint(*n_facts)):
        while True:
            kind = FACT_KINDS[bisect.bisect(cum, rng.random() * cum[-1])]
            if kind == "move":
                x = rng.choice(actors)
                here = place.get(x, (0, 0, None))[2]
                p = rng.choice([q for q in PLACES if q != here])
                head = f"{x} {rng.choice(MOVE_VERBS)} to the "
                place[x] = (len(sents), len(head), p)
                sents.append(f"{head}{p}.")
            elif kind == "take":
                free = [o for o in objects if o not in holder]
                if not free:
                    continue
                o, x = rng.choice(free), rng.choice(actors)
                holder[o] = (len(sents), 0, x)
                sents.append(f"{x} {rng.choice(TAKE_VERBS)} the {o}.")
            elif kind == "give":
                held = [o for o in objects if o in holder]
                if not held:
                    continue
                o = rng.choice(held)
                x = holder[o][2]
                y = rng.choice([a for a in actors if a != x])
                head = f"{x} {rng.choice(GIVE_VERBS)} the {o} to "
                holder[o] = (len(sents), len(head), y)
                sents.append(f"{head}{y}.")
            else:
                bare = [o for o in objects if o not in color]
                if not bare:
                    continue
                o, c = rng.choice(bare), rng.choice(COLORS)
                head = f"The {o} is "
                color[o] = (len(sents), len(head), c)
                sents.append(f"{head}{c}.")
            break
        used += len(sents[-1]) + 1
        if used > budget:
            return None
    targets = {
        "where_person": [(f"Where is {x}?", place[x]) for x in actors if x in place],
        "who_has": [(f"Who has the {o}?", holder[o]) for o in objects if o in holder],
        "what_color": [(f"What color is the {o}?", color[o]) for o in objects if o in color],
        "where_object": [(f"Where is the {o}?", place[holder[o][2]]) for o in objects
                         if o in holder and holder[o][2] in place],
    }
    return sents, targets


def generate_stories(n: int, seed: int, max_len: int = 128, *, prefix: str | None = None,
                     n_facts: tuple[int, int] = (3, 6),
                     fact_weights: Sequence[float] = FACT_WEIGHTS,
                     qtype_weights: Sequence[float] = QTYPE_WEIGHTS,
                     p_reject_last: float = 0.6, p_reject_first: float = 0.3
                     ) -> list[QAExample]:
    """``n`` seeded stories, one question each (see the module docstring for the rules).

    ids are ``"{prefix}{i:05d}"`` with prefix ``"s{seed}-"`` by default, titles
    ``"story {prefix}{i:05d}"``. The keyword options exist for experiments; the defaults are
    the calibration set. Raises ValueError for a bad argument, or when ``max_len`` is so small
    that no story fits (after many tries).
    """
    for name, v, lo in (("n", n, 0), ("max_len", max_len, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"generate_stories: {name} must be an int >= {lo}, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"generate_stories: seed must be an int, got {seed!r}")
    lo, hi = n_facts
    if not 1 <= lo <= hi:
        raise ValueError(f"generate_stories: n_facts must be (lo, hi) with 1 <= lo <= hi, "
                         f"got {n_facts!r}")
    if len(qtype_weights) != 4 or len(fact_weights) != 4 or fact_weights[0] <= 0 \
            or min(qtype_weights) < 0 or min(fact_weights) < 0 or sum(qtype_weights) <= 0:
        raise ValueError("generate_stories: qtype_weights and fact_weights need 4 weights "
                         ">= 0 each (a positive move weight), got "
                         f"{tuple(qtype_weights)!r} and {tuple(fact_weights)!r}")
    prefix = f"s{seed}-" if prefix is None else prefix
    rng = random.Random(seed)
    out: list[QAExample] = []
    for i in range(n):
        qtype = rng.choices(QTYPES, qtype_weights)[0]
        etype = ANSWER_TYPE[qtype]
        for _ in range(_MAX_TRIES):
            story = _story(rng, (lo, hi), fact_weights, max_len - 2 - _MIN_QUESTION)
            if story is None or not story[1][qtype]:
                continue
            sents, targets = story
            question, (s_idx, off, answer) = rng.choice(targets[qtype])
            context = " ".join(sents)
            if 2 + len(question) + len(context) > max_len:
                continue
            words = type_words(context, etype)
            if len(set(words)) < 2:
                continue
            if words[-1] == answer and rng.random() < p_reject_last:
                continue
            if words[0] == answer and rng.random() < p_reject_first:
                continue
            start = sum(len(s) + 1 for s in sents[:s_idx]) + off
            qid = f"{prefix}{i:05d}"
            out.append(QAExample(qid, f"story {qid}", context, question, answer, start, qtype))
            break
        else:
            raise ValueError(f"generate_stories: no {qtype} story fits max_len={max_len} "
                             f"after {_MAX_TRIES} tries")
    return out


def make_qa_files(folder: str | os.PathLike, n_train: int = 5000, n_valid: int = 1000,
                  seed_train: int = 1, seed_valid: int = 2, max_len: int = 128
                  ) -> tuple[str, str]:
    """Write ``folder/train.json`` and ``folder/valid.json``; returns their paths."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"make_qa_files: folder {folder!r} does not exist")
    if seed_train == seed_valid:
        raise ValueError(f"make_qa_files: seed_train and seed_valid are both {seed_train}; "
                         "the splits would be the same stories")
    paths = []
    for split, n, seed in (("train", n_train, seed_train), ("valid", n_valid, seed_valid)):
        path = os.path.join(folder, f"{split}.json")
        write_squad(path, generate_stories(n, seed, max_len))
        paths.append(path)
    return paths[0], paths[1]


def _permutation(rng, items: tuple[str, ...]) -> list[str]:
    if hasattr(rng, "permutation"):                 # numpy Generator
        return [items[int(i)] for i in rng.permutation(len(items))]
    out = list(items)
    rng.shuffle(out)
    return out


def rename_entities(example: QAExample, rng) -> QAExample:
    """One consistent renaming of an example: a random permutation of the people, and
    separately of the places, objects and colours, applied as whole words to the context, the
    question and every answer; answer starts are recomputed, so the spans stay correct.
    ``rng`` is a ``random.Random`` or a ``numpy.random.Generator``."""
    table = {}
    for etype in ("person", "place", "object", "color"):
        words = ENTITY_TYPES[etype]
        table.update(zip(words, _permutation(rng, words)))

    def sub(text: str) -> str:
        return _WORD.sub(lambda m: table.get(m.group(0), m.group(0)), text)

    context = sub(example.context)
    texts, starts = [], []
    for text, start in zip(example.answers, example.answer_starts):
        new_text, new_start = sub(text), len(sub(example.context[:start]))
        if context[new_start:new_start + len(new_text)] != new_text:
            raise ValueError(f"rename_entities: example {example.id!r}: answer {text!r} at "
                             f"{start} does not start and end on word boundaries")
        texts.append(new_text)
        starts.append(new_start)
    return QAExample(example.id, example.title, context, sub(example.question), texts[0],
                     starts[0], example.qtype, tuple(texts), tuple(starts))


def augment(examples: Sequence[QAExample], copies: int, seed: int) -> list[QAExample]:
    """The examples followed by ``copies`` renamed copies of each (ids ``"{id}~r{k}"``, k from
    1), all renamings drawn from ``random.Random(seed)``."""
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 0:
        raise ValueError(f"augment: copies must be an int >= 0, got {copies!r}")
    rng = random.Random(seed)
    out = list(examples)
    for k in range(1, copies + 1):
        for ex in examples:
            r = rename_entities(ex, rng)
            out.append(QAExample(f"{ex.id}~r{k}", r.title, r.context, r.question, r.answer_text,
                                 r.answer_start, r.qtype, r.answers, r.answer_starts))
    return out
