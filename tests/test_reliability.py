"""Runs survive kills and caches survive torn files (same numbers from the same command: test_reproducible.py)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest

from harness.cache import cached_arrays, save_arrays
from harness.results.store import ResultStore
from helpers import TESTS, cli

REGISTRY = """
plugins: [fake_plugins]
encoders:
  const-a: {plugin: constant}
  const-b: {plugin: constant, params: {variant: 2}}
  rgb-small: {plugin: rgb, params: {size: 8}}
tasks:
  sleepy: {plugin: sleepy, params: {datasets: [a, b, c, d, e, f, g, h], seconds: 0.15}}
  knn-digits: {plugin: knn, params: {datasets: [digits], ks: [1, 5, 20]}}
profiles:
  default: {encoders: [const-a, const-b, rgb-small], tasks: [sleepy, knn-digits]}
"""


def comparable(out):
    """Cells and values, without timings."""
    rows = ResultStore(out).read()
    return sorted(
        (r.cell_key, r.task, r.dataset, r.encoder, r.metric, json.dumps(r.params, sort_keys=True), r.status, r.value)
        for r in rows
    )


@pytest.mark.slow
def test_random_sigkills_lose_nothing(tmp_path):
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY)
    reference = tmp_path / "reference"
    assert cli("--registry", str(registry), "run", "--out", str(reference), env={"HARNESS_CACHE": str(tmp_path / "c1")}).returncode == 0

    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "HARNESS_CACHE": str(tmp_path / "c2")}
    args = [sys.executable, "-m", "harness", "--registry", str(registry), "run", "--out", str(out)]
    rng = random.Random(0)
    kills = 0
    for attempt in range(6):  # kill at random points, later and later, then let it finish
        process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=rng.uniform(1.0, 3.0) + 0.5 * attempt)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
            ResultStore(out).read()  # readable after every kill
    final = cli("--registry", str(registry), "run", "--out", str(out), env={"HARNESS_CACHE": str(tmp_path / "c2")})
    assert final.returncode == 0, final.stderr
    assert kills >= 3
    lines = (out / "results.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # valid line by line
    assert comparable(out) == comparable(reference)  # same cells, same values, nothing twice


@pytest.mark.parametrize(
    "stop, status, said", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")], ids=["SIGINT", "SIGTERM"]
)
def test_ctrl_c_keeps_the_finished_cells_in_a_manifest_and_the_leaderboard_and_the_rerun_computes_the_rest(tmp_path, stop, status, said):
    """Ctrl-C, or SIGTERM (`kill`, `timeout`, a scheduler's time limit), while the second cell runs."""
    import time

    registry = tmp_path / "registry.yaml"
    registry.write_text(
        "plugins: [fake_plugins]\nencoders:\n  const-a: {plugin: constant}\n"
        "tasks:\n  sleepy: {plugin: sleepy, params: {datasets: [a, b, c, d], seconds: 1.0}}\n"
    )
    out, log = tmp_path / "out", tmp_path / "calls.log"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "HARNESS_CACHE": str(tmp_path / "cache"), "FAKE_CALL_LOG": str(log)}
    command = [sys.executable, "-m", "harness", "--registry", str(registry), "run", "--encoders", "const-a", "--tasks", "sleepy", "--out", str(out)]
    # a shell starts background jobs with SIGINT ignored, and Python then keeps ignoring it: restore the default
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while len(log.read_text().splitlines() if log.exists() else []) < 2:  # cell a ended, cell b is sleeping
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == status, stderr
    assert f"{said}; the cells that finished are in results.jsonl and the leaderboard" in stderr
    assert "Traceback" not in stderr
    assert {r.dataset for r in ResultStore(out).read()} == {"a"}
    (manifest,) = (out / "runs").glob("*.json")
    written = json.loads(manifest.read_text())
    assert written["interrupted"] is True and [cell["dataset"] for cell in written["computed"]] == ["a"]
    board = (out / "LEADERBOARD.md").read_text()
    assert "It was interrupted: the same command (without --force) computes the cells it did not reach" in board, board
    assert "| white-box | const-a   |   0 |" in board  # the finished cell's value

    rerun = cli("--registry", str(registry), "run", "--encoders", "const-a", "--tasks", "sleepy", "--out", str(out),
                env={"HARNESS_CACHE": str(tmp_path / "cache"), "FAKE_CALL_LOG": str(log)})
    assert rerun.returncode == 0, rerun.stderr
    assert log.read_text().split() == ["const-a", "a", "const-a", "b", "const-a", "b", "const-a", "c", "const-a", "d"]
    newest = json.loads(max((out / "runs").glob("*.json")).read_text())
    assert "interrupted" not in newest and len(newest["reused"]) == 1 and len(newest["computed"]) == 3
    assert "It was interrupted" not in (out / "LEADERBOARD.md").read_text()


