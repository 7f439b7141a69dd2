"""The tiny DINO recipe earns its place: trained for minutes on `shaders-kml-mixup`, it
beats random initialisation of the same architecture on the digits kNN task by more than
the spread over three seeds of either.

The suite trains a shortened schedule (3 epochs of 2048 images, 96 steps, about 2
minutes per seed on 2 cores); `harness run --profile acceptance` runs the full `tiny`
recipe (320 steps) and docs/encoders.md reports its numbers.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from harness.results import ResultStore
from helpers import cli

SEEDS = (0, 1, 2)
SHORT = "data: shaders-kml-mixup, recipe: tiny, dataset_size: 2048, epochs: 3"
REGISTRY = "encoders:\n" + "".join(
    f"  dino-tiny-short-seed{seed}: {{plugin: dino, params: {{{SHORT}, seed: {seed}}}}}\n" for seed in SEEDS
)
TRAINED = [f"dino-tiny-short-seed{seed}" for seed in SEEDS]
RANDOM = ["random-init-tiny", "random-init-tiny-seed1", "random-init-tiny-seed2"]


@pytest.mark.slow
def test_dino_tiny_beats_random_init_of_its_architecture_by_more_than_the_seed_spread(tmp_path: Path) -> None:
    (tmp_path / "registry.yaml").write_text(REGISTRY)
    result = cli("run", "--encoders", ",".join(TRAINED + RANDOM), "--tasks", "knn-digits", "--out", str(tmp_path / "out"),
                 cwd=tmp_path, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    top1 = {
        r.encoder: r.value for r in ResultStore(tmp_path / "out").read()
        if r.metric == "top1" and r.headline and r.dataset == "digits"
    }
    assert set(top1) == set(TRAINED + RANDOM)
    trained, random = [top1[name] for name in TRAINED], [top1[name] for name in RANDOM]
    margin = statistics.mean(trained) - statistics.mean(random)
    spread = max(max(trained) - min(trained), max(random) - min(random))
    message = f"digits kNN top-1: trained {trained}, random init {random}: margin {margin:.2f}, spread {spread:.2f}"
    assert margin > spread, message
    assert min(trained) > max(random), message
