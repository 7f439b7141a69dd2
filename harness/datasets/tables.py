"""Image files listed in a table: a CSV, TSV or whitespace-separated text file of
(image path, class[, split]) rows, the way many datasets ship their labels (a CSV with
a header, or DomainNet's `<domain>_train.txt` and `<domain>_test.txt`, lines `path class`).

The class is one column, or a set of 0/1 columns (`label_columns`): one per class with
exactly one 1 per row (ISIC's one-hot ground truth), or with `multi_label: true` any
number of 1s per row (CheXpert's findings; the labels are then [n, L], as MedMNIST's
multi-label sets are). With one label column the classes are the labels of the memory
split, sorted (as numbers when every one is an integer), and a query label that the
memory lacks is an error naming its row; with label columns they are the columns, in
the order given. Paths are below `root/images_dir`: the root's fingerprint then covers
every image the table names.
"""

from __future__ import annotations

import csv
import io
import operator
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from harness.datasets.folders import IMAGE_OPTIONS, _preprocess
from harness.datasets.images import pixel_limit
from harness.datasets.spec import dataset_options
from harness.datasets.splits import ClassificationData, ImageFileSplit, stratified_split
from harness.errors import DataFormatError, HarnessError

if TYPE_CHECKING:
    from harness.config.schema import DatasetSpec

TABLE_OPTIONS: dict[str, Any] = {
    **IMAGE_OPTIONS,
    "file": "labels.csv",
    "files": None,
    "image_column": None,
    "label_column": None,
    "label_columns": None,
    "multi_label": False,
    "uncertain_as": None,
    "blank_as": None,
    "split_column": None,
    "train_split": "train",
    "test_split": "test",
    "images_dir": ".",
    "suffix": "",
    "delimiter": None,
    "header": True,
    "test_fraction": None,
    "seed": 0,
}
UNSPLIT_HINT = (
    "; a table without a split column is split at random with options.test_fraction (e.g. 0.2), "
    "or comes as one table per split with options.files"
)
DELIMITERS = {".csv": ",", ".tsv": "\t"}
"""The delimiter a table's file name implies; any other file splits its lines at whitespace."""


class TableRow(NamedTuple):
    """One row. `label` is the class's name; with `multi_label`, one "0"/"1" per label column."""

    table: Path
    line: int
    image: str
    label: str
    split: str | None
    note: str = ""  # why the row may be misread, shown with any message about it

    @property
    def where(self) -> str:
        """The file and line that list the row, for messages."""
        return f"{self.table}: line {self.line}{self.note}"


