"""One fine-tuning run: a strategy, its trainable parameters, the loop of the document's
section 5 (``Epoch k, Loss: ...``, then ``Validation Accuracy: ...``), curves and metrics.

Strategies (``FinetuneConfig.strategy``), all on the pretrained encoder unless said:

- ``full``     every encoder parameter and the span head train.
- ``frozen``   only the span head (qa_outputs, C -> 2) trains. The encoder never changes,
               so it runs once over the data and its outputs are cached; a step is the
               head alone (and the frozen parameters stay bitwise as loaded).
- ``last-k``   the last ``last_k`` layers, the final norm and the head train; the layers
               below are frozen, run once, and their output (the input of layer L - k) is
               cached.
- ``lora``     the encoder is frozen; LoRA adapters (rank ``lora_r``, scale
               ``lora_alpha / lora_r``) on ``lora_targets`` (q, k, v: column slices of the
               fused qkv; o; fc1, fc2) and the head train. The adapters are saved on their
               own (``adapters/``).
- ``scratch``  the same architecture from a random initialisation, everything trains:
               end-to-end training instead of pretrain-then-finetune.
- ``joint``    ``full`` plus, at every step, the MLM loss on a corpus batch of
               ``joint_batch`` windows, with weight ``joint_weight``, on the shared encoder:
               L = L_qa + w L_mlm. It keeps what pretraining learnt (the MLM loss after
               fine-tuning is reported for every strategy: the forgetting).

Optimiser: AdamW, ``warmup_steps`` of linear warm-up, then linear decay to 0 at the last
step; gradient clipping at ``grad_clip``.

Regularisation, each a setting so that a run with it compares with the same run without:
``weight_decay`` (AdamW's decoupled decay, p <- p (1 - lr wd), not on biases, norms and
embeddings), ``l2`` (the term l2/2 sum ||W||^2 added to the loss over the same parameters:
under Adam its gradient is divided by the running RMS, so it is *not* the same as decoupled
decay), ``dropout`` (on the embeddings and residual branches), ``patience`` (early stopping
on validation EM, restoring the best weights) and ``augment`` (renamed copies of each
training story: ``tl.data.rename_entities``).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields

import numpy as np

from .. import optim
from ..autograd import Tensor, no_grad
from ..models import Bert, lora_targets
from ..nn import Dropout, apply_lora, save_adapters
from .pretrain import CorpusMLM, mlm_evaluate
from .qa import encode_examples, epoch_batches, evaluate, make_batch, span_loss

STRATEGIES = ("full", "frozen", "last-k", "lora", "scratch", "joint")
# learning rates that worked for each strategy in the calibration runs
DEFAULT_LR = {"full": 1e-3, "frozen": 1e-2, "last-k": 2e-3, "lora": 3e-3, "scratch": 2e-3,
              "joint": 1e-3}


class FinetuneError(ValueError):
    """A bad setting or input for fine-tuning (the command line: one line, exit 2)."""


@dataclass(frozen=True)
class FinetuneConfig:
    strategy: str = "full"
    epochs: int = 4
    batch_size: int = 32
    lr: float = 0.0              # 0: the strategy's default (DEFAULT_LR)
    warmup_steps: int = 30
    beta2: float = 0.999
    grad_clip: float = 1.0
    weight_decay: float = 0.0    # AdamW's decoupled decay
    l2: float = 0.0              # an L2 term in the loss
    dropout: float = 0.0
    patience: int = 0            # early stopping: evaluations without a better EM; 0 = off
    eval_every: int = 0          # steps between evaluations; 0 = at the end of each epoch
    augment: int = 0             # renamed copies of each training story
    last_k: int = 1
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_targets: str = "q,v,fc1,fc2"
    joint_weight: float = 1.0
    joint_batch: int = 16
    max_answer_len: int = 15
    seed: int = 0

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise FinetuneError(f"strategy must be one of {', '.join(STRATEGIES)}, got "
                                f"{self.strategy!r}")
        for f in ("epochs", "batch_size", "lora_r", "joint_batch", "max_answer_len",
                  "last_k"):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise FinetuneError(f"{f} must be a positive integer, got {v!r}")
        for f in ("warmup_steps", "patience", "eval_every", "augment", "seed"):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise FinetuneError(f"{f} must be a non-negative integer, got {v!r}")
        for f in ("lr", "grad_clip", "weight_decay", "l2", "joint_weight", "lora_alpha"):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise FinetuneError(f"{f} must be a finite number >= 0, got {v!r}")
        if not 0 <= self.dropout < 1:
            raise FinetuneError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not 0 <= self.beta2 < 1:
            raise FinetuneError(f"beta2 must be in [0, 1), got {self.beta2!r}")

    @property
    def learning_rate(self) -> float:
        return self.lr or DEFAULT_LR[self.strategy]

    @classmethod
    def field_names(cls):
        return [f.name for f in fields(cls)]


@dataclass
class Setup:
    """What a strategy trains and how a step computes the encoder's output."""
    model: Bert
    trainable: list          # (name, Parameter)
    frozen: list             # names
    cache_layer: int | None  # the layer whose input is cached (None: no cache)
    adapters: list           # LoRA adapter names


