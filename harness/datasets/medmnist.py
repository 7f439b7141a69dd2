"""MedMNIST (Yang et al. 2023): one `.npz` file per dataset, read as published.

Images are streamed member by member from the file (`NpzImageSplit`), so a 224-px
file never sits in memory whole.
"""

from __future__ import annotations

import zipfile
import zlib
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from harness.datasets.spec import dataset_options
from harness.datasets.splits import ClassificationData
from harness.errors import DataFormatError, DatasetUnavailable, HarnessError

if TYPE_CHECKING:
    import torch

    from harness.config.schema import DatasetSpec


class NpzImageSplit:
    """The images stored under one key of a `.npz` file (N x S x S grey or N x S x S x 3).

    Batches are read from the file's member one after the other, so a 224-px MedMNIST
    file never sits in memory whole; grey images are repeated to 3 channels.
    `take`/`map_raw` (random access) load the member once and keep it.
    """

    def __init__(self, path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype, fortran: bool, labels: np.ndarray) -> None:
        self.path, self.key, self.shape, self.dtype, self.fortran = path, key, shape, dtype, fortran
        self.labels = labels
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.shape[0])

    def __repr__(self) -> str:
        return f"NpzImageSplit({self.path.name}:{self.key}, shape={self.shape})"

    @property
    def image_size(self) -> int:
        return int(self.shape[1])

    @staticmethod
    def to_rgb(images: np.ndarray) -> np.ndarray:
        if images.ndim == 3:
            return np.ascontiguousarray(np.repeat(images[:, None], 3, axis=1))
        rgb = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        return rgb if rgb.flags.writeable else rgb.copy()  # 1-px rows stay a view of the read-only file buffer

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        import torch

        if self.fortran or self._array is not None:
            array = self.array()
            for start in range(0, len(self), batch_size):
                yield torch.from_numpy(self.to_rgb(array[start : start + batch_size]))
            return
        row_shape = tuple(self.shape[1:])
        row_bytes = int(np.prod(row_shape)) * self.dtype.itemsize
        with _npz_member(self.path, self.key) as handle:
            _read_npy_header(handle, self.path, self.key)
            for start in range(0, len(self), batch_size):
                count = min(batch_size, len(self) - start)
                try:
                    data = handle.read(count * row_bytes)
                except _NPZ_READ_ERRORS as exc:  # a corrupt member shows up only when it is read
                    raise DataFormatError(f"{self.path}: key {self.key!r} is corrupt near row {start} ({exc})") from None
                if len(data) != count * row_bytes:
                    raise DataFormatError(f"{self.path}: key {self.key!r} is truncated (ends before row {start + len(data) // max(row_bytes, 1)})")
                rows = np.frombuffer(data, dtype=self.dtype).reshape((count, *row_shape))
                yield torch.from_numpy(self.to_rgb(rows))

    def array(self) -> np.ndarray:
        if self._array is None:
            try:
                with np.load(self.path, allow_pickle=False) as data:
                    self._array = np.asarray(data[self.key])
            except Exception as exc:
                raise DataFormatError(f"{self.path}: cannot read key {self.key!r}: {exc}") from None
        return self._array

    def take(self, indices: Sequence[int]) -> torch.Tensor:
        import torch

        return torch.from_numpy(self.to_rgb(self.array()[np.asarray(indices, dtype=np.int64)]))

    def map_raw(self, indices: Sequence[int], fn: Callable[[torch.Tensor, int], torch.Tensor]) -> list[torch.Tensor]:
        import torch

        array = self.array()
        return [fn(torch.from_numpy(self.to_rgb(array[i : i + 1])[0]), int(i)) for i in indices]


_NPZ_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError, RuntimeError)
"""What reading a damaged `.npz` member raises (bad CRC, bad deflate stream, cut-off data,
unsupported compression or encryption)."""


