"""The runner through the command line: results, resume after a kill, errors, skips."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from harness.results.store import ResultStore
from helpers import TESTS, cli

REGISTRY = """
plugins: [fake_plugins]
datasets:
  missing-data: {format: imagefolder, root: /nonexistent/harness-test-data, env: HARNESS_TEST_MISSING}
encoders:
  const-a: {plugin: constant}
  const-b: {plugin: constant, params: {variant: 2}}
tasks:
  sleepy: {plugin: sleepy, params: {datasets: [a, b, c, d, e, f], seconds: 0.4}}
  quick: {plugin: sleepy, params: {datasets: [a, b]}}
  slow: {plugin: sleepy, params: {datasets: [a, b, c, d], seconds: 2.5}}
  exploding: {plugin: exploding}
  needs-data: {plugin: needs-data}
profiles:
  default: {encoders: [const-a, const-b], tasks: [quick]}
"""


@pytest.fixture
def registry(tmp_path):
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY)
    return path


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_second_run_recomputes_nothing(tmp_path, registry):
    out = tmp_path / "out"
    log = tmp_path / "calls.log"
    env = {"FAKE_CALL_LOG": str(log)}
    first = cli("--registry", str(registry), "run", "--out", str(out), env=env)
    assert first.returncode == 0, first.stderr
    assert len(log.read_text().splitlines()) == 4  # 2 encoders x 2 datasets
    second = cli("--registry", str(registry), "run", "--out", str(out), env=env)
    assert second.returncode == 0
    assert len(log.read_text().splitlines()) == 4
    assert "0 cells computed, 4 reused" in second.stdout
    forced = cli("--registry", str(registry), "run", "--out", str(out), "--force", env=env)
    assert forced.returncode == 0
    assert len(log.read_text().splitlines()) == 8
    assert (out / "LEADERBOARD.md").read_text().count("const-") >= 2


def test_killed_run_resumes_without_recomputing(tmp_path, registry):
    out = tmp_path / "out"
    log = tmp_path / "calls.log"
    env = {**os.environ, "FAKE_CALL_LOG": str(log), "PYTHONPATH": str(TESTS)}
    args = [sys.executable, "-m", "harness", "--registry", str(registry), "run", "--tasks", "sleepy",
            "--encoders", "const-a", "--out", str(out)]
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not results.exists() or len(results.read_text().splitlines()) < 2):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = read_lines(results)  # valid line by line
    done_before = {r["dataset"] for r in before}
    assert 2 <= len(done_before) < 6
    resumed = cli("--registry", str(registry), "run", "--tasks", "sleepy", "--encoders", "const-a", "--out", str(out),
                  env={"FAKE_CALL_LOG": str(log)})
    assert resumed.returncode == 0, resumed.stderr
    after = read_lines(results)
    assert sorted(r["dataset"] for r in after) == list("abcdef")  # every cell exactly once
    calls = [line.split()[1] for line in log.read_text().splitlines()]
    for dataset in done_before:
        assert calls.count(dataset) == 1, f"finished cell {dataset} was recomputed"


def test_error_cell_is_recorded_and_run_goes_on(tmp_path, registry):
    out = tmp_path / "out"
    result = cli("--registry", str(registry), "run", "--tasks", "exploding,quick", "--encoders", "const-a", "--out", str(out))
    assert result.returncode == 1
    records = {(r.task, r.dataset): r for r in ResultStore(out).read()}
    boom = records[("exploding", "boom")]
    assert boom.status == "error" and "exploded on purpose" in boom.message
    trace = out / "errors" / "exploding__boom__const-a.txt"
    assert "RuntimeError" in trace.read_text()
    assert records[("exploding", "fine")].status == "ok"
    assert records[("quick", "b")].status == "ok"  # cells after the error still ran
    assert "error" in (out / "LEADERBOARD.md").read_text()


def test_missing_dataset_is_skipped_with_the_key_to_set(tmp_path, registry):
    out = tmp_path / "out"
    result = cli("--registry", str(registry), "run", "--tasks", "needs-data", "--encoders", "const-a", "--out", str(out))
    assert result.returncode == 0
    (record,) = ResultStore(out).read()
    assert record.status == "skipped"
    assert "datasets.missing-data.root" in record.message and "HARNESS_TEST_MISSING" in record.message
    assert "skipped" in (out / "LEADERBOARD.md").read_text()


def test_second_concurrent_run_is_refused(tmp_path, registry):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    args = [sys.executable, "-m", "harness", "--registry", str(registry), "run", "--tasks", "slow",
            "--encoders", "const-a", "--out", str(out)]
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (out / "results.jsonl").exists():
            time.sleep(0.05)
        second = cli("--registry", str(registry), "run", "--tasks", "slow", "--encoders", "const-a", "--out", str(out))
        assert second.returncode == 2
        assert "another harness run" in second.stderr
    finally:
        first.wait(timeout=120)
    assert len(read_lines(out / "results.jsonl")) == 4


def test_unknown_encoder_exits_2_before_any_work(tmp_path, registry):
    out = tmp_path / "out"
    result = cli("--registry", str(registry), "run", "--encoders", "const-c", "--tasks", "quick", "--out", str(out))
    assert result.returncode == 2
    assert "const-a" in result.stderr and "Did you mean" in result.stderr
    assert not (out / "results.jsonl").exists()


def test_torn_last_line_is_ignored_and_repaired(tmp_path, registry):
    out = tmp_path / "out"
    assert cli("--registry", str(registry), "run", "--out", str(out)).returncode == 0
    results = out / "results.jsonl"
    complete = results.read_text()
    results.write_text(complete + '{"task": "quick", "dataset"')  # a write cut short
    assert len(ResultStore(out).read()) == 4
    assert cli("--registry", str(registry), "run", "--out", str(out), "--encoders", "const-a", "--tasks", "sleepy").returncode == 0
    parsed = read_lines_lenient(results)
    assert parsed["bad"] == 1 and parsed["good"] == 4 + 6


def read_lines_lenient(path):
    good = bad = 0
    for line in path.read_text().splitlines():
        try:
            json.loads(line)
            good += 1
        except json.JSONDecodeError:
            bad += 1
    return {"good": good, "bad": bad}
