"""Hugging Face datasets on disk: `save_to_disk` folders, parquet or Arrow files, and
(only when the registry entry allows it) a pinned revision of a dataset on the hub.

The files are read with pyarrow alone (the `datasets` library is not needed to read):
a `save_to_disk` folder is Arrow stream files listed in its `state.json`, one folder per
split beside a `dataset_dict.json`. Arrow files are memory-mapped; of a parquet file the
label column is read at opening and the image column when an image is first asked for.
Class names come from the label column's `ClassLabel` feature (the `huggingface` schema
metadata, or `dataset_info.json`), else they are the label numbers.

An image cell may hold the `Image` feature's `{bytes, path}`, raw bytes, a path (below
the root) or numbers ([H, W], [H, W, C] or [C, H, W]).
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.datasets.folders import IMAGE_OPTIONS, _preprocess
from harness.datasets.images import PixelLimit, decode_image, pixel_limit
from harness.datasets.items import ItemSplit, array_to_image, decode_bytes
from harness.datasets.spec import dataset_options
from harness.datasets.splits import ClassificationData
from harness.errors import DataFormatError, DatasetUnavailable, HarnessError

if TYPE_CHECKING:
    import pyarrow as pa
    from PIL import Image

    from harness.config.schema import DatasetSpec

HF_OPTIONS: dict[str, Any] = {
    **IMAGE_OPTIONS,
    "image_column": "image",
    "label_column": "label",
    "train_split": "train",
    "test_split": "test",
    "splits": None,
    "hub": None,
    "revision": None,
}
TABLE_SUFFIXES = (".parquet", ".arrow")
INSTALL_HINT = "pip install 'procedural-harness[hf]' (it installs pyarrow)"


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:
        raise HarnessError(f"the huggingface dataset format needs pyarrow: {INSTALL_HINT}") from None
    return pyarrow


class TablePart:
    """One file's rows: the label column read at opening, the image column on demand."""

    def __init__(self, path: Path, image_column: str, label_column: str) -> None:
        self.path, self.image_column, self.label_column = path, image_column, label_column
        self._images: Any = None
        self._lock = threading.Lock()
        schema = self._schema()
        missing = [c for c in (image_column, label_column) if c not in schema.names]
        if missing:
            raise DataFormatError(f"{path}: no column {', '.join(map(repr, missing))} (columns: {', '.join(schema.names)}); set options.image_column / label_column")
        self.features = _schema_features(schema)
        self.labels = self._read([label_column]).column(label_column)

    def _schema(self) -> pa.Schema:
        pa = _pyarrow()
        try:
            if self.path.suffix == ".parquet":
                import pyarrow.parquet as pq

                return pq.read_schema(self.path)
            self._table = _read_arrow(self.path)
            return self._table.schema
        except (OSError, pa.ArrowException) as exc:
            raise DataFormatError(f"{self.path}: not a readable {self.path.suffix[1:]} file ({exc})") from None

    def _read(self, columns: list[str]) -> pa.Table:
        pa = _pyarrow()
        if self.path.suffix != ".parquet":
            return self._table.select(columns)
        import pyarrow.parquet as pq

        try:
            return pq.read_table(self.path, columns=columns, memory_map=True)
        except (OSError, pa.ArrowException) as exc:
            raise DataFormatError(f"{self.path}: cannot read column(s) {columns} ({exc})") from None

    def image(self, row: int) -> Any:
        """Row `row`'s image cell; a cell of numbers as an array of the column's own dtype
        (a uint16 image stays uint16, to be scaled as 16-bit files are)."""
        with self._lock:
            if self._images is None:
                self._images = self._read([self.image_column]).column(self.image_column)
        value = self._images[row].as_py()
        dtype = _number_dtype(self._images.type)
        if dtype is None or not isinstance(value, list):
            return value
        try:
            return np.asarray(value, dtype=dtype)
        except (TypeError, ValueError):  # a ragged or null-holding cell: array_to_image names it
            return value


def _number_dtype(arrow_type: pa.DataType) -> np.dtype | None:
    """The numpy dtype of a column of (nested lists of) numbers, e.g. an `Array2D`; None for others."""
    pa = _pyarrow()
    while True:
        if isinstance(arrow_type, pa.ExtensionType):
            arrow_type = arrow_type.storage_type
        elif pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
            arrow_type = arrow_type.value_type
        else:
            break
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type):
        return np.dtype(arrow_type.to_pandas_dtype())
    return None


def _read_arrow(path: Path) -> pa.Table:
    """An Arrow file, memory-mapped: the stream format `save_to_disk` writes, or the file format."""
    import pyarrow as pa

    source = pa.memory_map(str(path))
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def _schema_features(schema: pa.Schema) -> dict[str, Any]:
    metadata = schema.metadata or {}
    try:
        return json.loads(metadata[b"huggingface"])["info"]["features"]
    except (KeyError, ValueError, TypeError):
        return {}


