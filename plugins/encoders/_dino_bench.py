"""How fast a `dino` encoder trains, for `harness bench train` and `harness bench profile`:
images/s of training steps end to end (the data made by DataLoader workers as in a
run), of the model alone, of the augmentation beside DINO's own data path, under
`torch.compile`, and whether one step lowers the loss it follows.

Nothing here computes a value a cache key stands for, so it is not part of the DINO
encoders' code keys (`harness.keys.measurement_only`): it can change without
retraining them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch

from harness.bench.timing import (
    best_time, busy_share, cores, cpu_jiffies, cut_by_time_limit, operator_profile, peak_flops, synchronizer, why_missing,
)
from harness_plugins.encoders._dino_data import PREFETCH_FACTOR, StreamPlan, step_batches
from harness_plugins.encoders._dino_reference import reference_augment_rate
from harness_plugins.encoders._dino_run import data_workers, device_name
from harness_plugins.encoders._dino_train import Distributed, Trainer

if TYPE_CHECKING:
    from harness_plugins.encoders._dino_augment import MultiCrop
    from harness_plugins.encoders.dino import DINOEncoder


def timed_steps(
    trainer: Trainer, batches: Iterator[tuple[int, torch.Tensor, list[int]]], steps: int, sync: Callable[[], None],
    warmup: int, budget_s: float | None = None,
) -> dict[str, Any]:
    """Throughput of up to `steps` training steps (nothing is saved) on the next batches
    of `batches` (`step_batches`: made by DataLoader workers as in training), after
    `warmup` untimed steps (`warmup_steps`): the batches the workers prefetched while
    they started, or while they waited, would otherwise be counted as free. With
    `budget_s`, as many timed steps (at least 2) as fit in that many seconds, judged by
    the last warm-up step (its batch and its model step). Also returned: the losses of
    the first and the last step, the share of the machine's cores busy over the timed
    steps (`machine_cpu_busy`: data workers included) and the CPU seconds per second of
    this process (`process_cpu_per_s`): steps bound by launching kernels slow down when
    the workers leave their thread no core."""
    losses = []
    for _ in range(warmup):
        t0 = time.perf_counter()
        step, images, _ = next(batches)
        losses.append(trainer.step(step, images))
        sync()
    if budget_s is not None:
        steps = max(2, min(steps, int(budget_s / max(time.perf_counter() - t0, 1e-9))))
    data_s = model_s = 0.0
    loss = losses[-1]
    jiffies, process_s = cpu_jiffies(), time.process_time()
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        step, images, _ = next(batches)
        t1 = time.perf_counter()
        loss = trainer.step(step, images)
        sync()
        data_s += t1 - t0
        model_s += time.perf_counter() - t1
    wall = time.perf_counter() - start
    n = steps * trainer.local_batch
    return {
        "images_per_s": n / wall, "model_images_per_s": n / max(model_s, 1e-9), "data_images_per_s": n / max(data_s, 1e-9),
        "seconds": wall, "steps": steps, "first_loss": losses[0], "last_loss": loss,
        "machine_cpu_busy": busy_share(jiffies, cpu_jiffies()), "process_cpu_per_s": (time.process_time() - process_s) / wall,
    }


def data_alone_rate(batches: Iterator[tuple[int, torch.Tensor, list[int]]], num_workers: int) -> float:
    """images/s of the data with nothing else running: the batches the `num_workers`
    workers hold ready (`prefetched`) are taken at once, then the next batch of
    each worker is timed, made side by side (without workers: one batch made in this
    process); `data_alone_batches` in all. Where the model and the data share a device
    (a GPU the workers render on, cores they compute on) and cannot run at once, end to
    end reaches at most `taking_turns` of the two rates alone. A worker that had begun
    its next batch before the timing makes the rate a little high."""
    for _ in range(prefetched(num_workers)):
        next(batches)
    images, start = 0, time.perf_counter()
    for _ in range(max(1, num_workers)):
        images += len(next(batches)[1])
    return images / (time.perf_counter() - start)


def data_alone_batches(num_workers: int) -> int:
    """The batches `data_alone_rate` takes."""
    return prefetched(num_workers) + max(1, num_workers)


def taking_turns(model_alone: float, data_alone: float) -> float:
    """images/s end to end when the model and the data take turns on one device, each at
    its rate alone."""
    return 1.0 / (1.0 / model_alone + 1.0 / data_alone)


def prefetched(num_workers: int) -> int:
    """The batches `num_workers` DataLoader workers hold ready at most (`PREFETCH_FACTOR` each)."""
    return PREFETCH_FACTOR * num_workers


def warmup_steps(num_workers: int) -> int:
    """Untimed steps before a timing: one, plus the batches the workers prefetch while
    they start (`prefetched`)."""
    return 1 + prefetched(num_workers)


def step_flops(trainer: Trainer, images: torch.Tensor) -> float:
    """FLOPs per image of one training step (student forward and backward on all crops,
    teacher forward on the global crops), counted by torch. It takes a real step: call it
    on a trainer whose state no longer matters."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        trainer.step(0, images)
    return float(counter.get_total_flops()) / len(images)


