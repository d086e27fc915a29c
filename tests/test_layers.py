"""The package's layers: each folder imports only from the folders below it, and no two modules import each other
(directly or around a loop), lazy imports inside functions included — ``import`` under ``if TYPE_CHECKING:`` is the
one exemption (it never runs).

    config < kernels < models < checkpoints < text < data < generate < hf < train < study < serve < cli
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "omnigpt"
LAYERS = ["config", "kernels", "models", "checkpoints", "text", "data", "generate", "hf", "train", "study", "serve",
          "cli"]


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    """Index in LAYERS of ``omnigpt.<layer>...``; None for the package root (``omnigpt``, ``omnigpt.__main__``)."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def _type_checking_only(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name | ast.Attribute) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(source: str, modules: set[str] | dict[str, Path]) -> set[str]:
    """Every ``omnigpt`` module this source imports, at any depth, outside ``if TYPE_CHECKING:`` blocks.
    ``from omnigpt.pkg import sub`` counts as importing the submodule ``sub`` when ``modules`` has it, else ``pkg``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("omnigpt"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("omnigpt"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
            found.update(subs if len(subs) == len(node.names) else {node.module, *subs})
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def graph(root: Path = SRC) -> dict[str, set[str]]:
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    return {m: {i for i in imports_of(p.read_text(), modules) if i in modules and i != m} for m, p in modules.items()}


def layer_violations(g: dict[str, set[str]]) -> list[str]:
    out = []
    for m, deps in g.items():
        lm = layer_of(m)
        for d in deps:
            ld = layer_of(d)
            if lm is not None and ld is not None and ld > lm:
                out.append(f"{m} ({LAYERS[lm]}) imports {d} ({LAYERS[ld]}), a higher layer")
    return sorted(out)


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Import loops (Tarjan's strongly connected components of size > 1). A package's ``__init__`` importing its
    own submodules is not a loop by itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            strong(v)
    return out


def test_every_module_sits_in_a_layer():
    g = graph()
    assert g, "no modules found"
    loose = [m for m in g if layer_of(m) is None and m not in ("omnigpt", "omnigpt.__main__")]
    assert loose == [], f"modules outside the layered folders: {loose}"


def test_lower_layers_never_import_higher_ones():
    assert layer_violations(graph()) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_checks_catch_violations(tmp_path):
    """The checker itself: a model module importing the trainer, and two modules importing each other lazily."""
    pkg = tmp_path / "omnigpt"
    for d in ("models", "train", "text"):
        (pkg / d).mkdir(parents=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "gpt.py").write_text("def f():\n    from omnigpt.train.trainer import Trainer\n")
    (pkg / "train" / "trainer.py").write_text("from omnigpt.models import gpt\n")
    (pkg / "text" / "a.py").write_text("def f():\n    import omnigpt.text.b\n")
    (pkg / "text" / "b.py").write_text("from typing import TYPE_CHECKING\nfrom omnigpt.text import a\n"
                                       "if TYPE_CHECKING:\n    from omnigpt.train import x\n")
    g = graph(pkg)
    assert layer_violations(g) == [
        "omnigpt.models.gpt (models) imports omnigpt.train.trainer (train), a higher layer"]
    assert sorted(map(tuple, cycles(g))) == [("omnigpt.models.gpt", "omnigpt.train.trainer"),
                                             ("omnigpt.text.a", "omnigpt.text.b")]


@pytest.mark.parametrize("layer", LAYERS[1:])
def test_each_layer_is_a_package_with_a_docstring(layer):
    init = SRC / layer / "__init__.py"
    assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), f"{layer}/__init__.py needs a docstring"
