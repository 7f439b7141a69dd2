"""`harness bench`: run the stages and write their throughputs to PERFORMANCE.md.

Stages, one module each, cheapest first: generators (images/s per generator instance and
size), embed (images/s per encoder), train (training images/s of trainable encoders),
memory (kNN classification and privacy-audit queries/s against memory size),
end-to-end (a profile run from scratch, compared with the committed results) and
profile (the operators that take the time of training and of classification). What is
measured, and at what scale, is the profile's (`bench` in registry.yaml, else
`default`; `--profile` picks another, e.g. `device` for one GPU). Each stage's rows are
kept in `performance.json` beside the report, under the stage's name, with " (GPU)"
appended when measured on one, so a GPU run keeps the CPU's and benchmarking one stage
keeps the others'. Every ratio compares two implementations measured side by side in
the same run: ours against the reference design (pre-rendered JPEGs, CPU k-means,
DINO's per-image data path, brute-force leave-one-out, faiss on the CPU).

A stage yields its rows as it measures them, and each is written at once: a stage
stopped by its time limit (`--time-limit`), or killed, keeps the rows it measured, its
entry marked `cut_off`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from harness.bench.embed import bench_embed
from harness.bench.endtoend import ABSOLUTE_TOLERANCE, RELATIVE_TOLERANCE, bench_end_to_end
from harness.bench.generators import bench_generators
from harness.bench.memory import bench_memory
from harness.bench.profiling import OPERATORS_SHOWN, bench_profile
from harness.bench.targets import GPU_SUFFIX, TARGETS, target_rows
from harness.bench.timing import StageTimeLimit
from harness.bench.train import bench_train
from harness.cache import atomic_write
from harness.device import default_device
from harness.errors import UnknownNameError
from harness.version import __version__

from harness.config.schema import BenchSpec, TargetSpec

if TYPE_CHECKING:
    from harness.config.schema import ProfileSpec
    from harness.config.registry import Registry

Stage = Callable[["Registry", "ProfileSpec", bool, str], Iterator[dict[str, Any]]]
STAGES: dict[str, Stage] = {
    "generators": bench_generators,
    "embed": bench_embed,
    "train": bench_train,
    "memory": bench_memory,
    "end-to-end": bench_end_to_end,
    "profile": bench_profile,
}
BENCH_PROFILE = "bench"  # the profile naming what to measure, when the registry has one
UNFINISHED = "the stage did not finish (killed, or it failed)"  # the mark of a stage's rows until it ends


class TimeLimit:
    """A context in which `StageTimeLimit` is raised in this (the main) thread once
    `seconds` have passed (None: never); `reached` says whether it was."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.reached = False
        self._previous: Any = None

    def _expire(self, signum: int, frame: Any) -> None:
        self.reached = True
        raise StageTimeLimit(f"the stage's time limit of {self.seconds:g} s came first")

    def __enter__(self) -> TimeLimit:
        if self.seconds is not None:
            self._previous = signal.signal(signal.SIGALRM, self._expire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.seconds is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous)


def quick_scale(spec: BenchSpec) -> BenchSpec:
    """`--quick`: the profile's measurements at smoke-test sizes."""
    return spec.model_copy(update={
        "sizes": [min(spec.sizes)], "embed_images": min(spec.embed_images, 16), "compile": False, "train_steps": 2,
        "memory_rows": [2_000, 10_000], "memory_queries": min(spec.memory_queries, 200),
    })


def accelerator_name(device: str) -> str:
    from harness.results.manifest import machine

    return str(machine(device).get("gpu", "CPU"))


def machine_description(device: str) -> str:
    import torch

    from harness.results.manifest import machine

    described = machine(device)
    if "gpu" in described:
        accelerator = f"{described['gpu']}, driver {described.get('driver') or 'unknown'}, CUDA {described['cuda']}"
    else:
        accelerator = f"CPU only, {described['torch_threads']} torch threads"
    return (
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores; {accelerator}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, harness {__version__}"
    )


