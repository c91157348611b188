"""The training loop: batches, AdamW with warmup + cosine, clipping, validation, early
stopping, metrics, loss curves and safe resumable checkpoints.

    trainer = Trainer(model, train_batch, val_batch, TrainConfig(max_steps=2000),
                      out_dir="runs/gpt", meta={"model": {...}, "tokenizer": {...}})
    result = trainer.fit()                 # or trainer.resume("runs/gpt"); trainer.fit()

``train_batch(rng) -> (x, y)`` draws one batch from the trainer's seeded Generator;
``val_batch(rng)`` is called with a fresh Generator of a fixed seed at every validation, so
each validation sees the same batches and val losses are comparable across steps.
``model(x, y)`` must return ``(logits, loss)``.

Resuming is bitwise: a checkpoint holds the weights, the optimiser's moments and steps, the
schedule, the batch Generator's state (the data position), every Generator the model owns
(dropout), the early-stopping counters and the step. Running N steps straight, or k steps,
then ``resume`` in a new process, then the rest, gives the same losses and the same weights
(at the same thread count: the kernels split work into fixed chunks, so their sums do not
depend on timing).

A NaN or Inf loss (or gradient norm) stops training with ``TrainingError`` before the step is
applied; no checkpoint is written after it, so the last good one stays as it was.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .. import optim
from ..autograd import no_grad
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the message says what and where."""


def resumable(default, **kw):
    """A dataclass field that a resumed run (``tinyllm train --resume``) may change: how long
    to go on, how often to validate and log. Every other setting of a run must stay as the
    checkpoint has it."""
    return field(default=default, metadata={"resumable": True}, **kw)


@dataclass
class TrainConfig:
    max_steps: int = resumable(1000)
    lr: float = 1e-3
    min_lr: float | None = None          # default lr / 10
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0               # 0 = no clipping
    eval_every: int = resumable(100)
    eval_batches: int = resumable(8)
    patience: int = resumable(0)         # validations without improvement to stop at; 0 = never
    seed: int = 0
    log_every: int = resumable(10)
    time_limit: float = resumable(0.0)   # seconds of training before stopping early; 0 = none
    stop_at: int = resumable(0)          # stop (as if interrupted) after this step; 0 = never
    progress: bool = resumable(True)     # tqdm bar (quiet anyway when not on a terminal)

    def __post_init__(self):
        for f in ("max_steps", "eval_every", "eval_batches", "log_every"):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TrainConfig: {f} must be a positive integer, got {v!r}")
        for f in ("warmup_steps", "patience", "stop_at", "seed"):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"TrainConfig: {f} must be a non-negative integer, got {v!r}")
        for f in ("lr", "weight_decay", "grad_clip", "time_limit"):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"TrainConfig: {f} must be a finite number >= 0, got {v!r}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig: lr must be > 0, got {self.lr!r}")
        for f in ("beta1", "beta2"):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ValueError(f"TrainConfig: {f} must be in [0, 1), got {v!r}")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"TrainConfig: min_lr must be in [0, lr], got {self.min_lr!r}")

    @classmethod
    def field_names(cls):
        return [f.name for f in fields(cls)]

    @classmethod
    def resumable_names(cls):
        """The fields a resumed run may change (declared with ``resumable``)."""
        return [f.name for f in fields(cls) if f.metadata.get("resumable")]


@dataclass
class TrainResult:
    steps: int                       # steps completed in total
    losses: list = field(default_factory=list)        # (step, train loss) of this run
    val_losses: list = field(default_factory=list)    # (step, val loss) of this run
    best_val: float = math.inf
    best_step: int = -1
    stopped: str = "max_steps"       # max_steps | early_stopping | time_limit | stop_at
    seconds: float = 0.0
    tokens: int = 0


def model_rngs(model) -> dict:
    """Every ``np.random.Generator`` the model's modules hold, by ``module.attribute``."""
    found = {}
    for mname, m in model.named_modules():
        for attr, v in vars(m).items():
            if isinstance(v, np.random.Generator):
                found[f"{mname}.{attr}" if mname else attr] = v
    return found


