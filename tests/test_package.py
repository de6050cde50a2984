"""Package-level properties: no import cycles inside ``tvt``, and every public ``__all__`` is real."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import tvt

SRC = Path(tvt.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    """Every module of the package, by dotted name, from the files on disk."""
    found: dict[str, Path] = {}
    for file in SRC.rglob("*.py"):
        parts = list(file.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = file
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``tvt`` modules it imports anywhere in its source (top level or inside functions).

    ``from tvt.x import y`` counts as importing ``tvt.x.y`` when that is a module, else ``tvt.x``.
    Imports under ``if TYPE_CHECKING:`` are left out: they never run.
    """
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        tree = ast.parse(file.read_text(encoding="utf-8"))
        skip: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip.update(id(n) for n in ast.walk(node))
        edges: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, file.name == "__init__.py", node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target.startswith("tvt") and target != name and target != "tvt":
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of nodes (first == last), or None (iterative DFS, 3 colours)."""
    colour = {n: 0 for n in graph}
    for start in sorted(graph):
        if colour[start]:
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        path = [start]
        colour[start] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                colour[node] = 2
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop()
            if nxt not in colour:
                continue
            if colour[nxt] == 1:
                return path[path.index(nxt):] + [nxt]
            if colour[nxt] == 0:
                colour[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(graph[nxt])))
    return None


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles_inside_tvt() -> None:
    graph = import_graph()
    assert len(graph) > 40  # the walk really saw the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _public_packages() -> list[str]:
    names = ["tvt"] + [m.name for m in pkgutil.walk_packages(tvt.__path__, "tvt.") if m.ispkg]
    return sorted(names)


@pytest.mark.parametrize("package", _public_packages())
def test_every_name_in_all_exists(package: str) -> None:
    module = importlib.import_module(package)
    names = getattr(module, "__all__", [])
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{package}.__all__ names {missing}, which do not exist"
    assert len(names) == len(set(names)), f"{package}.__all__ repeats a name"


def test_import_tvt_loads_no_torch() -> None:
    """The public names are imported on first use, so ``import tvt`` (e.g. for ``--help``) stays light."""
    import subprocess
    import sys

    code = "import sys, tvt, tvt.data, tvt.engine, tvt.eval; print(sorted({'torch', 'timm'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


LAZY_PACKAGES = ["tvt", "tvt.data", "tvt.engine", "tvt.eval"]


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_lazy_names_match_what_type_checkers_see(package: str) -> None:
    """The ``if TYPE_CHECKING:`` imports of a lazy package give exactly its lazy names, from the same places."""
    module = importlib.import_module(package)
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    seen: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for imp in ast.walk(node):
                if isinstance(imp, ast.ImportFrom):
                    seen.update({a.asname or a.name: f"{imp.module}:{a.name}" for a in imp.names})
    assert seen == module._EXPORTS
    assert set(module.__all__) - {"__version__"} == set(module._EXPORTS)
    assert set(module.__all__) <= set(dir(module))


@pytest.mark.parametrize("name", [n for n in tvt.__all__ if n != "__version__"])
def test_top_level_api_is_documented(name: str) -> None:
    """Every public name has a docstring, and a function's names every parameter without a default."""
    import inspect

    obj = getattr(tvt, name)
    doc = inspect.getdoc(obj) or ""
    assert len(doc) > 40, f"tvt.{name} has no real docstring"
    if inspect.isfunction(obj):
        required = [p for p, v in inspect.signature(obj).parameters.items() if v.default is inspect.Parameter.empty]
        missing = [p for p in required if p not in doc]
        assert not missing, f"the docstring of tvt.{name} does not describe {missing}"
