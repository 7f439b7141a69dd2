"""WebDataset tar shards (CLIP_benchmark's `wds_*` layout), read with Python's tarfile.

A shard is an uncompressed tar whose members are grouped into samples by key: the
member name up to the first dot of its file name (`shard/000012.jpg` and
`shard/000012.cls` are sample `shard/000012`). A sample holds one image (any of
IMAGE_EXTENSIONS without the dot, e.g. `jpg`, `png`, `webp`) and its integer class in
the `cls` member (text). The shards are indexed once (member headers and the small
`cls` members only); images are read by offset and decoded as batches are asked for,
so splits have a length, labels up front and random access.

Where the shards are:
* `root` a folder: `root/train/*.tar` (memory) and `root/test/*.tar` (queries);
* option `splits: {train: PATTERN, test: PATTERN}`: brace patterns such as
  `train-{000000..000009}.tar`, absolute or below `root`;
* `root` a brace pattern holding `{split}`, e.g. `/data/{split}-{0000..0009}.tar`.
Class names come from `classnames.txt` (one per line) beside the split folders when
present (CLIP_benchmark ships one), else they are the label numbers.
"""

from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.datasets.folders import IMAGE_OPTIONS, _preprocess
from harness.datasets.images import IMAGE_EXTENSIONS, PixelLimit, pixel_limit
from harness.datasets.items import ItemSplit, decode_bytes
from harness.datasets.spec import dataset_options
from harness.datasets.splits import ClassificationData
from harness.errors import DataFormatError, DatasetUnavailable, HarnessError

if TYPE_CHECKING:
    from PIL import Image

    from harness.config.schema import DatasetSpec

IMAGE_KEYS = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
"""The member extensions a sample's image may have (WebDataset names them without the dot)."""

WEBDATASET_OPTIONS: dict[str, Any] = {
    **IMAGE_OPTIONS,
    "splits": None,
    "train_split": "train",
    "test_split": "test",
    "label_key": "cls",
    "classnames": "classnames.txt",
}

_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """Bash-style brace expansion as WebDataset shard lists use it: `{a,b}` alternatives
    and `{000..012}` numeric ranges (zero-padded to the first bound's width), nested too.
    A brace group that is neither stays as written (e.g. `{split}`)."""
    start = pattern.find("{")
    while start != -1:
        depth, end = 0, -1
        for position in range(start, len(pattern)):
            depth += {"{": 1, "}": -1}.get(pattern[position], 0)
            if depth == 0:
                end = position
                break
        if end == -1:
            return [pattern]
        body = pattern[start + 1 : end]
        options = _alternatives(body)
        if options is not None:
            head, tail = pattern[:start], pattern[end + 1 :]
            return [head + middle + rest for option in options for middle in expand_braces(option) for rest in expand_braces(tail)]
        start = pattern.find("{", start + 1)
    return [pattern]


def _alternatives(body: str) -> list[str] | None:
    """The choices of one brace group's body, or None when it is not a brace expression."""
    match = _RANGE.match(body)
    if match:
        first, last = int(match.group(1)), int(match.group(2))
        width = len(match.group(1)) if match.group(1).lstrip("-").startswith("0") else 0
        step = 1 if last >= first else -1
        return [str(value).zfill(width) for value in range(first, last + step, step)]
    parts, depth, current = [], 0, ""
    for char in body:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts if len(parts) > 1 else None


@dataclass(frozen=True)
class Sample:
    """One sample of a shard: where its image member's data lies, and its label."""

    shard: Path
    key: str
    member: str
    offset: int
    size: int
    label: int
    index: int  # its position in the shard, counting samples from 0


