"""The fine-tuning lab's benchmark: ``tinyllm finetune --compare`` from nothing (a fresh
cache, so pretraining is timed too), then the issue's six targets checked on its table.

    python benchmarks/finetune.py --out bench-ft            # the full table (~15 min)
    python benchmarks/finetune.py --quick --out /tmp/ft     # the smoke version (~1-2 min)
    python benchmarks/finetune.py --regularisation          # also the regularisation table

It prints the comparison table (also in OUT/compare.md) and one line per target with the
measured figure and the margin. With ``--quick`` the models are too small and short to reach
the targets; it checks that everything runs and prints what it got.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def targets(res: dict) -> list:
    """(name, ok, text) per target of the issue, from compare.json's rows."""
    by = {r["name"]: r for r in res["rows"]}
    em = {k: v["em"] for k, v in by.items()}
    full, scratch, frozen = em["full"], em["from scratch"], em["frozen + linear head"]
    lora = by["LoRA r=8 q,v,fc1,fc2"]
    joint = by["joint MLM + QA"]
    fr = by["full"]
    d_full = fr["mlm_loss_after"] - fr["mlm_loss_before"]
    d_joint = joint["mlm_loss_after"] - joint["mlm_loss_before"]
    t = res["total_seconds"]
    return [
        ("1 pretraining matters: EM(full) - EM(scratch) >= 8", full - scratch >= 8,
         f"{full:.1f} - {scratch:.1f} = {full - scratch:+.1f}"),
        ("2 scratch near the typed baseline: EM(scratch) <= 51", scratch <= 51,
         f"{scratch:.1f}"),
        ("3 frozen is not enough: EM(frozen) <= 32 and EM(full) - EM(frozen) >= 20",
         frozen <= 32 and full - frozen >= 20, f"frozen {frozen:.1f}, gap {full - frozen:+.1f}"),
        ("4 LoRA q,v,fc1,fc2 >= EM(full) - 8", lora["em"] >= full - 8,
         f"{lora['em']:.1f} vs {full:.1f} ({100 * lora['trainable_share']:.1f}% trainable)"),
        ("5 forgetting: MLM +>= 0.8 under full, <= +0.05 under joint, EM(joint) >= EM(full)-4",
         d_full >= 0.8 and d_joint <= 0.05 and joint["em"] >= full - 4,
         f"full {d_full:+.2f}, joint {d_joint:+.2f}, EM joint {joint['em']:.1f}"),
        ("6 the comparison in <= 15 min including pretraining", t <= 900,
         f"{t:.0f} s = pretraining {res['pretrain_seconds']:.0f} s + fine-tuning "
         f"{res['finetune_seconds']:.0f} s"),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench-finetune")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--regularisation", action="store_true")
    ap.add_argument("--cache", help="the encoder cache (default: a fresh temporary one, so "
                    "pretraining is part of the time)")
    a = ap.parse_args(argv)
    if a.cache:
        return run(a, a.cache)
    with tempfile.TemporaryDirectory(prefix="tinyllm-cache-") as cache:
        return run(a, cache)


def run(a, cache: str) -> int:
    env = dict(os.environ, TINYLLM_CACHE=cache)
    base = [sys.executable, "-m", "tinyllm", "finetune"] + (["--quick"] if a.quick else [])
    t0 = time.perf_counter()
    subprocess.run(base + ["--compare", "--out", a.out], check=True, env=env)
    with open(os.path.join(a.out, "compare.json")) as f:
        res = json.load(f)
    print(f"\n{'target':<88} result")
    for name, ok, text in targets(res):
        print(f"{name:<88} {'met' if ok else 'MISSED'}: {text}")
    if a.regularisation:
        sub = os.path.join(a.out, "regularisation")
        subprocess.run(base + ["--compare", "regularisation", "--out", sub], check=True,
                       env=env)
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
