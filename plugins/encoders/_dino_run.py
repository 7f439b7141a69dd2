"""Running a `dino` encoder's training: cache, checkpoints, resume, DDP, metadata.
(How fast it trains is `_dino_bench`'s.)

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
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
)

if TYPE_CHECKING:
    from harness.runner.context import RunContext
    from harness_plugins.encoders.dino import DINOEncoder

CHECKPOINT = "checkpoint.pt"
METADATA = "training.json"
WEIGHTS = "teacher.safetensors"


def device_name(device: str) -> str:
    """The accelerator's name, or the CPU's and its threads: where a run or a timing ran."""
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
            "device": device_name(device),
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
            info["world_size"], info["device"] = dist.world, device_name(device)
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
