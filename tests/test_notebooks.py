"""Notebooks import tinyllm and must not go stale: run every code cell of each one, keeping
each cell's last value as Jupyter does, and check that the figures they show render."""
import ast
import json
import os
import pathlib
import subprocess
import sys

import matplotlib
import pytest

matplotlib.use("Agg")

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_notebook(path):
    """Run the code cells in one namespace; returns each cell's last value (None when the
    cell ends with a statement), as Jupyter would display it."""
    cells = json.loads(path.read_text())["cells"]
    code = [("".join(c["source"])) for c in cells if c["cell_type"] == "code"]
    assert code, f"{path.name} has no code cells"
    namespace = {"__name__": "__notebook__"}
    values = []
    for i, src in enumerate(code):
        name = f"{path.name}[cell {i}]"
        tree = ast.parse(src, name)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, name, "exec"), namespace)  # noqa: S102
        values.append(eval(compile(ast.Expression(last.value), name, "eval"), namespace)
                      if last is not None else None)
    return values


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path):
    run_notebook(path)


def test_there_is_a_notebook():
    assert NOTEBOOKS


def test_the_eps_sweep_figure_is_shown_as_a_png():
    """The gradient-check notebook's last cell ends with the eps-sweep Figure; in Jupyter it
    must draw (a PNG, through the ``_repr_png_`` hook IPython's display asks for), not print
    ``<Figure size 600x400 with 1 Axes>`` -- and without tinyllm registering anything."""
    from matplotlib.figure import Figure
    fig = run_notebook(NOTEBOOKS[0].parent / "01_gradient_check_lab.ipynb")[-1]
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
    env = dict(os.environ, MPLBACKEND="Agg")
    out = subprocess.run([sys.executable, "-c", script,
                          str(NOTEBOOKS[0].parent / "01_gradient_check_lab.ipynb")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "PNG"
