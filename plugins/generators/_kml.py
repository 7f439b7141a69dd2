"""The K-Means Leaves recipe, batched: 2-means of an image's RGB pixels, the blurred
leaf mask, and the blend of two images through it (the `kml` and `kml-mixup`
generators of `harness_plugins.generators.mixing`).

Everything runs on batches of images: in numpy on the CPU (blocks of `_CPU_CHUNK`
images across threads) or in torch on any device; `two_means` documents the arithmetic
that makes both paths agree.
"""

from __future__ import annotations

import os
from typing import Any


def lexicographic_extremes(pixels: Any) -> tuple[Any, Any]:
    """Per image the lexicographically (R, then G, then B) smallest and largest colour of
    integer-valued RGB pixels [b, 3, N] (numpy or torch): the first and last rows that
    numpy.unique(pixels.T, axis=0) returns. Returned as float64 [b, 3]."""
    import numpy as np
    import torch

    if isinstance(pixels, torch.Tensor):
        key = (pixels[:, 0].to(torch.int32) << 16) | (pixels[:, 1].to(torch.int32) << 8) | pixels[:, 2].to(torch.int32)
        lo, hi = key.min(dim=1).values, key.max(dim=1).values
        return tuple(torch.stack([(k >> 16) & 255, (k >> 8) & 255, k & 255], 1).double() for k in (lo, hi))
    # R * 65536 + G * 256 + B is exact in float32 (below 2^24)
    key = np.matmul(np.array([65536.0, 256.0, 1.0], dtype=np.float32), pixels.astype(np.float32, copy=False))
    lo, hi = key.min(axis=-1).astype(np.int64), key.max(axis=-1).astype(np.int64)
    return tuple(np.stack([(k >> 16) & 255, (k >> 8) & 255, k & 255], 1).astype(np.float64) for k in (lo, hi))


def two_means(pixels: Any, iterations: int = 3) -> Any:
    """Cluster labels (bool, True = cluster 1) [b, N] of integer-valued RGB pixels
    [b, 3, N] in 0..255 (uint8 or float32; numpy on the CPU, torch on any device).

    Centroids start at the lexicographic extremes; `iterations` Lloyd steps (assign,
    update; an emptied cluster keeps its centroid); then a final assignment. With two
    centroids, "nearer to c1 than to c0" is the half-space x . (c1 - c0) > (|c1|^2 -
    |c0|^2) / 2; ties go to cluster 0, as argmin does. Centroids are kept in float64;
    the per-pixel products run in float32: exact while the centroids are integer
    colours (the first step), afterwards a pixel within ~1e-2 of the boundary (about one
    in a million) may fall either way. Cluster sums and counts are exact (float32 holds
    every integer below 2^24, and 256 * 256 * 255 is below it), so the result does not
    depend on summation order.
    """
    import numpy as np
    import torch

    if isinstance(pixels, torch.Tensor):
        x = pixels.to(torch.float32)
        wide = torch.float64 if x.shape[-1] * 255 >= 2**24 else torch.float32
        total = x.to(wide).sum(dim=-1).double()

        def dot(v: Any) -> Any:
            return torch.bmm(v.float()[:, None, :], x)[:, 0]

        def sums(one: Any) -> Any:
            return torch.bmm(x.to(wide), one.to(wide)[:, :, None])[..., 0].double(), one.sum(-1, keepdim=True).double()

        where, floor = torch.where, (lambda a: a.clamp(min=1))
    else:
        x = pixels.astype(np.float32, copy=False)
        wide = np.float64 if x.shape[-1] * 255 >= 2**24 else np.float32
        xw = x.astype(wide, copy=False)
        total = np.matmul(xw, np.ones((x.shape[-1], 1), dtype=wide))[..., 0].astype(np.float64)

        def dot(v: Any) -> Any:
            return np.matmul(v.astype(np.float32)[:, None, :], x)[:, 0]

        def sums(one: Any) -> Any:
            onew = one.astype(wide)
            return np.matmul(xw, onew[:, :, None])[..., 0].astype(np.float64), onew.sum(-1, keepdims=True).astype(np.float64)

        where, floor = np.where, (lambda a: np.maximum(a, 1))
    n = x.shape[-1]
    c0, c1 = lexicographic_extremes(x)

    def assign(c0: Any, c1: Any) -> Any:
        b = 0.5 * ((c1 * c1).sum(-1) - (c0 * c0).sum(-1))
        return dot(c1 - c0) > b[:, None].astype(np.float32) if not isinstance(b, torch.Tensor) else dot(c1 - c0) > b.float()[:, None]

    for _ in range(iterations):
        s1, n1 = sums(assign(c0, c1))
        n0, s0 = n - n1, total - s1
        c0 = where(n0 > 0, s0 / floor(n0), c0)
        c1 = where(n1 > 0, s1 / floor(n1), c1)
    return assign(c0, c1)


