"""The train stage: training images/s of the profile's trainable encoders."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.runner.context import RunContext

if TYPE_CHECKING:
    from harness.config.schema import ProfileSpec
    from harness.config.registry import Registry

TRAIN_BUDGET_S = 60.0
CPU_MAX_BATCH = 64  # images per step on a CPU, where a recipe's full batch would take minutes


def is_trainable(registry: Registry, name: str) -> bool:
    """Whether the encoder instance `name` is made by a plugin that trains (the train stage
    times it; the embed stage leaves it out)."""
    spec = registry.spec("encoder", name)
    return bool(registry.plugins.get("encoder", spec.plugin if spec else name).trainable)


def bench_train(registry: Registry, profile: ProfileSpec, quick: bool, device: str) -> list[dict[str, Any]]:
    """Training images/s of the profile's trainable encoders, each measured for about
    `TRAIN_BUDGET_S` seconds (on a CPU at most `CPU_MAX_BATCH` images per step). An
    encoder whose `training_cost()` is None has nothing to train and is left out."""
    rows: list[dict[str, Any]] = []
    for name in [n for n in profile.encoders if is_trainable(registry, n)]:
        encoder = registry.create("encoder", name)
        cost = encoder.training_cost()
        if cost is None:
            continue
        batch_size = None if device.startswith("cuda") else min(CPU_MAX_BATCH, cost.batch_size)
        try:
            measured = encoder.measure_training(
                RunContext(registry=registry, device=device),
                steps=2 if quick else 20,
                batch_size=batch_size,
                budget_s=None if quick else TRAIN_BUDGET_S,
            )
        except Exception as exc:
            rows.append({"encoder": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        rows.append({"encoder": name, **measured})
    return rows
