"""What the encoder plugins share: the `precision` parameter, forward passes in
batches that shrink when the GPU runs out of memory, with host images moved to the GPU
a batch ahead, and the digest of a weights file (part of an encoder's key)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable

from pydantic import Field

from harness.device import Precision

if TYPE_CHECKING:
    import torch

PrecisionParam = Annotated[
    Precision,
    Field(description=(
        "arithmetic of the forward pass: float32 (as the released evaluation extracts features), or bfloat16 "
        "autocast (faster where the hardware has bfloat16 units, as recent GPUs do; it moves the values of "
        "features that point almost the same way, such as a random init's)"
    )),
]


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


class Stager:
    """How `in_batches` hands batches to its function: `send` starts a batch on its way,
    `receive` returns it ready. This one hands them over as they are."""

    def send(self, batch: torch.Tensor) -> Any:
        return batch

    def receive(self, sent: Any) -> torch.Tensor:
        return sent


class CudaStager(Stager):
    """Host batches to a CUDA device: copied into page-locked memory (from torch's cache
    of it, its pages mapped already), then to the device on a stream of its own, so that
    the next batch travels while the current one computes; the computing stream waits
    for a batch's copy before using it. Copied from pageable memory on the computing
    stream instead, each batch would leave the GPU idle for the length of its copy."""

    def __init__(self, device: str) -> None:
        import torch

        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device)

    def send(self, batch: torch.Tensor) -> Any:
        import torch

        pinned = torch.empty(batch.shape, dtype=batch.dtype, pin_memory=True).copy_(batch)
        with torch.cuda.stream(self.stream):
            moved = pinned.to(self.device, non_blocking=True)
        return moved, self.stream.record_event()

    def receive(self, sent: Any) -> torch.Tensor:
        import torch

        moved, copied = sent
        computing = torch.cuda.current_stream(self.device)
        computing.wait_event(copied)
        moved.record_stream(computing)  # its memory is not reused before the computing stream is done with it
        return moved


def in_batches(
    images: torch.Tensor, fn: Callable[[torch.Tensor], Any], fixed: int | None, automatic: int, device: str = "cpu",
) -> tuple[torch.Tensor, int]:
    """fn over `images` in batches, outputs concatenated on the CPU, and the batch size
    used last. A `fixed` batch size is kept; the `automatic` one is halved and the batch
    retried when the GPU runs out of memory. Host images bound for a CUDA `device` go
    there a batch ahead (`CudaStager`): the next batch is sent before the current one's
    output is fetched."""
    import torch

    stager = CudaStager(device) if str(device).startswith("cuda") and images.device.type == "cpu" else Stager()
    size = fixed or automatic
    out: list[torch.Tensor] = []
    i, ahead = 0, None  # ahead: (start, stop, the batch sent)
    while i < len(images):
        stop = min(i + size, len(images))
        try:
            sent = ahead[2] if ahead is not None and ahead[:2] == (i, stop) else stager.send(images[i:stop])
            ahead = None
            result = fn(stager.receive(sent))
            if stop < len(images):
                following = min(stop + size, len(images))
                ahead = (stop, following, stager.send(images[stop:following]))
            out.append(result.cpu())
            i = stop
        except torch.cuda.OutOfMemoryError:
            ahead = None
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
