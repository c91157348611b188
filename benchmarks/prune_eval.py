"""Pruning a trained GPT (the teacher): sparsity -> loss difference, with and without a masked
fine-tune, and the decode speed-up of structured pruning.

    python benchmarks/prune_eval.py [--teacher DIR] --out DIR   # default: trains one in DIR
    python benchmarks/prune_eval.py --quick --out /tmp/p                  # smoke (< 60 s)

Every loss difference is ``tinyllm eval``'s paired one (``tinyllm.train.evaluate``:
``window_losses`` on the same seeded windows of the validation split, d_w = loss_w(pruned) -
loss_w(reference), mean and standard error over the windows):

1. without fine-tune, against the teacher: magnitude (global and per layer) and Wanda at
   10..90 %, 2:4 (magnitude and Wanda scores) at 50 %, structured removal of MLP neurons
   and attention heads at a few fractions;
2. with a masked fine-tune (``prune.finetune``: the Trainer through ``MaskedGPT``, the mask
   checked bit for bit afterwards) at 30 / 50 / 70 % for magnitude and Wanda, against a
   dense control (the unpruned teacher) fine-tuned the same steps with the same settings;
3. greedy decode speed at batch 1 (KV cache) of the structured models against the teacher,
   in alternating timed rounds (tokens/s medians; the machine may be shared: ratios only).

Writes DIR/prune.md, DIR/prune.json and DIR/prune.png (sparsity against loss difference).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tinyllm.compress import prune as P                                  # noqa: E402
from tinyllm.train import runs                                           # noqa: E402
from tinyllm.train.evaluate import fixed_prompt, window_losses           # noqa: E402

CURVE = ["magnitude", "magnitude-layer", "wanda"]
NAMES = {"magnitude": "magnitude, global", "magnitude-layer": "magnitude, per layer",
         "wanda": "Wanda", "2:4": "2:4 (magnitude)", "2:4-wanda": "2:4 (Wanda)",
         "neurons": "MLP neurons (structured)", "heads": "attention heads (structured)"}
TARGETS = [("no fine-tune, magnitude global 30 %", "none", "magnitude", 0.3, 0.04),
           ("no fine-tune, magnitude global 50 %", "none", "magnitude", 0.5, 0.35),
           ("fine-tuned, 50 % vs control (best of magnitude / Wanda)", "ft", None, 0.5, 0.02),
           ("fine-tuned, 70 % vs control (best of magnitude / Wanda)", "ft", None, 0.7, 0.12)]


def paired(losses, ref):
    d = losses - ref
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"loss": float(losses.mean()), "delta": float(d.mean()), "delta_se": se}


def decode_rates(models, prompt, tokens, rounds):
    """tokens/s of greedy KV-cache decoding at batch 1 for each model, timed in alternating
    rounds (one round of every model, then the next) after a warm-up; medians."""
    from tinyllm.infer import generate
    x = np.asarray(prompt, np.int64)[None]
    for m in models.values():
        generate(m, x, 4, temperature=0.0)
    times = {k: [] for k in models}
    for _ in range(rounds):
        for k, m in models.items():
            t0 = time.perf_counter()
            generate(m, x, tokens, temperature=0.0)
            times[k].append(time.perf_counter() - t0)
    return {k: tokens / float(np.median(v)) for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default=None, help="a GPT run or checkpoint folder "
                    "(default: the small preset trained for 2000 steps into OUT/teacher)")
    ap.add_argument("--out", required=True, help="folder for prune.md / .json / .png")
    ap.add_argument("--quick", action="store_true", help="a smoke run (< 60 s)")
    ap.add_argument("--windows", type=int, default=40, help="paired eval windows (40)")
    ap.add_argument("--finetune-steps", type=int, default=250, help="masked fine-tune steps")
    ap.add_argument("--finetune-batch", type=int, default=16, help="fine-tune batch size")
    ap.add_argument("--lr", type=float, default=1e-3, help="fine-tune peak lr (cosine to "
                    "lr / 10 after 10 warm-up steps)")
    ap.add_argument("--decode-rounds", type=int, default=7)
    ap.add_argument("--render", metavar="JSON", help="only rewrite prune.md / .png in --out "
                    "from a prune.json written earlier (e.g. by a run that was stopped)")
    a = ap.parse_args(argv)
    if a.render:
        with open(a.render) as f:
            res = json.load(f)
        write(res, a.out, res.get("command", "python benchmarks/prune_eval.py"),
              final=res.get("complete", False))
        return 0
    t_start = time.perf_counter()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _teacher import teacher_run
    folder = a.teacher = teacher_run(a.teacher, a.out, a.quick)
    if os.path.isdir(os.path.join(folder, "best")):
        folder = os.path.join(folder, "best")
    if not os.path.isfile(os.path.join(folder, "meta.json")):
        print(f"prune_eval: --teacher {a.teacher!r} holds no GPT checkpoint", file=sys.stderr)
        return 2
    teacher, tok, meta = runs.load_model(folder)
    p = runs.Preset.from_settings("gpt", meta["settings"])
    src = meta.get("text")
    tok, train, val = runs.prepare_text(p, None if src in (None, "embedded") else src, tok)
    if a.quick:
        a.windows, a.finetune_steps, a.finetune_batch, a.decode_rounds = 8, 3, 2, 1
        sparsities, ft_sparsities, ft_schemes = [0.5], [0.5], ["magnitude-layer"]
        structured = {"neurons": [0.25], "heads": [0.25]}
        decode_tokens, calib_windows = 8, 4
    else:
        sparsities = [round(0.1 * i, 1) for i in range(1, 10)]
        ft_sparsities, ft_schemes = [0.5, 0.7, 0.3], ["wanda", "magnitude"]
        structured = {"neurons": [0.25, 0.5, 0.75], "heads": [0.25, 0.5]}
        decode_tokens, calib_windows = 64, 16
    def log(*x, **k):
        print(*x, **k, flush=True)
    ref = window_losses(teacher, val, a.windows)
    cal = P.calibrate(teacher, train, windows=calib_windows)
    res = {"teacher": os.path.abspath(folder), "windows": a.windows,
           "teacher_loss": float(ref.mean()), "calibration_tokens": cal.tokens,
           "params": teacher.num_parameters(), "curve": [], "finetune": [], "decode": []}

    # 1. without fine-tune
    rows = [(s, x) for s in CURVE for x in sparsities]
    rows += [("2:4", 0.5), ("2:4-wanda", 0.5)]
    rows += [(s, x) for s, xs in structured.items() for x in xs]
    pruned_structured = {}
    for scheme, s in rows:
        m, _ = P.prune(teacher, s, scheme, cal)
        r = paired(window_losses(m, val, a.windows), ref)
        r.update(scheme=scheme, sparsity=s, params=m.num_parameters())
        if scheme not in P.STRUCTURED:
            r["measured_sparsity"] = P.sparsity_report(m)["overall"]
        else:
            pruned_structured[(scheme, s)] = m
        res["curve"].append(r)
        log(f"{scheme:16s} {s:.2f}  delta {r['delta']:+.4f} ± {r['delta_se']:.4f}")

    # 2. structured decode speed
    prompt = fixed_prompt(val, 32, 0)
    models = {"teacher": teacher}
    models.update({f"{k[0]} {k[1]:.2f}": m for k, m in pruned_structured.items()})
    rates = decode_rates(models, prompt, decode_tokens, a.decode_rounds)
    for k, v in rates.items():
        res["decode"].append({"model": k, "tokens_per_s": v,
                              "speedup": v / rates["teacher"]})
    res["settings"] = {"finetune_steps": a.finetune_steps, "finetune_batch": a.finetune_batch,
                       "lr": a.lr, "quick": a.quick, "decode_tokens": decode_tokens,
                       "decode_rounds": a.decode_rounds}
    command = " ".join(["python", "benchmarks/prune_eval.py"]
                       + (argv if argv is not None else sys.argv[1:]))
    res["seconds"] = time.perf_counter() - t_start
    res["command"] = command
    write(res, a.out, command)

    # 3. masked fine-tune against a dense control
    ft = dict(batch_size=a.finetune_batch, lr=a.lr, val_ids=val)
    t0 = time.perf_counter()
    control = P.copy_gpt(teacher)
    P.finetune(control, None, train, a.finetune_steps, **ft)
    ctrl = window_losses(control, val, a.windows)
    res["control"] = paired(ctrl, ref)
    res["control"]["seconds"] = time.perf_counter() - t0
    log(f"dense control fine-tuned {a.finetune_steps} steps: delta vs teacher "
        f"{res['control']['delta']:+.4f}")
    for s in ft_sparsities:
        for scheme in ft_schemes:
            t0 = time.perf_counter()
            m, masks = P.prune(teacher, s, scheme, cal)
            P.finetune(m, masks, train, a.finetune_steps, **ft)
            wl = window_losses(m, val, a.windows)
            r = {"scheme": scheme, "sparsity": s, "vs_control": paired(wl, ctrl),
                 "vs_teacher": paired(wl, ref), "mask_exact": bool(P.masks_hold(m, masks)),
                 "measured_sparsity": P.sparsity_report(m)["overall"],
                 "seconds": time.perf_counter() - t0}
            res["finetune"].append(r)
            log(f"fine-tuned {scheme:10s} {s:.2f}  vs control "
                f"{r['vs_control']['delta']:+.4f}  mask exact {r['mask_exact']}")
            res["seconds"] = time.perf_counter() - t_start
            write(res, a.out, command)

    res["seconds"] = time.perf_counter() - t_start
    write(res, a.out, command, final=True)
    log(f"wrote {a.out}/prune.md, prune.json, prune.png in {res['seconds']:.0f} s")
    return 0


def write(res, out, command, final=False) -> None:
    """prune.json, prune.md and prune.png (also after each fine-tune: a partial run keeps
    what it measured)."""
    res["complete"] = final
    res["targets"] = targets(res)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "prune.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(out, "prune.md"), "w") as f:
        f.write(markdown(res, command))
    plot(res, os.path.join(out, "prune.png"))


def _curve_delta(res, scheme, s):
    for r in res["curve"]:
        if r["scheme"] == scheme and abs(r["sparsity"] - s) < 1e-9:
            return r["delta"]
    return None


def targets(res) -> list:
    out = []
    for name, kind, scheme, s, bound in TARGETS:
        if kind == "none":
            v = _curve_delta(res, scheme, s)
        else:
            vs = [r["vs_control"]["delta"] for r in res["finetune"] if abs(r["sparsity"] - s)
                  < 1e-9]
            v = min(vs) if vs else None
        out.append({"target": f"{name} <= +{bound}", "value": v,
                    "met": None if v is None else bool(v <= bound)})
    w, m = _curve_delta(res, "wanda", 0.5), _curve_delta(res, "magnitude", 0.5)
    if w is not None and m is not None:
        out.append({"target": "Wanda no worse than magnitude (global) at 50 %",
                    "value": w - m, "met": bool(w <= m)})
    return out


def markdown(res, command) -> str:
    st = res["settings"]
    L = [f"# Pruning the teacher GPT ({res['params']:,} parameters)", "",
         f"Command: `{command}` — took {res['seconds']:.0f} s on a shared 2-core machine"
         + ("." if res.get("complete") else " (PARTIAL: the run had not finished)."), "",
         f"Teacher {res['teacher']}: loss {res['teacher_loss']:.4f} on {res['windows']} "
         f"paired windows of the validation split (tinyllm eval's windows). Δ = paired "
         f"loss difference (nats/token) ± its standard error. Calibration (Wanda, structured "
         f"scores): {res['calibration_tokens']:,} training tokens.", "",
         "## Without fine-tune (Δ against the teacher)", "",
         "| scheme | sparsity | Δ loss | ± se | zeros / params |", "|---|---:|---:|---:|---:|"]
    for r in res["curve"]:
        size = (f"{r['measured_sparsity']:.3f} zeros" if "measured_sparsity" in r
                else f"{r['params'] / res['params']:.3f}x params")
        L.append(f"| {NAMES[r['scheme']]} | {r['sparsity']:.2f} | {r['delta']:+.4f} | "
                 f"{r['delta_se']:.4f} | {size} |")
    c = res.get("control")
    L += ["", f"## With a masked fine-tune ({st['finetune_steps']} steps, batch "
          f"{st['finetune_batch']}, AdamW lr {st['lr']} cosine, weight decay 0.1)", ""]
    if c is None:
        L.append("(not run yet)")
    else:
        L += [f"Dense control (the teacher fine-tuned the same way): Δ against the teacher "
              f"{c['delta']:+.4f} ± {c['delta_se']:.4f} ({c['seconds']:.0f} s).", "",
              "| scheme | sparsity | Δ vs control | ± se | Δ vs teacher | mask exact | s |",
              "|---|---:|---:|---:|---:|:-:|---:|"]
    for r in res["finetune"]:
        L.append(f"| {NAMES[r['scheme']]} | {r['sparsity']:.2f} | "
                 f"{r['vs_control']['delta']:+.4f} | {r['vs_control']['delta_se']:.4f} | "
                 f"{r['vs_teacher']['delta']:+.4f} | {'yes' if r['mask_exact'] else 'NO'} | "
                 f"{r['seconds']:.0f} |")
    L += ["", f"## Decode speed, batch 1, greedy with KV cache ({st['decode_tokens']} tokens, "
          f"median of {st['decode_rounds']} alternating rounds)", "",
          "| model | tokens/s | speed-up |", "|---|---:|---:|"]
    for r in res["decode"]:
        L.append(f"| {r['model']} | {r['tokens_per_s']:.0f} | {r['speedup']:.2f}x |")
    L += ["", "## Targets", ""]
    for t in res["targets"]:
        v = "n/a" if t["value"] is None else f"{t['value']:+.4f}"
        met = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        L.append(f"- {t['target']}: {v} — {met}")
    return "\n".join(L) + "\n"


def plot(res, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for scheme in CURVE + list(P.STRUCTURED):
        pts = [(r["sparsity"], r["delta"]) for r in res["curve"] if r["scheme"] == scheme]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=NAMES[scheme])
    for scheme in ("2:4", "2:4-wanda"):
        pts = [(r["sparsity"], r["delta"]) for r in res["curve"] if r["scheme"] == scheme]
        if pts:
            ax.plot(*zip(*pts), marker="s", linestyle="none", label=NAMES[scheme])
    for scheme in sorted({r["scheme"] for r in res["finetune"]}):
        pts = [(r["sparsity"], r["vs_control"]["delta"]) for r in res["finetune"]
               if r["scheme"] == scheme]
        ax.plot(*zip(*pts), marker="^", linestyle="--",
                label=f"{NAMES[scheme]}, fine-tuned (vs control)")
    ax.set_yscale("symlog", linthresh=0.05)
    ax.set_xlabel("sparsity (structured: fraction of units removed)")
    ax.set_ylabel("Δ loss (nats/token), paired")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=7)
    ax.set_title("pruning the teacher GPT")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
