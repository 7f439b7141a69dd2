"""Dataset readers, by format.

A dataset is named in registry.yaml with a `format` and (for real data) a `root`.
`open_dataset(name)` returns the reader's object; classification formats return a
`ClassificationData` with a memory (`train`) and a query (`test`) split, the NIGHTS
format a `NightsData` of triplet splits. Splits hand out uint8 image batches
[n, 3, H, W]; each encoder resizes and normalises them itself.

A split is any object with `len(split)`, `split.labels` and `split.batches(batch_size)`.
Two kinds exist:

* `ArraySplit` / `NpzImageSplit`: images already held in arrays (bundled data, MedMNIST
  `.npz` files, streamed member by member without loading the file).
* `ImageFileSplit`: one image file per item, decoded in a thread pool and passed
  through the protocol's preprocessing: resize the shorter side to `resize` (256,
  bicubic) and centre-crop `crop` (224), as DINO's evaluation does. The option `crop`
  scales both down for small encoders (`resize` then defaults to crop x 256/224).
  NIGHTS images are resized to `size` x `size` (224, bicubic) without a crop.

Real data is read from the root that registry.yaml (or the dataset's environment
variable) names, in the layout its authors publish; nothing is downloaded. A root
that is not there raises `DatasetUnavailable` (the runner records the cell as
skipped, naming the registry key to set); a malformed file raises `DataFormatError`
naming the file and the row or key at fault.

Bundled formats need no root: they read data that installed packages ship
(`digits`, `lfw-faces`, `textures`).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from harness.errors import DataFormatError, DatasetUnavailable, HarnessError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from harness.registry import DatasetSpec

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""File endings an image folder is scanned for (torchvision's list), any case."""

RESIZE_PER_CROP = 256 / 224


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


# --------------------------------------------------------------------------- splits
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


@dataclass(frozen=True)
class Preprocess:
    """Decoded image -> uint8 [3, S, S].

    mode "resize_crop": shorter side to `resize` (bicubic), centre crop `crop` x `crop`
    (torchvision's Resize(resize, BICUBIC) + CenterCrop(crop), as DINO evaluates).
    mode "squash": bicubic resize to `crop` x `crop`, aspect ratio not kept (NIGHTS).
    """

    crop: int = 224
    resize: int = 256
    mode: str = "resize_crop"

    @property
    def size(self) -> int:
        return self.crop

    def __call__(self, image: Image.Image) -> np.ndarray:
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        if self.mode == "squash":
            image = TF.resize(image, [self.crop, self.crop], interpolation=InterpolationMode.BICUBIC)
        else:
            image = TF.resize(image, self.resize, interpolation=InterpolationMode.BICUBIC)
            image = TF.center_crop(image, [self.crop, self.crop])
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def decode_image(path: str | os.PathLike, where: str = "") -> Image.Image:
    """Open an image file as RGB; a missing or undecodable file raises DataFormatError."""
    from PIL import Image, UnidentifiedImageError

    suffix = f" ({where})" if where else ""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataFormatError(f"{path}: image file not found{suffix}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataFormatError(f"{path}: cannot decode image: {exc}{suffix}") from None


class ImageFileSplit:
    """One image file per item, decoded in a thread pool as batches are asked for.

    `origin(i)` says where item i is listed (e.g. "images.txt line 12"); it is added to
    the message of a decoding error. Batches are prefetched one ahead, so decoding
    overlaps the caller's work on the previous batch.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: Sequence[int] | np.ndarray,
        preprocess: Preprocess,
        workers: int | None = None,
        origin: Callable[[int], str] | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) != len(self.paths):
            raise HarnessError(f"ImageFileSplit: {len(self.paths)} paths but {len(self.labels)} labels")
        self.preprocess = preprocess
        self.workers = workers or _default_workers()
        self.origin = origin

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"ImageFileSplit(n={len(self)}, preprocess={self.preprocess})"

    @property
    def image_size(self) -> int:
        return self.preprocess.size

    def decode(self, index: int) -> Image.Image:
        return decode_image(self.paths[index], self.origin(index) if self.origin else "")

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


# ------------------------------------------------------------------ dataset objects
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


@dataclass
class TripletSplit:
    """NIGHTS triplets: reference, left (distortion 0) and right (distortion 1) images,
    `p` = the fraction of human votes for the right image, the CSV's `id`s and rows."""

    name: str
    ref: ImageFileSplit
    left: ImageFileSplit
    right: ImageFileSplit
    p: np.ndarray
    ids: np.ndarray
    is_imagenet: np.ndarray
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.p)