def read_table(name: str, spec: DatasetSpec) -> ClassificationData:
    """Image files listed in a CSV, TSV or text table with their classes.

    One table with a split column (`file`, default labels.csv; `split_column`, `split`),
    one table split at random (`test_fraction` of each class as queries; `seed`, 0), or
    one table per split (`files: {train: train.csv, test: test.csv}`). Columns are named
    by the header (`image_column` "image", `label_column` "label"), or numbered from 0 with
    `header: false` (defaults 0, 1 and 2). `label_columns` (a list) instead takes the class
    from 0/1 columns, one per class: exactly one 1 per row, or with `multi_label: true`
    any number (labels [n, L], label type "multi-label, binary-class"); `uncertain_as` and
    `blank_as` (0 or 1) read a label column's -1 and empty field, CheXpert's "uncertain"
    and "not mentioned", which are otherwise errors. Other options:
    train_split ("train"), test_split ("test"), images_dir (".", below the root), suffix
    (added to each path, e.g. ".jpg" when the table holds ids), delimiter ("," for .csv,
    tab for .tsv, whitespace for other files), and the image options (crop, resize,
    workers, max_pixels).
    """
    options = _checked_options(name, spec)
    root = spec.resolved_root(name)
    header = options["header"]
    columns = {"image": _column(name, options, "image_column", "image" if header else 0)}
    labels = _label_columns(name, options)
    if options["files"] is not None:
        if options["split_column"] is not None or options["test_fraction"] is not None:
            raise HarnessError(f"datasets.{name}.options: with `files` each table is one split; split_column and test_fraction split one table")
        rows = {split: _read_rows(_table(name, root, file), options, columns, labels) for split, file in _split_files(name, options["files"]).items()}
    elif options["test_fraction"] is not None:
        if options["split_column"] is not None:
            raise HarnessError(f"datasets.{name}.options: split_column or test_fraction, not both (one splits by a column, the other at random)")
        rows = _split_at_random(name, _read_rows(_table(name, root, options["file"]), options, columns, labels), options)
    else:
        columns["split"] = _column(name, options, "split_column", "split" if header else 2)
        rows = defaultdict(list)
        for row in _read_rows(_table(name, root, options["file"]), options, columns, labels):
            rows[row.split].append(row)
    for role in ("train_split", "test_split"):
        if not rows.get(options[role]):
            raise DataFormatError(
                f"dataset {name!r}: no rows of split {options[role]!r} (options.{role}); the table holds {', '.join(map(repr, sorted(rows))) or 'no rows'}"
            )

    multi_label = options["multi_label"]
    classes = [str(column) for column in labels] if options["label_columns"] else _classes([row.label for row in rows[options["train_split"]]])
    index = {label: i for i, label in enumerate(classes)}
    images = _below_root(root, root / options["images_dir"], f"dataset {name!r}", f"options.images_dir {options['images_dir']!r}", folder=True)
    prefix = os.path.join(images, "")
    preprocess, limit = _preprocess(name, options), pixel_limit(name, options)
    splits = {}
    for split, listed in rows.items():
        if multi_label:
            targets = np.array([[int(bit) for bit in row.label] for row in listed], np.int64).reshape(len(listed), len(labels))
        else:
            for row in listed:
                if row.label not in index:
                    raise DataFormatError(f"{row.where}: class {row.label!r} is not among the classes of the {options['train_split']!r} rows")
            targets = np.array([index[row.label] for row in listed], np.int64)
        origin = (lambda listed: lambda i: listed[i].where)(listed)
        paths = [_image_path(root, prefix, row, options["suffix"]) for row in listed]
        for row, path in zip(listed, paths):
            if row.note and not os.path.isfile(path):  # a wide row whose image is not there: misread, not merely missing
                raise DataFormatError(f"{row.where}: image file {path} not found")
        splits[split] = ImageFileSplit(paths, targets, preprocess, options["workers"], origin, limit)
    return ClassificationData(
        name=name, train=splits[options["train_split"]], test=splits[options["test_split"]], classes=classes,
        description=f"image table: {options['train_split']} rows as memory, {options['test_split']} rows as queries", splits=splits,
        label_type="multi-label, binary-class" if multi_label else "multi-class",
    )


def _checked_options(name: str, spec: DatasetSpec) -> dict[str, Any]:
    """The entry's options over TABLE_OPTIONS; an ill-typed one is an error naming it."""
    options = dataset_options(name, spec, TABLE_OPTIONS)

    def refuse(option: str, wanted: str) -> None:
        raise HarnessError(f"datasets.{name}.options.{option} must be {wanted}, got {options[option]!r}")

    for option in ("header", "multi_label"):
        if not isinstance(options[option], bool):
            refuse(option, "true or false")
    for option in ("file", "images_dir", "suffix"):
        if not isinstance(options[option], str):
            refuse(option, "a string")
    if isinstance(options["seed"], bool) or not isinstance(options["seed"], int):
        refuse("seed", "an integer")
    fraction = options["test_fraction"]
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1):
        refuse("test_fraction", "a number between 0 and 1")
    for option in ("uncertain_as", "blank_as"):
        if options[option] is not None:
            if isinstance(options[option], bool) or options[option] not in (0, 1):
                refuse(option, "0 or 1 (what the label column's value reads as)")
            if options["label_columns"] is None:
                raise HarnessError(f"datasets.{name}.options.{option} reads values of label_columns (0/1 columns); set label_columns, or leave {option} out")
    delimiter = options["delimiter"]
    if delimiter is not None and not (isinstance(delimiter, str) and len(delimiter) == 1 and delimiter not in "\r\n\"'"):
        refuse("delimiter", "one character (not a quote or line break)")
    options["train_split"], options["test_split"] = str(options["train_split"]), str(options["test_split"])  # as a table spells them
    return options


def _column(name: str, options: dict[str, Any], option: str, default: str | int, value: Any = None) -> str | int:
    """The column `option` names (`value`, for one entry of a list option), or `default`:
    a name from the header, or with header: false a number from 0."""
    value = value if value is not None else default if options[option] is None else options[option]
    if options["header"] and not isinstance(value, str):
        raise HarnessError(f"datasets.{name}.options.{option}: a column name from the header, got {value!r}")
    if not options["header"] and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise HarnessError(f"datasets.{name}.options.{option}: with header: false, a column number from 0, got {value!r}")
    return value


