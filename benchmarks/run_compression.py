"""The compression table: every quantisation and precision scheme applied to one trained GPT
(the *teacher*), each measured with ``tinyllm eval`` against it on the same windows.

    python benchmarks/run_compression.py --out bench-compress            # trains a teacher
    python benchmarks/run_compression.py --teacher runs/gpt --out DIR     # reuses one
    python benchmarks/run_compression.py --quick --out /tmp/c     # smoke: a row of each kind

For each row: ``tinyllm compress --checkpoint TEACHER --method M --out DIR/M`` (storage
methods), then ``tinyllm eval --checkpoint DIR/M --reference TEACHER --windows N``. Each run
is a process of its own. The rows of the "everywhere" precision modes (every op output
rounded) run in this process through ``tl.precision``. Then the second half of the lab
(``--no-part2`` leaves it out), through the command line as well: pruning
(``tinyllm compress --method prune``, with and without the masked fine-tune), a distilled
2 x 64 student (``tinyllm distill``) and greedy speculative decoding of the teacher with that
student as the draft (``tinyllm generate --draft``: the teacher's own output, so Δ = 0, and
its measured speed-up). Writes ``DIR/compression.json``,
``DIR/compression.md`` (the table) and ``DIR/compression.png`` (size against loss
difference, with decode speed as the label).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# (row name, compress method, extra flags)
STORAGE = [
    ("int8 per-channel", "int8", []),
    ("int8 per-tensor", "int8-tensor", []),
    ("int8 group-32", "int8-g32", []),
    ("int4 per-tensor", "int4-tensor", []),
    ("int4 per-channel", "int4", []),
    ("int4 group-32", "int4-g32", []),
    ("int4 group-32, embedding too", "int4-g32", ["--no-keep-embeddings"]),
    ("fp16 storage", "fp16", []),
    ("bf16 storage", "bf16", []),
]


def _tinyllm(*args, quiet=False) -> str:
    p = subprocess.run([sys.executable, "-m", "tinyllm", *args], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"tinyllm {' '.join(args)} failed ({p.returncode}): "
                         f"{p.stderr.strip()[-500:]}")
    return p.stdout


def _metrics(text: str) -> dict:
    """The metric lines of `tinyllm eval`'s table: {name: value}."""
    out = {}
    for line in text.splitlines():
        parts = line.split("  ")
        parts = [p.strip() for p in parts if p.strip()]
        if len(parts) >= 2:
            try:
                out[parts[0]] = float(parts[1].split()[0].replace(",", ""))
            except ValueError:
                pass
    return out


def teacher(args) -> str:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _teacher import teacher_run
    return teacher_run(args.teacher, args.out, args.quick)


def storage_rows(args, t: str) -> list:
    rows = []
    ev = ["--windows", str(args.windows), "--decode-tokens", str(args.decode_tokens)]
    base = _metrics(_tinyllm("eval", "--checkpoint", t, *ev))
    rows.append({"name": "fp32 (the teacher)", "loss": base["loss"], "delta": 0.0,
                 "delta_se": 0.0, "bytes": base["size as stored"], "size": 1.0,
                 "decode": base.get("decode speed"), "greedy": 100.0})
    for name, method, flags in STORAGE:
        if args.quick and name not in QUICK:
            continue
        d = os.path.join(args.out, name.replace(" ", "_").replace(",", ""))
        _tinyllm("compress", "--checkpoint", t, "--method", method, *flags, "--out", d)
        m = _metrics(_tinyllm("eval", "--checkpoint", d, "--reference", t, *ev))
        rows.append({"name": name, "loss": m["loss"], "delta": m["loss - reference"],
                     "bytes": m["size as stored"], "size": m["size / reference"],
                     "decode": m.get("decode speed"), "greedy": m["greedy agreement"],
                     "prefix": m["identical greedy prefix"]})
        print(f"{name:<32} Δ {rows[-1]['delta']:+.5f}  size {rows[-1]['size']:.3f}x  "
              f"decode {rows[-1]['decode'] or 0:.1f} tok/s", flush=True)
    return rows


# pruning (tinyllm compress --method prune), the same way: (row name, flags)
PRUNE = [
    ("prune magnitude 50%", ["--sparsity", "0.5", "--scheme", "magnitude"]),
    ("prune Wanda 50%", ["--sparsity", "0.5", "--scheme", "wanda"]),
    ("prune 2:4 (Wanda scores)", ["--sparsity", "0.5", "--scheme", "2:4-wanda"]),
    ("prune Wanda 50% + fine-tune", ["--sparsity", "0.5", "--scheme", "wanda",
                                     "--finetune-steps", "{ft}"]),
    ("prune MLP neurons 25% + fine-tune", ["--sparsity", "0.25", "--scheme", "neurons",
                                           "--finetune-steps", "{ft}"]),
]
# --quick (a smoke test of the script, as CI runs it) keeps one row of each kind
QUICK = {"int8 per-channel", "int4 group-32", "bf16 storage", "prune Wanda 50% + fine-tune",
         "prune MLP neurons 25% + fine-tune"}
