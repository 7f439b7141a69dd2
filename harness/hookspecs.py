"""The hook specifications a plugin module implements.

Each hook receives `register(name, obj)`: a plugin class for the three plugin kinds, a
reader function for dataset formats. The host validates what it is given and refuses
duplicate names, so plugins never touch the registry directly.
"""

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("harness")
hookimpl = pluggy.HookimplMarker("harness")

Register = Callable[[str, type], None]
RegisterFormat = Callable[..., None]  # register(name, reader, files=None)


@hookspec
def register_generators(register: Register) -> None:
    """Register procedural image generators: `register("name", GeneratorSubclass)`."""


@hookspec
def register_encoders(register: Register) -> None:
    """Register encoders: `register("name", EncoderSubclass)`."""


@hookspec
def register_tasks(register: Register) -> None:
    """Register benchmark tasks: `register("name", TaskSubclass)`."""


@hookspec
def register_dataset_formats(register: RegisterFormat) -> None:
    """Register dataset formats: `register("name", reader)`, where `reader(name, spec)`
    reads the dataset that registry.yaml names `name` (its `DatasetSpec` holds root and
    options) and returns the dataset object, e.g. `harness.datasets.ClassificationData`.
    A format whose root is not simply a folder or a file (a shard pattern, say) also
    passes `files=`: `files(name, spec)` lists the files it reads, so that the keys
    see their contents."""
