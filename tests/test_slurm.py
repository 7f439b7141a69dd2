"""`harness run --launcher slurm` on a real Slurm cluster (see slurm_cluster.py): cells as
jobs, results merged under the lock, and nothing lost or run twice when a job is cancelled
and the node drained."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import harness
from harness.results.store import Result, ResultStore
from helpers import TESTS, cli
from slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401 (the fixture)

REGISTRY = """
plugins: [fake_plugins]
slurm: {{partition: {partition}, train_gpus: 0, eval_gpus: 0, cpus_per_gpu: 1, mem_gb: 1, eval_time_min: 10}}
encoders:
  const-a: {{plugin: constant}}
  const-b: {{plugin: constant, params: {{variant: 2}}}}
tasks:
  quick: {{plugin: sleepy, params: {{datasets: [a, b]}}}}
  slow: {{plugin: sleepy, params: {{seconds: 6, datasets: [c]}}}}
profiles:
  default: {{encoders: [const-a, const-b], tasks: [quick]}}
  interrupted: {{encoders: [const-a], tasks: [quick, slow]}}
"""


def _registry(folder: Path, cluster: SlurmCluster) -> Path:
    path = folder / "registry.yaml"
    path.write_text(REGISTRY.format(partition=cluster.partition))
    return path


def _run_args(registry: Path, out: Path, profile: str) -> list[str]:
    return ["--registry", str(registry), "run", "--profile", profile, "--launcher", "slurm", "--cluster", "slurm", "--out", str(out)]


@pytest.fixture
def start_run() -> Iterator[Callable[[Path, Path, str, Path], subprocess.Popen]]:
    """Starts `harness run --launcher slurm` in the background, the tests folder importable
    in its jobs; kills what is still running when the test ends."""
    started: list[subprocess.Popen] = []

    def start(registry: Path, out: Path, profile: str, call_log: Path) -> subprocess.Popen:
        pythonpath = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "FAKE_CALL_LOG": str(call_log), "PYTHONPATH": pythonpath}
        started.append(subprocess.Popen([sys.executable, "-m", "harness", *_run_args(registry, out, profile)], env=env,
                                        text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


def _until(condition, what: str, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while not (answer := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)
    return answer


def _calls(call_log: Path) -> list[str]:
    return sorted(call_log.read_text().splitlines()) if call_log.exists() else []


def _values(records: list[Result]) -> list[tuple]:
    return sorted((r.cell_key, r.encoder, r.task, r.dataset, r.metric, r.value, r.status) for r in records)


def _queued(name: str) -> list[tuple[str, str]]:
    answer = subprocess.run(["squeue", "--noheader", f"--name={name}", "--format=%i|%T"], capture_output=True, text=True, check=True)
    return [tuple(line.strip().split("|")) for line in answer.stdout.splitlines()]


def _node(node: str, state: str) -> None:
    subprocess.run(["scontrol", "update", f"nodename={node}", f"state={state}", *(["reason=test"] if state == "drain" else [])], check=True)


@pytest.mark.slow
def test_cells_run_as_slurm_jobs_and_equal_a_local_run(tmp_path, slurm_cluster):
    registry, out, call_log = _registry(tmp_path, slurm_cluster), tmp_path / "out", tmp_path / "calls.log"
    first = cli(*_run_args(registry, out, "default"), env={"FAKE_CALL_LOG": str(call_log)})
    assert first.returncode == 0, first.stdout + first.stderr
    submitted = json.loads((out / "jobs" / "submitted.json").read_text())
    assert len(set(submitted.values())) == 4  # one job per cell
    assert _calls(call_log) == ["const-a a", "const-a b", "const-b a", "const-b b"]
    assert not list((out / "cells").glob("*.jsonl"))  # merged into results.jsonl and removed
    job_script = (out / "jobs" / next(iter(submitted.values()))).glob("*_submission.sh")
    assert f"{shlex.quote(sys.executable)} -u -m submitit" in next(job_script).read_text()  # this interpreter
    local = harness.run(profile="default", out=tmp_path / "local", registry=registry)
    assert _values(ResultStore(out).read()) == _values(local)

    again = cli(*_run_args(registry, out, "default"), env={"FAKE_CALL_LOG": str(call_log)})
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads((out / "jobs" / "submitted.json").read_text()) == submitted  # nothing resubmitted
    assert len(_calls(call_log)) == 4


@pytest.mark.slow
def test_cancelled_job_and_drained_node_lose_and_duplicate_nothing(tmp_path, slurm_cluster, start_run):
    if slurm_cluster.node is None:
        pytest.skip("drains a node: only on the cluster the tests start themselves")
    registry, out, call_log = _registry(tmp_path, slurm_cluster), tmp_path / "out", tmp_path / "calls.log"
    state_file = out / "jobs" / "submitted.json"

    first = start_run(registry, out, "interrupted", call_log)
    _until(lambda: "const-a c" in _calls(call_log), "the slow cell's job to start")
    [(cancelled, _)] = _queued("eval-slow")
    subprocess.run(["scancel", cancelled], check=True)
    output, _ = first.communicate(timeout=60)  # the run ends: the cancelled job will never answer
    assert f"job {cancelled} ended (CANCELLED) without a result" in output, output
    assert sorted(r.dataset for r in ResultStore(out).read()) == ["a", "b"]  # the finished cells were merged
    finished_jobs = {key: job for key, job in json.loads(state_file.read_text()).items() if job != cancelled}

    _node(slurm_cluster.node, "drain")
    second = start_run(registry, out, "interrupted", call_log)
    [(resubmitted, job_state)] = _until(lambda: [job for job in _queued("eval-slow") if job[0] != cancelled], "the resubmission")
    assert job_state == "PENDING"  # nowhere to run
    second.kill()  # the submitting process dies; its job stays queued
    second.wait()

    third = start_run(registry, out, "interrupted", call_log)
    time.sleep(3)  # let it find the queued job before the node comes back
    _node(slurm_cluster.node, "resume")
    output, _ = third.communicate(timeout=90)
    assert third.returncode == 0, output

    state = json.loads(state_file.read_text())
    assert {key: job for key, job in state.items() if job != resubmitted} == finished_jobs  # never resubmitted
    assert sorted(path.name for path in (out / "jobs").iterdir() if path.is_dir()) == sorted([*finished_jobs.values(), cancelled, resubmitted])
    records = ResultStore(out).read()
    assert sorted(r.dataset for r in records) == ["a", "b", "c"] and {r.status for r in records} == {"ok"}
    assert _calls(call_log) == ["const-a a", "const-a b", "const-a c", "const-a c"]  # c: cancelled, then once more


def test_job_states_come_from_squeue_and_only_live_states_count(tmp_path, monkeypatch):
    """Without accounting sacct fails, so states come from squeue; a job squeue has forgotten
    (or never knew: "Invalid job id") is over, and so is every final state."""
    from harness.runner.launch import ALIVE_STATES, slurm_job_states

    squeue = tmp_path / "squeue"
    squeue.write_text('#!/bin/sh\ncase "$*" in *--jobs=404*) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1;; esac\n'
                      'printf "7|PENDING\\n8|NODE_FAIL\\n9|CANCELLED by 0\\n"\n')
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert slurm_job_states(["7", "8", "9", "10"]) == {"7": "PENDING", "8": "NODE_FAIL", "9": "CANCELLED by 0"}
    assert slurm_job_states(["404"]) == {}
    assert {"PENDING", "RUNNING", "REQUEUED", "COMPLETING"} <= ALIVE_STATES
    assert not {"CANCELLED", "NODE_FAIL", "FAILED", "TIMEOUT", "PREEMPTED", "OUT_OF_MEMORY", "UNKNOWN"} & ALIVE_STATES
