"""What the encoder plugins share: forward passes in batches that shrink when the GPU
runs out of memory, and the digest of a weights file (part of an encoder's key)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """The file's sha256, remembered per (path, size, mtime) within the process."""
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _FILE_HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _FILE_HASHES[memo] = digest.hexdigest()
    return _FILE_HASHES[memo]


def in_batches(images: torch.Tensor, fn: Callable[[torch.Tensor], Any], fixed: int | None, automatic: int) -> tuple[torch.Tensor, int]:
    """fn over `images` in batches, outputs concatenated on the CPU, and the batch size
    used last. A `fixed` batch size is kept; the `automatic` one is halved and the batch
    retried when the GPU runs out of memory."""
    import torch

    size = fixed or automatic
    out, i = [], 0
    while i < len(images):
        try:
            out.append(fn(images[i : i + size]).cpu())
            i += size
        except torch.cuda.OutOfMemoryError:
            if fixed or size <= 1:
                raise
            torch.cuda.empty_cache()
            size //= 2
    return (torch.cat(out) if out else fn(images[:0]).cpu()), size


def load_weights_file(path: Path, which: str) -> Any:
    """The object stored in a safetensors file or a torch file (`torch.load` with
    `weights_only=True`: tensors and plain containers only). `which` names the parameter
    that points at the file (e.g. "the encoder's `checkpoint`"); every problem is a
    HarnessError naming the file."""
    import pickle

    import torch

    from harness.errors import HarnessError

    if not path.is_file():
        raise HarnessError(f"checkpoint {path} does not exist; set {which} to a weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise HarnessError(f"checkpoint {path}: not a readable safetensors file ({first_line(exc)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise HarnessError(
            f"checkpoint {path}: torch.load(weights_only=True) refused it ({first_line(exc)}). Only tensors and plain "
            "containers are loaded; save the state dict alone, e.g. torch.save(model.state_dict(), path)"
        ) from None
    except Exception as exc:
        raise HarnessError(f"checkpoint {path}: cannot be read as a torch file ({first_line(exc)})") from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
