"""Figures that show themselves in Jupyter, without pyplot and without touching the backend.

tinyllm's plotting functions (``tl.eps_sweep(...).plot()``, the trainer's loss plot, the
demo's figures, the benchmark's plots) build their figure with ``new_figure``: a
``matplotlib.figure.Figure`` with no pyplot state, no GUI window and the backend left as it
is. A bare Figure as a notebook cell's last value prints as ``<Figure size 600x400 with 1
Axes>``: IPython draws a figure inline only when something registered a PNG printer for it
(pyplot does, under the inline backend). The figures ``new_figure`` makes carry their own
``_repr_png_``, the hook IPython's display asks any object for, so they draw inline wherever
they are shown, and nothing process-wide is registered: ``import tinyllm`` changes nothing.
``fig.savefig("x.png")`` saves one as usual.
"""
from __future__ import annotations

import io

_SHOWN = None


def figure_png(fig, dpi: int = 100) -> bytes:
    """The PNG bytes of a matplotlib Figure (rendered by Agg, as ``fig.savefig`` does)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def new_figure(**kwargs):
    """``matplotlib.figure.Figure(**kwargs)`` that Jupyter draws inline (its ``_repr_png_``).
    matplotlib is imported on the first call, not before."""
    global _SHOWN
    if _SHOWN is None:
        from matplotlib.figure import Figure

        class ShownFigure(Figure):
            """A Figure that draws itself as a PNG where IPython displays it."""

            def _repr_png_(self):
                return figure_png(self)

        _SHOWN = ShownFigure
    return _SHOWN(**kwargs)


__all__ = ["new_figure", "figure_png"]
