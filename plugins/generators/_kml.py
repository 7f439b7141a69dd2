"""The K-Means Leaves recipe, batched: 2-means of an image's colours, the blurred leaf
mask, the blend of two images through it and the 8-bit files the released research
code stores (the `kml` and `kml-mixup` generators of `harness_plugins.generators.mixing`).

Images are handled as the released code handles them: uint8 base images become float32
in [0, 1] (x / 255); a KML image is stored as uint8(clamp(v * 255 + 0.5, 0, 255)), in
float32, as torchvision's `save_image` rounds. Everything runs on batches: numpy on the
CPU (blocks of `_CPU_CHUNK` images across threads) or torch on any device; the two
paths perform the same float32 operations, and the mask's float64 stages are stored in
float32 after each stage, so they agree to the bit except when a float64 result lies
within about 1e-16 of a float32 rounding boundary.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

_CPU_CHUNK = 4  # images per numpy work item: keeps the 256 x 256 x 3 arrays in cache
_BLOCK = 64  # images whose mask sources are resized (by torch) at once on the CPU
_DEVICE_BLOCK = 256  # images per torch pass on a device (its float64 copy: 400 MB)


def lexicographic_extremes(x: Any) -> tuple[Any, Any]:
    """Per image the lexicographically (R, then G, then B) smallest and largest colour of
    pixels [b, 3, N] (numpy or torch): the first and last rows of
    numpy.unique(pixels.T, axis=0). Returned in the pixels' dtype, [b, 3]."""
    import numpy as np
    import torch

    where, stack = (torch.where, torch.stack) if isinstance(x, torch.Tensor) else (np.where, np.stack)
    extremes = []
    for smallest in (True, False):
        among, picked = None, []
        for channel in range(3):
            values = x[:, channel]
            if among is not None:  # only pixels that tie on the earlier channels compete
                values = where(among, values, float("inf") if smallest else float("-inf"))
            best = values.min(-1) if smallest else values.max(-1)
            best = best.values if isinstance(best, tuple) else best  # torch: (values, indices)
            hit = values == best[:, None]
            among = hit if among is None else among & hit
            picked.append(best)
        extremes.append(stack(picked, 1))
    return extremes[0], extremes[1]


def squared_distance(x: Any, c: Any) -> Any:
    """float32 squared distances [b, N] of pixels [b, 3, N] to one centroid per image
    [b, 3]: (R - cR)^2 + (G - cG)^2 + (B - cB)^2, added in that order (numpy in place,
    the same operations)."""
    import numpy as np

    if isinstance(x, np.ndarray):
        d = np.subtract(x[:, 0], c[:, 0, None])
        d *= d
        t = np.empty_like(d)
        for channel in (1, 2):
            np.subtract(x[:, channel], c[:, channel, None], out=t)
            t *= t
            d += t
        return d
    d = x[:, 0] - c[:, 0, None]
    d = d * d
    for channel in (1, 2):
        t = x[:, channel] - c[:, channel, None]
        d = d + t * t
    return d


def _new_centroids(x64: Any, labels: Any) -> tuple[Any, Any]:
    """The float32 centroids [b, 3] of clusters 0 and 1 (float64 sums and division, then
    rounded to float32, as the released code stores them); a cluster without pixels
    takes the other's centroid."""
    import numpy as np
    import torch

    if isinstance(x64, torch.Tensor):
        one = labels.to(torch.float64)[:, :, None]
        s0, s1 = torch.bmm(x64, 1.0 - one)[..., 0], torch.bmm(x64, one)[..., 0]
        where, to32 = torch.where, (lambda v: v.to(torch.float32))
    else:
        one = labels.astype(np.float64)[:, :, None]
        s0, s1 = np.matmul(x64, 1.0 - one)[..., 0], np.matmul(x64, one)[..., 0]
        where, to32 = np.where, (lambda v: v.astype(np.float32))
    n1 = one.sum(1)
    n0 = labels.shape[1] - n1
    c0, c1 = to32(s0 / where(n0 > 0, n0, 1)), to32(s1 / where(n1 > 0, n1, 1))
    return where(n0 > 0, c0, c1), where(n1 > 0, c1, c0)


def two_means(pixels: Any, iterations: int = 3) -> Any:
    """Cluster labels (bool, True = cluster 1) [b, N] of float32 pixels [b, 3, N]
    (numpy on the CPU, torch on any device), with the semantics of the released
    `Fast2Means`: centroids start at the lexicographic extremes; labels are assigned
    `iterations` times (the released `Niter`), each time to the centroid at the smaller
    float32 squared distance (ties to cluster 0), with a centroid update between two
    assignments; the last assignment is returned."""
    import numpy as np
    import torch

    if iterations < 1:
        raise ValueError(f"two_means needs iterations >= 1, got {iterations}")
    x = pixels
    x64 = x.to(torch.float64) if isinstance(x, torch.Tensor) else x.astype(np.float64)
    c0, c1 = lexicographic_extremes(x)
    labels = squared_distance(x, c1) < squared_distance(x, c0)
    for _ in range(iterations - 1):
        c0, c1 = _new_centroids(x64, labels)
        labels = squared_distance(x, c1) < squared_distance(x, c0)
    return labels


