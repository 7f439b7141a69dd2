"""A profile's generator comparison: one encoder per generator and training seed.

A profile with `compare_generators` (registry.yaml) trains the same recipe on each of its
generators, once per seed. The encoders are derived here, by name, and added to the
registry in memory, so that they run, cache and rank like written entries; an entry
already written under a derived name is used when it has the same contents.
"""

from __future__ import annotations

from harness.config.registry import Registry
from harness.config.schema import EncoderSpec, GeneratorComparisonSpec
from harness.errors import HarnessError, RegistryError


def _scale_suffix(scale: float) -> str:
    return f"-x{scale:g}".replace(".", "_")


def derived_name(spec: GeneratorComparisonSpec, generator: str, seed: int, default_seed: object, scale: float = 1.0) -> str:
    name = spec.name.replace("{generator}", generator)
    if seed != default_seed:
        name += f"-seed{seed}"
    return name + (_scale_suffix(scale) if scale != 1.0 else "")


def compared_encoders(registry: Registry, profile: str, generators: list[str], scale: float = 1.0) -> list[str]:
    """The names of the profile's compared encoders for `generators` (each trained once per
    seed), added to `registry`; under `scale`, every training budget multiplied by it."""
    spec = registry.profile(profile).compare_generators
    assert spec is not None, f"profile {profile!r} compares no generators"
    where = f"{registry.path}: profiles.{profile}.compare_generators"
    if scale <= 0:
        raise HarnessError(f"--scale {scale:g}: the budget multiplier must be positive")
    if "{generator}" not in spec.name:
        raise RegistryError(f"{where}.name: {spec.name!r} must contain {{generator}}, or every generator's encoder gets one name")
    cls = registry.plugins.get("encoder", spec.plugin)
    seed_field = cls.Params.model_fields.get(spec.seed_param)
    if seed_field is None or spec.generator_param not in cls.Params.model_fields:
        missing = spec.seed_param if seed_field is None else spec.generator_param
        raise RegistryError(f"{where}: encoder plugin {spec.plugin!r} has no parameter {missing!r}")
    names = []
    for generator in generators:
        registry.create("generator", generator)  # a misspelt generator fails before any work
        for seed in spec.seeds:
            params = {**spec.params, spec.generator_param: generator}
            if seed != seed_field.default:
                params[spec.seed_param] = seed
            name = derived_name(spec, generator, seed, seed_field.default)
            if scale != 1.0:
                params.update(cls(name, **params).scaled_params(scale))
                name = derived_name(spec, generator, seed, seed_field.default, scale)
            names.append(registry.add_instance("encoder", name, EncoderSpec(plugin=spec.plugin, params=params, group=spec.group)))
    return names
