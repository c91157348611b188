"""Knowledge distillation measured: a small student trained alone against the same student
distilled from a trained teacher, at equal student steps and at equal wall time.

    python benchmarks/distill_eval.py --out bench-distill                # the full run
    python benchmarks/distill_eval.py --teacher runs/gpt --out DIR       # another teacher
    python benchmarks/distill_eval.py --quick --out /tmp/d               # smoke (< 60 s)

Teacher: a trained GPT run folder (default: the "small" preset, 4 layers x 128, char-level,
trained for 2000 steps into DIR/teacher by ``benchmarks/_teacher.py``). Student: the teacher's settings with ``--student`` overrides (default 2
layers x 64, 4 heads; the same tokenizer, block size, batch size and constant learning rate),
``--steps`` steps (750). Rows, each a run folder under DIR/runs written as ``tinyllm
distill`` / ``tinyllm train`` write them (``tinyllm.compress.distill.distill_run``,
``tinyllm.train.runs.gpt_trainer``):

- the student alone (plain cross-entropy), one per seed;
- distilled, forward KL, T = 1, alpha = 0.5, one per seed; forward KL at T = 2; reverse KL at
  T = 1 (first seed);
- the student alone at equal wall time: ``round(steps x r)`` steps, r = (ms per distillation
  step) / (ms per plain step), measured below (the learning rate is constant, so more steps
  do not change the schedule of the first ones).

Every student is scored with ``tinyllm eval``'s functions (``tinyllm.train.evaluate``) on
the same ``--windows`` seeded windows of the teacher's validation split: its loss, and the
difference against the student alone of the same seed paired per window (mean and standard
error sd(d) / sqrt(W)). The seed spread is the range of the T = 1 difference over seeds.

Step cost: the plain student step and the distillation step (teacher forward under no_grad +
student forward/backward + AdamW) are timed as the Trainer runs them, in alternating rounds
after a warm-up, median ms/step; the teacher's forward alone and the loss alone beside them.
Writes DIR/distill.json and DIR/distill.md (the table, the command and its run time).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tinyllm import runtime  # noqa: E402
from tinyllm.autograd import no_grad  # noqa: E402
from tinyllm.autograd.distillation import distill_loss  # noqa: E402
from tinyllm.compress.distill import distill_run, student_preset, teacher_text  # noqa: E402
from tinyllm.train.evaluate import window_losses  # noqa: E402
from tinyllm.train.runs import gpt_trainer, load_model  # noqa: E402

# (row key, label, distillation settings or None for the student alone, seeds: "all"/"first")
VARIANTS = [
    ("alone", "student alone (CE)", None, "all"),
    ("fwd_T1", "distilled, forward KL, T=1, alpha=0.5", dict(temperature=1.0, alpha=0.5,
                                                             kind="forward"), "all"),
    ("fwd_T2", "distilled, forward KL, T=2, alpha=0.5", dict(temperature=2.0, alpha=0.5,
                                                             kind="forward"), "first"),
    ("rev_T1", "distilled, reverse KL, T=1, alpha=0.5", dict(temperature=1.0, alpha=0.5,
                                                             kind="reverse"), "first"),
]


def _settings(args, seed: int, steps: int) -> list:
    s = [f"--{kv}" for kv in args.student.split(",") if kv]
    s += [f"--max_steps={steps}", f"--seed={seed}", f"--eval_every={args.eval_every}",
          "--eval_batches=8", "--sample_every=0", "--progress=false", "--log_every=50"]
    if args.batch_size:
        s.append(f"--batch_size={args.batch_size}")
    if args.block_size:
        s.append(f"--block_size={args.block_size}")
    return s


def _log(msg: str) -> None:
    print(msg, flush=True)


def train_row(args, teacher_dir, key, dist, seed, steps, log):
    """Train one student into DIR/runs/<key>_s<seed>; (student, seconds, meta)."""
    out = os.path.join(args.out, "runs", f"{key}_s{seed}")
    if os.path.isdir(out):
        shutil.rmtree(out)
    sets = _settings(args, seed, steps)
    if dist is None:
        _, _, tmeta = load_model(_resolve(teacher_dir))
        p = student_preset(tmeta["settings"], sets)
        trainer, _, _, _ = gpt_trainer(p, teacher_text(tmeta), out, log=log)
        model = trainer.model
    else:
        sets += [f"--{k}={v}" for k, v in dist.items()]
        trainer, _ = distill_run(teacher_dir, out, sets, log=log)
        model = trainer.model.student
    t0 = time.perf_counter()
    res = trainer.fit()
    sec = time.perf_counter() - t0
    model.eval()
    return model, sec, res


def _resolve(path):
    from tinyllm.train.checkpoint import resolve
    return resolve(path)


def step_costs(args, teacher_dir, rounds: int, steps_per_round: int) -> dict:
    """Median ms per plain step and per distillation step (alternating rounds, after one
    warm-up round each), plus the teacher's forward and the loss alone."""
    from tinyllm import optim
    sets = _settings(args, 0, 10)
    trainer_d, info = distill_run(teacher_dir, None, sets, log=None)
    _, _, tmeta = load_model(_resolve(teacher_dir))
    p = student_preset(tmeta["settings"], sets)
    trainer_p, _, _, _ = gpt_trainer(p, teacher_text(tmeta), None, log=None)
    teacher = info["teacher"]

    def runner(tr):
        model = tr.model
        params = [q for q in model.parameters() if q.requires_grad]
        opt = optim.AdamW(params, lr=1e-4)
        rng = np.random.default_rng(0)
        model.train()

        def step():
            x, y = tr.train_batch(rng)
            _, loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            optim.clip_grad_norm_(params, 1.0)
            opt.step()
        return step

    rng = np.random.default_rng(1)
    x, y = trainer_p.train_batch(rng)
    with no_grad():
        zt = teacher(x)[0].data
    zs = trainer_p.model(x)[0]

    def teacher_fwd():
        with no_grad():
            teacher(x)

    def loss_only():
        from tinyllm.autograd import Tensor
        z = Tensor(zs.data, requires_grad=True)
        distill_loss(z, zt, y, T=1.0, alpha=0.5).backward()

    def student_fwd_bwd():
        _, loss = trainer_p.model(x, y)
        loss.backward()

    jobs = {"plain": runner(trainer_p), "distill": runner(trainer_d),
            "teacher_forward": teacher_fwd, "distill_loss": loss_only,
            "student_fwd_bwd": student_fwd_bwd}
    times = {k: [] for k in jobs}
    for r in range(rounds + 1):
        for k, f in jobs.items():
            t0 = time.perf_counter()
            for _ in range(steps_per_round):
                f()
            if r:                                    # round 0 is the warm-up
                times[k].append((time.perf_counter() - t0) / steps_per_round * 1e3)
    out = {k: {"median_ms": float(np.median(v)), "min_ms": float(np.min(v)),
               "max_ms": float(np.max(v))} for k, v in times.items()}
    out["ratio"] = out["distill"]["median_ms"] / out["plain"]["median_ms"]
    out["rounds"], out["steps_per_round"] = rounds, steps_per_round
    return out