def _label_columns(name: str, options: dict[str, Any]) -> list[str | int]:
    """The column that names each row's class, or the 0/1 columns of `label_columns`."""
    listed = options["label_columns"]
    if listed is None:
        if options["multi_label"]:
            raise HarnessError(f"datasets.{name}.options.multi_label needs label_columns: the 0/1 columns, one per label")
        return [_column(name, options, "label_column", "label" if options["header"] else 1)]
    if options["label_column"] is not None:
        raise HarnessError(f"datasets.{name}.options: label_column or label_columns, not both (one names the class, the other has a 0/1 column per class)")
    if not isinstance(listed, list) or not listed:
        raise HarnessError(f"datasets.{name}.options.label_columns must be a list of columns, one per class, got {listed!r}")
    columns = [_column(name, options, "label_columns", column, value=column) for column in listed]
    if len(set(columns)) < len(columns):
        raise HarnessError(f"datasets.{name}.options.label_columns names a column twice: {listed!r}")
    return columns


def _split_at_random(name: str, rows: list[TableRow], options: dict[str, Any]) -> dict[str, list[TableRow]]:
    """`test_fraction` of each class's rows as queries, the rest as memory: stratified
    (multi-label rows: at random), seeded."""
    fraction = options["test_fraction"]
    labels = np.array([list(row.label) if options["multi_label"] else row.label for row in rows])
    try:
        train, test = stratified_split(labels, fraction, options["seed"])
    except ValueError as exc:
        raise DataFormatError(f"dataset {name!r}: cannot split the table's rows {fraction:g} by class: {exc}") from None
    return {options["train_split"]: [rows[i] for i in train], options["test_split"]: [rows[i] for i in test]}


def _split_files(name: str, files: Any) -> dict[str, str]:
    if not isinstance(files, dict) or not files or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise HarnessError(f"datasets.{name}.options.files must map split names to table files below the root, got {files!r}")
    return files


def _table(name: str, root: Path, file: str) -> Path:
    return _below_root(root, root / file, f"dataset {name!r}", f"table {file!r}")


def _classes(labels: list[str]) -> list[str]:
    """The distinct labels, sorted; as numbers when every one is an integer (2 before 10,
    "1" before "01")."""
    distinct = set(labels)
    try:
        return sorted(distinct, key=lambda label: (int(label), label))
    except ValueError:
        return sorted(distinct)


def _below_root(root: Path, path: Path, where: str, what: str, folder: bool = False) -> Path:
    """`path`, which must lie below the root (or be it, for a `folder`): the root's
    fingerprint is what tells the keys that a table or an image changed."""
    inside, top = os.path.normpath(path), os.path.normpath(root)
    if not (inside.startswith(os.path.join(top, "")) or (folder and inside == top)):
        raise DataFormatError(
            f"{where}: {what} lies outside the root {root}; make the root a folder that holds "
            "the tables and every image (options.images_dir: the folder below it that image paths start from)"
        )
    return Path(inside)


def _image_path(root: Path, prefix: str, row: TableRow, suffix: str) -> str:
    """The row's image file below the folder `prefix` (which ends in a separator); a path
    that leads out of the root is an error. Strings, not Paths: a table may list a
    million images."""
    if row.image.startswith(os.sep) or ".." in row.image:
        return str(_below_root(root, Path(os.path.join(prefix, row.image + suffix)), row.where, f"image {row.image!r}"))
    return prefix + row.image + suffix


