"""The device the harness computes on when none is named: the GPU when torch sees one
that this process can use."""

from __future__ import annotations


def cuda_usable() -> bool:
    """Whether this process can compute on a CUDA GPU. A process forked after its parent
    initialised CUDA (a DataLoader worker of a GPU training run) cannot, although torch
    still reports the GPU as available: it computes on the CPU instead."""
    import torch

    return torch.cuda.is_available() and not torch.cuda._is_in_bad_fork()


def default_device() -> str:
    return "cuda" if cuda_usable() else "cpu"
