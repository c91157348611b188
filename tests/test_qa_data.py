"""SQuAD-format QA data: the loader's errors, the round trip, the story generator's rules and
determinism, renaming augmentation, SQuAD EM/F1 and the answer-free baselines."""
import hashlib
import json
import random
import re

import numpy as np
import pytest

from tinyllm.data import (ENTITY_TYPES, QAExample, SquadFormatError, answer_type, augment,
                          generate_stories, load_corpus, load_squad, make_qa_files,
                          rename_entities, type_words, write_squad)
from tinyllm.finetune.baselines import baseline_scores
from tinyllm.finetune.metrics import exact_match, f1_score, normalize_answer, squad_scores


@pytest.fixture(scope="module")
def stories():
    return generate_stories(400, seed=11)


def _doc(**qa_over):
    qa = {"id": "abc", "question": "Where is Mary?",
          "answers": [{"text": "kitchen", "answer_start": 17}]}
    qa.update(qa_over)
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": "Mary went to the kitchen.", "qas": [qa]}]}]}


def _write(tmp_path, doc, name="f.json"):
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


# ---------------------------------------------------------------- loader and writer

def test_load_minimal_file(tmp_path):
    (ex,) = load_squad(_write(tmp_path, _doc(qtype="where_person")))
    assert ex == QAExample("abc", "t", "Mary went to the kitchen.", "Where is Mary?", "kitchen",
                           17, "where_person")
    assert ex.answers == ("kitchen",) and ex.answer_starts == (17,)
    assert ex.context[ex.answer_start:ex.answer_end] == "kitchen"


@pytest.mark.parametrize("doc, needle", [
    ("{not json", "not a valid JSON"),
    ([1, 2], "top level"),
    ({"version": "1.1"}, "no 'data'"),
    (_doc(answers=[]), "example 'abc'"),
    (_doc(answers=[]), "empty answers"),
    (_doc(answers=[{"text": "kitchen", "answer_start": 99}]), "outside the context"),
    (_doc(answers=[{"text": "kitchen", "answer_start": -1}]), "outside the context"),
    (_doc(answers=[{"text": "kitchen", "answer_start": 16}]), "not the answer 'kitchen'"),
    (_doc(answers=[{"text": "kitchen", "answer_start": "16"}]), "answer_start is str"),
    (_doc(answers=[{"text": "kitchen", "answer_start": True}]), "answer_start is bool"),
    (_doc(answers=[{"answer_start": 17}]), "no 'text'"),
    (_doc(answers=[{"text": "", "answer_start": 17}]), "empty answer text"),
    (_doc(question=3), "question is int"),
    (_doc(qtype=3), "qtype is int"),
    (_doc(id=7), "qas[0].id is int"),
])
def test_load_errors_name_file_and_example(tmp_path, doc, needle):
    p = _write(tmp_path, doc)
    with pytest.raises(SquadFormatError, match=re.escape(needle)) as e:
        load_squad(p)
    msg = str(e.value)
    assert str(p) in msg and "\n" not in msg
    if isinstance(doc, dict) and "data" in doc and needle != "qas[0].id is int":
        assert "example 'abc'" in msg