def index_shard(path: Path, label_key: str = "cls") -> list[Sample]:
    """The samples of one uncompressed tar shard in member order. A sample without an
    image or without its label member, or a label that is not an integer, raises
    DataFormatError naming the shard, the sample's key and its index."""
    try:
        archive = tarfile.open(path, "r:")
    except FileNotFoundError:
        raise DataFormatError(f"{path}: shard not found") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataFormatError(f"{path}: not a readable uncompressed tar shard ({exc}); compressed shards are not supported") from None
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    with archive, open(path, "rb") as raw:
        try:
            members = archive.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataFormatError(f"{path}: damaged tar shard ({exc})") from None
        raw.seek(archive.offset)  # where reading stopped: a tar ends with zero blocks, a shard cut between members does not
        if raw.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
            raise DataFormatError(
                f"{path}: the shard ends after {len(members)} members without the tar's end-of-archive blocks: it was cut off "
                "(an interrupted copy or write); copy or write it again"
            )
        for member in members:
            if not member.isfile():
                continue
            folder, _, filename = member.name.rpartition("/")
            stem, dot, ext = filename.partition(".")
            if not dot or stem.startswith("__") and stem.endswith("__"):
                continue  # WebDataset's own metadata members (__key__ ...) and files without an extension
            key = f"{folder}/{stem}" if folder else stem
            groups.setdefault(key, {})[ext.lower()] = member
        samples = []
        for index, (key, parts) in enumerate(groups.items()):
            where = f"{path}: sample {key!r} (sample {index} of the shard)"
            image = next((parts[ext] for ext in IMAGE_KEYS if ext in parts), None)
            if image is None:
                raise DataFormatError(f"{where} has no image member ({', '.join(IMAGE_KEYS)}); it holds {', '.join(sorted(parts))}")
            if label_key not in parts:
                raise DataFormatError(f"{where} has no label member {key.rsplit('/', 1)[-1]}.{label_key}")
            label = _read_label(raw, parts[label_key], where, label_key)
            samples.append(Sample(path, key, image.name, image.offset_data, image.size, label, index))
    return samples


def _read_label(raw: Any, member: tarfile.TarInfo, where: str, label_key: str) -> int:
    raw.seek(member.offset_data)
    text = raw.read(member.size).decode("utf-8", "replace").strip()
    try:
        label = int(text)
    except ValueError:
        raise DataFormatError(f"{where}: its .{label_key} member must hold an integer class, got {text[:40]!r}") from None
    if label < 0:
        raise DataFormatError(f"{where}: its .{label_key} member holds a negative class {label}")
    return label


def read_member(sample: Sample, limit: PixelLimit) -> Image.Image:
    """The image of `sample`, decoded; bad data raises DataFormatError naming the shard,
    the member and the sample's index."""
    try:
        with open(sample.shard, "rb") as handle:
            handle.seek(sample.offset)
            data = handle.read(sample.size)
    except OSError as exc:
        raise DataFormatError(f"{sample.shard}: cannot read member {sample.member} ({exc})") from None
    if len(data) != sample.size:
        raise DataFormatError(f"{sample.shard}: member {sample.member} is truncated (sample {sample.index} of the shard)")
    return decode_bytes(data, f"{sample.shard}:{sample.member}", f"sample {sample.index} of the shard", limit)


