"""The visual memory of a classification dataset (the train split's embeddings) and the
parameters of the tasks that query it with every k and both votes (knn, medmnist)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field, PositiveInt

from harness.errors import HarnessError
from harness.kinds import TaskParams


class NeighbourVoteParams(TaskParams):
    """Every k in `ks` is reported with both votes; the headline is the weighted vote at
    `headline_k`, which is reported even when `ks` leaves it out. Subclasses give `ks` a
    default."""

    ks: list[PositiveInt] = Field(min_length=1, description="numbers of neighbours k to report")
    temperature: float = Field(0.07, gt=0, description="T of the weighted vote: a neighbour counts exp(similarity / T)")
    headline_k: PositiveInt = Field(20, description="k of the headline number (weighted vote); added to ks when absent")

    @property
    def reported_ks(self) -> list[int]:
        """`ks` and `headline_k`, ascending, each once: the headline number always exists."""
        return sorted({*self.ks, self.headline_k})


def train_memory(ctx: Any, why_single_label: str) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    """(dataset, memory of the train split, test features, test labels) for `ctx.dataset`.

    Multi-label datasets are refused with `why_single_label` in the message."""
    from harness.memory import VisualMemory

    data = ctx.open_dataset()
    if np.asarray(data.train.labels).ndim != 1:
        raise HarnessError(f"dataset {ctx.dataset!r} is multi-label; {why_single_label}")
    for split in (data.train, data.test):
        if len(split.labels) and int(np.min(split.labels)) < 0:
            raise HarnessError(
                f"dataset {ctx.dataset!r} is unlabelled (labels: false, or label -1); this task needs a class per image"
            )
    train = ctx.embed_split(data.train, "train")
    test = ctx.embed_split(data.test, "test")
    memory = VisualMemory(train.shape[1], device=ctx.device)
    memory.add(train, data.train.labels)
    return data, memory, test, np.asarray(data.test.labels)
