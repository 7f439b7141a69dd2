"""White-box encoders: features computed by a fixed formula, no training on real data.

* `rgb`  — downsampled pixels.
* `sift` — dense SIFT descriptors pooled into a bag of visual words. The vocabulary is
  learnt by k-means on descriptors of procedural images (`dead-leaves` by default, a
  fixed sample), so like every other row it never sees the benchmark's real data.
* `psnr`, `ssim` — the NIGHTS white-box baselines. Their `pairwise_distance(a, b)` is the
  negated PSNR / SSIM of two image batches (lower = more similar), equal to
  scikit-image's `peak_signal_noise_ratio` / `structural_similarity` (7x7 uniform window,
  sample covariance, per-channel mean) on uint8 images; `embed` returns the flattened
  downsampled image so that kNN tasks still run.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, model_validator

from harness.errors import HarnessError
from harness.hookspecs import hookimpl
from harness.kinds import Encoder, GeneratorRef

if TYPE_CHECKING:
    import numpy as np
    import torch


def _resize(images: torch.Tensor, size: int, mode: str = "area") -> torch.Tensor:
    """Float images [n, c, H, W] (any range) resized to size x size."""
    import torch.nn.functional as F

    if images.shape[-2:] == (size, size):
        return images
    if mode == "area":
        return F.interpolate(images, size=(size, size), mode="area")
    return F.interpolate(images, size=(size, size), mode=mode, align_corners=False, antialias=True)


class RGBEncoder(Encoder):
    """Downsampled pixels: global features = the image at `size` x `size` (area-averaged),
    patch features = the mean colour of each `patch` x `patch` cell."""

    group = "white-box"
    supports_patches = True

    class Params(Encoder.Params):
        size: int = Field(16, ge=1, description="global features: the image area-downsampled to size x size")
        patch: int = Field(16, ge=1, description="patch features: the mean colour of each patch x patch cell")

    def _pixels(self, images: torch.Tensor, size: int) -> torch.Tensor:
        return _resize(images.float().div(255.0), size)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self._pixels(images, self.params.size)
        return (pixels - 0.5).flatten(1)

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        grid = max(1, images.shape[-1] // self.params.patch)
        return self._pixels(images, grid).permute(0, 2, 3, 1).contiguous()


# ---------------------------------------------------------------------------- SIFT
def dense_sift(gray: torch.Tensor, bin_size: int = 4, step: int = 4) -> torch.Tensor:
    """Dense SIFT descriptors [n, ny, nx, 128] of grey images [n, 1, H, W] (values 0..1).

    Per pixel: gradient (central differences), magnitude split between the two nearest of
    8 orientation bins. Each descriptor covers 4 x 4 cells of `bin_size` pixels; a cell's
    histogram weights pixels bilinearly by their distance to the cell centre (a triangular
    kernel of width 2 * bin_size), and cells are weighted by a Gaussian window of sigma
    = half the descriptor's width, as in Lowe's SIFT. Descriptors lie on a grid of stride
    `step`; each is L2-normalised, clipped at 0.2 and renormalised (flat patches stay 0).
    """
    import torch
    import torch.nn.functional as F

    n, _, height, width = gray.shape
    if min(height, width) < 4 * bin_size + 1:
        raise HarnessError(f"dense SIFT needs images of at least {4 * bin_size + 1} px for bin_size {bin_size}")
    padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    gx = 0.5 * (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2])
    gy = 0.5 * (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1])
    magnitude = torch.sqrt(gx * gx + gy * gy)
    angle = torch.remainder(torch.atan2(gy, gx), 2 * math.pi) / (2 * math.pi / 8)
    low = torch.floor(angle)
    frac = angle - low
    low = low.long() % 8
    maps = torch.zeros(n, 8, height, width, dtype=gray.dtype)
    maps.scatter_add_(1, low, magnitude * (1 - frac))
    maps.scatter_add_(1, (low + 1) % 8, magnitude * frac)
    # bilinear spatial weighting: triangular kernel centred between pixels
    offsets = torch.arange(2 * bin_size, dtype=gray.dtype) - (bin_size - 0.5)
    tri = (1 - offsets.abs() / bin_size).clamp(min=0)
    kernel = (tri[:, None] * tri[None, :]).expand(8, 1, -1, -1)
    cells = F.conv2d(maps, kernel.contiguous(), groups=8)  # cell centred at (y + bin - 0.5, x + bin - 0.5)
    span = 3 * bin_size
    ys = torch.arange(0, cells.shape[-2] - span, step)
    xs = torch.arange(0, cells.shape[-1] - span, step)
    centres = (torch.arange(4, dtype=gray.dtype) - 1.5) * bin_size
    sigma = 2.0 * bin_size
    parts = []
    for i in range(4):
        for j in range(4):
            weight = math.exp(-(float(centres[i]) ** 2 + float(centres[j]) ** 2) / (2 * sigma * sigma))
            block = cells[:, :, ys + i * bin_size][:, :, :, xs + j * bin_size]  # [n, 8, ny, nx]
            parts.append(block * weight)
    desc = torch.stack(parts, dim=-1).permute(0, 2, 3, 4, 1).reshape(n, len(ys), len(xs), 128)
    desc = F.normalize(desc, dim=-1, eps=1e-7).clamp(max=0.2)
    return F.normalize(desc, dim=-1, eps=1e-7)


class SIFTEncoder(Encoder):
    """Dense SIFT bag of visual words; vocabulary by k-means on procedural images.

    Global features: per pyramid cell, the square root of the normalised word histogram
    (Hellinger), concatenated. Patch features: the dense descriptors.
    """

    group = "white-box"
    supports_patches = True

    class Params(Encoder.Params):
        size: int = Field(64, ge=1, description="images are made grey and resized to size x size")
        bin_size: int = Field(4, ge=1, description="side of a SIFT cell in pixels (a descriptor covers 4 x 4 cells)")
        step: int = Field(4, ge=1, description="stride of the dense descriptor grid in pixels")
        words: int = Field(256, ge=1, description="visual words (k-means centres) in the vocabulary")
        pyramid: list[int] = Field([1], min_length=1, description="grid sides of the spatial pyramid ([1]: a plain bag of words)")
        vocab_generator: GeneratorRef = Field(GeneratorRef("dead-leaves"), description="generator instance whose images the vocabulary is learnt on")
        vocab_images: int = Field(256, ge=1, description="images of vocab_generator the vocabulary is learnt on")
        vocab_seed: int = Field(0, ge=0, description="stream of vocab_generator and seed of k-means")

        @model_validator(mode="after")
        def _descriptor_fits(self) -> SIFTEncoder.Params:
            if self.size < 4 * self.bin_size + 1:
                raise ValueError(f"size {self.size} is smaller than one descriptor: at least 4 * bin_size + 1 = {4 * self.bin_size + 1}")
            return self

    def __init__(self, name: str | None = None, /, **params: Any) -> None:
        super().__init__(name, **params)
        self.vocabulary: torch.Tensor | None = None

    def _descriptors(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div(255.0)
        gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        p = self.params
        return dense_sift(_resize(gray, p.size, "bilinear"), p.bin_size, p.step)

    def prepare(self, ctx: Any = None) -> None:
        if self.vocabulary is not None:
            return
        import torch

        from harness.cache import cache_root, cached_arrays

        name = f"{self.key}.npz"
        path = ctx.cache_path("sift", name) if ctx is not None else cache_root() / "sift" / name
        arrays = cached_arrays(path, lambda: {"vocabulary": self._learn_vocabulary(ctx)})
        self.vocabulary = torch.from_numpy(arrays["vocabulary"]).float()

    def _learn_vocabulary(self, ctx: Any) -> np.ndarray:
        import numpy as np
        import torch
        from sklearn.cluster import KMeans

        p = self.params
        generator = self.resolve(p.vocab_generator)
        try:
            chunks = []
            for start in range(0, p.vocab_images, 64):
                batch = generator.sample(p.vocab_seed, min(64, p.vocab_images - start), p.size, start=start)
                chunks.append(self._descriptors(batch).reshape(-1, 128))
        finally:
            generator.close()
        descriptors = torch.cat(chunks).numpy().astype(np.float64)
        rng = np.random.default_rng(p.vocab_seed)
        if len(descriptors) > 50_000:
            descriptors = descriptors[np.sort(rng.choice(len(descriptors), 50_000, replace=False))]
        if len(descriptors) < p.words:
            raise HarnessError(f"encoder {self.name!r}: {len(descriptors)} descriptors are fewer than {p.words} words")
        kmeans = KMeans(n_clusters=p.words, n_init=1, max_iter=100, random_state=p.vocab_seed)
        kmeans.fit(descriptors)
        return kmeans.cluster_centers_.astype(np.float32)

    def _assign(self, desc: torch.Tensor) -> torch.Tensor:
        """Nearest word of each descriptor [..., 128] -> [...]."""
        words = self.vocabulary
        flat = desc.reshape(-1, 128)
        dist = (flat * flat).sum(1, keepdim=True) - 2 * flat @ words.T + (words * words).sum(1)[None]
        return dist.argmin(dim=1).reshape(desc.shape[:-1])

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        if self.vocabulary is None:
            self.prepare()
        feats = []
        for start in range(0, len(images), 256):
            desc = self._descriptors(images[start : start + 256])
            ids = self._assign(desc)  # [n, ny, nx]
            onehot = F.one_hot(ids, self.params.words).permute(0, 3, 1, 2).float()  # [n, k, ny, nx]
            levels = []
            for side in self.params.pyramid:
                hist = F.adaptive_avg_pool2d(onehot, side).flatten(2)  # [n, k, side*side], normalised counts
                levels.append(torch.sqrt(hist.transpose(1, 2)).flatten(1) / math.sqrt(side * side))
            feats.append(torch.cat(levels, dim=1))
        return torch.cat(feats)

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        return self._descriptors(images)


# ---------------------------------------------------------------------------- PSNR / SSIM
class ImageDistance(Encoder):
    """Base of the pixel-distance baselines: `pairwise_distance` on images resized to
    `size` (bicubic, rounded to uint8; none when already that size), `embed` = the image
    area-downsampled to `embed_size`, flattened."""

    group = "white-box"
    distance: ClassVar[str] = ""

    class Params(Encoder.Params):
        size: int | None = Field(224, ge=7, description="images are compared at size x size (bicubic; null: at the inputs' size)")
        embed_size: int = Field(16, ge=1, description="embed: the image area-downsampled to embed_size x embed_size, flattened")

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return (_resize(images.float().div(255.0), self.params.embed_size) - 0.5).flatten(1)

    def _pair(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both batches as float64 0..255 at `size` x `size` (size None: at a's size)."""
        import torch
        import torch.nn.functional as F

        a, b = torch.as_tensor(a), torch.as_tensor(b)
        if len(a) != len(b):
            raise HarnessError(f"{self.distance} distance: batches of {len(a)} and {len(b)} images")
        size = self.params.size
        shape = (size, size) if size else tuple(a.shape[-2:])

        def prep(x: torch.Tensor) -> torch.Tensor:
            x = x.double()
            if tuple(x.shape[-2:]) != shape:
                x = F.interpolate(x, size=shape, mode="bicubic", align_corners=False, antialias=True).round().clamp(0, 255)
            return x

        return prep(a), prep(b)

    def pairwise_distance(self, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
        """Distance between a[i] and b[i] for each i (uint8 [n, 3, H, W] each): float64 [n]."""
        raise NotImplementedError


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """Per-image PSNR of float64 batches, as skimage's peak_signal_noise_ratio."""
    import torch

    mse = ((a - b) ** 2).flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range**2 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 255.0, win: int = 7, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-image mean SSIM of float64 batches [n, c, H, W], as skimage's
    structural_similarity(channel_axis=...) with its defaults (uniform 7x7 window,
    sample covariance, border of (win-1)/2 excluded, mean over channels)."""
    import torch.nn.functional as F

    if min(a.shape[-2:]) < win:
        raise HarnessError(f"SSIM needs images of at least {win} x {win} px")

    def pool(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, win, stride=1)

    cov_norm = win * win / (win * win - 1)
    ux, uy = pool(a), pool(b)
    vx = cov_norm * (pool(a * a) - ux * ux)
    vy = cov_norm * (pool(b * b) - uy * uy)
    vxy = cov_norm * (pool(a * b) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1)


class PSNREncoder(ImageDistance):
    """Negated PSNR as a distance (NIGHTS white-box baseline); embed = downsampled pixels."""

    distance = "psnr"

    def pairwise_distance(self, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
        x, y = self._pair(a, b)
        return (-psnr(x, y)).numpy().astype("float64")


class SSIMEncoder(ImageDistance):
    """Negated SSIM as a distance (NIGHTS white-box baseline); embed = downsampled pixels."""

    distance = "ssim"

    def pairwise_distance(self, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
        x, y = self._pair(a, b)
        out = []
        for start in range(0, len(x), 64):
            out.append(-ssim(x[start : start + 64], y[start : start + 64]))
        import torch

        return torch.cat(out).numpy().astype("float64") if out else torch.zeros(0, dtype=torch.float64).numpy()


@hookimpl
def register_encoders(register: Any) -> None:
    register("rgb", RGBEncoder)
    register("sift", SIFTEncoder)
    register("psnr", PSNREncoder)
    register("ssim", SSIMEncoder)
