"""The training loop: batches, AdamW with warmup + cosine, clipping, validation, early
stopping, metrics, loss curves and safe resumable checkpoints.

    trainer = Trainer(model, train_batch, val_batch, TrainConfig(max_steps=2000),
                      out_dir="runs/gpt", meta={"model": {...}, "tokenizer": {...}})
    result = trainer.fit()                 # or trainer.resume("runs/gpt"); trainer.fit()

``train_batch(rng) -> (x, y)`` draws one batch from the trainer's seeded Generator;
``val_batch(rng)`` is called with a fresh Generator of a fixed seed at every validation, so
each validation sees the same batches and val losses are comparable across steps.
``model(x, y)`` must return ``(logits, loss)``.

A fresh run (step 0, not resumed) starts ``metrics.jsonl`` afresh; ``resume`` keeps its lines
up to the checkpoint's step. Resuming is bitwise: a checkpoint holds the weights, the optimiser's moments and steps, the
schedule, the batch Generator's state (the data position), every Generator the model owns
(dropout), the early-stopping counters and the step. Running N steps straight, or k steps,
then ``resume`` in a new process, then the rest, gives the same losses and the same weights
(at the same thread count: the kernels split work into fixed chunks, so their sums do not
depend on timing).

Gradient accumulation (``TrainConfig.grad_accum`` = K): one optimiser step draws K micro-batches
of B in turn and backpropagates each loss_i / K into the same ``.grad`` (zeroed once per step),
so the step's gradient is

    g = (1/K) sum_i grad L_i  =  grad of the mean loss over the K·B sequences

(when every micro-batch has as many target tokens, as GPT windows do). Clipping and the
non-finite checks see that accumulated g; the logged loss is the mean of the K losses; the
schedule, step counts, checkpoints and tokens/s count optimiser steps (tokens: all K batches).
One step is then one step of a K·B batch: same loss, gradient norm and update, to
summation-order rounding. Summing the losses instead (the known pitfall) would make g K times
too large, and clipping K times too weak.

Data-parallel (``TrainConfig.distributed``, under ``mpiexec -n N``; ``tinyllm.train.distributed``
has the math): every rank draws the same global batch and keeps its B/N rows, the backward is
seeded 1/(K·N), one all-reduce per gradient bucket sums the ranks' gradients, and clipping and
the step follow on every rank alike. Rank 0 alone logs and writes files. N ranks x K
micro-batches of B/N rows = one process with K micro-batches of B = one batch of K·B.

A NaN or Inf loss (or gradient norm) stops training with ``TrainingError`` before the step is
applied; no checkpoint is written after it, so the last good one stays as it was.

Ctrl-C (SIGINT, or a ``KeyboardInterrupt`` from a notebook's interrupt) during ``fit()`` is
taken at the next step boundary (a ``KeyboardInterrupt`` raised inside a step's forward or
backward pass puts the step back: the batch and dropout Generators return to their state
before it): the trainer writes ``last/`` (atomically, as at a
validation), says so, and re-raises ``KeyboardInterrupt`` (``tinyllm train`` then exits 130).
``resume`` continues from that step and gives the same losses and weights as a run that was
never interrupted. A second Ctrl-C while the first is being handled stops at once.

Progress. ``log`` (default ``print``; ``None`` for silence) receives one line at every
validation, in nanoGPT's manner::

    step 200/2000: train loss 1.8765, val loss 1.9012 (2.743 bits/char), 45.2 ms/step, \
45,300 tokens/s, lr 1.95e-03, saved checkpoint

``train loss`` is the mean training loss of the steps since the previous validation, ms/step
and tokens/s are measured over those steps, ``lr`` is the learning rate of the last step,
and ``saved checkpoint`` says ``last/`` (and ``best/`` on a new best) was written. The bits
figure appears when the trainer is told what one token stands for (``unit=("char", 1.0)``:
bits per character; ``unit=("byte", bytes per token)``: bits per byte, for BPE) and is
``val loss / ln 2 / units per token``. With ``sample`` (a function of the model returning
text) and ``TrainConfig.sample_every`` = k, every k-th validation also logs a short sample.
``progress`` shows a tqdm bar on a terminal (steps, loss, tokens/s, ETA) that stays on screen
when training ends; the log lines are written above it.
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


def resumable(default, invocation: bool = False, **kw):
    """A dataclass field that a resumed run (``tinyllm train --resume``) may change: how long
    to go on, how often to validate and log. Every other setting of a run must stay as the
    checkpoint has it. A resumed run keeps the checkpoint's value of a resumable setting
    unless it is given again explicitly; an ``invocation`` setting (a progress bar, a stop
    after so many seconds or at a step of this process) belongs to one process, not to the
    run, so a resume takes this invocation's value (the default unless given)."""
    return field(default=default, metadata={"resumable": True, "invocation": invocation},
                 **kw)


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
    time_limit: float = resumable(0.0, invocation=True)  # seconds of training; 0 = no limit
    stop_at: int = resumable(0, invocation=True)  # stop (as if interrupted) after this step
    progress: bool = resumable(True, invocation=True)  # tqdm bar (only on a terminal)
    sample_every: int = resumable(5)     # log a sample every this many validations; 0 = never
    # micro-batches of batch_size per optimiser step (their gradients averaged). Not
    # resumable: it is part of what one step means (its effective batch, K draws of the
    # batch Generator), so a resumed run that changed it would match no uninterrupted run.
    grad_accum: int = 1
    # data-parallel over MPI (tinyllm.train.distributed): run under mpiexec -n N. Per
    # process, like the bucket size of the gradient all-reduce (MiB): neither changes the math
    distributed: bool = resumable(False, invocation=True)
    bucket_mb: float = resumable(25.0, invocation=True)
    # where the model trains: "cpu" or "cuda" (the Trainer moves the model there; batches
    # stay host int arrays, copied over by the first op that reads them). Per process: a
    # checkpoint holds host arrays, so a run may resume on either device
    device: str = resumable("cpu", invocation=True)

    def __post_init__(self):
        for f in ("max_steps", "eval_every", "eval_batches", "log_every", "grad_accum"):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TrainConfig: {f} must be a positive integer, got {v!r}")
        for f in ("warmup_steps", "patience", "stop_at", "seed", "sample_every"):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"TrainConfig: {f} must be a non-negative integer, got {v!r}")
        if isinstance(self.bucket_mb, bool) or not isinstance(self.bucket_mb, (int, float)) \
                or not math.isfinite(self.bucket_mb) or self.bucket_mb <= 0:
            raise ValueError(f"TrainConfig: bucket_mb must be a finite number > 0, got "
                             f"{self.bucket_mb!r}")
        for f in ("weight_decay", "grad_clip", "time_limit"):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"TrainConfig: {f} must be a finite number >= 0, got {v!r}")
        lr = self.lr                     # one rule for every bad lr: 0, negative, inf, nan
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) \
                or lr <= 0:
            raise ValueError(f"TrainConfig: lr must be a finite number > 0, got {lr!r}")
        for f in ("beta1", "beta2"):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ValueError(f"TrainConfig: {f} must be in [0, 1), got {v!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"TrainConfig: device must be 'cpu' or 'cuda', got "
                             f"{self.device!r}")
        if self.device == "cuda" and self.distributed:
            raise ValueError("TrainConfig: distributed training runs on cpu; drop "
                             "device=cuda or distributed")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"TrainConfig: min_lr must be in [0, lr], got {self.min_lr!r}")

    @classmethod
    def field_names(cls):
        return [f.name for f in fields(cls)]

    @classmethod
    def resumable_names(cls):
        """The fields a resumed run may change (declared with ``resumable``)."""
        return [f.name for f in fields(cls) if f.metadata.get("resumable")]

    @classmethod
    def invocation_names(cls):
        """The resumable fields that belong to one process, not to the run."""
        return [f.name for f in fields(cls) if f.metadata.get("invocation")]


