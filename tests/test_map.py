"""docs/MAP.md, the map from the document's equations and techniques to the code, must not
go stale: every function it names (`module:qualname`) imports, every notebook cell it names
(`notebooks/NAME.ipynb#cell-id`) exists, every test it names (`tests/FILE.py::name`) is
defined in that file (found in the file's syntax tree, so nothing is run or imported), and
every row names at least one of each."""
import ast
import importlib
import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).parent.parent
MAP = ROOT / "docs" / "MAP.md"

FUNC = re.compile(r"`(tinyllm(?:\.\w+)*):([\w.]+)`")
CELL = re.compile(r"`(notebooks/[\w-]+\.ipynb)#([\w-]+)`")
TEST = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")

# the techniques the document names: each must have a row
REQUIRED = ("eq. 4.1a", "eq. 4.1b", "eq. 4.1c", "eq. 4.2a", "eq. 4.2b", "pretraining",
            "fine-tuning strategies", "regularisation", "quantisation", "pruning",
            "distillation", "low precision", "parallel / GPU execution")


def _rows():
    """{first column: row text} for every table row of MAP.md (header rows left out)."""
    rows = {}
    for line in MAP.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] not in ("Document", "") and \
                not set(cells[0]) <= set("-: "):
            rows[cells[0]] = line
    return rows


def _all(pattern):
    return sorted(set(pattern.findall(MAP.read_text())))


def test_every_technique_has_a_row_naming_a_function_a_cell_and_a_test():
    rows = _rows()
    missing = [r for r in REQUIRED if r not in rows]
    assert not missing, f"docs/MAP.md has no row for {missing}"
    for name, line in rows.items():
        assert FUNC.search(line), f"MAP.md row {name!r} names no function"
        assert CELL.search(line), f"MAP.md row {name!r} names no notebook cell"
        assert TEST.search(line), f"MAP.md row {name!r} names no test"


def _resolve(module: str, qualname: str):
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("module,qualname", _all(FUNC), ids=lambda v: v)
def test_every_function_imports(module, qualname):
    try:
        obj = _resolve(module, qualname)
    except (ImportError, AttributeError) as e:
        pytest.fail(f"docs/MAP.md names {module}:{qualname}, which does not resolve: {e}")
    assert callable(obj), f"{module}:{qualname} is not a function or class"


@pytest.mark.parametrize("notebook,cell", _all(CELL), ids=lambda v: v)
def test_every_notebook_cell_exists(notebook, cell):
    path = ROOT / notebook
    assert path.exists(), f"docs/MAP.md names {notebook}, which does not exist"
    ids = [c.get("id") for c in json.loads(path.read_text())["cells"]]
    assert cell in ids, f"docs/MAP.md names {notebook}#{cell}; its cell ids are {ids}"


def _defined_tests(path: pathlib.Path) -> set:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):      # test methods of a Test* class
            names |= {f"{node.name}.{n.name}" for n in node.body
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            names.add(node.name)
    return {n for n in names if n.split(".")[-1].startswith(("test", "Test"))}


@pytest.mark.parametrize("file,name", _all(TEST), ids=lambda v: v)
def test_every_test_exists(file, name):
    path = ROOT / file
    assert path.exists(), f"docs/MAP.md names {file}, which does not exist"
    assert name in _defined_tests(path), f"docs/MAP.md names {file}::{name}, not defined there"


def test_the_checks_can_fail(tmp_path):
    """The patterns find what a row holds, and a made-up name does not resolve."""
    line = ("| x | y | `tinyllm.models.gpt:GPT.nope` | `notebooks/01_x.ipynb#c0` | "
            "`tests/test_gpt.py::test_nope` |")
    assert FUNC.findall(line) == [("tinyllm.models.gpt", "GPT.nope")]
    assert CELL.findall(line) == [("notebooks/01_x.ipynb", "c0")]
    assert TEST.findall(line) == [("tests/test_gpt.py", "test_nope")]
    with pytest.raises(AttributeError):
        _resolve("tinyllm.models.gpt", "GPT.nope")
    assert "test_nope" not in _defined_tests(ROOT / "tests" / "test_gpt.py")
    assert "test_config_round_trips_and_validates" in _defined_tests(ROOT / "tests" /
                                                                     "test_gpt.py")