class Trainer:
    def __init__(self, model, train_batch, val_batch=None, config: TrainConfig | None = None,
                 out_dir: str | None = None, meta: dict | None = None, log=print):
        self.model = model
        self.train_batch = train_batch
        self.val_batch = val_batch
        self.cfg = config or TrainConfig()
        self.out_dir = out_dir
        self.meta = dict(meta or {})
        self.log = log or (lambda *a, **k: None)
        c = self.cfg
        groups = optim.param_groups_for_decay(
            [(n, p) for n, p in model.named_parameters() if p.requires_grad], c.weight_decay)
        self.opt = optim.AdamW(groups, lr=c.lr, betas=(c.beta1, c.beta2), eps=1e-8,
                               weight_decay=c.weight_decay)
        min_lr = c.lr / 10 if c.min_lr is None else c.min_lr
        self.sched = optim.WarmupCosineLR(self.opt, warmup_steps=min(c.warmup_steps,
                                                                     c.max_steps),
                                          total_steps=c.max_steps, min_lr=min_lr)
        self.rng = np.random.default_rng(c.seed)
        self.step = 0                    # steps completed
        self.best_val = math.inf
        self.best_step = -1
        self.bad_evals = 0
        self._best_state = None
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)

    # ------------------------------------------------------------ checkpoints
    def _meta(self) -> dict:
        return dict(self.meta, step=self.step, train_config=asdict(self.cfg),
                    optimizer=self.opt.state_dict()["meta"],
                    scheduler=self.sched.state_dict(),
                    rng={"batches": rng_state(self.rng),
                         "model": {k: rng_state(g) for k, g in model_rngs(self.model).items()}},
                    data={"position": "random windows: the batch Generator's state",
                          "step": self.step},
                    early_stopping={"best_val": _json_float(self.best_val),
                                    "best_step": self.best_step, "bad_evals": self.bad_evals})

    def save(self, name: str) -> str | None:
        if not self.out_dir:
            return None
        return save_checkpoint(self.out_dir, name, self.model.state_dict(),
                               self.opt.state_dict()["arrays"], self._meta())

    def resume(self, path: str) -> "Trainer":
        """Restore everything from the checkpoint at ``path`` (a run folder or a checkpoint
        folder) so that ``fit()`` continues exactly where it stopped."""
        model_arrays, optim_arrays, meta = load_checkpoint(path)
        self.model.load_state_dict(model_arrays)
        self.opt.load_state_dict({"meta": meta["optimizer"], "arrays": optim_arrays})
        self.sched.load_state_dict(meta["scheduler"])
        set_rng_state(self.rng, meta["rng"]["batches"])
        gens = model_rngs(self.model)
        for k, st in meta["rng"].get("model", {}).items():
            if k in gens:
                set_rng_state(gens[k], st)
        self.step = int(meta["step"])
        es = meta.get("early_stopping", {})
        self.best_val = _from_json_float(es.get("best_val"))
        self.best_step = int(es.get("best_step", -1))
        self.bad_evals = int(es.get("bad_evals", 0))
        if self.out_dir:
            self._truncate_metrics(self.step)
        return self

    # ------------------------------------------------------------ metrics
    def _metrics_path(self):
        return os.path.join(self.out_dir, "metrics.jsonl") if self.out_dir else None

    def _write_metric(self, rec: dict) -> None:
        path = self._metrics_path()
        if path:
            with open(path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines past ``step`` (written after the checkpoint a resume starts
        from), so the file reads as one run."""
        path = self._metrics_path()
        if not path or not os.path.exists(path):
            return
        with open(path) as f:
            keep = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= step]
        with open(path, "w") as f:
            f.writelines(keep)

    def evaluate(self) -> float:
        """Mean loss over ``eval_batches`` validation batches (the same ones every time)."""
        if self.val_batch is None:
            return math.nan
        rng = np.random.default_rng(self.cfg.seed + 1_000_003)
        was = self.model.training
        self.model.eval()
        total = 0.0
        with no_grad():
            for _ in range(self.cfg.eval_batches):
                x, y = self.val_batch(rng)
                _, loss = self.model(x, y)
                total += float(loss.data)
        self.model.train(was)
        return total / self.cfg.eval_batches

    # ------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        c = self.cfg
        res = TrainResult(steps=self.step)
        bar = None
        if c.progress:
            try:
                from tqdm import tqdm
                bar = tqdm(total=c.max_steps, initial=self.step, disable=None, leave=False,
                           dynamic_ncols=True)
            except ImportError:          # pragma: no cover - tqdm is a dependency
                bar = None
        t0 = time.perf_counter()
        self.model.train()
        try:
            while self.step < c.max_steps:
                x, y = self.train_batch(self.rng)
                _, loss = self.model(x, y)
                lv = float(loss.data)
                if not math.isfinite(lv):
                    raise TrainingError(self._diverged(f"the loss is {lv}"))
                self.opt.zero_grad()
                loss.backward()
                params = [p for p in self.model.parameters() if p.requires_grad]
                norm = (optim.clip_grad_norm_(params, c.grad_clip) if c.grad_clip > 0
                        else optim.grad_norm(params))
                if not math.isfinite(norm):
                    raise TrainingError(self._diverged(f"the gradient norm is {norm}"))
                lr = self.opt.param_groups[0]["lr"]
                self.opt.step()
                self.sched.step()
                self.step += 1
                res.tokens += int(np.size(x))
                res.losses.append((self.step, lv))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{lv:.4f}", refresh=False)
                if self.step % c.log_every == 0 or self.step == c.max_steps:
                    el = time.perf_counter() - t0
                    self._write_metric({"step": self.step, "loss": lv, "lr": lr,
                                        "grad_norm": norm, "seconds": round(el, 3),
                                        "tokens_per_s": round(res.tokens / max(el, 1e-9), 1)})
                stop = self._stop_reason(t0)
                if self.step % c.eval_every == 0 or self.step == c.max_steps or stop:
                    if self._validate(res):
                        res.stopped = "early_stopping"
                        break
                if stop:
                    res.stopped = stop
                    break
        finally:
            if bar is not None:
                bar.close()
        res.seconds = time.perf_counter() - t0
        res.steps = self.step
        if res.stopped == "early_stopping" and self._best_state is not None:
            self.model.load_state_dict(self._best_state)      # restore the best weights
            self.log(f"early stopping at step {self.step}: restored the best weights "
                     f"(step {self.best_step}, val {self.best_val:.4f})")
        res.best_val, res.best_step = self.best_val, self.best_step
        if self.out_dir:
            self.plot(os.path.join(self.out_dir, "loss.png"))
        return res

    def _stop_reason(self, t0):
        c = self.cfg
        if c.stop_at and self.step >= c.stop_at and self.step < c.max_steps:
            return "stop_at"
        if c.time_limit and time.perf_counter() - t0 >= c.time_limit \
                and self.step < c.max_steps:
            return "time_limit"
        return None

    def _validate(self, res) -> bool:
        """Validate, checkpoint; True when early stopping says stop."""
        c = self.cfg
        val = self.evaluate()
        improved = False
        if not math.isnan(val):
            res.val_losses.append((self.step, val))
            self._write_metric({"step": self.step, "val_loss": val})
            if not math.isfinite(val):
                raise TrainingError(self._diverged(f"the validation loss is {val}"))
            if val < self.best_val:
                self.best_val, self.best_step, self.bad_evals = val, self.step, 0
                improved = True
                if c.patience:
                    self._best_state = {k: v.copy() for k, v in self.model.state_dict().items()}
            else:
                self.bad_evals += 1
        if improved:
            self.save("best")
        self.save("last")
        return bool(c.patience) and self.bad_evals >= c.patience

    def _diverged(self, what: str) -> str:
        where = (f"; the last good checkpoint in {self.out_dir} is untouched"
                 if self.out_dir else "")
        return (f"training stopped at step {self.step + 1}: {what}{where}. Try a lower "
                f"learning rate or gradient clipping")

    # ------------------------------------------------------------ plots
    def plot(self, path: str) -> str | None:
        """Loss curves (train and val against step) from metrics.jsonl, as a PNG."""
        mpath = self._metrics_path()
        if not mpath or not os.path.exists(mpath):
            return None
        recs = [json.loads(ln) for ln in open(mpath) if ln.strip()]
        return plot_metrics(recs, path)


def plot_metrics(records: list, path: str, title: str = "loss") -> str:
    """Train and val loss against step from metrics records, as a PNG at ``path``. Drawn on a
    ``matplotlib.figure.Figure`` (no pyplot state, no backend switch)."""
    from matplotlib.figure import Figure
    tr = [(r["step"], r["loss"]) for r in records if "loss" in r]
    va = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    if tr:
        ax.plot(*zip(*tr), label="train", lw=1)
    if va:
        ax.plot(*zip(*va), "o-", label="val", lw=1.5, ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _json_float(v: float):
    return None if not math.isfinite(v) else float(v)


def _from_json_float(v) -> float:
    return math.inf if v is None else float(v)