@dataclass
class NightsData:
    name: str
    root: Path
    splits: dict[str, TripletSplit]
    description: str = ""


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


# ------------------------------------------------------------------------- options
def _options(name: str, spec: DatasetSpec, defaults: dict[str, Any]) -> dict[str, Any]:
    """The dataset's options over `defaults`; an unknown option is an error naming it."""
    options = {**defaults, **spec.options}
    unknown = set(options) - set(defaults)
    if unknown:
        raise HarnessError(
            f"datasets.{name}.options: unknown option(s) {sorted(unknown)}; known: {', '.join(sorted(defaults))}"
        )
    return options


IMAGE_OPTIONS: dict[str, Any] = {"crop": 224, "resize": None, "workers": None}


def _preprocess(name: str, options: dict[str, Any]) -> Preprocess:
    crop = int(options["crop"])
    resize = int(options["resize"]) if options["resize"] else int(round(crop * RESIZE_PER_CROP))
    if crop < 1 or resize < crop:
        raise HarnessError(f"datasets.{name}.options: need 1 <= crop <= resize, got crop={crop}, resize={resize}")
    return Preprocess(crop=crop, resize=resize)


def _find_layout(root: Path, marker: str, subdirs: Sequence[str], name: str, layout: str) -> Path:
    """`root` itself or one of `subdirs` under it, whichever holds `marker`."""
    for base in (root, *(root / s for s in subdirs)):
        if (base / marker).exists():
            return base
    tried = ", ".join(str(b / marker) for b in (root, *(root / s for s in subdirs)))
    raise DataFormatError(f"dataset {name!r}: {root} does not hold the {layout} layout (no {tried})")


