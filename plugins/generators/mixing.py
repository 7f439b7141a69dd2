"""Generators built on another generator: `mixup`, `kml` and `kml-mixup`.

Each takes `base`, a reference to any generator instance (or plugin), and draws the base
images of its image i from the base stream `derive_seed(<plugin>, seed)` at the indices
k*i .. k*i+k-1 (k base images per output image), so image i depends only on (params,
seed, i) and a batch renders all of its base images in one call.

* `mixup` (Baradad et al. 2022, "Shaders Mixup"): the convex combination of `n` base
  images (default 6) with weights ~ Dirichlet(`alpha`, default 1, i.e. uniform on the
  simplex), drawn from (seed, i). Output = round(sum_k w_k x_k).
* `kml` ("K-Means Leaves"): base images s1, s2, s3, made as the paper's released code
  makes them (`_kml_reference` states that recipe; `_kml` runs it batched, in torch on
  the GPU when one is available, in numpy on the CPU): s1 resized with antialiasing to
  `kmeans_size` (256), a 2-means of its colours with `iterations` (3) assignments (the
  released `Niter`), the blurred, resized and blurred cluster-0 mask, and
  s2 * mask + s3 * (1 - mask) rounded as the released code writes its files.
  `released_jpeg` also passes each image through the JPEG (quality 75) the released
  data files are.
* `kml-mixup` ("Shaders KML Mixup"): the mean of `n` (default 2) stored KML images of the
  base, rounded and (with `released_jpeg`) written as a JPEG again.

`released_kml_image` makes a KML image the way the released research code does, one
image at a time: the reference that `harness bench` times the batched generator against.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from functools import cached_property
from typing import TYPE_CHECKING, Any, Sequence

from pydantic import Field

from harness.device import default_device
from harness.hookspecs import hookimpl
from harness.kinds import Generator, GeneratorRef

from harness_plugins.generators._kml import jpeg_round_trip, kml_blend, stored
from harness_plugins.generators._kml_reference import released_kml_image
from harness_plugins.generators._seeding import check_indices, check_sample_args, derive_seed, rng

if TYPE_CHECKING:
    import torch

BASE = "base images"  # the parts of `time_split`
COMBINE = "combine them"
GPU_WORK = f"{COMBINE} > wait for the GPU"
TO_HOST = f"{COMBINE} > copy to the host"


class _Composite(Generator):
    """A generator over the generator `base` that uses `per_image` base images per output image."""

    class Params(Generator.Params):
        base: GeneratorRef = Field(description="the generator instance (or plugin) whose images are combined")

    @property
    @abstractmethod
    def per_image(self) -> int:
        """Base images per output image."""

    @cached_property
    def base(self) -> Generator:
        return self.resolve(self.params.base)  # type: ignore[return-value]

    def base_seed(self, seed: int) -> int:
        return derive_seed(self.plugin_name, "base", seed)

    def base_images(self, seed: int, n: int, size: int, start: int) -> torch.Tensor:
        """The base images of output images start..start+n-1: [n, per_image, 3, size, size]."""
        return self.base_images_at(seed, range(start, start + n), size)

    @cached_property
    def seconds(self) -> dict[str, float]:
        """Seconds spent so far making base images and combining them, and of the latter
        waiting for a GPU's work and copying its results to the host (`time_split`)."""
        return {BASE: 0.0, COMBINE: 0.0, GPU_WORK: 0.0, TO_HOST: 0.0}

    def to_host(self, images: torch.Tensor) -> torch.Tensor:
        """`images` in host memory. From a CUDA device: once its work is done, copied
        into page-locked memory, which the GPU writes at the bus's speed, where pageable
        memory goes through the driver's small staging buffers (the block comes from
        torch's cache of page-locked memory, so a call of the same size reuses it)."""
        import torch

        if images.device.type != "cuda":
            return images.cpu()
        start = time.perf_counter()
        torch.cuda.synchronize(images.device)
        done = time.perf_counter()
        host = torch.empty(images.shape, dtype=images.dtype, pin_memory=True).copy_(images)
        self.seconds[GPU_WORK] += done - start
        self.seconds[TO_HOST] += time.perf_counter() - done
        return host

    def base_images_at(self, seed: int, indices: Sequence[int], size: int, device: str = "cpu") -> torch.Tensor:
        """The base images of output images `indices` (output image i uses base images
        i*k .. i*k+k-1): [len(indices), per_image, 3, size, size] on `device`, in one base call."""
        k = self.per_image
        start = time.perf_counter()
        x = self.base.sample_on(self.base_seed(seed), [i * k + j for i in indices for j in range(k)], size, device)
        self.seconds[BASE] += time.perf_counter() - start
        return x.view(len(indices), k, *x.shape[1:])

    def sample(self, seed: int, n: int, size: int, start: int = 0) -> torch.Tensor:
        seed, n, size, start = check_sample_args(seed, n, size, start)
        return self.sample_at(seed, range(start, start + n), size)

    def sample_at(self, seed: int, indices: Sequence[int], size: int) -> torch.Tensor:
        import torch

        seed, indices, size = check_indices(seed, indices, size)
        if not indices:
            return torch.zeros((0, 3, size, size), dtype=torch.uint8)
        start, base_before = time.perf_counter(), self.seconds[BASE]
        images = self.combine(seed, indices, size)
        self.seconds[COMBINE] += time.perf_counter() - start - (self.seconds[BASE] - base_before)
        return images

    def time_split(self) -> dict[str, float]:
        parts = dict(self.seconds)
        parts.update({f"{BASE} > {part}": spent for part, spent in self.base.time_split().items()})
        return parts

    @abstractmethod
    def combine(self, seed: int, indices: list[int], size: int) -> torch.Tensor:
        """Output images `indices` (validated, at least one) from their base images."""

    def close(self) -> None:
        self.base.close()


