"""Generator streams for training, and writing a generator's images to disk.

`GeneratorStream` is a torch IterableDataset over a generator's stream `seed`: the
stream is cut into batches of `batch_size` consecutive indices, and batch k goes to
shard k mod (world_size * num_workers), shard = rank * num_workers + worker id. So every
image of the stream is rendered exactly once across all DataLoader workers and all
distributed ranks, each in its own process (with its own GL context), and the images
equal `generator.sample(seed, n, size, start)` whatever the sharding.

`write_imagefolder` renders images 0..n-1 to PNG or JPEG files named by index
(resumable: existing files are kept), `write_grid` saves a sample grid. (This module
imports torch; the command line imports it only when it needs it.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from torch.utils.data import IterableDataset

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.kinds import Generator


def _generator(generator: Any) -> Generator:
    if isinstance(generator, str):
        from harness.config.registry import active_registry

        return active_registry().create("generator", generator)
    if not hasattr(generator, "sample"):
        raise TypeError(f"expected a generator instance or a generator name, got {generator!r}")
    return generator


def _distributed() -> tuple[int, int]:
    """(rank, world_size) of torch.distributed when initialised, else (0, 1)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return 0, 1


class GeneratorStream(IterableDataset):
    """Batches of uint8 images [b, 3, size, size] from a generator's stream.

    `generator` is a registry name (made in each worker process) or an instance (copied
    to each worker); `n` = None streams forever. `rank` / `world_size` default to
    torch.distributed's when it is initialised. With `with_indices`, each item is
    (images, stream indices). Use it with `DataLoader(stream, batch_size=None,
    num_workers=...)`.
    """

    def __init__(
        self,
        generator: str | Generator,
        seed: int = 0,
        size: int = 224,
        batch_size: int = 64,
        n: int | None = None,
        start: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        with_indices: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if n is not None and n < 0:
            raise ValueError(f"n must be >= 0 or None, got {n}")
        self.generator = generator
        self.seed, self.size, self.batch_size, self.n, self.start = seed, size, batch_size, n, start
        self.rank, self.world_size, self.with_indices = rank, world_size, with_indices
        self.registry_path: str | None = None
        if isinstance(generator, str):
            from harness.config.registry import active_registry

            self.registry_path = str(active_registry().path)
        self._instance: Generator | None = None

    def _make(self) -> Generator:
        if self._instance is None:
            if isinstance(self.generator, str):
                import harness.config.registry as registry

                if registry._active is None and self.registry_path:  # a spawned worker
                    registry.use_registry(self.registry_path)
            self._instance = _generator(self.generator)
        return self._instance

    def shard(self) -> tuple[int, int]:
        """(this process's shard, number of shards)."""
        from torch.utils.data import get_worker_info

        rank, world = _distributed()
        rank = rank if self.rank is None else self.rank
        world = world if self.world_size is None else self.world_size
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, world_size={world})")
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * workers + worker, world * workers

    def batches(self) -> Iterator[tuple[int, int]]:
        """(first index, count) of this shard's batches, in stream order."""
        shard, shards = self.shard()
        k = shard
        while True:
            first = k * self.batch_size
            if self.n is not None and first >= self.n:
                return
            count = self.batch_size if self.n is None else min(self.batch_size, self.n - first)
            yield self.start + first, count
            k += shards

    def __iter__(self) -> Iterator[Any]:
        import torch

        generator = self._make()
        for first, count in self.batches():
            images = generator.checked(generator.sample(self.seed, count, self.size, start=first), count, self.size)
            if self.with_indices:
                yield images, torch.arange(first, first + count)
            else:
                yield images

    def __len__(self) -> int:
        if self.n is None:
            raise TypeError("an endless GeneratorStream has no length")
        return -(-self.n // self.batch_size)


# ----------------------------------------------------------------------------- files
# The formats a folder of a generator's images can be written in: the file suffix, and
# PIL's format name with its options. PNG keeps every byte (level 1: the fastest
# compression); JPEG at quality 75 (PIL's default) is what the released research code's
# `save_image` writes its 1.3M-image datasets as: about 10x smaller files, decoded 2 to
# 5x faster, lossy.
IMAGE_FORMATS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "png": (".png", "PNG", {"compress_level": 1}),
    "jpeg": (".jpg", "JPEG", {"quality": 75}),
}


