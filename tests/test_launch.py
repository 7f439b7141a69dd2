"""The Slurm launcher (through submitit's local executor) and the dry-run plan."""

from __future__ import annotations

import json

import pytest

from harness.results import ResultStore
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
    from harness.registry import load_registry
    from harness.runner import Runner

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