def _bilinear_axis(x: Any, size: int, axis: int) -> Any:
    """Bilinear resampling of a float32 numpy array along one axis, with half-pixel
    centres and no antialiasing (the arithmetic of torch's
    interpolate(mode="bilinear", align_corners=False) and OpenCV's INTER_LINEAR)."""
    import numpy as np

    n = x.shape[axis]
    if size == n:
        return x

    def cut(start: int, stop: int | None, step: int = 1) -> tuple[slice, ...]:
        index = [slice(None)] * x.ndim
        index[axis] = slice(start, stop, step)
        return tuple(index)

    if size % n == 0:  # integer upsampling: each output phase mixes two shifted copies
        f = size // n
        edge = [np.take(x, [0], axis=axis), x, np.take(x, [n - 1], axis=axis)]
        padded = np.concatenate(edge, axis=axis)
        shape = list(x.shape)
        shape[axis] = size
        out = np.empty(shape, dtype=np.float32)
        for j in range(f):
            s = (j + 0.5) / f - 0.5
            d = int(np.floor(s))
            w = np.float32(s - d)
            out[cut(j, None, f)] = padded[cut(1 + d, 1 + d + n)] * (1 - w) + padded[cut(2 + d, 2 + d + n)] * w
        return out
    if n % size == 0:  # integer downsampling: two fixed taps per output sample
        f = n // size
        s = (f - 1) / 2
        d = int(np.floor(s))
        w = np.float32(s - d)
        if w == 0:
            return np.ascontiguousarray(x[cut(d, None, f)])
        return x[cut(d, None, f)] * (1 - w) + x[cut(d + 1, None, f)] * w
    src = np.maximum((np.arange(size) + 0.5) * (n / size) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    w1 = (src - i0).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = size
    w1 = w1.reshape(shape)
    return np.take(x, i0, axis=axis) * (1 - w1) + np.take(x, i1, axis=axis) * w1


def resize_bilinear(x: Any, size: int) -> Any:
    """Bilinear resize of float32 numpy images [..., h, w] to [..., size, size]
    (columns first: when upsampling, the strided writes then touch the smaller array)."""
    return _bilinear_axis(_bilinear_axis(x, size, x.ndim - 1), size, x.ndim - 2)


def _taps(n_in: int, n_out: int) -> tuple[Any, Any, Any]:
    import numpy as np

    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float32)


def blur_resize(x: Any, size: int) -> Any:
    """resize_bilinear(box_blur3(x), size) for float32 numpy [..., h, w], computing the
    blur only where the resize samples it (the two are separable, rows and columns)."""
    import numpy as np

    for axis in (x.ndim - 1, x.ndim - 2):
        n = x.shape[axis]
        if n < 2:
            x = _bilinear_axis(x, size, axis)
            continue
        i0, i1, w = _taps(n, size)
        shape = [1] * x.ndim
        shape[axis] = size
        w = w.reshape(shape)

        def blurred(idx: Any) -> Any:
            below = np.abs(idx - 1)  # reflect without repeating the edge
            above = (n - 1) - np.abs((n - 1) - (idx + 1))
            return (np.take(x, below, axis=axis) + np.take(x, idx, axis=axis) + np.take(x, above, axis=axis)) * np.float32(1 / 3)

        x = blurred(i0) * (1 - w) + blurred(i1) * w
    return x


