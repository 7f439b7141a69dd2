"""Dataset readers, by format.

A dataset is named in registry.yaml with a `format` and (for real data) a `root`.
`open_dataset(name)` returns the reader's object; classification formats return a
`ClassificationData` with a memory (`train`) and a query (`test`) split. Splits hand out
uint8 image batches [n, 3, H, W]; each encoder resizes and normalises them itself.

Bundled formats need no root: they read data that installed packages ship.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from harness.errors import HarnessError

if TYPE_CHECKING:
    import torch

    from harness.registry import DatasetSpec


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


@dataclass
class ClassificationData:
    name: str
    train: Any
    test: Any
    classes: list[str]
    description: str = ""
    splits: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


Reader = Callable[[str, "DatasetSpec"], Any]
FORMATS: dict[str, Reader] = {}


def dataset_format(name: str) -> Callable[[Reader], Reader]:
    def decorate(reader: Reader) -> Reader:
        FORMATS[name] = reader
        return reader

    return decorate


def open_dataset(name: str, spec: DatasetSpec) -> Any:
    try:
        reader = FORMATS[spec.format]
    except KeyError:
        from harness.errors import UnknownNameError

        raise UnknownNameError(f"format of dataset {name!r}", spec.format, sorted(FORMATS)) from None
    return reader(name, spec)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices with each class split in the same proportion."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    train, test = train_test_split(indices, test_size=test_fraction, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(test)


def grey_to_rgb_uint8(images: np.ndarray, max_value: float) -> np.ndarray:
    """[n, H, W] grey values in [0, max_value] -> uint8 [n, 3, H, W]."""
    scaled = np.clip(np.rint(images.astype(np.float64) * (255.0 / max_value)), 0, 255).astype(np.uint8)
    return np.repeat(scaled[:, None], 3, axis=1)


@dataset_format("digits")
def read_digits(name: str, spec: DatasetSpec) -> ClassificationData:
    """scikit-learn's 1797 real 8x8 handwritten digits (UCI), grey 0-16 scaled to 0-255.

    Split: stratified, 30% test, seed 0 (options `test_fraction`, `seed`) -> 1257 / 540.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    options = {"test_fraction": 0.3, "seed": 0, **spec.options}
    unknown = set(options) - {"test_fraction", "seed"}
    if unknown:
        raise HarnessError(f"datasets.{name}.options: unknown option(s) {sorted(unknown)}; known: test_fraction, seed")
    images = grey_to_rgb_uint8(digits.images, 16.0)
    labels = digits.target.astype(np.int64)
    train, test = stratified_split(labels, options["test_fraction"], options["seed"])
    return ClassificationData(
        name=name,
        train=ArraySplit(images[train], labels[train]),
        test=ArraySplit(images[test], labels[test]),
        classes=[str(d) for d in range(10)],
        description="scikit-learn digits, stratified 70/30 split (seed 0)",
    )
