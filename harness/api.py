"""The public functions re-exported by `harness`."""

from __future__ import annotations

import os
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from harness.kinds import Encoder, Generator, Task
from harness.config.registry import active_registry
from harness.results.store import Result


def get_generator(name: str, **params: Any) -> Generator:
    """A generator by registry instance name (or plugin name), params overriding the registry's."""
    return active_registry().create("generator", name, **params)  # type: ignore[return-value]


def get_encoder(name: str, **params: Any) -> Encoder:
    """An encoder; call `.prepare()` before embedding."""
    return active_registry().create("encoder", name, **params)  # type: ignore[return-value]


def get_task(name: str, **params: Any) -> Task:
    return active_registry().create("task", name, **params)  # type: ignore[return-value]


def list_plugins(kind: str, pattern: str = "*") -> list[str]:
    """Registry instances and plugin names of one kind matching a shell-style pattern."""
    registry = active_registry()
    names = set(registry.instance_names(kind)) | set(registry.plugins.names(kind))
    return sorted(n for n in names if fnmatch(n, pattern))


def run(
    profile: str | None = None,
    encoders: list[str] | None = None,
    tasks: list[str] | None = None,
    out: str | os.PathLike = "leaderboard",
    registry: str | os.PathLike | None = None,
    force: bool = False,
    device: str | None = None,
) -> list[Result]:
    """Run the cross product of encoders x tasks and render the leaderboard."""
    from harness.config.registry import use_registry
    from harness.runner.cells import Runner

    reg = use_registry(registry) if registry is not None else active_registry()
    runner = Runner(reg, out_dir=Path(out), device=device, force=force)
    return runner.run(runner.select(profile, encoders, tasks))
