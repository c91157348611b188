"""Data-parallel training over MPI on this machine, and a cost model for N machines.

Measured (this machine, 2 cores):
  - GPT config A (the "small" preset: 4 layers, 4 heads, 128 wide, block 128, batch 16,
    char-level on the embedded corpus) trained by the Trainer as 2 ranks x 1 thread
    (``mpiexec -n 2``, batch 8 a rank) against 1 rank x 2 threads, and 1 rank x 1 thread
    for reference, in rounds whose order rotates (2x1, 1x2, 1x1, then 1x2, 1x1, 2x1, ...):
    tokens/s, and per step the time spent in the gradient all-reduces (which includes
    waiting for the slower rank) and the bytes all-reduced;
  - the all-reduce alone between 2 ranks (shared memory here) for message sizes from 8 B to
    8 MiB: alpha = the fastest 8-byte time, bandwidth = 8 MiB / (its fastest time - alpha).

Cost model (printed, and written to the JSON): one optimiser step on N machines, each with
the configuration's batch (weak scaling: the global batch grows with N),

    t_step(N) = t_compute + t_allreduce(N),
    t_allreduce(N) = 2 (N-1)/N * P * s / bw  +  2 (N-1) * alpha       (ring all-reduce)

with P parameters of s = 4 bytes: a ring all-reduce sends and receives 2 (N-1)/N of the
gradient per rank, in 2 (N-1) steps of latency alpha. tokens/s(N) = N * tokens a machine /
t_step(N); efficiency = t_compute / t_step(N). t_compute of config A on one core is twice the
measured 2-rank step minus its all-reduce time (a rank there computes half of A's batch on
one thread); config B (6 layers, 384 wide, block 256, batch 8: the "medium" preset) is
scaled from A by FLOPs per step (6 * params * tokens + 12 * L * T * C * tokens for the
attention). Scenarios divide t_compute by a speed-up (16 cores at ideal scaling, a GPU at
~500x a core) and take a link: 1 GbE, 10 GbE, 100 Gb/s InfiniBand (90% of the line rate and
a typical latency), or the shared memory measured here.

Run:  python benchmarks/distributed.py [--rounds 3] [--steps 6]
          [--json benchmarks/distributed.json]
(needs pip install -e ".[mpi]"). Timings on a shared machine are noisy: compare the two
layouts within one run.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (compute speed-up over the measured single core, link bytes/s, link latency s)
SCENARIOS = {"1 core, 1 GbE": (1, 1.25e8 * 0.9, 50e-6),
             "16 cores (ideal), 1 GbE": (16, 1.25e8 * 0.9, 50e-6),
             "16 cores (ideal), 10 GbE": (16, 1.25e9 * 0.9, 20e-6),
             "GPU (~500x a core), 10 GbE": (500, 1.25e9 * 0.9, 20e-6),
             "GPU (~500x a core), 100 Gb/s InfiniBand": (500, 1.25e10 * 0.9, 3e-6)}
CONFIGS = {"A": dict(n_layer=4, n_embd=128, block_size=128, batch_size=16),
           "B": dict(n_layer=6, n_embd=384, block_size=256, batch_size=8)}


def mpiexec():
    exe = (shutil.which("mpiexec", path=os.path.dirname(sys.executable))
           or shutil.which("mpiexec"))
    if exe is None:
        sys.exit('benchmarks/distributed.py: no mpiexec; pip install -e ".[mpi]"')
    return exe


def env(threads: int) -> dict:
    t = str(threads)
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                NUMBA_NUM_THREADS=t, OMP_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t,
                MKL_NUM_THREADS=t)


# ------------------------------------------------------------------ workers

def worker_train(args):
    """One layout of config A: warm-up steps, then ``steps`` timed steps; rank 0 prints JSON."""
    from tinyllm import runtime
    runtime.configure(threads=args.threads, keep_freed_memory=True)
    from tinyllm.data import get_batch
    from tinyllm.train.runs import build_model, make_preset, prepare_text
    from tinyllm.train import TrainConfig, Trainer
    p = make_preset("gpt", "small")
    tok, train, _ = prepare_text(p, None)
    B, T = p.data.batch_size, p.model.block_size
    model = build_model(p, tok.vocab_size)
    cfg = TrainConfig(max_steps=args.warm, lr=p.train.lr, min_lr=p.train.min_lr,
                      warmup_steps=0, eval_every=10 ** 6, progress=False,
                      distributed=args.distributed, bucket_mb=args.bucket_mb)
    t = Trainer(model, lambda rng: get_batch(train, B, T, rng), None, cfg, log=None)
    t.fit()                                          # warm-up (Numba compiled, caches hot)
    t.cfg.max_steps = args.warm + args.steps
    if t.dist is not None:
        t.dist.seconds, t.dist.bytes, t.dist.calls = 0.0, 0, 0
    r = t.fit()
    if t.rank == 0:
        n = args.steps
        d = t.dist
        print(json.dumps({
            "ranks": t.world, "threads": args.threads, "steps": n,
            "tokens_per_s": r.tokens / r.seconds, "step_s": r.seconds / n,
            "allreduce_s_per_step": d.seconds / n if d else 0.0,
            "allreduce_bytes_per_step": d.bytes / n if d else 0,
            "allreduce_calls_per_step": d.calls / n if d else 0,
            "params": int(sum(q.data.size for q in model.parameters())),
            "vocab": tok.vocab_size}))


def worker_pingpong(args):
    """All-reduce alone between the ranks: (bytes, median s, fastest s) per size; rank 0
    prints JSON. The fit uses the fastest: on a loaded machine the median mostly measures
    how long a rank waits to be scheduled."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    out = []
    for nbytes in [8, 1024, 65536, 1 << 20, 4 << 20, 8 << 20]:
        a = np.ones(max(1, nbytes // 4), np.float32)
        reps = 200 if nbytes <= 65536 else 20
        ts = []
        for _ in range(reps):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)
            ts.append(time.perf_counter() - t0)
        out.append((a.nbytes, float(np.median(ts)), float(np.min(ts))))
    if comm.Get_rank() == 0:
        print(json.dumps({"allreduce": out}))


# ------------------------------------------------------------------ the parent

def run_json(cmd, threads):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env(threads), timeout=900,
                       stdin=subprocess.DEVNULL)
    if p.returncode:
        sys.exit(f"benchmarks/distributed.py: {' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    return json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])


def flops_per_step(c: dict, vocab: int) -> float:
    """6 * params * tokens + 12 * L * T * C * tokens (attention scores and mixing)."""
    L, C, T, B = c["n_layer"], c["n_embd"], c["block_size"], c["batch_size"]
    params = L * 12 * C * C + vocab * C + T * C
    tokens = B * T
    return 6 * params * tokens + 12 * L * T * C * tokens, params


def model(t_compute: float, params: int, tokens: int, bw: float, alpha: float, n: int,
          nbytes: int = 4) -> dict:
    t_ar = 0.0 if n == 1 else 2 * (n - 1) / n * params * nbytes / bw + 2 * (n - 1) * alpha
    t = t_compute + t_ar
    return {"N": n, "step_s": t, "allreduce_s": t_ar, "tokens_per_s": n * tokens / t,
            "efficiency": t_compute / t}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warm", type=int, default=2)
    ap.add_argument("--bucket_mb", type=float, default=25.0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--from-json", default=None, help="recompute the fit and the cost model "
                    "from a JSON this script wrote (no runs)")
    ap.add_argument("--worker", choices=("train", "pingpong"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--distributed", action="store_true")
    args = ap.parse_args()
    if args.worker == "train":
        return worker_train(args)
    if args.worker == "pingpong":
        return worker_pingpong(args)
    if args.from_json:
        with open(args.from_json) as f:
            d = json.load(f)
        return report(d["measured"], d["rounds"], d["allreduce_alone"], args.json)

    exe = mpiexec()
    me = [sys.executable, os.path.abspath(__file__), "--steps", str(args.steps), "--warm",
          str(args.warm), "--bucket_mb", str(args.bucket_mb)]
    layouts = {"2 ranks x 1 thread": ([exe, "-n", "2"] + me + ["--worker", "train",
                                                               "--threads", "1",
                                                               "--distributed"], 1),
               "1 rank x 2 threads": (me + ["--worker", "train", "--threads", "2"], 2),
               "1 rank x 1 thread": (me + ["--worker", "train", "--threads", "1"], 1)}
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs; config A, "
          f"{args.rounds} rounds of {args.steps} steps (after {args.warm} warm-up) a layout")
    rows = {k: [] for k in layouts}
    names = list(layouts)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:   # rotated
            cmd, threads = layouts[name]
            res = run_json(cmd, threads)
            rows[name].append(res)
            print(f"  round {r + 1} {name}: {res['tokens_per_s']:,.0f} tokens/s, "
                  f"{res['step_s'] * 1e3:.0f} ms/step, all-reduce "
                  f"{res['allreduce_s_per_step'] * 1e3:.1f} ms/step", flush=True)
    summary = {}
    for name, rs in rows.items():
        summary[name] = {k: float(np.median([x[k] for x in rs]))
                         for k in ("tokens_per_s", "step_s", "allreduce_s_per_step",
                                   "allreduce_bytes_per_step", "allreduce_calls_per_step")}
    two, one = summary["2 ranks x 1 thread"], summary["1 rank x 2 threads"]
    print(f"\nmedians: 2x1 {two['tokens_per_s']:,.0f} tokens/s against 1x2 "
          f"{one['tokens_per_s']:,.0f}: ratio {two['tokens_per_s'] / one['tokens_per_s']:.2f} "
          f"(1x1: {summary['1 rank x 1 thread']['tokens_per_s']:,.0f}); "
          f"all-reduce {two['allreduce_s_per_step'] * 1e3:.1f} ms of "
          f"{two['step_s'] * 1e3:.0f} ms a step "
          f"({two['allreduce_bytes_per_step'] / 2 ** 20:.2f} MiB in "
          f"{two['allreduce_calls_per_step']:.0f} calls)")

    pp = run_json([exe, "-n", "2"] + me + ["--worker", "pingpong"], 1)["allreduce"]
    report(summary, rows, pp, args.json)


def report(summary, rows, pp, json_path=None):
    """The all-reduce fit and the cost model from the measurements (also ``--from-json``)."""
    two = summary["2 ranks x 1 thread"]
    # alpha: the fastest 8-byte all-reduce; bandwidth: the largest message's bytes over its
    # fastest time less alpha (a least-squares line lets one slow size move the intercept)
    alpha = float(pp[0][2])
    bw = float(pp[-1][0]) / max(float(pp[-1][2]) - alpha, 1e-12)
    print("all-reduce alone, 2 ranks (median / fastest): " + ", ".join(
        f"{b} B {t * 1e6:.0f}/{m * 1e6:.0f} us" for b, t, m in pp))
    print(f"from the fastest: alpha {alpha * 1e6:.1f} us, bandwidth {bw / 1e9:.2f} GB/s")

    first = rows["2 ranks x 1 thread"][0]
    params_a, vocab = first["params"], first["vocab"]
    fa, _ = flops_per_step(CONFIGS["A"], vocab)
    # the compute of one rank's step (batch 8, 1 thread): measured step minus all-reduce
    tc_rank_a = two["step_s"] - two["allreduce_s_per_step"]
    pred = {}
    for cname in ("A", "B"):
        f, P = flops_per_step(CONFIGS[cname], vocab)
        P = params_a if cname == "A" else P          # A: counted; B: the formula
        tc = tc_rank_a * 2 * f / fa        # one core's step on the config's whole batch
        tokens = CONFIGS[cname]["batch_size"] * CONFIGS[cname]["block_size"]
        pred[cname] = {"params": P, "flops_per_step": f, "t_compute_1core_s": tc,
                       "bytes_per_step": 4 * P, "scenarios": {}}
        scen = dict(SCENARIOS, **{"1 core, shared memory (measured link)": (1, bw, alpha)})
        for sname, (speed, lbw, la) in scen.items():
            pred[cname]["scenarios"][sname] = [model(tc / speed, P, tokens, lbw, la, n)
                                               for n in (1, 2, 4, 8, 16, 64)]
    print("\npredicted efficiency t_compute / t_step (weak scaling: each machine keeps the "
          "config's batch):")
    for cname, pc in pred.items():
        print(f"config {cname}: {pc['params']:,} parameters, {pc['bytes_per_step'] / 2**20:.1f}"
              f" MiB all-reduced a step, compute {pc['t_compute_1core_s']:.2f} s a step on one "
              f"core")
        for sname, ms in pc["scenarios"].items():
            print(f"  {sname:<40}" + "  ".join(f"N={m['N']}: {m['efficiency'] * 100:3.0f}%"
                                               for m in ms[1:]))
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"measured": summary, "rounds": rows, "allreduce_alone": pp,
                       "fit": {"alpha_s": alpha, "bandwidth_Bps": bw},
                       "predicted": pred, "cpus": os.cpu_count(),
                       "python": platform.python_version()}, f, indent=1)
        print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
