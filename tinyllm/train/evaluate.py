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

Inference figures (GPT), the columns of a compression table:

- ``stored_bytes(folder)``: the model's size as stored, the bytes of its array files
  (``model.safetensors``; the optimiser's state is not the model);
- ``decode_speed(model, ...)``: tokens/s of greedy KV-cache decoding at batch 1, from a
  fixed prompt for a fixed number of tokens, the median of a few timed rounds after one
  untimed warm-up;
- ``compare_gpt(model, reference, ...)``: the loss difference against a reference model on
  the *same* windows, paired (per window d_w = loss_w(model) - loss_w(reference); the mean
  and its standard error sd(d) / sqrt(n), far smaller than either loss's own spread), and
  how often the two agree on the greedy next token along the reference's own greedy
  continuation (teacher-forced: each position sees the reference's tokens before it, so one
  early disagreement does not count twice), plus the length of the prefix both greedy
  continuations share.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..autograd import no_grad

EVAL_WINDOWS = 64       # windows scored when the caller does not say

__all__ = ["EVAL_WINDOWS", "Metric", "Evaluation", "sample_windows", "units_per_token",
           "evaluate_gpt", "evaluate_rnn", "window_losses", "stored_bytes", "decode_speed",
           "greedy_agreement", "compare_gpt", "fixed_prompt"]


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


# ------------------------------------------------------------------ inference figures (GPT)

def _log_softmax_rows(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def window_losses(model, ids: np.ndarray, windows: int = EVAL_WINDOWS, seed: int = 0
                  ) -> np.ndarray:
    """The mean loss (nats/token) of each of the seeded windows ``sample_windows`` picks
    (the windows of ``evaluate_gpt``): (windows,) float64."""
    ids = np.asarray(ids, np.int64)
    T = min(model.config.block_size, len(ids) - 1)
    starts = sample_windows(len(ids), T, windows, seed)
    V = model.config.vocab_size
    b = max(1, min(16, (1 << 22) // (T * V)))        # at most ~4M logits at a time
    offs = np.arange(T)
    out = np.empty(windows)
    with no_grad():
        was = model.training
        model.eval()
        try:
            for lo in range(0, windows, b):
                s = starts[lo:lo + b, None]
                x, y = ids[s + offs], ids[s + offs + 1]                    # (b, T)
                logits, _ = model(x)                                       # (b, T, V)
                lp = _log_softmax_rows(logits.data)
                nll = -np.take_along_axis(lp, y[..., None], axis=-1)[..., 0]
                out[lo:lo + b] = nll.mean(axis=1)
        finally:
            model.train(was)
    return out


def stored_bytes(folder: str) -> int:
    """Bytes of the model's array files in a checkpoint folder (``*.safetensors`` but the
    optimiser's ``optim.safetensors``)."""
    total = 0
    for name in os.listdir(folder):
        if name.endswith(".safetensors") and not name.startswith("optim"):
            total += os.path.getsize(os.path.join(folder, name))
    return total


def fixed_prompt(ids: np.ndarray, length: int, seed: int) -> np.ndarray:
    """``length`` ids from a seeded position of ``ids``: the prompt decode figures start from."""
    start = int(np.random.default_rng(seed + 7).integers(0, max(1, len(ids) - length)))
    return np.asarray(ids[start:start + length], np.int64)


def decode_speed(model, prompt: np.ndarray, new_tokens: int = 64, rounds: int = 3) -> float:
    """Greedy KV-cache decoding at batch 1: tokens/s of ``new_tokens`` after ``prompt``
    (T,), the median of ``rounds`` timed runs after an untimed warm-up (which also compiles
    the kernels)."""
    from ..infer import generate
    x = np.asarray(prompt, np.int64)[None]
    generate(model, x, min(4, new_tokens), temperature=0.0)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        generate(model, x, new_tokens, temperature=0.0)
        times.append(time.perf_counter() - t0)
    return new_tokens / float(np.median(times))


def greedy_agreement(model, reference, prompt: np.ndarray, n: int = 200) -> tuple:
    """(share of positions where ``model``'s greedy token equals ``reference``'s along the
    reference's greedy continuation, the length of the prefix their own greedy continuations
    share), over ``n`` new tokens after ``prompt``."""
    from ..infer import generate
    x = np.asarray(prompt, np.int64)[None]
    ref = generate(reference, x, n, temperature=0.0)[0]                   # (T + n,)
    own = generate(model, x, n, temperature=0.0)[0]
    T, B = x.shape[1], model.config.block_size
    agree = 0
    with no_grad():
        was = model.training
        model.eval()
        try:
            for i in range(n):                   # teacher-forced on the reference's tokens
                ctx = ref[max(0, T + i - B):T + i][None]
                logits, _ = model(ctx)
                agree += int(np.argmax(logits.data[0, -1]) == ref[T + i])
        finally:
            model.train(was)
    same = np.flatnonzero(own[T:] != ref[T:])
    prefix = int(same[0]) if same.size else n
    return agree / n, prefix


def compare_gpt(model, reference, ids: np.ndarray, windows: int = EVAL_WINDOWS, seed: int = 0,
                greedy_tokens: int = 200, prompt_len: int = 32) -> dict:
    """Paired loss difference (mean, standard error) on the same windows and greedy
    agreement against ``reference``."""
    a = window_losses(model, ids, windows, seed)
    r = window_losses(reference, ids, windows, seed)
    d = a - r
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    p = fixed_prompt(ids, prompt_len, seed)
    share, prefix = greedy_agreement(model, reference, p, greedy_tokens)
    return {"loss": float(a.mean()), "reference_loss": float(r.mean()), "delta": float(d.mean()),
            "delta_se": se, "greedy_agreement": share, "greedy_prefix": prefix,
            "greedy_tokens": greedy_tokens}
