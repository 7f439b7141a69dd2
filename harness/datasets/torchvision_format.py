"""Any `torchvision.datasets` class, by name, over files already on this machine.

The registry entry names the class and its arguments; the reader builds one instance
per split with `download=False` (a download is refused: data comes from the root) and
without transforms, then serves its items through the protocol's preprocessing:

    cifar10-tv:
      format: torchvision
      root: /data/cifar10
      options: {class: CIFAR10, splits: {train: {train: true}, test: {train: false}}}

`args` are passed to every split, each split's mapping on top of them; a relative
`root` among them lies below the dataset's root (e.g. ImageFolder's `{root: train}`).
Labels are read from the instance's `targets`, `_labels`, `labels` or `samples` when
it has one of them, else from its items.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.datasets.folders import IMAGE_OPTIONS, _preprocess
from harness.datasets.images import PixelLimit, image_to_rgb, pixel_limit
from harness.datasets.items import ItemSplit, array_to_image
from harness.datasets.spec import dataset_options
from harness.datasets.splits import ClassificationData
from harness.errors import DataFormatError, DatasetUnavailable, HarnessError, UnknownNameError

if TYPE_CHECKING:
    from PIL import Image

    from harness.config.schema import DatasetSpec

TORCHVISION_OPTIONS: dict[str, Any] = {
    **IMAGE_OPTIONS,
    "class": None,
    "args": {},
    "splits": None,
    "train_split": "train",
    "test_split": "test",
}
LABEL_ATTRIBUTES = ("targets", "_labels", "labels")


def dataset_class(name: str, class_name: Any) -> type:
    """The `torchvision.datasets` class named `class_name`."""
    import torchvision.datasets

    known = sorted(n for n in dir(torchvision.datasets) if isinstance(getattr(torchvision.datasets, n), type) and not n.startswith("_"))
    if not isinstance(class_name, str) or not class_name:
        raise HarnessError(f"datasets.{name}.options.class must name a torchvision.datasets class, e.g. CIFAR10 (known: {', '.join(known)})")
    if class_name not in known:
        raise UnknownNameError(f"torchvision.datasets class of dataset {name!r}", class_name, known)
    return getattr(torchvision.datasets, class_name)


def default_splits(cls: type) -> dict[str, dict[str, Any]]:
    """Per-split arguments when the entry names none: `train=True/False`, or
    `split="train"/"test"` for classes that take a split name."""
    parameters = inspect.signature(cls).parameters
    if "train" in parameters:
        return {"train": {"train": True}, "test": {"train": False}}
    if "split" in parameters:
        return {"train": {"split": "train"}, "test": {"split": "test"}}
    return {"train": {"root": "train"}, "test": {"root": "test"}}


def split_arguments(name: str, cls: type, root: Path, common: dict[str, Any], own: Any, split: str) -> dict[str, Any]:
    """The keyword arguments of one split's instance: root resolved, download off."""
    if not isinstance(own, dict):
        raise HarnessError(f"datasets.{name}.options.splits.{split} must be a mapping of {cls.__name__} arguments, got {own!r}")
    arguments = {**common, **own}
    if arguments.get("download"):
        raise HarnessError(f"datasets.{name}: download is not allowed (the harness reads data already on this machine); put the files under {root}")
    for forbidden in ("transform", "target_transform", "transforms"):
        if forbidden in arguments:
            raise HarnessError(f"datasets.{name}: argument {forbidden!r} is not allowed; the harness applies the protocol's preprocessing itself")
    relative = Path(str(arguments.get("root", ".")))
    arguments["root"] = str(relative if relative.is_absolute() else root / relative)
    if "download" in inspect.signature(cls).parameters:
        arguments["download"] = False
    return arguments