def _class_names(features: dict[str, Any], column: str) -> list[str] | None:
    feature = features.get(column)
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and isinstance(feature.get("names"), list):
        return [str(n) for n in feature["names"]]
    return None


def _saved_files(folder: Path) -> list[Path]:
    """The Arrow files of one `save_to_disk` split folder, in its state.json's order."""
    state = folder / "state.json"
    try:
        files = [folder / entry["filename"] for entry in json.loads(state.read_text())["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataFormatError(f"{state}: not a save_to_disk state file ({exc})") from None
    for path in files:
        if not path.is_file():
            raise DataFormatError(f"{state}: lists {path.name}, which is missing")
    return files


def _split_files(root: Path, split: str, name: str) -> list[Path]:
    """The table files of `split` below `root`: a save_to_disk folder `root/split`, or
    parquet/Arrow files named `split.*`, `split-*` (the hub's shards) or `split_<digits>*`,
    or lying in a folder named `split`. Another split whose name starts with this one's
    (`test_ood` beside `test`) is not taken; files found in more than one folder (a
    repository's configurations, `160px/` and `320px/`) are an error naming them."""
    if (root / split / "state.json").is_file():
        return _saved_files(root / split)
    found: dict[Path, list[Path]] = {}  # the folder holding the split's files -> the files
    for path in sorted(root.rglob("*")):
        if path.suffix not in TABLE_SUFFIXES or not path.is_file():
            continue
        stem, folders = path.name.split(".", 1)[0], path.relative_to(root).parts[:-1]
        if split in folders:
            found.setdefault(root.joinpath(*folders[: folders.index(split) + 1]), []).append(path)
        elif stem == split or stem.startswith(f"{split}-") or re.match(rf"{re.escape(split)}_\d", stem):
            found.setdefault(path.parent, []).append(path)
    if len(found) > 1:
        folders = ", ".join(str(folder.relative_to(root)) or "." for folder in found)
        raise DataFormatError(
            f"dataset {name!r}: the files of split {split!r} lie in {len(found)} folders under {root} ({folders}), "
            f"e.g. one per configuration; name the files to read in options.splits.{split} (a folder or a glob)"
        )
    return [path for files in found.values() for path in files]


def _explicit_files(root: Path, pattern: str, name: str, split: str) -> list[Path]:
    """options.splits entry: a save_to_disk folder, a folder of table files, a table file
    or a glob below the root."""
    target = root / pattern
    if (target / "state.json").is_file():
        return _saved_files(target)
    if target.is_file():
        return [target]
    candidates = target.rglob("*") if target.is_dir() else root.glob(pattern)
    files = sorted(p for p in candidates if p.is_file() and p.suffix in TABLE_SUFFIXES)
    if not files:
        raise DataFormatError(f"dataset {name!r}: options.splits.{split} = {pattern!r} matches no save_to_disk folder, .parquet or .arrow file under {root}")
    return files


def _hub_root(name: str, options: dict[str, Any]) -> Path:
    """A local snapshot of the hub dataset `options.hub` at the pinned `options.revision`
    (its parquet and Arrow files), from the hub's cache when HF_HUB_OFFLINE is set."""
    if not options["revision"]:
        raise HarnessError(f"datasets.{name}.options.hub needs options.revision (a commit hash) so the data cannot change under a result")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise HarnessError(f"datasets.{name}.options.hub needs huggingface_hub: pip install huggingface_hub") from None
    try:
        return Path(snapshot_download(
            repo_id=options["hub"], repo_type="dataset", revision=str(options["revision"]),
            allow_patterns=["*.parquet", "*.arrow", "*.json"],
        ))
    except Exception as exc:  # offline without a cached copy, unknown repo or revision
        offline = " (HF_HUB_OFFLINE is set: only the local hub cache is used)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise DatasetUnavailable(f"dataset {name!r}: hub dataset {options['hub']!r} at {options['revision']} is not available{offline}: {type(exc).__name__}: {exc}") from None


def _decode_cell(value: Any, where: str, root: Path, limit: PixelLimit) -> Image.Image:
    if isinstance(value, dict):
        if value.get("bytes"):
            return decode_bytes(value["bytes"], where, "", limit)
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return decode_bytes(value, where, "", limit)
    if isinstance(value, str) and value:
        path = Path(value) if os.path.isabs(value) else root / value
        return decode_image(path, where, limit)
    if value is None or isinstance(value, str):
        raise DataFormatError(f"{where}: no image (the cell is empty)")
    return array_to_image(value, where, limit)


class HFSplit:
    """The rows of one split across its files: global index -> (file, row)."""

    def __init__(self, parts: list[TablePart], name: str, split: str) -> None:
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p.labels) for p in parts])
        labels = []
        for part in parts:
            column = part.labels
            if column.null_count:
                row = int(np.flatnonzero(np.asarray(column.is_null()))[0])
                raise DataFormatError(f"{part.path}: row {row}: missing label (column {part.label_column!r} is empty)")
            if not _pyarrow().types.is_integer(column.type):
                raise DataFormatError(f"{part.path}: column {part.label_column!r} must hold integer classes, it holds {column.type}")
            values = np.asarray(column.to_numpy(), dtype=np.int64)
            if len(values) and values.min() < 0:
                row = int(np.flatnonzero(values < 0)[0])
                raise DataFormatError(f"{part.path}: row {row}: missing label ({part.label_column} = {int(values[row])})")
            labels.append(values)
        if not parts or not self.starts[-1]:
            raise DataFormatError(f"dataset {name!r}: split {split!r} has no rows")
        self.labels = np.concatenate(labels)

    def locate(self, index: int) -> tuple[TablePart, int]:
        part = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.parts[part], index - int(self.starts[part])

    def where(self, index: int) -> str:
        part, row = self.locate(index)
        return f"{part.path}: row {row}"


