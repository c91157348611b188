"""A small GPT trained by the Trainer, run by tests/test_distributed.py in one process or
under ``mpiexec -n N`` (with --distributed). Writes RESULT.rank<r>.json (losses, val losses,
a hash of the weights) and, on rank 0, RESULT.npz (the weights).

    python tests/_dist_run.py --out DIR --result PREFIX [--distributed] [--fail_rank R
        --fail_step S] [--resume] [--batch B] [--accum K] [--dtype float64]
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tinyllm.data import get_batch  # noqa: E402
from tinyllm.models import GPT, GPTConfig  # noqa: E402
from tinyllm.train import TrainConfig, Trainer  # noqa: E402

V, T = 11, 8
DATA = ((np.arange(3000) * 7) % V + (np.arange(3000) // 17) % 3) % V


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--result", required=True)
    ap.add_argument("--distributed", action="store_true")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--stop_at", type=int, default=0)
    ap.add_argument("--join", action="store_true", help="one batch of accum x batch rows (the "
                    "accum draws concatenated) a step instead of accum micro-batches")
    ap.add_argument("--fail_rank", type=int, default=-1)
    ap.add_argument("--fail_step", type=int, default=0)
    ap.add_argument("--die", action="store_true", help="the failing rank is killed (SIGKILL) "
                    "instead of raising")
    a = ap.parse_args()
    model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=2, n_head=2, n_embd=16,
                          dropout=a.dropout), seed=3, dtype=np.dtype(a.dtype))
    draws = {"n": 0}
    rank = 0
    if a.distributed:
        from mpi4py import MPI
        rank = MPI.COMM_WORLD.Get_rank()

    def train_batch(rng):
        draws["n"] += 1
        if rank == a.fail_rank and draws["n"] == a.fail_step * a.accum:
            if a.die:
                os.kill(os.getpid(), 9)
            raise RuntimeError("planted failure")
        if a.join:
            xs, ys = zip(*[get_batch(DATA, a.batch, T, rng) for _ in range(a.accum)])
            return np.concatenate(xs), np.concatenate(ys)
        return get_batch(DATA, a.batch, T, rng)

    cfg = TrainConfig(max_steps=a.steps, lr=1e-2, warmup_steps=1, grad_clip=0.5, eval_every=2,
                      eval_batches=2, log_every=1, progress=False,
                      grad_accum=1 if a.join else a.accum, distributed=a.distributed,
                      bucket_mb=0.01, stop_at=a.stop_at)    # bucket_mb: several buckets
    t = Trainer(model, train_batch, lambda rng: get_batch(DATA, 4, T, rng), cfg,
                out_dir=a.out, log=print)
    if a.resume:
        t.resume(a.out)
    r = t.fit()
    h = hashlib.sha256()
    state = t.model.state_dict()
    for k in sorted(state):
        h.update(k.encode())
        h.update(np.ascontiguousarray(state[k]).tobytes())
    with open(f"{a.result}.rank{t.rank}.json", "w") as f:
        json.dump({"losses": r.losses, "val": r.val_losses, "norms": r.grad_norms,
                   "hash": h.hexdigest(), "world": t.world, "steps": r.steps,
                   "allreduce_calls": t.dist.calls if t.dist else 0}, f)
    if t.rank == 0:
        np.savez(f"{a.result}.npz", **state)


if __name__ == "__main__":
    main()
