"""The graph view (tinyllm.viz.graph): the node/edge lists match the ops that ran, the
matplotlib picture has one box per node and one arrow per edge, and bad input is named."""
import matplotlib
import numpy as np
import pytest

import tinyllm as tl
from tinyllm.viz.graph import draw_graph, graph_nodes

matplotlib.use("Agg")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny():
    """L = tanh(x * w + b): two leaves multiplied, a bias added, a tanh."""
    x = tl.Tensor(np.array(2.0), requires_grad=True)
    w = tl.Tensor(np.array(-0.5), requires_grad=True)
    b = tl.Tensor(np.array(0.25), requires_grad=True)
    y = x * w
    z = y + b
    L = z.tanh()
    return x, w, b, y, z, L


def test_nodes_and_edges_follow_the_ops():
    x, w, b, y, z, L = _tiny()
    g = graph_nodes(L, names={"x": x, "w": w, "b": b, "L": L})
    ops = [n["op"] for n in g["nodes"] if n["kind"] == "op"]
    assert sorted(ops) == ["Add", "Mul", "Tanh"]
    tensors = [n for n in g["nodes"] if n["kind"] == "tensor"]
    assert len(tensors) == 6                         # x, w, b, y, z, L
    assert sum(n["leaf"] for n in tensors) == 3
    by_id = {n["id"]: n for n in g["nodes"]}
    named = {n["name"]: n for n in tensors if n["name"]}
    assert set(named) == {"x", "w", "b", "L"}
    assert g["nodes"][-1] is named["L"]              # the output comes last
    # every edge goes forward in the listed (topological) order and alternates kinds
    place = {n["id"]: i for i, n in enumerate(g["nodes"])}
    assert len(g["edges"]) == 5 + 3                  # 5 inputs into ops, 3 outputs
    for a, c in g["edges"]:
        assert place[a] < place[c]
        assert {by_id[a]["kind"], by_id[c]["kind"]} == {"op", "tensor"}
    mul = next(n["id"] for n in g["nodes"] if n.get("op") == "Mul")
    into_mul = {by_id[a]["name"] for a, c in g["edges"] if c == mul}
    assert into_mul == {"x", "w"}
    assert named["x"]["value"] == "2." and named["x"]["grad"] is None


def test_grads_show_after_backward_with_retain_graph():
    x, w, b, y, z, L = _tiny()
    L.backward(retain_graph=True)
    g = graph_nodes(L, names={"x": x, "w": w})
    named = {n["name"]: n for n in g["nodes"] if n.get("name")}
    dz = 1 - np.tanh(2.0 * -0.5 + 0.25) ** 2         # dL/dz
    assert float(named["x"]["grad"]) == pytest.approx(dz * -0.5, rel=1e-4)   # dL/dx = dz w
    assert float(named["w"]["grad"]) == pytest.approx(dz * 2.0, rel=1e-4)


def test_a_freed_graph_is_marked_and_ends_there():
    x, w, b, y, z, L = _tiny()
    L.backward()                                     # frees every Context
    g = graph_nodes(L)
    assert [n["kind"] for n in g["nodes"]] == ["op", "tensor"]
    assert g["nodes"][0]["freed"] and g["nodes"][0]["op"] == "Tanh"


def test_shared_input_and_big_tensors():
    a = tl.Tensor(np.arange(12.0).reshape(3, 4), requires_grad=True)
    out = (a * a).sum()                              # a used twice by one op: one edge
    g = graph_nodes(out, max_values=4)
    big = next(n for n in g["nodes"] if n["leaf"])
    assert big["shape"] == (3, 4) and big["value"] is None
    assert len([n for n in g["nodes"] if n["kind"] == "tensor"]) == 3
    assert len(g["edges"]) == 4


def test_matplotlib_picture_has_a_box_per_node_and_an_arrow_per_edge(tmp_path):
    *_, L = _tiny()
    g = graph_nodes(L)
    fig = draw_graph(L, backend="matplotlib", title="tanh(x w + b)")
    ax = fig.axes[0]
    texts = [t for t in ax.texts if t.get_gid()]
    assert sorted(t.get_gid() for t in texts) == sorted(n["id"] for n in g["nodes"])
    arrows = [c for c in ax.get_children() if type(c).__name__ == "Annotation"
              and not c.get_gid()]
    assert len(arrows) == len(g["edges"])
    tanh_box = next(t for t in texts if t.get_text() == "Tanh")
    leaf_x = min(t.get_position()[0] for t in texts)
    assert tanh_box.get_position()[0] > leaf_x       # leaves left, output right
    assert fig._repr_png_().startswith(PNG_MAGIC)
    fig.savefig(tmp_path / "g.png")
    assert (tmp_path / "g.png").stat().st_size > 1000


def test_auto_falls_back_to_matplotlib_without_graphviz(monkeypatch):
    from matplotlib.figure import Figure
    import tinyllm.viz.graph as vg
    monkeypatch.setattr(vg, "_have_graphviz", lambda: False)
    *_, L = _tiny()
    assert isinstance(draw_graph(L), Figure)
    with pytest.raises(RuntimeError, match="graphviz"):
        draw_graph(L, backend="graphviz")


def test_bad_input_is_named():
    *_, L = _tiny()
    with pytest.raises(TypeError, match="tensor must be a tinyllm Tensor"):
        graph_nodes(np.ones(3))
    with pytest.raises(ValueError, match="backend"):
        draw_graph(L, backend="svg")
    with pytest.raises(ValueError, match="max_values"):
        graph_nodes(L, max_values=-1)
    with pytest.raises(TypeError, match=r"names\['x'\]"):
        graph_nodes(L, names={"x": 3.0})


def test_graphviz_gets_one_node_per_node_and_one_edge_per_edge(monkeypatch):
    """With graphviz present (a stand-in module here: the real one may not be installed),
    auto picks it and hands it the same nodes and edges, left to right."""
    import sys
    import types
    import tinyllm.viz.graph as vg

    class Digraph:
        def __init__(self, graph_attr=None):
            self.graph_attr, self.nodes, self.edges = graph_attr, {}, []

        def node(self, name, label, **attrs):
            self.nodes[name] = (label, attrs)

        def edge(self, a, b):
            self.edges.append((a, b))

    monkeypatch.setitem(sys.modules, "graphviz", types.SimpleNamespace(Digraph=Digraph))
    monkeypatch.setattr(vg, "_have_graphviz", lambda: True)
    x, w, b, y, z, L = _tiny()
    g = graph_nodes(L, names={"x": x})
    dot = draw_graph(L, names={"x": x})
    assert isinstance(dot, Digraph) and dot.graph_attr == {"rankdir": "LR"}
    assert set(dot.nodes) == {n["id"] for n in g["nodes"]}
    assert dot.edges == g["edges"]
    x_id = next(n["id"] for n in g["nodes"] if n["name"] == "x")
    assert dot.nodes[x_id][0].startswith("x ()") and "data 2." in dot.nodes[x_id][0]
    assert isinstance(draw_graph(L, backend="matplotlib"), matplotlib.figure.Figure)