def score(model, ids, windows, seed=0):
    return window_losses(model, ids, windows, seed)


def paired(a, b) -> tuple:
    d = a - b
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


def markdown(res: dict) -> str:
    c, cost = res["config"], res["cost"]
    L = [f"# Knowledge distillation: {c['student']} student from a {c['teacher_shape']} "
         f"teacher", "",
         f"Command: `{res['command']}` ({res['seconds']:.0f} s on a shared 2-core machine, "
         f"{c['threads']} thread(s) pinned; load average {res['load_before']:.1f} before, "
         f"{res['load_after']:.1f} after: other jobs ran beside it, so the seconds are "
         f"noisy; the losses are not, a run is a function of its settings).", "",
         f"Teacher `{c['teacher']}`: {c['teacher_params']:,} parameters, val loss "
         f"{res['teacher_loss']:.4f}. Student: {c['student_params']:,} parameters "
         f"({c['teacher_params'] / c['student_params']:.1f}x smaller), {c['steps']} steps of "
         f"batch {c['batch_size']} x {c['block_size']} tokens, constant lr "
         f"{c['lr']:g}. Losses: nats/token on {c['windows']} seeded windows of the teacher's "
         f"validation split (`tinyllm eval`'s windows); Δ = paired difference per window "
         f"against the student alone of the same seed (± its standard error).", "",
         "| row | seed | steps | val loss | Δ vs alone | train s |",
         "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        d = "" if r["delta"] is None else f"{r['delta']:+.4f} ± {r['delta_se']:.4f}"
        L.append(f"| {r['label']} | {r['seed']} | {r['steps']} | {r['loss']:.4f} | {d} | "
                 f"{r['seconds']:.0f} |")
    s = res["summary"]
    L += ["", "Step cost (median of alternating rounds, ms; min-max):", "",
          "| part | ms | min-max |", "|---|---|---|"]
    for k in ("plain", "distill", "teacher_forward", "student_fwd_bwd", "distill_loss"):
        v = cost[k]
        L.append(f"| {k.replace('_', ' ')} | {v['median_ms']:.1f} | {v['min_ms']:.1f}-"
                 f"{v['max_ms']:.1f} |")
    L += ["", f"A distillation step costs **{cost['ratio']:.2f}x** a plain student step "
          f"({cost['rounds']} rounds of {cost['steps_per_round']} steps each, alternating); "
          f"the teacher's forward alone is {cost['teacher_forward']['median_ms']:.1f} ms, the "
          f"distillation loss (KL + CE, forward and backward) "
          f"{cost['distill_loss']['median_ms']:.1f} ms. From the training rows' own wall "
          f"time (validation included): {s['run_ratio']:.2f}x.", "",
          "Summary:", ""]
    for line in s["lines"]:
        L.append(f"- {line}")
    L.append("")
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=None, help="a GPT run or checkpoint folder "
                    "(default: the small preset trained into OUT/teacher)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--quick", action="store_true", help="a smoke run (< 60 s)")
    ap.add_argument("--steps", type=int, default=None, help="student steps (default 750)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds (default 2)")
    ap.add_argument("--windows", type=int, default=None, help="eval windows (default 64)")
    ap.add_argument("--student", default="n_layer=2,n_embd=64,n_head=4",
                    help="student settings, comma-separated key=value")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--block-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="BLAS and Numba threads, pinned "
                    "(default 1: on a shared machine more threads than free cores stall)")
    args = ap.parse_args(argv)
    q = args.quick
    steps = args.steps or (6 if q else 750)
    seeds = list(range(args.seeds or (1 if q else 2)))
    windows = args.windows or (8 if q else 64)
    if q:
        args.batch_size = args.batch_size or 4
        args.block_size = args.block_size or 32
    args.eval_every = max(1, steps // 3)
    runtime.configure(threads=args.threads, keep_freed_memory=True)
    os.makedirs(args.out, exist_ok=True)
    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _teacher import teacher_run
    args.teacher = teacher_run(args.teacher, args.out, q)
    teacher, tok, tmeta = load_model(_resolve(args.teacher))
    p = student_preset(tmeta["settings"], _settings(args, 0, steps))
    from tinyllm.data import encode_text, load_corpus, train_val_split
    val = train_val_split(encode_text(load_corpus(teacher_text(tmeta)), tok), 0.9)[1]
    block = p.model.block_size
    teacher_loss = float(window_losses(teacher, val, windows, 0).mean())
    _log(f"teacher {args.teacher}: {teacher.num_parameters():,} parameters, val "
         f"{teacher_loss:.4f} on {windows} windows")
    cost = step_costs(args, args.teacher, rounds=2 if q else 7, steps_per_round=2 if q else 6)
    _log(f"step cost: plain {cost['plain']['median_ms']:.1f} ms, distill "
         f"{cost['distill']['median_ms']:.1f} ms, ratio {cost['ratio']:.2f}; teacher forward "
         f"{cost['teacher_forward']['median_ms']:.1f} ms")
    rows, base = [], {}
    wall_steps = int(round(steps * cost["ratio"]))
    plan = []
    for seed in seeds:
        for key, label, dist, which in VARIANTS:
            if which == "all" or seed == seeds[0]:
                plan.append((key, label, dist, seed, steps))
        if seed == seeds[0]:
            plan.append(("alone_wall", f"student alone, equal wall time ({wall_steps} steps "
                         f"= {steps} x {cost['ratio']:.2f})", None, seed, wall_steps))
    res = {"command": "python benchmarks/distill_eval.py " + " ".join(argv or sys.argv[1:]),
           "config": {"teacher": args.teacher, "teacher_params": teacher.num_parameters(),
                      "teacher_shape": f"{teacher.config.n_layer} layers x "
                                       f"{teacher.config.n_embd}",
                      "student": f"{p.model.n_layer} layers x {p.model.n_embd}",
                      "steps": steps, "batch_size": p.data.batch_size, "block_size": block,
                      "lr": p.train.lr, "windows": windows, "seeds": seeds,
                      "threads": args.threads},
           "teacher_loss": teacher_loss, "cost": cost, "rows": rows, "load_before": load0}
    for key, label, dist, seed, n in plan:
        model, sec, r = train_row(args, args.teacher, key, dist, seed, n, log=None)
        w = score(model, val, windows)
        row = {"key": key, "label": label, "seed": seed, "steps": n, "loss": float(w.mean()),
               "seconds": sec, "settings": dist, "delta": None, "delta_se": None,
               "ms_per_step": sec / n * 1e3}
        if key == "alone":
            base[seed] = w
        elif seed in base:
            row["delta"], row["delta_se"] = paired(w, base[seed])
        row["config"] = {"student_params": model.num_parameters()}
        rows.append(row)
        _log(f"{label} seed {seed}: {n} steps in {sec:.0f} s, val {row['loss']:.4f}"
             + (f", delta {row['delta']:+.4f} +- {row['delta_se']:.4f}"
                if row["delta"] is not None else ""))
        res["config"]["student_params"] = model.num_parameters()
        res["seconds"] = time.perf_counter() - t_start
        with open(os.path.join(args.out, "distill.json"), "w") as f:
            json.dump(res, f, indent=1)
    res["load_after"] = os.getloadavg()[0]
    res["summary"] = summarise(res, steps)
    res["seconds"] = time.perf_counter() - t_start
    with open(os.path.join(args.out, "distill.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(args.out, "distill.md"), "w") as f:
        f.write(markdown(res))
    print(markdown(res))
    return 0


def summarise(res, steps) -> dict:
    rows = res["rows"]
    by = {}
    for r in rows:
        by.setdefault(r["key"], []).append(r)
    lines, checks = [], {}
    t1 = [r["delta"] for r in by.get("fwd_T1", []) if r["delta"] is not None]
    if t1:
        spread = max(t1) - min(t1)
        ok = max(t1) <= -0.05
        checks["T1_equal_steps"] = ok
        lines.append(f"equal student steps ({steps}), forward KL T=1: Δ "
                     f"{', '.join(f'{d:+.4f}' for d in t1)} over {len(t1)} seed(s) (spread "
                     f"{spread:.4f}); target ≤ -0.05: {'met' if ok else 'NOT met'}")
    for key, target in (("fwd_T2", -0.03), ("rev_T1", None)):
        ds = [r["delta"] for r in by.get(key, []) if r["delta"] is not None]
        if ds:
            txt = f"{key.replace('_', ' ')}: Δ {ds[0]:+.4f}"
            if target is not None:
                ok = ds[0] <= target
                checks[key] = ok
                txt += f"; target ≤ {target}: {'met' if ok else 'NOT met'}"
            lines.append(txt)
    wall = by.get("alone_wall", [])
    dT1 = [r for r in by.get("fwd_T1", []) if r["seed"] == res["config"]["seeds"][0]]
    if wall and dT1:
        d = dT1[0]["loss"] - wall[0]["loss"]
        lines.append(f"equal wall time: the student alone for {wall[0]['steps']} steps reaches "
                     f"{wall[0]['loss']:.4f} against the T=1 distilled student's "
                     f"{dT1[0]['loss']:.4f} at {steps} steps: distilled − alone = {d:+.4f} "
                     f"({'distillation wins' if d < 0 else 'the student alone wins'})")
    alone = [r["ms_per_step"] for r in rows if r["key"] == "alone"]
    dist = [r["ms_per_step"] for r in rows if r["key"].startswith(("fwd", "rev"))]
    run_ratio = float(np.mean(dist) / np.mean(alone)) if alone and dist else float("nan")
    return {"lines": lines, "checks": checks, "run_ratio": run_ratio}


if __name__ == "__main__":
    sys.exit(main())
