"""`harness bench`: throughput of each stage on this machine, written to PERFORMANCE.md.

Stages: generators (images/s per generator instance and size), embed (images/s per
encoder), train (training images/s of trainable encoders), memory (kNN classification
and privacy-audit queries/s against memory size). Each stage's rows are kept in
`performance.json` beside the report, so benchmarking one stage keeps the others'.
Ratios are always measured side by side in the same run.
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
from harness.registry import Registry

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


def jpeg_decode_rate(images: Any) -> float:
    """images/s of decoding these images from JPEG (quality 95) into uint8 arrays: the
    reference pipeline's cost per image when a dataset is pre-rendered (disk reads excluded)."""
    import io

    import numpy as np
    from PIL import Image

    blobs = []
    for image in images.permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=95)
        blobs.append(buffer.getvalue())

    def decode() -> None:
        for blob in blobs:
            np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))

    return len(blobs) / best_time(decode, repeats=2)


def bench_generators(registry: Registry, quick: bool) -> Rows:
    """images/s per generator instance and size, beside decoding the same images from JPEG."""
    rows = []
    sizes = (64,) if quick else (64, 128, 224)
    reference: dict[int, float] = {}
    for name in registry.instance_names("generator"):
        try:
            generator = registry.create("generator", name)
        except Exception as exc:
            rows.append({"generator": name, "error": str(exc)})
            continue
        for size in sizes:
            n = max(8, (64 if quick else 256) * 64 * 64 // (size * size))
            try:
                seconds = best_time(lambda: generator.sample(seed=1, n=n, size=size), repeats=1 if quick else 2)
                if size not in reference:
                    reference[size] = jpeg_decode_rate(generator.sample(seed=2, n=min(n, 64), size=size))
                rate = n / seconds
                rows.append({
                    "generator": name, "size": size, "images": n, "images_per_s": round(rate, 1),
                    "jpeg_decode_images_per_s": round(reference[size], 1),
                    "ratio_to_jpeg_decode": round(rate / reference[size], 3),
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


def bench_embed(registry: Registry, quick: bool, device: str, encoders: list[str] | None = None) -> Rows:
    import torch

    rows = []
    names = encoders or registry.config.profiles["default"].encoders
    for name in names:
        encoder = registry.create("encoder", name)
        try:
            encoder.prepare(RunContext(registry=registry, device=device))
        except Exception as exc:
            rows.append({"encoder": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        size = int(getattr(encoder, "img_size", 224) or 224)
        n = 64 if quick else 512
        images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
        seconds = best_time(lambda: encoder.embed(images), repeats=1 if quick else 3)
        row: dict[str, Any] = {"encoder": name, "input": size, "images": n, "images_per_s": round(n / seconds, 1)}
        flops = flops_per_image(encoder, size)
        if flops:
            row["gflops_per_image"] = round(flops / 1e9, 3)
            peak = peak_flops(device)
            if peak:
                row["bf16_limit_images_per_s"] = round(peak / flops, 0)
                row["fraction_of_limit"] = round(n / seconds * flops / peak, 3)
        rows.append(row)
    return rows


def bench_train(registry: Registry, quick: bool, device: str, encoders: list[str] | None = None) -> Rows:
    rows = []
    names = encoders or [
        n for n in registry.config.profiles["default"].encoders if registry.plugins.get("encoder", registry.spec("encoder", n).plugin).trainable
    ]
    for name in names:
        encoder = registry.create("encoder", name)
        measure = getattr(encoder, "training_throughput", None)
        if measure is None:
            continue
        try:
            rows.append({"encoder": name, **measure(RunContext(registry=registry, device=device), steps=2 if quick else 10)})
        except Exception as exc:
            rows.append({"encoder": name, "error": f"{type(exc).__name__}: {exc}"})
    return rows


def bench_memory(registry: Registry, quick: bool, device: str) -> Rows:
    from harness.unlearning import bench_memory as measure

    return measure(device=device, quick=quick)


STAGES: dict[str, Callable[..., Rows]] = {
    "generators": lambda reg, quick, device: bench_generators(reg, quick),
    "embed": bench_embed,
    "train": bench_train,
    "memory": bench_memory,
}


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
        rows = entry["rows"]
        if rows:
            headers = list(dict.fromkeys(k for row in rows for k in row))
            lines.append(tabulate([[row.get(h, "") for h in headers] for row in rows], headers=headers, tablefmt="github"))
        else:
            lines.append("(nothing to measure in this registry)")
        lines.append("")
    return "\n".join(lines)


def run_benchmarks(registry: Registry, stages: list[str], report: Path, quick: bool = False, device: str | None = None) -> Path:
    from harness.errors import UnknownNameError

    device = device or default_device()
    chosen = stages or list(STAGES)
    for stage in chosen:
        if stage not in STAGES:
            raise UnknownNameError("benchmark stage", stage, list(STAGES))
    state_path = report.with_name("performance.json")
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    for stage in chosen:
        rows = STAGES[stage](registry, quick, device)
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
