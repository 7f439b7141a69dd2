"""DINO self-distillation (Caron et al. 2021), reimplemented for the `dino` encoder.

The pieces follow DINO's `main_dino.py` and `utils.py`: a student and an exponential-
moving-average teacher (backbone + DINO head), the cross-entropy between the teacher's
centred, sharpened distribution of the 2 global crops and the student's distribution of
every other crop, centring with momentum, a teacher temperature warm-up, cosine
schedules for the learning rate (after a linear warm-up), weight decay and teacher
momentum, per-parameter gradient clipping, the head's last layer frozen during the first
epoch, drop path in the student, AdamW without decay on biases and norms.

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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.errors import HarnessError
from harness_plugins.encoders._dino_augment import MultiCrop

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any tuple of values (stable across runs and machines)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ---------------------------------------------------------------------------- modules
class WeightNormLinear(nn.Module):
    """Linear layer without bias, weight = g * v / ||v|| per output unit.

    The same parametrisation and parameter names (`weight_g`, `weight_v`) as DINO's
    `nn.utils.weight_norm(nn.Linear(...))` last layer.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        linear = nn.Linear(in_dim, out_dim, bias=False)
        self.weight_v = nn.Parameter(linear.weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)
        return F.linear(x, weight)


class DINOHead(nn.Module):
    """MLP (nlayers, GELU) -> bottleneck -> L2 normalise -> weight-normalised last layer."""

    def __init__(
        self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, nlayers: int = 3, norm_last_layer: bool = True
    ) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


class MultiCropWrapper(nn.Module):
    """Backbone on each run of same-resolution crops (one forward per resolution), the
    CLS features concatenated, then the head on all of them at once."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        outputs, start = [], 0
        sizes = [c.shape[-1] for c in crops]
        while start < len(crops):
            end = start
            while end < len(crops) and sizes[end] == sizes[start]:
                end += 1
            outputs.append(self.backbone(torch.cat(list(crops[start:end]))))
            start = end
        return self.head(torch.cat(outputs))


class DINOLoss(nn.Module):
    """Cross-entropy between the teacher's centred, sharpened softmax of the global crops
    and the student's softmax of every other crop; updates the centre (EMA, all ranks)."""

    def __init__(
        self, out_dim: int, ncrops: int, warmup_teacher_temp: float, teacher_temp: float, warmup_teacher_temp_epochs: int,
        epochs: int, student_temp: float = 0.1, center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.ncrops = ncrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        warm = min(warmup_teacher_temp_epochs, epochs)
        self.teacher_temp_schedule = np.concatenate(
            (np.linspace(warmup_teacher_temp, teacher_temp, warm), np.ones(max(epochs - warm, 1)) * teacher_temp)
        )

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: int) -> torch.Tensor:
        student_out = (student_output / self.student_temp).chunk(self.ncrops)
        temp = float(self.teacher_temp_schedule[min(epoch, len(self.teacher_temp_schedule) - 1)])
        teacher_out = F.softmax((teacher_output - self.center) / temp, dim=-1).detach().chunk(2)
        total, terms = student_output.new_zeros(()), 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    continue  # the same view for teacher and student is skipped
                total = total + torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1).mean()
                terms += 1
        self.update_center(teacher_output)
        return total / terms

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        batch_center = teacher_output.sum(dim=0, keepdim=True)
        count = torch.tensor(float(len(teacher_output)), device=teacher_output.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(batch_center)
            torch.distributed.all_reduce(count)
        batch_center = batch_center / count
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))


