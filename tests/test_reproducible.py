"""Same command, same thread count: identical values, whatever else the machine does.

A small profile (a random-init ViT and raw pixels; kNN, the linear probe and the privacy
audit on digits) runs in two processes, each with its own cache, one of them beside two
busy processes that compete for the cores. Every value must be equal, bit for bit.
"""

from __future__ import annotations

import json
import subprocess
import sys

from harness.results.store import ResultStore
from helpers import cli

REGISTRY = """
tasks:
  linear-digits: {plugin: linear, params: {datasets: [digits]}}
profiles:
  repro: {encoders: [rgb, random-init-tiny], tasks: [knn-digits, linear-digits, privacy-default]}
"""

BUSY = "import time\nend = time.time() + 600\nwhile time.time() < end:\n    sum(i * i for i in range(10000))\n"


def values(out) -> dict[str, float | None]:
    found = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        record = json.loads(line)
        key = json.dumps([record["encoder"], record["task"], record["dataset"], record["metric"], record["params"]], sort_keys=True)
        found[key] = record["value"]
    return found


def run_profile(tmp_path, name: str, busy: int) -> dict[str, float | None]:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY)
    burners = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
    try:
        done = cli(
            "--registry", str(registry), "run", "--profile", "repro", "--threads", "2", "--out", str(tmp_path / name),
            env={"HARNESS_CACHE": str(tmp_path / f"cache-{name}")},
        )
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert done.returncode == 0, done.stderr
    return values(tmp_path / name)


def test_two_processes_under_different_load_give_identical_values(tmp_path):
    quiet = run_profile(tmp_path, "quiet", busy=0)
    loaded = run_profile(tmp_path, "loaded", busy=2)
    assert len(quiet) > 20
    differing = {k: (quiet[k], loaded.get(k)) for k in quiet if quiet[k] != loaded.get(k)}
    assert not differing, differing
    assert set(loaded) == set(quiet)
    record = next(r for r in ResultStore(tmp_path / "quiet").read() if r.headline)
    assert {"seed", "code_version", "encoder", "task", "device"} <= set(record.keys)
