"""Contract tests parametrised from the installed registry itself.

Every registered plugin class and every registry instance is collected here, so a new
plugin or instance is tested by being registered: its parameters are declared and
described, its key is stable and sees its parameters, and it keeps its kind's promises
(generators: shape, dtype, determinism, slices; encoders: features of the declared
shape; tasks: datasets that exist and records the runner accepts) at tiny sizes, and
every dataset of the registry has a registered format.
"""

from __future__ import annotations

import math
import re
from importlib.metadata import entry_points

import pytest
import torch

from harness.config.loading import ENTRY_POINT_GROUP
from harness.config.registry import INSTALLED_REGISTRY, load_registry
from harness.errors import HarnessError
from harness.kinds import KINDS, ParamsError, TrainingCost
from harness.results.store import Result

REGISTRY = load_registry(INSTALLED_REGISTRY)
PLUGIN_CLASSES = [(kind, name) for kind in KINDS for name in REGISTRY.plugins.names(kind)]
INSTANCES = [(kind, name) for kind in KINDS for name in REGISTRY.instance_names(kind)]
ENTRY_POINTS = sorted(entry.name for entry in entry_points(group=ENTRY_POINT_GROUP))
SIZE, N = 32, 4  # generator sample side and count


def _ids(pairs: list[tuple[str, str]]) -> list[str]:
    return [f"{kind}:{name}" for kind, name in pairs]


def _of_kind(kind: str) -> list[str]:
    return [name for k, name in INSTANCES if k == kind]


def _create(kind: str, name: str):
    """A new instance (the registry makes one per call), or a failure that names the
    plugin that did not load."""
    spec = REGISTRY.spec(kind, name)
    if spec is not None and spec.plugin not in REGISTRY.plugins.classes[kind]:
        broken = "; ".join(f"{b.source}: {b.error}" for b in REGISTRY.plugins.broken) or "none"
        pytest.fail(f"{kind} instance {name!r}: its plugin {spec.plugin!r} is not loaded (broken plugins: {broken})")
    return REGISTRY.create(kind, name)


# ---------------------------------------------------------------- plugin classes
@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_entry_point_loads(entry_point: str) -> None:
    broken = [b for b in REGISTRY.plugins.broken if b.source.startswith(f"entry point {entry_point!r}")]
    assert not broken, "\n".join(f"{b.source}: {b.error}" for b in broken)


@pytest.mark.parametrize("kind, name", PLUGIN_CLASSES, ids=_ids(PLUGIN_CLASSES))
def test_plugin_declares_described_params(kind: str, name: str) -> None:
    cls = REGISTRY.plugins.get(kind, name)
    assert issubclass(cls.Params, KINDS[kind].Params), f"{cls.__name__}.Params must subclass {KINDS[kind].__name__}.Params"
    assert (cls.__dict__.get("__doc__") or "").strip(), f"{cls.__name__} has no docstring (`harness list` shows its first line)"
    undescribed = [field for field, info in cls.Params.model_fields.items() if not (info.description or "").strip()]
    assert not undescribed, f"{cls.__name__}.Params fields without a description: {undescribed}"


# ---------------------------------------------------------------- every instance
@pytest.mark.parametrize("kind, name", INSTANCES, ids=_ids(INSTANCES))
def test_instance_key_is_stable(kind: str, name: str) -> None:
    first = _create(kind, name)
    assert isinstance(first, KINDS[kind])
    assert re.fullmatch(r"[0-9a-f]{16}", first.key), first.key
    assert _create(kind, name).key == first.key


def _numeric_field(instance) -> str | None:
    """The first int or float parameter with a value that the key covers (not `exclude=True`)."""
    for field, info in type(instance.params).model_fields.items():
        value = getattr(instance.params, field)
        if info.annotation in (int, float) and type(value) in (int, float) and not info.exclude:
            return field
    return None


def _other_values(value: int | float) -> list[int | float]:
    if isinstance(value, int):
        return [value + 1, value - 1, value * 2]
    return [value * 2 if value else 1.0, value / 2, value + 1.0, value - 0.5]


