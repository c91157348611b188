"""Training runs as the command line drives them: presets, ``key=value`` settings, building
a model from a checkpoint, the GPT-on-text and RNN-on-a-task runs, and the demo.

A run's *settings* are one flat dict: the model's fields, ``TrainConfig``'s fields and a few
data fields (``batch_size``, ``tokenizer``, ...). A preset gives them all; ``key=value``
pairs override single ones. The settings are stored in every checkpoint, so ``--resume`` and
``tinyllm generate`` rebuild exactly the model that was trained.
"""
from __future__ import annotations

import time
import numpy as np

from ..data import (BPETokenizer, CharTokenizer, copy_task, encode_text, get_batch,
                    load_corpus, load_tokenizer, reversal_task, train_val_split)
from ..models import GPT, AttentionRNN, GPTConfig, RNNConfig
from .checkpoint import load_checkpoint
from .trainer import TrainConfig, Trainer


class SettingsError(ValueError):
    """A bad preset name, key or value (the command line turns it into exit status 2)."""


# ------------------------------------------------------------------ presets

_TRAIN_KEYS = TrainConfig.field_names()

GPT_PRESETS = {
    # A: the reference configuration (PyTorch: val 1.46 after 110 s here)
    "small": dict(n_layer=4, n_head=4, n_embd=128, block_size=128, dropout=0.0, bias=True,
                  batch_size=16, tokenizer="char", bpe_vocab=512, dtype="float32",
                  max_steps=2000, lr=2e-3, min_lr=2e-4, warmup_steps=100, weight_decay=0.1,
                  beta2=0.99, eval_every=200, eval_batches=16, grad_clip=1.0),
    # B: the larger benchmark configuration
    "medium": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.1, bias=True,
                   batch_size=8, tokenizer="char", bpe_vocab=512, dtype="float32",
                   max_steps=5000, lr=1e-3, min_lr=1e-4, warmup_steps=200, weight_decay=0.1,
                   beta2=0.99, eval_every=250, eval_batches=16, grad_clip=1.0),
    # for tests and quick looks
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, block_size=32, dropout=0.0, bias=True,
                 batch_size=8, tokenizer="char", bpe_vocab=300, dtype="float32",
                 max_steps=200, lr=3e-3, min_lr=3e-4, warmup_steps=20, weight_decay=0.1,
                 beta2=0.99, eval_every=50, eval_batches=4, grad_clip=1.0),
}

RNN_PRESETS = {
    "reversal": dict(task="reversal", n_symbols=10, min_len=5, max_len=10, d_embed=64,
                     d_hidden=128, d_attn=64, score="additive", attention=True,
                     batch_size=64, n_train=50_000, dtype="float32", max_steps=1500, lr=3e-3,
                     min_lr=3e-4, warmup_steps=75, weight_decay=0.0, beta2=0.999,
                     eval_every=250, eval_batches=4, grad_clip=1.0),
    "reversal-long": dict(task="reversal", n_symbols=10, min_len=10, max_len=20, d_embed=64,
                          d_hidden=128, d_attn=64, score="additive", attention=True,
                          batch_size=64, n_train=50_000, dtype="float32", max_steps=3000,
                          lr=3e-3, min_lr=3e-4, warmup_steps=150, weight_decay=0.0,
                          beta2=0.999, eval_every=500, eval_batches=4, grad_clip=1.0),
    "copy": dict(task="copy", n_symbols=10, min_len=5, max_len=10, d_embed=64, d_hidden=128,
                 d_attn=64, score="additive", attention=True, batch_size=64, n_train=50_000,
                 dtype="float32", max_steps=1500, lr=3e-3, min_lr=3e-4, warmup_steps=75,
                 weight_decay=0.0, beta2=0.999, eval_every=250, eval_batches=4,
                 grad_clip=1.0),
}

_GPT_MODEL_KEYS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout", "bias")
_RNN_MODEL_KEYS = ("d_embed", "d_hidden", "d_attn", "score", "attention")
_SHAPE_KEYS = set(_GPT_MODEL_KEYS) | set(_RNN_MODEL_KEYS) | {
    "tokenizer", "bpe_vocab", "dtype", "task", "n_symbols", "min_len", "max_len"}


def presets(kind: str) -> dict:
    return GPT_PRESETS if kind == "gpt" else RNN_PRESETS


def _convert(key: str, text: str, like):
    """``text`` parsed as the type of the preset value ``like``."""
    try:
        if isinstance(like, bool):
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(like, int):
            return int(text)
        if isinstance(like, float) or like is None:
            return float(text)
        return text
    except ValueError:
        kind = "true/false" if isinstance(like, bool) else type(like).__name__
        raise SettingsError(f"{key}={text!r}: expected {kind}") from None


