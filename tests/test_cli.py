"""The command line: exit codes, one-line errors, the gradcheck table."""
import subprocess
import sys

import numpy as np

from tinyllm import cli
from tinyllm.autograd import opinfo
from tinyllm.autograd.tensor import Function


def run(*args):
    return subprocess.run([sys.executable, "-m", "tinyllm", *args], capture_output=True,
                          text=True, timeout=120)


def test_gradcheck_all_ops_passes(capsys):
    assert cli.main(["gradcheck", "--samples", "1"]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out
    for name in ("softmax", "matmul", "cross_entropy", "layer_norm"):
        assert name in out


class _BadTanh(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(np.tanh(x))
        return np.tanh(x)

    @staticmethod
    def backward(ctx, dout):
        (t,) = ctx.saved
        return dout * (1 - t)          # should be 1 - t*t


def test_gradcheck_exits_1_on_a_broken_op(monkeypatch, capsys):
    bad = opinfo.OpInfo("bad_tanh", opinfo._unary(_BadTanh.apply, np.tanh))
    monkeypatch.setitem(opinfo.BY_NAME, "bad_tanh", bad)
    assert cli.main(["gradcheck", "--op", "bad_tanh", "--op", "tanh", "--samples", "1"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "1 passed, 1 failed" in out


def test_usage_errors_are_one_line_exit_2():
    for args in (["gradcheck", "--op", "nope"], ["gradcheck", "--bogus"], ["frobnicate"],
                 ["gradcheck", "--samples", "x"], [], ["eps-sweep"],
                 ["gradcheck", "--eps", "-1"], ["gradcheck", "--samples", "0"],
                 ["gradcheck", "--seed", "-1"], ["gradcheck", "--eps", "nan"],
                 ["gradcheck", "--atol", "inf"], ["eps-sweep", "--op", "tanh", "--plot", "x.txt"]):
        r = run(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_eps_sweep_and_taylor(tmp_path):
    png = tmp_path / "sweep.png"
    r = run("eps-sweep", "--op", "tanh", "--plot", str(png))
    assert r.returncode == 0, r.stderr
    assert "best" in r.stdout and png.stat().st_size > 1000
    r = run("taylor", "--op", "softmax", "--op", "layer_norm")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("ok") == 2


def test_unwritable_plot_is_one_line_exit_1(tmp_path):
    r = run("eps-sweep", "--op", "tanh", "--plot", str(tmp_path / "missing" / "x.png"))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
