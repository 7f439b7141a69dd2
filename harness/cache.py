"""The cache: trained weights, embeddings and memories, keyed by what determines them.

Location: `$HARNESS_CACHE`, else the user's cache directory. Every file is written to a
temporary name and renamed into place, so a crash never leaves a torn file under a
final name; a file that still fails to load is deleted and recomputed.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Any, Callable

import numpy as np


def cache_root() -> Path:
    if os.environ.get("HARNESS_CACHE"):
        return Path(os.environ["HARNESS_CACHE"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("harness"))


def atomic_write(path: Path, write: Callable[[Path], None], *, through_symlinks: bool = False) -> Path:
    """Call `write(tmp_path)`, fsync, then rename onto `path`; returns `path`.

    The file gets the mode a plain `open(path, "w")` would give it: the replaced file's
    mode, or for a new file 0o666 less the umask (not the 0o600 of `tempfile.mkstemp`).
    The rename replaces the name `path`: a symlink there is replaced by a regular file,
    unless `through_symlinks`, which writes to the file the link resolves to instead."""
    target = Path(os.path.realpath(path)) if through_symlinks else path
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temporary_file(target)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        try:
            os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
        except FileNotFoundError:
            pass
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _new_temporary_file(path: Path) -> Path:
    """An empty new file beside `path`, created as `open` creates one (mode 0o666 less the umask)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


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