@dataclass
class TrainResult:
    steps: int                       # steps completed in total
    losses: list = field(default_factory=list)        # (step, train loss) of this run
    val_losses: list = field(default_factory=list)    # (step, val loss) of this run
    best_val: float = math.inf
    best_step: int = -1
    stopped: str = "max_steps"       # max_steps | early_stopping | time_limit | stop_at
    #                                  (an interrupt raises KeyboardInterrupt instead)
    seconds: float = 0.0
    tokens: int = 0
    grad_norms: list = field(default_factory=list)    # (step, norm before clipping)


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
                 out_dir: str | None = None, meta: dict | None = None, log=print,
                 unit: tuple | None = None, sample=None):
        """``log``: a function of one string for the progress lines (None: silent).
        ``unit``: (name, units per token), e.g. ("char", 1.0), for bits per unit beside the
        val loss. ``sample``: a function of the model returning a short text, logged every
        ``config.sample_every`` validations."""
        self.model = model
        self.train_batch = train_batch
        self.val_batch = val_batch
        self.cfg = config or TrainConfig()
        self.out_dir = out_dir
        self.meta = dict(meta or {})
        self.log = log or (lambda *a, **k: None)
        self.unit = unit
        self.sample = sample
        self._bar = None
        self._sigint = False             # a Ctrl-C is waiting for the step boundary
        self._resumed = False
        c = self.cfg
        if c.device != "cpu":            # in place: the same Parameters, now on the device
            model.to(c.device)
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
        self.dist = None                 # an MPIGroup (tinyllm.train.distributed) when
        self.rank, self.world = 0, 1     # config.distributed
        self._agreed = {"sigint": False, "time": False}     # the ranks' stop flags
        if c.distributed:
            from .distributed import MPIGroup, rank_stream
            self.dist = MPIGroup(c.bucket_mb)
            self.rank, self.world = self.dist.rank, self.dist.world
            for g in model_rngs(model).values():
                rank_stream(g, self.rank)    # the ranks' dropout masks differ
            if self.rank:                # rank 0 alone logs, samples and writes files
                self.log, self.sample = (lambda *a, **k: None), None
        if out_dir and self.rank == 0:
            os.makedirs(out_dir, exist_ok=True)

    # ------------------------------------------------------------ checkpoints
    def _meta(self) -> dict:
        mine = {k: rng_state(g) for k, g in model_rngs(self.model).items()}
        rng = {"batches": rng_state(self.rng), "model": mine}
        if self.dist is not None:        # every rank's dropout streams, gathered on rank 0
            rng["model_by_rank"] = self.dist.gather(mine)
        return dict(self.meta, step=self.step, train_config=asdict(self.cfg),
                    optimizer=self.opt.state_dict()["meta"],
                    scheduler=self.sched.state_dict(), rng=rng,
                    data={"position": "random windows: the batch Generator's state",
                          "step": self.step},
                    early_stopping={"best_val": _json_float(self.best_val),
                                    "best_step": self.best_step, "bad_evals": self.bad_evals})

    def save(self, name: str) -> str | None:
        """Write the checkpoint ``name`` (rank 0; distributed, every rank must call it)."""
        if not self.out_dir:
            return None
        meta = self._meta()
        path = None
        if self.rank == 0:
            path = save_checkpoint(self.out_dir, name, self.model.state_dict(),
                                   self.opt.state_dict()["arrays"], meta)
        if self.dist is not None:        # no rank goes on (and perhaps fails) before the
            self.dist.barrier()          # checkpoint is complete: "last" is this step's
        return path

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
        if self.dist is not None:
            from .distributed import rank_stream
            by_rank = meta["rng"].get("model_by_rank")
            if by_rank is not None and len(by_rank) == self.world:
                for k, st in by_rank[self.rank].items():
                    if k in gens:
                        set_rng_state(gens[k], st)
            else:                        # another N: rank 0's streams, jumped (not bitwise)
                for g in gens.values():
                    rank_stream(g, self.rank)
        self.step = int(meta["step"])
        es = meta.get("early_stopping", {})
        self.best_val = _from_json_float(es.get("best_val"))
        self.best_step = int(es.get("best_step", -1))
        self.bad_evals = int(es.get("bad_evals", 0))
        self._resumed = True
        if self.out_dir:
            self._truncate_metrics(self.step)
        return self

    # ------------------------------------------------------------ metrics
    def _metrics_path(self):
        return (os.path.join(self.out_dir, "metrics.jsonl") if self.out_dir and self.rank == 0
                else None)

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
        """Mean loss over ``eval_batches`` validation batches (the same ones every time).
        Distributed, rank r evaluates batches r, r + N, ... and the sum is all-reduced."""
        if self.val_batch is None:
            return math.nan
        rng = np.random.default_rng(self.cfg.seed + 1_000_003)
        was = self.model.training
        self.model.eval()
        total = 0.0
        with no_grad():
            for i in range(self.cfg.eval_batches):
                x, y = self.val_batch(rng)       # every rank draws every batch
                if i % self.world != self.rank:
                    continue
                _, loss = self.model(x, y)
                total += float(loss.data)
        self.model.train(was)
        if self.dist is not None:
            total = self.dist.sum(total)
        return total / self.cfg.eval_batches

    # ------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        """Train to ``max_steps`` (or an earlier stop); see the module docstring for the log
        lines, the progress bar and what Ctrl-C does."""
        c = self.cfg
        res = TrainResult(steps=self.step)
        if self.step == 0 and not self._resumed:
            self._truncate_metrics(0)    # a fresh run: an old metrics.jsonl is not joined
        self._bar = bar = self._make_bar()
        self._t0 = t0 = time.perf_counter()
        self._interval_start()
        self.model.train()
        self._sigint = False
        self._phase = "boundary"         # boundary | forward (undoable) | update (not)
        self._agreed = {"sigint": False, "time": False}
        gens = [self.rng] + list(model_rngs(self.model).values())
        if self.dist is not None:
            self.dist.broadcast_parameters(list(self.model.parameters()))
            import socket
            who = self.dist.gather((os.getpid(), socket.gethostname()))
            if self.rank == 0:           # mpiexec names a rank that dies by its pid
                self._emit(f"distributed: {self.world} ranks: " + ", ".join(
                    f"rank {r} pid {pid} on {host}" for r, (pid, host) in enumerate(who)))
        restore = self._catch_sigint()
        try:
            while self.step < c.max_steps:
                if self._sigint if self.dist is None else self._agreed["sigint"]:
                    raise KeyboardInterrupt
                # the batch and dropout Generators move from here: keep their states, so
                # an interrupt before the update can put the step back
                self._snap = [(g, rng_state(g)) for g in gens]
                self._phase = "forward"
                lv, ntok = self._gradients()
                params = [p for p in self.model.parameters() if p.requires_grad]
                norm = (optim.clip_grad_norm_(params, c.grad_clip) if c.grad_clip > 0
                        else optim.grad_norm(params))
                if not math.isfinite(norm):
                    raise TrainingError(self._diverged(f"the gradient norm is {norm}"))
                lr = self.opt.param_groups[0]["lr"]
                self._phase = "update"   # the weights change: no way back from here
                self.opt.step()
                self.sched.step()
                self.step += 1
                self._phase = "boundary"
                self._last_lr = lr
                res.tokens += ntok
                res.losses.append((self.step, lv))
                res.grad_norms.append((self.step, norm))
                self._iv["tokens"] += ntok
                self._iv["losses"].append(lv)
                if bar is not None:
                    el = time.perf_counter() - t0
                    bar.update(1)
                    bar.set_postfix(loss=f"{lv:.4f}",
                                    tok_s=f"{res.tokens / max(el, 1e-9):,.0f}", refresh=False)
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
            if self._sigint and self.dist is None:   # Ctrl-C during the last validation
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            if self.dist is not None and self._phase != "boundary":
                self._abort("interrupted inside a step (the ranks agree on a Ctrl-C only at "
                            "a step boundary)")
            self._on_interrupt()
            raise
        except TrainingError:            # every rank raises it at the same step
            raise
        except Exception as e:
            if self.dist is not None:    # one rank failing: stop them all, no hang
                self._abort(f"{type(e).__name__}: {e}")
            raise
        finally:
            restore()
            if bar is not None:
                bar.close()
            self._bar = None
        res.seconds = time.perf_counter() - t0
        res.steps = self.step
        if res.stopped == "early_stopping" and self._best_state is not None:
            self.model.load_state_dict(self._best_state)      # restore the best weights
            self._emit(f"early stopping at step {self.step}: restored the best weights "
                       f"(step {self.best_step}, val {self.best_val:.4f})")
        res.best_val, res.best_step = self.best_val, self.best_step
        if self.out_dir:
            self.plot(os.path.join(self.out_dir, "loss.png"))
        return res

    def _gradients(self):
        """One optimiser step's gradient, accumulated into ``.grad``: K = grad_accum
        micro-batches, each drawn by ``train_batch(self.rng)`` in turn, each backward seeded
        with 1/K (the gradient of loss_i / K), so .grad ends as the mean of the K gradients,
        the gradient of the mean loss over K·B sequences when every micro-batch has as many
        target tokens. Distributed over N ranks: each rank keeps its B/N rows of every
        micro-batch, the seed is 1/(K·N), and the all-reduce (a sum) makes .grad the mean
        over the ranks too. Returns (the mean of the K (·N) losses, the tokens the K
        batches hold, all ranks' together)."""
        K, N = self.cfg.grad_accum, self.world
        self.opt.zero_grad()             # once per optimiser step; backward adds to .grad
        total, ntok = 0.0, 0
        for _ in range(K):
            x, y = self.train_batch(self.rng)
            ntok += int(np.size(x))      # distributed: the global batch's tokens
            if self.dist is not None:    # every rank drew the same batch: keep my rows
                from .distributed import shard
                x, y = shard(x, self.rank, N), shard(y, self.rank, N)
            _, loss = self.model(x, y)
            lv = float(loss.data)
            if not math.isfinite(lv) and self.dist is None:   # (distributed: below, agreed)
                raise TrainingError(self._diverged(f"the loss is {lv}"))
            # d(loss/(K·N))/d(loss) = 1/(K·N): exact for K and N powers of two, so then each
            # micro-batch's gradient is its batch's gradient scaled without rounding
            loss.backward(np.full(loss.shape, 1.0 / (K * N), loss.dtype))
            total += lv
        if self.dist is not None:        # the sum over the ranks: the average gradient
            c = self.cfg
            late = (self.rank == 0 and c.time_limit > 0
                    and time.perf_counter() - self._t0 >= c.time_limit)
            params = [p for p in self.model.parameters() if p.requires_grad]
            total, sig, late = self.dist.allreduce_gradients(
                params, [total, float(self._sigint), float(late)])
            self._agreed = {"sigint": sig > 0, "time": late > 0}
            if not math.isfinite(total):
                raise TrainingError(self._diverged(f"the loss is {total / (K * N)} (the mean "
                                                   f"over the {N} ranks)"))
        return total / (K * N), ntok

    def _abort(self, what: str) -> None:
        """Distributed: say which rank failed and end every rank (MPI_Abort)."""
        self.dist.abort(f"tinyllm: rank {self.rank} of {self.world} failed at step "
                        f"{self.step + 1}: {what}; stopping all ranks (the last checkpoint "
                        f"rank 0 wrote is intact: --resume continues from it)")

    def _make_bar(self):
        """A tqdm bar on a terminal (None when progress is off); it stays on screen."""
        if not self.cfg.progress or self.rank:
            return None
        try:
            from tqdm import tqdm
        except ImportError:              # pragma: no cover - tqdm is a dependency
            return None
        return tqdm(total=self.cfg.max_steps, initial=self.step, disable=None, leave=True,
                    dynamic_ncols=True, unit="step")

    def _emit(self, line: str) -> None:
        """One progress line: above the bar when one is drawn and the log is ``print``."""
        bar = self._bar
        if bar is not None and not bar.disable and self.log is print:
            bar.write(line)
        else:
            self.log(line)

    def _catch_sigint(self):
        """Make Ctrl-C wait for the step boundary (main thread only; a process that ignores
        SIGINT keeps ignoring it). Returns the function that puts the old handler back."""
        import signal
        import threading
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        prev = signal.getsignal(signal.SIGINT)
        if prev in (signal.SIG_IGN, None):
            return lambda: None

        def on_sigint(signum, frame):
            if self._sigint:             # the second Ctrl-C: stop now
                raise KeyboardInterrupt
            self._sigint = True          # the loop raises it at the next step boundary

        signal.signal(signal.SIGINT, on_sigint)
        return lambda: signal.signal(signal.SIGINT, prev)

    def _on_interrupt(self) -> None:
        """Save ``last/`` when the interrupt came at a step boundary, and say so."""
        if self._phase == "update":      # only without the SIGINT handler (another thread)
            self._emit(f"interrupted during the update of step {self.step + 1}: nothing "
                       f"saved (the last checkpoint is as it was)")
            return
        if self._phase == "forward":     # undo the half step: the Generators go back
            for g, st in self._snap:
                set_rng_state(g, st)
            self._phase = "boundary"
        if not self.out_dir:
            self._emit(f"interrupted at step {self.step} (no out_dir: nothing saved)")
            return
        path = self.save("last")
        self._emit(f"interrupted at step {self.step}: saved checkpoint {path}; resume from it "
                   f"to continue")
        self.plot(os.path.join(self.out_dir, "loss.png"))

    def _interval_start(self) -> None:
        """Start measuring the steps up to the next validation (for its log line)."""
        self._iv = {"t": time.perf_counter(), "step": self.step, "tokens": 0, "losses": []}

    def _stop_reason(self, t0):
        c = self.cfg
        if c.stop_at and self.step >= c.stop_at and self.step < c.max_steps:
            return "stop_at"
        late = (self._agreed["time"] if self.dist is not None     # rank 0's clock decides
                else time.perf_counter() - t0 >= c.time_limit)
        if c.time_limit and late and self.step < c.max_steps:
            return "time_limit"
        return None

    def _validate(self, res) -> bool:
        """Validate, checkpoint, log a line (and every ``sample_every`` validations a
        sample); True when early stopping says stop."""
        c = self.cfg
        now = time.perf_counter()
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
        saved = self.save("last") is not None
        self._emit(self.eval_line(val, now, saved, improved))
        if self.sample is not None and c.sample_every and (
                self.step % (c.eval_every * c.sample_every) == 0 or self.step == c.max_steps):
            was, dev = self.model.training, self.model.device
            self.model.eval()
            if dev != "cpu":             # generation (tinyllm.infer) runs on host arrays
                self.model.to("cpu")
            try:
                with no_grad():
                    text = self.sample(self.model)
            finally:
                self.model.train(was)
                if dev != "cpu":         # back, in place: the optimiser's Parameters
                    self.model.to(dev)
            self._emit(f"sample at step {self.step}: {text!r}")
        self._interval_start()
        return bool(c.patience) and self.bad_evals >= c.patience

    def bits(self, nats: float):
        """(bits per unit, unit name) of a loss in nats per token, or None without ``unit``:
        bits/unit = nats / ln 2 / (units per token)."""
        if not self.unit or not math.isfinite(nats):
            return None
        name, per_token = self.unit
        return nats / math.log(2) / per_token, name

    def eval_line(self, val: float, now: float, saved: bool, improved: bool = False) -> str:
        """The log line of a validation at ``self.step`` (``now``: when training paused)."""
        iv = self._iv
        n = self.step - iv["step"]
        dt = max(now - iv["t"], 1e-9)
        parts = []
        if iv["losses"]:
            parts.append(f"train loss {float(np.mean(iv['losses'])):.4f}")
        if not math.isnan(val):
            b = self.bits(val)
            parts.append(f"val loss {val:.4f}" + (f" ({b[0]:.3f} bits/{b[1]})" if b else ""))
        if n:
            parts.append(f"{dt / n * 1e3:.1f} ms/step")
            parts.append(f"{iv['tokens'] / dt:,.0f} tokens/s")
        lr = getattr(self, "_last_lr", None)
        if lr is not None:
            parts.append(f"lr {lr:.2e}")
        if saved:
            parts.append("saved checkpoint" + (" (new best)" if improved else ""))
        return f"step {self.step}/{self.cfg.max_steps}: " + ", ".join(parts)

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
    from ..autograd.figures import new_figure
    tr = [(r["step"], r["loss"]) for r in records if "loss" in r]
    va = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig = new_figure(figsize=(6, 4))
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
