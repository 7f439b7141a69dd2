"""Random oriented stripes: a complete third-party generator plugin in one module."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from harness.hookspecs import hookimpl
from harness.kinds import Generator


class Stripes(Generator):
    """Sinusoidal stripes with a random angle, frequency and two random colours."""

    class Params(Generator.Params):
        max_frequency: float = Field(12.0, ge=1.0, description="highest number of stripe periods across the image")

    def sample(self, seed: int, n: int, size: int, start: int = 0):
        import torch

        ys, xs = np.mgrid[0:size, 0:size] / size
        images = np.empty((n, 3, size, size), np.uint8)
        for i in range(n):
            rng = np.random.default_rng([seed, start + i])  # image i depends only on (seed, i)
            angle = rng.uniform(0, np.pi)
            frequency = rng.uniform(1, self.params.max_frequency)
            colours = rng.uniform(0, 255, size=(2, 3))
            wave = 0.5 + 0.5 * np.sin(2 * np.pi * frequency * (xs * np.cos(angle) + ys * np.sin(angle)))
            mixed = wave[..., None] * colours[0] + (1 - wave[..., None]) * colours[1]
            images[i] = np.rint(mixed).astype(np.uint8).transpose(2, 0, 1)
        return torch.from_numpy(images)


@hookimpl
def register_generators(register):
    register("stripes", Stripes)
