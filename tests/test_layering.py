"""Imports stay layered: no import cycle among the package's modules (module-level imports), and the
lower layers (losses, models, norm, data, validators, callbacks) never import a method or the builder."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_da"
LOWER = ("losses", "models", "norm", "data", "validators", "callbacks")


def module_imports() -> dict[str, set[str]]:
    """``{module: modules of the package it imports at module level}`` (a package is its ``__init__``)."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                deps |= {module} | {f"{module}.{a.name}" for a in node.names}
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_no_import_cycle():
    graph = module_imports()
    assert len(graph) > 50 and "lightning_da.methods.base" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_lower_layers_import_no_method_and_not_the_builder():
    upper = ("lightning_da.methods", "lightning_da.train", "lightning_da.report")
    for name, deps in module_imports().items():
        if name.count(".") and name.split(".")[1] in LOWER:
            bad = sorted(d for d in deps if d.startswith(upper))
            assert not bad, f"{name} imports {bad}"