def test_load_missing_fields_give_index_path(tmp_path):
    doc = _doc()
    del doc["data"][0]["paragraphs"][0]["qas"][0]["id"]
    with pytest.raises(SquadFormatError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[0\] has no 'id'"):
        load_squad(_write(tmp_path, doc))
    doc = _doc()
    del doc["data"][0]["paragraphs"][0]["context"]
    with pytest.raises(SquadFormatError, match=r"data\[0\]\.paragraphs\[0\] has no 'context'"):
        load_squad(_write(tmp_path, doc))


def test_load_duplicate_id(tmp_path):
    doc = _doc()
    par = doc["data"][0]["paragraphs"][0]
    par["qas"].append(dict(par["qas"][0]))
    with pytest.raises(SquadFormatError, match=r"example 'abc' \(data\[0\]\.paragraphs\[0\]"
                                               r"\.qas\[1\]\): duplicate id"):
        load_squad(_write(tmp_path, doc))


def test_load_max_len_and_custom_length(tmp_path):
    p = _write(tmp_path, _doc())           # 2 + 14 + 25 = 41 tokens
    assert len(load_squad(p, max_len=41)) == 1
    with pytest.raises(SquadFormatError, match="example 'abc': question \\+ context is 41 "
                                               "tokens, the model's window is 40"):
        load_squad(p, max_len=40)
    words = lambda q, c: 2 + len(q.split()) + len(c.split())      # noqa: E731
    assert len(load_squad(p, max_len=10, length=words)) == 1
    with pytest.raises(SquadFormatError, match="is 10 tokens"):
        load_squad(p, max_len=9, length=words)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_squad(tmp_path / "nope.json")


def test_multiple_answers_kept(tmp_path):
    doc = _doc(answers=[{"text": "kitchen", "answer_start": 17},
                        {"text": "the kitchen", "answer_start": 13}])
    (ex,) = load_squad(_write(tmp_path, doc))
    assert ex.answer_text == "kitchen" and ex.answers == ("kitchen", "the kitchen")
    assert ex.answer_starts == (17, 13)
    out = write_squad(tmp_path / "b.json", [ex])
    assert load_squad(out) == [ex]


def test_round_trip_and_grouping(tmp_path, stories):
    extra = [QAExample("x1", "T", "Ann is here. Bob too.", "Who?", "Ann", 0),
             QAExample("x2", "T", "Ann is here. Bob too.", "Who else?", "Bob", 13, "who"),
             QAExample("x3", "T", "Other.", "What?", "Other", 0)]
    xs = stories[:50] + extra
    p = write_squad(tmp_path / "rt.json", xs)
    assert load_squad(p) == xs
    doc = json.loads(open(p).read())
    assert doc["version"] == "1.1" and len(doc["data"]) == 51     # 50 stories + one "T"
    assert all(len(a["paragraphs"]) == 1 for a in doc["data"][:50])
    assert [len(par["qas"]) for par in doc["data"][50]["paragraphs"]] == [2, 1]
    assert "qtype" not in doc["data"][50]["paragraphs"][0]["qas"][0]
    assert not list(tmp_path.glob(".tmp-*"))                       # the temp file is gone
    with pytest.raises(ValueError, match="duplicate id 'x1'"):
        write_squad(tmp_path / "d.json", extra + extra[:1])


# ---------------------------------------------------------------- the generator

def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_generator_deterministic_bytes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ta, va = make_qa_files(tmp_path / "a", n_train=60, n_valid=30)
    tb, vb = make_qa_files(tmp_path / "b", n_train=60, n_valid=30)
    assert _sha(ta) == _sha(tb) and _sha(va) == _sha(vb)
    assert _sha(ta) != _sha(va)
    assert generate_stories(30, 5) == generate_stories(30, 5)
    a, b = generate_stories(30, 5), generate_stories(30, 6)
    assert [x.context for x in a] != [x.context for x in b]
    assert len({x.id for x in a} | {x.id for x in b}) == 60
    assert len(load_squad(ta, max_len=128)) == 60


def test_answer_offsets_in_supporting_sentence(stories):
    qtypes = {x.qtype for x in stories}
    assert qtypes == {"where_person", "who_has", "what_color", "where_object"}
    for x in stories:
        s, e = x.answer_start, x.answer_end
        assert x.context[s:e] == x.answer_text
        assert x.answer_text in ENTITY_TYPES[answer_type(x)]
        # the sentence that holds the span
        end = x.context.index(".", e) + 1
        sent = x.context[x.context.rfind(". ", 0, s) + 2 if ". " in x.context[:s] else 0:end]
        later = x.context[end:]                   # the sentences after the supporting one
        assert sent.count(".") == 1
        if x.qtype == "where_person":
            name = x.question[len("Where is "):-1]
            assert re.fullmatch(rf"{name} (went|moved|walked|ran) to the {x.answer_text}\.",
                                sent), (sent, x)
            assert not re.search(rf"\b{name} (went|moved|walked|ran) to", later), x
        elif x.qtype == "who_has":
            obj = x.question[len("Who has the "):-1]
            assert re.fullmatch(rf"({x.answer_text} (took|picked up|grabbed) the {obj}|"
                                rf"\w+ (gave|handed) the {obj} to {x.answer_text})\.", sent), x
            assert not re.search(rf"(took|picked up|grabbed|gave|handed) the {obj}\b",
                                 later), x
        elif x.qtype == "what_color":
            obj = x.question[len("What color is the "):-1]
            assert sent == f"The {obj} is {x.answer_text}.", x
        else:
            obj = x.question[len("Where is the "):-1]
            holder = _holder(x.context, obj)
            assert re.fullmatch(rf"{holder} (went|moved|walked|ran) to the {x.answer_text}\.",
                                sent), (sent, x)
            assert not re.search(rf"\b{holder} (went|moved|walked|ran) to", later), x


def _holder(context, obj):
    who = None
    for sent in context.split(". "):
        m = re.match(rf"(\w+) (took|picked up|grabbed) the {obj}\b", sent)
        who = m.group(1) if m else who
        m = re.match(rf"\w+ (gave|handed) the {obj} to (\w+)", sent)
        who = m.group(2) if m else who
    return who


def test_rejection_rules(stories):
    last = first = 0
    for x in stories:
        words = type_words(x.context, answer_type(x))
        assert len(set(words)) >= 2, x
        last += words[-1] == x.answer_text
        first += words[0] == x.answer_text
    # without the rules "last of type" is right about 2/3 of the time
    assert last / len(stories) < 0.55 and first / len(stories) < 0.6


def test_charset_and_max_len(stories):
    chars = set(load_corpus())
    for x in stories:
        assert set(x.context + x.question + x.answer_text) <= chars
        assert 2 + len(x.question) + len(x.context) <= 128
    short = generate_stories(100, 3, max_len=96)
    assert max(2 + len(x.question) + len(x.context) for x in short) <= 96
    with pytest.raises(ValueError, match="max_len=20"):
        generate_stories(1, 0, max_len=20)
    with pytest.raises(ValueError, match="n must be"):
        generate_stories(-1, 0)


def test_qtype_weights(stories):
    counts = {q: sum(x.qtype == q for x in stories) / len(stories) for q in
              ("where_person", "who_has", "what_color", "where_object")}
    for q, w in zip(counts, (0.35, 0.25, 0.20, 0.20)):
        assert abs(counts[q] - w) < 0.08, counts


# ---------------------------------------------------------------- renaming

def test_rename_consistent_and_correct(stories):
    rng = random.Random(0)
    changed = 0
    for x in stories[:100]:
        r = rename_entities(x, rng)
        assert r.context[r.answer_start:r.answer_end] == r.answer_text
        assert r.qtype == x.qtype and r.id == x.id
        # one bijection per type over the whole example: word by word, same map everywhere
        a, b = (re.findall(r"[A-Za-z]+", x.context + " " + x.question),
                re.findall(r"[A-Za-z]+", r.context + " " + r.question))
        assert len(a) == len(b)
        mapping = {}
        for u, v in zip(a, b):
            assert mapping.setdefault(u, v) == v, (u, v, x, r)
            for t, ws in ENTITY_TYPES.items():
                assert (u in ws) == (v in ws)
            if not any(u in ws for ws in ENTITY_TYPES.values()):
                assert u == v
        assert len(set(mapping.values())) == len(mapping)
        assert mapping[x.answer_text] == r.answer_text
        changed += r.context != x.context
    assert changed > 90
    r1 = rename_entities(stories[0], np.random.default_rng(3))
    r2 = rename_entities(stories[0], np.random.default_rng(3))
    assert r1 == r2


def test_augment(stories):
    xs = stories[:20]
    aug = augment(xs, 2, seed=4)
    assert len(aug) == 60 and aug[:20] == xs
    assert [a.id for a in aug[20:40]] == [f"{x.id}~r1" for x in xs]
    assert len({a.id for a in aug}) == 60
    assert augment(xs, 2, seed=4) == aug and augment(xs, 2, seed=5) != aug
    assert all(a.context[a.answer_start:a.answer_end] == a.answer_text for a in aug)
    with pytest.raises(ValueError, match="copies"):
        augment(xs, -1, seed=0)


# ---------------------------------------------------------------- metrics

@pytest.mark.parametrize("pred, gold, em, f1", [
    ("The Kitchen.", "kitchen", 1.0, 1.0),
    ("kitchen", "the kitchen", 1.0, 1.0),
    ("an apple!", "Apple", 1.0, 1.0),
    ("red ball", "the ball", 0.0, 2 / 3),        # P = 1/2, R = 1
    ("red ball", "blue ball", 0.0, 0.5),         # P = R = 1/2
    ("ball ball", "ball", 0.0, 2 / 3),           # multiplicity: one match, P = 1/2
    ("ball ball", "ball ball red", 0.0, 0.8),    # P = 1, R = 2/3
    ("garden", "kitchen", 0.0, 0.0),
    ("", "kitchen", 0.0, 0.0),
    ("the", "a", 1.0, 0.0),                      # both empty: EM 1, F1 0 as in SQuAD v1.1
    ("theatre", "theatre", 1.0, 1.0),            # "the" is only dropped as a whole word
])
def test_em_f1_hand_worked(pred, gold, em, f1):
    assert exact_match(pred, gold) == em
    assert f1_score(pred, gold) == pytest.approx(f1)


def test_normalize_answer():
    assert normalize_answer("  The  RED, ball's  ") == "red balls"
    assert normalize_answer("A cat and an owl") == "cat and owl"
    with pytest.raises(TypeError):
        normalize_answer(None)


def test_squad_scores_aggregation():
    xs = [QAExample("1", "t", "x", "q", "kitchen", 0, "where_person"),
          QAExample("2", "t", "x", "q", "garden", 0, "where_person"),
          QAExample("3", "t", "x", "q", "red ball", 0, "what_color"),
          QAExample("4", "t", "x", "q", "Mary", 0, "who_has",
                    answers=("Mary", "Mary Anna"), answer_starts=(0, 0)),
          QAExample("5", "t", "x", "q", "cellar", 0, "where_object",
                    answers=("cellar", "attic"), answer_starts=(0, 0))]
    s = squad_scores({"1": "the kitchen", "2": "park", "3": "blue ball", "4": "Anna",
                      "5": "attic", "zz": "x"}, xs)
    assert s["n"] == 5 and s["missing"] == 0 and s["extra"] == 1
    assert s["em"] == pytest.approx(40.0)                               # best of the golds
    assert s["f1"] == pytest.approx(100 * (1 + 0 + 0.5 + 2 / 3 + 1) / 5)
    assert s["per_type"]["where_person"] == {"em": 50.0, "f1": 50.0, "n": 2}
    assert s["per_type"]["what_color"]["f1"] == pytest.approx(50.0)
    assert s["per_type"]["who_has"]["f1"] == pytest.approx(100 * 2 / 3)
    m = squad_scores({"1": "kitchen"}, xs)
    assert m["missing"] == 4 and m["em"] == 20.0
    with pytest.raises(TypeError, match="example '1'"):
        squad_scores({"1": 3}, xs)
    with pytest.raises(ValueError, match="no examples"):
        squad_scores({}, [])


# ---------------------------------------------------------------- baselines

def test_baselines(stories):
    valid = generate_stories(300, seed=12)
    b = baseline_scores(stories, valid, seed=0)
    assert set(b) == {"first_of_type", "last_of_type", "random_of_type", "majority",
                      "random_word"}
    for name in ("first_of_type", "last_of_type", "random_of_type"):
        assert 25 < b[name]["em"] < 65, (name, b[name]["em"])
        assert b[name]["missing"] == 0
    assert 3 < b["majority"]["em"] < 25 and b["random_word"]["em"] < 15
    assert baseline_scores(stories, valid, seed=0) == b


def test_baseline_predictions_hand_worked():
    from tinyllm.finetune.baselines import baseline_predictions
    ctx = "Mary went to the park. Mary ran to the attic. John took the cup. The cup is red."
    valid = [QAExample("v1", "t", ctx, "Where is Mary?", "attic", ctx.index("attic"),
                       "where_person"),
             QAExample("v2", "t", ctx, "Who has the cup?", "John", ctx.index("John"),
                       "who_has")]
    train = [QAExample(f"t{i}", "t", "Bill went to the park.", "Where is Bill?",
                       ("park", "park", "attic")[i], 17, "where_person") for i in range(3)]
    p = baseline_predictions(train, valid, seed=0)
    assert p["first_of_type"] == {"v1": "park", "v2": "Mary"}
    assert p["last_of_type"] == {"v1": "attic", "v2": "John"}
    assert p["random_of_type"]["v1"] in {"park", "attic"}
    assert p["random_of_type"]["v2"] in {"Mary", "John"}
    assert p["majority"] == {"v1": "park", "v2": ""}          # no who_has in train
    assert all(w in ctx.split() for w in p["random_word"].values())
    s = baseline_scores(train, valid)
    assert s["last_of_type"]["em"] == 100.0 and s["first_of_type"]["em"] == 0.0


def test_generator_options():
    xs = generate_stories(50, 7, n_facts=(3, 3), qtype_weights=(1, 0, 0, 0))
    assert {x.qtype for x in xs} == {"where_person"}
    assert all(x.context.count(".") == 3 for x in xs)
    xs = generate_stories(50, 7, fact_weights=(1, 0, 0, 1), qtype_weights=(0, 0, 1, 0))
    assert all(re.fullmatch(r"(\w+ (went|moved|walked|ran) to the \w+\.|The \w+ is \w+\.)",
                            s + ".") for x in xs for s in x.context[:-1].split(". "))
    assert generate_stories(20, 7, prefix="v-")[0].id == "v-00000"
    with pytest.raises(ValueError, match="fact_weights"):
        generate_stories(5, 0, fact_weights=(0, 1, 1, 1))
    with pytest.raises(ValueError, match="n_facts"):
        generate_stories(5, 0, n_facts=(4, 3))
