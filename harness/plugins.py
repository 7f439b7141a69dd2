"""Plugin discovery and the class registry.

Plugins are Python modules that implement hooks from `harness.hookspecs`. They are
found through the entry-point group `harness.plugins` (the built-ins register there
too) and through module names listed under `plugins:` in registry.yaml. A module that
fails to import or to register is recorded as broken (`harness list` shows it) and the
others load normally.

Plugin modules keep heavy imports (torch, timm, moderngl) inside functions, so that
`harness list` and `harness --help` start quickly.
"""

from __future__ import annotations

import importlib
import re
import traceback
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pluggy

from harness import hookspecs
from harness.errors import PluginError, UnknownNameError
from harness.kinds import KINDS, NAME_PATTERN, Plugin

ENTRY_POINT_GROUP = "harness.plugins"
HOOKS = {"generator": "register_generators", "encoder": "register_encoders", "task": "register_tasks"}


@dataclass
class BrokenPlugin:
    source: str
    error: str


@dataclass
class Registered:
    cls: type[Plugin]
    source: str


@dataclass
class PluginRegistry:
    """Every registered plugin class, by kind and name, plus the modules that broke."""

    classes: dict[str, dict[str, Registered]] = field(default_factory=lambda: {k: {} for k in KINDS})
    broken: list[BrokenPlugin] = field(default_factory=list)

    def names(self, kind: str) -> list[str]:
        return sorted(self.classes[kind])

    def get(self, kind: str, name: str) -> type[Plugin]:
        try:
            return self.classes[kind][name].cls
        except KeyError:
            raise UnknownNameError(f"{kind} plugin", name, self.names(kind)) from None

    def source(self, kind: str, name: str) -> str:
        return self.classes[kind][name].source


def _register_from(registry: PluginRegistry, module: object, source: str) -> None:
    """Call a module's hooks with a `register` callback that validates each class."""
    manager = pluggy.PluginManager("harness")
    manager.add_hookspecs(hookspecs)
    manager.register(module, name=source)
    for kind, hook_name in HOOKS.items():
        base = KINDS[kind]

        def register(name: str, cls: type, kind: str = kind, base: type = base) -> None:
            if not isinstance(name, str) or not re.match(NAME_PATTERN, name):
                raise PluginError(
                    f"{source}: invalid {kind} name {name!r}: use letters, digits, '.', '_', '+', '-'"
                )
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise PluginError(
                    f"{source}: {kind} {name!r} must be a subclass of harness.{base.__name__}, got {cls!r}"
                )
            existing = registry.classes[kind].get(name)
            if existing is not None and existing.cls is not cls:
                raise PluginError(
                    f"duplicate {kind} name {name!r}: registered by {existing.source} and by {source}; "
                    "rename one of them"
                )
            cls.plugin_name = name
            registry.classes[kind][name] = Registered(cls, source)

        getattr(manager.hook, hook_name)(register=register)


def load_plugins(extra_modules: list[str] | tuple[str, ...] = ()) -> PluginRegistry:
    """Import every entry-point plugin and every extra module, surviving broken ones."""
    registry = PluginRegistry()
    sources: list[tuple[str, object]] = []
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        sources.append((f"entry point {entry.name!r} ({entry.value})", entry.load))
    for module_name in extra_modules:
        sources.append((f"registry module {module_name!r}", lambda m=module_name: importlib.import_module(m)))
    for source, load in sources:
        try:
            _register_from(registry, load(), source)
        except PluginError:
            raise
        except Exception as exc:  # a broken third-party plugin must not take the others down
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            registry.broken.append(BrokenPlugin(source, detail))
    return registry