class Mixup(_Composite):
    """Convex combinations of `n` base images with Dirichlet(`alpha`) weights."""

    version = 1

    class Params(_Composite.Params):
        n: int = Field(6, ge=1, description="base images mixed into each image")
        alpha: float = Field(1.0, ge=1e-6, le=1e6, description="Dirichlet concentration of the mixing weights (1: uniform on the simplex)")

    @property
    def per_image(self) -> int:
        return self.params.n

    def weights(self, seed: int, indices: list[int]) -> Any:
        """Mixing weights [len(indices), n] (float64, rows sum to 1)."""
        import numpy as np

        n, alpha = self.params.n, self.params.alpha
        return np.stack([rng("mixup", seed, i).dirichlet([alpha] * n) for i in indices]).reshape(len(indices), n)

    def combine(self, seed: int, indices: list[int], size: int) -> torch.Tensor:
        import torch

        x = self.base_images_at(seed, indices, size)
        w = torch.from_numpy(self.weights(seed, indices)).to(torch.float32)
        mixed = torch.einsum("nk,nkchw->nchw", w, x.to(torch.float32))
        return mixed.round_().clamp_(0, 255).to(torch.uint8)


def _released_kml_job(job: tuple[list[bytes], int, int, int, bool, bool]) -> int:
    released_kml_image(*job)
    return 1


class KML(_Composite):
    """K-Means Leaves: s2 and s3 composited through the blurred 2-means mask of s1."""

    version = 1
    writes_mean = False  # KML Mixup writes the mean of the stored KML images again

    class Params(_Composite.Params):
        kmeans_size: int = Field(256, ge=2, description="side to which s1 is resized before its 2-means (released: 256)")
        iterations: int = Field(
            3, ge=1, description="assignments of the 2-means, with a centroid update between two (the released Fast2Means' Niter, 3)"
        )
        released_jpeg: bool = Field(
            False, description="pass each written image through a JPEG at quality 75, as the released data files hold it"
        )
        device: str | None = Field(
            None, exclude=True, description="where the 2-means runs (cpu, cuda); default cuda when available; not part of the key"
        )

    @property
    def mixed(self) -> int:
        """KML images averaged into each output image."""
        return 1

    @property
    def per_image(self) -> int:
        return 3 * self.mixed

    def reference_rate(self, seed: int, n: int, size: int) -> tuple[str, float]:
        """The released design: base images pre-rendered as JPEGs, KML per image on the CPU,
        one image per data-loader worker at a time (`released_kml_image`), a worker per core."""
        from harness.bench.timing import encode_jpegs, parallel_rate

        k, p = self.per_image, self.params
        blobs = encode_jpegs(self.base_images(seed, n, size, 0).reshape(n * k, 3, size, size))
        jobs = [(blobs[i * k:(i + 1) * k], size, p.kmeans_size, p.iterations, self.writes_mean, p.released_jpeg) for i in range(n)]
        return "decode pre-rendered base JPEGs, per-image CPU KML (numpy)", parallel_rate(_released_kml_job, jobs)

    def combine(self, seed: int, indices: list[int], size: int) -> torch.Tensor:
        import torch

        n, p = len(indices), self.params
        device = torch.device(p.device or default_device())
        x = self.base_images_at(seed, indices, size, str(device)).view(n, self.mixed, 3, 3, size, size)
        store = jpeg_round_trip if p.released_jpeg else None
        triples = x.numpy() if device.type == "cpu" else x
        images = stored(kml_blend(triples, size, p.kmeans_size, p.iterations, store))
        if self.writes_mean and store is not None:
            images = store(images)
        return self.to_host(torch.as_tensor(images))


class KMLMixup(KML):
    """The mean of `n` KML images of the base."""

    version = 1
    writes_mean = True

    class Params(KML.Params):
        n: int = Field(2, ge=1, description="KML images averaged into each image")

    @property
    def mixed(self) -> int:
        return self.params.n


@hookimpl
def register_generators(register: Any) -> None:
    register("mixup", Mixup)
    register("kml", KML)
    register("kml-mixup", KMLMixup)
