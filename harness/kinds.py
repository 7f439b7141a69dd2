"""The three plugin kinds: Generator, Encoder and Task.

Each kind has exactly one abstract method; everything else is a class attribute
(capabilities, version, group) or has a default built on that method, so a plugin
author implements one function and declares what it can do.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from pathlib import Path

    import pandas
    import torch

    from harness.context import CellContext, RunContext
    from harness.results import Result


# Plugin and instance names: letters, digits, '.', '_', '+', '-'; no path separators.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"


def stable_hash(value: Any, length: int = 16) -> str:
    """A short hash of a JSON-serialisable value, identical across runs and machines."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


class Plugin(ABC):
    """What the three kinds share: a registry name, parameters and a version.

    `version` is bumped by the plugin author whenever a change alters outputs; it is
    part of every cache key and result record, like lm-eval's task versions.
    """

    kind: ClassVar[str] = ""
    version: ClassVar[int] = 1
    plugin_name: ClassVar[str] = ""  # set by the registry when the class is registered

    def __init__(self, name: str | None = None, **params: Any) -> None:
        self.name = name or self.plugin_name
        self.params = params

    def describe(self) -> dict[str, Any]:
        """Everything that determines this object's outputs (hashed into cache keys)."""
        return {
            "plugin": self.plugin_name,
            "version": self.version,
            "params": self.params,
        }

    @property
    def key(self) -> str:
        return stable_hash(self.describe())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, params={self.params!r})"


class Generator(Plugin):
    """A procedural image process.

    `sample(seed, n, size)` returns uint8 [n, 3, size, size]; image i depends only on
    (parameters, seed, i), so any slice of a stream can be produced independently.
    """

    kind: ClassVar[str] = "generator"

    @abstractmethod
    def sample(self, seed: int, n: int, size: int, start: int = 0) -> torch.Tensor:
        """Images start..start+n-1 of the stream `seed`, uint8 [n, 3, size, size]."""

    def reference_rate(self, seed: int, n: int, size: int) -> tuple[str, float] | None:
        """(what it does, images/s) of making these images the way the released research
        code does, when that is more than decoding pre-rendered JPEGs of the output;
        `harness bench generators` reports our rate against it. Default: None (the bench
        then times JPEG decoding)."""
        return None

    def close(self) -> None:
        """Release GL contexts or other resources (default: nothing to release)."""


class Encoder(Plugin):
    """Maps uint8 images [n, 3, H, W] of any size to features.

    Each encoder owns its resizing and normalisation. `group` is the training-data type
    the leaderboard groups rows by: target, realistic, procedural or white-box.
    """

    kind: ClassVar[str] = "encoder"
    group: ClassVar[str] = "white-box"
    supports_patches: ClassVar[bool] = False
    trainable: ClassVar[bool] = False

    def prepare(self, ctx: RunContext | None = None) -> None:
        """Train or load weights (cached). Default: nothing to prepare."""

    def training_summary(self) -> dict[str, Any] | None:
        """After `prepare`, how the weights were trained, for the leaderboard: keys
        `steps`, `images_seen`, `wall_time_s`, `images_per_s`, `device` and `loss` (one
        value per step). Default: None (nothing was trained)."""
        return None

    @abstractmethod
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Global features [n, d] (float32, on the CPU)."""

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features [n, h, w, d]; only encoders with `supports_patches`."""
        raise TypeError(f"encoder {self.name!r} has no patch features (supports_patches=False)")


class Task(Plugin):
    """A benchmark. `run(encoder, ctx)` evaluates one encoder on `ctx.dataset`.

    `datasets` lists the dataset names the task runs on (from its `datasets` parameter,
    else `default_datasets`); tasks that build their own data use a single pseudo-dataset.
    `needs_patches` tasks are skipped for encoders without patch features.
    """

    kind: ClassVar[str] = "task"
    default_datasets: ClassVar[tuple[str, ...]] = ()
    needs_patches: ClassVar[bool] = False
    title: ClassVar[str] = ""

    @property
    def datasets(self) -> list[str]:
        return list(self.params.get("datasets", self.default_datasets))

    @abstractmethod
    def run(self, encoder: Encoder, ctx: CellContext) -> list[Result]:
        """Evaluate `encoder` on `ctx.dataset`; build records with `ctx.result(...)`."""

    @classmethod
    def paper_numbers(cls) -> pandas.DataFrame | None:
        """The paper's reported numbers for this task (columns: dataset, paper_row,
        metric, value), shown beside ours in the leaderboard. Default: none."""
        return None

    @classmethod
    def figures(cls, results: pandas.DataFrame, out_dir: Path) -> list[Path]:
        """Figures drawn from this task's result rows. Default: none."""
        return []


KINDS: dict[str, type[Plugin]] = {"generator": Generator, "encoder": Encoder, "task": Task}