def make_settings(kind: str, preset: str, overrides: dict | list = ()) -> dict:
    """The preset's settings with ``overrides`` (a dict of values, or ``key=value`` strings)
    applied; unknown keys and unparsable values raise ``SettingsError``."""
    table = presets(kind)
    if preset not in table:
        raise SettingsError(f"unknown --config {preset!r} for --model {kind}; choose one of "
                            f"{', '.join(table)}")
    s = dict(table[preset])
    s.setdefault("seed", 0)
    s.setdefault("patience", 0)
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
    for key, value in items:
        key = key.replace("-", "_")
        allowed = set(s) | set(_TRAIN_KEYS)
        if key not in allowed:
            raise SettingsError(f"unknown setting {key!r}; settings are "
                                f"{', '.join(sorted(allowed))}")
        like = s.get(key, getattr(TrainConfig(), key, None))
        s[key] = _convert(key, value, like) if isinstance(value, str) else value
    _check_settings(kind, s)
    return s


def _split(item: str):
    if "=" not in item:
        raise SettingsError(f"expected --key=value, got {item!r}")
    k, v = item.lstrip("-").split("=", 1)
    return k, v


def _check_settings(kind, s):
    try:
        train_config(s)
        if kind == "gpt":
            GPTConfig(vocab_size=2, **{k: s[k] for k in _GPT_MODEL_KEYS if k != "vocab_size"})
            if s["tokenizer"] not in ("char", "bpe"):
                raise ValueError(f"tokenizer must be char or bpe, got {s['tokenizer']!r}")
            if s["tokenizer"] == "bpe" and s["bpe_vocab"] < 256:
                raise ValueError(f"bpe_vocab must be >= 256, got {s['bpe_vocab']}")
        else:
            if s["task"] not in ("reversal", "copy"):
                raise ValueError(f"task must be reversal or copy, got {s['task']!r}")
            _task(s)
        if s["dtype"] not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {s['dtype']!r}")
        if s["batch_size"] < 1:
            raise ValueError(f"batch_size must be >= 1, got {s['batch_size']}")
    except (ValueError, TypeError) as e:
        raise SettingsError(str(e)) from None


def train_config(s: dict, **extra) -> TrainConfig:
    kw = {k: s[k] for k in _TRAIN_KEYS if k in s}
    kw.update(extra)
    return TrainConfig(**kw)


# ------------------------------------------------------------------ models

def _task(s):
    make = reversal_task if s["task"] == "reversal" else copy_task
    return make(n_symbols=s["n_symbols"], min_len=s["min_len"], max_len=s["max_len"])


def build_model(kind: str, s: dict, vocab_size: int):
    dtype = np.dtype(s["dtype"])
    if kind == "gpt":
        cfg = GPTConfig(vocab_size=vocab_size, **{k: s[k] for k in _GPT_MODEL_KEYS
                                                   if k != "vocab_size"})
        return GPT(cfg, seed=s.get("seed", 0), dtype=dtype)
    task = _task(s)
    cfg = RNNConfig(task.vocab_size, task.block_size, d_embed=s["d_embed"],
                    d_hidden=s["d_hidden"], d_attn=s["d_attn"], score=s["score"],
                    attention=s["attention"])
    return AttentionRNN(cfg, seed=s.get("seed", 0), dtype=dtype)


def load_model(path: str):
    """(model, tokenizer or task, meta) rebuilt from a checkpoint folder."""
    arrays, _, meta = load_checkpoint(path)
    kind = meta.get("model", {}).get("type")
    s = meta.get("settings")
    if kind not in ("gpt", "rnn") or not isinstance(s, dict):
        raise ValueError(f"checkpoint {path!r} was not written by `tinyllm train` (no model "
                         f"type and settings in its meta.json)")
    if kind == "gpt":
        tok = load_tokenizer(meta["tokenizer"])
        model = build_model("gpt", s, tok.vocab_size)
        extra = tok
    else:
        model = build_model("rnn", s, 0)
        extra = _task(s)
    model.load_state_dict(arrays)
    model.eval()
    return model, extra, meta


# ------------------------------------------------------------------ GPT on text

def unigram_baseline(train_ids: np.ndarray, val_ids: np.ndarray, V: int) -> float:
    """Cross-entropy (nats/token) on val of the train unigram distribution (add-one)."""
    counts = np.bincount(train_ids, minlength=V).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[val_ids].mean())


