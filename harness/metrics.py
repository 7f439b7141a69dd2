"""Metrics with a published definition, kept outside the visual memory (like faiss' contrib)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np


def two_afc(d0: object, d1: object, p: object) -> float:
    """NIGHTS two-alternative forced choice score.

    d0, d1: distances from the reference to the left and right distortion; p: fraction of
    humans who chose the right one. Per triplet the score is
    (d0 < d1) * (1 - p) + (d1 < d0) * p + 0.5 * (d0 == d1); returned is the mean.
    """
    d0, d1, p = (np.asarray(x, dtype=np.float64).reshape(-1) for x in (d0, d1, p))
    if not (len(d0) == len(d1) == len(p)):
        raise ValueError(f"two_afc: d0, d1 and p must have the same length, got {len(d0)}, {len(d1)}, {len(p)}")
    if len(d0) == 0:
        raise ValueError("two_afc: no triplets")
    scores = (d0 < d1) * (1.0 - p) + (d1 < d0) * p + 0.5 * (d0 == d1)
    return float(scores.mean())


# ------------------------------------------------------------------ segmentation R^2
SEGMENTATION_SIZE = 112
"""Side of the square grid the zero-shot segmentation R^2 is computed on (the paper's)."""

_MEANS = ("scalar", "per_component")
_INTERPOLATION_CACHE: dict[tuple[int, int, str], object] = {}
_DIRECT_ABOVE = 2048  # grids with more tokens than this are upsampled before the PCA


def _interpolation_matrix(n: int, size: int, device: str = "cpu"):  # -> torch.Tensor [size, n]
    """The linear map of a bilinear resize (half-pixel centres, antialiased when
    shrinking, as torchvision's Resize) of n samples to `size`, as a matrix."""
    import torch
    import torch.nn.functional as F

    key = (n, size, str(device))
    if key not in _INTERPOLATION_CACHE:
        # torch's antialiased kernel mishandles a width-1 input, so the basis is 2 wide
        basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, n, 1).expand(n, 1, n, 2).contiguous()
        out = F.interpolate(basis, size=(size, 2), mode="bilinear", align_corners=False, antialias=True)
        _INTERPOLATION_CACHE[key] = out[:, 0, :, 0].T.contiguous().to(device)
    return _INTERPOLATION_CACHE[key]


def _as_float64(x: object):  # -> torch.Tensor
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64)
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


