"""What ``tinyllm finetune`` runs: the data, the pretrained encoder (cached), one strategy
or the comparison of all of them, and the table.

    tinyllm finetune --task qa                         # full fine-tuning, 4 epochs
    tinyllm finetune --task qa --strategy lora --lora_targets=q,v --epochs 3
    tinyllm finetune --task qa --train train.json --valid valid.json
    tinyllm finetune --compare                         # every strategy: FINETUNE-style table
    tinyllm finetune --compare regularisation          # each guard against the same run
    tinyllm finetune --compare --quick                 # a ~1-2 minute smoke version

Settings are ``--key=value``: any field of ``FinetuneConfig`` (the fine-tuning run), of
``PretrainConfig`` prefixed ``pretrain_`` (e.g. ``--pretrain_steps=600``), and ``n_train``,
``n_valid`` (the generated stories when no files are given).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

from ..data import generate_stories, load_squad, write_squad
from .baselines import baseline_scores
from ..train.checkpoint import CheckpointError
from .pretrain import CorpusMLM, PretrainConfig, default_folder, load_pretrained, pretrain
from .run import FinetuneConfig, FinetuneError, finetune

DATA_KEYS = {"n_train": 5000, "n_valid": 1000}
QUICK = {"n_train": 640, "n_valid": 200, "pretrain_steps": 150, "pretrain_eval_every": 50,
         "epochs": 1}

# the strategies of the comparison: (row name, settings)
COMPARE = [
    ("full", {"strategy": "full"}),
    ("joint MLM + QA", {"strategy": "joint"}),
    ("LoRA r=8 q,v,fc1,fc2", {"strategy": "lora", "lora_targets": "q,v,fc1,fc2"}),
    ("LoRA r=8 q,v", {"strategy": "lora", "lora_targets": "q,v"}),
    ("last block + head", {"strategy": "last-k", "last_k": 1}),
    ("from scratch", {"strategy": "scratch"}),
    ("frozen + linear head", {"strategy": "frozen"}),
]
REGULARISATION = [
    ("no regularisation", {}),
    ("AdamW decay 0.01", {"weight_decay": 0.01}),
    ("L2 term 0.01", {"l2": 0.01}),
    ("dropout 0.1", {"dropout": 0.1}),
    ("early stopping (patience 2)", {"patience": 2, "eval_every": 40}),
    ("augmentation (1 renamed copy)", {"augment": 1}),
]


def split_settings(items) -> tuple[dict, dict, dict]:
    """``--key=value`` strings -> (finetune, pretrain, data) dicts of parsed values."""
    from ..train.runs import SettingsError, _parse, _split
    ft = {f.name: f for f in dataclasses.fields(FinetuneConfig)}
    pt = {f.name: f for f in dataclasses.fields(PretrainConfig)}
    out = ({}, {}, {})
    for item in items:
        try:
            k, v = _split(item)
        except SettingsError as e:
            raise FinetuneError(str(e)) from None
        k = k.replace("-", "_")
        try:
            if k in ft:
                out[0][k] = _parse(k, v, ft[k].type)
            elif k.startswith("pretrain_") and k[9:] in pt:
                out[1][k[9:]] = _parse(k, v, pt[k[9:]].type)
            elif k in DATA_KEYS:
                out[2][k] = _parse(k, v, "int")
            else:
                known = sorted(ft) + [f"pretrain_{n}" for n in sorted(pt)] + sorted(DATA_KEYS)
                raise FinetuneError(f"unknown setting {k!r}; settings are {', '.join(known)}")
        except SettingsError as e:
            raise FinetuneError(str(e)) from None
    return out


def make_configs(ft: dict, pt: dict):
    try:
        fc = FinetuneConfig(**ft)
    except TypeError as e:
        raise FinetuneError(str(e)) from None
    try:
        pc = PretrainConfig(**pt)
    except (TypeError, ValueError) as e:
        raise FinetuneError(f"pretrain: {e}") from None
    for f in ("steps", "batch_size", "eval_every", "n_layer", "n_head", "n_embd",
              "max_position"):
        if getattr(pc, f) < 1:
            raise FinetuneError(f"pretrain_{f} must be a positive integer")
    return fc, pc


def load_data(train_path, valid_path, folder, data: dict, max_len: int, log=print):
    """(train, valid, (train_path, valid_path)): the given SQuAD files, or the seeded
    synthetic stories written to ``folder/data`` (and read back through the same loader)."""
    log = log or (lambda *a: None)
    if bool(train_path) != bool(valid_path):
        raise FinetuneError("--train and --valid go together (a SQuAD v1.1 file each)")
    if not train_path:
        n_train = data.get("n_train", DATA_KEYS["n_train"])
        n_valid = data.get("n_valid", DATA_KEYS["n_valid"])
        if n_train < 1 or n_valid < 1:
            raise FinetuneError("n_train and n_valid must be positive")
        d = os.path.join(folder, "data")
        os.makedirs(d, exist_ok=True)
        train_path = os.path.join(d, "train.json")
        valid_path = os.path.join(d, "valid.json")
        write_squad(train_path, generate_stories(n_train, seed=1, max_len=max_len))
        write_squad(valid_path, generate_stories(n_valid, seed=2, max_len=max_len))
        log(f"data: {n_train} train / {n_valid} valid synthetic stories (seeds 1, 2) in {d}")
    try:
        train = load_squad(train_path, max_len=max_len)
        valid = load_squad(valid_path, max_len=max_len)
    except (OSError, ValueError) as e:
        raise FinetuneError(str(e)) from None
    return train, valid, (train_path, valid_path)


def encoder(pc: PretrainConfig, folder: str | None, log=print, progress=True):
    """The pretrained encoder: (model, vocab, summary). ``folder`` None: the cache folder of
    ``pc``, pretrained first when the cache lacks it (or resumed when it stopped early). A
    given folder that holds a finished encoder is loaded as it is, whatever ``pc`` says."""
    log = log or (lambda *a: None)
    t0 = time.perf_counter()
    if folder and os.path.exists(os.path.join(folder, "pretrain.json")):
        with open(os.path.join(folder, "pretrain.json")) as f:
            s = dict(json.load(f), reused=True)
    else:
        s = pretrain(folder or default_folder(pc), pc, log=log, progress=progress)
    folder = s["folder"] if not folder else folder
    s["seconds_this_run"] = round(time.perf_counter() - t0, 1)
    if s.get("reused"):
        log(f"pretrained encoder: {folder} (cached: {s['steps']} MLM steps, val loss "
            f"{s['val_loss']:.3f}, masked-token accuracy {s['val_acc']:.3f})")
    else:
        log(f"pretrained encoder: {s['steps']} MLM steps in {s['seconds']:.0f} s, val loss "
            f"{s['val_loss']:.3f}, masked-token accuracy {s['val_acc']:.3f} -> {folder}")
    try:
        model, vocab, _ = load_pretrained(folder)
    except CheckpointError as e:
        raise FinetuneError(str(e)) from None
    return model, vocab, s


def _check_vocab(vocab, examples):
    for ex in examples:
        bad = vocab.unknown(ex.question + ex.context)
        if bad:
            raise FinetuneError(f"example {ex.id!r}: characters {bad!r} are not in the "
                                f"encoder's vocabulary")


def _prepare(pc, train_path, valid_path, out, data, pretrained_dir, log, progress):
    """The data (checked first: a bad file fails before any pretraining), the pretrained
    encoder and the MLM corpus batches, and when (perf_counter) the encoder was asked for."""
    train, valid, _ = load_data(train_path, valid_path, out, data, pc.max_position, log)
    t0 = time.perf_counter()
    model, vocab, ps = encoder(pc, pretrained_dir, log, progress)
    _check_vocab(vocab, train + valid)
    from ..data import load_corpus
    corpus = CorpusMLM(vocab, load_corpus(), 32, pc.max_position)
    return train, valid, model, vocab, ps, corpus, t0


def run_one(fc, pc, train_path, valid_path, out, data, pretrained_dir=None, log=print,
            progress=True) -> dict:
    log = log or (lambda *a: None)
    train, valid, model, vocab, ps, corpus, _ = _prepare(pc, train_path, valid_path, out,
                                                         data, pretrained_dir, log, progress)
    r = finetune(fc, model, vocab, train, valid, out, corpus, log, progress)
    r["pretrain"] = ps
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(r, f, indent=1)
    return r


def compare(kind: str, ft: dict, pc: PretrainConfig, train_path, valid_path, out, data,
            pretrained_dir=None, log=print, progress=True) -> dict:
    """Every row of ``COMPARE`` (or ``REGULARISATION``) with the same data, encoder and base
    settings ``ft``; writes compare.md, compare.json and compare.png into ``out``."""
    rows_spec = COMPARE if kind == "strategies" else REGULARISATION
    log = log or (lambda *a: None)
    train, valid, model, vocab, ps, corpus, t0 = _prepare(
        pc, train_path, valid_path, out, data, pretrained_dir, log, progress)
    t_pre = ps["seconds_this_run"]
    base = baseline_scores(train, valid, seed=0)
    rows = []
    for name, spec in rows_spec:
        s = dict(ft, **spec)
        if kind != "strategies":
            s.setdefault("strategy", ft.get("strategy", "full"))
        if s.get("augment"):         # the same number of steps as the run without it
            s["epochs"] = max(1, round(s.get("epochs", FinetuneConfig.epochs)
                                       / (1 + s["augment"])))
        fc = FinetuneConfig(**s)
        log(f"\n== {name} ==")
        sub = os.path.join(out, _slug(name))
        r = finetune(fc, model, vocab, train, valid, sub, corpus, log, progress)
        r["name"] = name
        rows.append(r)
    total = time.perf_counter() - t0
    res = {"kind": kind, "pretrain": ps, "pretrain_seconds": round(t_pre, 1),
           "finetune_seconds": round(total - t_pre, 1), "total_seconds": round(total, 1),
           "baselines": base, "rows": rows, "train_examples": len(train),
           "valid_examples": len(valid)}
    from .report import markdown, write_compare
    write_compare(res, out)
    log("\n" + markdown(res))
    return res


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


__all__ = ["compare", "run_one", "split_settings", "make_configs", "load_data", "encoder",
           "COMPARE", "REGULARISATION", "QUICK"]
