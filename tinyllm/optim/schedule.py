"""Learning-rate schedules: linear warmup, then cosine decay (as in nanoGPT and llm.c).

    step <  warmup:          lr = max_lr * (step + 1) / warmup          # max_lr/warmup ... max_lr
    warmup <= step < total:  r  = (step - warmup) / (total - warmup)    # 0 ... 1
                             lr = min_lr + (max_lr - min_lr) * (1 + cos(pi * r)) / 2
    step >= total:           lr = min_lr

Steps count from 0, the index of the optimizer step the lr is used for. The warmup reaches
max_lr at its last step, the cosine starts there (r = 0), and lr is min_lr from ``total`` on.
"""
from __future__ import annotations

import math
import numbers


def _int(where, what, v, lo):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise ValueError(f"{where}: invalid {what}={v!r} (must be an integer >= {lo})")
    return int(v)


def _check(where, warmup_steps, total_steps, max_lr, min_lr):
    warmup_steps = _int(where, "warmup_steps", warmup_steps, 0)
    total_steps = _int(where, "total_steps", total_steps, 0)
    if total_steps < warmup_steps:
        raise ValueError(f"{where}: total_steps={total_steps} is less than "
                         f"warmup_steps={warmup_steps}")
    for what, v in (("max_lr", max_lr), ("min_lr", min_lr)):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) \
                or v < 0:
            raise ValueError(f"{where}: invalid {what}={v!r} (must be a finite number >= 0)")
    if max_lr is not None and min_lr > max_lr:
        raise ValueError(f"{where}: min_lr={min_lr!r} is above max_lr={max_lr!r}")
    return warmup_steps, total_steps


def warmup_cosine(step: int, max_lr: float, warmup_steps: int, total_steps: int,
                  min_lr: float = 0.0) -> float:
    """The learning rate for optimizer step ``step`` (0-based); see the module docstring."""
    warmup_steps, total_steps = _check("warmup_cosine", warmup_steps, total_steps, max_lr,
                                       min_lr)
    step = _int("warmup_cosine", "step", step, 0)
    if step < warmup_steps:
        return float(max_lr) * (step + 1) / warmup_steps
    if step >= total_steps:
        return float(min_lr)
    r = (step - warmup_steps) / (total_steps - warmup_steps)
    return float(min_lr) + (float(max_lr) - float(min_lr)) * 0.5 * (1.0 + math.cos(math.pi * r))


class WarmupCosineLR:
    """Set every param group's ``lr`` from ``warmup_cosine`` each step, like a PyTorch
    scheduler::

        sched = WarmupCosineLR(opt, warmup_steps=100, total_steps=5000, min_lr=3e-5)
        for step in range(5000):
            loss.backward(); opt.step(); opt.zero_grad()
            sched.step()                 # sets the lr for the next step

    On construction it sets the lr of step 0. The peak of group i is ``max_lr`` or, when that
    is None, the group's lr at construction (kept as ``base_lrs``, so groups may have
    different peaks). ``min_lr`` is the same for every group. ``state_dict()`` is JSON-able.
    """

    def __init__(self, optimizer, warmup_steps: int, total_steps: int, max_lr=None,
                 min_lr: float = 0.0):
        self.optimizer = optimizer
        self.warmup_steps, self.total_steps = _check("WarmupCosineLR", warmup_steps,
                                                     total_steps, max_lr, min_lr)
        self.max_lr = max_lr
        self.min_lr = float(min_lr)
        self.base_lrs = [float(max_lr if max_lr is not None else g["lr"])
                         for g in optimizer.param_groups]
        for b in self.base_lrs:
            if b < self.min_lr:
                raise ValueError(f"WarmupCosineLR: min_lr={min_lr!r} is above a group's "
                                 f"peak lr {b!r}")
        self.last_step = 0
        self._apply()

    def lr_at(self, step: int) -> list:
        """The lr of every group at ``step``."""
        return [warmup_cosine(step, b, self.warmup_steps, self.total_steps, self.min_lr)
                for b in self.base_lrs]

    def _apply(self):
        for g, lr in zip(self.optimizer.param_groups, self.lr_at(self.last_step)):
            g["lr"] = lr

    def step(self) -> None:
        """Advance one step and write its lr into the optimizer's groups."""
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"type": type(self).__name__, "last_step": self.last_step,
                "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "max_lr": None if self.max_lr is None else float(self.max_lr),
                "min_lr": self.min_lr, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, d: dict) -> None:
        """Restore ``state_dict()`` and set the optimizer's lrs for the restored step."""
        where = "WarmupCosineLR.load_state_dict"
        if not isinstance(d, dict) or d.get("type") != type(self).__name__:
            raise ValueError(f"{where}: not a {type(self).__name__} state "
                             f"(type {d.get('type') if isinstance(d, dict) else d!r})")
        if len(d["base_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(f"{where}: the state has {len(d['base_lrs'])} param groups, the "
                             f"optimizer has {len(self.optimizer.param_groups)}")
        warmup, total = _check(where, d["warmup_steps"], d["total_steps"], d["max_lr"],
                               d["min_lr"])
        last = _int(where, "last_step", d["last_step"], 0)
        self.warmup_steps, self.total_steps = warmup, total
        self.max_lr, self.min_lr = d["max_lr"], float(d["min_lr"])
        self.base_lrs = [float(b) for b in d["base_lrs"]]
        self.last_step = last
        self._apply()
