"""The package's imports as a graph, read from the source with the ast module (nothing is imported), so
tests/test_imports.py can forbid import circles and imports that run up the layers. Run as a script it prints
the graph's size, its circles and upward imports, and how much of the package is annotated ``Any``.

Module-level and function-local imports both count (both run, one sooner, one later); imports under
``if TYPE_CHECKING:`` do not (they never run), except where asked for: the script also says which circles and
upward imports annotations alone would make.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# where each package's source lives: pyproject.toml's [tool.setuptools.package-dir]
SOURCES = {"ltcompress": "ltcompress", "ltcompress.edge": "export", "ltcompress.presets": "presets"}


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


def modules(root: Path = ROOT) -> dict[str, Module]:
    """Every module of the package by its dotted name, export/ and presets/ under the names they install as."""
    found: dict[str, Module] = {}
    for package, folder in SOURCES.items():
        base = root / folder
        for path in sorted(base.rglob("*.py")):
            parts = [package, *path.relative_to(base).with_suffix("").parts]
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = Module(name, path, ast.parse(path.read_text(), str(path)))
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(nodes: Iterable[ast.AST], typing: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in or under `nodes`; in the body of ``if TYPE_CHECKING:`` only if `typing`."""
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test) and not typing:
            yield from _import_nodes(node.orelse, typing)
        else:
            yield from _import_nodes(ast.iter_child_nodes(node), typing)


def _targets(module: Module, node: ast.Import | ast.ImportFrom, known: Sequence[str]) -> Iterator[str]:
    """The package modules one import statement names: ``from a import b`` means a.b when that is a module."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names if alias.name in known)
        return
    base = node.module or ""
    if node.level:  # relative: resolved against the importing module's package
        package = module.name if module.is_package else module.name.rpartition(".")[0]
        anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        base = f"{anchor}.{base}" if base else anchor
    for alias in node.names:
        child = f"{base}.{alias.name}"
        if child in known:
            yield child
        elif base in known:
            yield base


def edges(mods: dict[str, Module], typing: bool = False) -> set[tuple[str, str]]:
    """(importer, imported) for every import between two package modules (a module importing itself aside);
    `typing`: imports under ``if TYPE_CHECKING:`` too."""
    out: set[tuple[str, str]] = set()
    for module in mods.values():
        for node in _import_nodes([module.tree], typing):
            out.update((module.name, t) for t in _targets(module, node, list(mods)) if t != module.name)
    return out


def cycles(graph: set[tuple[str, str]]) -> list[list[str]]:
    """One shortest circle through each import that lies on a circle, deduplicated; each starts at its smallest
    module name and ends where it started."""
    succ: dict[str, list[str]] = {}
    for src, dst in sorted(graph):
        succ.setdefault(src, []).append(dst)
    found: set[tuple[str, ...]] = set()
    for src, dst in sorted(graph):
        path = _shortest_path(succ, dst, src)
        if path is not None:
            ring = [src, *path[:-1]]
            start = ring.index(min(ring))
            found.add(tuple(ring[start:] + ring[:start]))
    return [[*ring, ring[0]] for ring in sorted(found, key=lambda r: (len(r), r))]


def _shortest_path(succ: dict[str, list[str]], start: str, goal: str) -> list[str] | None:
    """Breadth-first: the modules from `start` to `goal` along imports, both included; None when unreachable."""
    previous: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            if node == goal:
                path = [node]
                while (before := previous[path[-1]]) is not None:
                    path.append(before)
                return path[::-1]
            for nxt in succ.get(node, []):
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    return None


def layer_of(name: str, layers: Sequence[Sequence[str]]) -> int | None:
    """The index of the layer naming `name` (a name ending in ``.*`` takes the package's modules, the package
    itself included); None when no layer names it."""
    for index, group in enumerate(layers):
        for entry in group:
            if name == entry or (entry.endswith(".*") and (name + ".").startswith(entry[:-1])):
                return index
    return None


def upward(graph: set[tuple[str, str]], layers: Sequence[Sequence[str]]) -> list[tuple[str, str]]:
    """The imports from a module to one of a higher layer (modules no layer names aside)."""
    out = []
    for src, dst in sorted(graph):
        low, high = layer_of(src, layers), layer_of(dst, layers)
        if low is not None and high is not None and high > low:
            out.append((src, dst))
    return out


def _annotations(tree: ast.Module) -> Iterator[ast.expr]:
    """The annotations of arguments, returns and variables (dataclass fields are annotated variables)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
            yield from (a.annotation for a in every if a is not None and a.annotation is not None)
            if node.returns is not None:
                yield node.returns
        elif isinstance(node, ast.AnnAssign):
            yield node.annotation


def _parsed(annotation: ast.expr) -> ast.expr:
    """A quoted annotation as the expression it spells."""
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        try:
            return ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return annotation
    return annotation


def _is_any(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id == "Any") or (isinstance(node, ast.Attribute) and node.attr == "Any")


def _is_dict_str_any(node: ast.AST) -> bool:
    if not (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in ("dict", "Dict")):
        return False
    key, value = node.slice.elts if isinstance(node.slice, ast.Tuple) and len(node.slice.elts) == 2 else (None, None)
    return isinstance(key, ast.Name) and key.id == "str" and value is not None and _is_any(value)


def any_counts(mods: dict[str, Module]) -> tuple[int, int]:
    """(occurrences of ``Any``, occurrences of ``dict[str, Any]``) in the package's annotations."""
    anys = dict_str_any = 0
    for module in mods.values():
        for annotation in _annotations(module.tree):
            for node in ast.walk(_parsed(annotation)):
                anys += _is_any(node)
                dict_str_any += _is_dict_str_any(node)
    return anys, dict_str_any


def _print_findings(graph: set[tuple[str, str]], layers: Sequence[Sequence[str]], title: str) -> int:
    """The circles and upward imports of `graph`, listed; how many there are."""
    rings, up = cycles(graph), upward(graph, layers)
    print(f"{title}: {len(graph)} import edges, {len(rings)} cycles, {len(up)} upward imports")
    for ring in rings:
        print("  cycle: " + " -> ".join(ring))
    for src, dst in up:
        print(f"  upward: {src} (layer {layer_of(src, layers)}) -> {dst} (layer {layer_of(dst, layers)})")
    return len(rings) + len(up)


def main() -> int:
    """Print the numbers for a report; exit 1 when a module has no layer or imports close a circle or run up."""
    from test_imports import LAYERS  # the layers are the test's

    mods = modules()
    unplaced = sorted(name for name in mods if layer_of(name, LAYERS) is None)
    anys, dict_str_any = any_counts(mods)
    print(f"modules: {len(mods)}")
    if unplaced:
        print(f"modules in no layer: {', '.join(unplaced)}")
    wrong = _print_findings(edges(mods), LAYERS, "imports that run")
    _print_findings(edges(mods, typing=True), LAYERS, "with the imports under TYPE_CHECKING too")
    print(f"Any in annotations: {anys}")
    print(f"dict[str, Any] in annotations: {dict_str_any}")
    return 1 if unplaced or wrong else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