def prepare_text(s: dict, data_path: str | None, tokenizer=None):
    """(tokenizer, train ids, val ids) for a GPT run."""
    text = load_corpus(data_path)
    if tokenizer is None:
        if s["tokenizer"] == "char":
            tokenizer = CharTokenizer(text)
        else:
            tokenizer = BPETokenizer.train(text, s["bpe_vocab"])
    ids = encode_text(text, tokenizer)
    train, val = train_val_split(ids, 0.9)
    need = s["block_size"] + 1
    where = data_path or "the embedded corpus"
    if len(train) < need or len(val) < need:
        raise SettingsError(f"{where} is too short for block_size {s['block_size']}: its "
                         f"train/val parts have {len(train)}/{len(val)} tokens and each needs "
                         f"at least {need}; use more text or a smaller --block_size")
    return tokenizer, train, val


def gpt_trainer(s: dict, data_path: str | None, out: str | None, resume: bool = False,
                log=print, **train_extra):
    """A Trainer for a GPT on text (resumed from ``out`` when ``resume``); also returns the
    tokenizer and the train/val ids."""
    tok = None
    if resume:
        _, _, meta = load_checkpoint(out)
        tok = load_tokenizer(meta["tokenizer"])
    tok, train, val = prepare_text(s, data_path, tok)
    model = build_model("gpt", s, tok.vocab_size)
    B, T = s["batch_size"], s["block_size"]
    trainer = Trainer(model, lambda rng: get_batch(train, B, T, rng),
                      lambda rng: get_batch(val, B, T, rng), train_config(s, **train_extra),
                      out_dir=out, log=log,
                      meta={"model": {"type": "gpt", "config": model.config.to_dict()},
                            "settings": s, "tokenizer": tok.to_dict(),
                            "data": data_path or "embedded"})
    if resume:
        trainer.resume(out)
    return trainer, tok, train, val


# ------------------------------------------------------------------ RNN on a task

def rnn_batches(task, s: dict, seed: int):
    """(train_batch, val_batch, held-out TaskData): train rows from a pool of ``n_train``
    train-split examples, val rows from the held-out split."""
    pool = task.make_split(s["n_train"], seed=seed, split="train")
    held = task.make_split(500, seed=seed + 1, split="test")

    def draw(data):
        def batch(rng):
            rows = rng.integers(0, len(data), s["batch_size"])
            T = int(2 * data.lengths[rows].max() + 2)
            return data.inputs[rows, :T], data.targets[rows, :T]
        return batch
    return draw(pool), draw(held), held


def rnn_trainer(s: dict, out: str | None, resume: bool = False, log=print, **train_extra):
    task = _task(s)
    model = build_model("rnn", s, 0)
    train_b, val_b, held = rnn_batches(task, s, s.get("seed", 0))
    trainer = Trainer(model, train_b, val_b, train_config(s, **train_extra), out_dir=out,
                      log=log, meta={"model": {"type": "rnn"}, "settings": s,
                                     "task": {"kind": task.kind, "n_symbols": task.n_symbols,
                                              "min_len": task.min_len,
                                              "max_len": task.max_len}})
    if resume:
        trainer.resume(out)
    return trainer, task, held


# ------------------------------------------------------------------ timing helpers

def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the OS.

    A training step allocates and frees the same few-MB activation arrays every step. By
    default glibc serves each one with a fresh mmap, and first touching fresh pages costs more
    than many of the kernels that fill them. Raising the mmap and trim thresholds makes those
    arrays come back from the heap, already mapped (about 10% per GPT step measured here).
    Process-wide, so only the command line calls it. Returns False where it does not apply.
    """
    import ctypes
    import sys
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
        ok = libc.mallopt(M_MMAP_THRESHOLD, 512 << 20) == 1
        ok &= libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
        ok &= libc.mallopt(M_TOP_PAD, 64 << 20) == 1
        return bool(ok)
    except (OSError, AttributeError):
        return False


def seconds_per_step(model, batch, steps: int = 3) -> float:
    """Median wall time of a forward+backward on ``batch`` (after one warm-up step that
    also compiles the kernels)."""
    x, y = batch
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        _, loss = model(x, y)
        loss.backward()
        model.zero_grad()
        if i:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def steps_for_budget(model, batch, budget: float, lo: int, hi: int, overhead: float = 1.1):
    """How many steps fit in ``budget`` seconds, within [lo, hi]."""
    per = seconds_per_step(model, batch) * overhead
    return int(min(hi, max(lo, budget / per))), per


__all__ = ["GPT_PRESETS", "RNN_PRESETS", "SettingsError", "make_settings", "build_model",
           "load_model", "gpt_trainer", "rnn_trainer", "unigram_baseline", "keep_freed_memory",
           "steps_for_budget"]