def read_huggingface(name: str, spec: DatasetSpec) -> ClassificationData:
    """A Hugging Face dataset on disk (see the module's docstring).

    Options: image_column ("image"), label_column ("label"), train_split ("train", the
    memory), test_split ("test", the queries), splits ({split: folder, file or glob
    below the root}), hub and revision (a pinned hub dataset instead of a root), and the
    image options crop, resize, workers, max_pixels.
    """
    options = dataset_options(name, spec, HF_OPTIONS)
    _pyarrow()
    root = _hub_root(name, options) if options["hub"] else spec.resolved_root(name)
    wanted = {options["train_split"], options["test_split"]}
    explicit = options["splits"] or {}
    if not isinstance(explicit, dict):
        raise HarnessError(f"datasets.{name}.options.splits must map split names to paths below the root, got {explicit!r}")
    preprocess, limit = _preprocess(name, options), pixel_limit(name, options)
    splits: dict[str, ItemSplit] = {}
    classes: list[str] | None = None
    tables: dict[str, HFSplit] = {}
    for split in sorted(wanted | set(explicit), key=lambda s: (s != options["train_split"], s)):
        files = _explicit_files(root, explicit[split], name, split) if split in explicit else _split_files(root, split, name)
        if not files:
            raise DataFormatError(f"dataset {name!r}: no files of split {split!r} under {root} (expected a save_to_disk folder {split}/, or {split}-*.parquet / .arrow); name them in options.splits")
        rows = tables[split] = HFSplit([TablePart(f, options["image_column"], options["label_column"]) for f in files], name, split)
        if classes is None:
            classes = _class_names(rows.parts[0].features, options["label_column"]) or _info_class_names(files[0], options["label_column"])
        splits[split] = ItemSplit(
            fetch=(lambda rows: lambda i: _fetch(rows, i, root, limit))(rows),
            labels=rows.labels,
            preprocess=preprocess,
            name=rows.where,
            workers=options["workers"],
            limit=limit,
            description=f"{name} {split}",
        )
    count = 1 + max(int(s.labels.max()) for s in splits.values())
    if classes is not None and len(classes) < count:
        raise DataFormatError(f"dataset {name!r}: column {options['label_column']!r} holds class {count - 1} but its ClassLabel names only {len(classes)} classes")
    _require_memory_classes(name, options["train_split"], tables, classes)
    return ClassificationData(
        name=name,
        train=splits[options["train_split"]],
        test=splits[options["test_split"]],
        classes=classes or [str(i) for i in range(count)],
        description=f"Hugging Face dataset: {options['train_split']} as memory, {options['test_split']} as queries",
        splits=splits,
    )


def _require_memory_classes(name: str, memory: str, tables: dict[str, HFSplit], classes: list[str] | None) -> None:
    """Every split's labels are among the memory split's: a ClassLabel may name classes
    without memory rows, but a query of such a class cannot be retrieved."""
    held = np.unique(tables[memory].labels)
    for split, rows in tables.items():
        strangers = np.flatnonzero(~np.isin(rows.labels, held))
        if len(strangers):
            label = int(rows.labels[strangers[0]])
            class_name = classes[label] if classes else str(label)
            raise DataFormatError(
                f"dataset {name!r}: split {split!r}: {rows.where(int(strangers[0]))}: class {class_name!r} "
                f"is not among the classes of the {memory!r} split's rows; every query class needs rows in the memory split"
            )


def _fetch(rows: HFSplit, index: int, root: Path, limit: PixelLimit) -> Image.Image:
    part, row = rows.locate(index)
    return _decode_cell(part.image(row), f"{part.path}: row {row}", root, limit)


def _info_class_names(path: Path, column: str) -> list[str] | None:
    """ClassLabel names from the dataset_info.json beside a save_to_disk Arrow file."""
    info = path.parent / "dataset_info.json"
    try:
        return _class_names(json.loads(info.read_text()).get("features", {}), column)
    except (OSError, ValueError, AttributeError):
        return None
