"""registry.yaml: instances of plugins, dataset roots and profiles, validated by pydantic.

The file is found as `--registry PATH`, else `$HARNESS_REGISTRY`, else `./registry.yaml`,
else the copy installed with the package. The installed copy is always read first and a
user's file is laid over it key by key, so a user's file lists only what it adds or
overrides.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from harness.errors import DatasetUnavailable, RegistryError, UnknownNameError
from harness.kinds import NAME_PATTERN, Plugin
from harness.plugins import PluginRegistry, load_plugins

INSTALLED_REGISTRY = Path(__file__).with_name("default_registry.yaml")
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

    def resolved_root(self, name: str) -> Path:
        """The dataset's root on this machine, or DatasetUnavailable naming what to set."""
        raw = os.environ.get(self.env) if self.env else None
        raw = raw or self.root
        where = f"set datasets.{name}.root in registry.yaml" + (f" or the environment variable {self.env}" if self.env else "")
        if not raw:
            raise DatasetUnavailable(f"dataset {name!r} has no root: {where}")
        path = Path(raw).expanduser()
        if not path.exists():
            raise DatasetUnavailable(f"dataset {name!r}: {path} does not exist; {where}")
        return path


class ProfileSpec(_Strict):
    encoders: list[str] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list)
    generators: list[str] = Field(default_factory=list, description="generators shown as sample grids")


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


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def read_registry_file(path: Path) -> RegistryFile:
    """Parse and validate one registry file; errors name the file and the field path."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read registry file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise RegistryError(f"{path}: the top level must be a mapping (plugins, datasets, generators, encoders, tasks, profiles)")
    try:
        return RegistryFile.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{path}: {_field_path(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise RegistryError("invalid registry file\n  " + "\n  ".join(lines)) from None


def find_registry_path(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise RegistryError(f"{path}: registry file not found (given with --registry)")
        return path
    if os.environ.get("HARNESS_REGISTRY"):
        path = Path(os.environ["HARNESS_REGISTRY"]).expanduser()
        if not path.is_file():
            raise RegistryError(f"{path}: registry file not found (given by HARNESS_REGISTRY)")
        return path
    local = Path("registry.yaml")
    return local if local.is_file() else INSTALLED_REGISTRY


def merge(base: RegistryFile, override: RegistryFile) -> RegistryFile:
    """Lay `override` over `base`, entry by entry."""
    merged = base.model_copy(deep=True)
    merged.plugins = list(dict.fromkeys(base.plugins + override.plugins))
    if "slurm" in override.model_fields_set:
        merged.slurm = base.slurm.model_copy(update=override.slurm.model_dump(exclude_unset=True))
    for section in ("datasets", "generators", "encoders", "tasks", "profiles"):
        getattr(merged, section).update(getattr(override, section))
    return merged


class Registry:
    """The merged registry file plus the loaded plugin classes."""

    def __init__(self, config: RegistryFile, plugins: PluginRegistry, path: Path) -> None:
        self.config = config
        self.plugins = plugins
        self.path = path
        self._check_profiles()

    def _check_profiles(self) -> None:
        for profile_name, profile in self.config.profiles.items():
            for section in ("encoders", "tasks", "generators"):
                known = getattr(self.config, section)
                for i, name in enumerate(getattr(profile, section)):
                    if name not in known:
                        raise RegistryError(
                            f"{self.path}: profiles.{profile_name}.{section}[{i}]: "
                            f"{str(UnknownNameError(section[:-1] + ' instance', name, sorted(known)))}"
                        )

    def section(self, kind: str) -> dict[str, InstanceSpec]:
        return getattr(self.config, kind + "s")

    def instance_names(self, kind: str) -> list[str]:
        return list(self.section(kind))

    def spec(self, kind: str, name: str) -> InstanceSpec | None:
        return self.section(kind).get(name)

    def create(self, kind: str, name: str, **overrides: Any) -> Plugin:
        """An instance by registry name, or a plugin by its own name with default params."""
        spec = self.spec(kind, name)
        if spec is not None:
            cls = self.plugins.get(kind, spec.plugin)
            params = {**spec.params, **overrides}
        elif name in self.plugins.classes[kind]:
            cls = self.plugins.get(kind, name)
            params = overrides
        else:
            known = sorted(set(self.instance_names(kind)) | set(self.plugins.names(kind)))
            raise UnknownNameError(f"{kind} (instance or plugin)", name, known)
        try:
            return cls(name, **params)
        except TypeError as exc:
            raise RegistryError(f"{self.path}: {kind}s.{name}.params: {exc}") from None

    def dataset(self, name: str) -> DatasetSpec:
        try:
            return self.config.datasets[name]
        except KeyError:
            raise UnknownNameError("dataset", name, sorted(self.config.datasets)) from None

    def profile(self, name: str) -> ProfileSpec:
        try:
            return self.config.profiles[name]
        except KeyError:
            raise UnknownNameError("profile", name, sorted(self.config.profiles)) from None


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    found = find_registry_path(path)
    config = read_registry_file(INSTALLED_REGISTRY)
    if found.resolve() != INSTALLED_REGISTRY.resolve():
        config = merge(config, read_registry_file(found))
    return Registry(config, load_plugins(config.plugins), found)


_active: Registry | None = None


def active_registry() -> Registry:
    """The registry used by `harness.get_*` (loaded on first use)."""
    global _active
    if _active is None:
        _active = load_registry()
    return _active


def use_registry(registry: Registry | str | os.PathLike | None) -> Registry:
    """Make `registry` (or the file at that path) the one `harness.get_*` resolves names in."""
    global _active
    _active = registry if isinstance(registry, Registry) else load_registry(registry)
    return _active
