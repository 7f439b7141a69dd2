"""DINO self-distillation (Caron et al. 2021), reimplemented for the `dino` encoder.

The training step follows DINO's `main_dino.py`: a student and an exponential-moving-
average teacher (backbone + DINO head, `_dino_model`), the loss of the teacher's 2
global crops against the student's every other crop, cosine schedules for the learning
rate (after a linear warm-up), weight decay and teacher momentum, per-parameter
gradient clipping, the head's last layer frozen during the first epoch, drop path in
the student, AdamW without decay on biases and norms. Also here: the process group
under torchrun and checkpoints (`_dino_bench` times the steps for `harness bench`).

Reproducibility: every random draw of step s is derived from (seed, s) — the images
(stream indices from (data seed, epoch)), the augmentation parameters (one generator per
step, drawn for the global batch and sliced per rank) and the model's own randomness
(drop path, from (seed, s, rank)). A checkpoint holds the complete state after a step,
so training resumed from it continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from harness.errors import HarnessError
from harness_plugins.encoders._dino_augment import MultiCrop
from harness_plugins.encoders._dino_data import derive_seed
from harness_plugins.encoders._dino_model import (
    DINOHead,
    DINOLoss,
    MultiCropWrapper,
    SampleDropPath,
    clip_gradients,
    cosine_schedule,
    param_groups,
)


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    created: bool = False

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.created and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def init_distributed(device: str) -> tuple[Distributed, str]:
    """The torchrun / Slurm environment's process group (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(), device
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        created = True
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, created), device


