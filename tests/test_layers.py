"""The layering rules, read from the source with `ast` (docs/architecture.md explains them).

Imports run one way: gateway -> schema -> resolvers, and gateway -> resolvers. Nothing in
resolvers/ imports schema/ or gateway/, nor strawberry or starlette; schema/ imports nothing
from gateway/. No import circle among the modules of a package, and no module over a size
that one reader can hold in mind.

Every import counts, wherever it is written: at the top, inside a function, or under
`if TYPE_CHECKING:` (a type-only import is still an arrow between two modules).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("gateway", "schema", "resolvers")

# What each layer may not import (top-level package names).
FORBIDDEN = {
    "resolvers": {"schema", "gateway", "strawberry", "starlette"},
    "schema": {"gateway"},
}

# Packages whose modules must not import each other in a circle, counting every import.
PACKAGES_WITHOUT_CYCLES = ("gateway", "resolvers")
# GraphQL types refer to each other (a User has a CreditBalance, a CreditHold has its User), so
# schema/ modules name each other lazily (strawberry.lazy, with the import under TYPE_CHECKING or
# inside the resolver). What must hold there is that loading them never goes round in a circle.
PACKAGES_WITHOUT_LOAD_TIME_CYCLES = ("schema",)

MAX_LINES = 420
# Modules over MAX_LINES today, each waiting to be split along its nouns. Empty this list as
# they are split (the test below fails when an entry is no longer needed); do not add to it.
OVERSIZED_TODAY = {}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Every module of the packages, by dotted name (a package is its __init__)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            found[module_name(path, root)] = path
    return found


def load_time_nodes(tree: ast.Module) -> list[ast.AST]:
    """The statements that run when the module loads: module level, less `if TYPE_CHECKING:`."""
    nodes: list[ast.AST] = []
    for statement in tree.body:
        if isinstance(statement, ast.If) and "TYPE_CHECKING" in ast.unparse(statement.test):
            nodes.extend(statement.orelse)
        else:
            nodes.append(statement)
    return nodes


def imported(
    path: Path, name: str, known: Mapping[str, Path], *, at_load: bool = False
) -> set[str]:
    """The dotted names `path` (module `name`) imports, wherever in the file the import is.

    `from package import thing` names the module `package.thing` when there is one (a
    submodule), else `package` itself (a name defined in its __init__).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    if at_load:
        statements = [
            n for n in load_time_nodes(tree) if isinstance(n, ast.Import | ast.ImportFrom)
        ]
    else:
        statements = list(ast.walk(tree))
    for node in statements:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                # Relative: up from this module's package, one level per dot after the first.
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                names.add(candidate if candidate in known else base)
    return names


def import_graph(
    root: Path, packages: Iterable[str], *, at_load: bool = False
) -> dict[str, set[str]]:
    """Module -> the modules of the same packages it imports (`at_load`: as it loads)."""
    known = modules(root, packages)
    return {
        name: {
            other
            for other in imported(path, name, known, at_load=at_load)
            if other in known and other != name
        }
        for name, path in known.items()
    }


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One shortest circle per strongly connected group, as [a, b, …, a]; none when acyclic."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan; the graphs here are a few hundred nodes deep
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_shortest_circle(graph, group) for group in groups]


def _shortest_circle(graph: Mapping[str, set[str]], group: set[str]) -> list[str]:
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for other in sorted(graph.get(node, ()) & group):
                if other == start:
                    return [*paths[node], start]
                if other not in paths:
                    paths[other] = [*paths[node], other]
                    following.append(other)
        frontier = following
    raise AssertionError(f"no circle through {start} in {sorted(group)}")


# --- the rules, on this repository ----------------------------------------------------------


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer: str) -> None:
    known = modules(ROOT, LAYERS)
    offences = [
        f"{name} imports {other}"
        for name, path in modules(ROOT, [layer]).items()
        for other in sorted(imported(path, name, known))
        if other.split(".")[0] in FORBIDDEN[layer]
    ]
    assert offences == [], f"{layer}/ must not import {sorted(FORBIDDEN[layer])}"


@pytest.mark.parametrize("package", PACKAGES_WITHOUT_CYCLES)
def test_no_import_circle(package: str) -> None:
    found = cycles(import_graph(ROOT, [package]))
    assert found == [], "import circles: " + "; ".join(" -> ".join(c) for c in found)


@pytest.mark.parametrize("package", PACKAGES_WITHOUT_LOAD_TIME_CYCLES)
def test_no_import_circle_as_modules_load(package: str) -> None:
    found = cycles(import_graph(ROOT, [package], at_load=True))
    assert found == [], "import circles: " + "; ".join(" -> ".join(c) for c in found)


def test_load_time_imports_leave_out_type_checking_and_function_bodies(tmp_path: Path) -> None:
    _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from typing import TYPE_CHECKING\nimport pkg.b\n"
            "if TYPE_CHECKING:\n    from pkg import c\n",
            "pkg/b.py": "def later():\n    from pkg import a\n",
            "pkg/c.py": "from pkg import a\n",
        },
    )
    assert cycles(import_graph(tmp_path, ["pkg"], at_load=True)) == []
    assert cycles(import_graph(tmp_path, ["pkg"])) != []
    _package(tmp_path, {"pkg/b.py": "from pkg import a\n"})
    assert cycles(import_graph(tmp_path, ["pkg"], at_load=True)) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_no_module_is_too_long_to_read_whole() -> None:
    lengths = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for path in modules(ROOT, LAYERS).values()
    }
    too_long = {p: n for p, n in lengths.items() if n > MAX_LINES and p not in OVERSIZED_TODAY}
    assert too_long == {}, f"over {MAX_LINES} lines: split them by noun"
    split_already = sorted(p for p in OVERSIZED_TODAY if lengths.get(p, 0) <= MAX_LINES)
    assert split_already == [], "no longer over the limit: remove from OVERSIZED_TODAY"


# --- the checker itself, on small made-up packages --------------------------------------------


def _package(root: Path, files: Mapping[str, str]) -> None:
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)


def test_every_kind_of_import_is_seen(tmp_path: Path) -> None:
    _package(
        tmp_path,
        {
            "app/__init__.py": "",
            "app/db.py": "from app.metrics import GAUGE\n",
            "app/metrics.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from app.runtime import Runtime\n"
            ),
            "app/runtime.py": "def build():\n    from . import db\n",
            "app/cli/__init__.py": "from ..runtime import build\n",
            "app/cli/serve.py": "import app.cli\nfrom app import version\n",
        },
    )
    graph = import_graph(tmp_path, ["app"])
    assert graph["app.db"] == {"app.metrics"}
    assert graph["app.metrics"] == {"app.runtime"}  # under TYPE_CHECKING
    assert graph["app.runtime"] == {"app.db"}  # relative, inside a function
    assert graph["app.cli"] == {"app.runtime"}  # two dots from a package's __init__
    assert graph["app.cli.serve"] == {"app.cli", "app"}  # `version` is no module: app itself
    assert cycles(graph) == [["app.db", "app.metrics", "app.runtime", "app.db"]]


def test_circles_are_reported_one_per_group_and_acyclic_graphs_pass() -> None:
    graph = {
        "a": {"b"},
        "b": {"c", "a"},
        "c": {"a"},
        "d": {"d"},
        "e": {"f"},
        "f": set(),
    }
    assert cycles(graph) == [["a", "b", "a"], ["d", "d"]]
    assert cycles({"e": {"f"}, "f": set()}) == []
