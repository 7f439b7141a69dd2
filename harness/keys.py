"""Names and keys: what a name may look like, the stable hash every key is made of, and
the fingerprint of the code that computes a value.

A key must change whenever what it stands for changes. Parameters and referred instances
are hashed by `Plugin.describe`; the code is hashed here: the modules of a plugin's class
and of every plugin class it inherits from, and every module of the harness, of the
built-in plugins or of the module's own top-level package that they import (at the top
or inside a function, transitively). Editing `sample()` of a generator therefore changes
the keys of the encoders trained on it, and so does editing a built-in generator that a
third party's generator subclasses, while editing the leaderboard changes nothing. Code
reached otherwise (a module loaded by name with importlib, a top-level module beside the
plugin's) is not seen: a plugin keeps its helpers in its own package.

Code that only measures speed is not followed (`measurement_only`): `harness bench`'s
package, and a plugin's modules named `*_bench`. A benchmark's timer can then change
without retraining every encoder whose plugin offers a throughput hook.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

# Plugin and instance names: letters, digits, '.', '_', '+', '-'; no path separators.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"

CORE_PACKAGES = frozenset({"harness", "harness_plugins"})
"""The harness and its built-in plugins: followed from any plugin, a third party's too."""

# The public front end re-exports the core; it computes nothing a key stands for.
FRONT_END = frozenset({"harness", "harness.api", "harness.cli", "harness.__main__"})


def measurement_only(module: str) -> bool:
    """Whether `module` only times code (`harness bench`'s stages and helpers, or a
    plugin's `*_bench` module): it computes no value a key stands for."""
    return module == "harness.bench" or module.startswith("harness.bench.") or module.rpartition(".")[2].endswith("_bench")


def stable_hash(value: Any, length: int = 16) -> str:
    """A short hash of a JSON-serialisable value, identical across runs and machines."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _source_file(module: str) -> Path | None:
    loaded = sys.modules.get(module)
    origin = getattr(loaded, "__file__", None)
    if origin is None:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            return None
        origin = spec.origin if spec is not None else None
    if not origin or not origin.endswith(".py"):
        return None
    return Path(origin)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(module: str, path: Path) -> set[str]:
    """Names of the modules `module` imports anywhere in its source (relative imports
    resolved), with `from a import b` counted as both `a` and `a.b`. Imports under
    `if TYPE_CHECKING:` never execute and are left out."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    package = module if _is_package(path) else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def module_imports(module: str) -> set[str]:
    """The modules of the harness, of the built-in plugins and of `module`'s own top-level
    package that `module` imports when it runs (the front end and `measurement_only`
    modules excluded)."""
    path = _source_file(module)
    if path is None:
        return set()
    roots = CORE_PACKAGES | {module.partition(".")[0]}
    out = set()
    for name in _imports(module, path):
        if name.partition(".")[0] not in roots or name in FRONT_END or name == module or measurement_only(name):
            continue
        if _source_file(name) is not None:
            out.add(name)
    return out


def code_closure(*modules: str) -> list[str]:
    """`modules` and every module they import, transitively, within the harness, the
    built-in plugins and each module's own package, sorted: what `code_fingerprint` hashes."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(module_imports(name) - seen)
    return sorted(seen)


@lru_cache(maxsize=None)
def code_fingerprint(*modules: str) -> str:
    """A hash of the source of every module in `code_closure(*modules)`; computed once per
    process (a run never sees its own code change)."""
    digest = hashlib.sha256()
    for name in code_closure(*modules):
        path = _source_file(name)
        if path is not None:
            digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]
