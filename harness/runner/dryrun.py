"""`harness run --dry-run`: the plan, the jobs, the data it reads, and what it will cost.

Costs come from the throughputs that `harness bench` measured (`performance.json` beside
the report) on the kind of device each job runs on (a GPU for a cluster job that asks
for one; the run's device for a local run), or that the user gives; image counts of
real datasets are their published sizes (train + evaluation splits).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from harness.bench.targets import GPU_SUFFIX
from harness.errors import DatasetUnavailable, HarnessError
from harness.kinds import Encoder
from harness.runner.cells import Plan, Runner

if TYPE_CHECKING:
    from harness.config.loading import RegisteredFormat
    from harness.config.schema import DatasetSpec

# Images embedded per dataset (memory + queries) at the published split sizes.
PUBLISHED_IMAGES = {
    "imagenet": 1_281_167 + 50_000,
    "flowers102": 1_020 + 1_020,
    "cub200": 5_994 + 5_794,
    "food101": 75_750 + 25_250,
    "nights": 3 * 20_019,
    "coco": 5_000,
    "voc": 1_464 + 1_449,
    "ade20k": 20_210 + 2_000,
    "medmnist": 100_000,  # a MedMNIST dataset not listed below
    # MedMNIST v2 by flag (train + val + test)
    "pathmnist": 107_180,
    "chestmnist": 112_120,
    "dermamnist": 10_015,
    "octmnist": 109_309,
    "pneumoniamnist": 5_856,
    "retinamnist": 1_600,
    "breastmnist": 780,
    "bloodmnist": 17_092,
    "tissuemnist": 236_386,
    "organamnist": 58_850,
    "organcmnist": 23_660,
    "organsmnist": 25_221,
    # bundled with installed packages (docs/tasks.md)
    "digits": 1_257 + 540,
    "lfw-faces": 100 + 100,
    "textures": 896 + 448,
}


def _signature(on_gpu: bool, stage: str, measured: str, detail: str | None) -> str:
    """The key of a measured rate: the kind of device, the stage, an encoder's name or
    `architecture`, and what else the rate depends on (embedding: the `precision`;
    training: the recipe)."""
    return f"{'gpu' if on_gpu else 'cpu'}:{stage}:{measured}:{detail}"


def _throughputs(report: Path) -> dict[str, tuple[float, str]]:
    """images/s from performance.json, each with what measured it (the GPU's name, or
    "CPU"), keyed by `_signature` of the encoder's name and of its `architecture`, so
    that encoders sharing them share a measurement. A row without a precision computed
    in float32."""
    state_path = report.with_name("performance.json")
    if not state_path.exists():
        return {}
    state = json.loads(state_path.read_text())
    out: dict[str, tuple[float, str]] = {}
    for stage in ("embed", "train"):
        for on_gpu in (True, False):
            section = state.get(stage + GPU_SUFFIX if on_gpu else stage, {})
            where = (section.get("accelerator") or "GPU") if on_gpu else "CPU"
            for row in section.get("rows", []):
                if isinstance(row.get("images_per_s"), (int, float)):
                    detail = row.get("recipe") if stage == "train" else row.get("precision", "float32")
                    for measured in (row["encoder"], row.get("arch")):
                        if measured:
                            out.setdefault(_signature(on_gpu, stage, measured, detail), (float(row["images_per_s"]), where))
    return out


def _hub_dataset_status(name: str, options: dict[str, Any]) -> str:
    """A plan's line for a dataset of `options.hub`: whether the local hub cache holds its
    pinned revision (nothing is fetched)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    if not options.get("revision"):
        return f"MISSING: datasets.{name}.options.hub needs options.revision (a commit hash)"
    where = f"hub dataset {options['hub']} at {options['revision']}"
    try:
        snapshot = snapshot_download(repo_id=options["hub"], repo_type="dataset", revision=str(options["revision"]), local_files_only=True)
    except HFValidationError as exc:
        return f"MISSING: datasets.{name}.options.hub: {exc}"
    except LocalEntryNotFoundError:
        offline = ", but HF_HUB_OFFLINE is set: MISSING" if os.environ.get("HF_HUB_OFFLINE") else ""
        return f"{where}: not in the local hub cache; the run downloads it{offline}"
    return f"{where}, in the local hub cache: {snapshot}"


def dataset_status(name: str, spec: DatasetSpec, formats: Mapping[str, RegisteredFormat]) -> str:
    """Where dataset `name` is read from, or why it cannot be: its root, the package that
    ships it, or the hub revision in the local cache (nothing is fetched). A format
    among the registry's `formats` that lists the files a dataset reads (`files`) is
    asked whether those are there (`RegisteredFormat.locate`: a MedMNIST root may hold
    other sizes only, a webdataset root may be a pattern)."""
    if spec.format == "huggingface" and spec.options.get("hub"):
        return _hub_dataset_status(name, spec.options)
    if not (spec.root or spec.env):
        from harness.datasets.bundled import BUNDLED_PACKAGES

        return f"bundled ({spec.format})" if spec.format in BUNDLED_PACKAGES else f"made by its reader ({spec.format}), no files"
    try:
        registered = formats.get(spec.format)
        root = registered.locate(name, spec) if registered is not None else spec.resolved_root(name)
        return f"present at {root}"
    except DatasetUnavailable as exc:
        return f"MISSING: {exc}"
    except HarnessError as exc:
        return f"MISCONFIGURED: {exc}"


