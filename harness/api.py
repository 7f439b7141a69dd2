"""The public functions re-exported by `harness`."""

from __future__ import annotations

import os
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from harness.errors import HarnessError
from harness.kinds import Encoder, Generator, Task
from harness.config.registry import active_registry
from harness.results.store import Result

if TYPE_CHECKING:
    from harness.preprocessing import TimmPreprocess
    import torch


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
    encoders: list[str | Encoder] | None = None,
    tasks: list[str | Task] | None = None,
    out: str | os.PathLike = "leaderboard",
    registry: str | os.PathLike | None = None,
    force: bool = False,
    device: str | None = None,
    seed: int = 0,
    limit: int | float | None = None,
) -> list[Result]:
    """Run the cross product of encoders x tasks and render the leaderboard; return the
    records computed in this run (cells already in results.jsonl are reused). Encoders
    and tasks are registry instance names or objects (`get_encoder(...)`, an `Encoder`
    subclass of one's own, `harness.adhoc.ModuleEncoder`), mixed freely. `limit` cuts
    each classification split to N images or a fraction (stratified, seeded by `seed`)."""
    from harness.config.registry import use_registry
    from harness.runner.cells import Runner

    reg = use_registry(registry) if registry is not None else active_registry()
    runner = Runner(reg, out_dir=Path(out), device=device, force=force, seed=seed, limit=limit)
    return runner.run(runner.select(profile, encoders, tasks))


def evaluate(
    model: Encoder | torch.nn.Module,
    tasks: list[str | Task] | tuple[str, ...] = ("knn-default",),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    name: str | None = None,
    out: str | os.PathLike = "leaderboard",
    device: str | None = None,
    *,
    group: str | None = None,
    registry: str | os.PathLike | None = None,
    force: bool = False,
) -> list[Result]:
    """Evaluate one model on `tasks`; return every record of its cells, computed now or
    reused from `<out>/results.jsonl`.

    `model` is an `Encoder`, or a `torch.nn.Module` with `preprocess`: a function from
    uint8 images [n, 3, H, W] (on the model's device) to the float tensor the module takes.
    The harness never guesses a normalisation: `preprocess` is required, except for a
    timm model (one that carries `pretrained_cfg`), which gets timm's eval transform
    from `timm.data.resolve_model_data_config`. Results are filed under `name` (default:
    the module's class name); the key comes from the weights, so the same weights reuse
    the cached cells and changed weights recompute them (`harness.adhoc` tells what the
    key sees of `preprocess`).
    """
    encoder = as_encoder(model, preprocess, name, group=group)
    if isinstance(tasks, str):
        tasks = [tasks]
    from harness.config.registry import use_registry
    from harness.results.store import latest
    from harness.runner.cells import Runner

    reg = use_registry(registry) if registry is not None else active_registry()
    runner = Runner(reg, out_dir=Path(out), device=device, force=force)
    plan = runner.select(None, [encoder], list(tasks))
    runner.run(plan)
    keys = {cell.key for cell in runner.cells(plan)}
    return latest([r for r in runner.store.read() if r.cell_key in keys])


def as_encoder(
    model: Encoder | torch.nn.Module,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    name: str | None = None,
    group: str | None = None,
) -> Encoder:
    """`model` as an encoder, for `evaluate` and `run(encoders=[...])`: an `Encoder` as
    it is (renamed when `name` is given), a torch module wrapped in a
    `harness.adhoc.ModuleEncoder` (`evaluate` tells what `preprocess` must be)."""
    from harness.adhoc import ModuleEncoder

    if isinstance(model, Encoder):
        if preprocess is not None:
            raise HarnessError(f"encoder {model.name!r} does its own preprocessing; leave `preprocess` out")
        if name is not None:
            model.name = name
        return model
    patch_preprocess, size = None, None
    if preprocess is None:
        preprocess, patch_preprocess, size = _timm_preprocessing(model)
    return ModuleEncoder(model, preprocess, name, patch_preprocess=patch_preprocess, input_size=size, group=group)


def _timm_preprocessing(module: Any) -> tuple[TimmPreprocess, TimmPreprocess, int]:
    """(global, patch) preprocessing and input size of a timm model; a HarnessError for
    any other module, which must be given `preprocess`."""
    if not isinstance(getattr(module, "pretrained_cfg", None), dict):
        raise HarnessError(
            f"{type(module).__name__} needs `preprocess`, a function from uint8 images [n, 3, H, W] to "
            "the float tensor it takes, e.g. preprocess=lambda x: (x.float() / 255 - mean) / std after a resize. "
            "The harness never guesses a normalisation (only timm models, which carry `pretrained_cfg`, get theirs)"
        )
    from timm.data import resolve_model_data_config

    from harness.preprocessing import TimmPreprocess

    config = resolve_model_data_config(module)
    return TimmPreprocess(config, crop=True), TimmPreprocess(config, crop=False), int(config["input_size"][-1])
