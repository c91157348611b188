"""Data-parallel training over MPI (mpi4py): N processes ("ranks"), one model each, the same
weights at every step.

    mpiexec -n 2 tinyllm train --model gpt --distributed          # or, from Python,
    Trainer(model, ..., TrainConfig(distributed=True)).fit()       # under mpiexec -n N

The math. Every rank draws the same global batch of B rows from the one seeded batch
Generator (each rank holds a copy of it in the same state) and keeps rows
[r·B/N, (r+1)·B/N) of it, its shard S_r. With L_r the mean loss over S_r, and every row of the
batch holding as many target tokens (GPT windows do),

    L = mean over the B rows = (1/N) sum_r L_r,     so  grad L = (1/N) sum_r grad L_r

and each rank seeds its backward with 1/(N·K) (K = grad_accum micro-batches), so one
``Allreduce(SUM)`` of the gradients leaves every rank holding grad L. For N and K powers of
two the seed is exact: each rank's gradient is then its shard's gradient to the last bit, and
N ranks differ from one process only in the order the rows' contributions are summed (float32
summation-order rounding). Clipping, the non-finite checks and the optimiser then act on the
same averaged gradient on every rank, so every rank takes the same step and holds bitwise the
same weights (MPI's sum of N addends reaches every rank in the same order: the trainer's
tests check the ranks' weights agree bitwise).

Buckets. The gradients are copied into flat buffers of at most ``bucket_mb`` MiB (consecutive
parameters of one dtype; a larger parameter is a bucket of its own), one ``Allreduce`` per
bucket, not one per parameter: each call has a fixed latency (alpha) and the bytes a cost per
byte (beta), so n messages of b bytes cost n·alpha + b·beta·(whatever the algorithm sends).
One more small all-reduce per step carries float64 scalars: the sum of the ranks' losses
(every rank logs the global mean, and a NaN on any rank stops every rank at the same step),
the stop flags (a Ctrl-C or the time limit, so every rank stops at the same step boundary)
and which parameters have a gradient at all.

Who does what. Every rank trains and validates (each rank evaluates every N-th validation
batch; the sum is all-reduced, so validation takes 1/N of the time and every rank knows the
val loss, which early stopping needs); rank 0 alone logs, writes metrics.jsonl, loss.png and
the checkpoints. A checkpoint holds the model Generators (dropout) of every rank (gathered to
rank 0): each rank's dropout stream starts as rank 0's, jumped r times (``PCG64.jumped``),
so the shards do not share masks. ``resume`` reads the checkpoint on every rank (the run
folder must be on a filesystem every rank sees) and continues bitwise with the same N; with
another N the run goes on (the global batch is the same) but not bitwise.

Faults. An exception on one rank (other than ``TrainingError``, which every rank raises at the
same step since its inputs are all-reduced) prints one line naming the rank and calls
``MPI_Abort``, which ends every rank: no rank waits forever in an all-reduce. The checkpoint
rank 0 wrote last stays intact (checkpoints are written to a temporary folder and swapped in)
and resumes. A rank that dies outright (killed) is noticed by ``mpiexec``, which ends the rest
and names the rank.
"""
from __future__ import annotations

import sys
import time

import numpy as np

MPI_HINT = 'pip install -e ".[mpi]"'


class DistributedError(RuntimeError):
    """``--distributed`` cannot run (no mpi4py / MPI library, or a bad setting)."""