def one_step_descent(trainer: Trainer, images: torch.Tensor) -> tuple[float, float]:
    """The loss of one batch before and after one step on it, at the schedule's largest
    learning rate, with the teacher and the centre put back after the step: whether a
    step lowers the loss it follows. DINO's loss itself first rises towards ln(out_dim)
    while the centre catches up with the teacher, so a run of a few dozen steps shows
    that training moves by this, not by its first and last loss.

    The optimizer's moments are cleared first, so the step is AdamW's first step, along
    this batch's own gradient. Kept, they would make it mostly the running mean of the
    earlier batches' gradients (this one's weighs 1 - beta1 = 0.1), which need not lower
    this batch's loss. It takes a real step: call it on a trainer whose state no longer
    matters."""
    step = int(np.argmax(trainer.lr))
    teacher = {name: value.clone() for name, value in trainer.teacher.state_dict().items()}
    center = trainer.loss_fn.center.clone()
    trainer.optimizer.state.clear()
    before = trainer.loss(step, images)
    trainer.step(step, images)
    trainer.teacher.load_state_dict(teacher)
    trainer.loss_fn.center.copy_(center)
    return before, trainer.loss(step, images)


def augment_rate(multicrop: MultiCrop, images: torch.Tensor, device: str, global_batch: int) -> float:
    """images/s of our batched multi-crop augmentation of these uint8 images on `device`."""
    sync = synchronizer(device)
    gen = torch.Generator().manual_seed(0)

    def augment() -> None:
        params = multicrop.draw(gen, global_batch, images.shape[-2], images.shape[-1])
        multicrop.apply(images.to(device), params, slice(0, len(images)))
        sync()

    return len(images) / best_time(augment, repeats=3)


def model_alone_rate(trainer: Trainer, images: torch.Tensor, sync: Callable[[], None], steps: int = 4) -> float:
    """images/s of training steps on one batch already in memory, after one untimed step,
    with no data workers running: the model's rate when it has the machine (and, where
    the generator renders on the GPU, the GPU) to itself. It takes real steps: call it
    on a trainer whose state no longer matters."""
    trainer.step(0, images)
    sync()
    began = time.perf_counter()
    for _ in range(steps):
        trainer.step(0, images)
    sync()
    return steps * len(images) / (time.perf_counter() - began)


def profiled_steps(trainer: Trainer, images: torch.Tensor, steps: int, sync: Callable[[], None]) -> list[dict[str, Any]]:
    """Where `steps` training steps on one batch in memory spend their time, by torch
    operator (`operator_profile`), after the same number of steps timed without the
    profiler (`model_alone_rate`), over whose wall time a GPU's busy share is taken.
    No data workers run: the profile is the model's (how the data keep up is the
    train stage's figure). It takes real steps: call it on a trainer whose state no
    longer matters."""
    unprofiled_s = steps * len(images) / model_alone_rate(trainer, images, sync, steps)
    with operator_profile(trainer.device, unprofiled_s) as operators:
        for _ in range(steps):
            trainer.step(0, images)
        sync()
    return operators


