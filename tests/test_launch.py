"""The Slurm launcher (through submitit's local executor) and the dry-run plan."""

from __future__ import annotations

import json

import pytest

from harness.results.store import ResultStore
from helpers import cli

REGISTRY = """
plugins: [fake_plugins]
datasets:
  flowers102: {format: flowers102, root: /nonexistent/flowers, env: HARNESS_TEST_FLOWERS}
encoders:
  const-a: {plugin: constant}
  const-b: {plugin: constant, params: {variant: 2}}
tasks:
  quick: {plugin: sleepy, params: {datasets: [a, b]}}
  needs-flowers: {plugin: needs-data, params: {datasets: [flowers102]}}
profiles:
  default: {encoders: [const-a, const-b], tasks: [quick]}
"""


@pytest.fixture
def registry(tmp_path):
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY)
    return path


@pytest.mark.slow
def test_slurm_launcher_local_executor_runs_every_cell_once(tmp_path, registry):
    out = tmp_path / "out"
    log = tmp_path / "calls.log"
    env = {"FAKE_CALL_LOG": str(log)}
    first = cli("--registry", str(registry), "run", "--launcher", "slurm", "--cluster", "local", "--out", str(out), env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    records = ResultStore(out).read()
    assert sorted((r.encoder, r.dataset) for r in records) == [("const-a", "a"), ("const-a", "b"), ("const-b", "a"), ("const-b", "b")]
    assert len(log.read_text().splitlines()) == 4
    assert not list((out / "cells").glob("*.jsonl"))  # merged and removed
    again = cli("--registry", str(registry), "run", "--launcher", "slurm", "--cluster", "local", "--out", str(out), env=env)
    assert again.returncode == 0
    assert len(log.read_text().splitlines()) == 4  # finished cells are never resubmitted
    assert len(ResultStore(out).read()) == 4


@pytest.mark.slow
def test_dead_job_is_resubmitted(tmp_path, registry):
    out = tmp_path / "out"
    jobs = out / "jobs"
    jobs.mkdir(parents=True)
    # a previous run submitted a job for every cell, then everything died before any finished
    from harness.config.registry import load_registry
    from harness.runner.cells import Runner

    runner = Runner(load_registry(registry), out_dir=out, progress=False)
    plan = runner.select(None, "const-a", "quick")
    (jobs / "submitted.json").write_text(json.dumps({c.key: "99999" for c in runner.cells(plan)}))
    result = cli("--registry", str(registry), "run", "--launcher", "slurm", "--cluster", "local",
                 "--encoders", "const-a", "--tasks", "quick", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(r.dataset for r in ResultStore(out).read()) == ["a", "b"]


def test_dry_run_prints_cells_datasets_and_cost(tmp_path, registry):
    out = tmp_path / "out"
    report = tmp_path / "PERFORMANCE.md"
    result = cli("--registry", str(registry), "run", "--dry-run", "--encoders", "const-a", "--tasks", "needs-flowers,quick",
                 "--launcher", "slurm", "--embed-rate", "1000", "--out", str(out))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "3 cells" in text and "3 to run" in text
    assert "flowers102: MISSING" in text and "HARNESS_TEST_FLOWERS" in text
    # flowers102 is 2040 images at 1000 images/s: 2.04 s = 0.00057 h; the fake datasets have no published size
    assert "eval const-a / needs-flowers / flowers102" in text
    assert "expected GPU-hours: 0.0" in text and "2 jobs whose image count or throughput is unknown" in text
    assert not (out / "results.jsonl").exists()
    assert not report.exists()


def test_dry_run_prices_encoders_by_the_measured_rate_of_their_architecture(tmp_path):
    """`harness bench` times one encoder per architecture and recipe; the plan prices every
    encoder that shares them (paper profile: 1.3M images x 100 epochs of training)."""
    (tmp_path / "leaderboard").mkdir()
    state = {
        "train": {"rows": [{"encoder": "dino-vit-s16-shaders-kml-mixup", "arch": "vit_small_patch16_224 224px/16",
                            "recipe": "paper", "images_per_s": 1000.0}]},
        "embed": {"rows": [
            {"encoder": "random-init-vit-s16", "arch": "vit_small_patch16_224 224px/16", "images_per_s": 5000.0},
            {"encoder": "random-init-tiny", "arch": "vit_tiny_patch16_224 32px/8 depth=4", "images_per_s": 700.0},
        ]},
    }
    (tmp_path / "leaderboard" / "performance.json").write_text(json.dumps(state))
    result = cli("run", "--profile", "paper", "--dry-run", "--encoders", "dino-vit-s16-shaders", "--tasks", "knn",
                 "--launcher", "slurm", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = {line.split("  ")[0]: line.split() for line in result.stdout.splitlines() if line.startswith(("train ", "eval "))}
    train = lines["train dino-vit-s16-shaders"]
    images = 100 * (1_300_000 // 512) * 512  # 100 epochs of 2539 steps of 512 images
    assert train[3:5] == [str(images), "1000"]
    assert float(train[5]) == pytest.approx(images / (1000 * 8) / 3600, abs=0.01)  # 8 GPUs: 4.51 h of wall time
    assert all(row[-2] == "5000" for name, row in lines.items() if name.startswith("eval "))
    result = cli("run", "--profile", "acceptance", "--dry-run", "--encoders", "dino-tiny-shaders-kml-mixup-seed1,random-init-tiny-seed2,random-init",
                 "--tasks", "knn-digits", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rates = {line.split("  ")[0]: line.split()[-2] for line in result.stdout.splitlines() if line.startswith("eval ")}
    assert rates["eval dino-tiny-shaders-kml-mixup-seed1 / knn-digits / digits"] == "700.0"  # same 4-block architecture
    assert rates["eval random-init-tiny-seed2 / knn-digits / digits"] == "700.0"
    assert rates["eval random-init / knn-digits / digits"] == "?"  # 12 blocks: not measured here


def test_dry_run_prices_embedding_at_the_rate_measured_in_the_encoders_precision(tmp_path):
    """A GPU measured the architecture in bfloat16 and a CPU in float32 (a row without a
    precision): the bfloat16 instance gets the GPU's rate, the float32 instance of the
    same architecture the CPU's, never the bfloat16 one."""
    (tmp_path / "leaderboard").mkdir()
    arch = "vit_small_patch16_224 224px/16"
    state = {
        "embed (GPU)": {"rows": [{"encoder": "random-init-vit-s16", "arch": arch, "precision": "bfloat16", "images_per_s": 13000.0}]},
        "embed": {"rows": [{"encoder": "random-init-vit-s16", "arch": arch, "images_per_s": 21.0}]},
    }
    (tmp_path / "leaderboard" / "performance.json").write_text(json.dumps(state))
    result = cli("run", "--dry-run", "--encoders", "random-init-vit-s16,random-init-vit-s16-bf16", "--tasks", "knn-digits",
                 "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rates = {line.split()[1]: line.split()[-2] for line in result.stdout.splitlines() if line.startswith("eval ")}
    assert rates == {"random-init-vit-s16": "21", "random-init-vit-s16-bf16": "13000"}