def instantiate(name: str, spec: DatasetSpec, cls: type, arguments: dict[str, Any], split: str) -> Any:
    """`cls(**arguments)`; missing files are DatasetUnavailable naming the class and root."""
    where = f"dataset {name!r}: torchvision.datasets.{cls.__name__}(root={arguments['root']!r}) for split {split!r}"
    if not Path(arguments["root"]).exists():
        raise DatasetUnavailable(
            f"{where}: {arguments['root']} does not exist; a split's root is datasets.{name}.root joined with its root "
            f"argument (in options.args or options.splits.{split}), both set in {spec.registry_file()}"
        )
    try:
        return cls(**arguments)
    except TypeError as exc:
        raise HarnessError(f"{where}: bad arguments {sorted(arguments)}: {exc}") from None
    except (RuntimeError, FileNotFoundError) as exc:  # torchvision's "Dataset not found or corrupted"
        raise DatasetUnavailable(f"{where}: its files are not there ({exc})") from None
    except Exception as exc:
        raise DataFormatError(f"{where}: cannot read the files: {type(exc).__name__}: {exc}") from None


def dataset_labels(name: str, instance: Any, where: str) -> np.ndarray:
    """Integer labels of every item: from a label attribute, `samples`, or the items."""
    for attribute in LABEL_ATTRIBUTES:
        values = getattr(instance, attribute, None)
        if values is not None and not callable(values):
            break
    else:
        samples = getattr(instance, "samples", None)
        values = [s[1] for s in samples] if isinstance(samples, list) else [_item(instance, i, where)[1] for i in range(len(instance))]
    try:
        labels = np.asarray(values if not hasattr(values, "numpy") else values.numpy())
    except (TypeError, ValueError) as exc:
        raise DataFormatError(f"{where}: labels are not integers ({exc})") from None
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(instance):
        raise DataFormatError(f"{where}: expected one integer class per item ({len(instance)}), got {labels.dtype} labels of shape {labels.shape}")
    if len(labels) and labels.min() < 0:
        raise DataFormatError(f"{where}: item {int(np.flatnonzero(labels < 0)[0])}: missing label ({int(labels.min())})")
    return labels.astype(np.int64)


def _item(instance: Any, index: int, where: str) -> Any:
    try:
        item = instance[index]
    except (OSError, ValueError, SyntaxError, EOFError, KeyError, IndexError) as exc:
        samples = getattr(instance, "samples", None)
        path = f" ({samples[index][0]})" if isinstance(samples, list) and index < len(samples) else ""
        raise DataFormatError(f"{where}: item {index}{path} cannot be read: {type(exc).__name__}: {exc}") from None
    if not isinstance(item, tuple) or len(item) < 2:
        raise DataFormatError(f"{where}: item {index} is not an (image, label) pair")
    return item


def item_image(instance: Any, index: int, where: str, limit: PixelLimit) -> Image.Image:
    """Item `index`'s image as RGB, whatever type the class hands out."""
    from PIL import Image

    image = _item(instance, index, where)[0]
    name = f"{where}: item {index}"
    if isinstance(image, Image.Image):
        if image.width * image.height > limit.max_pixels:
            raise DataFormatError(f"{name}: image is {image.width} x {image.height} pixels, more than the limit of {limit.max_pixels}; raise {limit.option}")
        return image_to_rgb(image, name)
    if hasattr(image, "numpy"):
        image = image.detach().cpu().numpy()
    return array_to_image(image, name, limit)


def class_names(instance: Any, where: str) -> list[str] | None:
    """The instance's class names in label order, from `classes` or `class_to_idx`; None
    when it has neither."""
    classes = getattr(instance, "classes", None)
    if isinstance(classes, (list, tuple)) and classes:
        return [str(c) for c in classes]
    class_to_idx = getattr(instance, "class_to_idx", None)
    if isinstance(class_to_idx, dict) and class_to_idx:
        by_index = {int(i): str(c) for c, i in class_to_idx.items()}
        if sorted(by_index) != list(range(len(by_index))):
            raise DataFormatError(f"{where}: class_to_idx does not number its classes 0..{len(by_index) - 1}")
        return [by_index[i] for i in range(len(by_index))]
    return None


