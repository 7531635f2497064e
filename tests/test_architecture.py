"""The shape of edge_agent/, read from its source with `ast` (nothing is imported): no import
cycles between its modules, and no module reaching into another's private names.

KNOWN_* list the violations still there while the agent's part is restructured. What is
found must equal them exactly: a new violation fails, and so does a fixed one left listed,
so the lists only shrink."""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edge_agent"

KNOWN_CYCLES: list[str] = []

KNOWN_PRIVATE: list[str] = []

# Other packages' private names we use on purpose, not ours to fix.
THIRD_PARTY = {
    "_get_ops_details": "LiteRT and tflite-runtime list a graph's ops only this way",
    "_Environ": "the type of os.environ, for a type hint",
    "_make": "a NamedTuple's documented constructor from an iterable",
    "_out_message_mutex": "paho's outbound lock, held around a page of publishes so their "
    "PUBACKs are handled together (link/mqtt.py: holding_acks)",
}


@cache
def modules(package: Path = PACKAGE) -> dict[str, tuple[Path, ast.Module]]:
    """Every module of `package` by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = (path, ast.parse(path.read_text(), str(path)))
    return found


def imports(name: str, path: Path, tree: ast.Module, known: set[str]) -> set[str]:
    """The `known` modules `name` imports anywhere in it: at the top, in functions, under
    `if TYPE_CHECKING:`. `from a import b` is an edge to a.b where that is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            targets += [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
    found = set()
    for target in targets:
        while target and target not in known:  # `import a.b.c` of a name in a.b
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    found = modules(package)
    return {name: imports(name, path, tree, set(found)) for name, (path, tree) in found.items()}


def components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected sets of more than one module (Tarjan): each holds a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            members = stack[stack.index(node) :]
            del stack[stack.index(node) :]
            if len(members) > 1:
                found.append(sorted(members))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every elementary cycle as a chain `a -> b -> a`, from its first module in sorted
    order, so each is named once and the same way every time."""
    chains: list[str] = []
    for members in components(graph):
        for start in members:
            allowed = {m for m in members if m >= start}
            path = [start]

            def walk(node: str, allowed: set[str] = allowed, path: list[str] = path) -> None:
                for target in sorted(graph[node] & allowed):
                    if target == path[0]:
                        chains.append(" -> ".join([*path, target]))
                    elif target not in path:
                        path.append(target)
                        walk(target)
                        path.pop()

            walk(start)
    return chains


def own_names(tree: ast.Module) -> set[str]:
    """What a module defines: functions and classes, class attributes, and attributes it
    sets on self or cls."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            for statement in node.body:
                if isinstance(statement, ast.Assign):
                    names |= {t.id for t in statement.targets if isinstance(t, ast.Name)}
                elif isinstance(statement, ast.AnnAssign) and isinstance(
                    statement.target, ast.Name
                ):
                    names.add(statement.target.id)
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and is_own(node.value)
        ):
            names.add(node.attr)
    return names


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def is_own(value: ast.expr) -> bool:
    """self, cls or super(): an object reaching its own attributes."""
    if isinstance(value, ast.Name):
        return value.id in ("self", "cls")
    return (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Name)
        and value.func.id == "super"
    )


def private_uses(package: Path = PACKAGE) -> Iterator[tuple[str, int]]:
    """(`file: expression`, line) for each `x._name` where x is not self, cls or super()
    and this module does not define _name itself."""
    for path, tree in modules(package).values():
        mine = own_names(tree)
        relative = path.relative_to(package.parent)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and is_private(node.attr)
                and node.attr not in mine
                and node.attr not in THIRD_PARTY
                and not is_own(node.value)
            ):
                yield f"{relative}: {ast.unparse(node)}", node.lineno


def differences(found: list[str], known: list[str]) -> tuple[list[str], list[str]]:
    """(new, fixed): counted, so a second use of a listed violation is new too."""
    have, listed = Counter(found), Counter(known)
    return sorted((have - listed).elements()), sorted((listed - have).elements())


def test_no_import_cycles() -> None:
    new, fixed = differences(cycles(import_graph()), KNOWN_CYCLES)
    assert not new, "import cycles:\n" + "\n".join(new)
    assert not fixed, "fixed, take them off KNOWN_CYCLES:\n" + "\n".join(fixed)


def test_no_private_names_used_across_modules() -> None:
    uses = list(private_uses())
    new, fixed = differences([use for use, _ in uses], KNOWN_PRIVATE)
    assert not new, "private names of other modules:\n" + "\n".join(
        use.replace(":", f":{line}:", 1) for use, line in uses if use in new
    )
    assert not fixed, "fixed, take them off KNOWN_PRIVATE:\n" + "\n".join(fixed)


def test_the_checks_find_a_hidden_cycle_and_a_reach_into_another_module(tmp_path: Path) -> None:
    """Cycles through TYPE_CHECKING and function-local imports count; a name the module
    defines itself, or reached through self, does not."""
    package = tmp_path / "pkg"
    package.mkdir()
    files = {
        "__init__.py": "",
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n",
        "b.py": "def make():\n    from pkg import c\n    return c.C()._hidden\n",
        "c.py": "import pkg.a\n\nclass C:\n    _mine = 1\n\n    def f(self, o):\n"
        "        return self._x, o._mine, super()._y\n",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    assert cycles(import_graph(package)) == ["pkg.a -> pkg.b -> pkg.c -> pkg.a"]
    assert list(private_uses(package)) == [("pkg/b.py: c.C()._hidden", 3)]