@contextmanager
def _npz_member(path: Path, key: str) -> Iterator[Any]:
    """The open member `<key>.npy` of a `.npz` file; a damaged archive raises DataFormatError."""
    try:
        archive = zipfile.ZipFile(path)
    except _NPZ_READ_ERRORS as exc:
        raise DataFormatError(f"{path}: not a valid .npz file ({exc})") from None
    with archive:
        try:
            handle = archive.open(key + ".npy")
        except KeyError:
            raise DataFormatError(f"{path}: missing key {key!r}") from None
        except _NPZ_READ_ERRORS as exc:
            raise DataFormatError(f"{path}: key {key!r} cannot be read ({exc})") from None
        with handle:
            yield handle


def _read_npy_header(handle: Any, path: Path, key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    from numpy.lib import format as npy_format

    try:
        version = npy_format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(handle)
        else:
            shape, fortran, dtype = npy_format.read_array_header_2_0(handle)
    except Exception as exc:
        raise DataFormatError(f"{path}: key {key!r} is not a valid .npy array ({exc})") from None
    return tuple(shape), bool(fortran), np.dtype(dtype)


MEDMNIST_KEYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")
MEDMNIST_LABEL_TYPES = {
    # the label type of each published 2D dataset (MedMNIST v2's INFO); others are inferred
    "pathmnist": "multi-class", "chestmnist": "multi-label, binary-class", "dermamnist": "multi-class",
    "octmnist": "multi-class", "pneumoniamnist": "binary-class", "retinamnist": "ordinal-regression",
    "breastmnist": "binary-class", "bloodmnist": "multi-class", "tissuemnist": "multi-class",
    "organamnist": "multi-class", "organcmnist": "multi-class", "organsmnist": "multi-class",
}
LABEL_TYPES = ("multi-class", "binary-class", "ordinal-regression", "multi-label, binary-class")
MEDMNIST_MAX_CLASSES = 100_000
"""Labels at or above this are refused as corrupt (MedMNIST has at most 14 label columns
or 11 classes); one class name is made per index, so a stray huge label would exhaust memory."""
MEDMNIST_PAPER = (
    "pathmnist", "dermamnist", "octmnist", "pneumoniamnist", "breastmnist",
    "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist",
)
"""The 10 datasets of the paper's Table 3, in its column order."""


def medmnist_file(flag: str, size: int) -> str:
    """The published file name: `<flag>.npz` at 28 px, `<flag>_<size>.npz` otherwise."""
    return f"{flag}.npz" if int(size) == 28 else f"{flag}_{int(size)}.npz"


def _sizes_present(root: Path, flag: str) -> dict[int, str]:
    """The published files of `flag` that a directory holds, by image size."""
    found: dict[int, str] = {}
    try:
        names = sorted(entry.name for entry in root.iterdir())
    except OSError:
        return found
    for file_name in names:
        if not file_name.endswith(".npz"):
            continue
        stem = file_name[: -len(".npz")]
        if stem == flag:
            found[28] = file_name
        elif stem.startswith(flag + "_") and stem[len(flag) + 1 :].isdigit():
            found.setdefault(int(stem[len(flag) + 1 :]), file_name)  # `<flag>.npz` (sorted first) is 28 px's published name
    return found


def _missing_file_message(name: str, spec: DatasetSpec, root: Path, flag: str, size: int) -> str:
    """Why a directory root has no file for the configured size, and what to set instead:
    the other sizes it holds (e.g. `<flag>.npz`, 28 px) name the `options: {size: N}` to use."""
    wanted = medmnist_file(flag, size)
    present = _sizes_present(root, flag)
    if present:
        sizes = ", ".join(str(n) for n in sorted(present))
        files = ", ".join(f"{present[n]} = {n} px" for n in sorted(present))
        choices = " or ".join(f"options: {{size: {n}}}" for n in sorted(present))
        return (  # what to do first: the summary table shows only the start of the message
            f"dataset {name!r}: no {wanted} (size {size}); the root has sizes {sizes}: set {choices} "
            f"under datasets.{name} in {spec.registry_file()}, as the whole entry (it replaces the installed one), "
            f"e.g. `{spec.entry_with_options(name, size=max(present))}`; or add {wanted} (root {root}, holding {files})"
        )
    return (
        f"dataset {name!r}: {root / wanted} does not exist (looked for {wanted}); "
        f"{spec.where_to_set_root(name)} (a .npz file or a directory holding it)"
    )


MEDMNIST_OPTIONS: dict[str, Any] = {"flag": None, "size": 224, "label_type": None}


def medmnist_files(name: str, spec: DatasetSpec) -> list[Path]:
    """The one `.npz` the dataset reads: the root itself, or `<flag>_<size>.npz` in it (a
    missing one makes the dataset unavailable, naming the sizes the root has)."""
    options = dataset_options(name, spec, MEDMNIST_OPTIONS)
    size = options["size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise HarnessError(
            f"datasets.{name}.options.size must be a positive integer (the image size in pixels: 28, 64, 128 or 224), got {size!r}"
        )
    root = spec.resolved_root(name)
    if not root.is_dir():
        return [root]
    flag = options["flag"] or name
    present = _sizes_present(root, flag)  # `<flag>_28.npz` is read as 28 px too
    if size not in present or not (root / present[size]).is_file():
        raise DatasetUnavailable(_missing_file_message(name, spec, root, flag, size))
    return [root / present[size]]


def read_medmnist(name: str, spec: DatasetSpec) -> ClassificationData:
    """One MedMNIST `.npz` (keys train_images, train_labels, val_images, val_labels,
    test_images, test_labels; images uint8 N x S x S grey or N x S x S x 3; labels N x L).

    `root` is the `.npz` file itself, or a directory holding `<flag>_<size>.npz`
    (options `flag`, default the dataset name, and `size`, default 224; 28 px is
    `<flag>.npz`). Memory = train, queries = test; val is in `splits`. Grey images are
    repeated to 3 channels; images are handed out at their stored size (each encoder
    resizes). Labels: [n] for multi-class / binary / ordinal datasets; the multi-label
    dataset (chestmnist) keeps its [n, 14] 0/1 matrix and `label_type` says so.
    """
    options = dataset_options(name, spec, MEDMNIST_OPTIONS)
    (path,) = medmnist_files(name, spec)
    flag = options["flag"] or (name if spec.resolved_root(name).is_dir() else path.stem.split("_")[0])
    try:
        archive = zipfile.ZipFile(path)
    except _NPZ_READ_ERRORS as exc:
        raise DataFormatError(f"{path}: not a valid .npz file ({exc})") from None
    headers = {}
    with archive:
        names = archive.namelist()
        counts = Counter(names)
        duplicates = sorted(m for m, count in counts.items() if count > 1)
        if duplicates:
            raise DataFormatError(
                f"{path}: member {duplicates[0]!r} appears {counts[duplicates[0]]} times in the archive; "
                "numpy would read only the last copy, so the file is refused: rewrite it with one member per key"
            )
        members = {m[:-4] for m in names if m.endswith(".npy")}
        for key in MEDMNIST_KEYS:
            if key not in members:
                raise DataFormatError(f"{path}: missing key {key!r} (found: {', '.join(sorted(members)) or 'none'})")
    for key in MEDMNIST_KEYS:
        with _npz_member(path, key) as handle:
            headers[key] = _read_npy_header(handle, path, key)
    try:
        with np.load(path, allow_pickle=False) as data:
            raw_labels = {split: np.asarray(data[f"{split}_labels"]) for split in ("train", "val", "test")}
    except Exception as exc:
        raise DataFormatError(f"{path}: cannot read the label arrays ({exc})") from None
    labels = {}
    for split, values in raw_labels.items():
        key = f"{split}_labels"
        shape, _, dtype = headers[f"{split}_images"]
        if dtype != np.uint8 or len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] != 3) or shape[1] != shape[2] or shape[1] < 1:
            raise DataFormatError(
                f"{path}: key '{split}_images' must be uint8 N x S x S or N x S x S x 3 (S >= 1), got shape {list(shape)} {dtype}"
            )
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2 or not np.issubdtype(values.dtype, np.integer) and not np.issubdtype(values.dtype, np.floating):
            raise DataFormatError(f"{path}: key {key!r} must be an N x L array of integers, got shape {list(values.shape)} {values.dtype}")
        if shape[0] == 0:
            raise DataFormatError(f"{path}: key '{split}_images' holds no images (0 rows); every split needs at least one")
        if len(values) != shape[0]:
            raise DataFormatError(f"{path}: key {key!r} has {len(values)} rows but {split}_images has {shape[0]}")
        if not np.isfinite(values).all() or (values < 0).any() or (values != np.round(values)).any():
            raise DataFormatError(f"{path}: key {key!r} must hold non-negative integer labels")
        if (values >= MEDMNIST_MAX_CLASSES).any():
            raise DataFormatError(
                f"{path}: key {key!r} holds label {values.max():.0f}; class indices must be below {MEDMNIST_MAX_CLASSES}"
            )
        labels[split] = values.astype(np.int64)
    widths = {v.shape[1] for v in labels.values()}
    if len(widths) != 1:
        raise DataFormatError(f"{path}: the label keys disagree on the number of label columns ({sorted(widths)})")
    label_type = options["label_type"] or MEDMNIST_LABEL_TYPES.get(flag)
    if label_type is not None and label_type not in LABEL_TYPES:
        raise HarnessError(
            f"datasets.{name}.options.label_type must be one of {', '.join(map(repr, LABEL_TYPES))} (MedMNIST's names), got {label_type!r}"
        )
    if label_type is None:
        top = max(int(v.max(initial=0)) for v in labels.values())
        label_type = "multi-label, binary-class" if widths.pop() > 1 else ("binary-class" if top <= 1 else "multi-class")
    if label_type == "multi-label, binary-class":
        count = labels["train"].shape[1]
        if any((v > 1).any() for v in labels.values()):
            raise DataFormatError(f"{path}: multi-label keys must hold 0/1 values")
    else:
        if labels["train"].shape[1] != 1:
            raise DataFormatError(f"{path}: key 'train_labels' has {labels['train'].shape[1]} columns; a {label_type} dataset has 1")
        labels = {split: v[:, 0] for split, v in labels.items()}
        if label_type == "binary-class":
            for split, values in labels.items():
                if (values > 1).any():
                    raise DataFormatError(f"{path}: key '{split}_labels' must hold 0/1 values (a binary-class dataset), found {values.max()}")
        count = 2 if label_type == "binary-class" else max(int(v.max(initial=0)) for v in labels.values()) + 1
        held = np.unique(labels["train"])
        for split in ("val", "test"):
            strangers = np.flatnonzero(~np.isin(labels[split], held))
            if len(strangers):
                raise DataFormatError(
                    f"{path}: key '{split}_labels' row {strangers[0]} holds class {labels[split][strangers[0]]}, which no row of "
                    "'train_labels' holds; every query class needs images in the memory split (train)"
                )
    splits = {}
    for split in ("train", "val", "test"):
        shape, fortran, dtype = headers[f"{split}_images"]
        splits[split] = NpzImageSplit(path, f"{split}_images", shape, dtype, fortran, labels[split])
    return ClassificationData(
        name=name,
        train=splits["train"],
        test=splits["test"],
        classes=[str(c) for c in range(count)],
        description=f"MedMNIST {path.name}: train as memory, test as queries",
        splits=splits,
        label_type="multi-class" if label_type == "ordinal-regression" else label_type,
    )
