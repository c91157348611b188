"""Validation loss of a GPT in reduced precision, paired against fp32 on the same windows.

Rows (``precision_rows``): fp32; fp16 and bf16 *storage* (every weight rounded to the format
by RNE, computation in float32: what a 2-byte checkpoint gives); and *everywhere* (the
output of every autograd op rounded to the format, fp32 accumulation inside each op) for
bf16 with RNE, truncation and stochastic rounding, and fp16 with RNE.

The loss: for each window the model's logits (B, T, V) come out of the forward in the
precision being measured; the cross-entropy is then taken from those logits in float64
NumPy, outside the rounding (mixed-precision practice: a bf16 loss scalar would add
rounding noise of up to 2^-9 relative, ~0.003 nats, to every batch and hide the effect
being measured). Per window w, loss_w = mean over its T positions of -log softmax(z)[y];
Δ = mean_w (loss_w(mode) - loss_w(fp32)), reported with the standard error of the paired
differences, se = std_w(diff) / sqrt(W).

Run (about a minute on a 0.8 M-parameter char GPT):
    python benchmarks/precision_eval.py --checkpoint RUN_FOLDER [--windows 40] [--seed 0]
    python benchmarks/precision_eval.py --checkpoint RUN_FOLDER --overhead   # hook cost
The lead's benchmark calls ``precision_rows(model, tokenizer, ids, windows=40)``.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import numpy as np

import tinyllm as tl
from tinyllm import precision as P
from tinyllm.train.evaluate import sample_windows

# (name, mode, format, rounding)
MODES = [("fp32", None, None, None),
         ("fp16 storage", "storage", "fp16", "rne"),
         ("bf16 storage", "storage", "bf16", "rne"),
         ("bf16 everywhere RNE", "everywhere", "bf16", "rne"),
         ("bf16 everywhere truncate", "everywhere", "bf16", "truncate"),
         ("bf16 everywhere stochastic", "everywhere", "bf16", "stochastic"),
         ("fp16 everywhere RNE", "everywhere", "fp16", "rne")]


def window_losses(model, ids: np.ndarray, starts: np.ndarray, batch_size: int = 16,
                  mode=None, fmt=None, rounding="rne", seed: int = 0, logp: bool = False):
    """Per-window mean nats/token (W,) of ``model`` on windows ``ids[s : s + T]`` -> next
    tokens, T = block_size (as tinyllm.train.evaluate.evaluate_gpt lays them out). ``mode``
    "everywhere" runs the forward under P.everywhere(fmt, rounding) (stochastic: one
    generator seeded ``seed`` for the whole pass); the loss is plain float64 NumPy, which
    the rounding hook does not see (it rounds autograd op outputs only). ``logp=True``:
    (losses, log-probabilities (W, T, V) float64)."""
    ids = np.asarray(ids, np.int64)
    T = min(model.config.block_size, len(ids) - 1)
    offs = np.arange(T)
    out, lps = [], []
    rounding_ctx = (P.everywhere(fmt, rounding, rng=seed if rounding == "stochastic" else None)
                    if mode == "everywhere" else contextlib.nullcontext())
    was_training = model.training
    model.eval()
    try:
        with tl.no_grad(), rounding_ctx:
            for lo in range(0, len(starts), batch_size):
                s = starts[lo:lo + batch_size, None]                      # (b, 1)
                x, y = ids[s + offs], ids[s + offs + 1]                   # (b, T) each
                z = model(x)[0].data.astype(np.float64)                   # (b, T, V)
                m = z.max(-1, keepdims=True)
                lse = m[..., 0] + np.log(np.exp(z - m).sum(-1))           # (b, T)
                nll = lse - np.take_along_axis(z, y[..., None], -1)[..., 0]
                out.append(nll.mean(-1))                                  # (b,)
                if logp:
                    lps.append(z - lse[..., None])                        # (b, T, V)
    finally:
        model.train(was_training)
    return (np.concatenate(out), np.concatenate(lps)) if logp else np.concatenate(out)


def precision_rows(model, tokenizer, ids, windows=40, seed: int = 0, batch_size: int = 16,
                   modes=MODES) -> list[dict]:
    """One dict per mode: name, mode, fmt, rounding, bytes (as stored: 4 per weight in fp32,
    2 in fp16/bf16; "everywhere" rows store 2-byte weights too, rounded with the row's own
    rounding, so they measure weights + activations), loss (nats/token), delta and delta_se
    (paired against the fp32 row on the same windows), and for an everywhere row that is not
    RNE, vs_rne and vs_rne_se: its paired difference from the RNE row of the same format
    (listed earlier in ``modes``); kl, the mean over every predicted position of
    KL(fp32 || mode) in nats (how far the predicted distributions moved, noise-free where
    the loss difference is noisy). ``windows``: a count (seeded starts from
    sample_windows, as ``tinyllm eval``) or an array of window starts. ``tokenizer`` is
    unused (kept for a uniform signature: the loss is per token). The model's weights are
    restored afterwards."""
    ids = np.asarray(ids, np.int64)
    T = min(model.config.block_size, len(ids) - 1)
    starts = (sample_windows(len(ids), T, int(windows), seed)
              if np.ndim(windows) == 0 else np.asarray(windows, np.int64))
    if starts.ndim != 1 or not len(starts) or starts.min() < 0 or \
            starts.max() > len(ids) - T - 1:
        raise ValueError(f"precision_rows: windows must be a count or 1-D starts in "
                         f"[0, {len(ids) - T - 1}], got {windows!r}")
    n = model.num_parameters()
    originals = [p.data.copy() for p in model.parameters()]
    rows, base, base_lp, rne = [], None, None, {}
    try:
        for name, mode, fmt, rounding in modes:
            nbytes = 4 * n
            if mode is not None:   # 2-byte weights (same rounding), then maybe activations
                nbytes = P.store_weights(model, fmt, rounding,
                                         rng=seed if rounding == "stochastic" else None)
            t0 = time.perf_counter()
            w, lp = window_losses(model, ids, starts, batch_size, mode, fmt, rounding, seed,
                                  logp=True)
            secs = time.perf_counter() - t0
            for p, a in zip(model.parameters(), originals):
                p.data[...] = a
            if base is None:
                base, base_lp = w, lp
            d = w - base
            # KL(fp32 || mode) per position, sum_v p32 (log p32 - log p), then the mean
            kl = float((np.exp(base_lp) * (base_lp - lp)).sum(-1).mean())
            del lp
            rows.append({"name": name, "mode": mode or "fp32", "fmt": fmt or "fp32",
                         "rounding": rounding, "bytes": int(nbytes), "loss": float(w.mean()),
                         "delta": float(d.mean()),
                         "delta_se": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1
                         else float("nan"),
                         "kl": kl, "windows": int(len(starts)), "seconds": round(secs, 2)})
            if mode == "everywhere" and rounding == "rne":
                rne[fmt] = w
            elif mode == "everywhere" and fmt in rne:
                e = w - rne[fmt]
                rows[-1]["vs_rne"] = float(e.mean())
                rows[-1]["vs_rne_se"] = float(e.std(ddof=1) / np.sqrt(len(e)))
    finally:
        for p, a in zip(model.parameters(), originals):
            p.data[...] = a
    return rows


def table(rows) -> str:
    out = ["| mode | bytes | val loss (nats/token) | Δ vs fp32 (± paired se) | "
           "vs RNE (± se) | KL(fp32 ‖ mode) |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        vs = f"{r['vs_rne']:+.5f} ± {r['vs_rne_se']:.5f}" if "vs_rne" in r else ""
        out.append(f"| {r['name']} | {r['bytes']:,} | {r['loss']:.4f} | "
                   f"{r['delta']:+.5f} ± {r['delta_se']:.5f} | {vs} | {r['kl']:.2e} |")
    return "\n".join(out)


def _step_ms(model, x, y, repeats: int) -> list:
    opt_ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, loss = model(x, y)
        loss.backward()
        for p in model.parameters():
            p.grad = None
        opt_ts.append(1e3 * (time.perf_counter() - t0))
    return opt_ts


def overhead(model, ids, repeats: int = 15) -> str:
    """Forward + backward of one training batch (16 x block_size), hook off: the median ms.
    Run this file once at the commit before the hook and once after to compare (see the
    report); in one process it also reports the same step with everywhere("bf16") on."""
    T = model.config.block_size
    starts = sample_windows(len(ids), T, 16, 1)
    x = ids[starts[:, None] + np.arange(T)]
    y = ids[starts[:, None] + np.arange(T) + 1]
    _step_ms(model, x, y, 3)
    off = _step_ms(model, x, y, repeats)
    with P.everywhere("bf16"):
        on = _step_ms(model, x, y, repeats)
    return (f"GPT step (16 x {T}, forward + backward): hook off median {np.median(off):.1f} ms "
            f"(min {min(off):.1f}); everywhere('bf16') on median {np.median(on):.1f} ms")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="a GPT run folder or checkpoint")
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overhead", action="store_true", help="time a step, hook off and on")
    a = ap.parse_args(argv)
    from tinyllm.cli import _checkpoint_folder
    from tinyllm.data import load_corpus, train_val_split
    from tinyllm.train.runs import load_model
    folder = _checkpoint_folder(a.checkpoint, "--checkpoint")
    model, tok, meta = load_model(folder)
    src = meta.get("text", meta.get("data"))          # as `tinyllm eval` finds the text
    text = load_corpus(src if isinstance(src, str) and src != "embedded" else None)
    ids = np.asarray(tok.encode(text), np.int64)
    ids = train_val_split(ids, 0.9)[1]               # the ids `tinyllm train` validates on
    print(f"{folder} (step {meta.get('step', '?')}): {model.num_parameters():,} parameters, {len(ids):,} validation "
          f"tokens, {a.windows} windows (seed {a.seed}), threads "
          f"{os.environ.get('NUMBA_NUM_THREADS', 'default')}")
    if a.overhead:
        print(overhead(model, ids))
        return 0
    ref = tl.train.evaluate.evaluate_gpt(model, tok, ids, windows=a.windows, seed=a.seed)
    rows = precision_rows(model, tok, ids, a.windows, a.seed)
    print(f"evaluate_gpt (in-graph float32 loss), fp32: {ref['loss']:.5f} nats/token")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
