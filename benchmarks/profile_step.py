"""One GPT training step op by op, tinyllm beside torch.profiler, before and after the engine
owns its threads: writes ``PROFILE.md`` (and ``profile.json``) here.

    python benchmarks/profile_step.py            # configs A and B, before and after
    python benchmarks/profile_step.py --quick    # config A only, few steps (a smoke run)

"after" is the engine as it is: matrix products as tiles on Numba's pool
(``tinyllm.kernels.matmul``), Numba on its omp layer. "before" is the same code with
``TINYLLM_MATMUL=numpy`` (every product through NumPy's own OpenBLAS pool) and Numba on the
workqueue layer, as tinyllm trained until then. Each engine runs in a process of its own
(``tinyllm.bench.profile``); run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="config A, 2 + 3 steps")
    ap.add_argument("--out", default=HERE, help="folder for PROFILE.md and profile.json "
                    "(default: this folder)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    from tinyllm.bench import machine, profile, specs
    threads = args.threads or min(machine.cores(), machine.max_threads())
    models = specs.model_specs(args.quick)
    if args.quick:
        models = models[:1]
    warm, steps = profile.STEPS[args.quick]
    torch = machine.torch_installed()
    runs = {}
    for label, env in (("before", {"TINYLLM_MATMUL": "numpy",
                                   "NUMBA_THREADING_LAYER": "workqueue"}),
                       ("after", {})):
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            print(f"{label}:", file=sys.stderr)
            runs[label] = profile.run(models, threads=threads, torch=torch, warm_steps=warm,
                                      steps=steps, log=lambda m: print(m, file=sys.stderr))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "profile.json"), "w") as f:
        json.dump({"threads": threads, "runs": runs,
                   "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}, f, indent=1)
    text = [
        "# One training step, op by op (tinyllm beside torch.profiler)",
        "",
        f"`python benchmarks/profile_step.py{' --quick' if args.quick else ''}`, "
        f"{threads} threads, {time.strftime('%Y-%m-%d')}; each engine in a process of its "
        f"own, {warm} warm-up steps, the step time the median of {steps} unprofiled steps, "
        f"the breakdown per step over {steps} profiled ones. Written by the script: the "
        "reading is in `RESULTS.md` (\"Where a training step's time goes\").",
        "",
        "**before**: every matrix product through NumPy's matmul (OpenBLAS's own thread "
        "pool) and Numba on its workqueue layer (`TINYLLM_MATMUL=numpy "
        "NUMBA_THREADING_LAYER=workqueue`). **after**: the engine as it is (products as "
        "tiles on Numba's pool, `tinyllm.kernels.matmul`; Numba on omp).",
        "",
        "In the before tables the products inside the fused MLP node ran through NumPy, which "
        "the profiler does not see inside a node, so they sit in that node's row (\"GELU / MLP "
        "elementwise\"), not under matrix products.",
        "",
    ]
    for label in ("before", "after"):
        text += [f"## {label}", "", profile.table(runs[label]), ""]
    path = os.path.join(args.out, "PROFILE.md")
    with open(path, "w") as f:
        f.write("\n".join(text))
    print("\n".join(text))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
