"""Are two versions of tinyllm equally fast? Time the kernels of two source trees.

    python benchmarks/compare_trees.py OLD_TREE NEW_TREE [--rounds 3] [--only softmax,mlp]
                                       [--full] [--json FILE]

Each round runs ``tinyllm bench --no-torch`` (``--quick`` unless ``--full``) once from each
tree, alternating OLD, NEW, NEW, OLD, ... so that a drift of the machine hits both alike;
every run is a process of its own (``PYTHONPATH`` points at the tree). For each kernel row
(family, size, implementation, pass), and for each end-to-end figure of ``--only e2e``
(training step, generation with and without the KV cache), it prints the median time over
the rounds of each tree and the ratio NEW / OLD (< 1: the new tree is faster), plus the
spread of the per-round ratios. A refactor that changes nothing should give ratios within
the rounds' own spread.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def bench_once(tree: str, args, out: str) -> dict:
    cmd = [sys.executable, "-m", "tinyllm", "bench", "--no-torch", "--json", out]
    if not args.full:
        cmd.append("--quick")
    if args.only:
        cmd += ["--only", args.only]
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree),
               NUMBA_CACHE_DIR=os.path.join(os.path.abspath(tree), ".numba_cache"))
    r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"compare_trees: bench failed in {tree}: "
                 f"{(r.stderr.strip().splitlines() or ['no output'])[-1]}")
    with open(out) as f:
        return json.load(f)


def rows(result: dict) -> dict:
    """(family, size, impl, pass) -> median ms; end-to-end entries (``--only e2e``) as
    ("e2e", config, "tinyllm", "train" | "generate_cache" | "generate_nocache")."""
    out = {(r["name"], r["size"], r["impl"], r["pass"]): r["median_ms"]
           for r in result.get("kernels", [])}
    for e in result.get("e2e", []):
        if e.get("impl") == "tinyllm" and "error" not in e:
            for what in ("train", "generate_cache", "generate_nocache"):
                out[("e2e", f"config {e['config']}", "tinyllm", what)] = e[what]["median_ms"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", default=None,
                   help="kernel families (and e2e: the GPT end to end), comma separated")
    p.add_argument("--full", action="store_true", help="the full sweep instead of --quick")
    p.add_argument("--json", default=None, help="write the per-round times here")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    for t in (args.old, args.new):
        if not os.path.isdir(os.path.join(t, "tinyllm")):
            p.error(f"{t} holds no tinyllm package")
    times = {"old": [], "new": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            order = ("old", "new") if i % 2 == 0 else ("new", "old")
            for which in order:
                tree = args.old if which == "old" else args.new
                res = bench_once(tree, args, os.path.join(tmp, f"{which}{i}.json"))
                times[which].append(rows(res))
                print(f"round {i + 1}/{args.rounds}: {which} done", file=sys.stderr)
    keys = [k for k in times["new"][0] if all(k in r for r in times["old"] + times["new"])]
    print(f"{'family':18s} {'size':28s} {'impl':6s} {'pass':8s} {'old ms':>9s} {'new ms':>9s}"
          f" {'new/old':>8s} {'round ratios':>20s}")
    ratios = []
    for k in keys:
        old = statistics.median(r[k] for r in times["old"])
        new = statistics.median(r[k] for r in times["new"])
        per = [n[k] / o[k] for n, o in zip(times["new"], times["old"])]
        ratios.append(new / old)
        print(f"{k[0]:18s} {k[1]:28s} {k[2]:6s} {k[3]:8s} {old:9.3f} {new:9.3f} "
              f"{new / old:8.2f} {min(per):9.2f}..{max(per):.2f}")
    if ratios:
        print(f"\ngeometric mean of new/old over {len(ratios)} rows: "
              f"{statistics.geometric_mean(ratios):.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"keys": [list(k) for k in keys],
                       "old": [[r[k] for k in keys] for r in times["old"]],
                       "new": [[r[k] for k in keys] for r in times["new"]]}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
