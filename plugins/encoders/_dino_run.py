"""Running a `dino` encoder's training: cache, checkpoints, resume, DDP, metadata.

Files under `<cache>/weights/<weights key>/`:

    checkpoint.pt        the full state after a step (student, teacher, optimiser, centre,
                         step, metadata), written atomically every `checkpoint_every`
                         steps and at the end; training resumes from it
    training.json        the metadata: steps, images seen, wall time, loss per step,
                         first image hash per rank, config, data, device, world size
    teacher.safetensors  the teacher's backbone once training is finished (what `embed` uses)

Only rank 0 writes. Every rank reads the checkpoint when resuming.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from harness.cache import atomic_write
from harness_plugins.encoders._dino_data import StreamPlan, step_batches
from harness_plugins.encoders._dino_train import (
    Distributed,
    Trainer,
    image_hash,
    init_distributed,
    load_checkpoint,
    save_checkpoint,
    timed_steps,
    warmup_steps,
)

if TYPE_CHECKING:
    from harness.runner.context import RunContext
    from harness_plugins.encoders._dino_augment import MultiCrop
    from harness_plugins.encoders.dino import DINOEncoder

CHECKPOINT = "checkpoint.pt"
METADATA = "training.json"
WEIGHTS = "teacher.safetensors"


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _write_json(path: Path, info: dict[str, Any]) -> None:
    text = json.dumps(info, indent=1, default=str)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def data_workers(encoder: DINOEncoder, source: Any, device: str, dist: Distributed) -> int:
    """DataLoader workers of a training run: none for a dataset held in memory, else the
    encoder's `num_workers`, else none on a CPU (the training step already uses every
    core) and up to 8 per GPU."""
    if getattr(source, "held_in_memory", False):
        return 0
    if encoder.params.num_workers is not None:
        return encoder.params.num_workers
    if not device.startswith("cuda"):
        return 0
    return max(0, min(8, (os.cpu_count() or 1) // max(1, dist.world) - 1))


def load_finished(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    weights, meta = folder / WEIGHTS, folder / METADATA
    if not (weights.exists() and meta.exists()):
        return None
    try:
        info = json.loads(meta.read_text())
        if not info.get("finished"):
            return None
        from safetensors.torch import load_file

        return load_file(str(weights)), info
    except Exception:
        return None


def train_or_load(encoder: DINOEncoder, ctx: RunContext | None, device: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The teacher backbone's weights and the training metadata (training if needed)."""
    folder = encoder.weights_dir(ctx)
    found = load_finished(folder)
    if found is not None:
        return found
    dist, device = init_distributed(device)
    source = None
    try:
        source = encoder.open_source()
        cfg = encoder.resolved_schedule(source)
        trainer = Trainer(cfg, lambda drop_path: encoder.build_model(drop_path, dynamic=True), device, dist)
        plan = StreamPlan(cfg["data_seed"], trainer.global_batch, dist.rank, dist.world, cfg["dataset_size"])
        info = {
            "encoder": encoder.name,
            "weights_key": encoder.weights_key,
            "finished": False,
            "steps": 0,
            "total_steps": cfg["steps"],
            "steps_per_epoch": cfg["steps_per_epoch"],
            "epochs": cfg["steps"] / cfg["steps_per_epoch"],
            "global_batch_size": trainer.global_batch,
            "images_seen": 0,
            "wall_time_s": 0.0,
            "images_per_s": None,
            "loss": [],
            "lr": [],
            "first_images": [],
            "resumed_from": [],
            "world_size": dist.world,
            "device": _device_name(device),
            "config": cfg,
            "data": encoder.weights_description()["data"],
        }
        if hasattr(source, "generator"):
            info["generator_key"] = source.generator.key
        start = 0
        checkpoint = load_checkpoint(folder / CHECKPOINT)
        if checkpoint is not None and checkpoint.get("total_steps") == cfg["steps"]:
            trainer.load_state_dict(checkpoint["state"])
            start = int(checkpoint["step"])
            info = json.loads(checkpoint["info"])
            info["resumed_from"].append(start)
            info["world_size"], info["device"] = dist.world, _device_name(device)
        workers = data_workers(encoder, source, device, dist)
        _train(encoder, ctx, trainer, source, plan, info, folder, start, encoder.checkpoint_every, workers, dist)
        state = trainer.teacher_backbone_state()
        dist.barrier()
        return state, info
    finally:
        if source is not None and hasattr(source, "generator"):
            source.generator.close()
        dist.close()


