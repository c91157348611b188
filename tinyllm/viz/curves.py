"""Loss curves: train and validation cross-entropy against step, from what a run records.

A run records its losses in two places (``tinyllm.train.trainer``): the ``TrainResult``
that ``Trainer.fit()`` returns (``losses`` and ``val_losses``: lists of (step, loss)), and
the run folder's ``metrics.jsonl`` (one JSON object a line, ``{"step", "loss"}`` for a
training step and ``{"step", "val_loss"}`` at an evaluation). ``plot_loss_curves`` reads any
of them, or several runs at once as {name: source}, into one Figure (``new_figure``: no
pyplot).
"""
from __future__ import annotations

import json
import os

from ..autograd.figures import new_figure

__all__ = ["loss_history", "plot_loss_curves"]


def _read_metrics(path: str) -> list:
    try:
        with open(path) as f:
            lines = [ln for ln in f if ln.strip()]
    except OSError as e:
        raise ValueError(f"loss_history: cannot read {path!r}: {e.strerror or e}") from None
    try:
        return [json.loads(ln) for ln in lines]
    except json.JSONDecodeError as e:
        raise ValueError(f"loss_history: {path!r} is not JSON lines ({e.msg}, line "
                         f"{e.lineno})") from None


def loss_history(source) -> tuple:
    """(train, val): two lists of (step, loss) from a ``TrainResult``, a run folder (its
    ``metrics.jsonl``), a metrics.jsonl path, or a list of metrics records (dicts)."""
    if hasattr(source, "losses") and hasattr(source, "val_losses"):
        return ([(int(s), float(v)) for s, v in source.losses],
                [(int(s), float(v)) for s, v in source.val_losses])
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            path = os.path.join(path, "metrics.jsonl")
            if not os.path.exists(path):
                raise ValueError(f"loss_history: {os.fspath(source)!r} holds no metrics.jsonl "
                                 f"(is it a run folder written by `tinyllm train`?)")
        source = _read_metrics(path)
    if isinstance(source, (list, tuple)) and all(isinstance(r, dict) for r in source):
        tr = [(int(r["step"]), float(r["loss"])) for r in source
              if r.get("loss") is not None and "step" in r]
        va = [(int(r["step"]), float(r["val_loss"])) for r in source
              if r.get("val_loss") is not None and "step" in r]
        return tr, va
    raise TypeError(f"loss_history: expected a TrainResult, a run folder, a metrics.jsonl "
                    f"path or a list of metrics dicts, got {type(source).__name__}")


def plot_loss_curves(source, *, title="loss curves", ylabel="cross-entropy (nats)",
                     log_y: bool = False):
    """Train (line) and validation (dots) loss against step. ``source``: what
    ``loss_history`` reads, or a dict {name: source} for several runs on one axes.
    Returns the Figure."""
    runs = source if isinstance(source, dict) else {"": source}
    if not runs:
        raise ValueError("plot_loss_curves: no runs given")
    fig = new_figure(figsize=(6.4, 4))
    ax = fig.subplots()
    drew = False
    for i, (name, src) in enumerate(runs.items()):
        tr, va = loss_history(src)
        colour = f"C{i % 10}"
        pre = f"{name} " if name else ""
        if tr:
            ax.plot(*zip(*tr), color=colour, lw=1, alpha=0.8, label=f"{pre}train")
        if va:
            ax.plot(*zip(*va), "o-", color=colour, lw=1.5, ms=3, mfc="white",
                    label=f"{pre}val")
        drew = drew or bool(tr or va)
    if not drew:
        raise ValueError("plot_loss_curves: the source holds no losses")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
