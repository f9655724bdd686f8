"""The import graph between cotune's packages follows the layer order of docs/architecture.md.

The graph is read from the source with ``ast``: every ``import`` and ``from ... import`` of a
``cotune`` module counts, at module level and inside functions (a lazy import is still a
dependency). A package may import packages of its own layer or of lower layers; the graph has no
circles.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "cotune"

#: Bottom to top. A package imports only packages listed before it or beside it (same tuple).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("fileio", "extras", "registry"),  # leaf modules: files, optional extras, the Registry type
    ("config",),  # plain dataclasses; names of components are checked where components are built
    ("backbones", "adapters"),
    ("connectors", "encoders"),
    ("data",),  # schema, readers, templates, media, DataSpec; never builds a model
    ("model",),  # assembles components; builds the DataSpec of a model; sources already resolved
    ("balance", "zoo"),  # balance strategies; the zoo: offline checkpoints and source resolution
    ("merge",),  # folding adapters into the backbones, merged directories
    ("rundir",),  # RunDir: the layout of a run directory and loading its model
    ("export",),  # model cards, PEFT folders, Hugging Face formats
    ("train",),
    ("eval",),
    ("serve",),
    ("report",),
    ("demo",),  # the application layer
    ("cli", "__main__"),  # the face
    ("testing",),  # tiny backbones, datasets and command helpers for tests; runs commands, so above cli
)

#: Imports the layer order would allow but the design rules out (docs/architecture.md).
NEVER = {"balance": {"data"}}  # balance strategies see the model and its inputs, not the data pipeline


def _module_name(path: Path) -> tuple[str, bool]:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def _node(module: str) -> str | None:
    """The package (or top-level module) of a ``cotune.*`` module name; None for others and the root."""
    parts = module.split(".")
    if parts[0] != "cotune" or len(parts) < 2:
        return None
    return parts[1]


def _imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every cotune module name ``tree`` imports, lazy imports included."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = module.split(".") if is_package else module.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join([*here, base] if base else here)
            names.add(base)
            # ``from cotune import config`` imports the package cotune.config.
            names.update(f"{base}.{alias.name}" for alias in node.names
                         if (SRC.parent / base.replace(".", "/") / alias.name).is_dir()
                         or (SRC.parent / base.replace(".", "/") / f"{alias.name}.py").is_file())
    return names


def import_graph() -> dict[str, set[str]]:
    """Package -> the cotune packages it imports (itself excluded)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        module, is_package = _module_name(path)
        source = _node(module)
        if source is None:
            continue  # cotune/__init__.py: the public API re-exports, above every layer
        targets = {_node(name) for name in _imported(ast.parse(path.read_text()), module, is_package)}
        graph.setdefault(source, set()).update(t for t in targets if t is not None and t != source)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one package (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_import_graph_has_no_circles():
    assert circles(import_graph()) == []


def test_every_package_imports_only_its_own_or_lower_layers():
    level = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    graph = import_graph()
    assert sorted(set(graph) - set(level)) == [], "a package missing from LAYERS"
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if level[b] > level[a])
    assert upward == []


def test_balance_does_not_reach_into_the_data_pipeline():
    graph = import_graph()
    assert {a: sorted(graph[a] & banned) for a, banned in NEVER.items() if graph[a] & banned} == {}


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