def build(cfg: FinetuneConfig, pretrained: Bert) -> Setup:
    """The model a strategy fine-tunes (a copy: ``pretrained`` is left as it is) and the
    parameters that train."""
    pc = pretrained.config
    model = Bert(pc, seed=cfg.seed + 1, dtype=pretrained.dtype)    # random init: scratch
    if cfg.strategy != "scratch":
        model.load_state_dict({k: v.copy() for k, v in pretrained.state_dict().items()})
    if cfg.dropout:
        for m in model.modules():
            if isinstance(m, Dropout):
                m.p = float(cfg.dropout)
    L = pc.n_layer
    adapters = []
    s = cfg.strategy
    model.requires_grad_(False)
    head = ["qa_outputs.*"]
    if s in ("full", "scratch"):
        train = ["embeddings.*", "encoder.*"] + head
    elif s == "joint":
        train = ["*"]
    elif s == "frozen":
        train = head
    elif s == "last-k":
        if cfg.last_k > L:
            raise FinetuneError(f"last_k must be in [1, {L}] (the encoder's layers), got "
                                f"{cfg.last_k}")
        train = [f"encoder.layer.{i}.*" for i in range(L - cfg.last_k, L)] + \
            ["encoder.LayerNorm.*"] + head
    else:                                                           # lora
        names = [n.strip() for n in cfg.lora_targets.split(",") if n.strip()]
        try:
            targets = lora_targets(pc, names)
        except ValueError as e:
            raise FinetuneError(f"lora_targets: {e}") from None
        adapters = apply_lora(model, targets, r=cfg.lora_r, alpha=cfg.lora_alpha,
                              seed=cfg.seed)
        train = head + adapters
    model.unfreeze(train)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    cache = {"frozen": L, "last-k": L - cfg.last_k}.get(s)
    return Setup(model, trainable, frozen, cache, adapters)


class FeatureCache:
    """The frozen part's output per example, computed once: the input of layer ``k``
    (k = L: the encoder's final states), each (T_i, C)."""

    def __init__(self, model: Bert, feats, k: int, batch_size: int = 64):
        self.k, self.L = k, model.config.n_layer
        self.rows = [None] * len(feats)
        was = model.training
        model.eval()
        order = np.argsort(feats.lengths, kind="stable")
        with no_grad():
            for lo in range(0, len(order), batch_size):
                b = make_batch(feats, order[lo:lo + batch_size])
                h = model.encode(b["ids"], b["key_mask"], b["token_type"], stop=k).data
                for r, i in enumerate(b["index"]):
                    self.rows[i] = h[r, :len(feats.ids[i])].copy()
        model.train(was)

    def encoder(self, model: Bert):
        """``encode(batch) -> h``: the cached input of layer k through the layers k..L."""
        def encode(b):
            T = b["ids"].shape[1]
            x = np.zeros((len(b["index"]), T, model.config.n_embd), model.dtype)
            for r, i in enumerate(b["index"]):
                x[r, :len(self.rows[i])] = self.rows[i]
            if self.k == self.L:
                return Tensor(x)
            return model.encode(b["ids"], b["key_mask"], b["token_type"], start=self.k,
                                x=Tensor(x))
        return encode


