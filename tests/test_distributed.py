"""Data-parallel training over MPI (issue 16), run as real jobs: ``mpiexec -n 2`` of
tests/_dist_run.py (a small GPT through the Trainer), each under a time limit.

- 2 ranks x B/2 rows equal 1 process x B rows, with gradient accumulation (K = 2) on both,
  and equal 1 process with one batch of 2·B rows (N ranks x K micro-batches x B/N = N·K·B):
  losses, gradient norms, validation losses and weights, in float64, to 1e-10 relative
  (only the order of the rows' sums differs: per rank, then across ranks), and the two
  ranks' weights bitwise equal;
- a planted failure on rank 1 stops the job within the time limit with a message naming rank
  1; the checkpoint rank 0 wrote last is intact, and ``--resume`` from it ends bitwise where
  an uninterrupted 2-rank run ends (losses of the whole run, weights): the same N gives the
  same bits across runs;
- a rank killed outright ends the job (mpiexec notices; the run's first log line maps pids to
  ranks);
- ``tinyllm train --distributed`` under mpiexec, and its one-line error without mpi4py.

Skipped, with the reason, when mpi4py or mpiexec is missing (``pip install -e ".[mpi]"``).
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tinyllm import cli

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPT = os.path.join(HERE, "_dist_run.py")
LIMIT = 180                              # seconds per job: a hang fails, it does not block


def _mpiexec():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None, "mpi4py is not installed (pip install -e \".[mpi]\")"
    exe = (shutil.which("mpiexec", path=os.path.dirname(sys.executable))
           or shutil.which("mpiexec"))
    if exe is None:
        return None, "no mpiexec next to the Python or on PATH (pip install mpich)"
    return exe, ""


MPIEXEC, WHY = _mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason=WHY)


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.setdefault("NUMBA_CACHE_DIR", os.path.join(ROOT, ".numba_cache"))
    return env


def job(args, ranks=2):
    """Run _dist_run.py (under mpiexec when ranks > 0); (returncode, stdout + stderr)."""
    cmd = [sys.executable, SCRIPT] + args
    if ranks:
        cmd = [MPIEXEC, "-n", str(ranks)] + cmd + ["--distributed"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=LIMIT, env=_env(),
                       stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout + p.stderr


def result(prefix, rank=0):
    with open(f"{prefix}.rank{rank}.json") as f:
        return json.load(f)


def metrics_losses(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]


COMMON = ["--dtype", "float64", "--accum", "2", "--steps", "6"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 2-rank run (batch 4: 2 rows a rank, 2 micro-batches a step)."""
    d = tmp_path_factory.mktemp("dist")
    rc, out = job(COMMON + ["--out", str(d / "run"), "--result", str(d / "r")])
    assert rc == 0, out
    return d


@needs_mpi
def test_two_ranks_equal_one_process(straight, tmp_path):
    rc, out = job(COMMON + ["--out", str(tmp_path / "run"), "--result", str(tmp_path / "r")],
                  ranks=0)
    assert rc == 0, out
    two, one = result(straight / "r"), result(tmp_path / "r")
    assert two["world"] == 2 and one["world"] == 1 and two["steps"] == one["steps"] == 6
    assert result(straight / "r", 1)["hash"] == two["hash"]      # the ranks agree bitwise
    assert result(straight / "r", 1)["losses"] == two["losses"]
    np.testing.assert_allclose([v for _, v in two["losses"]], [v for _, v in one["losses"]],
                               rtol=1e-10)
    np.testing.assert_allclose([v for _, v in two["val"]], [v for _, v in one["val"]],
                               rtol=1e-10)
    # the gradient norm before clipping: an all-reduce that summed without averaging would
    # leave the clipped update (and so the weights) as they are, but not this
    np.testing.assert_allclose([v for _, v in two["norms"]], [v for _, v in one["norms"]],
                               rtol=1e-10)
    w2, w1 = np.load(straight / "r.npz"), np.load(tmp_path / "r.npz")
    assert sorted(w2.files) == sorted(w1.files)
    for k in w1.files:
        np.testing.assert_allclose(w2[k], w1[k], rtol=1e-10, atol=1e-12, err_msg=k)
    assert two["allreduce_calls"] > 6            # bucket_mb=0.01: several buckets a step
    # and one process with one batch of N·K·B = 8 rows a step (the 2 draws concatenated)
    rc, out = job(COMMON + ["--result", str(tmp_path / "j"), "--join"], ranks=0)
    assert rc == 0, out
    joined = result(tmp_path / "j")
    for key in ("losses", "norms", "val"):
        np.testing.assert_allclose([v for _, v in two[key]], [v for _, v in joined[key]],
                                   rtol=1e-10, err_msg=key)
    wj = np.load(tmp_path / "j.npz")
    for k in w1.files:
        np.testing.assert_allclose(w2[k], wj[k], rtol=1e-10, atol=1e-12, err_msg=k)