def cosine_schedule(base: float, final: float, total: int, warmup: int = 0, warmup_start: float = 0.0) -> np.ndarray:
    """DINO's `cosine_scheduler`, per step: linear warm-up, then cosine from base to final."""
    warmup = min(warmup, total)
    head = np.linspace(warmup_start, base, warmup) if warmup > 0 else np.array([])
    steps = np.arange(total - warmup)
    tail = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(len(steps), 1)))
    return np.concatenate((head, tail))


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Weight decay on weights only: biases and 1-d parameters (norms) are not decayed."""
    regularized, not_regularized = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (not_regularized if name.endswith(".bias") or param.ndim == 1 else regularized).append(param)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


def clip_gradients(model: nn.Module, clip: float) -> None:
    """DINO's clipping: each parameter's gradient norm separately to at most `clip`."""
    for param in model.parameters():
        if param.grad is not None:
            norm = param.grad.detach().norm(2)
            coef = clip / (norm + 1e-6)
            param.grad.mul_(torch.clamp(coef, max=1.0))


# ---------------------------------------------------------------------------- data
class GeneratorSource:
    """Images of a generator's stream `seed`: index i is `sample(seed, 1, size, start=i)`;
    consecutive indices are fetched in one call.

    With a finite `length` (the recipe's dataset_size) whose images fit in
    `cache_bytes`, each image is rendered once and kept in memory for later epochs (the
    same bytes as rendering it again). The pool is then filled in aligned blocks of
    `POOL_BLOCK` consecutive images, one batched `sample` call each, rather than image
    by image as a shuffled epoch asks for them.
    """

    POOL_BLOCK = 256

    def __init__(self, generator: Any, name: str, seed: int, size: int, length: int | None = None, cache_bytes: int = 0) -> None:
        self.generator, self.name, self.seed, self.size = generator, name, seed, size
        self.length = length
        self._cache: dict[int, torch.Tensor] | None = None
        if length is not None and length * 3 * size * size <= cache_bytes:
            self._cache = {}

    def check(self, images: Any, n: int) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or tuple(images.shape) != (n, 3, self.size, self.size):
            got = f"{getattr(images, 'dtype', type(images).__name__)} {list(getattr(images, 'shape', []))}"
            raise HarnessError(f"generator {self.name!r} returned {got}, expected uint8 [{n}, 3, {self.size}, {self.size}]")
        return images

    def _render(self, indices: Sequence[int]) -> torch.Tensor:
        chunks, i = [], 0
        while i < len(indices):
            j = i + 1
            while j < len(indices) and indices[j] == indices[j - 1] + 1:
                j += 1
            images = self.generator.sample(self.seed, j - i, self.size, start=int(indices[i]))
            chunks.append(self.check(images, j - i))
            i = j
        return torch.cat(chunks) if len(chunks) > 1 else chunks[0]

    def fetch(self, indices: Sequence[int]) -> torch.Tensor:
        if self._cache is None:
            return self._render(indices)
        end = int(self.length or 0)  # a pool exists only for a finite length
        blocks = sorted({int(i) // self.POOL_BLOCK for i in indices if int(i) not in self._cache})
        missing = [
            i for block in blocks for i in range(block * self.POOL_BLOCK, min((block + 1) * self.POOL_BLOCK, end)) if i not in self._cache
        ]
        if missing:
            for index, image in zip(missing, self._render(missing)):
                self._cache[index] = image.clone()
        return torch.stack([self._cache[int(i)] for i in indices])


class FolderSource:
    """The image files under `root` (recursively, sorted by relative path): the shorter
    side resized to `size` (bicubic), centre-cropped to size x size. `limit` keeps a
    fixed subset (seeded) when the folder holds more images."""

    def __init__(self, root: Path, size: int, limit: int | None = None, seed: int = 0) -> None:
        self.root, self.size = root, size
        if not root.is_dir():
            raise HarnessError(f"training image folder {root} does not exist or is not a folder")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise HarnessError(f"training image folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        if limit is not None and limit < len(files):
            order = torch.randperm(len(files), generator=torch.Generator().manual_seed(derive_seed("subset", seed)))
            files = [files[int(i)] for i in sorted(order[:limit].tolist())]
        self.files = files
        self.length: int | None = len(files)

    def load(self, path: Path) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                w, h = image.size
                scale = self.size / min(w, h)
                nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
                image = image.resize((nw, nh), Image.BICUBIC)
                left, top = (nw - self.size) // 2, (nh - self.size) // 2
                image = image.crop((left, top, left + self.size, top + self.size))
                return np.asarray(image, dtype=np.uint8)
        except OSError as exc:
            raise HarnessError(f"cannot read training image {path}: {exc}") from None

    def fetch(self, indices: Sequence[int]) -> torch.Tensor:
        arrays = np.stack([self.load(self.files[int(i) % len(self.files)]) for i in indices])
        return torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()


@dataclass
class StreamPlan:
    """Which stream indices rank `rank` of `world` trains on at each step.

    Without `dataset_size` the stream is endless: step s takes images
    s*B .. (s+1)*B - 1 (B = global batch), rank r the r-th slice of that range. With it,
    epoch e visits a permutation (seeded by (seed, e)) of the first `dataset_size`
    images, B per step, the last incomplete batch dropped (as DINO's loader does).
    """

    seed: int
    global_batch: int
    rank: int = 0
    world: int = 1
    dataset_size: int | None = None
    _perm: tuple[int, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.world

    @property
    def steps_per_epoch(self) -> int | None:
        return None if self.dataset_size is None else max(1, self.dataset_size // self.global_batch)

    def indices(self, step: int) -> list[int]:
        first = self.rank * self.local_batch
        if self.dataset_size is None:
            base = step * self.global_batch + first
            return list(range(base, base + self.local_batch))
        spe = self.steps_per_epoch
        epoch, within = divmod(step, spe)
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(derive_seed("epoch", self.seed, epoch))
            self._perm = (epoch, torch.randperm(self.dataset_size, generator=gen))
        start = within * self.global_batch + first
        return self._perm[1][start : start + self.local_batch].tolist()


def _as_is(item: Any) -> Any:
    return item


class StepBatches(torch.utils.data.Dataset):
    """Map-style dataset over steps: item s = (s, this rank's uint8 batch of step s)."""

    def __init__(self, source: Any, plan: StreamPlan) -> None:
        self.source, self.plan = source, plan

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, step: int) -> tuple[int, torch.Tensor, list[int]]:
        indices = self.plan.indices(step)
        return step, self.source.fetch(indices), indices


def step_batches(source: Any, plan: StreamPlan, start: int, end: int, num_workers: int) -> Iterator[tuple[int, torch.Tensor, list[int]]]:
    """(step, this rank's uint8 batch, stream indices) for steps start..end-1.

    An endless generator stream read by at most one worker goes through
    `harness.streaming.GeneratorStream` (its batch k of b consecutive images goes to
    rank k mod w: exactly `plan`'s images). Otherwise a map-style dataset over steps is
    prefetched by `num_workers` DataLoader workers; its batches do not depend on the
    number of workers.
    """
    if isinstance(source, GeneratorSource) and source._cache is None and plan.dataset_size is None and num_workers <= 1:
        try:
            from harness.streaming import GeneratorStream
        except ImportError:
            GeneratorStream = None
        if GeneratorStream is not None:
            stream = GeneratorStream(
                source.generator, seed=source.seed, size=source.size, batch_size=plan.local_batch,
                n=(end - start) * plan.global_batch, start=start * plan.global_batch,
                rank=plan.rank, world_size=plan.world, with_indices=True,
            )
            batches: Any = stream
            if num_workers:
                batches = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=torch.cuda.is_available())
            for step, (images, indices) in zip(range(start, end), batches):
                indices = [int(i) for i in indices]
                if indices != plan.indices(step):
                    raise HarnessError(f"generator stream gave images {indices[:3]}... for step {step}, expected {plan.indices(step)[:3]}...")
                yield step, source.check(images, len(indices)), indices
            return
    if num_workers <= 0:
        dataset = StepBatches(source, plan)
        for step in range(start, end):
            yield dataset[step]
        return
    loader = torch.utils.data.DataLoader(
        StepBatches(source, plan),
        batch_size=None,
        sampler=range(start, end),
        num_workers=num_workers,
        prefetch_factor=2,
        pin_memory=torch.cuda.is_available(),
        collate_fn=_as_is,
    )
    yield from loader


# ---------------------------------------------------------------------------- training
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

    `cfg` is the resolved recipe (see `harness_plugins.encoders.dino.RECIPES`);
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
        self.optimizer = torch.optim.AdamW(param_groups(self.student), lr=0.0, weight_decay=0.0)
        spe, total = self.steps_per_epoch, self.total_steps
        self.lr = cosine_schedule(float(cfg["lr"]) * gb / 256.0, float(cfg["min_lr"]), total, int(cfg["warmup_epochs"] * spe))
        self.wd = cosine_schedule(float(cfg["weight_decay"]), float(cfg["weight_decay_end"]), total)
        self.momentum = cosine_schedule(float(cfg["momentum_teacher"]), 1.0, total)
        self.freeze_steps = int(round(float(cfg["freeze_last_layer"]) * spe))
        self.amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()

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
    def step(self, step: int, images: torch.Tensor) -> float:
        """One optimisation step on this rank's uint8 images; returns the mean loss over ranks."""
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = float(self.lr[step])
            if i == 0:
                group["weight_decay"] = float(self.wd[step])
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
        loss = self.loss_fn(student_out.float(), teacher_out.float(), step // self.steps_per_epoch)
        if not torch.isfinite(loss):
            raise HarnessError(f"DINO loss is {loss.item()} at step {step}; lower the learning rate or check the data")
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
            for ps, pt in zip(self.student.parameters(), self.teacher.parameters()):
                pt.mul_(m).add_(ps.detach(), alpha=1.0 - m)
            value = loss.detach().clone()
            if self.dist.world > 1:
                torch.distributed.all_reduce(value)
                value /= self.dist.world
        return float(value.item())


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


def timed_steps(trainer: Trainer, source: Any, plan: StreamPlan, steps: int, sync: Callable[[], None], budget_s: float | None = None) -> dict[str, float]:
    """Throughput of up to `steps` training steps after one warm-up step (nothing is
    saved); with `budget_s`, as many of them (at least 2) as fit in that many seconds,
    judged by the warm-up step."""
    batches = step_batches(source, plan, 0, steps + 1, 0)
    step, images, _ = next(batches)
    t0 = time.perf_counter()
    trainer.step(step, images)
    sync()
    if budget_s is not None:
        steps = max(2, min(steps, int(budget_s / max(time.perf_counter() - t0, 1e-9))))
    data_s = model_s = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        step, images, _ = next(batches)
        t1 = time.perf_counter()
        trainer.step(step, images)
        sync()
        data_s += t1 - t0
        model_s += time.perf_counter() - t1
    wall = time.perf_counter() - start
    n = steps * trainer.local_batch
    return {
        "images_per_s": n / wall, "model_images_per_s": n / max(model_s, 1e-9), "data_images_per_s": n / max(data_s, 1e-9),
        "seconds": wall, "steps": steps,
    }
