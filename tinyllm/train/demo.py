"""``tinyllm demo``, the main job: the document's attention RNN with and without attention on
sequence reversal, then a small GPT on the embedded corpus, with loss curves and the RNN's
attention heatmap as PNGs.

``demo()`` applies the process-wide settings it runs with (``tinyllm.runtime.configure``:
Numba's threading layer) and pins one thread around the RNN runs (restored after). Its
figures are drawn on ``matplotlib.figure.Figure`` objects, so matplotlib's backend is left
as it is.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np

from .. import runtime
from ..autograd import no_grad
from ..data import get_batch
from .runs import gpt_trainer, make_preset, rnn_trainer, steps_for_budget, unigram_baseline


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


def demo(out: str, log=print, budget: dict | None = None) -> dict:
    """The main job: the document's attention RNN with and without attention on sequence
    reversal, then a small GPT on the embedded corpus; figures into ``out``. ``budget``
    overrides the defaults: rnn_steps (steps of each RNN), rnn and rnn_plain (a time limit
    in seconds for each), gpt (seconds of GPT training; its step count is fitted to it)."""
    from ..kernels import default_impl
    runtime.configure()                  # Numba's threading layer, before the first kernel
    b = {"rnn_steps": 600, "rnn": 90.0, "rnn_plain": 60.0, "gpt": 190.0}
    b.update(budget or {})
    os.makedirs(out, exist_ok=True)
    t_all = time.perf_counter()
    summary = {}
    log(f"tinyllm demo: kernels {default_impl()}, {runtime.numba_threads()} threads; "
        f"figures -> {out}")

    # 1. the document's model on reversal, with and without attention. Its matrices are
    # small (batch 64, width 128): one thread beats two, because waking a second thread for
    # each small product costs more than it saves.
    # (SciPy's BLAS is left as it is, as before: only the pools already loaded are pinned)
    with runtime.pinned_threads(1, scipy_blas=False):
        _demo_rnn(make_preset("rnn", "reversal"), b, out, log, summary)
    # 2. a small GPT on the embedded corpus
    _demo_gpt(b, out, log, summary)
    # 3. the loss curves together
    curves = os.path.join(out, "loss_curves.png")
    _plot_demo_curves(out, curves)
    log(f"\nloss curves -> {curves} (and loss.png in each run folder); checkpoints in "
        f"{out}/*/best and last")
    summary["seconds"] = time.perf_counter() - t_all
    log(f"demo finished in {summary['seconds']:.0f} s")
    return summary


def _demo_rnn(p, b, out, log, summary):
    """Both RNNs see the same batches for the same number of steps, so the comparison is
    about what attention adds, not about compute."""
    from .seq_tasks import evaluate_exact_match
    steps = int(b["rnn_steps"])
    for name, attn, key in (("with attention", True, "rnn"),
                            ("without attention", False, "rnn_plain")):
        p_run = p.replace(attention=attn, max_steps=steps, warmup_steps=max(1, steps // 20),
                          eval_every=max(1, steps // 6))
        folder = os.path.join(out, "rnn_attention" if attn else "rnn_plain")
        trainer, task, held = rnn_trainer(p_run, folder, log=log, progress=False,
                                          time_limit=b[key])
        log(f"\n[{1 if attn else 2}/3] AttentionRNN {name} on reversal "
            f"(lengths {task.min_len}-{task.max_len}, {task.n_symbols} symbols): {steps} "
            f"steps of batch {p.data.batch_size}, {trainer.model.num_parameters():,} parameters")
        r = trainer.fit()
        em = evaluate_exact_match(trainer.model, held)
        log(f"      trained {r.steps} steps in {r.seconds:.0f} s, val loss "
            f"{r.val_losses[-1][1]:.3f}; held-out exact match {em * 100:.1f}% "
            f"({len(held)} sequences never seen in training)")
        summary[key] = {"exact_match": em, "steps": r.steps, "seconds": r.seconds}
        if attn:
            png = attention_heatmap(trainer.model, task, os.path.join(out, "attention.png"))
            log(f"      attention heatmap -> {png}")


def _demo_gpt(b, out, log, summary):
    from ..infer import generate
    p = make_preset("gpt", "small")
    folder = os.path.join(out, "gpt")
    trainer, tok, train, val = gpt_trainer(p, None, folder, log=log, progress=False)
    B, T = p.data.batch_size, p.model.block_size
    steps, per = steps_for_budget(trainer.model, get_batch(
        train, B, T, np.random.default_rng(5)), b["gpt"], 50, 20_000, overhead=1.15)
    p = p.replace(max_steps=steps, warmup_steps=min(100, steps // 10),
                  eval_every=max(1, steps // 8))
    trainer, tok, train, val = gpt_trainer(p, None, folder, log=log, progress=False,
                                           time_limit=b["gpt"] * 1.2)
    base = unigram_baseline(train, val, tok.vocab_size)
    n_tok = B * T
    m = p.model
    log(f"\n[3/3] GPT {m.n_layer} layers, {m.n_head} heads, {m.n_embd} wide, "
        f"block {T}, batch {B} on the embedded corpus "
        f"({len(train) + len(val):,} chars, vocab {tok.vocab_size}): {steps} steps "
        f"(~{per * 1e3:.0f} ms/step, ~{n_tok / per:,.0f} tokens/s)")
    r = trainer.fit()
    vl = r.val_losses[-1][1]
    log(f"      trained {r.steps} steps in {r.seconds:.0f} s "
        f"({r.tokens / r.seconds:,.0f} tokens/s); val loss {vl:.3f} nats/char against the "
        f"unigram baseline {base:.3f} ({math.exp(vl):.2f} against {math.exp(base):.2f} "
        f"perplexity)")
    prompt = "The "
    ids = generate(trainer.model, np.array([tok.encode(prompt)]), 200, temperature=0.8,
                   top_k=20, seed=0)
    sample = tok.decode(ids[0].tolist())
    log("      sample (temperature 0.8, top-k 20):\n" +
        "\n".join("        | " + line for line in sample.splitlines()))
    summary["gpt"] = {"val_loss": vl, "unigram": base, "steps": r.steps,
                      "seconds": r.seconds, "tokens_per_s": r.tokens / r.seconds}


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
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


__all__ = ["demo", "attention_heatmap"]
