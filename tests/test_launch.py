"""The Slurm launcher (through submitit's local executor) and the dry-run plan."""

from __future__ import annotations

import json
import re

import pytest

from harness.cli import main
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
    assert text.startswith("the encoders and tasks given: 3 cells, 0 already in") and "3 to run" in text
    assert "flowers102: MISSING" in text and "HARNESS_TEST_FLOWERS" in text
    # priced all the same (the cluster may hold the data): flowers102 is 2040 images at 1000 images/s: 2.04 s =
    # 0.00057 h; the fake datasets have no published size
    assert "eval const-a / needs-flowers / flowers102" in text
    assert "expected GPU-hours: 0.0 (+ 2 jobs whose image count or throughput is unknown" in text
    assert "of these, 1 cell read a dataset MISSING here (above): a run where it is missing too skips them" in text
    (tmp_path / "flowers").mkdir()
    present = cli("--registry", str(registry), "run", "--dry-run", "--encoders", "const-a", "--tasks", "needs-flowers,quick",
                  "--launcher", "slurm", "--out", str(out), env={"HARNESS_TEST_FLOWERS": str(tmp_path / "flowers")})
    assert "flowers102: present at" in present.stdout and "MISSING" not in present.stdout
    assert not (out / "results.jsonl").exists()
    unpriced = cli("--registry", str(registry), "run", "--dry-run", "--encoders", "const-a", "--tasks", "quick",
                   "--launcher", "slurm", "--out", str(out))
    assert "expected GPU-hours: unknown (2 jobs whose image count or throughput is unknown" in unpriced.stdout
    assert not report.exists()


def plan_rows(stdout: str) -> dict[str, list[str]]:
    """The dry run's job rows by job name: [GPUs, images, images/s, rate from, wall hours]."""
    rows = [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines() if line.startswith(("train ", "eval "))]
    return {row[0]: row[1:] for row in rows}


def test_dry_run_prices_encoders_by_the_measured_rate_of_their_architecture(tmp_path, monkeypatch, capsys):
    """`harness bench` times one encoder per architecture and recipe; the plan prices every
    encoder that shares them (paper profile: 1.3M images x 100 epochs of training)."""
    (tmp_path / "leaderboard").mkdir()
    state = {
        "train (GPU)": {"accelerator": "NVIDIA H200", "rows": [
            {"encoder": "dino-vit-s16-shaders-kml-mixup", "arch": "vit_small_patch16_224 224px/16", "recipe": "paper", "images_per_s": 1000.0}]},
        "embed (GPU)": {"accelerator": "NVIDIA H200", "rows": [
            {"encoder": "random-init-vit-s16", "arch": "vit_small_patch16_224 224px/16", "images_per_s": 5000.0}]},
        "embed": {"rows": [{"encoder": "random-init-tiny", "arch": "vit_tiny_patch16_224 32px/8 depth=4", "images_per_s": 700.0}]},
    }
    (tmp_path / "leaderboard" / "performance.json").write_text(json.dumps(state))
    monkeypatch.chdir(tmp_path)  # the plan reads ./leaderboard/performance.json
    assert main(["run", "--profile", "paper", "--dry-run", "--encoders", "dino-vit-s16-shaders", "--tasks", "knn",
                 "--launcher", "slurm", "--out", str(tmp_path / "out")]) == 0
    rows = plan_rows(capsys.readouterr().out)
    gpus, images, rate, source, hours = rows["train dino-vit-s16-shaders"]
    assert (gpus, images, rate, source) == ("8", str(100 * (1_300_000 // 512) * 512), "1000", "NVIDIA H200")  # 100 epochs of 2539 steps
    assert float(hours) == pytest.approx(int(images) / (1000 * 8) / 3600, abs=0.01)  # 8 GPUs: 4.51 h of wall time
    assert all(row[2:4] == ["5000", "NVIDIA H200"] for name, row in rows.items() if name.startswith("eval "))
    assert main(["run", "--profile", "acceptance", "--dry-run", "--encoders", "dino-tiny-shaders-kml-mixup-seed1,random-init-tiny-seed2,random-init",
                 "--tasks", "knn-digits", "--device", "cpu", "--out", str(tmp_path / "out")]) == 0
    rows = plan_rows(capsys.readouterr().out)
    assert rows["eval dino-tiny-shaders-kml-mixup-seed1 / knn-digits / digits"][2:4] == ["700", "CPU"]  # same 4-block architecture
    assert rows["eval random-init-tiny-seed2 / knn-digits / digits"][2:4] == ["700", "CPU"]
    assert rows["eval random-init / knn-digits / digits"][2:4] == ["?", "not measured on a CPU"]  # 12 blocks: not measured here


def test_dry_run_prices_each_job_at_a_rate_measured_on_its_kind_of_device_and_precision(tmp_path, monkeypatch, capsys):
    """A GPU measured the architecture in bfloat16 and a CPU in float32 (a row without a
    precision). A job on the CPU gets the CPU's float32 rate and none for bfloat16; a job
    on a GPU (a local run on one, or a cluster job asking for one) the GPU's bfloat16 rate
    and none for float32: neither device's figure prices the other's jobs, nor one
    precision's the other's."""
    (tmp_path / "leaderboard").mkdir()
    arch = "vit_small_patch16_224 224px/16"
    state = {
        "embed (GPU)": {"accelerator": "NVIDIA H200", "rows": [
            {"encoder": "random-init-vit-s16", "arch": arch, "precision": "bfloat16", "images_per_s": 13000.0}]},
        "embed": {"rows": [{"encoder": "random-init-vit-s16", "arch": arch, "images_per_s": 21.0}]},
    }
    (tmp_path / "leaderboard" / "performance.json").write_text(json.dumps(state))
    both = ["run", "--dry-run", "--encoders", "random-init-vit-s16,random-init-vit-s16-bf16", "--tasks", "knn-digits",
            "--out", str(tmp_path / "out")]

    monkeypatch.chdir(tmp_path)  # the plan reads ./leaderboard/performance.json

    def rates(*where: str) -> dict[str, list[str]]:
        assert main([*both, *where]) == 0
        return {name.split()[1]: row[2:4] for name, row in plan_rows(capsys.readouterr().out).items()}

    assert rates("--device", "cpu") == {"random-init-vit-s16": ["21", "CPU"], "random-init-vit-s16-bf16": ["?", "not measured on a CPU"]}
    on_a_gpu = {"random-init-vit-s16": ["?", "not measured on a GPU"], "random-init-vit-s16-bf16": ["13000", "NVIDIA H200"]}
    assert rates("--device", "cuda") == on_a_gpu  # a plan only: nothing runs on the device
    assert rates("--launcher", "slurm") == on_a_gpu
    assert rates("--launcher", "slurm", "--embed-rate", "400")["random-init-vit-s16"] == ["400", "--embed-rate"]
