"""Listing the files of a directory tree whose directory links may form loops.

Image folders often link to data stored elsewhere, so directory links are followed.
But a link back up the tree (`ln -s .. train/dog/loop`) would be followed until paths
grow too long, listing every image again (and under the wrong class) on each round.
Here each real directory is listed at most once, and a link that leads back into the
tree being listed is skipped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def _skip_reason(entry: os.DirEntry, target: str, parent: str, visited: set[str], fence: str | None) -> str | None:
    """Why the directory `entry` (real path `target`, inside real directory `parent`) is
    not listed, or None to list it."""
    if target == parent or parent.startswith(target + os.sep):
        return f"it leads back to {target}, which contains it: a loop"
    if fence is not None and entry.is_symlink() and (target == fence or target.startswith(fence + os.sep)):
        return f"it leads back into {fence}, which is listed on its own"
    if target in visited:
        return f"it leads to {target}, which is already listed"
    return None


def list_tree(
    top: Path,
    visited: set[str],
    fence: Path | None = None,
    on_skip: Callable[[Path, str], None] | None = None,
) -> list[Path]:
    """Every file under `top`, in the order of a sorted `os.walk` (directory paths sorted,
    then file names), following directory links.

    `visited` holds the real paths of the directories listed so far and is updated, so
    calls that share it list each real directory once. A directory link whose target is
    inside `fence` (the tree a caller lists piece by piece) is skipped too. Each skipped
    directory is reported to `on_skip(path, reason)`. Unreadable directories are left
    out, as `os.walk` leaves them out.
    """
    real_fence = os.path.realpath(fence) if fence is not None else None
    real_top = os.path.realpath(top)
    if real_top in visited:
        if on_skip is not None:
            on_skip(top, f"it leads to {real_top}, which is already listed")
        return []
    visited.add(real_top)
    listed: list[tuple[str, list[str]]] = []
    pending = [(str(top), real_top)]
    while pending:
        directory, real = pending.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        files = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if not is_dir:
                files.append(entry.name)
                continue
            target = os.path.realpath(entry.path)
            reason = _skip_reason(entry, target, real, visited, real_fence)
            if reason is not None:
                if on_skip is not None:
                    on_skip(Path(entry.path), reason)
                continue
            visited.add(target)
            pending.append((entry.path, target))
        listed.append((directory, files))
    return [Path(directory) / name for directory, names in sorted(listed) for name in names]
