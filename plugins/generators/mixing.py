"""Generators built on another generator: `mixup`, `kml` and `kml-mixup`.

Each takes `base`, a reference to any generator instance (or plugin), and draws the base
images of its image i from the base stream `derive_seed(<plugin>, seed)` at the indices
k*i .. k*i+k-1 (k base images per output image), so image i depends only on (params,
seed, i) and a batch renders all of its base images in one call.

* `mixup` (Baradad et al. 2022, "Shaders Mixup"): the convex combination of `n` base
  images (default 6) with weights ~ Dirichlet(`alpha`, default 1, i.e. uniform on the
  simplex), drawn from (seed, i). Output = round(sum_k w_k x_k).
* `kml` ("K-Means Leaves"): base images s1, s2, s3. s1 is resized (bilinear) to
  `kmeans_size` (256) and quantised to uint8; 2-means on its RGB pixels, centroids
  initialised at the lexicographically first and last distinct colours (what
  `numpy.unique(pixels, axis=0)` puts first and last), 3 Lloyd iterations (assign, then
  update; a cluster that loses all its pixels keeps its centroid), then a final
  assignment to the last centroids (as scikit-learn's KMeans reports labels). mask =
  (cluster == 0) as float, 3x3 box blur, bilinear resize to the output size, 3x3 box
  blur again (blurs reflect at the border, like OpenCV's default); output =
  round(s2 * mask + s3 * (1 - mask)). The 2-means runs batched: in torch on the GPU
  when one is available, in numpy on the CPU (`_kml.two_means` gives its arithmetic).
* `kml-mixup` ("Shaders KML Mixup"): the mean of `n` (default 2) KML images of the base.

`released_kml_image` makes a KML image the way the released research code does, one
image at a time: the reference that `harness bench` times the batched generator against.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from functools import cached_property
from typing import TYPE_CHECKING, Any

from pydantic import Field

from harness.hookspecs import hookimpl
from harness.kinds import Generator, GeneratorRef

from harness_plugins.generators._kml import kml_blend
from harness_plugins.generators._seeding import check_sample_args, derive_seed, rng

if TYPE_CHECKING:
    import torch


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
        k = self.per_image
        x = self.base.sample(self.base_seed(seed), n * k, size, start=start * k)
        return x.view(n, k, *x.shape[1:])

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

    def sample(self, seed: int, n: int, size: int, start: int = 0) -> torch.Tensor:
        import torch

        seed, n, size, start = check_sample_args(seed, n, size, start)
        if n == 0:
            return torch.zeros((0, 3, size, size), dtype=torch.uint8)
        x = self.base_images(seed, n, size, start)
        w = torch.from_numpy(self.weights(seed, list(range(start, start + n)))).to(torch.float32)
        mixed = torch.einsum("nk,nkchw->nchw", w, x.to(torch.float32))
        return mixed.round_().clamp_(0, 255).to(torch.uint8)


def released_kml_image(blobs: list[bytes], size: int, kmeans_size: int = 256, iterations: int = 3) -> Any:
    """One KML (or KML Mixup) image made the way the released research code makes it,
    the reference of `harness bench`: each base image decoded from a pre-rendered image
    file (`blobs`: s1, s2, s3 per KML image), then per KML image numpy.unique for the
    initial centroids, scikit-learn's KMeans on one thread (as in a data-loader worker),
    reflected 3x3 blurs (scipy) and non-antialiased bilinear resizes (OpenCV's
    INTER_LINEAR, computed by torch). uint8 [size, size, 3]."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from scipy.ndimage import uniform_filter
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    from harness.bench.timing import decode_image

    def resize(x: Any, to: int) -> Any:  # [h, w, c] float32 -> [to, to, c]
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
        return F.interpolate(t, size=(to, to), mode="bilinear", align_corners=False)[0].numpy().transpose(1, 2, 0)

    made = []
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a single-colour s1: the mask is empty
        for i in range(0, len(blobs), 3):
            s1, s2, s3 = (np.asarray(decode_image(blob), np.float32) for blob in blobs[i:i + 3])
            pixels = np.clip(np.round(resize(s1, kmeans_size)), 0, 255).astype(np.uint8).reshape(-1, 3)
            distinct = np.unique(pixels, axis=0)
            init = distinct[[0, -1]].astype(np.float64)
            kmeans = KMeans(2, init=init, n_init=1, max_iter=max(iterations, 1)).fit(pixels.astype(np.float64))
            mask = (kmeans.labels_ == 0).astype(np.float32).reshape(kmeans_size, kmeans_size, 1)
            mask = resize(uniform_filter(mask, (3, 3, 1), mode="mirror"), size)
            mask = uniform_filter(mask, (3, 3, 1), mode="mirror")
            made.append(s2 * mask + s3 * (1 - mask))
    return np.clip(np.round(np.mean(made, axis=0)), 0, 255).astype(np.uint8)


def _released_kml_job(job: tuple[list[bytes], int, int, int]) -> int:
    released_kml_image(*job)
    return 1


class KML(_Composite):
    """K-Means Leaves: s2 and s3 composited through the blurred 2-means mask of s1."""

    version = 1

    class Params(_Composite.Params):
        kmeans_size: int = Field(256, ge=2, description="side to which s1 is resized before its 2-means")
        iterations: int = Field(3, ge=0, description="Lloyd iterations of the 2-means")
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

        k = self.per_image
        blobs = encode_jpegs(self.base_images(seed, n, size, 0).reshape(n * k, 3, size, size))
        jobs = [(blobs[i * k:(i + 1) * k], size, self.params.kmeans_size, self.params.iterations) for i in range(n)]
        return "decode pre-rendered base JPEGs, per-image CPU KML (scikit-learn)", parallel_rate(_released_kml_job, jobs)

    def sample(self, seed: int, n: int, size: int, start: int = 0) -> torch.Tensor:
        import numpy as np
        import torch

        seed, n, size, start = check_sample_args(seed, n, size, start)
        if n == 0:
            return torch.zeros((0, 3, size, size), dtype=torch.uint8)
        x = self.base_images(seed, n, size, start).view(n, self.mixed, 3, 3, size, size)
        kmeans_size, iterations = self.params.kmeans_size, self.params.iterations
        device = torch.device(self.params.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cpu":
            out = kml_blend(x.numpy(), size, kmeans_size, iterations)
            return torch.from_numpy(np.clip(np.round(out), 0, 255).astype(np.uint8))
        out = kml_blend(x.to(device), size, kmeans_size, iterations)
        return out.round_().clamp_(0, 255).to(torch.uint8).cpu()


class KMLMixup(KML):
    """The mean of `n` KML images of the base."""

    version = 1

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