def _read_rows(path: Path, options: dict[str, Any], columns: dict[str, str | int], labels: list[str | int]) -> list[TableRow]:
    """The table's rows; `columns` maps the image (and split) role to its column, `labels`
    lists the class's column or the 0/1 label columns."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found (options.file, or options.files per split, name tables below the root)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: cannot read: {exc}") from None
    delimiter = options["delimiter"] or DELIMITERS.get(path.suffix.lower())
    if delimiter is None:
        records = [(number, line.split()) for number, line in enumerate(text.splitlines(), 1)]
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        try:  # a record's number is the line it ends on (a quoted field may hold line breaks)
            records = [(reader.line_num, fields) for fields in reader]
        except csv.Error as exc:
            raise DataFormatError(f"{path}: line {reader.line_num}: not a {delimiter!r}-separated table row: {exc}") from None
    records = [(number, fields) for number, fields in records if "".join(fields).strip()]
    roles = [(role, column) for role, column in columns.items()] + [("label", column) for column in labels]
    if options["header"]:
        if not records:
            raise DataFormatError(f"{path}: empty file (its first line names the columns)")
        names = [field.strip() for field in records[0][1]]
        missing = [(role, column) for role, column in roles if column not in names]
        if missing:
            unsplit = any(role == "split" for role, _ in missing)
            raise DataFormatError(
                f"{path}: no column {', '.join(repr(column) for _, column in missing)} in the header ({', '.join(names)}); "
                "set options.image_column / label_column / label_columns / split_column, or header: false"
                + (UNSPLIT_HINT if unsplit else "")
            )
        positions = [names.index(str(column)) for _, column in roles]
        records = records[1:]
    else:
        positions = [int(column) for _, column in roles]
    width, pick = max(positions) + 1, (lambda fields: [fields[position] for position in positions]) if len(positions) == 1 else operator.itemgetter(*positions)
    image_at, split_at, first_label = list(columns).index("image"), list(columns).index("split") if "split" in columns else None, len(columns)
    label_of = _one_hot if options["label_columns"] and not options["multi_label"] else _label_bits if options["multi_label"] else None
    readings = {"-1": options["uncertain_as"], "": options["blank_as"]}
    usual = Counter(len(fields) for _, fields in records).most_common(1)[0][0] if delimiter is None and records else None
    must_fill = first_label if options["blank_as"] is not None else len(roles)  # fields that may not be empty
    rows = []
    for number, fields in records:
        if len(fields) < width:
            unsplit = split_at is not None and all(len(fields) > position for role, position in zip(roles, positions) if role[0] != "split")
            raise DataFormatError(
                f"{path}: line {number}: {len(fields)} field(s), the columns need {width}" + (UNSPLIT_HINT if unsplit else "")
            )
        values = list(map(str.strip, pick(fields)))
        if not all(values[:must_fill]):
            role, column = roles[values.index("")]
            hint = " (set options.blank_as: 0 or 1 to read an empty label column as 0 or 1)" if role == "label" and label_of else ""
            raise DataFormatError(f"{path}: line {number}: empty {role} (column {column!r}){hint}")
        label = values[first_label] if label_of is None else label_of(f"{path}: line {number}", labels, values[first_label:], readings)
        note = _space_hint(len(fields), usual) if usual is not None and len(fields) > usual else ""
        rows.append(TableRow(path, number, values[image_at], label, None if split_at is None else values[split_at], note))
    return rows


def _space_hint(fields: int, usual: int) -> str:
    """For a whitespace-separated line wider than most: a path or class with a space
    splits in two and shifts the columns after it. Said with any message about the row,
    not refused: extra fields after the columns read (a note, a comment) are harmless."""
    return (
        f" ({fields} whitespace-separated fields where most lines have {usual}: if a path or class holds a space, "
        "use a CSV or TSV table, or options.delimiter)"
    )


def _label_bits(where: str, columns: list[str | int], values: list[str], readings: dict[str, int | None]) -> str:
    """The row's 0/1 label columns as a string of "0" and "1" (1.0 and 0.0 are read too;
    -1 and an empty field as `readings` says, the options uncertain_as and blank_as)."""
    bits = []
    for column, value in zip(columns, values):
        if value not in ("0", "1"):
            try:
                number = float(value) if value else readings[""]  # an empty field is there only with blank_as
            except ValueError:
                number = None
            if number == -1.0 and readings["-1"] is not None:
                number = readings["-1"]
            if number not in (0.0, 1.0):
                hint = " (set options.uncertain_as: 0 or 1 to read -1 as 0 or 1)" if number == -1.0 else ""
                raise DataFormatError(f"{where}: label column {column!r} holds {value!r}; label columns hold 0 or 1{hint}")
            value = str(int(number))
        bits.append(value)
    return "".join(bits)


def _one_hot(where: str, columns: list[str | int], values: list[str], readings: dict[str, int | None]) -> str:
    """The name of the one label column that holds 1."""
    bits = _label_bits(where, columns, values, readings)
    if bits.count("1") != 1:
        held = [str(column) for column, bit in zip(columns, bits) if bit == "1"]
        raise DataFormatError(
            f"{where}: {len(held)} label columns hold 1 ({', '.join(held) or 'none'}); each row needs exactly one "
            "(multi_label: true reads rows with several labels)"
        )
    return str(columns[bits.index("1")])