STAGE_NOTES = {
    "generators": (
        "Reference: the released pipeline's design, measured on the same images in one worker process "
        "per core (`reference_processes`), as a data loader runs it: decoding pre-rendered JPEGs (quality 95), "
        "and for K-Means Leaves generators decoding the base images and running KML per image on the CPU "
        "(numpy.unique and the released 2-means in numpy). Rows without `reference_processes` ran it on one thread per "
        "core, on which a reference holding the GIL (KML's numpy) gets about one core's rate."
    ),
    "embed": (
        "FLOPs are counted by torch. On a GPU the limit is the card's peak in the encoder's `precision` "
        "(bfloat16: the dense tensor-core peak; float32: without TF32, as the forward pass computes it) divided "
        "by them. The module alone computes in the same precision. "
        "A trained encoder embeds as fast as its architecture at random init."
    ),
    "train": (
        "Reference for the data path: DINO's own loader design (JPEG decode and per-image PIL/"
        "torchvision multi-crop in one worker process per core, `reference_processes`; rows without it ran "
        "it on one thread per core, about one core's rate) on the same images. DINO's published "
        "ViT-S/16 training runs at about 100 images/s per V100; compare with it on a GPU only. "
        "`model_alone`: steps on a batch in memory before the data workers start; `data_alone`: the workers' "
        "rate with nothing else running (after the eager steps, what they held ready taken, a batch of each "
        "timed); `taking_turns`: 1 / (1 / model alone + 1 / data alone), end to end where the two share a "
        "device and cannot run at once (a figure above it ran partly on batches made before it was timed); `compiled`, "
        "`compiled_model`: end to end (on the same workers) and the model alone (once they stop) under "
        "torch.compile (the profile's `bench.compile`), after a first step that compiles (`compile_s`). `one_step`: one batch's loss "
        "before and after a step on it, the teacher and centre put back, the optimiser's moments cleared "
        "(DINO's loss "
        "first rises while its centre settles, so the first and last losses of a short run do not "
        "show whether it learns)."
    ),
    "memory": (
        "Reference: brute-force leave-one-out (timed on sampled rows, extrapolated); on a GPU, "
        "faiss on the CPU over the same rows (a sample of the queries), whose neighbours must be identical."
    ),
    "end-to-end": (
        f"A profile run from scratch here, compared with the committed results: values agree within "
        f"max({ABSOLUTE_TOLERANCE:g}, {RELATIVE_TOLERANCE:g} x |committed|) in the metric's units. "
        "Encoders trained in the run are listed but not held to it (their training ran on other kernels)."
    ),
    "profile": (
        "Where the time goes. Training steps on a batch in memory (no data workers): torch operators by self "
        "time (on a GPU, the time of the kernels each launched); the first "
        "row's share is how busy the device was over `wall_ms`: on a GPU the same steps' wall time without the "
        "profiler (`profiled_wall_ms` is that with it, lengthened by the profiler's own work), on a CPU, whose "
        "operators' times include that work, the profiled one; a first row without `wall_ms` took its share over "
        "the profiled wall time. Generating: first the parts the "
        "generator counts itself (each a share of one call's wall time; \"a > b\" is part of \"a\"), then the "
        f"torch operators of the same call, where they took at least {OPERATORS_SHOWN:.0%} of it (busy share over that call's wall "
        "time; on a GPU the kernels' time), then Python "
        "functions by own time (cProfile; GL rendering runs on a thread of its own, seen as a wait). "
        "Classifying and auditing: Python functions by own time (the memory's worker threads, "
        "seen as the main thread's wait for them)."
    ),
    TARGETS: (
        "The profile's `bench.targets` (registry.yaml): each figure beside its floor and aim, with the "
        "card it was measured on (stages may come from different runs). What limits it: "
        "`fraction_of_bf16_limit` where its row has that limit, and `where_time_goes`, the profile "
        "stage's split of the same work (eager training steps on a batch in memory, the parts and the torch "
        "operators of one generator call, the functions of one classification or audit)."
    ),
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
    targets_first = sorted(state, key=lambda stage: not stage.startswith(TARGETS))
    for stage in targets_first:
        entry = state[stage]
        lines += [f"## {stage}", "", f"_measured {entry['date']} on {entry['machine']}_", ""]
        if entry.get("cut_off"):
            lines += [f"**Cut off:** {entry['cut_off']}; the rows below are those it measured.", ""]
        note = STAGE_NOTES.get(stage.removesuffix(GPU_SUFFIX))
        if note:
            lines += [note, ""]
        rows = entry["rows"]
        if rows:
            headers = list(dict.fromkeys(k for row in rows for k in row))
            lines.append(tabulate([[row.get(h, "") for h in headers] for row in rows], headers=headers, tablefmt="github"))
        else:
            lines.append("(nothing to measure in this registry)")
        lines.append("")
    return "\n".join(lines)


def run_benchmarks(
    registry: Registry, stages: list[str], report: Path, quick: bool = False, device: str | None = None,
    profile: str | None = None, time_limit_s: float | None = None,
) -> Path:
    """Run the benchmark `stages` (default: all) on the generators and encoders of
    `profile` (default: the `bench` profile, else `default`) and write `report` after
    every row. With `time_limit_s`, each stage stops after that many seconds and keeps
    the rows it measured."""
    device = device or default_device()
    chosen_profile = registry.profile(profile or (BENCH_PROFILE if BENCH_PROFILE in registry.config.profiles else "default"))
    chosen = stages or [
        s for s in STAGES if s != "profile" and (s != "end-to-end" or chosen_profile.bench.end_to_end)
    ]
    for stage in chosen:
        if stage not in STAGES:
            raise UnknownNameError("benchmark stage", stage, list(STAGES))
    state_path = report.with_name("performance.json")
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if quick:
        chosen_profile = chosen_profile.model_copy(update={"bench": quick_scale(chosen_profile.bench)})
    suffix = GPU_SUFFIX if device.startswith("cuda") else ""
    machine, accelerator = machine_description(device), accelerator_name(device)

    def save(stage: str, rows: list[dict[str, Any]], cut_off: str | None) -> None:
        state[stage + suffix] = {
            "rows": rows,
            "machine": machine,
            "accelerator": accelerator,
            "date": _dt.date.today().isoformat(),
            "quick": quick,
            **({"cut_off": cut_off} if cut_off else {}),
        }
        if chosen_profile.bench.targets:
            state[TARGETS + suffix] = targets_entry(chosen_profile.bench.targets, state, suffix, quick)
        write_report(report, state)  # after each row: a stage stopped or killed keeps the rows it measured

    for stage in chosen:
        rows: list[dict[str, Any]] = []
        began = time.perf_counter()
        limit = TimeLimit(time_limit_s)
        # Left in this order: the stage ends its own way (closed), the alarm is disarmed,
        # then a StageTimeLimit that got this far is swallowed.
        with (
            contextlib.suppress(StageTimeLimit),
            limit,
            contextlib.closing(STAGES[stage](registry, chosen_profile, quick, device)) as measured,
        ):
            for row in measured:
                rows.append(row)
                save(stage, rows, UNFINISHED)
                if len(rows) == 1 or row_label(row) != row_label(rows[-2]):
                    # where a stage's time goes, in the log of a run that may be cut off
                    print(f"{stage}: {row_label(row)} at {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
                if limit.reached:
                    break
        cut_off = f"stopped by its time limit of {time_limit_s:g} s after {len(rows)} rows" if limit.reached else None
        save(stage, rows, cut_off)
        print(f"{stage}: {len(rows)} rows" + (f" ({cut_off})" if cut_off else ""))
    return report


def row_label(row: dict[str, Any]) -> str:
    """What a stage's row measured, in a few words (its identifying fields)."""
    fields = ("encoder", "generator", "size", "memory", "work")
    return " ".join(str(row[field]) for field in fields if field in row) or "a row"


def targets_entry(targets: list[TargetSpec], state: dict[str, Any], suffix: str, quick: bool) -> dict[str, Any]:
    """The targets section: a row per target, dated by its latest measurement (stages may
    come from different runs), today's date where none is measured yet."""
    rows = target_rows(targets, state, suffix)
    dates = [row["date"] for row in rows if row.get("date")]
    return {"rows": rows, "machine": "the card each row names", "date": max(dates, default=_dt.date.today().isoformat()), "quick": quick}


def write_report(report: Path, state: dict[str, Any]) -> None:
    report.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(report.with_name("performance.json"), lambda tmp: tmp.write_text(json.dumps(state, indent=1)))
    atomic_write(report, lambda tmp: tmp.write_text(render_report(state)))


def merge_reports(report: Path, other: Path, targets: list[TargetSpec] | None = None) -> Path:
    """Add the stages of another run's performance.json (a GPU machine's) to `report`'s,
    replacing those of the same name, re-check `targets` against the GPU stages and
    re-render `report`."""
    from harness.errors import HarnessError

    state_path = report.with_name("performance.json")
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    try:
        incoming = json.loads(Path(other).read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"--merge: cannot read {other} as a performance.json ({exc})") from None
    if not isinstance(incoming, dict) or not all(isinstance(v, dict) and "rows" in v for v in incoming.values()):
        raise HarnessError(f"--merge: {other} is not a performance.json written by `harness bench`")
    state.update(incoming)
    if targets:
        state[TARGETS + GPU_SUFFIX] = targets_entry(targets, state, GPU_SUFFIX, quick=False)
    write_report(report, state)
    return report
