"""`harness bench`: throughput of each stage on this machine, written to PERFORMANCE.md.

Stages: generators (images/s per generator instance and size), embed (images/s per
encoder), train (training images/s of trainable encoders), memory (kNN classification
and privacy-audit queries/s against memory size). The generators and encoders measured
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
import time
from pathlib import Path
from typing import Any, Callable

from harness import __version__
from harness.cache import atomic_write
from harness.context import RunContext, default_device
from harness.registry import ProfileSpec, Registry

Rows = list[dict[str, Any]]


def best_time(fn: Callable[[], Any], repeats: int, warmup: bool = True) -> float:
    """Best wall time of `repeats` calls (after one untimed warm-up call)."""
    if warmup:
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


# Dense bf16 tensor-core peaks (FLOP/s), for the physical limit of GPU figures.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "V100": 125e12, "L40S": 362e12, "A10": 125e12}


def encode_jpegs(images: Any, quality: int = 95) -> list[bytes]:
    """uint8 images [n, 3, H, W] as JPEG files (quality 95): how a pre-rendered dataset stores them."""
    import io

    from PIL import Image

    blobs = []
    for image in images.permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        blobs.append(buffer.getvalue())
    return blobs


def decode_image(blob: bytes) -> Any:
    """An encoded image file (JPEG, PNG, ...) as a decoded RGB PIL image."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(blob)).convert("RGB")
    image.load()
    return image


def _decode_all(blobs: list[bytes]) -> int:
    for blob in blobs:
        decode_image(blob)
    return len(blobs)


def parallel_rate(work: Callable[[Any], int], jobs: list[Any], workers: int | None = None) -> float:
    """Items/s of running `work` (returning how many items a job made) over `jobs` on
    `workers` threads (default: one per core), the way a data loader's workers share a
    reference pipeline (PIL, numpy and scikit-learn release the GIL in their loops).
    Best of two passes after a warm-up pass."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        items = 0

        def one_pass() -> None:
            nonlocal items
            items = sum(pool.map(work, jobs))

        seconds = best_time(one_pass, repeats=2)
    return items / seconds


def jpeg_decode_rate(images: Any) -> float:
    """images/s of decoding these images from JPEG on one thread per core: the reference
    pipeline's cost per image when a dataset is pre-rendered (disk reads excluded)."""
    blobs = encode_jpegs(images)
    blobs = blobs * max(1, 1024 // len(blobs))  # passes long enough to time
    workers = os.cpu_count() or 1
    return parallel_rate(_decode_all, [blobs[i::workers] for i in range(workers)], workers)


def bench_generators(registry: Registry, profile: ProfileSpec, quick: bool, device: str) -> Rows:
    """images/s per generator instance and size, beside the released pipeline's way of
    making the same images: decoding them from pre-rendered JPEGs, or what the generator's
    `reference_rate` measures (e.g. CPU k-means over decoded base images)."""
    rows = []
    sizes = (64,) if quick else (64, 128, 224)
    decode_rate: dict[int, float] = {}
    for name in profile.generators:
        try:
            generator = registry.create("generator", name)
        except Exception as exc:
            rows.append({"generator": name, "error": str(exc)})
            continue
        for size in sizes:
            n = max(8 if quick else 64, (64 if quick else 256) * 64 * 64 // (size * size))  # 64 programs: at least one pass
            try:
                seconds = best_time(lambda: generator.sample(seed=1, n=n, size=size), repeats=1 if quick else 2)
                rate = n / seconds
                reference = generator.reference_rate(seed=2, n=min(n, 32), size=size)
                if reference is None:
                    if size not in decode_rate:
                        decode_rate[size] = jpeg_decode_rate(generator.sample(seed=2, n=min(n, 64), size=size))
                    reference = ("decode pre-rendered JPEGs", decode_rate[size])
                rows.append({
                    "generator": name, "size": size, "images": n, "images_per_s": round(rate, 1),
                    "reference_pipeline": reference[0], "reference_images_per_s": round(reference[1], 1),
                    "ratio_to_reference": round(rate / reference[1], 2),
                })
            except Exception as exc:
                rows.append({"generator": name, "size": size, "error": f"{type(exc).__name__}: {exc}"})
        generator.close()
    return rows


def flops_per_image(encoder: Any, size: int) -> float | None:
    """Forward FLOPs of one image through the encoder's model (None without a torch model)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = getattr(encoder, "model", None)
    if model is None:
        return None
    parameter = next(model.parameters())
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, 3, size, size, device=parameter.device, dtype=parameter.dtype))
    return float(counter.get_total_flops())


def peak_flops(device: str) -> float | None:
    import torch

    if not (device.startswith("cuda") and torch.cuda.is_available()):
        return None
    name = torch.cuda.get_device_name(0)
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def _is_trainable(registry: Registry, name: str) -> bool:
    spec = registry.spec("encoder", name)
    return bool(registry.plugins.get("encoder", spec.plugin if spec else name).trainable)


def bench_embed(registry: Registry, profile: ProfileSpec, quick: bool, device: str) -> Rows:
    """Embedding images/s of the profile's encoders that need no training (a trained
    encoder embeds as fast as its architecture at random init)."""
    import torch

    rows = []
    for name in [n for n in profile.encoders if not _is_trainable(registry, n)]:
        encoder = registry.create("encoder", name)
        try:
            encoder.prepare(RunContext(registry=registry, device=device))
        except Exception as exc:
            rows.append({"encoder": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        size = int(getattr(encoder, "img_size", 224) or 224)
        n = 64 if quick else (1024 if device.startswith("cuda") else 256)
        images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
        seconds = best_time(lambda: encoder.embed(images), repeats=1 if quick else 3)
        row: dict[str, Any] = {
            "encoder": name, "arch": getattr(encoder, "architecture", None), "input": size, "images": n,
            "images_per_s": round(n / seconds, 1),
        }
        flops = flops_per_image(encoder, size)
        if flops:
            row["gflops_per_image"] = float(f"{flops / 1e9:.4g}")
            peak = peak_flops(device)
            if peak:
                row["bf16_limit_images_per_s"] = round(peak / flops, 0)
                row["fraction_of_limit"] = round(n / seconds * flops / peak, 3)
        rows.append(row)
    return rows


TRAIN_BUDGET_S = 60.0


def bench_train(registry: Registry, profile: ProfileSpec, quick: bool, device: str) -> Rows:
    """Training images/s of the profile's trainable encoders, each measured for about
    `TRAIN_BUDGET_S` seconds (on a CPU at most 64 images per step)."""
    rows = []
    for name in [n for n in profile.encoders if _is_trainable(registry, n)]:
        encoder = registry.create("encoder", name)
        measure = getattr(encoder, "training_throughput", None)
        if measure is None:
            continue
        batch = None if device.startswith("cuda") else min(64, int(getattr(encoder, "cfg", {}).get("train_batch_size", 64)))
        try:
            rows.append({"encoder": name, **measure(
                RunContext(registry=registry, device=device), steps=2 if quick else 20, train_batch_size=batch,
                budget_s=None if quick else TRAIN_BUDGET_S,
            )})
        except Exception as exc:
            rows.append({"encoder": name, "error": f"{type(exc).__name__}: {exc}"})
    return rows


def bench_memory(registry: Registry, profile: ProfileSpec, quick: bool, device: str) -> Rows:
    from harness.unlearning import bench_memory as measure

    return measure(device=device, quick=quick)


STAGES: dict[str, Callable[[Registry, ProfileSpec, bool, str], Rows]] = {
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
    from harness.errors import UnknownNameError

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