def image_path(out_dir: Path, index: int, image_format: str = "png") -> Path:
    """Where image `index` of a written folder lives: shards of 1000 files."""
    return out_dir / f"{index // 1000:05d}" / f"{index:08d}{IMAGE_FORMATS[image_format][0]}"


def _save(array: Any, path: Path, image_format: str = "png") -> None:
    """An image [H, W, 3] uint8 written to `path` whole or not at all."""
    from PIL import Image

    _, pil_format, options = IMAGE_FORMATS[image_format]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(array).save(tmp, format=pil_format, **options)
    os.replace(tmp, path)


def write_imagefolder(
    generator: str | Generator,
    out_dir: str | os.PathLike,
    n: int,
    size: int,
    seed: int = 0,
    batch_size: int = 64,
    image_format: str = "png",
) -> Path:
    """Images 0..n-1 of stream `seed` as `out_dir/<index // 1000>/<index>.png` (or `.jpg`
    with `image_format="jpeg"`, see `IMAGE_FORMATS`), encoded on one thread per core
    while the next batch renders.

    Resumable: images whose file exists are not rendered again. `out_dir/generator.json`
    records what was written; a folder written by another generator, seed, size or
    format is refused rather than mixed.
    """
    if image_format not in IMAGE_FORMATS:
        raise HarnessError(f"image format {image_format!r} is not one of {', '.join(IMAGE_FORMATS)}")
    gen = _generator(generator)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"generator": gen.name, "key": gen.key, "describe": gen.describe(), "seed": seed, "size": size, "format": image_format}
    meta_path = out / "generator.json"
    if meta_path.exists():
        try:
            old = json.loads(meta_path.read_text())
        except ValueError:
            old = {}
        old.setdefault("format", "png")  # folders written before JPEG was offered
        if any(old.get(k) != meta[k] for k in ("key", "seed", "size", "format")):
            raise HarnessError(
                f"{out} holds {old.get('format')} images of generator {old.get('generator')!r} (key {old.get('key')}, "
                f"seed {old.get('seed')}, size {old.get('size')}), not {image_format} images of {gen.name!r} (key {gen.key}, "
                f"seed {seed}, size {size}); write to another folder"
            )
        n_total = max(n, int(old.get("n", 0)))
    else:
        n_total = n
    tmp = meta_path.with_name(meta_path.name + ".tmp")
    tmp.write_text(json.dumps({**meta, "n": n_total}, indent=2, default=str))
    os.replace(tmp, meta_path)
    missing = [i for i in range(n) if not image_path(out, i, image_format).exists()]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # PIL encodes without the GIL
        pending: list[Any] = []
        i = 0
        while i < len(missing):
            j = i + 1
            while j < len(missing) and j - i < batch_size and missing[j] == missing[j - 1] + 1:
                j += 1
            images = gen.checked(gen.sample(seed, j - i, size, start=missing[i]), j - i, size).permute(0, 2, 3, 1).contiguous().cpu().numpy()
            for k, index in enumerate(missing[i:j]):
                pending.append(pool.submit(_save, images[k], image_path(out, index, image_format), image_format))
            if len(pending) > 4 * batch_size:
                for future in pending:
                    future.result()
                pending = []
            i = j
        for future in pending:
            future.result()
    return out


def make_grid(images: Any, nrow: int | None = None, pad: int = 2) -> Any:
    """A grid image [H, W, 3] uint8 (numpy) of images [n, 3, s, s], white padding."""
    import math

    import numpy as np

    n, _, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, dtype=np.uint8)
    x = images.permute(0, 2, 3, 1).numpy() if hasattr(images, "permute") else np.transpose(images, (0, 2, 3, 1))
    for k in range(n):
        r, c = divmod(k, nrow)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top:top + h, left:left + w] = x[k]
    return grid


def write_grid(generator: str | Generator, path: str | os.PathLike, n: int = 64, size: int = 96, seed: int = 0) -> Path:
    """Save a PNG grid of images 0..n-1 of stream `seed`; returns the path."""
    gen = _generator(generator)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = gen.checked(gen.sample(seed, n, size), n, size)
    _save(make_grid(images.cpu()), path)
    return path
