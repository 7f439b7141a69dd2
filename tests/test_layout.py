"""The layout contract: imports inside the core and the built-in plugins run one way (no
import circle, counting imports inside functions), the core never imports a plugin nor
the public front end, and no module grows into a god file."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"harness": ROOT / "harness", "harness_plugins": ROOT / "plugins"}
FRONT_END = {"harness", "harness.api", "harness.cli", "harness.__main__"}
MAX_LINES = 450


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the two packages."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that `name` imports when it runs: top-level and inside functions.
    Imports under `if TYPE_CHECKING:` are for annotations only and never execute."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_block(node):
            for child in getattr(node, "orelse", []):
                visit(child)
            return
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {name: imported_modules(name, path, known) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                connect(succ)
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
            connect(node)
    return found


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_circles():
    found = cycles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_core_never_imports_plugins_or_the_front_end():
    graph = import_graph()
    wrong = {
        name: sorted(t for t in targets if t.startswith("harness_plugins") or t in FRONT_END)
        for name, targets in graph.items()
        if name.startswith("harness") and not name.startswith("harness_plugins") and name not in FRONT_END
    }
    assert not {k: v for k, v in wrong.items() if v}


def test_plugins_never_import_the_front_end():
    graph = import_graph()
    wrong = {n: sorted(t & FRONT_END) for n, t in graph.items() if n.startswith("harness_plugins") and t & FRONT_END}
    assert not wrong


@pytest.mark.parametrize("name", sorted(module_files()))
def test_no_god_files(name):
    lines = len(module_files()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module_files()[name].relative_to(ROOT)} has {lines} lines (at most {MAX_LINES}): split it along its seams"
