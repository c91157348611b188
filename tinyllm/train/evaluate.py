"""Score a trained checkpoint (``tinyllm eval``): what a run reached, measured the same way
every time.

GPT on text: a fixed, seeded set of ``n`` windows of ``T = block_size`` tokens from the ids
(window starts ``np.random.default_rng(seed).integers(0, N - T, n)``), and over their
n T predictions (each position predicts the next token)

    loss        = -(1 / nT) sum log p(y_t | x_<=t)          nats per token
    perplexity  = exp(loss)
    bits/unit   = (sum of the nT losses) / (ln 2 * units)   units = characters of the
                                                            predicted tokens (char tokenizer)
                                                            or their bytes (BPE)

Bits per character (or byte) does not depend on the tokenizer, so a char run and a BPE run
can be compared on it; nats per token cannot.

Attention RNN on its task: exact match of the greedily decoded answers on the task's held-out
split (the same split ``tinyllm train`` reports at the end).

Each ``evaluate_*`` returns an ``Evaluation``: a list of named metrics with units, printed as
a table. Adding a metric (model size, decode speed, ...) is one more ``add`` call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..autograd import no_grad

EVAL_WINDOWS = 64       # windows scored when the caller does not say

__all__ = ["EVAL_WINDOWS", "Metric", "Evaluation", "sample_windows", "units_per_token",
           "evaluate_gpt", "evaluate_rnn"]


@dataclass
class Metric:
    name: str
    value: float
    unit: str = ""
    fmt: str = ".4f"

    def line(self, width: int) -> str:
        v = format(self.value, self.fmt)
        return f"{self.name:<{width}}{v:>12}  {self.unit}".rstrip()


@dataclass
class Evaluation:
    """What was measured (``what``: one line) and the metrics, in print order."""

    what: str
    metrics: list = field(default_factory=list)

    def add(self, name: str, value: float, unit: str = "", fmt: str = ".4f") -> None:
        self.metrics.append(Metric(name, float(value), unit, fmt))

    def __getitem__(self, name: str) -> float:
        for m in self.metrics:
            if m.name == name:
                return m.value
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {m.name: m.value for m in self.metrics}

    def table(self) -> str:
        w = max(len(m.name) for m in self.metrics) + 2
        return "\n".join([self.what] + [m.line(w) for m in self.metrics])


def sample_windows(N: int, T: int, n: int, seed: int = 0) -> np.ndarray:
    """n window starts in [0, N - T), the same for the same (N, T, n, seed). A window is
    ids[s : s + T] as input and ids[s + 1 : s + T + 1] as targets."""
    if N < T + 1:
        raise ValueError(f"sample_windows: {N} tokens cannot hold a window of {T} + 1")
    return np.random.default_rng(seed).integers(0, N - T, size=n)


def units_per_token(tokenizer) -> tuple[np.ndarray, str]:
    """(length of each token id in characters or bytes, "char" or "byte"). A BPE token is a
    run of bytes (``token_bytes``); any other tokenizer is scored per character of its
    decoded token."""
    V = tokenizer.vocab_size
    if hasattr(tokenizer, "token_bytes"):
        return np.array([len(tokenizer.token_bytes(i)) for i in range(V)], np.int64), "byte"
    return np.array([len(tokenizer.decode([i])) for i in range(V)], np.int64), "char"


def evaluate_gpt(model, tokenizer, ids: np.ndarray, windows: int = EVAL_WINDOWS,
                 seed: int = 0, batch_size: int = 16, what: str = "") -> Evaluation:
    """Loss, perplexity and bits per character (or byte) of ``model`` on ``windows`` seeded
    windows of ``ids`` (1-D int). Windows are ``block_size`` long, or shorter when the text
    is (at least 2 tokens are needed)."""
    ids = np.asarray(ids, np.int64)
    if ids.ndim != 1 or len(ids) < 2:
        raise ValueError(f"evaluate_gpt: need at least 2 tokens, got {len(ids)}")
    T = min(model.config.block_size, len(ids) - 1)
    starts = sample_windows(len(ids), T, windows, seed)
    units, unit = units_per_token(tokenizer)
    offs = np.arange(T)
    nats, n_units = 0.0, 0
    with no_grad():
        model_mode = model.training
        model.eval()
        try:
            for lo in range(0, windows, batch_size):
                s = starts[lo:lo + batch_size, None]                       # (b, 1)
                x, y = ids[s + offs], ids[s + offs + 1]                    # (b, T) each
                _, loss = model(x, y)                                      # mean over b T
                nats += float(loss.data) * y.size
                n_units += int(units[y].sum())
        finally:
            model.train(model_mode)
    n_tok = windows * T
    ev = Evaluation(what or f"{windows} windows of {T} tokens (seed {seed}), "
                            f"{n_tok:,} predictions")
    loss = nats / n_tok
    ev.add("loss", loss, "nats/token")
    ev.add("perplexity", math.exp(loss), "", ".3f")
    ev.add(f"bits/{unit}", nats / math.log(2) / max(n_units, 1), f"bits per {unit}")
    return ev


def evaluate_rnn(model, held, what: str = "") -> Evaluation:
    """Exact match (percent) of the greedily decoded answers on ``held`` (a TaskData)."""
    from .seq_tasks import evaluate_exact_match
    ev = Evaluation(what or f"{len(held)} held-out examples, greedy decoding")
    ev.add("exact match", 100.0 * evaluate_exact_match(model, held), "%", ".1f")
    return ev
