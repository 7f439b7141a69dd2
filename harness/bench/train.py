"""The train stage: training images/s of the profile's trainable encoders."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Iterator

from harness.runner.context import RunContext

if TYPE_CHECKING:
    from harness.config.schema import ProfileSpec
    from harness.config.registry import Registry

CPU_MAX_BATCH = 64  # images per step on a CPU, where a recipe's full batch would take minutes
QUICK_BATCH = 4  # images per step of a --quick run on a CPU


def is_trainable(registry: Registry, name: str) -> bool:
    """Whether the encoder instance `name` is made by a plugin that trains (the train stage
    times it; the embed stage leaves it out)."""
    spec = registry.spec("encoder", name)
    return bool(registry.plugins.get("encoder", spec.plugin if spec else name).trainable)


def bench_train(registry: Registry, profile: ProfileSpec, quick: bool, device: str) -> Iterator[dict[str, Any]]:
    """Training images/s of the profile's trainable encoders, each for about the profile's
    `bench.train_budget_s` seconds. On a GPU the batch is the recipe's, halved until it
    fits in memory; on a CPU at most `CPU_MAX_BATCH` images. An encoder whose
    `training_cost()` is None has nothing to train and is left out. With
    `bench.prerendered`, each also trains on its generator's images written as files
    first (the released research code's design)."""
    import torch

    spec = profile.bench
    for name in [n for n in profile.encoders if is_trainable(registry, n)]:
        encoder = registry.create("encoder", name)
        cost = encoder.training_cost()
        if cost is None:
            continue
        on_gpu = device.startswith("cuda")
        batch_size = cost.batch_size if on_gpu else min(QUICK_BATCH if quick else CPU_MAX_BATCH, cost.batch_size)
        row: dict[str, Any] = {"encoder": name}
        while True:
            print(f"train: {name}, {batch_size} images per step", file=sys.stderr, flush=True)
            try:
                measured = encoder.measure_training(
                    RunContext(registry=registry, device=device),
                    steps=2 if quick else spec.train_steps,
                    batch_size=batch_size,
                    budget_s=None if quick else spec.train_budget_s,
                    compiled=spec.compile and not quick,
                    prerendered=spec.prerendered,
                )
                row.update(measured)
                if on_gpu and batch_size < cost.batch_size:
                    row["batch_note"] = f"the recipe's {cost.batch_size} images did not fit; halved to {batch_size}"
                break
            except torch.cuda.OutOfMemoryError:
                print(f"train: {name}: out of GPU memory at {batch_size} images per step", file=sys.stderr, flush=True)
                torch.cuda.empty_cache()
                if batch_size <= 1:
                    row["error"] = "out of GPU memory at one image per step"
                    break
                batch_size //= 2
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
                break
        yield row