def matched_classes(name: str, memory: str, read: dict[str, tuple[Any, str, np.ndarray, list[str] | None]]) -> list[str]:
    """The memory split's class names, every split's labels renumbered in place to index them.

    Each torchvision instance numbers its own classes (ImageFolder: its sorted folders),
    so splits are matched by class name where they have names; a label the memory's items
    never carry (a class with no memory item) cannot be retrieved, and is an error naming
    the dataset, split and class.
    """
    _, _, memory_labels, memory_names = read[memory]
    count = 1 + int(memory_labels.max(initial=-1))
    if memory_names is not None and len(memory_names) < count:
        raise DataFormatError(f"{read[memory][1]}: label {count - 1} but only {len(memory_names)} classes named")
    classes = memory_names if memory_names is not None else [str(i) for i in range(count)]
    index = {c: i for i, c in enumerate(classes)}
    held = set(memory_labels.tolist())
    for split, (_, where, labels, names) in read.items():
        if split == memory:
            continue
        if (names is None) != (memory_names is None):
            raise DataFormatError(
                f"dataset {name!r}: split {split!r} and the memory split {memory!r} cannot be matched: "
                f"only one of them names its classes ({where})"
            )
        if names is not None:
            if len(labels) and int(labels.max()) >= len(names):
                raise DataFormatError(f"{where}: label {int(labels.max())} but only {len(names)} classes named")
            renumber = np.array([index.get(c, -1) for c in names], np.int64)
            found = sorted({names[label] for label in labels.tolist() if renumber[label] < 0})
            if found:
                raise DataFormatError(
                    f"dataset {name!r}: split {split!r}: class {found[0]!r} is not among the classes of the {memory!r} split"
                    + (f" ({len(found)} such classes)" if len(found) > 1 else "")
                    + "; every query class needs items in the memory split"
                )
            labels[:] = renumber[labels]
        unheld = sorted(set(labels.tolist()) - held)
        if unheld:
            label = classes[unheld[0]] if unheld[0] < len(classes) else str(unheld[0])
            raise DataFormatError(
                f"dataset {name!r}: split {split!r}: class {label!r} is not among the classes of the {memory!r} split's items"
                + (f" ({len(unheld)} such classes)" if len(unheld) > 1 else "")
                + "; every query class needs items in the memory split"
            )
    return classes


def read_torchvision(name: str, spec: DatasetSpec) -> ClassificationData:
    """A `torchvision.datasets` class over the dataset's root (see the module's docstring).

    Options: class (required), args (passed to every split), splits ({split: args}),
    train_split ("train", the memory), test_split ("test", the queries), and the image
    options crop, resize, workers, max_pixels.
    """
    options = dataset_options(name, spec, TORCHVISION_OPTIONS)
    cls = dataset_class(name, options["class"])
    if not isinstance(options["args"], dict):
        raise HarnessError(f"datasets.{name}.options.args must be a mapping of {cls.__name__} arguments, got {options['args']!r}")
    try:
        root = spec.resolved_root(name)
    except DatasetUnavailable as exc:
        raise DatasetUnavailable(f"torchvision.datasets.{cls.__name__}: {exc}") from None
    wanted = options["splits"] if options["splits"] is not None else default_splits(cls)
    if not isinstance(wanted, dict):
        raise HarnessError(f"datasets.{name}.options.splits must map split names to {cls.__name__} arguments, got {wanted!r}")
    for split in (options["train_split"], options["test_split"]):
        if split not in wanted:
            raise HarnessError(f"datasets.{name}.options.splits has no split {split!r} (it names {', '.join(wanted)})")
    preprocess, limit = _preprocess(name, options), pixel_limit(name, options)
    memory = options["train_split"]
    read = {}
    for split, own in wanted.items():
        instance = instantiate(name, spec, cls, split_arguments(name, cls, root, options["args"], own, split), split)
        where = f"torchvision.datasets.{cls.__name__}({getattr(instance, 'root', root)}) split {split!r}"
        read[split] = (instance, where, dataset_labels(name, instance, where), class_names(instance, where))
    classes = matched_classes(name, memory, read)
    splits = {}
    for split, (instance, where, labels, _) in read.items():
        splits[split] = ItemSplit(
            fetch=(lambda instance, where: lambda i: item_image(instance, i, where, limit))(instance, where),
            labels=labels,
            preprocess=preprocess,
            name=(lambda where: lambda i: f"{where}: item {i}")(where),
            workers=options["workers"],
            limit=limit,
            description=f"{name} {split}",
        )
    return ClassificationData(
        name=name,
        train=splits[options["train_split"]],
        test=splits[options["test_split"]],
        classes=classes,
        description=f"torchvision.datasets.{cls.__name__}: {options['train_split']} as memory, {options['test_split']} as queries",
        splits=splits,
    )
