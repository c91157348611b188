"""SQuAD v1.1 JSON files: extractive question-answering examples, loaded and written.

The format (https://rajpurkar.github.io/SQuAD-explorer/), one optional extra field ``qtype``:

    {"version": "1.1",
     "data": [{"title": str,
               "paragraphs": [{"context": str,
                               "qas": [{"id": str, "question": str, "qtype": str (optional),
                                        "answers": [{"text": str, "answer_start": int}, ...]}]}]}]}

An answer is a character span of its context: ``context[s : s + len(text)] == text`` with
``s = answer_start``. The first answer is the training target; SQuAD scores a prediction
against the best of all of them, so every answer's text and start are kept
(``QAExample.answers``, ``QAExample.answer_starts``).

Length check (``max_len``): the model reads ``[CLS] question [SEP] context``, so at character
level an example is ``2 + len(question) + len(context)`` tokens; ``length(question, context)``
replaces that count for another tokenizer.

``write_squad`` writes one article per run of examples that share a title and one paragraph
per run that also share a context (so a synthetic story, with its own title, is one article
of one paragraph), atomically; ``load_squad(write_squad(p, xs)) == xs`` exactly.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Sequence

from ._jsonio import write_json_atomic

__all__ = ["QAExample", "SquadFormatError", "load_squad", "write_squad", "char_length"]


class SquadFormatError(ValueError):
    """A SQuAD file that cannot be used. The one-line message names the file and the example
    (its id where known, else its index path such as ``data[0].paragraphs[2].qas[1]``)."""


@dataclass(frozen=True)
class QAExample:
    """One question about one context. ``answer_text``/``answer_start`` are the first (training)
    answer; ``answers``/``answer_starts`` all gold answers (filled from the first when empty)."""
    id: str
    title: str
    context: str
    question: str
    answer_text: str
    answer_start: int
    qtype: str | None = None
    answers: tuple[str, ...] = ()
    answer_starts: tuple[int, ...] = ()

    def __post_init__(self):
        if not self.answers:
            object.__setattr__(self, "answers", (self.answer_text,))
            object.__setattr__(self, "answer_starts", (self.answer_start,))
        elif len(self.answers) != len(self.answer_starts):
            raise ValueError(f"QAExample {self.id!r}: {len(self.answers)} answers but "
                             f"{len(self.answer_starts)} answer_starts")

    @property
    def answer_end(self) -> int:
        """One past the last character of the first answer."""
        return self.answer_start + len(self.answer_text)


def char_length(question: str, context: str) -> int:
    """Tokens of ``[CLS] question [SEP] context`` at character level."""
    return 2 + len(question) + len(context)


def _need(obj, key, typ, where, fail):
    if not isinstance(obj, dict):
        fail(f"{where} is {type(obj).__name__}, expected an object")
    if key not in obj:
        fail(f"{where} has no {key!r} field")
    val = obj[key]
    ok = isinstance(val, typ) and not (typ is int and isinstance(val, bool))
    if not ok:
        want = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        fail(f"{where}.{key} is {type(val).__name__}, expected {want}")
    return val


def load_squad(path: str | os.PathLike, max_len: int | None = None,
               length: Callable[[str, str], int] | None = None) -> list[QAExample]:
    """Read every question of a SQuAD v1.1 JSON file, in file order.

    Raises FileNotFoundError for a missing file and SquadFormatError (one line naming the file
    and the example) for: not JSON, a missing field or wrong type, empty answers, an
    ``answer_start`` out of range or not matching the text, a duplicate id, and (when
    ``max_len`` is given) an example whose ``length(question, context)`` exceeds ``max_len``.
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(f"load_squad: file not found: {name!r}")
    length = char_length if length is None else length
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int)
                                or max_len < 1):
        raise ValueError(f"load_squad: max_len must be a positive int or None, got {max_len!r}")

    def fail(msg):
        raise SquadFormatError(f"{name}: {msg}")

    try:
        with open(name, encoding="utf-8") as f:
            doc = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        fail(f"not a valid JSON file ({e})")
    if not isinstance(doc, dict):
        fail(f"the top level is {type(doc).__name__}, expected an object with 'data'")
    data = _need(doc, "data", list, "the top level", fail)
    out: list[QAExample] = []
    seen: dict[str, str] = {}
    for i, art in enumerate(data):
        wa = f"data[{i}]"
        title = _need(art, "title", str, wa, fail)
        paras = _need(art, "paragraphs", list, wa, fail)
        for j, par in enumerate(paras):
            wp = f"{wa}.paragraphs[{j}]"
            context = _need(par, "context", str, wp, fail)
            qas = _need(par, "qas", list, wp, fail)
            for k, qa in enumerate(qas):
                wq = f"{wp}.qas[{k}]"
                qid = _need(qa, "id", str, wq, fail)
                wq = f"example {qid!r} ({wq})"
                if qid in seen:
                    fail(f"{wq}: duplicate id, first seen at {seen[qid]}")
                seen[qid] = wq
                question = _need(qa, "question", str, wq, fail)
                qtype = qa.get("qtype")
                if qtype is not None and not isinstance(qtype, str):
                    fail(f"{wq}.qtype is {type(qtype).__name__}, expected str")
                answers = _need(qa, "answers", list, wq, fail)
                if not answers:
                    fail(f"{wq}: empty answers list")
                texts, starts = [], []
                for a, ans in enumerate(answers):
                    wn = f"{wq}.answers[{a}]"
                    text = _need(ans, "text", str, wn, fail)
                    start = _need(ans, "answer_start", int, wn, fail)
                    if not text:
                        fail(f"{wn}: empty answer text")
                    if start < 0 or start + len(text) > len(context):
                        fail(f"{wn}: answer_start {start} + len {len(text)} is outside the "
                             f"context of {len(context)} characters")
                    if context[start:start + len(text)] != text:
                        fail(f"{wn}: context[{start}:{start + len(text)}] is "
                             f"{context[start:start + len(text)]!r}, not the answer {text!r}")
                    texts.append(text)
                    starts.append(start)
                if max_len is not None:
                    n_tok = length(question, context)
                    if n_tok > max_len:
                        fail(f"example {qid!r}: question + context is {n_tok} tokens, the "
                             f"model's window is {max_len}")
                out.append(QAExample(qid, title, context, question, texts[0], starts[0], qtype,
                                     tuple(texts), tuple(starts)))
    return out


