"""Knowledge distillation: a smaller student GPT trained on a frozen teacher's softened
predictions (``tinyllm distill``).

Per training step, on a batch x (B, T) with next tokens y (B, T):

    z_t  = teacher(x)                   (B, T, V)  under no_grad: a constant
    z_s  = student(x)                   (B, T, V)
    loss = alpha T^2 KL + (1 - alpha) CE(z_s, y)       (tl.functional.distill_loss)
    KL   = KL(p_t,T || p_s,T) ("forward") or KL(p_s,T || p_t,T) ("reverse"), per position,
           mean over positions; p_T = softmax(z / T)

so a step costs one teacher forward more than a plain step (no teacher backward).

The student trains with the ordinary ``Trainer`` through ``Distiller``, a Module that *is*
the student's parameter tree (``named_parameters``, ``state_dict``, ``named_modules`` and
its Generators are the student's, under the student's own names) and holds the teacher as a
plain attribute: the teacher is not a sub-module, so its parameters are not trained, not in
the optimiser and not in any checkpoint. In eval mode ``Distiller(x, y)`` is the student's
own ``(logits, cross-entropy)``, so the validation loss (and the choice of ``best/``) is the
student's plain loss, comparable with a student trained alone. The output is an ordinary GPT
run folder (``last/``, ``best/``, ``metrics.jsonl``, ``loss.png``): ``tinyllm eval`` and
``tinyllm generate`` load the student like any GPT; ``meta.json`` adds a ``distill`` entry
(the teacher's folder and the SHA-256 of its weights, T, alpha, kind), which a resume checks.

Teacher logits are recomputed every step, not cached: the batches are random windows, so a
cache would have to hold the logits of every position of the corpus (N x V floats: ~185 MB
for the embedded corpus's 450k characters at V = 103, and V times the corpus for a BPE
vocabulary), while the teacher's forward is a fraction of a step (measured by
``benchmarks/distill_eval.py``).

With ``alpha = 0`` the loss is the plain cross-entropy plus an exact zero, and the run is the
plain training run of the same settings, step for step. The student must use the teacher's
tokenizer (the same vocabulary) and a ``block_size`` no longer than the teacher's.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass

import numpy as np

from ..autograd import no_grad
from ..autograd.distillation import check_settings, distill_loss
from ..models import GPT, GPTConfig
from ..nn import Module

__all__ = ["DistillConfig", "Distiller", "distill_trainer", "distill", "distill_run",
           "DISTILL_KEYS", "student_preset"]

DISTILL_KEYS = ("temperature", "alpha", "kind")


@dataclass(frozen=True)
class DistillConfig:
    """The distillation settings (``--temperature=2 --alpha=0.5 --kind=reverse``)."""
    temperature: float = 1.0          # T > 0
    alpha: float = 0.5                # weight of the soft term, in [0, 1]
    kind: str = "forward"             # forward = KL(teacher || student); reverse

    def __post_init__(self):
        check_settings(self.temperature, self.alpha, self.kind, "DistillConfig")


class Distiller(Module):
    """The student as the Trainer sees it: ``forward(x, y) -> (student logits, loss)``; the
    loss is the distillation loss in training mode and the student's cross-entropy in eval
    mode. Parameters, state and Generators are the student's, by the student's names."""

    def __init__(self, student: GPT, teacher, cfg: DistillConfig):
        super().__init__()
        if not isinstance(cfg, DistillConfig):
            raise TypeError(f"Distiller: cfg must be a DistillConfig, got {type(cfg).__name__}")
        sc, tc = student.config, teacher.config
        if sc.vocab_size != tc.vocab_size:
            raise ValueError(f"Distiller: the student's vocabulary ({sc.vocab_size}) differs "
                             f"from the teacher's ({tc.vocab_size}); they must share the "
                             f"tokenizer")
        if sc.block_size > tc.block_size:
            raise ValueError(f"Distiller: the student's block_size {sc.block_size} exceeds "
                             f"the teacher's {tc.block_size}; the teacher must see every "
                             f"window the student trains on")
        # plain attributes, not registered: neither is a sub-module of this one
        object.__setattr__(self, "student", student)
        object.__setattr__(self, "teacher", teacher)
        object.__setattr__(self, "cfg", cfg)
        teacher.eval()
        teacher.requires_grad_(False)

    config = property(lambda self: self.student.config)

    def named_parameters(self):
        return self.student.named_parameters()

    def named_modules(self, prefix: str = ""):
        return self.student.named_modules(prefix)

    def train(self, mode: bool = True) -> "Distiller":
        self.student.train(mode)
        object.__setattr__(self, "training", bool(mode))
        self.teacher.eval()               # the teacher always runs as at inference
        return self

    def forward(self, x, y):
        if not self.training:
            return self.student(x, y)     # validation: the student's own cross-entropy
        c = self.cfg
        with no_grad():
            zt, _ = self.teacher(x)                                      # (B, T, V)
        zs, _ = self.student(x)                                          # (B, T, V)
        loss = distill_loss(zs, zt.data, y, T=c.temperature, alpha=c.alpha, kind=c.kind)
        return zs, loss

    def __repr__(self):
        c = self.cfg
        return (f"Distiller(T={c.temperature}, alpha={c.alpha}, kind={c.kind}, "
                f"student={self.student.num_parameters():,} parameters, "
                f"teacher={self.teacher.num_parameters():,} parameters)")


def distill_trainer(teacher, student_cfg: GPTConfig, train_cfg, train_ids, val_ids, *,
                    batch_size: int, T: float = 1.0, alpha: float = 0.5,
                    kind: str = "forward", dtype=np.float32, out_dir=None, meta=None,
                    log=print, unit=None, sample=None):
    """A ``Trainer`` whose model is ``Distiller(GPT(student_cfg, seed=train_cfg.seed),
    teacher, ...)`` on random windows of ``train_ids`` / ``val_ids`` (1-D int, the teacher's
    tokenizer), ``batch_size`` windows of ``student_cfg.block_size`` tokens. ``sample`` (a
    function of the student) is logged as in ``Trainer``."""
    from ..data import get_batch
    from ..train.trainer import Trainer
    dcfg = DistillConfig(float(T), float(alpha), kind)
    student = GPT(student_cfg, seed=train_cfg.seed, dtype=dtype)
    model = Distiller(student, teacher, dcfg)
    B, L = batch_size, student_cfg.block_size
    smp = (lambda m: sample(m.student)) if sample is not None else None
    return Trainer(model, lambda rng: get_batch(train_ids, B, L, rng),
                   lambda rng: get_batch(val_ids, B, L, rng), train_cfg, out_dir=out_dir,
                   meta=meta, log=log, unit=unit, sample=smp)


def distill(teacher, student_cfg: GPTConfig, train_cfg, T: float = 1.0, alpha: float = 0.5,
            kind: str = "forward", *, train_ids, val_ids, batch_size: int, dtype=np.float32,
            out_dir=None, meta=None, log=print):
    """Train a student GPT of ``student_cfg`` from ``teacher`` (a GPT, frozen) with the
    ``Trainer`` and ``train_cfg`` (a ``TrainConfig``); returns (student in eval mode,
    TrainResult). ``out_dir`` gets checkpoints of the student alone."""
    tr = distill_trainer(teacher, student_cfg, train_cfg, train_ids, val_ids,
                         batch_size=batch_size, T=T, alpha=alpha, kind=kind, dtype=dtype,
                         out_dir=out_dir, meta=meta, log=log)
    res = tr.fit()
    student = tr.model.student
    student.eval()
    return student, res


# ------------------------------------------------------------------ the command's run

def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def teacher_text(meta: dict) -> str | None:
    """The text a run trained on, as its meta.json records it (None: the embedded corpus)."""
    src = meta.get("text", meta.get("data"))
    return None if not isinstance(src, str) or src == "embedded" else src


def split_settings(items) -> tuple[dict, list]:
    """``--key=value`` strings -> ({distill key: value}, the other (student) settings)."""
    from ..train.runs import SettingsError
    dist, rest = {}, []
    for item in items:
        if "=" not in item:
            raise SettingsError(f"expected --key=value, got {item!r}")
        k, v = _key(item), item.split("=", 1)[1]
        if k in DISTILL_KEYS:
            if k == "kind":
                dist[k] = v
            else:
                try:
                    dist[k] = float(v) + 0.0          # + 0.0: -0 reads as 0
                except ValueError:
                    raise SettingsError(f"{k}={v!r}: expected a number") from None
        else:
            rest.append(item)
    return dist, rest


def student_preset(teacher_settings: dict, overrides=()):
    """The student's run settings: the teacher's, with half its layers and half its width
    (when that width still divides by n_head), then ``overrides`` (``key=value`` strings or
    a dict). The tokenizer settings stay the teacher's; ``SettingsError`` on anything bad."""
    from ..train.runs import Preset, SettingsError
    base = Preset.from_settings("gpt", dict(teacher_settings))
    L, C, H = base.model.n_layer, base.model.n_embd, base.model.n_head
    half = {"n_layer": max(1, L // 2)}
    if C // 2 >= H and (C // 2) % H == 0:
        half["n_embd"] = C // 2
    p = base.with_overrides(half).with_overrides(overrides)
    for k in ("tokenizer", "bpe_vocab"):
        if getattr(p.data, k) != getattr(base.data, k):
            raise SettingsError(f"{k}: the student uses the teacher's tokenizer "
                                f"({k}={getattr(base.data, k)!r})")
    if p.model.block_size > base.model.block_size:
        raise SettingsError(f"block_size={p.model.block_size}: the student's window cannot "
                            f"exceed the teacher's ({base.model.block_size})")
    return p


def distill_run(teacher_path: str, out: str, overrides=(), data_path: str | None = None,
                resume: bool = False, log=print):
    """The ``tinyllm distill`` run: load the teacher (a run or checkpoint folder), build the
    student's settings (``student_preset``; ``temperature``, ``alpha``, ``kind`` among the
    ``key=value`` overrides), and return a Trainer writing the run folder ``out``
    (resumed from it when ``resume``), with a dict describing the run. Bad settings raise
    ``SettingsError``; the caller calls ``fit()``."""
    from ..data import load_tokenizer
    from ..train.checkpoint import load_checkpoint, resolve
    from ..train.runs import (SettingsError, load_model, prepare_text, resume_changes,
                              resume_preset, token_unit, _sampler)
    dist, rest = split_settings(overrides)
    folder = resolve(teacher_path)
    teacher, tok, tmeta = load_model(folder)
    if tmeta["model"]["type"] != "gpt":
        raise SettingsError(f"--teacher: {folder} holds an RNN; distillation needs a GPT")
    p = student_preset(tmeta["settings"], rest)
    teacher_sha = _sha256(os.path.join(folder, "model.safetensors"))
    changes = []
    if resume:
        _, _, meta = load_checkpoint(out)
        saved_d = meta.get("distill")
        if not isinstance(saved_d, dict):
            raise SettingsError(f"--resume: {out} is not a distillation run (its meta.json "
                                f"has no 'distill' entry)")
        if saved_d.get("teacher_sha256") != teacher_sha:
            raise SettingsError(f"--resume: the teacher {folder} is not the one this run "
                                f"distils ({saved_d.get('teacher')}); its weights differ")
        bad = [k for k, v in dist.items() if saved_d.get(k) != v]
        if bad:
            raise SettingsError(f"--resume: {', '.join(bad)} differ from the run's; a resumed "
                                f"run keeps its distillation settings")
        dist = {k: saved_d[k] for k in DISTILL_KEYS}
        explicit = {_key(o) for o in rest}
        saved = meta.get("settings", {})
        p = resume_preset(p, saved, explicit)
        changes = resume_changes(saved, p)
        data_path = None if meta.get("text") == "embedded" else meta.get("text")
    try:
        dcfg = DistillConfig(**dist)
    except ValueError as e:
        raise SettingsError(str(e).replace("DistillConfig: ", "")) from None
    src = data_path if data_path is not None else teacher_text(tmeta)
    tok, train, val = prepare_text(p, src, load_tokenizer(tok.to_dict()))
    cfg = p.model.config(tok.vocab_size)
    meta = {"model": {"type": "gpt", "config": cfg.to_dict()}, "settings": p.settings(),
            "tokenizer": tok.to_dict(), "text": os.path.abspath(src) if src else "embedded",
            "distill": dict(asdict(dcfg), teacher=os.path.abspath(folder),
                            teacher_sha256=teacher_sha, teacher_step=tmeta.get("step"),
                            teacher_parameters=teacher.num_parameters())}
    trainer = distill_trainer(teacher, cfg, p.train, train, val, batch_size=p.data.batch_size,
                              T=dcfg.temperature, alpha=dcfg.alpha, kind=dcfg.kind,
                              dtype=np.dtype(p.data.dtype), out_dir=out, meta=meta, log=log,
                              unit=token_unit(tok, val), sample=_sampler(tok, val))
    if resume:
        trainer.resume(out)
    info = {"preset": p, "distill": dcfg, "teacher": teacher, "teacher_folder": folder,
            "tokenizer": tok, "changes": changes, "train_ids": train, "val_ids": val}
    return trainer, info


def _key(item: str) -> str:
    return item.split("=", 1)[0].lstrip("-").replace("-", "_")

