"""The device the harness computes on when none is named (the GPU when torch sees one
that this process can use), and the arithmetic of a forward pass there."""

from __future__ import annotations

import contextlib
from typing import Iterator, Literal

# The arithmetic of an encoder's forward pass: what `Encoder.precision` returns.
Precision = Literal["float32", "bfloat16"]


def cuda_usable() -> bool:
    """Whether this process can compute on a CUDA GPU. A process forked after its parent
    initialised CUDA (a DataLoader worker of a GPU training run) cannot, although torch
    still reports the GPU as available: it computes on the CPU instead."""
    import torch

    return torch.cuda.is_available() and not torch.cuda._is_in_bad_fork()


def default_device() -> str:
    return "cuda" if cuda_usable() else "cpu"


@contextlib.contextmanager
def forward_precision(device: str, precision: Precision) -> Iterator[None]:
    """Forward passes on `device` in `precision`: `bfloat16` autocasts to bfloat16 on the
    device's type (the CPU's included); `float32` computes in float32, on CUDA without
    TF32, which keeps 10 bits of mantissa and which torch allows by default in cuDNN's
    convolutions (a ViT's patch embedding). The flags are restored on exit."""
    import torch

    device_type = torch.device(device).type
    if precision == "bfloat16":
        with torch.autocast(device_type, dtype=torch.bfloat16):
            yield
        return
    if device_type != "cuda":
        yield
        return
    convolutions, products = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = convolutions
        torch.set_float32_matmul_precision(products)
