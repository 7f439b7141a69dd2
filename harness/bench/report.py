"""`harness bench`: run the stages and write their throughputs to PERFORMANCE.md.

Stages, one module each: generators (images/s per generator instance and size), embed
(images/s per encoder), train (training images/s of trainable encoders), memory (kNN
classification and privacy-audit queries/s against memory size). The generators and encoders measured
are those of the `bench` profile of registry.yaml (`--profile` picks another). Each
stage's rows are kept in `performance.json` beside the report, so benchmarking one stage
keeps the others'. Every ratio compares two implementations measured side by side in
the same run: ours against the reference design (pre-rendered JPEGs, CPU k-means,
DINO's per-image data path, brute-force leave-one-out).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from harness.bench.embed import bench_embed
from harness.bench.generators import bench_generators
from harness.bench.memory import bench_memory
from harness.bench.train import bench_train
from harness.cache import atomic_write
from harness.device import default_device
from harness.errors import UnknownNameError
from harness.version import __version__

if TYPE_CHECKING:
    from harness.config.schema import ProfileSpec
    from harness.config.registry import Registry

Stage = Callable[["Registry", "ProfileSpec", bool, str], list[dict[str, Any]]]
STAGES: dict[str, Stage] = {
    "generators": bench_generators,
    "embed": bench_embed,
    "train": bench_train,
    "memory": bench_memory,
}
BENCH_PROFILE = "bench"  # the profile naming what to measure, when the registry has one


def machine_description(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        accelerator = torch.cuda.get_device_name(0)
    else:
        accelerator = f"CPU only, {torch.get_num_threads()} torch threads"
    return (
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores; {accelerator}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, harness {__version__}"
    )


STAGE_NOTES = {
    "generators": (
        "Reference: the released pipeline's design, measured on the same images on one thread per "
        "core: decoding pre-rendered JPEGs (quality 95), and for K-Means Leaves generators decoding "
        "the base images and running KML per image on the CPU (numpy.unique, scikit-learn KMeans)."
    ),
    "embed": (
        "FLOPs are counted by torch. On a GPU the bf16 limit is the card's dense bf16 peak divided "
        "by them. A trained encoder embeds as fast as its architecture at random init."
    ),
    "train": (
        "Reference for the data path: DINO's own loader design (JPEG decode and per-image PIL/"
        "torchvision multi-crop, one thread per core) on the same images. DINO's published "
        "ViT-S/16 training runs at about 100 images/s per V100; compare with it on a GPU only."
    ),
    "memory": "Reference: brute-force leave-one-out (timed on sampled rows, extrapolated).",
}


def render_report(state: dict[str, Any]) -> str:
    from tabulate import tabulate

    lines = [
        "# Performance",
        "",
        "Written by `harness bench`. Each section lists the machine it was measured on; ratios",
        "compare implementations measured side by side in the same run.",
        "",
    ]
    for stage, entry in state.items():
        lines += [f"## {stage}", "", f"_measured {entry['date']} on {entry['machine']}_", ""]
        if stage in STAGE_NOTES:
            lines += [STAGE_NOTES[stage], ""]
        rows = entry["rows"]
        if rows:
            headers = list(dict.fromkeys(k for row in rows for k in row))
            lines.append(tabulate([[row.get(h, "") for h in headers] for row in rows], headers=headers, tablefmt="github"))
        else:
            lines.append("(nothing to measure in this registry)")
        lines.append("")
    return "\n".join(lines)


def run_benchmarks(
    registry: Registry, stages: list[str], report: Path, quick: bool = False, device: str | None = None, profile: str | None = None
) -> Path:
    """Run the benchmark `stages` (default: all) on the generators and encoders of
    `profile` (default: the `bench` profile, else `default`) and write `report`."""
    device = device or default_device()
    chosen_profile = registry.profile(profile or (BENCH_PROFILE if BENCH_PROFILE in registry.config.profiles else "default"))
    chosen = stages or list(STAGES)
    for stage in chosen:
        if stage not in STAGES:
            raise UnknownNameError("benchmark stage", stage, list(STAGES))
    state_path = report.with_name("performance.json")
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    for stage in chosen:
        rows = STAGES[stage](registry, chosen_profile, quick, device)
        state[stage] = {
            "rows": rows,
            "machine": machine_description(device),
            "date": _dt.date.today().isoformat(),
            "quick": quick,
        }
        print(f"{stage}: {len(rows)} rows")
        report.parent.mkdir(parents=True, exist_ok=True)  # written after each stage: a crash keeps the others
        atomic_write(state_path, lambda tmp: tmp.write_text(json.dumps(state, indent=1)))
        atomic_write(report, lambda tmp: tmp.write_text(render_report(state)))
    return report
