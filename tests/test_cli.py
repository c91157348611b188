"""The command line: exit codes, one-line errors, the gradcheck table."""
import argparse
import subprocess
import sys

import numpy as np
import pytest

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


def test_unwritable_plot_is_refused_before_the_sweep(tmp_path, capsys):
    assert cli.main(["eps-sweep", "--op", "tanh", "--plot",
                     str(tmp_path / "missing" / "x.png")]) == 2
    cap = capsys.readouterr()
    assert "does not exist" in cap.err and len(cap.err.strip().splitlines()) == 1
    assert "eps sweep" not in cap.out                 # nothing ran


def test_version(capsys):
    import tinyllm
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"tinyllm {tinyllm.__version__}"


def _options(command):
    """(subparser, its options but -h) for one subcommand."""
    sub = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    sp = sub.choices[command]
    return sp, [a for a in sp._actions if a.option_strings and a.dest != "help"]


def _missing_help(command):
    """Options of ``command`` without a help line, or without their default in it (flags,
    which are off unless given, and required options have none to show)."""
    sp, actions = _options(command)
    fmt = sp.formatter_class(prog=sp.prog)
    bad = []
    for a in actions:
        text = fmt._get_help_string(a) if a.help else ""
        needs_default = a.nargs != 0 and not a.required
        if not text or (needs_default and "default" not in text.lower()):
            bad.append(a.option_strings[0])
    return bad


OWN_COMMANDS = ["generate", "eval", "gradcheck", "eps-sweep", "taylor", "bench", "attention"]


@pytest.mark.parametrize("command", OWN_COMMANDS)
def test_every_option_has_a_help_line_with_its_default(command):
    assert _missing_help(command) == []


@pytest.mark.parametrize("command", ["train", "demo"])
def test_train_and_demo_options_have_help_lines(command):
    assert _missing_help(command) == []


def test_help_shows_defaults_and_lists_the_ops():
    _, actions = _options("gradcheck")
    fmt = cli._HelpFormatter(prog="tinyllm gradcheck")
    op = next(a for a in actions if a.dest == "op")
    assert all(name in op.help for name in [o.name for o in opinfo.OPS])
    eps = next(a for a in actions if a.dest == "eps")
    assert "(default: 1e-06)" in fmt._get_help_string(eps) % {"default": eps.default}
    r = run("gradcheck", "--help")
    assert r.returncode == 0 and "additive_attention" in r.stdout and "default" in r.stdout


def test_gradcheck_of_attention_from_the_cli(capsys):
    ops = ["attention", "decode_attention", "additive_attention", "layer_norm",
           "cross_entropy", "mlp"]
    assert cli.main(["gradcheck", "--samples", "2"] + [x for o in ops for x in ("--op", o)]) == 0
    out = capsys.readouterr().out
    assert f"{2 * len(ops)} passed, 0 failed" in out
    for o in ops:
        assert out.count(f"\n{o} ") == 2, o


def test_eps_sweep_and_taylor_reach_attention(capsys):
    assert cli.main(["eps-sweep", "--op", "additive_attention"]) == 0
    assert "best" in capsys.readouterr().out
    assert cli.main(["taylor", "--op", "attention", "--op", "decode_attention"]) == 0
    out = capsys.readouterr().out
    assert out.count(" ok") == 2 and "inf" not in out


def test_taylor_explains_an_infinite_slope(capsys):
    assert cli.main(["taylor", "--op", "add", "--op", "tanh"]) == 0
    add, tanh = capsys.readouterr().out.strip().splitlines()
    assert "inf" in add and "round-off" in add and "linear" in add
    assert "inf" not in tanh and tanh.rstrip().endswith("ok")
