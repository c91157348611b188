"""A picture of a Tensor's history: the ops that made it and the tensors they read.

Micrograd's ``draw_dot`` idea for tinyllm's graph. Every Tensor made by a recorded op holds
``_ctx``, the op's Context (``op``: the Function class, ``parents``: the input Tensors, None
for inputs that need no gradient, ``n_outputs``). Walking ``_ctx.parents`` from the output
back to the leaves visits the whole graph; ``graph_nodes`` turns the walk into plain lists,

    nodes  = [{"id", "kind": "tensor", "name", "shape", "dtype", "leaf", "value", "grad"},
              {"id", "kind": "op", "op", "n_outputs", "freed"}, ...]
    edges  = [(input tensor id, op id), (op id, output tensor id), ...]

and ``draw_graph`` draws them, left (leaves) to right (the output): with the ``graphviz``
package and its ``dot`` program when both are installed (a ``graphviz.Digraph``, which
Jupyter shows as SVG), else as a matplotlib Figure made by ``tinyllm.autograd.figures``'
``new_figure`` (no pyplot state; shown inline, saved with ``fig.savefig``).

Tiny tensors (at most ``max_values`` elements) show their values and, once ``backward`` has
filled it, their ``.grad``: for the chain rule on a handful of scalars, the picture carries
every number, dL/dx = dL/dy * dy/dx read off edge by edge.

``backward()`` frees the graph (each Context drops its saved arrays and its links to the
inputs) unless called with ``retain_graph=True``: a freed op is still drawn, marked
"freed", but nothing behind it can be reached any more. Draw before ``backward``, or pass
``retain_graph=True`` to see the gradients next to the values.

Layout (the matplotlib fallback): a node's column is its distance from the farthest leaf
(longest path), so every edge points rightwards; the nodes of a column are spread evenly.
"""
from __future__ import annotations

import shutil

import numpy as np

from ..autograd import Tensor

__all__ = ["graph_nodes", "draw_graph", "BACKENDS"]

BACKENDS = ("auto", "graphviz", "matplotlib")


def _fmt(a: np.ndarray) -> str:
    return np.array2string(np.asarray(a), precision=4, separator=", ", suppress_small=True)


def _check_int(name: str, v, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"draw_graph: {name} must be an int >= {low}, got {v!r}")
    return int(v)


