"""The cache: trained weights, embeddings and memories, keyed by what determines them.

Location: `$HARNESS_CACHE`, else the user's cache directory. Every file is written to a
temporary name and renamed into place, so a crash never leaves a torn file under a
final name; a file that still fails to load is deleted and recomputed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np


def cache_root() -> Path:
    if os.environ.get("HARNESS_CACHE"):
        return Path(os.environ["HARNESS_CACHE"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("harness"))


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)`, fsync, then rename onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_arrays(path: Path, **arrays: np.ndarray) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    return atomic_write(path, write)


def load_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays stored at `path`, or None when absent or unreadable (then it is removed)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception:
        path.unlink(missing_ok=True)
        return None


def cached_arrays(path: Path, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, Any]:
    """Load `path`, or compute, store and return the arrays."""
    found = load_arrays(path)
    if found is not None:
        return found
    arrays = compute()
    save_arrays(path, **arrays)
    return arrays
