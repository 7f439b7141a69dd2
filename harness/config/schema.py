"""The schema of registry.yaml: what each section may hold, validated by pydantic.

Only data shapes live here (no plugin loading, no dataset reading), so any module may
import these types: `harness.config.registry` reads and merges the files, the dataset
readers take a `DatasetSpec`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints

from harness.errors import DatasetUnavailable
from harness.keys import NAME_PATTERN

GROUPS = ("target", "realistic", "procedural", "white-box")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InstanceSpec(_Strict):
    """A named instance: which plugin, with which parameters."""

    plugin: str
    params: dict[str, Any] = Field(default_factory=dict)
    description: str = ""


class EncoderSpec(InstanceSpec):
    group: Literal["target", "realistic", "procedural", "white-box"] | None = None
    paper_row: str | None = Field(None, description="the paper's row label, to show its numbers beside ours")


class DatasetSpec(_Strict):
    """Where a dataset lives. `env`, when set in the environment, overrides `root`."""

    format: str
    root: str | None = None
    env: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    _registry_file: Path | None = PrivateAttr(None)  # the user's registry file, for messages (None: none is in use)

    def registry_file(self) -> str:
        """The file a user edits to configure this dataset, as messages name it."""
        return str(self._registry_file or "a registry.yaml in the working directory (or a file given with --registry)")

    def entry_with_options(self, name: str, **options: Any) -> str:
        """This entry as one line of registry YAML with `options` laid over its own: what a
        message tells a user to write, whole, since a user's entry replaces the installed one."""
        import yaml

        fields = {"format": self.format, "root": self.root, "env": self.env, "options": {**self.options, **options}}
        entry = {key: value for key, value in fields.items() if value is not None}
        return f"{name}: " + yaml.safe_dump(entry, default_flow_style=True, sort_keys=False, width=10**6).strip()

    def where_to_set_root(self, name: str) -> str:
        """What to set so that the dataset's root is found: the registry entry or the environment variable."""
        if self.env and os.environ.get(self.env):  # the variable overrides root: setting root would not help
            return f"the environment variable {self.env} names it (and overrides datasets.{name}.root): point it at the dataset, or unset it"
        return f"set datasets.{name}.root in {self.registry_file()}" + (f" or the environment variable {self.env}" if self.env else "")

    def resolved_root(self, name: str) -> Path:
        """The dataset's root on this machine, or DatasetUnavailable naming what to set."""
        raw = (os.environ.get(self.env) if self.env else None) or self.root
        if not raw:
            raise DatasetUnavailable(f"dataset {name!r} has no root: {self.where_to_set_root(name)}")
        path = Path(raw).expanduser()
        if not path.exists():
            raise DatasetUnavailable(f"dataset {name!r}: {path} does not exist; {self.where_to_set_root(name)}")
        return path


class TargetSpec(_Strict):
    """A figure `harness bench` is expected to reach, shown met or not in its report. The
    aim is the better value: a target whose aim is below its floor is a time (lower is better)."""

    label: str
    stage: str = Field(description="the benchmark stage whose rows hold the figure")
    where: dict[str, Any] = Field(default_factory=dict, description="column values that pick the row")
    column: str = Field(description="the row's column holding the figure")
    floor: float
    aim: float


class BenchSpec(_Strict):
    """How much `harness bench` measures with a profile (`--quick` shrinks it all)."""

    sizes: list[Annotated[int, Field(ge=8)]] = Field([64, 128, 224], min_length=1, description="generator image sizes (px)")
    embed_images: int = Field(256, ge=1, description="images per timed embedding pass (a GPU gets 4x)")
    compile: bool = Field(False, description="also time each encoder's module, and each trainable encoder's training step, under torch.compile")
    train_steps: int = Field(20, ge=2, description="timed training steps (fewer when they overrun the stage's budget)")
    train_budget_s: float = Field(60.0, gt=0, description="seconds of timed training per encoder")
    prerendered: Literal["png", "jpeg"] | None = Field(
        None,
        description="also time each encoder trained on a generator end to end on the same images pre-rendered as "
        "files of this format, read by its data workers (the released research code's design: jpeg)",
    )
    memory_rows: list[Annotated[int, Field(ge=1)]] = Field([10_000, 100_000, 1_000_000], min_length=1)
    memory_queries: int = Field(1000, ge=1)
    end_to_end: str | None = Field(
        None, description="a profile to run end to end (stage end-to-end) and compare with the committed leaderboard"
    )
    compare_with: str = Field("leaderboard/results.jsonl", description="the results end-to-end compares with")
    targets: list[TargetSpec] = Field(default_factory=list, description="figures to reach, checked in the report")


class GeneratorComparisonSpec(_Strict):
    """Encoders trained one per generator and seed with the same recipe, so that a profile
    compares generators. `harness run --profile P --generators mine` adds a generator to
    the comparison; `--scale F` multiplies every training budget (steps and images)."""

    plugin: str = Field(description="the encoder plugin that trains on a generator")
    params: dict[str, Any] = Field(default_factory=dict, description="its parameters, the same for every generator")
    generator_param: str = Field("data", description="the parameter that names the generator")
    seed_param: str = Field("seed", description="the parameter that seeds the training")
    seeds: list[Annotated[int, Field(ge=0)]] = Field([0], min_length=1)
    name: str = Field(
        description="the derived encoders' name: {generator} stands for the generator; '-seed<s>' is added for "
        "seeds other than the plugin's default, '-x<F>' under `--scale F`"
    )
    group: Literal["target", "realistic", "procedural", "white-box"] = "procedural"


class ProfileSpec(_Strict):
    encoders: list[str] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list)
    generators: list[str] = Field(default_factory=list, description="generators shown as sample grids (and compared, with compare_generators)")
    compare_generators: GeneratorComparisonSpec | None = Field(
        None, description="also train one encoder per generator of the profile and seed, to rank the generators"
    )
    bench: BenchSpec = Field(default_factory=BenchSpec, description="what `harness bench` measures with this profile")


class SlurmSpec(_Strict):
    """Resources of the jobs `harness run --launcher slurm` submits (CLI flags override)."""

    partition: str | None = None
    account: str | None = None
    train_gpus: int = Field(8, ge=0, description="GPUs of one encoder's training job (one node)")
    eval_gpus: int = Field(1, ge=0, description="GPUs of one evaluation cell's job")
    cpus_per_gpu: int = Field(10, ge=1)
    mem_gb: int = Field(64, ge=1, description="memory per job")
    train_time_min: int = Field(72 * 60, ge=1)
    eval_time_min: int = Field(4 * 60, ge=1)
    setup: list[str] = Field(default_factory=list, description="shell lines run before each job (module load, conda activate)")


# Names become parts of file names (caches, tracebacks, figures): no separators, no "..".
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


class RegistryFile(_Strict):
    plugins: list[str] = Field(default_factory=list)
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)
    datasets: dict[Name, DatasetSpec] = Field(default_factory=dict)
    generators: dict[Name, InstanceSpec] = Field(default_factory=dict)
    encoders: dict[Name, EncoderSpec] = Field(default_factory=dict)
    tasks: dict[Name, InstanceSpec] = Field(default_factory=dict)
    profiles: dict[Name, ProfileSpec] = Field(default_factory=dict)
