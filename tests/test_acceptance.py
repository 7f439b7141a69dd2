"""The tiny DINO recipe's acceptance experiment (docs/encoders.md, "Acceptance").

`harness run --profile acceptance` trains `dino-tiny-shaders-kml-mixup` with three seeds
(about 2.5 minutes each on a 2-core CPU) and evaluates them beside the same architecture
at random initialisation (`random-init-tiny`, three seeds) on the digits kNN task. The
trained encoders must win by more than the spread over seeds, and every reported number
must equal scikit-learn's weighted kNN on the encoders' own embeddings.

The trainings are the longest part of the suite (four minutes each on one core), so
`conftest.py` starts them in the background as soon as the session knows this test is
selected: one `harness run --encoders SEED` process per seed, on one thread each and at
a lower priority than the rest of the suite, which keeps the cores it needs and leaves
them the others. This test runs near the end: it waits for them, then runs the whole
profile, whose trained weights are in the session's cache by then (as they are for the
default run's test, ordered after this one).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import harness
from harness.runner.context import RunContext
from harness.datasets import open_dataset
from harness.config.registry import use_registry
from harness.results.store import ResultStore

TRAINED = ["dino-tiny-shaders-kml-mixup", "dino-tiny-shaders-kml-mixup-seed1", "dino-tiny-shaders-kml-mixup-seed2"]
RANDOM_INIT = ["random-init-tiny", "random-init-tiny-seed1", "random-init-tiny-seed2"]
T = 0.07  # the knn task's temperature (DINO's weighted vote)
K = 20


def sklearn_top1(encoder_name: str, registry: Any, digits: Any) -> float:
    """Digits top-1 % of scikit-learn's weighted cosine kNN on the encoder's embeddings."""
    from sklearn.neighbors import KNeighborsClassifier

    encoder = harness.get_encoder(encoder_name)
    encoder.prepare(RunContext(registry=registry, device="cpu", progress=False))  # trained weights come from the cache

    def features(split: Any) -> np.ndarray:
        return encoder.embed(torch.from_numpy(split.images)).numpy().astype(np.float64)

    knn = KNeighborsClassifier(K, weights=lambda d: np.exp((1.0 - d) / T), metric="cosine", algorithm="brute")
    knn.fit(features(digits.train), digits.train.labels)
    return 100.0 * float((knn.predict(features(digits.test)) == digits.test.labels).mean())


def start_acceptance_trainings(folder: Path) -> list[subprocess.Popen]:
    """One background `harness run --profile acceptance --encoders NAME` per trained
    encoder, into folder/NAME, on one thread each and at a lower priority (nice 10) than
    the process that starts them."""
    processes = []
    for name in TRAINED:
        command = [sys.executable, "-m", "harness", "run", "--profile", "acceptance", "--encoders", name,
                   "--threads", "1", "--out", str(folder / name)]
        with (folder / f"{name}.log").open("w") as log:
            processes.append(subprocess.Popen(
                command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, preexec_fn=lambda: os.nice(10),
            ))
    return processes


@pytest.mark.slow
def test_dino_tiny_beats_random_init_by_more_than_the_seed_spread(acceptance_trainings: tuple[list[subprocess.Popen], Path]):
    processes, folder = acceptance_trainings
    for name, process in zip(TRAINED, processes):
        assert process.wait(timeout=1800) == 0, (folder / f"{name}.log").read_text()[-6000:]
    out = folder / "out"
    run = subprocess.run([sys.executable, "-m", "harness", "run", "--profile", "acceptance", "--out", str(out)],
                         cwd=folder, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    top1 = {
        r.encoder: r.value
        for r in ResultStore(out).read()
        if r.task == "knn-digits" and r.headline and r.status == "ok"
    }
    trained = [top1[name] for name in TRAINED]
    random_init = [top1[name] for name in RANDOM_INIT]
    margin = np.mean(trained) - np.mean(random_init)
    spread = max(np.ptp(trained), np.ptp(random_init))
    assert margin > spread, f"trained {trained}, random init {random_init}"

    registry = use_registry(None)
    digits = open_dataset("digits", registry.dataset("digits"))
    one_test_image = 100.0 / len(digits.test)
    for name in TRAINED + RANDOM_INIT:
        assert top1[name] == pytest.approx(sklearn_top1(name, registry, digits), abs=one_test_image), name
    board = (out / "LEADERBOARD.md").read_text()
    assert "## Training" in board and all((out / "training" / f"{name}.json").is_file() for name in TRAINED)
