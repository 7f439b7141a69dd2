"""The end-to-end stage: a profile run from scratch on this machine (into a temporary
folder), compared value by value with a committed results file, typically the CPU
leaderboard.

Two values of a record (same task, dataset, encoder, metric and parameters) agree when
|ours - committed| <= max(ABSOLUTE_TOLERANCE, RELATIVE_TOLERANCE x |committed|). The
absolute tolerance is one unit of the metric (a percentage point of accuracy): a GPU
embeds in bf16 where a CPU computes in float32, which moves a few test images across a
decision boundary. An encoder trained in the run is trained on this machine's images
and kernels, so its values are listed but not held to the tolerance.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from harness.bench.train import is_trainable
from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.config.schema import ProfileSpec
    from harness.config.registry import Registry

ABSOLUTE_TOLERANCE = 1.0
RELATIVE_TOLERANCE = 0.02


def record_identity(record: dict[str, Any]) -> tuple[str, ...]:
    """What makes two result records the same measurement, whatever machine made them."""
    params = json.dumps(record.get("params", {}), sort_keys=True)
    return (record["task"], record["dataset"], record["encoder"], record["metric"], params)


def read_results(path: Path) -> dict[tuple[str, ...], float]:
    """The `ok` values of a results.jsonl, by `record_identity`."""
    values: dict[tuple[str, ...], float] = {}
    with path.open() as lines:
        for line in lines:
            record = json.loads(line)
            if record.get("status") == "ok" and isinstance(record.get("value"), (int, float)):
                values[record_identity(record)] = float(record["value"])
    return values


def failures(path: Path) -> dict[str, list[str]]:
    """By encoder, the cells that did not end `ok` ("task/dataset: status: message")."""
    out: dict[str, list[str]] = {}
    with path.open() as lines:
        for line in lines:
            record = json.loads(line)
            if record.get("status") != "ok":
                message = f"{record['task']}/{record['dataset']}: {record['status']}: {record.get('message', '')}"[:300]
                if message not in out.setdefault(record["encoder"], []):
                    out[record["encoder"]].append(message)
    return out


def agrees(ours: float, committed: float) -> bool:
    return abs(ours - committed) <= max(ABSOLUTE_TOLERANCE, RELATIVE_TOLERANCE * abs(committed))


OUTSIDE_LISTED = 8  # values outside the tolerance named in an encoder's row, largest difference first


def describe_value(key: tuple[str, ...], ours: float, committed: float) -> str:
    task, dataset, _, metric, params = key
    return f"{task}/{dataset} {metric} {params}: {ours:.4g} vs {committed:.4g}"


def compare(
    ours: dict[tuple[str, ...], float], committed: dict[tuple[str, ...], float], trained: set[str],
    failed: dict[str, list[str]] | None = None,
) -> list[dict[str, Any]]:
    """One row per encoder: records compared, the largest and median |difference|, how
    many agree (`agrees`), the metrics of those that do not and the values themselves
    (`outside`: ours vs committed, the largest differences first), and the cells of the
    run that did not end `ok` (`failed`)."""
    failed = failed or {}
    rows = []
    for encoder in sorted({key[2] for key in ours} | set(failed)):
        keys = [key for key in ours if key[2] == encoder and key in committed]
        problems = failed.get(encoder, [])
        if not keys:
            rows.append({"encoder": encoder, "compared": 0, "not_ok_cells": len(problems),
                         "note": problems[0] if problems else "no committed values to compare with"})
            continue
        differences = [abs(ours[key] - committed[key]) for key in keys]
        worst = keys[differences.index(max(differences))]
        disagreeing = sorted((key for key in keys if not agrees(ours[key], committed[key])),
                             key=lambda key: -abs(ours[key] - committed[key]))
        outside = Counter(key[3] for key in disagreeing)
        listed = [describe_value(key, ours[key], committed[key]) for key in disagreeing[:OUTSIDE_LISTED]]
        if len(disagreeing) > OUTSIDE_LISTED:
            listed.append(f"and {len(disagreeing) - OUTSIDE_LISTED} more")
        rows.append({
            "encoder": encoder,
            "compared": len(keys),
            "agree": sum(agrees(ours[key], committed[key]) for key in keys),
            "max_abs_difference": round(max(differences), 4),
            "median_abs_difference": round(statistics.median(differences), 4),
            "largest_at": describe_value(worst, ours[worst], committed[worst]),
            "disagreeing_metrics": ", ".join(f"{metric} x{count}" for metric, count in outside.most_common()),
            "outside": "; ".join(listed),
            "held_to_tolerance": encoder not in trained,
            "not_ok_cells": len(problems),
            **({"note": problems[0]} if problems else {}),
        })
    return rows


def bench_end_to_end(registry: Registry, profile: ProfileSpec, quick: bool, device: str) -> Iterator[dict[str, Any]]:
    """Run the profile named by `bench.end_to_end` on `device` (with --quick, only its
    encoders that need no training, on its first task) and compare with `bench.compare_with`:
    one encoder at a time, those that train last, a row as each ends (a stage stopped by
    its time limit keeps the encoders it compared)."""
    from harness.runner.cells import Runner

    spec = profile.bench
    if spec.end_to_end is None:
        return
    committed_path = Path(spec.compare_with)
    if not committed_path.exists():
        raise HarnessError(f"bench.compare_with: {committed_path} does not exist (run from the project's root, or set the path)")
    committed = read_results(committed_path)
    target = registry.profile(spec.end_to_end)
    trained = {n for n in target.encoders if is_trainable(registry, n)}
    encoders = sorted((n for n in target.encoders if not (quick and n in trained)), key=lambda n: n in trained)
    tasks = target.tasks[:1] if quick else target.tasks
    with tempfile.TemporaryDirectory(prefix="harness-end-to-end-") as out:
        runner = Runner(registry, out_dir=Path(out), device=device, progress=False)
        results = Path(out) / "results.jsonl"
        for encoder in encoders:
            began = time.perf_counter()
            runner.compute(runner.select(encoders=[encoder], tasks=tasks, generators=[]))
            seconds = time.perf_counter() - began
            if not results.exists():
                continue
            ours = {key: value for key, value in read_results(results).items() if key[2] == encoder}
            failed = {name: cells for name, cells in failures(results).items() if name == encoder}
            for row in compare(ours, committed, trained, failed):
                yield {**row, "profile": spec.end_to_end, "run_s": round(seconds, 1)}