def describe_plan(
    runner: Runner,
    plan: Plan,
    launcher: str,
    report: Path = Path("leaderboard/PERFORMANCE.md"),
    embed_images_per_s: float | None = None,
    train_images_per_s: float | None = None,
) -> str:
    from tabulate import tabulate

    registry = runner.registry
    todo, reused = runner.pending(plan)
    measured = _throughputs(report)
    done = len({r.cell_key for r in reused})
    selection = f"profile {plan.profile}" if plan.profile is not None else "the encoders and tasks given"
    lines = [f"{selection}: {len(todo) + done} cells, {done} already in {runner.store.path}, {len(todo)} to run"]
    if plan.generators:
        lines.append(f"generator grids: {', '.join(plan.generators)}")
    lines.append("")

    datasets: dict[str, str] = {}
    for cell in todo:
        spec = registry.config.datasets.get(cell.dataset)
        datasets[cell.dataset] = "built by the task" if spec is None else dataset_status(cell.dataset, spec, registry.plugins.formats)
    lines += ["datasets:"] + [f"  {name}: {status}" for name, status in sorted(datasets.items())] + [""]
    missing = [cell for cell in todo if datasets[cell.dataset].startswith("MISSING")]

    rows: list[list[Any]] = []
    gpu_hours = 0.0
    unknown = 0
    trained: set[str] = set()
    gpus = registry.config.slurm
    local = launcher != "slurm"  # one process here: no GPUs to share the work
    train_gpus, eval_gpus = (1, 1) if local else (gpus.train_gpus, gpus.eval_gpus)
    # Rates measured on the kind of device each job runs on: here, the run's device;
    # on the cluster, a GPU wherever its jobs ask for one.
    here_on_gpu = runner.ctx.device.startswith("cuda")
    train_on_gpu, eval_on_gpu = (here_on_gpu, here_on_gpu) if local else (train_gpus > 0, eval_gpus > 0)
    for cell in todo:
        encoder = cell.encoder
        cost = encoder.training_cost()
        if cost is not None and encoder.name not in trained:
            trained.add(encoder.name)
            images = cost.images
            rate, source = _rate(train_images_per_s, "--train-rate", measured, "train", encoder, train_on_gpu)
            hours = images / (rate * max(1, train_gpus)) / 3600 if images and rate else None  # wall time
            rows.append([f"train {encoder.name}", "local" if local else train_gpus, images or "?", _images_per_s(rate), source, _hours(hours)])
            gpu_hours, unknown = _add(gpu_hours, unknown, hours, train_gpus)
        spec = registry.config.datasets.get(cell.dataset)
        published_as = spec.options.get("flag", cell.dataset) if spec else None  # MedMNIST files are named by flag
        images = (PUBLISHED_IMAGES.get(published_as) or PUBLISHED_IMAGES.get(spec.format)) if spec else None
        rate, source = _rate(embed_images_per_s, "--embed-rate", measured, "embed", encoder, eval_on_gpu)
        hours = images / rate / 3600 if images and rate else None
        rows.append([f"eval {cell.label}", "local" if local else eval_gpus, images or "?", _images_per_s(rate), source, _hours(hours)])
        gpu_hours, unknown = _add(gpu_hours, unknown, hours, eval_gpus)
    headers = ["job", "GPUs", "images", "images/s" if local else "images/s per GPU", "rate from", "wall hours"]
    lines.append(tabulate(rows, headers=headers))
    priced = len(rows) - unknown
    unpriced = (
        f"{unknown} job{'s' if unknown != 1 else ''} whose image count or throughput is unknown; `harness bench` on the kind of device "
        "the jobs run on measures throughputs"
    )
    total = f"{gpu_hours:.1f}" if priced else "unknown"
    if unknown:
        total += f" (+ {unpriced})" if priced else f" ({unpriced})"
    lines += ["", ("expected hours here: " if local else "expected GPU-hours: ") + total]
    if missing:  # priced all the same: the data may be where the jobs run (a cluster's disks), not here
        lines.append(
            f"of these, {len(missing)} cell{'s' if len(missing) != 1 else ''} read a dataset MISSING here (above): "
            "a run where it is missing too skips them"
        )
    return "\n".join(lines)


def _rate(
    given: float | None, flag: str, measured: dict[str, tuple[float, str]], stage: str, encoder: Encoder, on_gpu: bool,
) -> tuple[float | None, str]:
    """The images/s a job is priced at and where that figure comes from: the flag's value,
    else the rate `harness bench` measured for the encoder's name, else its architecture,
    on the kind of device the job runs on (a CPU's rate would make a GPU job hundreds of
    times too long, a GPU's a CPU job as many times too short)."""
    if given:
        return given, flag
    if stage == "train":
        cost = encoder.training_cost()
        detail = cost.recipe if cost else None
    else:
        detail = encoder.precision
    for name in (encoder.name, encoder.architecture):
        found = measured.get(_signature(on_gpu, stage, name, detail)) if name else None
        if found is not None:
            return found
    return None, f"not measured on a {'GPU' if on_gpu else 'CPU'}"


def _images_per_s(rate: float | None) -> str:
    if rate is None:
        return "?"
    return f"{rate:.4g}" if rate < 1000 else f"{rate:.0f}"


def _hours(hours: float | None) -> str:
    return "?" if hours is None else f"{hours:.2f}"


def _add(total: float, unknown: int, hours: float | None, gpus: int) -> tuple[float, int]:
    if hours is None:
        return total, unknown + 1
    return total + hours * max(1, gpus), unknown
