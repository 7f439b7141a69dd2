"""Datasets of image files: plain class folders and the published layouts of
ImageNet, Flowers-102, CUB-200-2011 and Food-101 (torchvision's and the authors').

Each split is an `ImageFileSplit`: files are decoded as batches are asked for, with the
protocol's preprocessing (shorter side to `resize`, centre crop `crop`). Options shared
by these formats: crop (224), resize (crop x 256/224), workers (decoding threads),
max_pixels (the largest image decoded, width x height; PIL's threshold of 89478485).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from harness.datasets.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, RESIZE_PER_CROP, Preprocess, pixel_limit
from harness.datasets.spec import dataset_options
from harness.datasets.splits import ClassificationData, ImageFileSplit
from harness.datasets.walk import list_tree
from harness.errors import DataFormatError, HarnessError

if TYPE_CHECKING:
    from harness.config.schema import DatasetSpec


IMAGE_OPTIONS: dict[str, Any] = {"crop": 224, "resize": None, "workers": None, "max_pixels": DEFAULT_MAX_PIXELS}


def _positive_integer(name: str, options: dict[str, Any], option: str, meaning: str) -> int:
    """`options[option]` as an int; a string, a bool, a fraction or a value below 1 is an error."""
    value = options[option]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or isinstance(value, float) and not value.is_integer() or value < 1:
        raise HarnessError(f"datasets.{name}.options.{option} must be a positive integer ({meaning}), got {value!r}")
    return int(value)


def _preprocess(name: str, options: dict[str, Any]) -> Preprocess:
    """The protocol's preprocessing from the image options; also checks `workers`, which
    every reader taking these options hands to its splits unchanged."""
    crop = _positive_integer(name, options, "crop", "pixels of the centre crop")
    resize = _positive_integer(name, options, "resize", "pixels of the shorter side") if options["resize"] is not None else int(round(crop * RESIZE_PER_CROP))
    if resize < crop:
        raise HarnessError(f"datasets.{name}.options: need crop <= resize, got crop={crop}, resize={resize}")
    if options.get("workers") is not None:
        _positive_integer(name, options, "workers", "decoding threads")
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
    error; without, the classes are the sorted sub-directory names. Directory links are
    followed, each real directory once; a link back up the tree (a loop) or into another
    class is skipped with a warning naming it.
    """
    if not folder.is_dir():
        raise DataFormatError(f"{folder}: directory not found (expected <split>/<class>/<image> files)")
    entries = list(os.scandir(folder))
    for entry in entries:  # a link to nothing named like a folder (no suffix, nor its target) was a class: unmounted?
        if (
            entry.is_symlink() and not os.path.exists(entry.path) and not entry.name.startswith(".")
            and not Path(entry.name).suffix and not Path(os.readlink(entry.path)).suffix
        ):
            raise DataFormatError(
                f"{entry.path}: a class directory's link to {os.readlink(entry.path)}, which does not exist "
                "(an unmounted disk?): make its target reachable, or remove the link"
            )
    found = sorted(entry.name for entry in entries if entry.is_dir())
    if classes is None:
        classes = found
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DataFormatError(f"{folder}: class directories {extra[:5]} are not in the train split")
    index = {c: i for i, c in enumerate(classes)}
    paths: list[Path] = []
    labels: list[int] = []
    visited: set[str] = set()
    for cls in found:
        for path in _image_files(list_tree(folder / cls, visited, fence=folder, on_skip=_warn_skipped_link)):
            paths.append(path)
            labels.append(index[cls])
    if not paths:
        raise DataFormatError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) under <class>/ directories")
    return paths, labels, classes


def _require_memory_images(name: str, folder: Path, classes: list[str], labels: list[int]) -> None:
    """Every class directory of the memory split holds an image: a class directory says the
    class exists, and a class without memory images cannot be retrieved."""
    held = set(labels)
    empty = [cls for i, cls in enumerate(classes) if i not in held]
    if empty:
        more = f" (and {len(empty) - 1} more class directories)" if len(empty) > 1 else ""
        raise DataFormatError(
            f"dataset {name!r}: {folder / empty[0]}: class directory holds no image files ({', '.join(IMAGE_EXTENSIONS)}){more}; "
            "every class needs images in the memory split: add some, or remove the directory"
        )


def _warn_skipped_link(path: Path, reason: str) -> None:
    warnings.warn(f"{path}: directory not scanned for images: {reason}", stacklevel=4)


def _image_files(listed: list[Path]) -> list[Path]:
    """The image files of a listing. A link to nothing (an unmounted disk) without an image
    extension may have been a directory of images: it is named in a warning, not dropped
    unseen. A link to nothing with an image extension is kept, to fail when read."""
    images = []
    for path in listed:
        if path.name.lower().endswith(IMAGE_EXTENSIONS):
            images.append(path)
        elif path.is_symlink() and not path.exists() and not path.name.startswith("."):
            warnings.warn(f"{path}: not scanned for images: it links to {os.readlink(path)}, which does not exist (an unmounted disk?)", stacklevel=4)
    return images


