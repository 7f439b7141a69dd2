"""Plugins for the bad-input tests: registered through registry.yaml's `plugins:` list."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from harness import Encoder, Task, hookimpl
from harness.errors import HarnessError


def _log_call(encoder, ctx) -> None:
    log = os.environ.get("FAKE_CALL_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(f"{encoder.name} {ctx.task.name} {ctx.dataset}\n")


class RaisingTask(Task):
    """Fails on use: param `error` "input" raises a HarnessError naming a file and row,
    "internal" a RuntimeError (a bug in the plugin)."""

    default_datasets = ("one",)

    class Params(Task.Params):
        error: Literal["input", "internal"] = Field("input", description="which kind of failure to raise")

    def run(self, encoder, ctx):
        _log_call(encoder, ctx)
        if self.params.error == "input":
            raise HarnessError(f"{ctx.dataset}.txt: row 3: expected a number, got 'x'; fix the row and rerun")
        raise RuntimeError("the fake task has a bug")


class JunkTask(Task):
    """Returns something that is not a list of records."""

    default_datasets = ("one",)

    def run(self, encoder, ctx):
        return [{"metric": "score", "value": 1.0}]


class ReadAllTask(Task):
    """Opens its dataset and decodes every image of every split; reports the image count."""

    default_datasets = ("data",)

    def run(self, encoder, ctx):
        _log_call(encoder, ctx)
        data = ctx.open_dataset()
        if hasattr(data, "train"):
            splits = {"train": data.train, "test": data.test, **(data.splits or {})}.values()
        else:  # NIGHTS: three image splits per triplet split
            splits = [getattr(t, side) for t in data.splits.values() for side in ("ref", "left", "right")]
        count = sum(len(batch) for split in splits for batch in split.batches(16))
        return [ctx.result("images", count, n=count, headline=True)]


class NonFiniteEncoder(Encoder):
    """Features with a non-finite value (param `value`: "nan", "inf", "-inf") in every third row."""

    class Params(Encoder.Params):
        value: Literal["nan", "inf", "-inf"] = Field("nan", description="the non-finite value written")

    def embed(self, images):
        import torch

        features = torch.ones(len(images), 4)
        features[::3, 1] = float(self.params.value)
        return features


@hookimpl
def register_tasks(register):
    register("raising", RaisingTask)
    register("junk", JunkTask)
    register("read-all", ReadAllTask)


@hookimpl
def register_encoders(register):
    register("non-finite", NonFiniteEncoder)
