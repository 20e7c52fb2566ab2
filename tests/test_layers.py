"""The package's import graph, built from the source: no cycle, and every import goes down the layers that
docs/ARCHITECTURE.md declares (imports inside functions counted; ``if TYPE_CHECKING:`` blocks excluded)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "shapshift"
ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


class _Imports(ast.NodeVisitor):
    """The package modules one file imports, wherever the import statement sits, except under TYPE_CHECKING."""

    def __init__(self, name: str, is_package: bool) -> None:
        self.name, self.is_package, self.found = name, is_package, set()

    def visit_If(self, node: ast.If) -> None:
        if "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found |= {_owner(a.name) for a in node.names if a.name.split(".")[0] == "shapshift"}

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.name.split(".") if self.is_package else self.name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        if module.split(".")[0] != "shapshift":
            return
        for alias in node.names:  # `from . import overlap` imports the module shapshift.overlap
            self.found.add(_owner(f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module))


def _owner(name: str) -> str:
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        visitor = _Imports(name, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        graph[name] = visitor.found - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first repeated at the end), or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        stack, path = [(root, iter(sorted(graph[root])))], [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif child not in state:
                state[child] = 1
                stack.append((child, iter(sorted(graph.get(child, ())))))
                path.append(child)
    return None


def declared_layers() -> dict[str, int]:
    """Module → layer number, from the layer table of docs/ARCHITECTURE.md (``explainers.*`` covers a package)."""
    by_package: dict[str, int] = {}
    exact: dict[str, int] = {}
    for line in ARCHITECTURE.read_text().splitlines():
        row = re.match(r"\|\s*(\d+)\s[^|]*\|([^|]*)\|", line)
        if not row:
            continue
        for pattern in re.findall(r"`([\w.*]+)`", row.group(2)):
            name = "shapshift" if pattern == "shapshift" else f"shapshift.{pattern}"
            (by_package if name.endswith(".*") else exact)[name.removesuffix(".*")] = int(row.group(1))
    layers = {}
    for name in MODULES:  # a module named alone overrides its package's layer (e.g. a leaf inside a package)
        package = next((p for p in by_package if name == p or name.startswith(p + ".")), None)
        if name in exact:
            layers[name] = exact[name]
        elif package is not None:
            layers[name] = by_package[package]
    return layers


def test_the_graph_sees_function_level_imports_and_skips_type_checking(tmp_path):
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .report import X\n"
              "def f():\n    from . import overlap\n    from .explainers.registry import REGISTRY\n")
    visitor = _Imports("shapshift.config", False)
    visitor.visit(ast.parse(source))
    assert visitor.found == {"shapshift.overlap", "shapshift.explainers.registry"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_has_a_layer_and_imports_only_down():
    layers = declared_layers()
    missing = sorted(set(MODULES) - set(layers))
    assert not missing, f"modules without a layer in docs/ARCHITECTURE.md: {missing}"
    upward = [f"{a} (layer {layers[a]}) imports {b} (layer {layers[b]})"
              for a, deps in sorted(import_graph().items()) for b in sorted(deps) if layers[b] > layers[a]]
    assert not upward, "imports against the layers of docs/ARCHITECTURE.md:\n" + "\n".join(upward)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_long_without_a_reason(name):
    """Over 400 lines a module says why at its top (in its docstring)."""
    text = MODULES[name].read_text()
    if text.count("\n") > 400:
        assert "Over 400 lines" in (ast.get_docstring(ast.parse(text)) or ""), f"{name} is long without a reason"
