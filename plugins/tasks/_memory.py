"""The visual memory of a classification dataset: the train split's embeddings."""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.errors import HarnessError


def train_memory(ctx: Any, why_single_label: str) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    """(dataset, memory of the train split, test features, test labels) for `ctx.dataset`.

    Multi-label datasets are refused with `why_single_label` in the message."""
    from harness.memory import VisualMemory

    data = ctx.open_dataset()
    if np.asarray(data.train.labels).ndim != 1:
        raise HarnessError(f"dataset {ctx.dataset!r} is multi-label; {why_single_label}")
    train = ctx.embed_split(data.train, "train")
    test = ctx.embed_split(data.test, "test")
    memory = VisualMemory(train.shape[1], device=ctx.device)
    memory.add(train, data.train.labels)
    return data, memory, test, np.asarray(data.test.labels)