COMPILED_FIGURES = ("compile_s", "compiled_images_per_s", "compiled_model_images_per_s")


def compiled_rates(
    trainer: Trainer, batches: Iterator[tuple[int, torch.Tensor, list[int]]], steps: int, sync: Callable[[], None],
    warmup: int, budget_s: float | None, images: torch.Tensor,
) -> dict[str, float | str]:
    """With the student and the teacher under torch.compile: the seconds of the first
    step, on a batch in memory, which compiles (`compile_s`); then images/s end to end on
    the next batches of `batches` (`timed_steps`: the data workers that served the eager
    steps, not started anew), and, once they are stopped (`stop_workers`), of the
    model alone (`model_alone_rate`). A figure that could not be had says why (a missing
    compiler, the stage's time limit), leaving the eager figures standing. It takes real
    steps: call it on a trainer whose state no longer matters."""
    rates: dict[str, float | str] = {}
    try:
        trainer.compile()
        began = time.perf_counter()
        trainer.step(0, images)
        sync()
        rates["compile_s"] = round(time.perf_counter() - began, 1)
        measured = timed_steps(trainer, batches, steps, sync, warmup, budget_s)
        rates["compiled_images_per_s"] = round(measured["images_per_s"], 2)
        stop_workers(batches)
        rates["compiled_model_images_per_s"] = round(model_alone_rate(trainer, images, sync), 2)
    except Exception as exc:
        for name in COMPILED_FIGURES:
            rates.setdefault(name, why_missing(exc))
    return rates


def stop_workers(batches: Iterator[Any]) -> None:
    """Stop the DataLoader workers behind `step_batches` (a generator) before its last
    batch: closing it drops its loader, which ends them."""
    if isinstance(batches, Generator):
        batches.close()


PRERENDERED_FIGURES = ("prerender_images_per_s", "prerendered_images_per_s", "prerendered_data_alone_images_per_s")
PRERENDERED_BATCHES = 4  # global batches of images written: an epoch of that many steps, reshuffled after it


def prerendered_rates(
    source: Any, image_format: str, trainer: Trainer, workers: int, steps: int, sync: Callable[[], None],
    budget_s: float | None,
) -> dict[str, float | str]:
    """The released research code's design: the generator's images rendered once and
    written as `image_format` files (`harness.streaming.write_imagefolder`, at
    `prerender_images_per_s`: rendering and encoding), then read and decoded by
    `workers` DataLoader workers (`FolderSource`) while the device only trains: images/s
    end to end (`timed_steps`, on the trainer as it is: compiled where `compiled_rates`
    compiled it) and of that data alone (`data_alone_rate`). The epoch is
    `PRERENDERED_BATCHES` global batches, decoded afresh each epoch as a training set
    of 1.3M files is (which the page cache then holds whole). A figure that could not
    be had says why. It takes real steps: call it on a trainer whose state no longer
    matters."""
    import tempfile
    from pathlib import Path

    from harness.streaming import write_imagefolder
    from harness_plugins.encoders._dino_data import FolderSource

    rates: dict[str, float | str] = {}
    batches: Iterator[tuple[int, torch.Tensor, list[int]]] = iter(())
    try:
        with tempfile.TemporaryDirectory(prefix="harness-prerendered-") as folder:
            try:  # the workers stop before their files are removed
                n = PRERENDERED_BATCHES * trainer.global_batch
                began = time.perf_counter()
                write_imagefolder(source.generator, folder, n, source.size, seed=source.seed, image_format=image_format)
                rates["prerender_images_per_s"] = round(n / (time.perf_counter() - began), 1)
                warmup = warmup_steps(workers)
                plan = StreamPlan(0, trainer.global_batch, 0, 1, n)
                batches = step_batches(FolderSource(Path(folder), source.size), plan, 0, warmup + steps + data_alone_batches(workers), workers)
                rates["prerendered_images_per_s"] = round(timed_steps(trainer, batches, steps, sync, warmup, budget_s)["images_per_s"], 2)
                rates["prerendered_data_alone_images_per_s"] = round(data_alone_rate(batches, workers), 1)
            finally:
                stop_workers(batches)
    except Exception as exc:
        for name in PRERENDERED_FIGURES:
            rates.setdefault(name, why_missing(exc))
    return rates


