"""Fingerprints of a dataset's contents, for the keys of cached embeddings and results.

A registry entry says where a dataset lives, not what it holds: replacing its images
under the same file names must still change every key computed from them. What the
fingerprint (`dataset_fingerprint`) covers depends on what the entry points at:

* a root directory: every file under it (directory links followed, each real directory
  once) with its path below the root, size and modification time, plus the content of
  a deterministic sample of SAMPLE_FILES of them (their first and last 64 KiB); with
  the dataset option `fingerprint: full`, the whole content of every file;
* a `.npz` file, as the root or under it: its members' names, sizes and CRC-32s, read
  from the zip directory without decompressing anything (exact and cheap);
* any other root file: its size, modification time and content (as above);
* a bundled format (digits, lfw-faces, textures): the version of the package that
  ships its images.

A dataset without a root on this machine (generated data, or data not yet there) has
no fingerprint. Content hashes are cached per (path, size, modification time) under the
cache directory (`fingerprints/`), so a repeated run reads only the directory listing.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from harness.cache import atomic_write, cache_root
from harness.datasets.bundled import BUNDLED_PACKAGES
from harness.datasets.spec import fingerprint_mode
from harness.datasets.walk import list_tree
from harness.errors import DatasetUnavailable, HarnessError

if TYPE_CHECKING:
    from harness.config.schema import DatasetSpec

SAMPLE_FILES = 64
"""Files whose content a "sample" fingerprint hashes, spread evenly over the sorted listing."""

EDGE_BYTES = 64 * 1024
"""Bytes hashed from the start and from the end of each sampled file."""


def dataset_fingerprint(
    name: str, spec: DatasetSpec, files: Callable[[str, DatasetSpec], list[Path]] | None = None
) -> dict[str, Any] | None:
    """A summary of dataset `name`'s contents that changes whenever they do (see above).
    `files`, from a format whose root is a pattern rather than a folder, lists the files
    the dataset reads; they are fingerprinted below their common folder."""
    from importlib.metadata import PackageNotFoundError, version

    mode = fingerprint_mode(name, spec)
    if spec.format in BUNDLED_PACKAGES:
        packages = {}
        for package in BUNDLED_PACKAGES[spec.format]:
            try:
                packages[package] = version(package)
            except PackageNotFoundError:
                packages[package] = None
        return {"packages": packages}
    if files is not None:
        try:
            listed = sorted({path.resolve() for path in files(name, spec)})
        except HarnessError:  # absent, or misconfigured: the reader says which when the dataset is opened
            return None
        if not listed:
            return None
        common = Path(os.path.commonpath([str(path.parent) for path in listed]))
        return _files_fingerprint(common, listed, mode)
    try:
        root = spec.resolved_root(name)
    except DatasetUnavailable:
        return None
    tree = list_tree(root, set(), fence=root) if root.is_dir() else [root]
    return _files_fingerprint(root, tree, mode)


def _files_fingerprint(root: Path, files: list[Path], mode: str) -> dict[str, Any]:
    """Listing (path below `root`, size, mtime; CRCs for .npz) and content hashes of `files`."""
    hashes = _HashCache(root, mode)
    listing: list[list[Any]] = []
    contents: list[tuple[Path, str, os.stat_result]] = []
    total = 0
    for path in files:
        relative = path.relative_to(root).as_posix() if root.is_dir() else path.name
        try:
            stat = path.stat()
        except OSError:
            listing.append([relative, "unreadable"])
            continue
        total += stat.st_size
        if path.suffix.lower() == ".npz":
            listing.append([relative, hashes.digest(path, relative, stat, _npz_digest)])
        else:
            listing.append([relative, stat.st_size, stat.st_mtime_ns])
            contents.append((path, relative, stat))
    if mode == "sample" and len(contents) > SAMPLE_FILES:
        contents = [contents[i * len(contents) // SAMPLE_FILES] for i in range(SAMPLE_FILES)]
    hash_content = _edges_digest if mode == "sample" else _whole_digest
    content = [[relative, hashes.digest(path, relative, stat, hash_content)] for path, relative, stat in contents]
    hashes.save()
    digest = hashlib.sha256(json.dumps([listing, content]).encode()).hexdigest()
    return {"files": len(files), "bytes": total, "content": mode, "digest": digest}


def _edges_digest(path: Path) -> str:
    """The file's first and last EDGE_BYTES (the whole file when it is smaller)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        digest.update(handle.read(EDGE_BYTES))
        if size > EDGE_BYTES:
            handle.seek(max(EDGE_BYTES, size - EDGE_BYTES))
            digest.update(handle.read(EDGE_BYTES))
    return digest.hexdigest()


def _whole_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _npz_digest(path: Path) -> str:
    """The members' names, sizes and CRC-32s from the zip directory; a file that is not a
    readable zip falls back to its sampled content (its reader reports the damage)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [[info.filename, info.file_size, info.CRC] for info in archive.infolist()]
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError):
        return "content:" + _edges_digest(path)
    return "members:" + hashlib.sha256(json.dumps(members).encode()).hexdigest()


class _HashCache:
    """Content hashes of the files under one root, kept per (path, size, mtime) in
    `<cache>/fingerprints/`, one JSON file per (root, mode)."""

    def __init__(self, root: Path, mode: str) -> None:
        key = hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:20]
        self.path = cache_root() / "fingerprints" / f"{key}-{mode}.json"
        self.used: set[str] = set()
        self.changed = False
        try:
            loaded = json.loads(self.path.read_text())
        except (OSError, ValueError):
            loaded = {}
        self.entries = loaded if isinstance(loaded, dict) else {}

    def digest(self, path: Path, relative: str, stat: os.stat_result, compute: Callable[[Path], str]) -> str:
        """`compute(path)`, or the hash cached for this (path, size, mtime)."""
        self.used.add(relative)
        found = self.entries.get(relative)
        if isinstance(found, list) and found[:2] == [stat.st_size, stat.st_mtime_ns] and len(found) == 3:
            return str(found[2])
        try:
            value = compute(path)
        except OSError as exc:
            return f"unreadable: {exc.strerror}"
        self.entries[relative] = [stat.st_size, stat.st_mtime_ns, value]
        self.changed = True
        return value

    def save(self) -> None:
        """Write the hashes used this time (so files gone or no longer sampled drop out)."""
        if self.changed or self.used != set(self.entries):
            text = json.dumps({relative: self.entries[relative] for relative in sorted(self.used) if relative in self.entries})
            try:
                atomic_write(self.path, lambda tmp: tmp.write_text(text))
            except OSError:
                pass  # a read-only cache only costs the hashing again next time