def _read_folder_pair(name: str, spec: DatasetSpec, test_dir: str, what: str, extra: dict[str, Any] | None = None) -> ClassificationData:
    options = dataset_options(name, spec, {**IMAGE_OPTIONS, "train_dir": "train", "test_dir": test_dir, **(extra or {})})
    root = spec.resolved_root(name)
    preprocess = _preprocess(name, options)
    workers, limit = options["workers"], pixel_limit(name, options)
    train_paths, train_labels, classes = scan_image_folder(root / options["train_dir"])
    _require_memory_images(name, root / options["train_dir"], classes, train_labels)
    test_paths, test_labels, _ = scan_image_folder(root / options["test_dir"], classes)
    return ClassificationData(
        name=name,
        train=ImageFileSplit(train_paths, train_labels, preprocess, workers, limit=limit),
        test=ImageFileSplit(test_paths, test_labels, preprocess, workers, limit=limit),
        classes=classes,
        description=f"{what}: {options['train_dir']}/ as memory, {options['test_dir']}/ as queries",
    )


def scan_unlabelled(folder: Path) -> list[Path]:
    """Every image file under `folder` (recursively, sorted), whatever sub-folders hold them."""
    if not folder.is_dir():
        raise DataFormatError(f"{folder}: directory not found (expected image files under it)")
    paths = _image_files(list_tree(folder, set(), fence=folder, on_skip=_warn_skipped_link))
    if not paths:
        raise DataFormatError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return sorted(paths)


def _read_unlabelled(name: str, spec: DatasetSpec, options: dict[str, Any]) -> ClassificationData:
    """Images without classes (label -1, no class names): for visual memories and training data."""
    root = spec.resolved_root(name)
    preprocess = _preprocess(name, options)
    workers, limit = options["workers"], pixel_limit(name, options)
    train_dir = root / options["train_dir"]
    test_dir = root / options["test_dir"]
    train = scan_unlabelled(train_dir)
    if test_dir.resolve() == train_dir.resolve() or not test_dir.is_dir():
        test: list[Path] = []
    else:
        test = scan_unlabelled(test_dir)
        train = [p for p in train if test_dir not in p.parents]
    return ClassificationData(
        name=name,
        train=ImageFileSplit(train, np.full(len(train), -1), preprocess, workers, limit=limit),
        test=ImageFileSplit(test, np.full(len(test), -1), preprocess, workers, limit=limit),
        classes=[],
        description=f"unlabelled image folder: {options['train_dir']}/" + (f", {options['test_dir']}/" if test else ""),
    )


def read_imagefolder(name: str, spec: DatasetSpec) -> ClassificationData:
    """root/train/<class>/* (memory) and root/test/<class>/* (queries).

    Options: train_dir ("train"), test_dir ("test"), crop (224), resize (crop x 256/224),
    workers (decoding threads), labels (true). With `labels: false` the folders hold
    images without classes (any sub-folders, label -1 throughout): `train_dir: "."`
    takes every image under the root; a missing test_dir gives an empty test split.
    """
    if spec.options.get("labels", True) is False:
        options = dataset_options(name, spec, {**IMAGE_OPTIONS, "train_dir": "train", "test_dir": "test", "labels": True})
        return _read_unlabelled(name, spec, options)
    if "labels" in spec.options and spec.options["labels"] is not True:
        raise HarnessError(f"datasets.{name}.options.labels must be true or false, got {spec.options['labels']!r}")
    return _read_folder_pair(name, spec, "test", "image folder", {"labels": True})


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


def read_flowers102(name: str, spec: DatasetSpec) -> ClassificationData:
    """Oxford Flowers-102 in torchvision's layout: jpg/image_NNNNN.jpg, imagelabels.mat
    (`labels`, 1..102) and setid.mat (`trnid`, `valid`, `tstid`, 1-based image ids),
    at the root or under root/flowers-102.

    Memory = train (1020), queries = val (1020) as the paper's released code does;
    option `test_split: test` queries the official 6149-image test split instead.
    """
    options = dataset_options(name, spec, {**IMAGE_OPTIONS, "test_split": "val"})
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
        splits[split] = ImageFileSplit(paths, labels[ids - 1] - 1, preprocess, options["workers"], origin, pixel_limit(name, options))
    return ClassificationData(
        name=name,
        train=splits["train"],
        test=splits[options["test_split"]],
        classes=classes,
        description=f"Flowers-102: train as memory, {options['test_split']} as queries",
        splits=splits,
    )


# ------------------------------------------------------------------------ CUB-200
def read_cub200(name: str, spec: DatasetSpec) -> ClassificationData:
    """CUB-200-2011 as released: images.txt (id path), image_class_labels.txt (id class),
    train_test_split.txt (id is_train), classes.txt (id name), images/, at the root or
    under root/CUB_200_2011. Memory = the official train images (5994), queries = test (5794).
    """
    options = dataset_options(name, spec, dict(IMAGE_OPTIONS))
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
            [base / "images" / images[k] for k in keys], [labels[k][0] - 1 for k in keys], preprocess, options["workers"], origin,
            pixel_limit(name, options),
        )
    return ClassificationData(
        name=name, train=splits["train"], test=splits["test"], classes=classes,
        description="CUB-200-2011, official train_test_split.txt", splits=splits,
    )


# ----------------------------------------------------------------------- Food-101
def read_food101(name: str, spec: DatasetSpec) -> ClassificationData:
    """Food-101 as released: meta/train.txt and meta/test.txt (lines `class/image_id`),
    meta/classes.txt, images/<class>/<image_id>.jpg, at the root or under root/food-101.
    Memory = train (75750), queries = test (25250).
    """
    options = dataset_options(name, spec, dict(IMAGE_OPTIONS))
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
            [index[cls] for _, cls, _ in rows], preprocess, options["workers"], origin, pixel_limit(name, options),
        )
    return ClassificationData(
        name=name, train=splits["train"], test=splits["test"], classes=classes,
        description="Food-101, official meta/train.txt and meta/test.txt", splits=splits,
    )
