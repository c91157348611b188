"""Notebooks import tinyllm and must not go stale: run every code cell of each one (with
``TINYLLM_FAST=1``, which shrinks every workload), keeping each cell's last value as Jupyter
does, check that the figures they show render, that nothing reaches the network, and that
every committed notebook has its outputs stripped. Each notebook's time is printed (visible
with ``pytest -s``) and recorded as the test's ``seconds`` property (in the JUnit XML);
nothing asserts on it."""
import ast
import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

NB_DIR = pathlib.Path(__file__).parent.parent / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EPS_NOTEBOOK = NB_DIR / "02_autodiff_and_gradcheck.ipynb"   # ends with the eps-sweep Figure


@contextlib.contextmanager
def _notebook_env(fast: bool):
    """TINYLLM_FAST=1 (or unset), the notebook folder as the working directory (as Jupyter
    starts a kernel), and no network: everything restored afterwards, NumPy's print options
too."""
    old_env, old_cwd = os.environ.get("TINYLLM_FAST"), os.getcwd()
    old_connect = socket.socket.connect
    old_print = np.get_printoptions()          # a notebook's np.set_printoptions stays there

    def no_network(self, *args, **kwargs):
        raise RuntimeError(f"a notebook tried to reach the network: {args!r}")

    if fast:
        os.environ["TINYLLM_FAST"] = "1"
    else:
        os.environ.pop("TINYLLM_FAST", None)
    os.chdir(NB_DIR)
    socket.socket.connect = no_network
    try:
        yield
    finally:
        socket.socket.connect = old_connect
        np.set_printoptions(**old_print)
        os.chdir(old_cwd)
        if old_env is None:
            os.environ.pop("TINYLLM_FAST", None)
        else:
            os.environ["TINYLLM_FAST"] = old_env


def run_notebook(path, fast: bool = True):
    """Run the code cells in one namespace; returns each cell's last value (None when the
    cell ends with a statement), as Jupyter would display it."""
    cells = json.loads(path.read_text())["cells"]
    code = [("".join(c["source"])) for c in cells if c["cell_type"] == "code"]
    assert code, f"{path.name} has no code cells"
    namespace = {"__name__": "__notebook__"}
    values = []
    with _notebook_env(fast):
        for i, src in enumerate(code):
            name = f"{path.name}[cell {i}]"
            tree = ast.parse(src, name)
            last = (tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr)
                    else None)
            exec(compile(tree, name, "exec"), namespace)  # noqa: S102
            values.append(eval(compile(ast.Expression(last.value), name, "eval"), namespace)
                          if last is not None else None)
    return values


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, record_property):
    before = os.environ.get("TINYLLM_FAST")
    t0 = time.perf_counter()
    values = run_notebook(path)
    seconds = time.perf_counter() - t0
    record_property("seconds", round(seconds, 2))
    print(f"\nnotebook {path.name}: {seconds:.1f} s (TINYLLM_FAST=1)")
    assert os.environ.get("TINYLLM_FAST") == before          # the environment was restored
    for i, v in enumerate(values):                            # every figure shown renders
        if hasattr(v, "_repr_png_"):
            assert v._repr_png_().startswith(PNG_MAGIC), f"{path.name} value {i}"


def test_there_are_the_lessons():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_attention_rnn_equations.ipynb", "02_autodiff_and_gradcheck.ipynb",
            "03_kernels_and_roofline.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_stripped(path):
    """No outputs, no execution counts: the diff of a notebook is its source only."""
    nb = json.loads(path.read_text())
    for k, cell in enumerate(nb["cells"]):
        assert cell.get("id"), f"{path.name} cell {k} has no id (the map points at cell ids)"
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {cell['id']} has outputs"
            assert cell.get("execution_count") is None, \
                f"{path.name} cell {cell['id']} has an execution count"
    ids = [c["id"] for c in nb["cells"]]
    assert len(ids) == len(set(ids)), f"{path.name}: cell ids repeat"


def test_the_environment_is_restored_even_when_a_cell_fails(tmp_path):
    bad = tmp_path / "bad.ipynb"
    bad.write_text(json.dumps({"cells": [{"cell_type": "code", "source": ["1 / 0"]}]}))
    before, cwd = os.environ.get("TINYLLM_FAST"), os.getcwd()
    with pytest.raises(ZeroDivisionError):
        run_notebook(bad)
    assert os.environ.get("TINYLLM_FAST") == before and os.getcwd() == cwd


def test_a_notebook_cannot_reach_the_network(tmp_path):
    nb = tmp_path / "net.ipynb"
    nb.write_text(json.dumps({"cells": [{"cell_type": "code", "source": [
        "import socket\n", "socket.create_connection(('192.0.2.1', 80), timeout=1)"]}]}))
    with pytest.raises(RuntimeError, match="network"):
        run_notebook(nb)


def test_the_eps_sweep_figure_is_shown_as_a_png():
    """The gradient-check notebook's last cell ends with the eps-sweep Figure; in Jupyter it
    must draw (a PNG, through the ``_repr_png_`` hook IPython's display asks for), not print
    ``<Figure size 600x400 with 1 Axes>`` -- and without tinyllm registering anything."""
    from matplotlib.figure import Figure
    fig = run_notebook(EPS_NOTEBOOK)[-1]
    assert isinstance(fig, Figure), "the eps-sweep cell must end with the Figure"
    png = fig._repr_png_()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    assert matplotlib.get_backend().lower() == "agg"        # the backend was left alone


def test_in_a_real_ipython_shell_the_figure_renders_png():
    """The same in a fresh IPython shell that imports tinyllm in a cell, as a kernel does."""
    pytest.importorskip("IPython")
    script = (
        "import json, sys\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "sh = InteractiveShell.instance()\n"
        "cells = [''.join(c['source']) for c in json.load(open(sys.argv[1]))['cells']\n"
        "         if c['cell_type'] == 'code']\n"
        "for src in cells:\n"
        "    res = sh.run_cell(src)\n"
        "    assert res.success, res.error_in_exec\n"
        "data, _ = sh.display_formatter.format(res.result)\n"
        "print('PNG' if data.get('image/png', b'')[:4] == b'\\x89PNG' else sorted(data))\n")
    root = str(NB_DIR.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, MPLBACKEND="Agg", TINYLLM_FAST="1", PYTHONPATH=path)
    out = subprocess.run([sys.executable, "-c", script, str(EPS_NOTEBOOK)],
                         capture_output=True, text=True, env=env, timeout=300, cwd=NB_DIR)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "PNG"
