"""The device the harness computes on when none is named: the GPU when torch sees one."""

from __future__ import annotations


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