def _glob_split(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.tar") if p.is_file()) if folder.is_dir() else []


def _pattern_shards(pattern: str, base: Path | None, name: str, split: str) -> list[Path]:
    """The shards a brace pattern names (below `base` when relative); all missing means
    the data is not on this machine, some missing is a broken shard list."""
    paths = [Path(p).expanduser() for p in expand_braces(pattern)]
    if base is not None:
        paths = [p if p.is_absolute() else base / p for p in paths]
    missing = [p for p in paths if not p.is_file()]
    if len(missing) == len(paths):
        raise DatasetUnavailable(f"dataset {name!r}: no shard of split {split!r} exists ({pattern} -> {paths[0]} ...); set datasets.{name}.root or options.splits")
    if missing:
        raise DataFormatError(f"dataset {name!r}: split {split!r}: {len(missing)} of {len(paths)} shards of {pattern} are missing, e.g. {missing[0]}")
    return paths


def locate_shards(name: str, spec: DatasetSpec, options: dict[str, Any]) -> tuple[dict[str, list[Path]], Path | None]:
    """Shards per split name, and the folder classnames.txt is looked for in."""
    raw = os.environ.get(spec.env) if spec.env else None
    raw = raw or spec.root
    splits = options["splits"]
    if splits is not None and (not isinstance(splits, dict) or not all(isinstance(v, str) for v in splits.values())):
        raise HarnessError(f"datasets.{name}.options.splits must map split names to shard patterns, got {splits!r}")
    if raw and "{split}" in raw:
        names = list(splits) if splits else [options["train_split"], options["test_split"]]
        base = Path(raw.split("{", 1)[0]).expanduser()
        folder = base if raw.split("{", 1)[0].endswith("/") else base.parent
        return {s: _pattern_shards(raw.replace("{split}", s), None, name, s) for s in names}, folder
    if raw and expand_braces(raw) != [raw]:
        raise HarnessError(f"datasets.{name}.root {raw!r} is a shard pattern: put {{split}} in it, or name each split's pattern in options.splits")
    root = spec.resolved_root(name) if raw or not splits else None
    if splits:
        return {s: _pattern_shards(p, root, name, s) for s, p in splits.items()}, root
    assert root is not None
    found = {s: _glob_split(root / s) for s in (options["train_split"], options["test_split"])}
    for split, shards in found.items():
        if not shards:
            raise DataFormatError(f"dataset {name!r}: {root / split} holds no .tar shards (expected {root}/{split}/*.tar, or options.splits)")
    return found, root


def read_classnames(folder: Path | None, filename: str, count: int) -> list[str]:
    """The class names in `folder/filename` (one per line), or the numbers 0..count-1."""
    path = folder / filename if folder is not None and filename else None
    if path is None or not path.is_file():
        return [str(i) for i in range(count)]
    names = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    if len(names) < count:
        raise DataFormatError(f"{path}: lists {len(names)} classes but the shards hold label {count - 1}")
    return names


def webdataset_files(name: str, spec: DatasetSpec) -> list[Path]:
    """Every shard of every split, and classnames.txt where present: what the keys see."""
    options = dataset_options(name, spec, WEBDATASET_OPTIONS)
    shards, folder = locate_shards(name, spec, options)
    listed = [path for paths in shards.values() for path in paths]
    classnames = folder / options["classnames"] if folder is not None and options["classnames"] else None
    return listed + ([classnames] if classnames is not None and classnames.is_file() else [])


def read_webdataset(name: str, spec: DatasetSpec) -> ClassificationData:
    """WebDataset shards as CLIP_benchmark writes them (see the module's docstring).

    Options: splits ({split: pattern}), train_split ("train", the memory), test_split
    ("test", the queries), label_key ("cls"), classnames ("classnames.txt"), and the
    image options crop, resize, workers, max_pixels.
    """
    options = dataset_options(name, spec, WEBDATASET_OPTIONS)
    shards, folder = locate_shards(name, spec, options)
    for wanted in (options["train_split"], options["test_split"]):
        if wanted not in shards:
            raise HarnessError(f"datasets.{name}.options.splits has no split {wanted!r} (it names {', '.join(shards)})")
    preprocess, limit = _preprocess(name, options), pixel_limit(name, options)
    indexed = {split: [s for shard in paths for s in index_shard(shard, options["label_key"])] for split, paths in shards.items()}
    count = 1 + max((s.label for samples in indexed.values() for s in samples), default=-1)
    classes = read_classnames(folder, options["classnames"], count)
    memory = options["train_split"]
    if not indexed[memory]:
        raise DataFormatError(f"dataset {name!r}: the shards of split {memory!r} hold no samples")
    held = {s.label for s in indexed[memory]}
    splits = {}
    for split, samples in indexed.items():
        if not samples:
            raise DataFormatError(f"dataset {name!r}: the shards of split {split!r} hold no samples")
        stranger = next((s for s in samples if s.label not in held), None)
        if stranger is not None:
            raise DataFormatError(
                f"dataset {name!r}: split {split!r}: {stranger.shard}: sample {stranger.key!r} (sample {stranger.index} of the shard): "
                f"class {classes[stranger.label]!r} is not among the classes of the {memory!r} split's samples; "
                "every query class needs samples in the memory split"
            )
        splits[split] = ItemSplit(
            fetch=(lambda samples: lambda i: read_member(samples[i], limit))(samples),
            labels=[s.label for s in samples],
            preprocess=preprocess,
            name=(lambda samples: lambda i: f"{samples[i].shard}:{samples[i].member}")(samples),
            workers=options["workers"],
            limit=limit,
            description=f"{name} {split}",
        )
    return ClassificationData(
        name=name,
        train=splits[options["train_split"]],
        test=splits[options["test_split"]],
        classes=classes,
        description=f"WebDataset shards: {options['train_split']} as memory, {options['test_split']} as queries",
        splits=splits,
    )