def box_blur3(x: Any) -> Any:
    """3x3 mean filter over the last two axes with reflected borders (OpenCV's default
    BORDER_REFLECT_101); numpy or torch."""
    import numpy as np
    import torch

    if x.shape[-1] < 2 or x.shape[-2] < 2:
        return x
    if isinstance(x, torch.Tensor):
        import torch.nn.functional as F

        flat = x.reshape(-1, 1, *x.shape[-2:])
        return F.avg_pool2d(F.pad(flat, (1, 1, 1, 1), mode="reflect"), 3, stride=1).view(x.shape)
    p = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)], mode="reflect")
    rows = p[..., :-2, :] + p[..., 1:-1, :] + p[..., 2:, :]
    return (rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]) * np.float32(1.0 / 9.0)


def kml_masks(s1: Any, size: int, kmeans_size: int = 256, iterations: int = 3) -> Any:
    """The blurred leaf masks [b, size, size] (float32 in [0, 1]) of uint8 images s1
    [b, 3, h, w]: numpy arrays on the CPU, torch tensors on their device."""
    import numpy as np
    import torch

    if isinstance(s1, torch.Tensor):
        import torch.nn.functional as F

        x = s1
        if x.shape[-1] != kmeans_size or x.shape[-2] != kmeans_size:
            x = F.interpolate(x.float(), size=(kmeans_size, kmeans_size), mode="bilinear", align_corners=False)
            x = x.round_().clamp_(0, 255).to(torch.uint8)
        labels = two_means(x.reshape(x.shape[0], 3, -1), iterations)
        mask = box_blur3((~labels).to(torch.float32).view(-1, 1, kmeans_size, kmeans_size))
        if size != kmeans_size:
            mask = F.interpolate(mask, size=(size, size), mode="bilinear", align_corners=False)
        return box_blur3(mask).clamp_(0.0, 1.0)[:, 0]
    x = s1.astype(np.float32)
    if x.shape[-1] != kmeans_size or x.shape[-2] != kmeans_size:
        # bilinear values stay within [0, 255]: rounding gives the uint8 image's values
        x = np.round(resize_bilinear(x, kmeans_size))
    labels = two_means(x.reshape(x.shape[0], 3, -1), iterations)
    mask = blur_resize((~labels).astype(np.float32).reshape(-1, kmeans_size, kmeans_size), size)
    return np.clip(box_blur3(mask), 0.0, 1.0)


_CPU_CHUNK = 4  # images per numpy work item: keeps the 256 x 256 x 3 arrays in cache


def kml_blend(triples: Any, size: int, kmeans_size: int = 256, iterations: int = 3) -> Any:
    """Mean over k of the KML images s2 * mask(s1) + s3 * (1 - mask(s1)), from uint8
    triples [n, k, 3 (s1, s2, s3), 3, size, size]; float32 [n, 3, size, size]."""
    import numpy as np
    import torch

    n, k = triples.shape[:2]
    if isinstance(triples, torch.Tensor):
        flat = triples.reshape(n * k, 3, 3, size, size)
        mask = kml_masks(flat[:, 0], size, kmeans_size, iterations)[:, None]
        out = flat[:, 1].float() * mask + flat[:, 2].float() * (1.0 - mask)
        return out.view(n, k, 3, size, size).mean(dim=1)

    def work(lo: int) -> Any:
        part = triples[lo:lo + _CPU_CHUNK].reshape(-1, 3, 3, size, size)
        mask = kml_masks(part[:, 0], size, kmeans_size, iterations)[:, None]
        out = part[:, 1].astype(np.float32) * mask + part[:, 2].astype(np.float32) * (1.0 - mask)
        return out.reshape(-1, k, 3, size, size).mean(axis=1)

    starts = range(0, n, _CPU_CHUNK)
    # as many threads as torch uses here (1 in DataLoader workers, so no oversubscription)
    workers = min(len(starts), torch.get_num_threads(), os.cpu_count() or 1)
    if workers <= 1:
        return np.concatenate([work(lo) for lo in starts])
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:  # numpy releases the GIL in its loops
        return np.concatenate(list(pool.map(work, starts)))