def _lr_at(step: int, total: int, warmup: int, lr: float) -> float:
    """Linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * max(0.0, (total - step) / max(1, total - warmup))


def _l2_term(params, lam: float) -> Tensor:
    tot = None
    for p in params:
        t = (p * p).sum()
        tot = t if tot is None else tot + t
    return tot * (0.5 * lam)


def finetune(cfg: FinetuneConfig, pretrained: Bert, vocab, train, valid, out: str | None = None,
             corpus: CorpusMLM | None = None, log=print, progress: bool = True) -> dict:
    """Fine-tune for QA with one strategy; returns the result dict (also ``out/result.json``)
    and writes ``out/metrics.jsonl`` and ``out/curves.png``. ``train``/``valid``: lists of
    ``tl.data.QAExample``; ``corpus``: the MLM batches (joint training and the MLM loss
    before and after)."""
    from ..data import augment, char_length
    log = log or (lambda *a: None)
    t_start = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    T = pretrained.config.max_position
    if cfg.augment:               # renamed copies; a longer name can push one past the window
        extra = [a for a in augment(train, cfg.augment, seed=cfg.seed)[len(train):]
                 if char_length(a.question, a.context) <= T]
        train = list(train) + extra
        log(f"augment: {len(extra)} renamed copies of {len(train) - len(extra)} stories "
            f"(those that fit the {T}-character window)")
    ftr = encode_examples(train, vocab, T)
    fva = encode_examples(valid, vocab, T)
    setup = build(cfg, pretrained)
    model = setup.model
    frozen_before = {n: p.data.copy() for n, p in model.named_parameters()
                     if not p.requires_grad}
    mlm_before = mlm_evaluate(model, corpus)["loss"] if corpus else None
    t0 = time.perf_counter()
    enc_train = enc_valid = None
    if setup.cache_layer is not None:
        enc_train = FeatureCache(model, ftr, setup.cache_layer).encoder(model)
        enc_valid = FeatureCache(model, fva, setup.cache_layer).encoder(model)
    cache_s = time.perf_counter() - t0
    params = [p for _, p in setup.trainable]
    groups = optim.param_groups_for_decay(setup.trainable, cfg.weight_decay)
    decayed = groups[0]["params"]
    lr = cfg.learning_rate
    opt = optim.AdamW(groups, lr=lr, betas=(0.9, cfg.beta2), eps=1e-8,
                      weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(ftr) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    n_total = model.num_parameters()
    n_train = sum(p.data.size for p in params)
    log(f"finetune: strategy {cfg.strategy}, {n_train:,} trainable parameters of {n_total:,} "
        f"({100 * n_train / n_total:.1f}%), {len(train)} train / {len(valid)} valid "
        f"examples, {cfg.epochs} epochs x {steps_per_epoch} steps, lr {lr:g}")
    metrics, epochs = [], []
    best = {"em": -1.0, "state": None, "step": 0}
    bad, step, stopped = 0, 0, "epochs"
    train_s = 0.0
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        batches = epoch_batches(ftr.lengths, cfg.batch_size, rng)
        bar = _bar(progress, len(batches), f"epoch {epoch}/{cfg.epochs}")
        tot, n_ep, t_ep = 0.0, 0, time.perf_counter()
        for b_idx in batches:
            b = make_batch(ftr, b_idx)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, cfg.warmup_steps, lr)
            h = (enc_train(b) if enc_train else
                 model.encode(b["ids"], b["key_mask"], b["token_type"]))
            s, e = model.span_logits(h)
            loss = span_loss(s, e, b)
            qa = float(loss.data)
            rec = {"step": step + 1, "loss": qa}
            if cfg.strategy == "joint":
                x, y = corpus.train_batch(rng, cfg.joint_batch)
                _, mlm = model(x, y)
                loss = loss + mlm * cfg.joint_weight
                rec["mlm_loss"] = float(mlm.data)
            if cfg.l2:
                loss = loss + _l2_term(decayed, cfg.l2)
            if not math.isfinite(float(loss.data)):
                raise FinetuneError(f"finetune: the loss is {float(loss.data)} at step "
                                    f"{step + 1}; lower the learning rate ({lr:g})")
            opt.zero_grad()
            loss.backward()
            if cfg.grad_clip:
                optim.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            step += 1
            tot += qa
            n_ep += 1
            metrics.append(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{qa:.4f}", refresh=False)
            if cfg.eval_every and step % cfg.eval_every == 0 and step % steps_per_epoch:
                better = _evaluation(model, valid, fva, enc_valid, cfg, step, epoch, metrics,
                                     best, log, mid=True)
                bad = 0 if better else bad + 1
                if cfg.patience and bad >= cfg.patience:
                    stopped = "early_stopping"
                    break
        if bar is not None:
            bar.close()
        train_s += time.perf_counter() - t_ep
        mean = tot / max(1, n_ep)
        log(f"Epoch {epoch}, Loss: {mean:.4f}")
        better = _evaluation(model, valid, fva, enc_valid, cfg, step, epoch, metrics, best, log)
        epochs.append({"epoch": epoch, "loss": mean, "em": metrics[-1]["em"],
                       "f1": metrics[-1]["f1"], "step": step})
        bad = 0 if better else bad + 1
        if stopped == "early_stopping" or (cfg.patience and bad >= cfg.patience):
            stopped = "early_stopping"
            break
    if cfg.patience and best["state"] is not None:
        model.load_state_dict(best["state"])
        log(f"early stopping: restored the best weights (step {best['step']}, "
            f"EM {best['em']:.1f})")
    final = evaluate(model, valid, fva, cfg.max_answer_len, encode=enc_valid)
    log(f"Validation Accuracy: {final['em']:.1f}")
    mlm_after = mlm_evaluate(model, corpus)["loss"] if corpus else None
    cur = dict(model.named_parameters())       # the frozen part, bitwise as it was loaded
    unchanged = all(np.array_equal(cur[n].data, a) for n, a in frozen_before.items())
    # the norm of the weights decay acts on: where AdamW's decay and an L2 term part ways
    wnorm = math.sqrt(sum(float(np.sum(p.data.astype(np.float64) ** 2)) for p in decayed))
    result = {
        "strategy": cfg.strategy, "weight_norm": wnorm, "config": asdict(cfg), "trainable": n_train,
        "parameters": n_total, "trainable_share": n_train / n_total, "steps": step,
        "seconds": round(time.perf_counter() - t_start, 2), "train_seconds": round(train_s, 2),
        "cache_seconds": round(cache_s, 2), "ms_per_step": round(1000 * train_s / max(1, step), 1),
        "epochs": epochs, "evaluations": [{"step": m["step"], "em": m["em"], "f1": m["f1"]}
                                          for m in metrics if "em" in m],
        "stopped": stopped, "em": final["em"], "f1": final["f1"],
        "per_type": final["per_type"], "mlm_loss_before": mlm_before,
        "mlm_loss_after": mlm_after, "frozen_unchanged": unchanged,
        "train_examples": len(train), "valid_examples": len(valid)}
    if out:
        _write(out, cfg, model, setup, metrics, result)
    return result


def _evaluation(model, valid, fva, enc_valid, cfg, step, epoch, metrics, best, log, mid=False):
    """Score the validation set, log it, keep the best weights; True when EM improved."""
    sc = evaluate(model, valid, fva, cfg.max_answer_len, encode=enc_valid)
    metrics.append({"step": step, "epoch": epoch, "em": sc["em"], "f1": sc["f1"],
                    "per_type": {k: v["em"] for k, v in sc["per_type"].items()}})
    types = ", ".join(f"{k} {v['em']:.1f}" for k, v in sorted(sc["per_type"].items()))
    log(f"  {'step ' + str(step) if mid else 'valid'}: EM {sc['em']:.1f}, F1 {sc['f1']:.1f}"
        f"  ({types})")
    if sc["em"] > best["em"]:
        best.update(em=sc["em"], step=step,
                    state=({k: v.copy() for k, v in model.state_dict().items()}
                           if cfg.patience else None))
        return True
    return False


def _bar(progress, total, desc):
    if not progress:
        return None
    import sys
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _write(out, cfg, model, setup, metrics, result):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        for m in metrics:
            f.write(json.dumps(m) + "\n")
    tmp = os.path.join(out, "result.json.tmp")
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, os.path.join(out, "result.json"))
    if setup.adapters:
        save_adapters(model, os.path.join(out, "adapters"))
    plot_curves(metrics, os.path.join(out, "curves.png"), f"fine-tuning: {cfg.strategy}")


def plot_curves(metrics, path, title):
    """The training loss per step and the validation EM per evaluation, side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    st = [m["step"] for m in metrics if "loss" in m]
    a.plot(st, [m["loss"] for m in metrics if "loss" in m], lw=0.8, label="QA loss")
    if any("mlm_loss" in m for m in metrics):
        a.plot(st, [m.get("mlm_loss", np.nan) for m in metrics if "loss" in m], lw=0.8,
               label="MLM loss")
    a.set_xlabel("step")
    a.set_ylabel("loss")
    a.legend()
    ev = [m for m in metrics if "em" in m]
    b.plot([m["step"] for m in ev], [m["em"] for m in ev], "o-", label="EM")
    b.plot([m["step"] for m in ev], [m["f1"] for m in ev], "s--", label="F1")
    b.set_xlabel("step")
    b.set_ylabel("validation %")
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["FinetuneConfig", "FinetuneError", "STRATEGIES", "DEFAULT_LR", "build",
           "finetune", "FeatureCache", "plot_curves"]
