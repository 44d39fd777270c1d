"""The package's import structure: no import circle, and no module importing a layer above its own.

The graph is built from the source with ``ast`` (every ``import`` statement, at module level or inside a
function: a lazy import is still a dependency), without importing anything. ``if TYPE_CHECKING:`` blocks
are skipped (annotations only). The one allowed exception is the public API itself: ``organseg/__init__``
loads the verbs lazily (PEP 562) from the layers below, and nothing imports it back.
"""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "organseg"

#: Components (``organseg.<name>``: a module or a subpackage), lowest layer first. A component may import
#: only from its own layer or below; within a layer the cycle check keeps the arrows one way.
LAYERS: list[set[str]] = [
    {"errors", "version", "fastgzip"},
    {"labels", "geometry"},
    {"io"},
    {"config", "runtime"},
    {
        "vnet",
        "losses",
        "checkpoint",
        "modelstore",
        "transforms",
        "datasets",
        "phantom",
        "metrics",
        "surfaces",
        "rendering",
    },
    {"training", "infer", "ink", "report", "report_figures", "report_html", "bundle", "bundle_docs"},
    {"pipeline"},
    {"cli", "__main__"},
]


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """Modules of ``modules`` imported anywhere in ``tree``; ``from pkg import sub`` depends on ``pkg.sub``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = {f"{target}.{alias.name}" for alias in node.names} & modules
            found.update(subs)
            if len(subs) < len(node.names):  # some names are attributes of ``target`` itself
                found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found & modules - {module}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` for every ``.py`` file under ``root``."""
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    return {
        name: _imports(
            ast.parse(path.read_text(encoding="utf-8")), name, path.name == "__init__.py", set(files)
        )
        for name, path in files.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as a list of names (first == last), or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def component(module: str) -> str:
    """``organseg.infer.models`` -> ``infer``; the root package is ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def component_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Edges between components, without the lazy public API (the root package)."""
    out: dict[str, set[str]] = {}
    for src, deps in graph.items():
        for dst in deps:
            a, b = component(src), component(dst)
            if a and b and a != b:
                out.setdefault(a, set()).add(b)
    return out


def layer_of(name: str) -> int:
    for level, names in enumerate(LAYERS):
        if name in names:
            return level
    raise AssertionError(f"organseg.{name} is in no layer of tests/test_architecture.py: add it to LAYERS")


# --------------------------------------------------------------------------------------- the package


def test_no_import_circle_between_modules() -> None:
    """Module level; a submodule may call back into its own package's ``__init__`` (the package's API, as
    ``infer.shard`` calls ``infer.segment``), like the lazy root API: those edges are left out."""
    graph = {
        module: {d for d in deps if not module.startswith(d + ".")}
        for module, deps in import_graph().items()
        if module != "organseg"
    }
    assert find_cycle(graph) is None


def test_no_import_circle_between_components() -> None:
    assert find_cycle(component_graph(import_graph())) is None


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [
        f"organseg.{a} -> organseg.{b}"
        for a, deps in component_graph(import_graph()).items()
        for b in deps
        if layer_of(b) > layer_of(a)
    ]
    assert upward == []


def test_nothing_imports_the_public_api_or_the_cli() -> None:
    """Only the command line (``cli``, and ``python -m organseg``) sits above the API."""
    top = {"organseg", "organseg.cli", "organseg.__main__"}
    importers = sorted(m for m, deps in import_graph().items() if m not in top and top & deps)
    assert importers == [], importers


def private_imports(root: Path = PACKAGE) -> list[str]:
    """``"file: module._name"`` for every private name one organseg module imports from another."""
    private = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("organseg"):
                names = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                private += [f"{path.relative_to(root)}: {node.module}.{name}" for name in names]
    return private


def test_modules_import_only_public_names_from_each_other(tmp_path: Path) -> None:
    """Modules build on each other's public names (issue 18): a private name stays in its module."""
    assert private_imports() == []
    (tmp_path / "a.py").write_text("from organseg.config import _hidden\n", encoding="utf-8")
    assert private_imports(tmp_path) == ["a.py: organseg.config._hidden"]  # the checker sees a planted one


# --------------------------------------------------------------------------------------- the checker itself


def test_the_checker_finds_a_planted_circle_and_an_upward_import(tmp_path: Path) -> None:
    pkg = tmp_path / "organseg"
    (pkg / "io").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "io" / "__init__.py").write_text("from organseg.io import writers\n")
    (pkg / "io" / "writers.py").write_text("def f():\n    from organseg import config\n")
    (pkg / "config.py").write_text("from organseg.io import writers\n")
    (pkg / "labels.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import organseg.io\n"
    )
    graph = import_graph(pkg)
    assert graph["organseg.labels"] == set()  # annotations only
    cycle = find_cycle(graph)
    assert cycle is not None and {"organseg.config", "organseg.io.writers"} <= set(cycle)
    comp = component_graph(graph)
    assert find_cycle(comp) in (["config", "io", "config"], ["io", "config", "io"])
    assert layer_of("io") < layer_of("config")  # so io -> config is the upward edge the test above reports


# --------------------------------------------------------------------------------------- the public API


def test_public_api_shows_real_signatures() -> None:
    import organseg

    for name in ("segment", "train", "evaluate", "render", "synthesize", "demo"):
        params = inspect.signature(getattr(organseg, name)).parameters
        assert "args" not in params and "kwargs" not in params, name
    assert list(inspect.signature(organseg.segment).parameters)[:3] == ["input", "output", "model"]
    assert organseg.segment.__module__ == "organseg.infer"
    with pytest.raises(AttributeError):
        organseg.no_such_verb  # noqa: B018


def test_import_organseg_is_light() -> None:
    code = "import sys, organseg; print(sorted(m for m in ('torch', 'monai', 'vtk', 'scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------------------- real data in CI


def test_missing_shared_data_skips_locally_and_fails_under_ci(tmp_path: Path, monkeypatch) -> None:
    from conftest import require_shared_data

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_shared_data(tmp_path / "missing")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_shared_data(tmp_path / "missing")
    assert require_shared_data(tmp_path) == tmp_path
    assert os.environ["CI"] == "true"
