"""Splits and the classification dataset object.

A split is any object with `len(split)`, `split.labels`, `split.image_size` and
`split.batches(batch_size)` (uint8 image tensors [n, 3, H, W]); random access is
`split.take(indices)` and, for training-time augmentation, `split.map_raw(indices, fn)`.
Each encoder resizes and normalises the images itself.

* `ArraySplit`: images already held in an array (bundled data).
* `ImageFileSplit`: one image file per item, decoded in a thread pool and passed
  through the protocol's preprocessing (`harness.datasets.images.Preprocess`).
* `NpzImageSplit` (harness.datasets.medmnist): one key of a `.npz` file, streamed.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from harness.datasets.images import PixelLimit, Preprocess, decode_image
from harness.datasets.spec import default_workers
from harness.errors import HarnessError

if TYPE_CHECKING:
    import torch
    from PIL import Image


@dataclass
class ArraySplit:
    """A split held in memory: uint8 images [n, 3, H, W] and integer labels [n]."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        import torch

        for start in range(0, len(self), batch_size):
            yield torch.from_numpy(np.ascontiguousarray(self.images[start : start + batch_size]))

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def take(self, indices: Sequence[int]) -> torch.Tensor:
        """The images at `indices`, uint8 [len(indices), 3, H, W]."""
        import torch

        return torch.from_numpy(np.ascontiguousarray(self.images[np.asarray(indices, dtype=np.int64)]))

    def map_raw(self, indices: Sequence[int], fn: Callable[[torch.Tensor, int], torch.Tensor]) -> list[torch.Tensor]:
        """`fn(image, index)` for each index, the image as stored (uint8 [3, H, W])."""
        import torch

        return [fn(torch.from_numpy(np.ascontiguousarray(self.images[i])), int(i)) for i in indices]


class ImageFileSplit:
    """One image file per item, decoded in a thread pool as batches are asked for.

    `origin(i)` says where item i is listed (e.g. "images.txt line 12"); it is added to
    the message of a decoding error; `limit` is the largest image it decodes. Batches
    are prefetched one ahead, so decoding overlaps the caller's work on the previous batch.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: Sequence[int] | np.ndarray,
        preprocess: Preprocess,
        workers: int | None = None,
        origin: Callable[[int], str] | None = None,
        limit: PixelLimit = PixelLimit(),
    ) -> None:
        self._files = [os.fspath(path) for path in paths]  # strings: a Path per file costs seconds per million
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) != len(self._files):
            raise HarnessError(f"ImageFileSplit: {len(self._files)} paths but {len(self.labels)} labels")
        self.preprocess = preprocess
        self.workers = workers or default_workers()
        self.origin = origin
        self.limit = limit

    def __len__(self) -> int:
        return len(self._files)

    @property
    def paths(self) -> Sequence[Path]:
        """The image files, in item order."""
        return _Paths(self._files)

    def __repr__(self) -> str:
        return f"ImageFileSplit(n={len(self)}, preprocess={self.preprocess})"

    @property
    def image_size(self) -> int:
        return self.preprocess.size

    def decode(self, index: int) -> Image.Image:
        return decode_image(self._files[index], self.origin(index) if self.origin else "", self.limit)

    def load(self, index: int) -> np.ndarray:
        """Item `index` after the split's preprocessing, uint8 [3, S, S]."""
        return self.preprocess(self.decode(index))

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        import torch

        starts = range(0, len(self), batch_size)
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="decode")

        def submit(position: int) -> list[Any]:
            if position >= len(starts):
                return []
            start = starts[position]
            return [pool.submit(self.load, i) for i in range(start, min(start + batch_size, len(self)))]

        try:
            ahead = submit(0)
            for position in range(len(starts)):
                current, ahead = ahead, submit(position + 1)
                yield torch.from_numpy(np.stack([future.result() for future in current]))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def take(self, indices: Sequence[int]) -> torch.Tensor:
        """The preprocessed images at `indices`, uint8 [len(indices), 3, S, S]."""
        import torch

        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
            return torch.from_numpy(np.stack(list(pool.map(self.load, [int(i) for i in indices]))))

    def map_raw(self, indices: Sequence[int], fn: Callable[[torch.Tensor, int], torch.Tensor]) -> list[torch.Tensor]:
        """`fn(image, index)` for each index, the image as decoded (uint8 [3, H, W], no
        preprocessing), run in the thread pool: for training-time augmentation."""
        import torchvision.transforms.functional as TF

        def work(index: int) -> torch.Tensor:
            return fn(TF.pil_to_tensor(self.decode(index)), index)

        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
            return list(pool.map(work, [int(i) for i in indices]))


class _Paths(Sequence[Path]):
    """File names held as strings, read as Paths."""

    def __init__(self, files: list[str]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [Path(file) for file in self.files[index]]
        return Path(self.files[index])


@dataclass
class ClassificationData:
    """A memory split (`train`) and a query split (`test`) with integer labels.

    `label_type` is "multi-class" (labels [n]), "binary-class" (labels [n] in {0, 1})
    or "multi-label, binary-class" (labels [n, L] of 0/1), MedMNIST's names.
    """

    name: str
    train: Any
    test: Any
    classes: list[str]
    description: str = ""
    splits: dict[str, Any] = field(default_factory=dict)
    label_type: str = "multi-class"

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices with each class split in the same proportion; multi-label
    `labels` ([n, L]) are split at random, since their label sets cannot be stratified."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    stratify = None if labels.ndim == 2 else labels
    train, test = train_test_split(indices, test_size=test_fraction, stratify=stratify, random_state=seed)
    return np.sort(train), np.sort(test)