@pytest.mark.parametrize("force", [False, True])
def test_the_message_after_ctrl_c_says_how_to_go_on(tmp_path, monkeypatch, capsys, force):
    """Ctrl-C in the second cell (with or without --force), or after every cell while the
    leaderboard is drawn: each message is true of what was saved."""
    from harness.cli import main
    from harness.runner import cells

    monkeypatch.syspath_prepend(str(TESTS))
    registry = tmp_path / "registry.yaml"
    registry.write_text("plugins: [fake_plugins]\nencoders:\n  const-a: {plugin: constant}\ntasks:\n  sleepy: {plugin: sleepy, params: {datasets: [a, b, c]}}\n")
    command = ["--registry", str(registry), "run", "--encoders", "const-a", "--tasks", "sleepy", "--out", str(tmp_path / "out")]
    command += ["--force"] if force else []
    real_run_cell, started = cells.run_cell, []

    def stopped_at_b(ctx, cell, prepared=None):
        started.append(cell.dataset)
        if cell.dataset == "b":
            raise KeyboardInterrupt
        return real_run_cell(ctx, cell, prepared)

    monkeypatch.setattr(cells, "run_cell", stopped_at_b)
    assert main(command) == 130
    rerun = "the same command without --force" if force else "the same command"
    assert capsys.readouterr().err.endswith(f"interrupted; the cells that finished are in results.jsonl and the leaderboard, and {rerun} computes the rest\n")
    monkeypatch.setattr(cells, "run_cell", real_run_cell)
    if force:
        return

    def interrupted_drawing(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("harness.results.leaderboard.render_leaderboard", interrupted_drawing)
    assert main(command) == 130
    err = capsys.readouterr().err
    assert err.endswith(f"interrupted; every cell had ended and is in results.jsonl, but LEADERBOARD.md may be out of date: "
                        f"`harness leaderboard --out {tmp_path / 'out'}` renders it\n"), err
    assert {r.dataset for r in ResultStore(tmp_path / "out").read()} == {"a", "b", "c"}


def test_torn_cache_file_is_recomputed(tmp_path):
    path = tmp_path / "features.npz"
    save_arrays(path, features=np.arange(6.0).reshape(2, 3))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # torn by a crash of another writer
    calls = []

    def compute():
        calls.append(1)
        return {"features": np.ones((2, 3))}

    assert np.array_equal(cached_arrays(path, compute)["features"], np.ones((2, 3)))
    assert calls == [1]
    assert np.array_equal(cached_arrays(path, compute)["features"], np.ones((2, 3)))
    assert calls == [1]  # now valid: read, not recomputed


def test_names_cannot_escape_the_output_directory(tmp_path):
    registry = tmp_path / "registry.yaml"
    registry.write_text("encoders:\n  ../../escape: {plugin: rgb}\n")
    result = cli("--registry", str(registry), "list")
    assert result.returncode == 2
    assert "encoders" in result.stderr and "../../escape" in result.stderr


class _RunsCode:
    """A pickle payload that would run a shell command when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_checkpoint_that_would_execute_code_is_refused(tmp_path):
    import pickle

    import harness
    from harness.errors import HarnessError

    marker = tmp_path / "executed"
    checkpoint = tmp_path / "evil.pth"
    checkpoint.write_bytes(pickle.dumps({"model": _RunsCode(marker)}))
    encoder = harness.get_encoder("pretrained", arch="vit_tiny_patch16_224", img_size=32, patch_size=4, checkpoint=str(checkpoint))
    with pytest.raises(HarnessError) as info:
        encoder.prepare()
    assert "evil.pth" in str(info.value)
    assert not marker.exists()
