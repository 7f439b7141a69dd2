"""The hook specifications a plugin module implements.

Each hook receives `register(name, cls)`; the host validates the class and refuses
duplicate names, so plugins never touch the registry directly.
"""

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("harness")
hookimpl = pluggy.HookimplMarker("harness")

Register = Callable[[str, type], None]


@hookspec
def register_generators(register: Register) -> None:
    """Register procedural image generators: `register("name", GeneratorSubclass)`."""


@hookspec
def register_encoders(register: Register) -> None:
    """Register encoders: `register("name", EncoderSubclass)`."""


@hookspec
def register_tasks(register: Register) -> None:
    """Register benchmark tasks: `register("name", TaskSubclass)`."""
