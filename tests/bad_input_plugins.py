"""Plugins for the bad-input tests: registered through registry.yaml's `plugins:` list."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from harness import Encoder, Generator, Task, hookimpl
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


class ExitingTask(Task):
    """Calls sys.exit, as a script turned into a plugin might."""

    default_datasets = ("one",)

    def run(self, encoder, ctx):
        import sys

        sys.exit("bye")


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


class MisshapenEncoder(Encoder):
    """Features that break `embed`'s contract (param `fault`): a row short, one dimension,
    numpy instead of torch, or a width that changes between batches."""

    class Params(Encoder.Params):
        fault: Literal["row-short", "flat", "numpy", "ragged"] = Field("row-short", description="how the output is wrong")

    def embed(self, images):
        import torch

        n = len(images)
        if self.params.fault == "row-short":
            return torch.ones(n - 1, 4)
        if self.params.fault == "flat":
            return torch.ones(n)
        if self.params.fault == "numpy":
            return torch.ones(n, 4).numpy()
        return torch.ones(n, 4 + (n % 2))


class MisshapenGenerator(Generator):
    """Images that break `sample`'s contract (param `fault`): float, one image short,
    one pixel too large, channels last, or numpy instead of torch."""

    class Params(Generator.Params):
        fault: Literal["float", "short", "larger", "channels-last", "numpy"] = Field("float", description="how the output is wrong")

    def sample(self, seed, n, size, start=0):
        import torch

        images = torch.zeros(n, 3, size, size, dtype=torch.uint8)
        return {
            "float": lambda: images.float(),
            "short": lambda: images[1:],
            "larger": lambda: torch.zeros(n, 3, size + 1, size + 1, dtype=torch.uint8),
            "channels-last": lambda: images.permute(0, 2, 3, 1),
            "numpy": lambda: images.numpy(),
        }[self.params.fault]()


@hookimpl
def register_generators(register):
    register("misshapen", MisshapenGenerator)


@hookimpl
def register_tasks(register):
    register("raising", RaisingTask)
    register("junk", JunkTask)
    register("exiting", ExitingTask)
    register("read-all", ReadAllTask)


@hookimpl
def register_encoders(register):
    register("non-finite", NonFiniteEncoder)
    register("misshapen", MisshapenEncoder)
