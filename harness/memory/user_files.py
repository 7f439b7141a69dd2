"""Files a user hands `harness memory`: ids files, query arrays, and output paths,
each checked so that a bad one is refused with its name and what is expected."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.memory.index import VisualMemory


_DECIMAL_ID = re.compile(r"-?[0-9]+")
_ID_RANGE = np.iinfo(np.int64)  # a memory's ids are int64 (`VisualMemory.load` reads them so)


def read_ids(ids_file: str | Path, memory: VisualMemory | None = None) -> np.ndarray:
    """ASCII decimal integers, one per line; blank lines and `#` comments are ignored.

    Each id must fit the memory's int64 ids; with `memory`, whose ids are all non-negative
    (as in every memory `build_memory` writes), a negative id is refused as a typo."""
    path = Path(ids_file)
    if path.is_dir():
        raise HarnessError(f"{path}: is a folder; --ids takes a file of ids, one integer per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise HarnessError(f"{path}: no such ids file") from None
    except UnicodeDecodeError as exc:
        raise HarnessError(f"{path}: not UTF-8 text (byte {exc.start}); expected one integer id per line") from None
    except OSError as exc:
        raise HarnessError(f"{path}: cannot read the ids file ({exc.strerror or exc})") from None
    non_negative = memory is not None and bool((memory.ids >= 0).all())
    ids = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if not _DECIMAL_ID.fullmatch(text):
            raise HarnessError(
                f"{path}:{number}: expected one integer id per line in ASCII decimal digits, got {line.strip()!r}"
            )
        value = int(text)
        if value < 0 and non_negative:
            raise HarnessError(f"{path}:{number}: id {value} is negative, and the memory's ids are all non-negative")
        if not _ID_RANGE.min <= value <= _ID_RANGE.max:
            raise HarnessError(f"{path}:{number}: id {text} is out of the range of a memory's int64 ids")
        ids.append(value)
    return np.asarray(ids, dtype=np.int64)


def output_file(path: str | Path, option: str) -> Path:
    """`path` checked before any work is done: not a folder, and its folder can be made."""
    path = Path(path)
    if path.is_dir():
        raise HarnessError(f"{path}: {option} is a folder; give the name of a file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HarnessError(f"{path}: cannot make the folder for {option} ({exc.strerror or exc})") from None
    return path


def cannot_write(path: Path, option: str, exc: OSError) -> HarnessError:
    return HarnessError(f"{path}: cannot write {option} ({exc.strerror or exc}); choose a writable path")


def write_ids(path: str | Path, ids: np.ndarray) -> Path:
    path = output_file(path, "the ids file")
    try:
        path.write_text("".join(f"{int(i)}\n" for i in ids))
    except OSError as exc:
        raise cannot_write(path, "the ids file", exc) from None
    return path


def same_file(first: str | Path, second: str | Path) -> bool:
    """The same file by resolved path, or by inode (a hard link)."""
    if Path(first).resolve() == Path(second).resolve():
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


def read_query_file(path: Path, dim: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Query features [queries, dim] and their labels, if any, from a .npy or .npz file."""
    expected = (
        f"expected a .npy of numbers of shape [queries, {dim}] saved without pickled objects, or an .npz "
        "holding such an array named 'features' (and optionally integer 'labels')"
    )
    try:
        if path.suffix == ".npy":
            features, labels = np.load(path, allow_pickle=False), None
        else:
            with np.load(path, allow_pickle=False) as data:
                if "features" not in data.files:
                    raise HarnessError(f"{path}: no array named 'features' (has {', '.join(data.files)}); {expected}")
                features, labels = data["features"], data["labels"] if "labels" in data.files else None
    except HarnessError:
        raise
    except Exception as exc:  # numpy raises ValueError, OSError, EOFError or zipfile's errors
        raise HarnessError(f"{path}: cannot read query features ({exc}); {expected}") from None
    if features.dtype.kind not in "iuf" or features.ndim != 2 or features.shape[1] != dim:
        raise HarnessError(f"{path}: features are {features.dtype} of shape {list(features.shape)}; {expected}")
    if labels is not None and (labels.dtype.kind not in "iu" or labels.shape != (len(features),)):
        raise HarnessError(
            f"{path}: expected 'labels' as {len(features)} integers, got {labels.dtype} of shape {list(labels.shape)}"
        )
    return features, labels