@contextmanager
def _single_threaded(device: str) -> Iterator[None]:
    """Per-image work on small matrices runs fastest on one CPU thread: more threads
    only add synchronisation (badly so on a busy machine)."""
    import torch

    if not str(device).startswith("cpu"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _pca_map(features, size: int, components: int):  # -> torch.Tensor [size * size, k]
    """One image's patch features [h, w, d] -> its per-image PCA at size x size.

    The features are bilinearly resized to size x size, a PCA is fit on those
    size * size tokens, the tokens are projected on the first `components` principal
    axes and each projection is min-max normalised to [0, 1] over the image. Signs
    follow scikit-learn (>= 1.5): each axis' largest-magnitude loading is positive.
    Axes without variance (rank-deficient features, e.g. grey pixels) are left out,
    so k <= components; k = 0 for constant features.
    """
    import torch

    h, w, d = features.shape
    tokens = features.reshape(h * w, d)
    ay, ax = _interpolation_matrix(h, size, features.device), _interpolation_matrix(w, size, features.device)
    if h * w <= _DIRECT_ABOVE:
        # The resize is linear (Z = W X, rows of W summing to 1), so the scatter matrix
        # of the size*size resized tokens is Xc^T (W^T W) Xc with W^T W = kron(Ay^T Ay,
        # Ax^T Ax): the same PCA without materialising the resized tokens.
        weights = torch.kron(ay.sum(0), ax.sum(0)) / (size * size)
        centred = tokens - weights @ tokens
        gram = torch.kron(ay.T @ ay, ax.T @ ax)
        scatter = centred.T @ (gram @ centred)
    else:
        resized = torch.einsum("yh,hwd,xw->yxd", ay, features, ax).reshape(size * size, d)
        centred = tokens - resized.mean(0)
        resized = resized - resized.mean(0)
        scatter = resized.T @ resized
    scatter = 0.5 * (scatter + scatter.T)
    values, vectors = torch.linalg.eigh(scatter)
    values, vectors = values.flip(0), vectors.flip(1)
    top = float(values[0]) if len(values) else 0.0
    keep = [j for j in range(min(components, d)) if top > 0 and float(values[j]) > 1e-10 * top]
    if not keep:
        return torch.zeros(size * size, 0, dtype=torch.float64, device=features.device)
    axes = vectors[:, keep]
    pivot = axes.abs().argmax(dim=0)
    axes = axes * torch.sign(axes[pivot, torch.arange(axes.shape[1], device=axes.device)])
    projected = (centred @ axes).reshape(h, w, -1)
    projected = torch.einsum("yh,hwk,xw->yxk", ay, projected, ax).reshape(size * size, -1)
    low, high = projected.min(0).values, projected.max(0).values
    return (projected - low) / (high - low)


def _label_grid(label_map, size: int):  # -> torch.Tensor [size, size] int64
    """A label map [H, W] nearest-resized to size x size exactly as OpenCV's
    INTER_NEAREST (`cv2.resize`) in the released code: output pixel i takes source row
    min(floor(i * scale), H - 1) with scale = 1 / (size / H) in double precision. That is
    not always floor(i * H / size) in exact arithmetic (e.g. H = 400, size = 224)."""
    import torch

    labels = label_map if isinstance(label_map, torch.Tensor) else torch.as_tensor(np.asarray(label_map))
    labels = labels.to("cpu", torch.int64)
    if labels.ndim != 2:
        raise ValueError(f"segmentation_r2: a label map must be [H, W], got shape {list(labels.shape)}")
    height, width = labels.shape
    return labels[_nearest_sources(height, size)][:, _nearest_sources(width, size)]


def _nearest_sources(source: int, size: int):  # -> torch.Tensor [size] int64
    """The source index of each of `size` output pixels under OpenCV's INTER_NEAREST:
    cv::resize sets inv_scale = (double)size / source, resizeNN takes scale = 1. / inv_scale
    and source index min(cvFloor(i * scale), source - 1)."""
    import torch

    scale = 1.0 / (float(size) / float(source))
    index = np.minimum(np.floor(np.arange(size, dtype=np.float64) * scale).astype(np.int64), source - 1)
    return torch.from_numpy(index)


def _inertia(points, labels, mean: str) -> float:
    """Within-segment sum of squares over the total sum of squares of points [F, k]."""
    import torch

    if points.shape[0] == 0 or points.shape[1] == 0:
        return float("nan")
    _, segment = torch.unique(labels, return_inverse=True)
    count = int(segment.max()) + 1
    sums = torch.zeros(count, points.shape[1], dtype=points.dtype, device=points.device).index_add_(0, segment, points)
    sizes = torch.bincount(segment, minlength=count).to(points.dtype)
    centroids = sums / sizes[:, None]
    within = float(((points - centroids[segment]) ** 2).sum())
    centre = points.mean() if mean == "scalar" else points.mean(0)
    total = float(((points - centre) ** 2).sum())
    return within / total if total > 0 else float("nan")


def _per_image(patch_features: object, label_map: object) -> tuple[list, list]:
    import torch

    if isinstance(patch_features, (list, tuple)):
        features = [_as_float64(f) for f in patch_features]
    else:
        stacked = _as_float64(patch_features)
        if stacked.ndim == 3:
            stacked = stacked[None]
        if stacked.ndim != 4:
            raise ValueError(f"segmentation_r2: patch features must be [h, w, d] or [n, h, w, d], got {list(stacked.shape)}")
        features = list(stacked)
    if label_map is None:
        labels = [None] * len(features)
    elif isinstance(label_map, (list, tuple)):
        labels = list(label_map)
    else:
        array = label_map.cpu().numpy() if isinstance(label_map, torch.Tensor) else np.asarray(label_map)
        labels = [array] if array.ndim == 2 else list(array)
    if len(features) != len(labels):
        raise ValueError(f"segmentation_r2: {len(features)} feature maps but {len(labels)} label maps")
    for f in features:
        if f.ndim != 3:
            raise ValueError(f"segmentation_r2: patch features must be [h, w, d] per image, got {list(f.shape)}")
    return features, labels


def segmentation_inertia(
    patch_features: object,
    label_map: object,
    size: int = SEGMENTATION_SIZE,
    mean: str | Sequence[str] = "scalar",
    background: int | None = 0,
    components: int = 3,
    device: str = "cpu",
) -> np.ndarray:
    """Per-image normalised inertia of the feature PCA within the label segments.

    The quantity behind `segmentation_r2` (R^2 = 1 - mean inertia), one value per
    image; NaN where it is undefined (no labelled pixel, or no variance among them).
    Arguments as for `segmentation_r2`; `mean` may also be a sequence of variants,
    which gives an [n, len(mean)] array from one PCA per image.
    """
    import torch

    means = [mean] if isinstance(mean, str) else list(mean)
    for variant in means:
        if variant not in _MEANS:
            raise ValueError(f"segmentation_r2: mean must be one of {_MEANS}, got {variant!r}")
    features, labels = _per_image(patch_features, label_map)
    out = np.empty((len(features), len(means)), dtype=np.float64)
    with _single_threaded(device):
        for i, (feature, label) in enumerate(zip(features, labels)):
            maps = _pca_map(feature.to(device), size, components)
            grid = _label_grid(label, size).reshape(-1).to(device)
            keep = grid != background if background is not None else torch.ones_like(grid, dtype=torch.bool)
            for j, variant in enumerate(means):
                out[i, j] = _inertia(maps[keep], grid[keep], variant)
    return out[:, 0] if isinstance(mean, str) else out


def segmentation_r2(
    patch_features: object,
    label_map: object,
    size: int = SEGMENTATION_SIZE,
    mean: str = "scalar",
    background: int | None = 0,
    components: int = 3,
    return_inertia: bool = False,
    device: str = "cpu",
) -> float | tuple[float, np.ndarray]:
    """The paper's zero-shot segmentation R^2 of PCA features against a labelling.

    patch_features: [h, w, d] or [n, h, w, d] (numpy or torch; a list of [h, w, d]
    maps of different grids also works). label_map: [H, W] or [n, H, W] integer
    labels (or a list of [H, W] maps), any resolution.

    Per image: the features are bilinearly resized to `size` x `size` (112); a PCA
    to `components` (3) axes is fit on that image's size*size tokens; each projection
    is min-max normalised to [0, 1] over the image. The label map is nearest-resized
    to size x size and pixels labelled `background` (0; None keeps all) are dropped.
    The image's inertia is the sum over segments of squared distances to the segment's
    mean, divided by the total sum of squares of the kept points about their mean:

    * mean="scalar" (default, as the released notebook computes it): about the one
      scalar mean of all entries of the [pixels, 3] array;
    * mean="per_component": about the per-component mean, the textbook R^2 of a
      one-way ANOVA (its total is never larger, so its R^2 is never higher).

    R^2 = 1 - the mean inertia over images, images whose inertia is NaN (no kept
    pixel, or no variance) being skipped; NaN when every image is. Only pixels labelled
    `background` are dropped (the released notebook drops the smallest label, a real
    class on an image without background); see docs/segmentation.md. Returned as a
    fraction (the paper prints 100 x R^2); with `return_inertia` also the per-image
    inertia array. `device` ("cpu", "cuda") is where the float64 arithmetic runs.
    """
    inertia = segmentation_inertia(
        patch_features, label_map, size=size, mean=mean, background=background, components=components, device=device
    )
    valid = inertia[~np.isnan(inertia)]
    r2 = float(1.0 - valid.mean()) if len(valid) else float("nan")
    return (r2, inertia) if return_inertia else r2


def feature_pca(patch_features: object, size: int = SEGMENTATION_SIZE, components: int = 3, device: str = "cpu") -> np.ndarray:
    """The per-image PCA of `segmentation_r2` as images: [n, size, size, components]
    floats in [0, 1] (3 components read as RGB). Axes without variance are 0."""
    features, _ = _per_image(patch_features, None)
    out = np.zeros((len(features), size, size, components), dtype=np.float64)
    with _single_threaded(device):
        for i, feature in enumerate(features):
            maps = _pca_map(feature.to(device), size, components).cpu().numpy()
            out[i, :, :, : maps.shape[1]] = maps.reshape(size, size, -1)
    return out
