"""registry.yaml: instances of plugins, dataset roots and profiles, validated by pydantic.

The file is found as `--registry PATH`, else `$HARNESS_REGISTRY`, else `./registry.yaml`,
else the copy installed with the package. The installed copy is always read first and a
user's file is laid over it key by key, so a user's file lists only what it adds or
overrides.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.config.loading import PluginRegistry, load_plugins
from harness.config.schema import DatasetSpec, InstanceSpec, ProfileSpec, RegistryFile
from harness.config.yaml_file import YamlFileError, load_yaml_file
from harness.errors import RegistryError, UnknownNameError
from harness.keys import code_fingerprint
from harness.kinds import ParamsError, Plugin, references

INSTALLED_REGISTRY = Path(__file__).with_name("default_registry.yaml")
def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def read_registry_file(path: Path) -> RegistryFile:
    """Parse and validate one registry file; errors name the file and the field path."""
    try:
        raw = load_yaml_file(path) or {}
    except YamlFileError as exc:
        raise RegistryError(str(exc)) from None
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
        for spec in config.datasets.values():
            spec._registry_file = None if path.resolve() == INSTALLED_REGISTRY.resolve() else path
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

    def add_instance(self, kind: str, name: str, spec: InstanceSpec) -> str:
        """Add an instance derived at run time (one per block of a layer sweep, one per
        generator and seed of a comparison) to this registry, in memory; returns its name.
        An entry of that name with other contents is refused: results are filed by name."""
        existing = self.section(kind).get(name)
        if existing is not None and (existing.plugin, existing.params) != (spec.plugin, spec.params):
            raise RegistryError(
                f"{self.path}: {kind}s.{name}: the name is taken by an entry with other contents "
                f"({existing.plugin} {existing.params}) than the derived instance ({spec.plugin} {spec.params}); rename one"
            )
        if existing is None:
            self.section(kind)[name] = spec
        return name

    def create(self, kind: str, name: str, _chain: tuple[str, ...] = (), **overrides: Any) -> Plugin:
        """An instance by registry name, or a plugin by its own name with default params.

        Parameters are validated by the plugin's `Params`; every reference parameter is
        resolved here, in this registry, so that the instance's key sees what it names.
        """
        spec = self.spec(kind, name)
        if spec is not None:
            where = f"{self.path}: {kind}s.{name}"
            try:
                cls = self.plugins.get(kind, spec.plugin)
            except UnknownNameError as exc:
                broken = "; ".join(f"{b.source}: {b.error}" for b in self.plugins.broken)
                hint = f" Plugins that failed to load (see `harness list`): {broken}" if broken else ""
                raise RegistryError(f"{where}.plugin: {exc}{hint}") from None
            params = {**spec.params, **overrides}
        elif name in self.plugins.classes[kind]:
            cls = self.plugins.get(kind, name)
            params = overrides
            where = f"{kind} plugin {name!r}"
        else:
            known = sorted(set(self.instance_names(kind)) | set(self.plugins.names(kind)))
            raise UnknownNameError(f"{kind} (instance or plugin)", name, known)
        try:
            instance = cls(name, **params)
        except ParamsError as exc:
            raise exc.located(f"{where}.params") from None
        chain = _chain + (f"{kind} {name}",)
        for field, reference in references(instance.params):
            link = f"{reference.kind} {reference}"
            if link in chain:
                raise RegistryError(f"{where}.params.{field}: instances refer to each other in a cycle: {' -> '.join(chain + (link,))}")
            try:
                instance.resolved[(reference.kind, str(reference))] = self.create(reference.kind, str(reference), chain)
            except UnknownNameError as exc:
                raise RegistryError(f"{where}.params.{field}: {exc}") from None
        return instance

    def dataset(self, name: str) -> DatasetSpec:
        try:
            return self.config.datasets[name]
        except KeyError:
            raise UnknownNameError("dataset", name, sorted(self.config.datasets)) from None

    def dataset_description(self, name: str) -> dict[str, Any] | None:
        """What determines a dataset's images for the keys: its registry entry, the code of
        its format's reader and a fingerprint of its contents, so that changed data is never
        served from a cache (None for a name the registry does not define)."""
        from harness.datasets.fingerprint import dataset_fingerprint

        spec = self.config.datasets.get(name)
        if spec is None:
            return None
        reader = self.plugins.formats.get(spec.format)
        code = code_fingerprint(reader.reader.__module__) if reader is not None else None
        files = reader.files if reader is not None else None
        return {"spec": spec.model_dump(), "reader_code": code, "contents": dataset_fingerprint(name, spec, files)}

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