def _save(folder: Path, trainer: Trainer, info: dict[str, Any], step: int, final: bool) -> None:
    state = {
        "step": step,
        "total_steps": trainer.total_steps,
        "state": trainer.state_dict(),
        "info": json.dumps(info, default=str),
    }
    save_checkpoint(folder / CHECKPOINT, state)
    if final:
        from safetensors.torch import save_file

        weights = trainer.teacher_backbone_state()
        atomic_write(folder / WEIGHTS, lambda tmp: save_file(weights, str(tmp)))
    _write_json(folder / METADATA, info)


def _train(
    encoder: DINOEncoder, ctx: RunContext | None, trainer: Trainer, source: Any, plan: StreamPlan, info: dict[str, Any],
    folder: Path, start: int, every: int, workers: int, dist: Distributed,
) -> None:
    from tqdm import tqdm

    total = trainer.total_steps
    show = dist.rank == 0 and getattr(ctx, "progress", True)
    bar = tqdm(total=total, initial=start, desc=f"train {encoder.name}", unit="step", disable=not show, leave=False)
    session_start, session_images = time.perf_counter(), 0
    wall_before = float(info["wall_time_s"])
    sync = torch.cuda.synchronize if trainer.device.startswith("cuda") else (lambda: None)
    try:
        for step, images, indices in step_batches(source, plan, start, total, workers):
            if step == 0:
                mine = {"rank": dist.rank, "index": int(indices[0]), "sha256": image_hash(images[0])}
                if dist.world > 1:
                    gathered: list[Any] = [None] * dist.world
                    torch.distributed.all_gather_object(gathered, mine)
                    info["first_images"] = gathered
                else:
                    info["first_images"] = [mine]
            loss = trainer.step(step, images)
            sync()
            elapsed = time.perf_counter() - session_start
            info["wall_time_s"] = wall_before + elapsed
            session_images += trainer.global_batch
            info["loss"].append(loss)
            info["lr"].append(float(trainer.lr[step]))
            info["steps"] = step + 1
            info["images_seen"] = (step + 1) * trainer.global_batch
            info["images_per_s"] = session_images / max(elapsed, 1e-9)
            done = step + 1 == total
            if done:
                info["finished"] = True
            if dist.rank == 0 and (done or (step + 1) % every == 0):
                _save(folder, trainer, info, step + 1, final=done)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if encoder.step_callback is not None:
                encoder.step_callback(step, loss)
    finally:
        bar.close()


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
    from harness.bench.timing import best_time

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
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
    operator (`operator_profile`), after one unprofiled step. No data workers run: the
    profile is the model's (how the data keep up is the train stage's figure). It takes
    real steps: call it on a trainer whose state no longer matters."""
    from harness.bench.timing import operator_profile

    trainer.step(0, images)
    sync()
    with operator_profile(trainer.device) as operators:
        for _ in range(steps):
            trainer.step(0, images)
        sync()
    return operators


def compiled_rates(
    trainer: Trainer, source: Any, plan: StreamPlan, steps: int, sync: Callable[[], None], budget_s: float | None,
    workers: int, images: torch.Tensor,
) -> dict[str, float | str]:
    """With the student and the teacher under torch.compile: the seconds of the first
    step, on a batch in memory, which compiles (`compile_s`); then images/s end to end,
    with the data workers as in training (`timed_steps`), and of the model alone
    (`model_alone_rate`). A figure that could not be had says why (a missing compiler,
    the stage's time limit), leaving the eager figures standing. It takes real steps:
    call it on a trainer whose state no longer matters."""
    rates: dict[str, float | str] = {}
    try:
        trainer.compile()
        began = time.perf_counter()
        trainer.step(0, images)
        sync()
        rates["compile_s"] = round(time.perf_counter() - began, 1)
        measured = timed_steps(trainer, source, plan, steps, sync, budget_s, workers)
        rates["compiled_images_per_s"] = round(measured["images_per_s"], 2)
        rates["compiled_model_images_per_s"] = round(model_alone_rate(trainer, images, sync), 2)
    except Exception as exc:
        why = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        for name in ("compile_s", "compiled_images_per_s", "compiled_model_images_per_s"):
            rates.setdefault(name, why)
    return rates


REFERENCE_IMAGES = 128  # images DINO's own data path is timed on (a rate, at PIL's pace)


def throughput(
    encoder: DINOEncoder, device: str, steps: int, batch_size: int | None, budget_s: float | None = None, profile: bool = False,
    compiled: bool = False,
) -> dict[str, Any]:
    """Training images/s end to end and split into data and model time, the model's rate
    with the data workers stopped (`model_alone_rate`), beside DINO's own data path
    (`_dino_reference`) on the same images and, on a GPU, the bf16 limit. The
    schedule is compressed to the timed steps; `one_step_descent` says whether training
    moves. With `compiled`, the rates end to end and of the model alone again under
    torch.compile (`compiled_rates`, last: it takes steps on a trainer whose state no
    longer matters). With `profile`, only where the time of steps on a batch in memory
    goes (`profiled_steps`)."""
    from harness.bench.timing import peak_flops
    from harness_plugins.encoders._dino_reference import reference_augment_rate

    began = time.perf_counter()

    def progress(what: str) -> None:
        print(f"train: {encoder.name}: {what} ({time.perf_counter() - began:.0f} s)", file=sys.stderr, flush=True)

    source = encoder.open_source()
    try:
        cfg = encoder.resolved_schedule(source)
        if batch_size:
            cfg["train_batch_size"] = batch_size
        # The warm-up and timed steps are the whole schedule, its learning rate warming up
        # over a third of them; a step's speed does not depend on the schedule's values.
        workers = 0 if profile else data_workers(encoder, source, device, Distributed())
        cfg["steps"] = warmup_steps(workers) + steps
        cfg["warmup_epochs"] = max(1, cfg["steps"] // 3) / cfg["steps_per_epoch"]
        cfg["freeze_last_layer"] = 0
        trainer = Trainer(cfg, lambda drop_path: encoder.build_model(drop_path, dynamic=True), device, Distributed())
        plan = StreamPlan(cfg["data_seed"], trainer.global_batch, 0, 1, cfg["dataset_size"])
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        images = source.fetch(plan.indices(0))
        if profile:
            operators = profiled_steps(trainer, images, steps, sync)
            progress(f"{steps} profiled steps of {trainer.global_batch} images")
            return {"operators": operators}
        measured = timed_steps(trainer, source, plan, steps, sync, budget_s, workers)
        progress(f"{measured['steps']} timed steps of {trainer.global_batch} images, {workers} data workers")
        model_alone = model_alone_rate(trainer, images, sync)
        ours_augment = augment_rate(trainer.multicrop, images, device, trainer.global_batch)
        reference_augment = reference_augment_rate(images[:REFERENCE_IMAGES], trainer.multicrop)
        progress("augmentation timed beside DINO's data path")
        loss_before, loss_after = one_step_descent(trainer, images)
        flops = step_flops(trainer, images)
        progress("one step's descent and FLOPs")
        compiled_figures: dict[str, float | str] = {}
        if compiled:
            compiled_figures = compiled_rates(trainer, source, plan, steps, sync, budget_s, workers, images)
            progress("end to end and the model alone under torch.compile")
    finally:
        if hasattr(source, "generator"):
            source.generator.close()
    row: dict[str, Any] = {
        "images_per_s": round(measured["images_per_s"], 2),
        "model_images_per_s": round(measured["model_images_per_s"], 2),
        "data_images_per_s": round(measured["data_images_per_s"], 2),
        "model_alone_images_per_s": round(model_alone, 2),
        "augment_images_per_s": round(ours_augment, 1),
        "reference_augment_images_per_s": round(reference_augment, 1),
        "augment_ratio_to_reference": round(ours_augment / reference_augment, 2),
        "train_gflops_per_image": float(f"{flops / 1e9:.4g}"),
        "device": _device_name(device),
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
    row.update(compiled_figures)
    peak = peak_flops(device)
    if peak:
        row["bf16_limit_images_per_s"] = round(peak / flops, 0)
        row["fraction_of_limit"] = round(measured["images_per_s"] * flops / peak, 3)
    return row
