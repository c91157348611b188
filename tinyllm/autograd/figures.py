"""Figures that show themselves in Jupyter, without pyplot and without touching the backend.

tinyllm's plotting functions (``tl.eps_sweep(...).plot()``, the trainer's loss plot) build a
plain ``matplotlib.figure.Figure``: no pyplot state, no GUI window, the backend left as it is.
IPython only draws such a Figure inline once a PNG printer is registered for its type, and
matplotlib registers one only when pyplot is imported under the inline backend; without it a
Figure as a cell's last value prints as ``<Figure size 600x400 with 1 Axes>``.

``enable_inline()`` registers that printer (``figure_png``) with the running IPython shell,
for ``matplotlib.figure.Figure`` by name, so matplotlib is not imported for it. ``import
tinyllm`` calls it; outside IPython it does nothing. A printer registered earlier (pyplot's
inline backend, ``%config InlineBackend``) takes precedence, so a user's own settings win.
"""
from __future__ import annotations

import io
import sys

_DONE = set()


def figure_png(fig, dpi: int = 100) -> bytes:
    """The PNG bytes of a matplotlib Figure (rendered by Agg, as ``fig.savefig`` does)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _running_shell():
    ipython = sys.modules.get("IPython")       # never import IPython just to look
    get = getattr(ipython, "get_ipython", None)
    return get() if get is not None else None


def enable_inline(shell=None) -> bool:
    """Register ``figure_png`` as the PNG printer of ``matplotlib.figure.Figure`` with
    ``shell`` (default: the running IPython shell). Returns whether a shell was found."""
    shell = shell if shell is not None else _running_shell()
    if shell is None or not hasattr(shell, "display_formatter"):
        return False
    if id(shell) not in _DONE:
        png = shell.display_formatter.formatters["image/png"]
        png.for_type_by_name("matplotlib.figure", "Figure", figure_png)
        _DONE.add(id(shell))
    return True
