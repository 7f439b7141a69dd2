"""Plugins used by the tests: registered through registry.yaml's `plugins:` list."""

from __future__ import annotations

import os
import time
import warnings

from pydantic import Field

from harness import Encoder, Generator, Task, hookimpl
from harness.errors import HarnessError


class SleepyTask(Task):
    """Sleeps, logs the call, and reports a value fixed by the dataset name; fails on the
    dataset that FAKE_FAIL_DATASET names."""

    default_datasets = ("a", "b", "c")
    builds_own_data = True

    class Params(Task.Params):
        seconds: float = Field(0.0, ge=0, description="how long each cell sleeps")

    def run(self, encoder, ctx):
        log = os.environ.get("FAKE_CALL_LOG")
        if log:
            with open(log, "a") as handle:
                handle.write(f"{encoder.name} {ctx.dataset}\n")
        time.sleep(self.params.seconds)
        if os.environ.get("FAKE_FAIL_DATASET") == ctx.dataset:
            raise HarnessError(f"dataset {ctx.dataset!r} failed on purpose")
        value = float(sum(map(ord, ctx.dataset)) % 97)
        return [ctx.result("score", value, n=1, headline=True)]


class ExplodingTask(Task):
    """Raises on the dataset named 'boom', works on the others."""

    default_datasets = ("fine", "boom")

    def run(self, encoder, ctx):
        if ctx.dataset == "boom":
            raise RuntimeError("the task exploded on purpose")
        return [ctx.result("score", 1.0, n=1, headline=True)]


class NeedsDataTask(Task):
    """Opens its dataset (so a missing root becomes a skipped cell)."""

    default_datasets = ("missing-data",)

    def run(self, encoder, ctx):
        ctx.open_dataset()
        return [ctx.result("score", 1.0, headline=True)]


class ConstantEncoder(Encoder):
    """Every image maps to the same feature vector."""

    class Params(Encoder.Params):
        variant: int = Field(1, description="changes the key, not the features")

    def embed(self, images):
        import torch

        return torch.ones(len(images), 4)


class SleepyGenerator(Generator):
    """Black images, after a sleep per call (and a warning, given `warns`)."""

    class Params(Generator.Params):
        seconds: float = Field(0.0, ge=0, description="how long each call sleeps")
        warns: str = Field("", description="a warning each call gives")

    def sample(self, seed, n, size, start=0):
        import torch

        if self.params.warns:
            warnings.warn(self.params.warns, RuntimeWarning, stacklevel=2)
        time.sleep(self.params.seconds)
        return torch.zeros(n, 3, size, size, dtype=torch.uint8)


@hookimpl
def register_tasks(register):
    register("sleepy", SleepyTask)
    register("exploding", ExplodingTask)
    register("needs-data", NeedsDataTask)


@hookimpl
def register_encoders(register):
    register("constant", ConstantEncoder)


@hookimpl
def register_generators(register):
    register("sleepy-generator", SleepyGenerator)
