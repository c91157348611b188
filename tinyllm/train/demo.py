"""``tinyllm demo``, the main job: the document's attention RNN with and without attention on
sequence reversal, then a small GPT on the embedded corpus, with loss curves and the RNN's
attention heatmap as PNGs.

``demo()`` applies the process-wide settings it runs with (``tinyllm.runtime.configure``:
Numba's threading layer) and pins one thread around the RNN runs (restored after). Its
figures are drawn on ``matplotlib.figure.Figure`` objects, so matplotlib's backend is left
as it is.

Every phase runs a fixed number of steps, so every run trains the same models to the same
quality whatever the machine's speed (a slow machine takes longer; it never trains less):

- each RNN: ``RNN_STEPS`` steps (600) of batch 64;
- the GPT (the ``small`` preset: 4 layers, 4 heads, 128 wide, block 128, batch 16):
  ``GPT_STEPS`` steps, which reach a validation loss <= 1.6 nats/char on the embedded
  corpus (see ``GPT_STEPS``).

``quick=True`` (``tinyllm demo --quick``) is a smoke run of every phase with ``QUICK`` steps:
it checks that everything runs and writes its figures, not that the models learn.

The kernels are warmed up (one forward and backward, which compiles or loads the Numba
kernels) before a phase's clock starts, so the speeds printed are those of training. Each
phase shows a live progress bar on a terminal (the Trainer's ``progress`` setting: steps,
loss, tokens/s, ETA), and off a terminal the Trainer's line at each evaluation.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np

from .. import runtime
from ..autograd import no_grad
from ..data import get_batch
from .runs import gpt_trainer, make_preset, rnn_trainer, unigram_baseline

# Steps of each phase, fixed: the same models on every machine, however busy.
# GPT_STEPS: the `small` preset's GPT (constant lr 2e-3, see GPT_PRESETS) ends at val 1.44
# nats/char on the embedded corpus (measured), well under the 1.6 the demo promises; with
# the earlier warmup + cosine it passed 1.6 at about step 700 (1.643 at 625, 1.532 at 750,
# 1.428 at 1000). At ~133 ms a step (one thread, kernels warm) it is ~2.5 minutes of the
# demo's ~3 (each RNN: ~15 s).
RNN_STEPS = 600
GPT_STEPS = 1000
# --quick: a smoke run of every phase (seconds, not minutes); the models do not learn much
QUICK = {"rnn_steps": 40, "gpt_steps": 20}


def demo_steps(quick: bool = False, budget: dict | None = None) -> dict:
    """The step count of each phase: ``{"rnn_steps": ..., "gpt_steps": ...}``, fixed (the
    defaults above, or QUICK), with ``budget`` overriding either. Nothing here is timed."""
    b = dict(QUICK) if quick else {"rnn_steps": RNN_STEPS, "gpt_steps": GPT_STEPS}
    for k, v in (budget or {}).items():
        if k not in b:
            raise ValueError(f"demo: unknown budget key {k!r}; the keys are "
                             f"{', '.join(b)} (step counts)")
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"demo: {k} must be a positive integer, got {v!r}")
        b[k] = int(v)
    return b


def warm_up(model, batch) -> None:
    """One forward and backward on ``batch``, gradients dropped: compiles (or loads from
    Numba's cache) every kernel a training step uses, so that no clock includes it. The
    parameters are not changed (no optimiser step), nor is any batch Generator; a model with
    dropout would draw from its dropout Generator (the demo's models have no dropout)."""
    x, y = batch
    _, loss = model(x, y)
    loss.backward()
    model.zero_grad()


def attention_heatmap(model, task, path: str, seed: int = 7) -> str:
    """α of the RNN on one held-out example, as a PNG: row t = where step t looked."""
    from matplotlib.figure import Figure
    ex = task.make_split(1, seed=seed, split="test")
    L = int(ex.lengths[0])
    idx = ex.inputs[:, :2 * L + 2]
    with no_grad():
        alpha = model.attention_weights(idx)[0]
    names = task.token_names
    labels = [names[int(i)] for i in idx[0]]
    fig = Figure(figsize=(6, 5.5))
    ax = fig.subplots()
    ax.imshow(alpha, cmap="viridis", vmin=0, vmax=max(float(alpha.max()), 1e-6))
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("attended position i (key x_i)")
    ax.set_ylabel("step t (input token)")
    ax.set_title("attention weights α_{t,i} (eq. 4.2a), reversal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def demo(out: str, log=print, budget: dict | None = None, quick: bool = False,
         progress: bool = True) -> dict:
    """The main job: the document's attention RNN with and without attention on sequence
    reversal, then a small GPT on the embedded corpus; figures into ``out``.

    Every phase runs a fixed number of steps (``demo_steps``): ``RNN_STEPS`` for each RNN
    and ``GPT_STEPS`` for the GPT, or ``QUICK``'s when ``quick``; ``budget`` overrides them
    (keys ``rnn_steps``, ``gpt_steps``). ``progress``: the Trainer's progress bar on a
    terminal (off a terminal the Trainer logs a line at each evaluation)."""
    from ..kernels import default_impl
    runtime.configure()                  # Numba's threading layer, before the first kernel
    b = demo_steps(quick, budget)
    os.makedirs(out, exist_ok=True)
    t_all = time.perf_counter()
    summary = {"steps": b}
    log(f"tinyllm demo{' --quick (a smoke run)' if quick else ''}: kernels {default_impl()}, "
        f"{runtime.numba_threads()} threads; figures -> {out}")

    # 1. the document's model on reversal, with and without attention. Its matrices are
    # small (batch 64, width 128): one thread beats two, because waking a second thread for
    # each small product costs more than it saves.
    # (SciPy's BLAS is left as it is, as before: only the pools already loaded are pinned)
    with runtime.pinned_threads(1, scipy_blas=False):
        _demo_rnn(make_preset("rnn", "reversal"), b, out, log, summary, progress)
    # 2. a small GPT on the embedded corpus
    _demo_gpt(b, out, log, summary, progress)
    # 3. the loss curves together
    curves = os.path.join(out, "loss_curves.png")
    _plot_demo_curves(out, curves)
    log(f"\nloss curves -> {curves} (and loss.png in each run folder); checkpoints in "
        f"{out}/*/best and last")
    summary["seconds"] = time.perf_counter() - t_all
    log(f"demo finished in {summary['seconds']:.0f} s")
    return summary


def _speed(r) -> str:
    """'N steps in S s (M ms/step, K tokens/s)': one measurement (the Trainer's clock over
    the whole fit), so the two speeds agree."""
    per = r.seconds / max(r.steps, 1)
    return (f"{r.steps} steps in {r.seconds:.0f} s ({per * 1e3:.0f} ms/step, "
            f"{r.tokens / max(r.seconds, 1e-9):,.0f} tokens/s)")


def _demo_rnn(p, b, out, log, summary, progress=True):
    """Both RNNs see the same batches for the same number of steps, so the comparison is
    about what attention adds, not about compute."""
    from .seq_tasks import evaluate_exact_match
    steps = b["rnn_steps"]
    for name, attn, key in (("with attention", True, "rnn"),
                            ("without attention", False, "rnn_plain")):
        p_run = p.replace(attention=attn, max_steps=steps, warmup_steps=max(1, steps // 20),
                          eval_every=max(1, steps // 6))
        folder = os.path.join(out, "rnn_attention" if attn else "rnn_plain")
        trainer, task, held = rnn_trainer(p_run, folder, log=log, progress=progress)
        log(f"\n[{1 if attn else 2}/3] AttentionRNN {name} on reversal "
            f"(lengths {task.min_len}-{task.max_len}, {task.n_symbols} symbols): {steps} "
            f"steps of batch {p.data.batch_size}, {trainer.model.num_parameters():,} parameters")
        warm_up(trainer.model, trainer.train_batch(np.random.default_rng(5)))
        r = trainer.fit()
        em = evaluate_exact_match(trainer.model, held)
        log(f"      trained {_speed(r)}, val loss "
            f"{r.val_losses[-1][1]:.3f}; held-out exact match {em * 100:.1f}% "
            f"({len(held)} sequences never seen in training)")
        summary[key] = {"exact_match": em, "steps": r.steps, "seconds": r.seconds,
                        "val_loss": r.val_losses[-1][1]}
        if attn:
            png = attention_heatmap(trainer.model, task, os.path.join(out, "attention.png"))
            log(f"      attention heatmap -> {png}")


def _demo_gpt(b, out, log, summary, progress=True):
    from ..infer import generate
    steps = b["gpt_steps"]
    p = make_preset("gpt", "small")
    # 8 validations along the way (each is eval_batches forward passes); a short (--quick)
    # run validates once, at its end
    p = p.replace(max_steps=steps, warmup_steps=min(p.train.warmup_steps, steps // 10),
                  eval_every=steps // 8 if steps >= 80 else steps)
    folder = os.path.join(out, "gpt")
    trainer, tok, train, val = gpt_trainer(p, None, folder, log=log, progress=progress)
    B, T = p.data.batch_size, p.model.block_size
    base = unigram_baseline(train, val, tok.vocab_size)
    m = p.model
    log(f"\n[3/3] GPT {m.n_layer} layers, {m.n_head} heads, {m.n_embd} wide, "
        f"block {T}, batch {B} on the embedded corpus "
        f"({len(train) + len(val):,} chars, vocab {tok.vocab_size}): {steps} steps, "
        f"{trainer.model.num_parameters():,} parameters")
    warm_up(trainer.model, get_batch(train, B, T, np.random.default_rng(5)))
    r = trainer.fit()
    vl = r.val_losses[-1][1]
    log(f"      trained {_speed(r)}; val loss {vl:.3f} nats/char "
        f"({vl / math.log(2):.2f} bits/char) against the unigram baseline {base:.3f} "
        f"({math.exp(vl):.2f} against {math.exp(base):.2f} perplexity)")
    prompt = "The "
    ids = generate(trainer.model, np.array([tok.encode(prompt)]), 300, temperature=0.8,
                   top_k=20, seed=0)
    sample = tok.decode(ids[0].tolist())
    log(f"      sample (temperature 0.8, top-k 20; past {T} characters the window slides):\n" +
        "\n".join("        | " + line for line in sample.splitlines()))
    summary["gpt"] = {"val_loss": vl, "unigram": base, "steps": r.steps,
                      "seconds": r.seconds, "tokens_per_s": r.tokens / max(r.seconds, 1e-9)}


def _plot_demo_curves(out: str, path: str) -> None:
    import json

    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax, runs, title in ((axes[0], ("rnn_attention", "rnn_plain"),
                             "AttentionRNN on reversal (answer tokens)"),
                            (axes[1], ("gpt",), "GPT on the embedded corpus (nats/char)")):
        for run in runs:
            mp = os.path.join(out, run, "metrics.jsonl")
            if not os.path.exists(mp):
                continue
            recs = [json.loads(ln) for ln in open(mp) if ln.strip()]
            tr = [(r["step"], r["loss"]) for r in recs if "loss" in r]
            va = [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]
            if tr:
                ax.plot(*zip(*tr), lw=0.8, alpha=0.7, label=f"{run} train")
            if va:
                ax.plot(*zip(*va), "o-", ms=3, label=f"{run} val")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


__all__ = ["demo", "demo_steps", "warm_up", "attention_heatmap", "RNN_STEPS", "GPT_STEPS",
           "QUICK"]