class Trainer:
    """One DINO training run: models, optimiser, schedules and the step function.

    `cfg` is the resolved training config (`DINOEncoder.training_config`);
    `build_backbone(drop_path)` returns the seeded timm ViT (dynamic image size).
    """

    def __init__(self, cfg: dict[str, Any], build_backbone: Callable[[float], nn.Module], device: str, dist: Distributed) -> None:
        self.cfg, self.device, self.dist = cfg, device, dist
        gb = int(cfg["train_batch_size"])
        if gb % dist.world:
            raise HarnessError(f"train_batch_size {gb} is not divisible by the number of processes ({dist.world})")
        self.global_batch = gb
        self.local_batch = gb // dist.world
        self.seed = int(cfg["seed"])

        student_backbone = build_backbone(float(cfg["drop_path"]))
        teacher_backbone = build_backbone(0.0)
        embed_dim = student_backbone.num_features
        head_args = dict(
            out_dim=int(cfg["out_dim"]), hidden_dim=int(cfg["hidden_dim"]), bottleneck_dim=int(cfg["bottleneck_dim"]),
            nlayers=int(cfg["head_layers"]),
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed("head", self.seed))
            student_head = DINOHead(embed_dim, norm_last_layer=bool(cfg["norm_last_layer"]), **head_args)
        teacher_head = DINOHead(embed_dim, **head_args)
        self.student = MultiCropWrapper(student_backbone, student_head).to(device)
        self.teacher = MultiCropWrapper(teacher_backbone, teacher_head).to(device)
        self.teacher.load_state_dict(self.student.state_dict())
        for param in self.teacher.parameters():
            param.requires_grad = False
        self.student_forward: nn.Module = self.student
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [torch.device(device).index] if device.startswith("cuda") else None
            self.student_forward = DistributedDataParallel(self.student, device_ids=ids)
        self.compiled = False

        self.multicrop = MultiCrop(
            global_size=int(cfg["img_size"]),
            local_size=int(cfg["local_crop_size"]),
            n_local=int(cfg["local_crops_number"]),
            global_scale=tuple(cfg["global_crops_scale"]),
            local_scale=tuple(cfg["local_crops_scale"]),
            blur_sigma=tuple(cfg["blur_sigma"]),
            sigma_scale=float(cfg["blur_sigma_scale"]),
        )
        self.steps_per_epoch = int(cfg["steps_per_epoch"])
        self.total_steps = int(cfg["steps"])
        epochs = max(1, math.ceil(self.total_steps / self.steps_per_epoch))
        self.loss_fn = DINOLoss(
            int(cfg["out_dim"]), 2 + int(cfg["local_crops_number"]), float(cfg["warmup_teacher_temp"]), float(cfg["teacher_temp"]),
            int(cfg["warmup_teacher_temp_epochs"]), epochs, float(cfg["student_temp"]), float(cfg["center_momentum"]),
        ).to(device)
        # On a GPU, AdamW's fused kernels update every parameter in a few launches; on a
        # CPU, torch's default implementation (the results the leaderboard holds).
        fused = True if device.startswith("cuda") else None
        self.optimizer = torch.optim.AdamW(param_groups(self.student), lr=0.0, weight_decay=0.0, fused=fused)
        spe, total = self.steps_per_epoch, self.total_steps
        self.lr = cosine_schedule(float(cfg["lr"]) * gb / 256.0, float(cfg["min_lr"]), total, int(cfg["warmup_epochs"] * spe))
        self.wd = cosine_schedule(float(cfg["weight_decay"]), float(cfg["weight_decay_end"]), total)
        self.momentum = cosine_schedule(float(cfg["momentum_teacher"]), 1.0, total)
        self.freeze_steps = int(round(float(cfg["freeze_last_layer"]) * spe))
        self.amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()
        if cfg.get("compile"):
            self.compile()

    def compile(self, backend: str = "inductor") -> None:
        """Run the transformer blocks and the heads of the student and the teacher under
        `torch.compile` from the next step on.

        The blocks of a network are alike, so one compiled block serves all of them
        ("regional" compilation): the compiler traces one block and one head, not the
        whole network at both crop sizes, which takes a fraction of the time (ViT-S/16 on
        a CPU: 28 s instead of 98 s before the first compiled step) and fuses the same
        kernels within each block. The student's drop path becomes `SampleDropPath`, its
        probability a tensor, so that blocks differing only in it share the compiled code.

        The first step compiles (seconds to a minute on a GPU); later steps launch fewer,
        fused kernels. Their arithmetic is not bit for bit the eager one (fused
        reductions, and drop path drawn by the compiled code), so `compile` is part of the
        weights' key. The modules are compiled in place: checkpoints and the teacher's
        weights keep their names."""
        if self.compiled:
            return
        self.compiled = True
        if torch.are_deterministic_algorithms_enabled():
            # also sets the compiler's own switch, which the run's eager-only one leaves off
            torch.use_deterministic_algorithms(True, warn_only=torch.is_deterministic_algorithms_warn_only_enabled())
        from timm.layers import DropPath

        for wrapper in (self.student, self.teacher):
            blocks = getattr(wrapper.backbone, "blocks", None) or [wrapper.backbone]
            for block in blocks:
                for name, module in list(block.named_children()):
                    # timm names a block's stochastic depth drop_path1/2, an Identity where p = 0
                    if isinstance(module, DropPath) or (name.startswith("drop_path") and isinstance(module, nn.Identity)):
                        setattr(block, name, SampleDropPath(getattr(module, "drop_prob", 0.0), self.device))
                block.compile(backend=backend)
            wrapper.head.compile(backend=backend)

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "dino_loss": self.loss_fn.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loss_fn.load_state_dict(state["dino_loss"])

    def teacher_backbone_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().contiguous() for k, v in self.teacher.backbone.state_dict().items()}

    # -------------------------------------------------------------- one step
    def forward(self, step: int, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step `step`'s student outputs (every crop) and teacher outputs (the global
        crops) for this rank's uint8 images: its crops and drop path are drawn from
        (seed, step), so a step's forward can be repeated exactly."""
        images = images.to(self.device, non_blocking=True)
        gen = torch.Generator().manual_seed(derive_seed("augment", self.seed, step))
        params = self.multicrop.draw(gen, self.global_batch, images.shape[-2], images.shape[-1])
        rows = slice(self.dist.rank * self.local_batch, (self.dist.rank + 1) * self.local_batch)
        crops = self.multicrop.apply(images, params, rows)
        torch.manual_seed(derive_seed("model", self.seed, step, self.dist.rank))  # drop path
        self.student.train()
        self.teacher.train()
        with self.amp:
            with torch.no_grad():
                teacher_out = self.teacher(crops[:2])
            student_out = self.student_forward(crops)
        return student_out.float(), teacher_out.float()

    def loss(self, step: int, images: torch.Tensor) -> float:
        """Step `step`'s loss on these images with the models as they are, changing nothing."""
        with torch.no_grad():
            student_out, teacher_out = self.forward(step, images)
            return float(self.loss_fn.cross_entropy(student_out, teacher_out, step // self.steps_per_epoch).item())

    def step(self, step: int, images: torch.Tensor) -> float:
        """One optimisation step on this rank's uint8 images; returns the mean loss over ranks."""
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = float(self.lr[step])
            if i == 0:
                group["weight_decay"] = float(self.wd[step])
        student_out, teacher_out = self.forward(step, images)
        loss = self.loss_fn(student_out, teacher_out, step // self.steps_per_epoch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg["clip_grad"]:
            clip_gradients(self.student, float(self.cfg["clip_grad"]))
        if step < self.freeze_steps:
            for name, param in self.student.named_parameters():
                if "last_layer" in name:
                    param.grad = None
        self.optimizer.step()
        with torch.no_grad():
            m = float(self.momentum[step])
            teacher = list(self.teacher.parameters())
            torch._foreach_mul_(teacher, m)
            torch._foreach_add_(teacher, [p.detach() for p in self.student.parameters()], alpha=1.0 - m)
            value = loss.detach().clone()
            if self.dist.world > 1:
                torch.distributed.all_reduce(value)
                value /= self.dist.world
        # The step's only wait for the GPU: a non-finite loss is caught here, before the
        # caller can save the state it left.
        mean_loss = float(value.item())
        if not math.isfinite(mean_loss):
            raise HarnessError(f"DINO loss is {mean_loss} at step {step}; lower the learning rate or check the data")
        return mean_loss


def image_hash(image: torch.Tensor) -> str:
    return hashlib.sha256(image.contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    from harness.cache import atomic_write

    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path`, or None when absent; an unreadable one is set aside."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        with contextlib.suppress(OSError):  # another rank may have moved it already
            path.replace(path.with_suffix(".unreadable"))
        return None