@needs_mpi
def test_a_failing_rank_stops_the_job_and_the_run_resumes_bitwise(straight, tmp_path):
    run = str(tmp_path / "run")
    rc, out = job(COMMON + ["--out", run, "--result", str(tmp_path / "r"), "--fail_rank",
                            "1", "--fail_step", "5"])
    assert rc != 0
    assert "rank 1 of 2 failed at step 5: RuntimeError: planted failure" in out, out
    with open(os.path.join(run, "last", "meta.json")) as f:
        assert json.load(f)["step"] == 4         # the validation at step 4 wrote it
    rc, out = job(COMMON + ["--out", run, "--result", str(tmp_path / "r"), "--resume"])
    assert rc == 0, out
    assert result(tmp_path / "r")["hash"] == result(straight / "r")["hash"]
    assert metrics_losses(run) == metrics_losses(str(straight / "run"))   # exact floats


@needs_mpi
def test_a_killed_rank_ends_the_job(tmp_path):
    rc, out = job(["--steps", "6", "--out", str(tmp_path / "run"), "--result",
                   str(tmp_path / "r"), "--fail_rank", "1", "--fail_step", "3", "--die"])
    assert rc != 0                               # and no hang: job() has a time limit
    pid = [ln for ln in out.splitlines() if ln.startswith("distributed: 2 ranks")]
    assert pid and "rank 1 pid" in pid[0], out


@needs_mpi
@needs_mpi
@pytest.mark.slow
def test_dropout_ranks_draw_their_own_masks_and_resume_bitwise(tmp_path):
    args = ["--dropout", "0.2", "--steps", "6"]
    rc, out = job(args + ["--out", str(tmp_path / "a"), "--result", str(tmp_path / "a")])
    assert rc == 0, out
    a0, a1 = result(tmp_path / "a"), result(tmp_path / "a", 1)
    assert a0["hash"] == a1["hash"]              # different masks, the same averaged step
    rc, out = job(args + ["--out", str(tmp_path / "b"), "--result", str(tmp_path / "b"),
                          "--stop_at", "3"])
    assert rc == 0, out
    rc, out = job(args + ["--out", str(tmp_path / "b"), "--result", str(tmp_path / "b"),
                          "--resume"])
    assert rc == 0, out
    assert result(tmp_path / "b")["hash"] == a0["hash"]
    with open(tmp_path / "b" / "last" / "meta.json") as f:
        by_rank = json.load(f)["rng"]["model_by_rank"]
    assert len(by_rank) == 2 and by_rank[0] != by_rank[1]    # each rank its own stream
    assert metrics_losses(str(tmp_path / "b")) == metrics_losses(str(tmp_path / "a"))


def test_train_distributed_on_the_command_line(tmp_path):
    out = str(tmp_path / "run")
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "tinyllm", "train", "--model", "gpt",
           "--config", "tiny", "--out", out, "--distributed", "--max_steps=2",
           "--n_layer=1", "--n_embd=16", "--block_size=16", "--batch_size=4",
           "--eval_every=2", "--eval_batches=2", "--progress=false", "--sample_every=0"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=LIMIT, env=_env(),
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("stopped (max_steps) at step 2") == 1     # rank 0 alone reports
    assert os.path.isdir(os.path.join(out, "last"))


def test_without_mpi4py_distributed_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)        # import mpi4py now fails
    assert cli.main(["train", "--model", "gpt", "--config", "tiny", "--out",
                     str(tmp_path / "r"), "--distributed"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and 'pip install -e ".[mpi]"' in err, err
    assert not (tmp_path / "r").exists()


def test_mpiexec_without_distributed_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")                     # what MPICH's mpiexec sets
    assert cli.main(["train", "--model", "gpt", "--config", "tiny", "--out",
                     str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pass --distributed" in err, err
    assert not (tmp_path / "r").exists()
