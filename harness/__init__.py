"""A benchmark harness for encoders trained on procedural data with a visual memory.

Public API (faiss-like and small)::

    import harness
    mem = harness.VisualMemory(dim)
    gen = harness.get_generator("dead-leaves")
    enc = harness.get_encoder("random-init"); enc.prepare()
    task = harness.get_task("knn")
    results = harness.run(profile="default")
    results = harness.evaluate(torch_module, tasks=["knn-default"], preprocess=fn)

Names resolve lazily so that importing the package (and `harness --help`) stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from harness.version import __version__

_EXPORTS = {
    "VisualMemory": "harness.memory",
    "get_generator": "harness.api",
    "get_encoder": "harness.api",
    "get_task": "harness.api",
    "run": "harness.api",
    "evaluate": "harness.api",
    "as_encoder": "harness.api",
    "ModuleEncoder": "harness.adhoc",
    "list_plugins": "harness.api",
    "Result": "harness.results.store",
    "Generator": "harness.kinds",
    "Encoder": "harness.kinds",
    "Task": "harness.kinds",
    "hookimpl": "harness.hookspecs",
    "metrics": "harness.metrics",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    module = import_module(_EXPORTS[name])
    return module if name == "metrics" else getattr(module, name)
