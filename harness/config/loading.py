"""Plugin discovery, the class registry and the dataset-format table.

Plugins are Python modules that implement hooks from `harness.hookspecs`. They are
found through the entry-point group `harness.plugins` (the built-ins register there
too) and through module names listed under `plugins:` in registry.yaml. The core's
own dataset formats (`harness.datasets.formats`) go through the same hook call, first.
A module that fails to import or to register, and a class that fails its
`check_definition`, are recorded as broken (`harness list` shows them) and the others
load normally. A name registered twice is an error naming both sources.

Plugin modules keep heavy imports (torch, timm, moderngl) inside functions, so that
`harness list` and `harness --help` start quickly.
"""

from __future__ import annotations

import importlib
import os
import re
import traceback
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

import pluggy

import harness.hookspecs as hookspecs
from harness.datasets import formats as core_formats
from harness.datasets.spec import Reader
from harness.errors import DatasetUnavailable, PluginError, UnknownNameError
from harness.keys import NAME_PATTERN
from harness.kinds import KINDS, Plugin

ENTRY_POINT_GROUP = "harness.plugins"
HOOKS = {"generator": "register_generators", "encoder": "register_encoders", "task": "register_tasks"}
CORE_FORMATS_SOURCE = f"core module {core_formats.__name__!r}"


@dataclass
class BrokenPlugin:
    source: str
    error: str


@dataclass
class Registered:
    cls: type[Plugin]
    source: str


@dataclass
class RegisteredFormat:
    reader: Reader
    source: str
    files: Callable[[str, Any], list[Path]] | None = None  # the files a dataset reads, when its root does not say

    def locate(self, name: str, spec: Any) -> Path:
        """Where dataset `name` lies: its root, or for a root that is a pattern (a
        webdataset's `{split}` shards) the folder holding its files. DatasetUnavailable
        when the files `files` lists are missing (a MedMNIST root without the file of
        its size) or the root is."""
        listed = self.files(name, spec) if self.files is not None else []
        try:
            return spec.resolved_root(name)
        except DatasetUnavailable:
            if not listed:
                raise
            return Path(os.path.commonpath([str(path.parent) for path in listed]))


@dataclass
class PluginRegistry:
    """Every registered plugin class, by kind and name, every dataset format by name,
    plus the modules and classes that broke."""

    classes: dict[str, dict[str, Registered]] = field(default_factory=lambda: {k: {} for k in KINDS})
    formats: dict[str, RegisteredFormat] = field(default_factory=dict)
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

    def readers(self) -> dict[str, Reader]:
        """Format name -> reader: the table `harness.datasets.open_dataset` reads from."""
        return {name: self.formats[name].reader for name in sorted(self.formats)}


def _check_name(name: object, what: str, source: str) -> None:
    if not isinstance(name, str) or not re.match(NAME_PATTERN, name):
        raise PluginError(f"{source}: invalid {what} name {name!r}: use letters, digits, '.', '_', '+', '-'")


def _duplicate(what: str, name: str, first: str, second: str) -> PluginError:
    return PluginError(f"duplicate {what} name {name!r}: registered by {first} and by {second}; rename one of them")


def _class_register(registry: PluginRegistry, kind: str, source: str) -> hookspecs.Register:
    """The `register(name, cls)` callback a module gets for one plugin kind."""
    base = KINDS[kind]

    def register(name: str, cls: type) -> None:
        _check_name(name, kind, source)
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"{source}: {kind} {name!r} must be a subclass of harness.{base.__name__}, got {cls!r}")
        problem = cls.check_definition()
        if problem is None and not issubclass(cls.Params, base.Params):
            problem = f"its `Params` must subclass harness.{base.__name__}.Params"
        if problem:  # this class is left out, like a module that fails to import
            registry.broken.append(BrokenPlugin(f"{source}: {kind} {name!r}", problem))
            return
        existing = registry.classes[kind].get(name)
        if existing is not None and existing.cls is not cls:
            raise _duplicate(kind, name, existing.source, source)
        cls.plugin_name = name
        registry.classes[kind][name] = Registered(cls, source)

    return register


def _format_register(registry: PluginRegistry, source: str) -> hookspecs.RegisterFormat:
    """The `register(name, reader)` callback a module gets for dataset formats."""

    def register(name: str, reader: Reader, files: Callable[[str, Any], list[Path]] | None = None) -> None:
        _check_name(name, "dataset format", source)
        if not callable(reader):
            raise PluginError(f"{source}: dataset format {name!r} must be a reader function (name, spec), got {reader!r}")
        existing = registry.formats.get(name)
        if existing is not None and existing.reader is not reader:
            raise _duplicate("dataset format", name, existing.source, source)
        registry.formats[name] = RegisteredFormat(reader, source, files)

    return register


def _register_from(registry: PluginRegistry, module: object, source: str) -> None:
    """Call a module's hooks with `register` callbacks that validate what they get."""
    manager = pluggy.PluginManager("harness")
    manager.add_hookspecs(hookspecs)
    manager.register(module, name=source)
    for kind, hook_name in HOOKS.items():
        getattr(manager.hook, hook_name)(register=_class_register(registry, kind, source))
    manager.hook.register_dataset_formats(register=_format_register(registry, source))


def load_plugins(extra_modules: list[str] | tuple[str, ...] = ()) -> PluginRegistry:
    """Import every entry-point plugin and every extra module, surviving broken ones."""
    registry = PluginRegistry()
    sources: list[tuple[str, object]] = [(CORE_FORMATS_SOURCE, lambda: core_formats)]
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