def write_squad(path: str | os.PathLike, examples: Sequence[QAExample],
                version: str = "1.1") -> str:
    """Write ``examples`` as a SQuAD v1.1 file (temp file + os.replace); returns the path.

    Consecutive examples with the same title form one article, and consecutive ones with the
    same title and context one paragraph, so file order is example order and the round trip
    through ``load_squad`` is exact. Raises ValueError for a non-QAExample or a duplicate id.
    """
    data: list[dict] = []
    seen: set[str] = set()
    for i, ex in enumerate(examples):
        if not isinstance(ex, QAExample):
            raise ValueError(f"write_squad: examples[{i}] is {type(ex).__name__}, "
                             "expected QAExample")
        if ex.id in seen:
            raise ValueError(f"write_squad: duplicate id {ex.id!r} (examples[{i}])")
        seen.add(ex.id)
        if not data or data[-1]["title"] != ex.title:
            data.append({"title": ex.title, "paragraphs": []})
        paras = data[-1]["paragraphs"]
        if not paras or paras[-1]["context"] != ex.context:
            paras.append({"context": ex.context, "qas": []})
        qa = {"id": ex.id, "question": ex.question,
              "answers": [{"text": t, "answer_start": s}
                          for t, s in zip(ex.answers, ex.answer_starts)]}
        if ex.qtype is not None:
            qa["qtype"] = ex.qtype
        paras[-1]["qas"].append(qa)
    name = os.fspath(path)
    write_json_atomic(name, {"version": version, "data": data})
    return name
