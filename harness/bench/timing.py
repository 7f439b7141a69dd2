"""Timing and the reference data path's costs, shared by the benchmark stages and by
plugins that report how fast the released research code makes their images."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    from harness.device import Precision

TOP = 8  # rows per profiled piece of work


def synchronizer(device: str) -> Callable[[], None]:
    """A call that waits for `device`'s queued work (CUDA runs asynchronously); a no-op elsewhere."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


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


class StageTimeLimit(Exception):
    """Raised inside a stage when its time limit is reached. An `Exception`, so that a
    stage's own handlers turn it into an error row for what it was measuring and the rows
    it had measured stand; the stage is then stopped at its next row."""


def why_missing(exc: BaseException) -> str:
    """What a figure that could not be had holds instead: the error, shortened; the
    stage's time limit where it is behind the error (a compiler, for one, wraps what
    its backend raised)."""
    seen: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in seen and not isinstance(cause, StageTimeLimit):
        seen.append(cause)
        cause = cause.__cause__ or cause.__context__
    shown = cause if isinstance(cause, StageTimeLimit) else exc
    return f"failed: {type(shown).__name__}: {str(shown)[:200]}"


def cut_by_time_limit(figure: Any) -> bool:
    """Whether a figure is missing because the stage's time limit came first: raised
    once, the limit would not stop what follows it."""
    return isinstance(figure, str) and figure.startswith(f"failed: {StageTimeLimit.__name__}:")


def cpu_jiffies() -> tuple[int, int] | None:
    """(busy, all) time of the machine's cores since boot, in clock ticks (/proc/stat);
    None where the system does not say."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:9]]  # user .. steal (guest time is within user)
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and waiting for I/O
    return sum(fields) - idle, sum(fields)


def busy_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of the machine's cores busy between two `cpu_jiffies` readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


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


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


@functools.cache
def worker_pool(workers: int) -> ProcessPoolExecutor:
    """`workers` processes for reference pipelines, started once and kept for every
    later timing in this process. Spawned, not forked: the parent may hold GL and CUDA
    contexts. Each runs one torch thread, as a DataLoader worker does."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_torch_thread)


def parallel_rate(work: Callable[[Any], int], jobs: list[Any], workers: int | None = None) -> float:
    """Items/s of running `work` (a module-level function returning how many items a job
    made) over `jobs` on `workers` processes (default: one per core), the way a data
    loader's worker processes run a reference pipeline. Threads would not do: a pipeline
    that holds the GIL (per-image numpy, PIL's Python-level transforms) then runs on about
    one core however many the machine has. Best of two passes after a warm-up pass (which
    also starts the processes)."""
    pool = worker_pool(workers or cores())
    items = 0

    def one_pass() -> None:
        nonlocal items
        items = sum(pool.map(work, jobs))

    seconds = best_time(one_pass, repeats=2)
    return items / seconds


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def jpeg_decode_rate(images: Any) -> float:
    """images/s of decoding these images from JPEG on one process per core: the reference
    pipeline's cost per image when a dataset is pre-rendered (disk reads excluded)."""
    blobs = encode_jpegs(images)
    blobs = blobs * max(1, 1024 // len(blobs))  # passes long enough to time
    workers = cores()
    return parallel_rate(_decode_all, [blobs[i::workers] for i in range(workers)], workers)


# The first row of an `operator_profile`: its share is how busy the device was over `wall_ms`.
BUSY_ROW = "(all operators: share = busy fraction)"

# Peaks (FLOP/s) for the physical limit of GPU figures: dense bf16 on the tensor cores,
# and float32 without TF32 (what `forward_precision` computes float32 in on CUDA).
PEAK_FLOPS = {
    "bfloat16": {"H200": 989e12, "H100": 989e12, "A100": 312e12, "V100": 125e12, "L40S": 362e12, "A10": 125e12},
    "float32": {"H200": 67e12, "H100": 67e12, "A100": 19.5e12, "V100": 15.7e12, "L40S": 91.6e12, "A10": 31.2e12},
}


def peak_flops(device: str, precision: Precision = "bfloat16") -> float | None:
    """The card's peak in `precision`, where `device` is a GPU this table knows."""
    import torch

    if not (device.startswith("cuda") and torch.cuda.is_available()):
        return None
    name = torch.cuda.get_device_name(0)
    return next((peak for key, peak in PEAK_FLOPS[precision].items() if key in name), None)


@contextlib.contextmanager
def operator_profile(device: str, unprofiled_s: float | None = None) -> Iterator[list[dict[str, Any]]]:
    """Profile the block's torch operators; on exit the yielded list holds the `TOP` with
    the most self time on `device` (on a CPU, CPU time), each with its share of the whole.

    The first row says how busy the device was: all operators' self time over the wall
    time. On a GPU that is `unprofiled_s`, the wall time of the same work without the
    profiler, where given: the profiler's own work on the host lengthens the profiled
    wall time but not the kernels' time (an H200's eager training steps took twice as
    long profiled, the profiler's start and stop then included), so over the profiled
    wall time the GPU would look idle when it was not. On a CPU the operators' own times
    include the profiler's work, so the profiled wall time stays the measure. Either is
    the block's time alone: starting the profiler can take longer than a short block
    (a second on a CPU). The row gives both wall times."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    on_gpu = device.startswith("cuda")
    rows: list[dict[str, Any]] = []
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])) as profiler:
        began = time.perf_counter()  # the block's time: starting and stopping the profiler take their own
        yield rows
        profiled_us = (time.perf_counter() - began) * 1e6
    wall_us = unprofiled_s * 1e6 if on_gpu and unprofiled_s is not None else profiled_us
    # On a GPU, an operator's self device time is the time of the kernels it launched,
    # and those kernels are listed too: only the operators are counted, so that no
    # kernel is counted twice.
    events = [e for e in profiler.key_averages() if e.device_type == DeviceType.CPU]

    def self_us(event: Any) -> float:
        return float(getattr(event, "self_device_time_total", 0.0) if on_gpu else event.self_cpu_time_total)

    total = sum(self_us(e) for e in events) or 1.0
    rows.append({"operator": BUSY_ROW, "calls": sum(e.count for e in events), "self_ms": round(total / 1000, 2),
                 "share": round(total / wall_us, 3), "wall_ms": round(wall_us / 1000, 2), "profiled_wall_ms": round(profiled_us / 1000, 2)})
    for event in sorted(events, key=self_us, reverse=True)[:TOP]:
        rows.append({
            "operator": event.key[:60],
            "calls": event.count,
            "self_ms": round(self_us(event) / 1000, 2),
            "share": round(self_us(event) / total, 3),
        })
