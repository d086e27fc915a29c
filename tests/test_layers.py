"""The package's layers. Three rules, over every import of an ``omnigpt`` module at any depth:

1. Each folder imports only from the folders below it:

    config < files < kernels < models < text < checkpoints < data < generate < train < apps < hf < study < serve < cli

2. No two modules import each other, directly or around a loop.
3. ``apps/<app>/`` folders are independent: an app imports only its own folder and ``apps/common`` (which imports
   no app); ``apps/__init__`` is the registry and may name every app.

An import is ``import``/``from ... import`` anywhere — inside functions and under ``if TYPE_CHECKING:`` too (a
type-only import is still a dependency, and its loop is still a loop) — and any string literal naming an omnigpt
module: ``"omnigpt.apps.lm.task:LMTask"``, ``importlib.import_module("omnigpt.x.y")``, registry tables of such
strings. A string naming the module's own package (a logger name, a resource anchor) is not an import.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "omnigpt"
LAYERS = ["config", "files", "kernels", "models", "text", "checkpoints", "data", "generate", "train", "apps", "hf",
          "study", "serve", "cli"]
STRING_IMPORT = re.compile(r"omnigpt(\.\w+)+(:[\w.]+)?")  # "omnigpt.pkg.mod", "omnigpt.pkg.mod:name"


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    """Index in LAYERS of ``omnigpt.<layer>...``; None for the package root (``omnigpt``, ``omnigpt.__main__``)."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def app_of(module: str) -> str | None:
    """The app folder of ``omnigpt.apps.<app>...`` (``common`` included); "" for the registry; None outside apps."""
    parts = module.split(".")
    return None if parts[:2] != ["omnigpt", "apps"] else parts[2] if len(parts) > 2 else ""