def _bilinear_axis(x: Any, size: int, axis: int) -> Any:
    """Bilinear resampling of a numpy array along one axis, in its dtype, with half-pixel
    centres and no antialiasing (torch's interpolate(mode="bilinear",
    align_corners=False), OpenCV's INTER_LINEAR)."""
    import numpy as np

    n = x.shape[axis]
    if size == n:
        return x
    src = np.maximum((np.arange(size) + 0.5) * (n / size) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    shape = [1] * x.ndim
    shape[axis] = size
    w1 = (src - i0).astype(x.dtype).reshape(shape)
    return np.take(x, i0, axis=axis) * (1 - w1) + np.take(x, i1, axis=axis) * w1


def box_mean3(x: Any) -> Any:
    """3x3 mean over the last two axes of a float array (numpy or torch), in its dtype,
    borders reflected without repeating the edge (OpenCV's default); an axis of length 1
    is not blurred. Neighbours are added in one order on both paths: below + centre +
    above, columns then rows."""
    import numpy as np
    import torch

    is_torch = isinstance(x, torch.Tensor)
    total = x
    taps = 1
    for axis in (total.ndim - 1, total.ndim - 2):
        n = total.shape[axis]
        if n < 2:
            continue
        if is_torch:
            below = torch.cat([total.narrow(axis, 1, 1), total.narrow(axis, 0, n - 1)], axis)
            above = torch.cat([total.narrow(axis, 1, n - 1), total.narrow(axis, n - 2, 1)], axis)
            total = below + total + above
        else:
            pad = [(0, 0)] * total.ndim
            pad[axis] = (1, 1)
            padded = np.pad(total, pad, mode="reflect")
            shifted = [tuple(slice(start, start + n) if a == axis else slice(None) for a in range(total.ndim)) for start in (0, 2)]
            total = padded[shifted[0]] + total + padded[shifted[1]]
        taps *= 3
    return total / taps


def _leaf_mask(labels: Any, kmeans_size: int, size: int) -> Any:
    """float32 masks [b, size, size] from 2-means labels [b, kmeans_size^2]: cluster 0 as
    1.0, 3x3 blur, bilinear resize to `size`, 3x3 blur; each stage stored in float32 (as
    OpenCV stores the released code's float32 images), the last two computed in float64.
    The first blur is exact in float32: its sums are integers, its means k / 9 rounded."""
    import numpy as np
    import torch

    if isinstance(labels, torch.Tensor):
        import torch.nn.functional as F

        mask = box_mean3((~labels).to(torch.float32).view(-1, 1, kmeans_size, kmeans_size))
        if size != kmeans_size:
            mask = F.interpolate(mask.double(), size=(size, size), mode="bilinear", align_corners=False).to(torch.float32)
        return box_mean3(mask.double()).to(torch.float32)[:, 0]
    mask = box_mean3((~labels).astype(np.float32).reshape(-1, kmeans_size, kmeans_size))
    mask = _bilinear_axis(_bilinear_axis(mask.astype(np.float64), size, 2), size, 1).astype(np.float32)
    return box_mean3(mask.astype(np.float64)).astype(np.float32)


def mask_sources(s1: Any, kmeans_size: int) -> Any:
    """The float32 images [b, 3, kmeans_size, kmeans_size] the 2-means clusters: uint8 s1
    (torch) as x / 255, resized bilinearly with antialiasing (torchvision's `Resize` on
    tensors), never rounded."""
    import torch.nn.functional as F

    x = _unit(s1)
    if x.shape[-2:] == (kmeans_size, kmeans_size):
        return x
    return F.interpolate(x, size=(kmeans_size, kmeans_size), mode="bilinear", align_corners=False, antialias=True)


def _unit_table() -> Any:
    """float32 x / 255 for x = 0..255, divided on the CPU (numpy), correctly rounded."""
    import numpy as np

    return np.arange(256, dtype=np.float32) / np.float32(255)


@functools.cache
def _unit_table_on(device: Any) -> Any:
    """`_unit_table` on a torch device, copied there once: a copy from the host waits
    for the work the device has queued, which would keep the host from queueing the
    next kernels while the GPU runs."""
    import torch

    return torch.from_numpy(_unit_table()).to(device)


def _unit(images: Any) -> Any:
    """float32 x / 255 of uint8 images (numpy or torch), correctly rounded on every device
    (as torchvision's `ToTensor` divides on the CPU; a CUDA kernel dividing by a number
    multiplies by its reciprocal)."""
    import torch

    if isinstance(images, torch.Tensor):
        return _unit_table_on(images.device)[images.long()]
    return _unit_table()[images]


def _blend(s2: Any, s3: Any, mask: Any) -> Any:
    """uint8 KML images: s2 * mask + s3 * (1 - mask) in float32 on [0, 1], stored."""
    return stored((_unit(s2) * mask + _unit(s3) * (1.0 - mask)) * 255)


def kml_images(triples: Any, size: int, kmeans_size: int = 256, iterations: int = 3) -> Any:
    """uint8 KML images [m, 3, size, size] from uint8 triples (s1, s2, s3)
    [m, 3, 3, size, size]: s2 and s3 blended through the leaf mask of s1. Torch tensors
    stay on their device; numpy arrays run on the CPU across threads."""
    import numpy as np
    import torch

    m = triples.shape[0]
    if isinstance(triples, torch.Tensor):
        out = torch.empty((m, 3, size, size), dtype=torch.uint8, device=triples.device)
        for lo in range(0, m, _DEVICE_BLOCK):
            part = triples[lo:lo + _DEVICE_BLOCK]
            labels = two_means(mask_sources(part[:, 0], kmeans_size).flatten(2), iterations)
            out[lo:lo + _DEVICE_BLOCK] = _blend(part[:, 1], part[:, 2], _leaf_mask(labels, kmeans_size, size)[:, None])
        return out

    out = np.empty((m, 3, size, size), dtype=np.uint8)
    # as many threads as torch uses here (1 in DataLoader workers, so no oversubscription)
    workers = max(1, min(torch.get_num_threads(), os.cpu_count() or 1, -(-m // _CPU_CHUNK)))
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:  # numpy releases the GIL in its loops
        for block in range(0, m, _BLOCK):
            part = triples[block:block + _BLOCK]
            sources = mask_sources(torch.from_numpy(np.ascontiguousarray(part[:, 0])), kmeans_size).numpy()
            sources = sources.reshape(len(part), 3, -1)

            def work(lo: int, part: Any = part, sources: Any = sources, block: int = block) -> None:
                labels = two_means(sources[lo:lo + _CPU_CHUNK], iterations)
                mask = _leaf_mask(labels, kmeans_size, size)[:, None]
                out[block + lo:block + lo + len(mask)] = _blend(part[lo:lo + _CPU_CHUNK, 1], part[lo:lo + _CPU_CHUNK, 2], mask)

            list(pool.map(work, range(0, len(part), _CPU_CHUNK)))
    return out


def stored_mean(images: Any) -> Any:
    """float32 [n, 3, H, W]: 255 x the mean of n groups of k stored uint8 images
    [n, k, 3, H, W], each read as x / 255 and added in order (the released KML Mixup's
    mean, before `stored` rounds it)."""
    import numpy as np
    import torch

    k = images.shape[1]
    total = _unit(images[:, 0])
    for j in range(1, k):
        total = total + _unit(images[:, j])
    # divided by a tensor (a CUDA kernel would multiply by the reciprocal of a number),
    # filled on the device (a copy from the host would wait for its queued work)
    count = torch.full((), float(k), dtype=torch.float32, device=total.device) if isinstance(total, torch.Tensor) else np.float32(k)
    return total / count * 255


def stored(v255: Any) -> Any:
    """uint8 of float32 images already multiplied by 255 (v * 255 for v in [0, 1]), rounded
    as torchvision's `save_image` rounds: uint8(clamp(v * 255 + 0.5, 0, 255))."""
    import numpy as np
    import torch

    if isinstance(v255, torch.Tensor):
        return (v255 + 0.5).clamp_(0, 255).to(torch.uint8)
    return np.clip(v255 + np.float32(0.5), 0, 255).astype(np.uint8)


def kml_blend(triples: Any, size: int, kmeans_size: int = 256, iterations: int = 3, store: Callable[[Any], Any] | None = None) -> Any:
    """float32 [n, 3, size, size]: `stored_mean` of the k KML images made from uint8
    triples [n, k, 3 (s1, s2, s3), 3, size, size], each KML image passed through `store`
    (a uint8 to uint8 round trip through a file format) first when given."""
    n, k = triples.shape[:2]
    images = kml_images(triples.reshape(n * k, 3, 3, size, size), size, kmeans_size, iterations)
    if store is not None:
        images = store(images)
    return stored_mean(images.reshape(n, k, 3, size, size))


def jpeg_round_trip(images: Any) -> Any:
    """uint8 images [m, 3, H, W] (numpy, or torch on any device) saved as JPEG files by
    PIL (quality 75, PIL's default and what the released code's `save_image` writes) and
    decoded again."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    array = images.cpu().numpy() if isinstance(images, torch.Tensor) else images
    decoded = np.empty_like(array)
    for i, image in enumerate(array.transpose(0, 2, 3, 1)):
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=75)
        decoded[i] = np.asarray(Image.open(buffer).convert("RGB")).transpose(2, 0, 1)
    return torch.from_numpy(decoded).to(images.device) if isinstance(images, torch.Tensor) else decoded