def graph_nodes(tensor, names=None, max_values: int = 6) -> dict:
    """The graph behind ``tensor`` as ``{"nodes": [...], "edges": [...]}`` (see the module
    docstring for the fields). Nodes are listed leaves first (a topological order: every
    edge goes from an earlier node to a later one); ids are ``"t0", "t1", ...`` for tensors
    and ``"op0", ...`` for ops, numbered in that order.

    ``names``: optional ``{"label": Tensor}`` naming some tensors in the picture (micrograd's
    ``label``); ``max_values``: tensors with at most this many elements show ``value`` and
    ``grad`` (as strings; None otherwise or when there is no grad).
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"graph_nodes: tensor must be a tinyllm Tensor, got "
                        f"{type(tensor).__name__}")
    max_values = _check_int("max_values", max_values, 0)
    label = {}
    for key, t in (names or {}).items():
        if not isinstance(t, Tensor):
            raise TypeError(f"graph_nodes: names[{key!r}] must be a Tensor, got "
                            f"{type(t).__name__}")
        label[id(t)] = str(key)

    # Depth-first from the output; post-order gives leaves before what they feed.
    order, seen = [], set()           # order: ("tensor", t) / ("op", ctx) items
    edges_obj = []                    # (src object id, dst object id)
    stack = [(tensor, False)]
    while stack:
        obj, done = stack.pop()
        if done:
            order.append(obj)
            continue
        key = id(obj[1]) if isinstance(obj, tuple) else id(obj)
        if key in seen:
            continue
        seen.add(key)
        if isinstance(obj, tuple):    # ("op", ctx)
            ctx = obj[1]
            stack.append((obj, True))
            if not ctx.freed:
                for p in reversed(ctx.parents):
                    if p is not None:
                        edges_obj.append((id(p), id(ctx)))
                        stack.append((p, False))
        else:
            stack.append((obj, True))
            if obj._ctx is not None:
                edges_obj.append((id(obj._ctx), id(obj)))
                stack.append((("op", obj._ctx), False))

    ids, nodes, nt, no = {}, [], 0, 0
    for obj in order:
        if isinstance(obj, tuple):
            ctx = obj[1]
            ids[id(ctx)] = f"op{no}"
            no += 1
            nodes.append({"id": ids[id(ctx)], "kind": "op", "op": ctx.op.__name__,
                          "n_outputs": int(ctx.n_outputs), "freed": bool(ctx.freed)})
        else:
            t = obj
            ids[id(t)] = f"t{nt}"
            nt += 1
            small = t.data.size <= max_values
            nodes.append({"id": ids[id(t)], "kind": "tensor", "name": label.get(id(t)),
                          "shape": tuple(t.shape), "dtype": str(t.dtype),
                          "leaf": t._ctx is None, "requires_grad": bool(t.requires_grad),
                          "value": _fmt(t.data) if small else None,
                          "grad": _fmt(t.grad) if small and t.grad is not None else None})
    edges = []
    for a, b in edges_obj:
        e = (ids[a], ids[b])
        if e not in edges:            # x * x: one edge, drawn once
            edges.append(e)
    return {"nodes": nodes, "edges": edges}


def _tensor_text(n: dict) -> str:
    head = n["name"] or ("leaf" if n["leaf"] else "")
    lines = [f"{head} {n['shape']}".strip()]
    if n["value"] is not None:
        lines.append(f"data {n['value']}")
    if n["grad"] is not None:
        lines.append(f"grad {n['grad']}")
    return "\n".join(lines)


def _op_text(n: dict) -> str:
    return n["op"] + (" (freed)" if n["freed"] else "")


def _columns(g: dict) -> dict:
    """Node id -> column: the longest path from any leaf (nodes come in topological order)."""
    col = {n["id"]: 0 for n in g["nodes"]}
    into = {}
    for a, b in g["edges"]:
        into.setdefault(b, []).append(a)
    for n in g["nodes"]:
        col[n["id"]] = max((col[a] + 1 for a in into.get(n["id"], [])), default=0)
    return col


def _have_graphviz() -> bool:
    try:
        import graphviz  # noqa: F401
    except ImportError:
        return False
    return shutil.which("dot") is not None


def _draw_graphviz(g: dict):
    import graphviz
    dot = graphviz.Digraph(graph_attr={"rankdir": "LR"})
    for n in g["nodes"]:
        if n["kind"] == "op":
            dot.node(n["id"], _op_text(n), shape="ellipse", style="filled",
                     fillcolor="lightgrey" if n["freed"] else "lightyellow")
        else:
            dot.node(n["id"], _tensor_text(n), shape="box",
                     style="filled", fillcolor="lightblue" if n["leaf"] else "white")
    for a, b in g["edges"]:
        dot.edge(a, b)
    return dot


def _draw_matplotlib(g: dict, title):
    from ..autograd.figures import new_figure
    col = _columns(g)
    ncol = max(col.values()) + 1
    by_col = {}
    for n in g["nodes"]:
        by_col.setdefault(col[n["id"]], []).append(n)
    tall = max(len(v) for v in by_col.values())
    fig = new_figure(figsize=(max(4.0, 2.2 * ncol), max(2.0, 1.3 * tall + 0.6)))
    ax = fig.subplots()
    pos = {}
    for c, members in by_col.items():
        for k, n in enumerate(members):
            pos[n["id"]] = (float(c), (len(members) - 1) / 2.0 - k)   # centred column
    box = {}
    for n in g["nodes"]:
        x, y = pos[n["id"]]
        if n["kind"] == "op":
            box[n["id"]] = ax.text(
                x, y, _op_text(n), ha="center", va="center", fontsize=9, gid=n["id"],
                bbox={"boxstyle": "ellipse", "fc": "lightgrey" if n["freed"] else "lightyellow",
                      "ec": "k"})
        else:
            box[n["id"]] = ax.text(
                x, y, _tensor_text(n), ha="center", va="center", fontsize=8,
                family="monospace", gid=n["id"],
                bbox={"boxstyle": "round", "fc": "lightblue" if n["leaf"] else "white",
                      "ec": "k"})
    for a, b in g["edges"]:
        ax.annotate("", xy=pos[b], xytext=pos[a], zorder=5,
                    arrowprops={"arrowstyle": "->", "color": "0.3", "shrinkA": 1,
                                "shrinkB": 1, "patchA": box[a].get_bbox_patch(),
                                "patchB": box[b].get_bbox_patch()})   # clipped at the boxes
    ax.set_xlim(-0.6, ncol - 0.4)
    ax.set_ylim(-tall / 2.0 - 0.2, tall / 2.0 + 0.2)
    ax.set_axis_off()
    if title:
        ax.set_title(str(title))
    return fig


def draw_graph(tensor, names=None, max_values: int = 6, backend: str = "auto",
               title=None):
    """Draw the history of ``tensor`` (see the module docstring).

    ``backend``: "auto" (graphviz when the package and ``dot`` are installed, else
    matplotlib), "graphviz" (a ``graphviz.Digraph``; an error if it is missing) or
    "matplotlib" (a Figure; ``title`` sets its title). ``names`` and ``max_values`` as in
    ``graph_nodes``. Returns the Digraph or the Figure: as a notebook cell's last value
    either one draws inline.
    """
    if backend not in BACKENDS:
        raise ValueError(f"draw_graph: backend must be one of {BACKENDS}, got {backend!r}")
    g = graph_nodes(tensor, names=names, max_values=max_values)
    if backend == "graphviz" and not _have_graphviz():
        raise RuntimeError("draw_graph: backend='graphviz' needs the graphviz Python package "
                           "and its 'dot' program; use backend='matplotlib' (or 'auto')")
    if backend == "graphviz" or (backend == "auto" and _have_graphviz()):
        return _draw_graphviz(g)
    return _draw_matplotlib(g, title)