def imports_of(source: str, modules: set[str] | dict[str, Path], name: str = "") -> set[str]:
    """Every ``omnigpt`` module this source (module ``name``) imports, statements and strings (see the docstring).
    ``from omnigpt.pkg import sub`` counts as importing the submodule ``sub`` when ``modules`` has it, else ``pkg``;
    a string counts as its longest prefix in ``modules``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("omnigpt"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("omnigpt"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
            found.update(subs if len(subs) == len(node.names) else {node.module, *subs})
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and STRING_IMPORT.fullmatch(node.value):
            parts = node.value.partition(":")[0].split(".")
            prefixes = [".".join(parts[:i]) for i in range(len(parts), 1, -1)]
            target = next((p for p in prefixes if p in modules), None)
            if target and not name.startswith(target + "."):  # naming one's own package is no import
                found.add(target)
    return found


def graph(root: Path = SRC) -> dict[str, set[str]]:
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    return {m: {i for i in imports_of(p.read_text(), modules, m) if i in modules and i != m}
            for m, p in modules.items()}


def layer_violations(g: dict[str, set[str]]) -> list[str]:
    out = []
    for m, deps in g.items():
        lm = layer_of(m)
        for d in deps:
            ld = layer_of(d)
            if lm is not None and ld is not None and ld > lm:
                out.append(f"{m} ({LAYERS[lm]}) imports {d} ({LAYERS[ld]}), a higher layer")
    return sorted(out)


def app_violations(g: dict[str, set[str]]) -> list[str]:
    out = []
    for m, deps in g.items():
        app = app_of(m)
        for d in deps:
            other = app_of(d)
            if app and other is not None and other not in (app, "common"):
                where = f"apps/{other}" if other else "the registry apps/__init__"
                out.append(f"{m} (apps/{app}) imports {d} ({where}); an app imports only its folder and apps/common")
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
    return sorted(out)


def test_every_module_sits_in_a_layer():
    g = graph()
    assert g, "no modules found"
    loose = [m for m in g if layer_of(m) is None and m not in ("omnigpt", "omnigpt.__main__")]
    assert loose == [], f"modules outside the layered folders: {loose}"


def test_lower_layers_never_import_higher_ones():
    assert layer_violations(graph()) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_app_folders_import_only_apps_common():
    assert app_violations(graph()) == []


@pytest.mark.parametrize("layer", LAYERS[1:])
def test_each_layer_is_a_package_with_a_docstring(layer):
    init = SRC / layer / "__init__.py"
    assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), f"{layer}/__init__.py needs a docstring"


# The checker itself, on synthetic packages.

def fake_package(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    """The import graph of a package ``omnigpt`` under ``tmp_path`` holding ``files`` (path -> source), with an
    empty ``__init__.py`` in every folder that has none."""
    pkg = tmp_path / "omnigpt"
    for rel, source in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(source)
    for d in [pkg, *filter(Path.is_dir, pkg.rglob("*"))]:
        if not (d / "__init__.py").exists():
            (d / "__init__.py").write_text("")
    return graph(pkg)


def test_the_checks_catch_lazy_imports(tmp_path):
    """A model module importing the trainer inside a function; two modules importing each other lazily."""
    g = fake_package(tmp_path, {
        "models/gpt.py": "def f():\n    from omnigpt.train.trainer import Trainer\n",
        "train/trainer.py": "from omnigpt.models import gpt\n",
        "text/a.py": "def f():\n    import omnigpt.text.b\n",
        "text/b.py": "from omnigpt.text import a\n",
    })
    assert layer_violations(g) == [
        "omnigpt.models.gpt (models) imports omnigpt.train.trainer (train), a higher layer"]
    assert cycles(g) == [["omnigpt.models.gpt", "omnigpt.train.trainer"], ["omnigpt.text.a", "omnigpt.text.b"]]


def test_the_checks_catch_type_checking_imports(tmp_path):
    """``if TYPE_CHECKING:`` imports count: a loop through one (serve/model ↔ serve/app) and an upward one."""
    tc = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    "
    g = fake_package(tmp_path, {
        "serve/model.py": tc + "from omnigpt.serve.app import Settings\n",
        "serve/app.py": "from omnigpt.serve.model import Model\n",
        "models/gpt.py": tc + "from omnigpt.train.trainer import Trainer\n",
        "train/trainer.py": "",
    })
    assert cycles(g) == [["omnigpt.serve.app", "omnigpt.serve.model"]]
    assert layer_violations(g) == [
        "omnigpt.models.gpt (models) imports omnigpt.train.trainer (train), a higher layer"]


def test_the_checks_catch_string_imports(tmp_path):
    """``"module:name"`` strings and ``import_module`` names are imports; a string naming one's own package (a
    logger name) and a string naming no module are not."""
    g = fake_package(tmp_path, {
        "checkpoints/registry.py": (
            "import importlib, logging\n"
            "log = logging.getLogger('omnigpt.checkpoints')\n"
            "LOADERS = {'lm': 'omnigpt.apps.lm.task:LMTask', 'gone': 'omnigpt.nowhere:f'}\n"
            "def load():\n    return importlib.import_module('omnigpt.train.trainer')\n"),
        "apps/lm/task.py": "from omnigpt.checkpoints import registry\n",
        "train/trainer.py": "",
    })
    assert g["omnigpt.checkpoints.registry"] == {"omnigpt.apps.lm.task", "omnigpt.train.trainer"}
    assert layer_violations(g) == [
        "omnigpt.checkpoints.registry (checkpoints) imports omnigpt.apps.lm.task (apps), a higher layer",
        "omnigpt.checkpoints.registry (checkpoints) imports omnigpt.train.trainer (train), a higher layer"]
    assert cycles(g) == [["omnigpt.apps.lm.task", "omnigpt.checkpoints.registry"]]


def test_the_checks_catch_apps_importing_each_other(tmp_path):
    """An app imports another app's module, apps/common imports an app; the registry names every app (allowed)."""
    g = fake_package(tmp_path, {
        "apps/__init__.py": "TASKS = {'lm': 'omnigpt.apps.lm.task:LMTask', 'sft': 'omnigpt.apps.sft.task:SFT'}\n",
        "apps/common/metrics.py": "def f():\n    from omnigpt.apps.lm import task\n",
        "apps/lm/task.py": "from omnigpt.apps.common.metrics import f\n",
        "apps/sft/task.py": "from omnigpt.apps.lm.task import LMTask\nfrom omnigpt.apps.sft import data\n",
        "apps/sft/data.py": "",
    })
    assert app_violations(g) == [
        "omnigpt.apps.common.metrics (apps/common) imports omnigpt.apps.lm.task (apps/lm); "
        "an app imports only its folder and apps/common",
        "omnigpt.apps.sft.task (apps/sft) imports omnigpt.apps.lm.task (apps/lm); "
        "an app imports only its folder and apps/common"]
