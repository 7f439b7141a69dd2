"""The three plugin kinds: Generator, Encoder and Task, and their typed parameters.

Each kind has exactly one abstract method; everything else is a class attribute
(capabilities, version, group, `Params`) or has a default built on that method, so a
plugin author implements one function and declares what it can do.

Parameters are a pydantic model, the class attribute `Params`, validated when an
instance is made (from registry.yaml, the command line or the Python API): an unknown
or ill-typed parameter is a `ParamsError` naming the field and the closest valid name.
A parameter that names another instance is typed `GeneratorRef` (or `EncoderRef`,
`TaskRef`); the registry resolves it when it makes the instance, and the instance's key
includes the referred instance's whole description, recursively.
"""

from __future__ import annotations

import difflib
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Iterator, Sequence

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from pydantic_core import core_schema

from harness.errors import HarnessError
from harness.keys import NAME_PATTERN, code_fingerprint, stable_hash

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    import pandas
    import torch

    from harness.device import Precision
    from harness.results.store import Result
    from harness.runner.context import CellContext, RunContext


class Params(BaseModel):
    """Base of every plugin's `Params`: unknown fields are refused, values are checked."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class Reference(str):
    """The name of another registry instance of kind `kind`, as a parameter value."""

    kind: ClassVar[str] = ""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(cls, core_schema.str_schema(pattern=NAME_PATTERN))


class GeneratorRef(Reference):
    kind = "generator"


class EncoderRef(Reference):
    kind = "encoder"


class TaskRef(Reference):
    kind = "task"


class ParamsError(HarnessError, TypeError):
    """Parameters that do not validate; `problems` holds (field path, message) pairs."""

    def __init__(self, owner: str, problems: list[tuple[str, str]]) -> None:
        self.owner = owner
        self.problems = problems
        super().__init__("; ".join(f"{owner}.{path}: {message}" for path, message in problems))

    def located(self, where: str) -> ParamsError:
        """The same problems, with `where` (a file and field prefix) before each path."""
        return ParamsError(where, self.problems)


def validate_params(cls: type[Plugin], owner: str, raw: dict[str, Any]) -> Params:
    """`raw` validated by `cls.Params`; errors name each field and the closest valid name."""
    try:
        return cls.Params.model_validate(raw)
    except ValidationError as exc:
        known = sorted(cls.Params.model_fields)
        problems = []
        for error in exc.errors():
            path = ".".join(str(part) for part in error["loc"]) or "(parameters)"
            if error["type"] == "extra_forbidden":
                close = difflib.get_close_matches(str(error["loc"][0]), known, n=1, cutoff=0.5)
                hint = f"did you mean {close[0]!r}? " if close else ""
                message = f"unknown parameter; {hint}valid: {', '.join(known) or 'none'}"
            elif error["type"] == "string_pattern_mismatch":
                message = f"must be a name of letters, digits, '.', '_', '+', '-' (got {error['input']!r:.60})"
            else:
                message = error["msg"] + (f" (got {error['input']!r:.60})" if "input" in error else "")
            problems.append((path, message))
        raise ParamsError(f"{owner}.params", problems) from None


def references(value: Any, path: str = "") -> Iterator[tuple[str, Reference]]:
    """(field path, reference) for every `Reference` inside a validated parameter value
    (models, lists, dicts)."""
    if isinstance(value, Reference):
        yield path, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from references(getattr(value, name), f"{path}.{name}" if path else name)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from references(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from references(item, f"{path}.{key}" if path else str(key))


class Plugin(ABC):
    """What the three kinds share: a registry name, typed parameters and a version.

    Subclasses declare `class Params(Plugin.Params)` (or the kind's own `Params`) and
    read `self.params.<field>`; they never take parameters as constructor arguments.
    `version` is bumped by the plugin author when a change alters outputs for reasons
    the code fingerprint cannot see (an external file format, a data file read at run
    time); every key also holds the fingerprint of the plugin's code.
    """

    kind: ClassVar[str] = ""
    version: ClassVar[int] = 1
    plugin_name: ClassVar[str] = ""  # set by the registry when the class is registered
    Params: ClassVar[type[Params]] = Params

    def __init__(self, name: str | None = None, /, **params: Any) -> None:
        self.name = name or self.plugin_name or type(self).__name__
        self.params = validate_params(type(self), self.name, params)
        self.resolved: dict[tuple[str, str], Plugin] = {}  # filled by the registry

    def __getstate__(self) -> dict[str, Any]:
        """The instance as pickled for another process (a spawned data-loader worker). The
        registered plugin name travels with it: there the class is imported, not
        registered, and outputs derived from the name (seeds) must not change."""
        return {**self.__dict__, "plugin_name": self.plugin_name}

    def resolve(self, reference: Reference) -> Plugin:
        """The instance a reference parameter names (made by the registry with this one)."""
        try:
            return self.resolved[(reference.kind, str(reference))]
        except KeyError:
            raise HarnessError(
                f"{self.kind} {self.name!r}: its parameter names the {reference.kind} {str(reference)!r}, which only "
                f"resolves when {self.name!r} is made through the registry (harness.get_{self.kind}(...))"
            ) from None

    def describe(self) -> dict[str, Any]:
        """Everything that determines this object's outputs (hashed into its key): the
        plugin, its version and code, its parameters with every reference replaced by
        the referred instance's own description. The code is that of the plugin's
        class and of every plugin class it inherits from (a third party's subclass of a
        built-in generator sees the built-in's code)."""
        return {
            "plugin": self.plugin_name,
            "version": self.version,
            "code": code_fingerprint(*sorted({cls.__module__ for cls in type(self).__mro__ if issubclass(cls, Plugin)})),
            "params": self._describe_value(self.params),
        }

    def inventory(self) -> str | None:
        """What `harness list NAME` shows about this instance besides its parameters (for
        example the programs a generator draws from, and those it left out and why);
        None when there is nothing more to show."""
        return None

    def variants(self) -> dict[str, dict[str, Any]]:
        """The instances this one stands for, as {name suffix: parameter overrides}; empty
        (the default) when it stands for itself. A sweep (e.g. every layer of a model) is
        run as one instance per variant, named `<name>.<suffix>`, each with its own cells
        and leaderboard rows; the runner derives them from instances given by name."""
        return {}

    def _describe_value(self, value: Any) -> Any:
        if isinstance(value, Reference):
            return {"instance": str(value), "kind": value.kind, **self.resolve(value).describe()}
        if isinstance(value, BaseModel):
            dumped = value.model_dump(mode="json")
            return {k: self._describe_value(getattr(value, k)) for k in type(value).model_fields if k in dumped}
        if isinstance(value, (list, tuple)):
            return [self._describe_value(item) for item in value]
        if isinstance(value, dict):
            return {str(k): self._describe_value(v) for k, v in value.items()}
        if isinstance(value, (str, int, float, bool)) or value is None:
            return value
        return str(value)

    @property
    def key(self) -> str:
        return stable_hash(self.describe())

    @classmethod
    def check_definition(cls) -> str | None:
        """Why this class cannot be registered, or None. Parameters belong in `Params`:
        an `__init__` that names them would clash with the core's keyword call."""
        if not (isinstance(cls.Params, type) and issubclass(cls.Params, Params)):
            return "its `Params` must subclass harness.kinds.Params (pydantic, unknown fields refused)"
        if inspect.isabstract(cls):
            return f"it does not implement {', '.join(sorted(cls.__abstractmethods__))}"
        init = cls.__dict__.get("__init__")
        if init is not None:
            named = [
                p.name for p in list(inspect.signature(init).parameters.values())[1:]
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "name"
            ]
            if named:
                return (
                    f"its __init__ takes {', '.join(named)}: declare parameters as fields of a "
                    "`class Params(harness.kinds.Params)` and read them as self.params.<field>"
                )
        return None

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

    def sample_at(self, seed: int, indices: Sequence[int], size: int) -> torch.Tensor:
        """Images `indices` of the stream `seed` (any order, repeats allowed), uint8
        [len(indices), 3, size, size]: for each index, the image `sample` makes for it.
        A shuffled training epoch asks for scattered indices. The default calls `sample`
        once per run of consecutive indices; a generator that can make any indices in
        one batch overrides it."""
        import torch

        indices = [int(i) for i in indices]
        if indices and min(indices) < 0:
            raise ValueError(f"`indices` must be >= 0, got {min(indices)}")
        chunks, i = [], 0
        while i < len(indices):
            j = i + 1
            while j < len(indices) and indices[j] == indices[j - 1] + 1:
                j += 1
            chunks.append(self.sample(seed, j - i, size, start=indices[i]))
            i = j
        if not chunks:
            return torch.zeros((0, 3, size, size), dtype=torch.uint8)
        return torch.cat(chunks) if len(chunks) > 1 else chunks[0]

    def checked(self, images: Any, n: int, size: int) -> torch.Tensor:
        """`images` when they are what `sample` promises (a uint8 tensor [n, 3, size,
        size]); otherwise an error naming this generator and what it returned, before
        anything is trained on or written from them."""
        import torch

        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or tuple(images.shape) != (n, 3, size, size):
            got = f"{getattr(images, 'dtype', type(images).__name__)} {list(getattr(images, 'shape', []))}"
            raise HarnessError(f"generator {self.name!r} ({self.plugin_name}) returned {got}, expected a torch uint8 tensor [{n}, 3, {size}, {size}]")
        return images

    def sample_on(self, seed: int, indices: Sequence[int], size: int, device: str | torch.device) -> torch.Tensor:
        """`sample_at`'s images, on `device`. A generator that renders on a GPU overrides
        it to hand them over there without a round trip through host memory (a consumer
        on the same GPU, such as K-Means Leaves, then never waits for a readback); the
        bytes are those `sample_at` returns. Default: `sample_at`, then copied."""
        return self.sample_at(seed, indices, size).to(device)

    def reference_rate(self, seed: int, n: int, size: int) -> tuple[str, float] | None:
        """(what it does, images/s) of making these images the way the released research
        code does, when that is more than decoding pre-rendered JPEGs of the output;
        `harness bench generators` reports our rate against it. Default: None (the bench
        then times JPEG decoding)."""
        return None

    def time_split(self) -> dict[str, float]:
        """Seconds spent so far in each part of making this generator's images, where it
        keeps count (e.g. issuing draws, waiting for the GPU, reading back; a part named
        "a > b" is part of "a"); `harness bench profile` reports what one sampling call
        adds to each. Default: none kept."""
        return {}

    def close(self) -> None:
        """Release GL contexts or other resources (default: nothing to release)."""


@dataclass(frozen=True)
class TrainingCost:
    """What training an encoder costs, for the dry run and the benchmark: the images it
    consumes (None when that depends on the size of an image folder not read yet), its
    recipe's name (rates are measured per architecture and recipe) and the batch size a
    step takes."""

    images: int | None
    recipe: str
    batch_size: int


class Encoder(Plugin):
    """Maps uint8 images [n, 3, H, W] of any size to features.

    Each encoder owns its resizing and normalisation. `group` is the training-data type
    the leaderboard groups rows by: target, realistic, procedural or white-box. The core
    reads nothing of an encoder besides what this class declares.
    """

    kind: ClassVar[str] = "encoder"
    group: ClassVar[str] = "white-box"
    supports_patches: ClassVar[bool] = False
    trainable: ClassVar[bool] = False

    @property
    def architecture(self) -> str | None:
        """What the encoder's speed per image depends on (e.g. 'vit_tiny/8@32 depth 4'),
        so that measured rates carry over between encoders; None when not measured."""
        return None

    @property
    def input_size(self) -> int:
        """The side of the square images the encoder computes on (the benchmark feeds it
        images of this size)."""
        return 224

    @property
    def precision(self) -> Precision:
        """The arithmetic `embed` computes in (`harness.device.forward_precision`). Its speed
        depends on it: the benchmark runs `torch_module()` in it and the dry run prices by it."""
        return "float32"

    def torch_module(self) -> torch.nn.Module | None:
        """The torch model `embed` runs, when there is one (the benchmark counts its FLOPs)."""
        return None

    def training_cost(self) -> TrainingCost | None:
        """What `prepare` trains, when it trains (None: nothing to train)."""
        return None

    def scaled_params(self, factor: float) -> dict[str, Any]:
        """Parameter overrides that multiply the training budget (steps and images) by
        `factor`: what `harness run --scale` applies to a profile's compared encoders."""
        raise HarnessError(f"encoder {self.name!r} ({self.plugin_name}) trains nothing, so it has no training budget to scale")

    def measure_training(
        self, ctx: RunContext, steps: int, batch_size: int | None, budget_s: float | None, profile: bool = False,
        compiled: bool = False, prerendered: str | None = None,
    ) -> dict[str, Any]:
        """Train for `steps` steps (or `budget_s` seconds) without caching the weights and
        report images/s; `harness bench train` calls it for trainable encoders. With
        `compiled`, also the rate under torch.compile (`compiled_model_images_per_s`).
        With `prerendered` (a file format), also the rate on the same images written as
        such files first (`prerendered_images_per_s`). With `profile`, the report's
        `operators` lists where the timed steps spent their time
        (`harness.bench.profiling.operator_profile`)."""
        raise TypeError(f"encoder {self.name!r} does not train")

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

    def checked_features(self, features: Any, n: int) -> np.ndarray:
        """`embed`'s output for n images as float32 [n, d] numpy; anything else (not a
        floating-point torch tensor, not [n, d]) is an error naming this encoder, raised
        before the features are cached."""
        import torch

        if not isinstance(features, torch.Tensor) or not features.is_floating_point() or features.ndim != 2 or len(features) != n:
            got = f"{getattr(features, 'dtype', type(features).__name__)} {list(getattr(features, 'shape', []))}"
            raise HarnessError(f"encoder {self.name!r} ({self.plugin_name}): embed returned {got} for {n} images, expected a floating-point torch tensor [{n}, d]")
        return features.float().cpu().numpy()

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features [n, h, w, d]; only encoders with `supports_patches`."""
        raise TypeError(f"encoder {self.name!r} has no patch features (supports_patches=False)")


DatasetName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


class TaskParams(Params):
    datasets: list[DatasetName] | None = Field(None, description="dataset names from registry.yaml (default: the task's own)")


class Task(Plugin):
    """A benchmark. `run(encoder, ctx)` evaluates one encoder on `ctx.dataset`.

    `datasets` lists the dataset names the task runs on (its `datasets` parameter, else
    `default_datasets`), which the registry must define, except a task's own
    `default_datasets` and any name of a task that `builds_own_data` (its datasets are
    data it makes, named as it likes).
    `needs_patches` tasks are skipped for encoders without patch features. A task's
    `Params` subclass `TaskParams`.
    """

    kind: ClassVar[str] = "task"
    default_datasets: ClassVar[tuple[str, ...]] = ()
    builds_own_data: ClassVar[bool] = False
    needs_patches: ClassVar[bool] = False
    title: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = TaskParams

    @property
    def datasets(self) -> list[str]:
        chosen = getattr(self.params, "datasets", None)
        return list(self.default_datasets if chosen is None else chosen)

    @abstractmethod
    def run(self, encoder: Encoder, ctx: CellContext) -> list[Result]:
        """Evaluate `encoder` on `ctx.dataset`; build records with `ctx.result(...)`."""

    @property
    def paper_comparable(self) -> bool:
        """Whether this instance computes what the paper reports (same protocol), so that
        the paper's numbers may stand beside its records. Default: True."""
        return True

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
