"""The training images of a `dino` encoder and the order it sees them in.

`GeneratorSource` renders a generator's stream (optionally held in memory),
`FolderSource` reads an image folder, `StreamPlan` says which stream indices each rank
trains on at each step, and `step_batches` yields them, prefetched by DataLoader
workers or streamed through `harness.streaming.GeneratorStream`. Every order is derived
from seeds, never from the number of workers or processes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from harness.errors import HarnessError

PREFETCH_FACTOR = 2  # batches each DataLoader worker prepares ahead
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any tuple of values (stable across runs and machines)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1



class GeneratorSource:
    """Images of a generator's stream `seed`: index i is `sample(seed, 1, size, start=i)`;
    the indices a batch needs are fetched in one `sample_at` call.

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

    @property
    def held_in_memory(self) -> bool:
        """Whether the dataset is rendered once and kept (then it needs no data workers)."""
        return self._cache is not None

    def check(self, images: Any, n: int) -> torch.Tensor:
        return self.generator.checked(images, n, self.size)

    def _render(self, indices: Sequence[int]) -> torch.Tensor:
        """The images of these stream indices in one `sample_at` call (a shuffled epoch's
        indices are scattered: one call per image would pay a whole render pass each)."""
        return self.check(self.generator.sample_at(self.seed, [int(i) for i in indices], self.size), len(indices))

    def preload(self) -> None:
        """Render the whole (finite, cached) dataset now, in this process."""
        if self._cache is not None:
            end = int(self.length or 0)
            for first in range(0, end, self.POOL_BLOCK):
                self.fetch(range(first, min(first + self.POOL_BLOCK, end)))

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


def worker_start_method() -> str | None:
    """How DataLoader workers start: spawned (a fresh interpreter) when this process has
    initialised CUDA, since a worker forked from it cannot use the GPU and a generator
    would render and cluster on the CPU there; otherwise forked (the platform default)."""
    return "spawn" if torch.cuda.is_initialized() else None


def step_batches(
    source: Any, plan: StreamPlan, start: int, end: int, num_workers: int, start_method: str | None = None,
) -> Iterator[tuple[int, torch.Tensor, list[int]]]:
    """(step, this rank's uint8 batch, stream indices) for steps start..end-1.

    An endless generator stream read by at most one worker goes through
    `harness.streaming.GeneratorStream` (its batch k of b consecutive images goes to
    rank k mod w: exactly `plan`'s images). Otherwise a map-style dataset over steps is
    prefetched by `num_workers` DataLoader workers; its batches do not depend on the
    number of workers, nor on how they start (`start_method`, default
    `worker_start_method()`).
    """
    start_method = start_method or worker_start_method()
    if isinstance(source, GeneratorSource) and not source.held_in_memory and plan.dataset_size is None and num_workers <= 1:
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
                batches = torch.utils.data.DataLoader(
                    stream, batch_size=None, num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                    multiprocessing_context=start_method,
                )
            for step, (images, indices) in zip(range(start, end), batches):
                indices = [int(i) for i in indices]
                if indices != plan.indices(step):
                    raise HarnessError(f"generator stream gave images {indices[:3]}... for step {step}, expected {plan.indices(step)[:3]}...")
                yield step, source.check(images, len(indices)), indices
            return
    if isinstance(source, GeneratorSource) and source.held_in_memory:
        # A dataset held in memory is rendered once, here: forked workers would each render
        # their own copy, on the CPU where the parent holds the GPU; batches of it cost nothing.
        source.preload()
        num_workers = 0
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
        prefetch_factor=PREFETCH_FACTOR,
        pin_memory=torch.cuda.is_available(),
        collate_fn=_as_is,
        multiprocessing_context=start_method,
    )
    yield from loader
