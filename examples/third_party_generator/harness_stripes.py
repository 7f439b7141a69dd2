"""Random oriented stripes: a complete third-party generator plugin in one module."""

from __future__ import annotations

import numpy as np

from harness import Generator, hookimpl


class Stripes(Generator):
    """Sinusoidal stripes with a random angle, frequency and two random colours."""

    def __init__(self, name: str | None = None, max_frequency: float = 12.0) -> None:
        super().__init__(name, max_frequency=max_frequency)
        self.max_frequency = max_frequency

    def sample(self, seed: int, n: int, size: int, start: int = 0):
        import torch

        ys, xs = np.mgrid[0:size, 0:size] / size
        images = np.empty((n, 3, size, size), np.uint8)
        for i in range(n):
            rng = np.random.default_rng([seed, start + i])  # image i depends only on (seed, i)
            angle = rng.uniform(0, np.pi)
            frequency = rng.uniform(1, self.max_frequency)
            colours = rng.uniform(0, 255, size=(2, 3))
            wave = 0.5 + 0.5 * np.sin(2 * np.pi * frequency * (xs * np.cos(angle) + ys * np.sin(angle)))
            mixed = wave[..., None] * colours[0] + (1 - wave[..., None]) * colours[1]
            images[i] = np.rint(mixed).astype(np.uint8).transpose(2, 0, 1)
        return torch.from_numpy(images)


@hookimpl
def register_generators(register):
    register("stripes", Stripes)