# knowledge distillation (tinyllm distill): the student 2 layers x 64, 7.2x smaller
DISTILL = ("distilled student 2x64", ["--n_layer=2", "--n_head=4", "--n_embd=64",
                                      "--max_steps={steps}", "--progress=false"])


def _eval_row(args, name, d, t, extra=None) -> dict:
    ev = ["--windows", str(args.windows), "--decode-tokens", str(args.decode_tokens)]
    m = _metrics(_tinyllm("eval", "--checkpoint", d, "--reference", t, *ev))
    row = {"name": name, "loss": m["loss"], "delta": m["loss - reference"],
           "bytes": m["size as stored"], "size": m["size / reference"],
           "decode": m.get("decode speed"), "greedy": m["greedy agreement"],
           "prefix": m["identical greedy prefix"], **(extra or {})}
    print(f"{name:<32} Δ {row['delta']:+.5f}  size {row['size']:.3f}x  "
          f"decode {row['decode'] or 0:.1f} tok/s", flush=True)
    return row


def prune_rows(args, t: str) -> list:
    """Each pruning scheme through ``tinyllm compress --method prune`` (unstructured ones
    store dense weights with zeros: the same bytes; structured ones are smaller)."""
    ft = "20" if args.quick else str(args.finetune_steps)
    rows = []
    for name, flags in PRUNE:
        if args.quick and name not in QUICK:
            continue
        d = os.path.join(args.out, name.replace(" ", "_").replace(":", "-").replace("%", "pc")
                         .replace("+", "ft"))
        _tinyllm("compress", "--checkpoint", t, "--method", "prune",
                 *[f.format(ft=ft) for f in flags], "--out", d)
        rows.append(_eval_row(args, name, d, t))
    return rows


def distill_row(args, t: str) -> dict:
    """A 2 x 64 student trained by ``tinyllm distill`` (T = 1, alpha = 0.5) against the
    teacher; benchmarks/DISTILLATION.md compares it with the same student trained alone."""
    name, flags = DISTILL
    d = os.path.join(args.out, "distilled_student")
    steps = "30" if args.quick else str(args.distill_steps)
    if not os.path.isdir(os.path.join(d, "last")):
        _tinyllm("distill", "--teacher", t, "--out", d, *[f.format(steps=steps)
                                                          for f in flags])
    return _eval_row(args, f"{name} ({steps} steps)", d, t)


def speculative_row(args, t: str, draft: str) -> dict:
    """Greedy speculative decoding of the teacher with the distilled student as its draft
    (``tinyllm generate --draft``): the output is the teacher's own greedy text, so Δ is 0
    by construction; the speed-up is timed against plain decoding in the same process."""
    import re
    out = _tinyllm("generate", "--checkpoint", t, "--draft", draft, "--k", "4",
                   "--temperature", "0", "--max-new-tokens", str(args.decode_tokens),
                   "--prompt", "The ")
    acc = float(re.search(r"acceptance ([0-9.]+)%", out).group(1))
    speed = float(re.search(r"speed-up ([0-9.]+)x", out).group(1))
    same = "identical to plain decoding: yes" in out
    print(f"speculative k=4                  speed-up {speed:.2f}x  acceptance {acc:.1f}%  "
          f"identical {same}", flush=True)
    return {"name": f"speculative greedy, k=4 (draft: the distilled student; acceptance "
                    f"{acc:.0f}%, speed-up {speed:.2f}x)", "loss": None,
            "delta": 0.0 if same else float("nan"), "bytes": None, "size": None,
            "decode": None, "greedy": 100.0 if same else None, "speedup": speed,
            "acceptance": acc}


def everywhere_rows(args, t: str) -> list:
    """bf16/fp16 rounding of every op output (and of the weights, with the row's own
    rounding), in this process: ``precision_eval.precision_rows``, on ``--precision-windows``
    windows (the differences are small: 200 windows make truncation's cost 3 standard errors
    where 40 leave it at ~1), with the KL divergence from fp32 per predicted position."""
    import numpy as np

    import tinyllm as tl
    from tinyllm.data import load_corpus, train_val_split
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from precision_eval import MODES, precision_rows
    model, tok = tl.load(t)
    ids = train_val_split(np.asarray(tok.encode(load_corpus())), 0.9)[1]
    # the fp32 row first: precision_rows measures every row against its first
    modes = [MODES[0]] + [m for m in MODES if m[1] == "everywhere"]
    rows = []
    for r in precision_rows(model, tok, ids, windows=args.precision_windows, modes=modes)[1:]:
        rows.append({"name": r["name"], "loss": r["loss"], "delta": r["delta"],
                     "delta_se": r["delta_se"], "kl": r["kl"], "vs_rne": r.get("vs_rne"),
                     "vs_rne_se": r.get("vs_rne_se"), "windows": args.precision_windows,
                     "bytes": None, "size": None, "decode": None, "greedy": None})
        print(f"{r['name']:<32} Δ {r['delta']:+.5f} ± {r['delta_se']:.5f}  KL {r['kl']:.2e}",
              flush=True)
    return rows