def _read_columns(path: Path, columns: int) -> list[tuple[int, list[str]]]:
    """Whitespace-separated lines of a text file: (line number, fields); blank lines skipped."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: cannot read: {exc}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=columns - 1)
        if len(parts) != columns:
            raise DataFormatError(f"{path}: line {number}: expected {columns} fields, got {line!r}")
        rows.append((number, parts))
    return rows


def _int_field(path: Path, number: int, value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataFormatError(f"{path}: line {number}: {what} must be an integer, got {value!r}") from None


# ----------------------------------------------------------------- image folders
def scan_image_folder(folder: Path, classes: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """Files under folder/<class>/ (recursively, sorted) with their class index.

    With `classes` given (the train split's), a class directory not among them is an
    error; without, the classes are the sorted sub-directory names.
    """
    if not folder.is_dir():
        raise DataFormatError(f"{folder}: directory not found (expected <split>/<class>/<image> files)")
    found = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if classes is None:
        classes = found
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DataFormatError(f"{folder}: class directories {extra[:5]} are not in the train split")
    index = {c: i for i, c in enumerate(classes)}
    paths: list[Path] = []
    labels: list[int] = []
    for cls in found:
        for directory, subdirs, files in sorted(os.walk(folder / cls, followlinks=True)):
            subdirs.sort()
            for file in sorted(files):
                if file.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(Path(directory) / file)
                    labels.append(index[cls])
    if not paths:
        raise DataFormatError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) under <class>/ directories")
    return paths, labels, classes


def _read_folder_pair(name: str, spec: DatasetSpec, test_dir: str, what: str) -> ClassificationData:
    options = _options(name, spec, {**IMAGE_OPTIONS, "train_dir": "train", "test_dir": test_dir})
    root = spec.resolved_root(name)
    preprocess = _preprocess(name, options)
    workers = options["workers"]
    train_paths, train_labels, classes = scan_image_folder(root / options["train_dir"])
    test_paths, test_labels, _ = scan_image_folder(root / options["test_dir"], classes)
    return ClassificationData(
        name=name,
        train=ImageFileSplit(train_paths, train_labels, preprocess, workers),
        test=ImageFileSplit(test_paths, test_labels, preprocess, workers),
        classes=classes,
        description=f"{what}: {options['train_dir']}/ as memory, {options['test_dir']}/ as queries",
    )


@dataset_format("imagefolder")
def read_imagefolder(name: str, spec: DatasetSpec) -> ClassificationData:
    """root/train/<class>/* (memory) and root/test/<class>/* (queries).

    Options: train_dir ("train"), test_dir ("test"), crop (224), resize (crop x 256/224),
    workers (decoding threads).
    """
    return _read_folder_pair(name, spec, "test", "image folder")


@dataset_format("imagenet")
def read_imagenet(name: str, spec: DatasetSpec) -> ClassificationData:
    """ImageNet as torchvision's ImageFolder sees it: root/train/<wnid>/*, root/val/<wnid>/*.

    Memory = train, queries = val (the paper's protocol). Same options as `imagefolder`.
    """
    return _read_folder_pair(name, spec, "val", "ImageNet")


# -------------------------------------------------------------------- Flowers102
def _load_mat(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    import scipy.io

    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    try:
        data = scipy.io.loadmat(str(path), squeeze_me=True)
    except Exception as exc:
        raise DataFormatError(f"{path}: not a readable .mat file ({exc})") from None
    out = {}
    for key in keys:
        if key not in data:
            found = sorted(k for k in data if not k.startswith("__"))
            raise DataFormatError(f"{path}: missing key {key!r} (found: {', '.join(found) or 'none'})")
        try:
            out[key] = np.atleast_1d(np.asarray(data[key])).astype(np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise DataFormatError(f"{path}: key {key!r} must hold integers") from None
    return out


FLOWERS_SPLITS = {"train": "trnid", "val": "valid", "test": "tstid"}


@dataset_format("flowers102")
def read_flowers102(name: str, spec: DatasetSpec) -> ClassificationData:
    """Oxford Flowers-102 in torchvision's layout: jpg/image_NNNNN.jpg, imagelabels.mat
    (`labels`, 1..102) and setid.mat (`trnid`, `valid`, `tstid`, 1-based image ids),
    at the root or under root/flowers-102.

    Memory = train (1020), queries = val (1020) as the paper's released code does;
    option `test_split: test` queries the official 6149-image test split instead.
    """
    options = _options(name, spec, {**IMAGE_OPTIONS, "test_split": "val"})
    if options["test_split"] not in ("val", "test"):
        raise HarnessError(f"datasets.{name}.options.test_split must be 'val' or 'test', got {options['test_split']!r}")
    base = _find_layout(spec.resolved_root(name), "imagelabels.mat", ["flowers-102"], name, "Flowers-102")
    labels = _load_mat(base / "imagelabels.mat", ["labels"])["labels"]
    setid = _load_mat(base / "setid.mat", list(FLOWERS_SPLITS.values()))
    if labels.min(initial=1) < 1:
        raise DataFormatError(f"{base / 'imagelabels.mat'}: key 'labels' must hold classes 1..102, found {labels.min()}")
    preprocess = _preprocess(name, options)
    classes = [str(c) for c in range(1, int(labels.max()) + 1)]
    splits = {}
    for split, key in FLOWERS_SPLITS.items():
        ids = setid[key]
        bad = ids[(ids < 1) | (ids > len(labels))]
        if len(bad):
            raise DataFormatError(f"{base / 'setid.mat'}: key {key!r} holds image ids outside 1..{len(labels)} (e.g. {int(bad[0])})")
        paths = [base / "jpg" / f"image_{i:05d}.jpg" for i in ids]
        origin = (lambda key: lambda i: f"setid.mat key {key!r} entry {i}")(key)
        splits[split] = ImageFileSplit(paths, labels[ids - 1] - 1, preprocess, options["workers"], origin)
    return ClassificationData(
        name=name,
        train=splits["train"],
        test=splits[options["test_split"]],
        classes=classes,
        description=f"Flowers-102: train as memory, {options['test_split']} as queries",
        splits=splits,
    )


# ------------------------------------------------------------------------ CUB-200
@dataset_format("cub200")
def read_cub200(name: str, spec: DatasetSpec) -> ClassificationData:
    """CUB-200-2011 as released: images.txt (id path), image_class_labels.txt (id class),
    train_test_split.txt (id is_train), classes.txt (id name), images/, at the root or
    under root/CUB_200_2011. Memory = the official train images (5994), queries = test (5794).
    """
    options = _options(name, spec, dict(IMAGE_OPTIONS))
    base = _find_layout(spec.resolved_root(name), "images.txt", ["CUB_200_2011"], name, "CUB_200_2011")
    images_txt = base / "images.txt"
    labels_txt = base / "image_class_labels.txt"
    split_txt = base / "train_test_split.txt"
    images = {}
    lines = {}
    for number, (image_id, rel) in _read_columns(images_txt, 2):
        key = _int_field(images_txt, number, image_id, "the image id")
        if key in images:
            raise DataFormatError(f"{images_txt}: line {number}: image id {key} appears twice")
        images[key] = rel.strip()
        lines[key] = number
    labels = {}
    for number, (image_id, cls) in _read_columns(labels_txt, 2):
        labels[_int_field(labels_txt, number, image_id, "the image id")] = (_int_field(labels_txt, number, cls, "the class id"), number)
    is_train = {}
    for number, (image_id, flag) in _read_columns(split_txt, 2):
        value = _int_field(split_txt, number, flag, "is_training_image")
        if value not in (0, 1):
            raise DataFormatError(f"{split_txt}: line {number}: is_training_image must be 0 or 1, got {flag!r}")
        is_train[_int_field(split_txt, number, image_id, "the image id")] = value
    for key in images:
        if key not in labels:
            raise DataFormatError(f"{labels_txt}: no class for image id {key} (images.txt line {lines[key]})")
        if key not in is_train:
            raise DataFormatError(f"{split_txt}: no split for image id {key} (images.txt line {lines[key]})")
    class_ids = sorted({cls for cls, _ in labels.values()})
    if class_ids and class_ids[0] < 1:
        raise DataFormatError(f"{labels_txt}: class ids start at 1, found {class_ids[0]}")
    classes_txt = base / "classes.txt"
    if classes_txt.exists():
        named = {_int_field(classes_txt, n, cid, "the class id"): cname.strip() for n, (cid, cname) in _read_columns(classes_txt, 2)}
        count = max([*named, *class_ids])
        classes = [named.get(i, str(i)) for i in range(1, count + 1)]
    else:
        classes = [str(i) for i in range(1, max(class_ids, default=0) + 1)]
    preprocess = _preprocess(name, options)
    splits = {}
    for split, flag in (("train", 1), ("test", 0)):
        keys = [k for k in sorted(images) if is_train[k] == flag]
        origin = (lambda keys: lambda i: f"images.txt line {lines[keys[i]]}")(keys)
        splits[split] = ImageFileSplit(
            [base / "images" / images[k] for k in keys], [labels[k][0] - 1 for k in keys], preprocess, options["workers"], origin
        )
    return ClassificationData(
        name=name, train=splits["train"], test=splits["test"], classes=classes,
        description="CUB-200-2011, official train_test_split.txt", splits=splits,
    )


# ----------------------------------------------------------------------- Food-101
@dataset_format("food101")
def read_food101(name: str, spec: DatasetSpec) -> ClassificationData:
    """Food-101 as released: meta/train.txt and meta/test.txt (lines `class/image_id`),
    meta/classes.txt, images/<class>/<image_id>.jpg, at the root or under root/food-101.
    Memory = train (75750), queries = test (25250).
    """
    options = _options(name, spec, dict(IMAGE_OPTIONS))
    base = _find_layout(spec.resolved_root(name), "meta", ["food-101"], name, "Food-101")
    entries: dict[str, list[tuple[int, str, str]]] = {}
    for split in ("train", "test"):
        path = base / "meta" / f"{split}.txt"
        rows = []
        for number, (item,) in _read_columns(path, 1):
            cls, _, image_id = item.strip().partition("/")
            if not cls or not image_id or "/" in image_id:
                raise DataFormatError(f"{path}: line {number}: expected 'class/image_id', got {item!r}")
            rows.append((number, cls, image_id))
        entries[split] = rows
    classes_txt = base / "meta" / "classes.txt"
    if classes_txt.exists():
        classes = [fields[0].strip() for _, fields in _read_columns(classes_txt, 1)]
    else:
        classes = sorted({cls for _, cls, _ in entries["train"]})
    index = {c: i for i, c in enumerate(classes)}
    preprocess = _preprocess(name, options)
    splits = {}
    for split, rows in entries.items():
        for number, cls, _ in rows:
            if cls not in index:
                raise DataFormatError(f"{base / 'meta' / f'{split}.txt'}: line {number}: class {cls!r} is not in {classes_txt.name if classes_txt.exists() else 'train.txt'}")
        origin = (lambda split, rows: lambda i: f"meta/{split}.txt line {rows[i][0]}")(split, rows)
        splits[split] = ImageFileSplit(
            [base / "images" / cls / f"{image_id}.jpg" for _, cls, image_id in rows],
            [index[cls] for _, cls, _ in rows], preprocess, options["workers"], origin,
        )
    return ClassificationData(
        name=name, train=splits["train"], test=splits["test"], classes=classes,
        description="Food-101, official meta/train.txt and meta/test.txt", splits=splits,
    )


# ----------------------------------------------------------------------- MedMNIST
MEDMNIST_KEYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")
MEDMNIST_LABEL_TYPES = {
    # the label type of each published 2D dataset (MedMNIST v2's INFO); others are inferred
    "pathmnist": "multi-class", "chestmnist": "multi-label, binary-class", "dermamnist": "multi-class",
    "octmnist": "multi-class", "pneumoniamnist": "binary-class", "retinamnist": "ordinal-regression",
    "breastmnist": "binary-class", "bloodmnist": "multi-class", "tissuemnist": "multi-class",
    "organamnist": "multi-class", "organcmnist": "multi-class", "organsmnist": "multi-class",
}
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


@dataset_format("medmnist")
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
    options = _options(name, spec, {"flag": None, "size": 224, "label_type": None})
    root = spec.resolved_root(name)
    flag = options["flag"] or name
    if root.is_dir():
        path = root / medmnist_file(flag, options["size"])
        if not path.is_file():
            where = f"set datasets.{name}.root in registry.yaml" + (f" or the environment variable {spec.env}" if spec.env else "")
            raise DatasetUnavailable(f"dataset {name!r}: {path} does not exist; {where} (a .npz file or a directory holding it)")
    else:
        path = root
        flag = options["flag"] or path.stem.split("_")[0]
    try:
        archive = zipfile.ZipFile(path)
    except _NPZ_READ_ERRORS as exc:
        raise DataFormatError(f"{path}: not a valid .npz file ({exc})") from None
    headers = {}
    with archive:
        members = {m[:-4] for m in archive.namelist() if m.endswith(".npy")}
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


# ------------------------------------------------------------------------- NIGHTS
NIGHTS_COLUMNS = ("id", "left_vote", "right_vote", "votes", "ref_path", "left_path", "right_path", "split", "is_imagenet")
NIGHTS_SPLITS = ("train", "val", "test_imagenet", "test_no_imagenet")


def _parse_bool(values: Any, path: Path, column: str) -> np.ndarray:
    out = []
    for row, value in enumerate(values):
        text = str(value).strip().lower()
        if text in ("true", "1", "1.0", "yes"):
            out.append(True)
        elif text in ("false", "0", "0.0", "no"):
            out.append(False)
        else:
            raise DataFormatError(f"{path}: row {row + 2}: column {column!r} must be True or False, got {value!r}")
    return np.asarray(out, dtype=bool)


@dataset_format("nights")
def read_nights(name: str, spec: DatasetSpec) -> NightsData:
    """NIGHTS (Fu et al. 2023) as released: data.csv with columns id, left_vote,
    right_vote, votes, ref_path, left_path, right_path, split, is_imagenet, and the
    ref/NNN/MMM.png, distort/NNN/MMM_{0,1}.png tree it points to.

    Rows with votes >= `min_votes` (6) are kept, as DreamSim does. Splits: train, val,
    test_imagenet and test_no_imagenet (test split by is_imagenet). `p` is the
    fraction of votes for the right image: right_vote itself when the two vote
    columns are fractions (they sum to 1, as released), else right / (left + right).
    Images: bicubic resize to `size` x `size` (224), no crop.
    """
    import pandas

    options = _options(name, spec, {"size": 224, "min_votes": 6, "workers": None})
    root = spec.resolved_root(name)
    csv = root / "data.csv"
    if not csv.is_file():
        raise DataFormatError(f"{csv}: file not found (the NIGHTS root holds data.csv, ref/ and distort/)")
    try:
        table = pandas.read_csv(csv)
    except Exception as exc:
        raise DataFormatError(f"{csv}: not a readable CSV file ({exc})") from None
    missing = [c for c in NIGHTS_COLUMNS if c not in table.columns]
    if missing:
        raise DataFormatError(f"{csv}: missing column(s) {missing} (found: {', '.join(map(str, table.columns))})")
    numeric = {}
    for column in ("left_vote", "right_vote", "votes"):
        values = pandas.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise DataFormatError(f"{csv}: row {bad[0] + 2}: column {column!r} must be a number, got {table[column].iloc[bad[0]]!r}")
        numeric[column] = values
    for column in ("ref_path", "left_path", "right_path", "split"):
        bad = np.flatnonzero(table[column].isna().to_numpy())
        if len(bad):
            raise DataFormatError(f"{csv}: row {bad[0] + 2}: column {column!r} is empty")
    split_names = table["split"].astype(str).str.strip().to_numpy()
    unknown = np.flatnonzero(~np.isin(split_names, ["train", "val", "test"]))
    if len(unknown):
        raise DataFormatError(f"{csv}: row {unknown[0] + 2}: split must be train, val or test, got {split_names[unknown[0]]!r}")
    is_imagenet = _parse_bool(table["is_imagenet"], csv, "is_imagenet")
    left, right = numeric["left_vote"], numeric["right_vote"]
    if ((left < 0) | (right < 0)).any():
        row = int(np.flatnonzero((left < 0) | (right < 0))[0])
        raise DataFormatError(f"{csv}: row {row + 2}: vote columns must be non-negative")
    total = left + right
    if np.allclose(total, 1.0, atol=1e-6):
        p = np.clip(right, 0.0, 1.0)  # within the tolerance right_vote may pass 1 by a rounding step
    else:
        zero = np.flatnonzero(total <= 0)
        if len(zero):
            raise DataFormatError(f"{csv}: row {zero[0] + 2}: left_vote and right_vote are both 0")
        p = right / total
    keep = numeric["votes"] >= float(options["min_votes"])
    size = int(options["size"])
    preprocess = Preprocess(crop=size, resize=size, mode="squash")
    splits = {}
    for split in NIGHTS_SPLITS:
        if split.startswith("test"):
            mask = keep & (split_names == "test") & (is_imagenet == (split == "test_imagenet"))
        else:
            mask = keep & (split_names == split)
        rows = np.flatnonzero(mask)
        origin = (lambda rows: lambda i: f"data.csv row {rows[i] + 2}")(rows)
        images = {}
        for column in ("ref_path", "left_path", "right_path"):
            paths = [root / str(v).strip() for v in table[column].to_numpy()[rows]]
            images[column] = ImageFileSplit(paths, np.zeros(len(rows), np.int64), preprocess, options["workers"], origin)
        splits[split] = TripletSplit(
            name=split, ref=images["ref_path"], left=images["left_path"], right=images["right_path"],
            p=p[rows].astype(np.float64), ids=table["id"].to_numpy()[rows], is_imagenet=is_imagenet[rows], rows=rows + 2,
        )
    return NightsData(name=name, root=root, splits=splits, description=f"NIGHTS, votes >= {options['min_votes']}")


# ------------------------------------------------------------------- bundled data
@dataset_format("lfw-faces")
def read_lfw_faces(name: str, spec: DatasetSpec) -> ClassificationData:
    """scikit-image's bundled LFW subset (`skimage.data.lfw_subset()`): 200 grey 25 x 25
    crops, the first 100 faces and the other 100 non-faces (class 0 "face", 1 "non-face").

    Split: stratified, 50% test, seed 0 (options `test_fraction`, `seed`) -> 100 / 100.
    """
    from skimage.data import lfw_subset

    options = _options(name, spec, {"test_fraction": 0.5, "seed": 0})
    crops = lfw_subset()
    images = grey_to_rgb_uint8(crops, 1.0)
    labels = (np.arange(len(crops)) >= len(crops) // 2).astype(np.int64)
    train, test = stratified_split(labels, options["test_fraction"], options["seed"])
    return ClassificationData(
        name=name,
        train=ArraySplit(images[train], labels[train]),
        test=ArraySplit(images[test], labels[test]),
        classes=["face", "non-face"],
        description="scikit-image LFW subset, faces vs non-faces, stratified 50/50 split (seed 0)",
    )


TEXTURE_PHOTOS = ("brick", "grass", "gravel", "coins", "text", "immunohistochemistry", "hubble_deep_field")
"""scikit-image's bundled photographs used as texture classes, one class per photograph."""


def texture_patches(photo: np.ndarray, patch: int, region: str) -> np.ndarray:
    """All patch x patch crops at stride patch / 2 lying wholly inside one region of the
    photograph: "train" = the left two thirds of its width, "test" = the right third."""
    height, width = photo.shape[:2]
    cut = (2 * width) // 3
    x0, x1 = (0, cut) if region == "train" else (cut, width)
    stride = max(1, patch // 2)
    ys = range(0, height - patch + 1, stride)
    xs = range(x0, x1 - patch + 1, stride)
    crops = [photo[y : y + patch, x : x + patch] for y in ys for x in xs]
    return np.stack(crops) if crops else np.zeros((0, patch, patch, 3), np.uint8)


@dataset_format("textures")
def read_textures(name: str, spec: DatasetSpec) -> ClassificationData:
    """Texture patches cut from scikit-image's bundled photographs, one class per photo:
    brick, grass, gravel, coins, text, immunohistochemistry, hubble_deep_field.

    Each photo (grey ones repeated to 3 channels) is cut into `patch` x `patch` (32)
    crops at stride patch/2. Train crops lie wholly in the left two thirds of the
    photo, test crops in the right third, so no pixel is shared between the splits.
    From each region `train_per_class` (128) and `test_per_class` (64) crops are
    drawn without replacement (numpy default_rng(`seed`=0)) -> 896 / 448.
    """
    import skimage.data

    options = _options(name, spec, {"patch": 32, "train_per_class": 128, "test_per_class": 64, "seed": 0})
    patch = int(options["patch"])
    rng = np.random.default_rng(int(options["seed"]))
    parts: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {"train": ([], []), "test": ([], [])}
    for label, photo_name in enumerate(TEXTURE_PHOTOS):
        photo = np.asarray(getattr(skimage.data, photo_name)())
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, axis=2)
        photo = photo[..., :3].astype(np.uint8)
        for region, count in (("train", options["train_per_class"]), ("test", options["test_per_class"])):
            crops = texture_patches(photo, patch, region)
            chosen = np.sort(rng.choice(len(crops), size=min(int(count), len(crops)), replace=False))
            parts[region][0].append(crops[chosen].transpose(0, 3, 1, 2))
            parts[region][1].append(np.full(len(chosen), label, np.int64))
    splits = {region: ArraySplit(np.ascontiguousarray(np.concatenate(imgs)), np.concatenate(lbls)) for region, (imgs, lbls) in parts.items()}
    return ClassificationData(
        name=name,
        train=splits["train"],
        test=splits["test"],
        classes=list(TEXTURE_PHOTOS),
        description=f"scikit-image photographs as textures, {patch}-px crops, left 2/3 train / right 1/3 test",
    )


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
