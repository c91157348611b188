"""Masked-language-model pretraining of the encoder on the embedded corpus, and its cache.

The "pretrained BERT" that fine-tuning starts from is one tinyllm trains itself: nothing
downloads. The first fine-tuning run pretrains it (or the user runs ``tinyllm finetune
--pretrain-only``) into the cache folder; later runs load the checkpoint, as a user's
second ``from_pretrained`` reads the downloaded file.

Masking (BERT's rule). Of the T positions of a window, each is *selected* with probability
``mask_rate`` (0.15); of the selected ones 80% become [MASK], 10% a random character, 10%
stay as they are. The loss is the mean cross-entropy over the selected positions only,
predicting the original character:

    L = -1/|S| sum_{t in S} log p(x_t | x~)      x~ = the corrupted window, S = selected

Data: the corpus's characters, first 90% for training, last 10% for validation; a batch is
B random windows of T characters. The run is a ``tinyllm.train.Trainer`` run: the same safe,
resumable checkpoints as GPT training (``last/``, ``best/``, ``metrics.jsonl``,
``loss.png``). A cache folder whose checkpoint reached ``steps`` is reused as it is; one
that stopped early (Ctrl-C, a time limit) is resumed bitwise from where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, fields

import numpy as np

from ..autograd import no_grad
from ..data import get_batch, load_corpus, train_val_split
from ..models import Bert, BertConfig
from ..train.checkpoint import CheckpointError, load_checkpoint, resolve
from ..train.trainer import TrainConfig, Trainer
from .vocab import MASK, EncoderVocab

KIND = "tinyllm-bert-mlm"


@dataclass(frozen=True)
class PretrainConfig:
    """The encoder's shape and its MLM pretraining run (the calibration setup's values)."""
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 64
    n_inner: int = 256
    max_position: int = 128      # T: the window, and the longest fine-tuning input
    steps: int = 1800
    batch_size: int = 32
    lr: float = 2e-3             # constant after the warm-up
    warmup_steps: int = 100
    weight_decay: float = 0.01
    beta2: float = 0.99
    mask_rate: float = 0.15
    seed: int = 0
    eval_every: int = 200
    eval_batches: int = 8

    def model_config(self, vocab_size: int) -> BertConfig:
        return BertConfig(vocab_size=vocab_size, max_position=self.max_position,
                          n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
                          n_inner=self.n_inner)

    def name(self) -> str:
        """The cache folder's name: the shape, the steps and a hash of every setting."""
        h = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        return f"bert-char-L{self.n_layer}-d{self.n_embd}-s{self.steps}-{h[:8]}"

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def cache_dir() -> str:
    """Where pretrained encoders are kept: ``$TINYLLM_CACHE``, else ``~/.cache/tinyllm``."""
    return os.environ.get("TINYLLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                           "tinyllm")


def default_folder(cfg: PretrainConfig) -> str:
    return os.path.join(cache_dir(), "encoders", cfg.name())


# ------------------------------------------------------------------ masking

def mask_tokens(ids: np.ndarray, rng: np.random.Generator, vocab_size: int, n_special: int,
                rate: float = 0.15):
    """BERT's 80/10/10 corruption of ids (B, T) -> (inputs (B, T), targets (B, T)).

    targets hold the original id at the selected positions and -100 elsewhere; at least one
    position of the batch is selected. Random replacements are drawn from the non-special
    ids [n_special, vocab_size)."""
    ids = np.asarray(ids, np.int64)
    sel = rng.random(ids.shape) < rate                       # S: the selected positions
    if not sel.any():
        sel.flat[rng.integers(ids.size)] = True
    r = rng.random(ids.shape)
    inp = ids.copy()
    inp[sel & (r < 0.8)] = MASK                              # 80%: [MASK]
    rnd = sel & (r >= 0.8) & (r < 0.9)                       # 10%: a random character
    inp[rnd] = rng.integers(n_special, vocab_size, int(rnd.sum()))
    return inp, np.where(sel, ids, -100)                     # 10%: unchanged


class CorpusMLM:
    """The MLM batches of a text: ``train_batch(rng)``, ``val_batch(rng)`` -> (inputs,
    targets) for the Trainer, windows of T ids from the first 90% / last 10%."""

    def __init__(self, vocab: EncoderVocab, text: str, batch_size: int, T: int,
                 rate: float = 0.15):
        ids = vocab.encode(text)
        self.train_ids, self.val_ids = train_val_split(ids, 0.9)
        self.vocab, self.B, self.T, self.rate = vocab, batch_size, T, rate

    def _batch(self, data, rng, B=None):
        x, _ = get_batch(data, B or self.B, self.T, rng)
        return mask_tokens(x, rng, self.vocab.vocab_size, self.vocab.n_special, self.rate)

    def train_batch(self, rng, B=None):
        return self._batch(self.train_ids, rng, B)

    def val_batch(self, rng, B=None):
        return self._batch(self.val_ids, rng, B)


@no_grad()
def mlm_evaluate(model: Bert, data: CorpusMLM, n_batches: int = 16, seed: int = 1234) -> dict:
    """MLM loss and masked-token accuracy on the same ``n_batches`` validation batches every
    time (a fixed seed): {"loss", "acc", "n"}; the model is left in its mode."""
    rng = np.random.default_rng(seed)
    was = model.training
    model.eval()
    tot_loss, correct, n = 0.0, 0, 0
    for _ in range(n_batches):
        x, y = data.val_batch(rng)
        logits, loss = model(x, y)                           # (N, V) at the selected ones
        tg = y.reshape(-1)[y.reshape(-1) != -100]
        tot_loss += float(loss.data) * tg.size
        correct += int((logits.data.argmax(-1) == tg).sum())
        n += tg.size
    model.train(was)
    return {"loss": tot_loss / n, "acc": correct / n, "n": n}


# ------------------------------------------------------------------ the run and its cache

def _trainer(model, data, cfg: PretrainConfig, folder, vocab, log, progress):
    tc = TrainConfig(max_steps=cfg.steps, lr=cfg.lr, min_lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                     weight_decay=cfg.weight_decay, beta2=cfg.beta2, eval_every=cfg.eval_every,
                     eval_batches=cfg.eval_batches, seed=cfg.seed, log_every=10,
                     progress=progress, sample_every=0)
    meta = {"kind": KIND, "pretrain": asdict(cfg), "bert_config": model.config.to_dict(),
            "vocab": vocab.to_dict()}
    return Trainer(model, data.train_batch, data.val_batch, tc, out_dir=folder, meta=meta,
                   log=log)


def pretrain(folder: str | None = None, cfg: PretrainConfig | None = None, log=print,
             progress: bool = True, text: str | None = None) -> dict:
    """Pretrain (or finish pretraining) the encoder into ``folder`` (default: the cache
    folder of ``cfg``). Returns the summary written to ``folder/pretrain.json``: steps,
    seconds of this call, the final MLM val loss and masked-token accuracy, and whether the
    cache was reused. A folder holding another configuration's checkpoint is refused."""
    cfg = cfg or PretrainConfig()
    log = log or (lambda *a: None)
    folder = folder or default_folder(cfg)
    summary_path = os.path.join(folder, "pretrain.json")
    text = load_corpus() if text is None else text
    vocab = EncoderVocab.from_text(text)
    data = CorpusMLM(vocab, text, cfg.batch_size, cfg.max_position, cfg.mask_rate)
    model = Bert(cfg.model_config(vocab.vocab_size), seed=cfg.seed)
    trainer = _trainer(model, data, cfg, folder, vocab, log, progress)
    t0 = time.perf_counter()
    step0 = 0
    if _has_checkpoint(folder):
        meta = _meta(folder)
        if meta.get("pretrain") != asdict(cfg):
            raise CheckpointError(f"pretrain: {folder} holds an encoder pretrained with other "
                                  f"settings ({meta.get('pretrain')}); use another folder")
        step0 = int(meta["step"])
        if step0 >= cfg.steps and os.path.exists(summary_path):
            with open(summary_path) as f:
                return dict(json.load(f), reused=True)
        trainer.resume(folder)
        log(f"pretrain: resuming {folder} at step {step0}/{cfg.steps}")
    if trainer.step < cfg.steps:
        trainer.fit()
    ev = mlm_evaluate(model, data)
    summary = {"folder": folder, "steps": trainer.step, "resumed_from": step0,
               "seconds": round(time.perf_counter() - t0, 1), "val_loss": ev["loss"],
               "val_acc": ev["acc"], "parameters": model.num_parameters(),
               "config": asdict(cfg), "reused": False}
    tmp = summary_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, summary_path)
    return summary


def _has_checkpoint(folder: str) -> bool:
    try:
        resolve(folder)
    except CheckpointError:
        return False
    return os.path.isdir(os.path.join(folder, "last")) or \
        os.path.isdir(os.path.join(folder, "last.old"))


def _meta(folder: str) -> dict:
    _, _, meta = load_checkpoint(folder)
    return meta


def load_pretrained(folder: str):
    """(model, vocab, meta) of a pretrained encoder's folder (its ``last/`` checkpoint); the
    model in eval mode."""
    arrays, _, meta = load_checkpoint(folder)
    if meta.get("kind") != KIND:
        raise CheckpointError(f"{folder} is not a pretrained encoder (kind "
                              f"{meta.get('kind')!r}, expected {KIND!r})")
    model = Bert(BertConfig.from_dict(meta["bert_config"]))
    model.load_state_dict(arrays)
    model.eval()
    return model, EncoderVocab.from_dict(meta["vocab"]), meta


__all__ = ["PretrainConfig", "pretrain", "load_pretrained", "mask_tokens", "CorpusMLM",
           "mlm_evaluate", "cache_dir", "default_folder"]