def markdown(rows, t, windows) -> str:
    lines = [f"Teacher: `{t}`; {windows} fixed windows of the validation split; Δ = loss "
             f"difference against the teacher on the same windows (nats/char).", "",
             "| scheme | loss | Δ | size | bytes | decode tok/s (batch 1) | greedy agreement % "
             "| KL per position |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        size = f"{r['size']:.3f}x" if r.get("size") is not None else "-"
        by = f"{r['bytes']:,.0f}" if r.get("bytes") is not None else "-"
        dec = f"{r['decode']:.1f}" if r.get("decode") else "-"
        gr = f"{r['greedy']:.1f}" if r.get("greedy") is not None else "-"
        kl = f"{r['kl']:.1e}" if r.get("kl") is not None else "-"
        se = f" ± {r['delta_se']:.5f}" if r.get("delta_se") else ""
        loss = f"{r['loss']:.4f}" if r.get("loss") is not None else "(the teacher's)"
        lines.append(f"| {r['name']} | {loss} | {r['delta']:+.5f}{se} | {size} | {by} | "
                     f"{dec} | {gr} | {kl} |")
    return "\n".join(lines) + "\n"


def _family(name: str) -> str:
    for key in ("fp32", "int8", "int4", "prune", "distilled"):
        if name.startswith(key):
            return key
    return "16-bit"


def plot(rows, path):
    """Size (log) against the loss difference (symmetric log: the fine-tuned rows lie below
    the teacher), one colour per kind of compression. Decode speed is left to the table: on
    this 0.8 M-parameter model it measures per-token overheads, not weight traffic."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colours = {"fp32": "k", "int8": "C0", "int4": "C1", "16-bit": "C2", "prune": "C3",
               "distilled": "C4"}
    fig, ax = plt.subplots(figsize=(8, 5.5))
    seen = set()
    for i, r in enumerate(rows):
        if r.get("size") is None or r.get("loss") is None:
            continue
        fam = _family(r["name"])
        ax.scatter(r["size"], r["delta"], s=30, color=colours[fam],
                   label=None if fam in seen else fam)
        seen.add(fam)
        ax.annotate(r["name"], (r["size"], r["delta"]), fontsize=6.5,
                    xytext=(4, 6 if i % 2 else -9), textcoords="offset points")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel("size as stored, relative to fp32")
    ax.set_ylabel("loss − teacher's loss (nats/char, paired windows; symlog)")
    ax.set_title("compression: size against loss (decode speed: benchmarks/quant_decode.py)")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench-compress")
    ap.add_argument("--teacher", help="a trained GPT run folder (default: train one)")
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--precision-windows", type=int, default=200)
    ap.add_argument("--only-precision", action="store_true",
                    help="only the everywhere rows (reads DIR/compression.json's others)")
    ap.add_argument("--finetune-steps", type=int, default=250,
                    help="the masked fine-tune of the pruning rows")
    ap.add_argument("--distill-steps", type=int, default=750)
    ap.add_argument("--no-part2", action="store_true",
                    help="leave out pruning, distillation and speculative decoding")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    if a.quick:
        a.windows, a.decode_tokens, a.precision_windows = 4, 8, 4
    os.makedirs(a.out, exist_ok=True)
    t = teacher(a)
    if a.only_precision:
        with open(os.path.join(a.out, "compression.json")) as f:
            old = json.load(f)["rows"]
        rows = [r for r in old if "everywhere" not in r["name"]] + everywhere_rows(a, t)
    else:
        rows = storage_rows(a, t) + everywhere_rows(a, t)
        if not a.no_part2:
            rows += prune_rows(a, t)
            rows.append(distill_row(a, t))
            rows.append(speculative_row(a, t, os.path.join(a.out, "distilled_student")))
    with open(os.path.join(a.out, "compression.json"), "w") as f:
        json.dump({"teacher": t, "windows": a.windows, "rows": rows}, f, indent=1)
    md = markdown(rows, t, a.windows)
    with open(os.path.join(a.out, "compression.md"), "w") as f:
        f.write(md)
    plot(rows, os.path.join(a.out, "compression.png"))
    print("\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