@pytest.mark.parametrize("kind, name", INSTANCES, ids=_ids(INSTANCES))
def test_instance_key_sees_a_parameter(kind: str, name: str) -> None:
    instance = _create(kind, name)
    field = _numeric_field(instance)
    if field is None:
        pytest.skip("no int or float parameter")
    current = getattr(instance.params, field)
    for value in _other_values(current):
        try:
            changed = REGISTRY.create(kind, name, **{field: value})
        except ParamsError:
            continue  # outside the field's range, or refused by a cross-field check
        assert changed.key != instance.key, f"{field}: {current!r} -> {value!r} left the key unchanged"
        return
    pytest.skip(f"no other valid value of {field} found near {current!r}")


# ---------------------------------------------------------------- generators
@pytest.mark.parametrize("name", _of_kind("generator"))
def test_generator_samples_are_deterministic_slices(name: str) -> None:
    generator = _create("generator", name)
    try:
        images = generator.sample(0, N, SIZE)
        assert isinstance(images, torch.Tensor)
        assert images.dtype == torch.uint8 and tuple(images.shape) == (N, 3, SIZE, SIZE)
        assert torch.equal(generator.sample(0, 2, SIZE, start=2), images[2:]), "image i must depend only on (seed, i)"
    finally:
        generator.close()
    fresh = _create("generator", name)
    try:
        assert torch.equal(fresh.sample(0, N, SIZE), images), "a new instance drew different bytes"
    finally:
        fresh.close()


# ---------------------------------------------------------------- encoders
@pytest.mark.parametrize("name", _of_kind("encoder"))
def test_encoder_declares_its_interface(name: str) -> None:
    encoder = _create("encoder", name)
    assert encoder.group in ("target", "realistic", "procedural", "white-box")
    assert isinstance(encoder.input_size, int) and encoder.input_size > 0
    assert encoder.architecture is None or isinstance(encoder.architecture, str)
    cost = encoder.training_cost()
    assert cost is None or isinstance(cost, TrainingCost)


@pytest.mark.parametrize("name", _of_kind("encoder"))
def test_encoder_embeds_uint8_images(name: str) -> None:
    encoder = _create("encoder", name)
    if encoder.trainable:
        pytest.skip("trainable: preparing it trains a network")
    try:
        encoder.prepare()
    except HarnessError as exc:  # DatasetUnavailable included: a checkpoint or dataset not here
        pytest.skip(f"prepare() needs what is not here: {exc}")
    images = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    features = encoder.embed(images)
    assert features.dtype == torch.float32 and features.ndim == 2 and features.shape[0] == 3, features.shape
    assert torch.isfinite(features).all()
    if encoder.supports_patches:
        patches = encoder.embed_patches(images)
        assert patches.ndim == 4 and patches.shape[0] == 3 and patches.is_floating_point(), patches.shape
        assert torch.isfinite(patches).all()


# ---------------------------------------------------------------- datasets and tasks
@pytest.mark.parametrize("name", sorted(REGISTRY.config.datasets))
def test_dataset_format_is_registered(name: str) -> None:
    fmt = REGISTRY.dataset(name).format
    assert fmt in REGISTRY.plugins.formats, f"format {fmt!r} is not registered; known: {sorted(REGISTRY.plugins.formats)}"


@pytest.mark.parametrize("name", _of_kind("task"))
def test_task_datasets_are_defined(name: str) -> None:
    task = _create("task", name)
    assert task.datasets, "a task runs on at least one dataset"
    own = set(type(task).default_datasets)  # a task that builds its own data names it itself
    unknown = [d for d in task.datasets if d not in REGISTRY.config.datasets and d not in own]
    assert not unknown, f"datasets not in the registry's `datasets:` section: {unknown}"


def test_task_cell_records_satisfy_the_runner(tmp_path) -> None:
    from harness.runner.cells import Runner

    runner = Runner(REGISTRY, out_dir=tmp_path, device="cpu", progress=False)
    records = runner.run(runner.select(encoders="rgb", tasks="knn-digits"))
    assert records
    for record in records:
        assert Result.model_validate(record.model_dump()) == record
        assert record.status == "ok", record.message
        assert record.value is not None and math.isfinite(record.value)
        assert (record.task, record.encoder) == ("knn-digits", "rgb")
    for dataset in {r.dataset for r in records}:
        cell = [r for r in records if r.dataset == dataset]
        headline_metrics = [r.metric for r in cell if r.headline]
        assert headline_metrics, f"{dataset}: no headline record"
        assert len(headline_metrics) == len(set(headline_metrics)), f"{dataset}: several headlines of one metric"
    written = [Result.model_validate_json(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert written == records
