"""Imports only point down the layers of docs/DESIGN.md section 2."""
import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).parent.parent / "tinyllm"
RANK = {"errors": 0, "backend": 0, "runtime": 0, "stopwatch": 0, "kernels": 1, "autograd": 2,
        "precision": 0,
        "nn": 3, "models": 4, "data": 5, "train": 5, "infer": 5, "optim": 5, "finetune": 5,
        "compress": 5, "viz": 5,
        "bench": 6,
        "cli": 6, "__main__": 6}


def _layer(module_path: pathlib.Path) -> str:
    return module_path.relative_to(PKG).parts[0].removesuffix(".py")


def _imported_layers(path: pathlib.Path):
    tree = ast.parse(path.read_text())
    here = path.relative_to(PKG).parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
            parts = list(base) + (node.module.split(".") if node.module else [])
            if parts:
                yield parts[0]
            else:                                   # "from . import x" at the top level
                yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tinyllm"):
            yield (node.module.split(".") + [""])[1] or node.names[0].name


MODULES = [p for p in PKG.rglob("*.py") if _layer(p) != "__init__"]


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PKG)) for p in MODULES])
def test_imports_point_down(path):
    mine = _layer(path)
    assert mine in RANK, f"{mine} has no rank in docs/DESIGN.md section 2"
    for other in _imported_layers(path):
        if other in RANK and other != mine:
            assert RANK[other] <= RANK[mine], f"{path.name} (rank {RANK[mine]}) imports " \
                                              f"{other} (rank {RANK[other]})"