REFERENCE_IMAGES = 128  # images DINO's own data path is timed on (a rate, at PIL's pace)


def throughput(
    encoder: DINOEncoder, device: str, steps: int, batch_size: int | None, budget_s: float | None = None, profile: bool = False,
    compiled: bool = False, prerendered: str | None = None,
) -> dict[str, Any]:
    """Training images/s end to end and split into data and model time, the model's rate
    alone on a batch in memory (`model_alone_rate`), beside DINO's own data path
    (`_dino_reference`) on the same images and, on a GPU, the bf16 limit. The
    schedule is compressed to the timed steps; `one_step_descent` says whether training
    moves. The figures of the model alone come first, before the data workers start;
    with `compiled`, the rates end to end and of the model alone again under
    torch.compile follow the eager ones, on the same workers (`compiled_rates`). With
    `prerendered` (a file format) and a generator to train on, last, the rates on its
    images written as such files first (`prerendered_rates`). With `profile`, only
    where the time of steps on a batch in memory goes (`profiled_steps`)."""
    began = time.perf_counter()

    def progress(what: str) -> None:
        print(f"train: {encoder.name}: {what} ({time.perf_counter() - began:.0f} s)", file=sys.stderr, flush=True)

    source = encoder.open_source()
    batches: Iterator[tuple[int, torch.Tensor, list[int]]] = iter(())
    try:
        cfg = encoder.resolved_schedule(source)
        if batch_size:
            cfg["train_batch_size"] = batch_size
        # The warm-up and timed steps (of each timing, eager and compiled) are the whole
        # schedule, its learning rate warming up over a third of them; a step's speed does
        # not depend on the schedule's values.
        workers = 0 if profile else data_workers(encoder, source, device, Distributed())
        warmup = warmup_steps(workers)
        # Files are never held in memory: as many workers as a run reading them would have.
        file_workers = 0 if profile else data_workers(encoder, None, device, Distributed())
        cfg["steps"] = (warmup + steps) * (2 if compiled else 1) + data_alone_batches(workers)
        if prerendered is not None:
            cfg["steps"] += warmup_steps(file_workers) + steps + data_alone_batches(file_workers)
        cfg["warmup_epochs"] = max(1, cfg["steps"] // 3) / cfg["steps_per_epoch"]
        cfg["freeze_last_layer"] = 0
        trainer = Trainer(cfg, lambda drop_path: encoder.build_model(drop_path, dynamic=True), device, Distributed())
        plan = StreamPlan(cfg["data_seed"], trainer.global_batch, 0, 1, cfg["dataset_size"])
        sync = synchronizer(device)
        images = source.fetch(plan.indices(0))
        if profile:
            operators = profiled_steps(trainer, images, steps, sync)
            progress(f"{steps} profiled steps of {trainer.global_batch} images")
            return {"operators": operators}
        model_alone = model_alone_rate(trainer, images, sync)
        ours_augment = augment_rate(trainer.multicrop, images, device, trainer.global_batch)
        reference_augment = reference_augment_rate(images[:REFERENCE_IMAGES], trainer.multicrop)
        loss_before, loss_after = one_step_descent(trainer, images)
        flops = step_flops(trainer, images)
        progress("the model alone, augmentation beside DINO's data path, one step's descent and FLOPs")
        batches = step_batches(source, plan, 0, cfg["steps"], workers)
        measured = timed_steps(trainer, batches, steps, sync, warmup, budget_s)
        progress(f"{measured['steps']} timed steps of {trainer.global_batch} images, {workers} data workers")
        try:
            data_alone: float | str = data_alone_rate(batches, workers)
        except Exception as exc:  # the stage's time limit among them: the eager figures stand
            data_alone = why_missing(exc)
        progress("the data alone")
        compiled_figures: dict[str, float | str] = {}
        if compiled and isinstance(data_alone, str):  # the time limit, once reached, would not stop them
            compiled_figures = dict.fromkeys(COMPILED_FIGURES, data_alone)
        elif compiled:
            compiled_figures = compiled_rates(trainer, batches, steps, sync, warmup, budget_s, images)
            progress("end to end and the model alone under torch.compile")
        stop_workers(batches)
        prerendered_figures: dict[str, float | str] = {}
        if prerendered is not None and hasattr(source, "generator"):
            cut = next((figure for figure in (data_alone, *compiled_figures.values()) if cut_by_time_limit(figure)), None)
            if cut is not None:
                prerendered_figures = dict.fromkeys(PRERENDERED_FIGURES, cut)
            else:
                prerendered_figures = prerendered_rates(source, prerendered, trainer, file_workers, steps, sync, budget_s)
                progress(f"end to end on its images written as {prerendered} files first")
    finally:
        stop_workers(batches)
        if hasattr(source, "generator"):
            source.generator.close()
    row: dict[str, Any] = {
        "images_per_s": round(measured["images_per_s"], 2),
        "model_images_per_s": round(measured["model_images_per_s"], 2),
        "data_images_per_s": round(measured["data_images_per_s"], 2),
        "model_alone_images_per_s": round(model_alone, 2),
        "data_alone_images_per_s": round(data_alone, 1) if isinstance(data_alone, float) else data_alone,
        "augment_images_per_s": round(ours_augment, 1),
        "reference_augment_images_per_s": round(reference_augment, 1),
        "augment_ratio_to_reference": round(ours_augment / reference_augment, 2),
        "reference_processes": cores(),
        "train_gflops_per_image": float(f"{flops / 1e9:.4g}"),
        "device": device_name(device),
        "recipe": encoder.params.recipe,
        "arch": encoder.architecture,
        "train_batch_size": cfg["train_batch_size"],
        "data_workers": workers,
        "crops": f"2x{cfg['img_size']} + {cfg['local_crops_number']}x{cfg['local_crop_size']}",
        "steps": measured["steps"],
        "loss_first_step": round(measured["first_loss"], 4),
        "loss_last_step": round(measured["last_loss"], 4),
        "one_step_loss_before": round(loss_before, 4),
        "one_step_loss_after": round(loss_after, 4),
        "one_step_descends": loss_after < loss_before,
    }
    if measured["machine_cpu_busy"] is not None:
        row["machine_cpu_busy"] = round(measured["machine_cpu_busy"], 3)
    row["process_cpu_per_s"] = round(measured["process_cpu_per_s"], 2)
    row.update(compiled_figures)
    if prerendered_figures:
        row["prerendered_format"] = prerendered
        row["prerendered_data_workers"] = file_workers
        row["prerendered_under_compile"] = isinstance(row.get("compile_s"), float)
        row.update(prerendered_figures)
    if isinstance(data_alone, float):
        row["taking_turns_images_per_s"] = round(taking_turns(model_alone, data_alone), 1)
        if isinstance(row.get("compiled_model_images_per_s"), float):
            row["compiled_taking_turns_images_per_s"] = round(taking_turns(row["compiled_model_images_per_s"], data_alone), 1)
    peak = peak_flops(device)
    if peak:
        row["bf16_limit_images_per_s"] = round(peak / flops, 0)
        row["fraction_of_limit"] = round(measured["images_per_s"] * flops / peak, 3)
    return row