def load_mpi():
    """mpi4py's ``MPI`` module (importing it initialises MPI), or ``DistributedError`` saying
    what to install."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise DistributedError(f"--distributed needs mpi4py and an MPI library: "
                               f"{MPI_HINT} (mpi4py with the MPICH wheel)") from None
    return MPI


def world() -> tuple:
    """(rank, number of ranks) of this process in MPI.COMM_WORLD."""
    MPI = load_mpi()
    return MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()


class MPIGroup:
    """The ranks of ``comm`` (default MPI.COMM_WORLD) and the collective steps the trainer
    needs. ``seconds`` / ``bytes`` / ``calls`` count the gradient all-reduces (for the
    benchmark)."""

    def __init__(self, bucket_mb: float = 25.0, comm=None):
        if isinstance(bucket_mb, bool) or not isinstance(bucket_mb, (int, float)) \
                or not bucket_mb > 0:
            raise DistributedError(f"bucket_mb must be a number > 0, got {bucket_mb!r}")
        self.MPI = load_mpi()
        self.comm = comm if comm is not None else self.MPI.COMM_WORLD
        self.rank, self.world = self.comm.Get_rank(), self.comm.Get_size()
        self.bucket_bytes = max(1, int(bucket_mb * 2 ** 20))
        self.seconds, self.bytes, self.calls = 0.0, 0, 0
        self._plan = None

    # ------------------------------------------------------------ gradients
    def plan(self, params) -> list:
        """Buckets: lists of parameter indices, consecutive and of one dtype, each at most
        ``bucket_bytes`` (a larger parameter alone), with a flat buffer each."""
        buckets, cur, size, dt = [], [], 0, None
        for i, p in enumerate(params):
            nb = p.data.nbytes
            if cur and (p.data.dtype != dt or size + nb > self.bucket_bytes):
                buckets.append(cur)
                cur, size = [], 0
            cur.append(i)
            size += nb
            dt = p.data.dtype
        if cur:
            buckets.append(cur)
        out = []
        for idx in buckets:
            n = sum(params[i].data.size for i in idx)
            out.append((idx, np.empty(n, params[idx[0]].data.dtype)))
        return out

    def allreduce_gradients(self, params, scalars) -> np.ndarray:
        """Sum ``scalars`` (float64) and every parameter's ``.grad`` over the ranks, in place.
        A parameter no rank has a gradient for keeps ``grad = None``; one that some ranks
        lack counts zeros for them. Returns the summed scalars."""
        MPI = self.MPI
        key = tuple((id(p), p.data.shape, p.data.dtype.str) for p in params)
        if self._plan is None or self._plan[0] != key:
            self._plan = (key, self.plan(params))
        t = time.perf_counter()
        head = np.asarray(list(scalars), np.float64)
        small = np.concatenate([head, [0.0 if p.grad is None else 1.0 for p in params]])
        self.comm.Allreduce(MPI.IN_PLACE, small, op=MPI.SUM)
        has = small[len(head):] > 0
        for idx, buf in self._plan[1]:
            off = 0
            for i in idx:                # (n,) views: shapes in comments are flat here
                p, n = params[i], params[i].data.size
                buf[off:off + n] = 0 if p.grad is None else np.asarray(p.grad).reshape(-1)
                off += n
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            off = 0
            for i in idx:
                p, n = params[i], params[i].data.size
                if has[i]:
                    p.grad = buf[off:off + n].reshape(p.data.shape).copy()
                off += n
            self.bytes += buf.nbytes
            self.calls += 1
        self.seconds += time.perf_counter() - t
        return small[:len(head)]

    # ------------------------------------------------------------ other collectives
    def broadcast_parameters(self, params) -> None:
        """Every rank takes rank 0's weights (they agree already when every rank built the
        model from the same seed; this makes sure)."""
        for p in params:
            if not p.data.flags.c_contiguous:      # pragma: no cover - parameters are
                p.data = np.ascontiguousarray(p.data)
            self.comm.Bcast(p.data, root=0)

    def sum(self, value: float) -> float:
        """The sum over the ranks of a float (float64)."""
        a = np.array([value], np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, a, op=self.MPI.SUM)
        return float(a[0])

    def barrier(self) -> None:
        self.comm.Barrier()

    def gather(self, obj):
        """[every rank's ``obj``] on rank 0, None on the others (pickled: small things only)."""
        return self.comm.gather(obj, root=0)

    def agree(self, fn):
        """Run ``fn()`` on rank 0 only and give every rank its result, or raise its exception
        on every rank (a folder check that fails must stop every rank, not only rank 0)."""
        out = None
        if self.rank == 0:
            try:
                out = (True, fn())
            except Exception as e:  # noqa: BLE001 - re-raised on every rank
                out = (False, e)
        ok, val = self.comm.bcast(out, root=0)
        if not ok:
            raise val
        return val

    def abort(self, message: str, code: int = 1) -> None:
        """Print ``message`` (one line, naming this rank) and end every rank of the job."""
        print(message, file=sys.stderr, flush=True)
        sys.stdout.flush()
        self.comm.Abort(code)


def shard(x, rank: int, world: int, what: str = "batch"):
    """Rows [rank·b, (rank+1)·b) of ``x``, b = len(x) / world (``x``: (B, ...))."""
    B = int(np.shape(x)[0])
    if B % world:
        raise DistributedError(f"--distributed: the {what} has {B} rows, which the {world} "
                               f"ranks cannot share equally; choose batch_size a multiple "
                               f"of {world}")
    b = B // world
    return x[rank * b:(rank + 1) * b]


def rank_stream(gen: np.random.Generator, rank: int) -> None:
    """Move ``gen`` to rank ``rank``'s stream: its state jumped ``rank`` times (2^127 draws
    each for PCG64), so the ranks' dropout masks are independent."""
    if rank:
        bg = gen.bit_generator
        if not hasattr(bg, "jumped"):    # pragma: no cover - default_rng is PCG64
            raise DistributedError(f"--distributed: a model Generator uses "
                                   f"{type(bg).__name__}, which cannot jump to a rank's "
                                   f"stream; use np.random.default_rng")
        bg.state = bg.jumped(rank).state


__all__ = ["MPIGroup", "DistributedError", "MPI_HINT", "load_mpi", "world", "shard",
           "rank_stream"]
