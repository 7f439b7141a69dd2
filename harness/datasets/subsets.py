"""`harness run --limit`: a seeded, stratified subset of each split of a classification
dataset, the same for every encoder, for quick looks at a large benchmark."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from harness.datasets.splits import ClassificationData
from harness.keys import stable_hash

if TYPE_CHECKING:
    import torch

Limit = int | float
"""At most N images per split (an integer >= 1), or that fraction of each split (0 < f < 1)."""


def parse_limit(text: str) -> Limit:
    """An argparse type: N (images per split) or a fraction in (0, 1)."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of images or a fraction, got {text!r}") from None
    if value >= 1 and value == int(value):
        return int(value)
    if 0 < value < 1:
        return value
    raise argparse.ArgumentTypeError(f"expected an integer >= 1 or a fraction between 0 and 1, got {text!r}")


def subset_indices(labels: np.ndarray, limit: Limit, seed: int) -> np.ndarray:
    """Sorted indices of a subset of `limit` items (count or fraction), each class kept in
    proportion (scikit-learn's stratified split) where the labels allow it, else a
    seeded uniform draw."""
    from sklearn.model_selection import train_test_split

    n = len(labels)
    size = limit if isinstance(limit, int) else max(1, round(limit * n))
    if size >= n:
        return np.arange(n)
    indices = np.arange(n)
    flat = np.asarray(labels).reshape(n, -1)[:, 0] if n else np.asarray(labels)
    try:
        chosen, _ = train_test_split(indices, train_size=size, stratify=flat, random_state=seed)
    except ValueError:  # a class too small to stratify, or fewer images than classes
        chosen = np.random.default_rng(seed).choice(n, size=size, replace=False)
    return np.sort(chosen)


class SubsetSplit:
    """The items `indices` of a split, with its labels: the split interface the tasks use
    (len, labels, image_size, batches, take, map_raw)."""

    def __init__(self, split: Any, indices: np.ndarray) -> None:
        self.split, self.indices = split, indices
        self.labels = np.asarray(split.labels)[indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"SubsetSplit({len(self)} of {len(self.split)})"

    @property
    def image_size(self) -> int:
        return int(self.split.image_size)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(self), batch_size):
            yield self.split.take(self.indices[start : start + batch_size])

    def take(self, indices: Sequence[int]) -> torch.Tensor:
        return self.split.take(self.indices[np.asarray(indices, dtype=np.int64)])

    def map_raw(self, indices: Sequence[int], fn: Callable[[torch.Tensor, int], torch.Tensor]) -> list[torch.Tensor]:
        mapped = self.indices[np.asarray(indices, dtype=np.int64)]
        return [fn(image, int(i)) for image, i in zip(self.split.map_raw(mapped, lambda image, _: image), indices)]


def limit_dataset(data: Any, limit: Limit, seed: int) -> Any:
    """`data` with each split of a classification dataset cut to `limit` (stratified,
    seeded per split name); other datasets are returned whole."""
    if not isinstance(data, ClassificationData):
        return data

    def cut(split: Any, name: str) -> Any:
        split_seed = int(stable_hash(["limit", seed, name]), 16) % 2**32
        return SubsetSplit(split, subset_indices(np.asarray(split.labels), limit, split_seed))

    splits = {name: cut(split, name) for name, split in data.splits.items()}

    def cut_role(split: Any, default_name: str) -> Any:
        """The memory or query split's subset: the one cut under its own name when it is
        among `splits` (a query split named "val" is cut as "val"), else cut under the role's name."""
        for name, whole in data.splits.items():
            if whole is split:
                return splits[name]
        return cut(split, default_name)

    return dataclasses.replace(data, train=cut_role(data.train, "train"), test=cut_role(data.test, "test"), splits=splits)
