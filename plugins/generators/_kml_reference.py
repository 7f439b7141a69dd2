"""K-Means Leaves as the paper's released research code makes it, one image at a time in
plain numpy and torch: the reference that `harness bench` times the batched generator
against and that the tests compare it with. It shares no code with `_kml`.

The released recipe, per KML image from base images s1, s2, s3 (float32 x / 255):
s1 resized to 256 x 256 by torchvision's `Resize` (bilinear, antialiased, not rounded);
a 2-means of its pixels (`Fast2Means(Niter=3)`: centroids at the first and last rows of
numpy.unique, then three assignments to the nearer centroid by float32 squared distance,
ties to the first, with centroid updates between them); mask = (label == 0), OpenCV's
3x3 `blur`, `resize` (INTER_LINEAR) to the image size and `blur` again, each stored in
float32; s2 * mask + s3 * (1 - mask), written by torchvision's `save_image` (a JPEG at
PIL's quality 75). KML Mixup reads those files back, averages them and writes the mean
the same way.
"""

from __future__ import annotations

import io
from typing import Any


def released_two_means(tokens: Any, niter: int = 3) -> Any:
    """Cluster labels (0 or 1) [N] of float32 pixels [N, 3] after `niter` assignments."""
    import numpy as np

    distinct = np.unique(tokens, axis=0)
    centroids = np.array([distinct[0], distinct[-1]], dtype=np.float32)
    labels = None
    for step in range(niter):
        if step > 0:
            means: list[Any] = []
            for cluster in (0, 1):
                members = tokens[labels == cluster].astype(np.float64)
                means.append(members.sum(axis=0) / len(members) if len(members) else None)
            # an empty cluster takes the other one's mean (the released code broadcasts
            # the first cluster's mean to both when the second is empty)
            means = [means[0] if means[0] is not None else means[1], means[1] if means[1] is not None else means[0]]
            centroids = np.array(means).astype(np.float32)
        squares = (tokens[:, None, :] - centroids[None, :, :]) ** 2  # float32 [N, 2, 3]
        distances = squares[..., 0] + squares[..., 1] + squares[..., 2]
        labels = np.argmin(distances, axis=1)
    return labels


def _blur3(image: Any) -> Any:
    """float32 3x3 mean (computed in float64) with borders reflected without repeating the edge."""
    import numpy as np

    h, w = image.shape
    padded = np.pad(image.astype(np.float64), 1, mode="reflect")
    total = sum(padded[i:i + h, j:j + w] for i in range(3) for j in range(3))
    return (total / 9).astype(np.float32)


def _resize_linear(image: Any, size: int) -> Any:
    """float32 bilinear resize (half-pixel centres, no antialiasing), computed in float64."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    if image.shape == (size, size):
        return image
    x = torch.from_numpy(image.astype(np.float64))[None, None]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy().astype(np.float32)


def released_kml_mask(s1: Any, size: int, kmeans_size: int = 256, niter: int = 3) -> tuple[Any, Any]:
    """(labels [kmeans_size^2], float32 mask [size, size]) of one float32 image s1 [3, h, w] in [0, 1] (torch)."""
    import numpy as np
    import torch.nn.functional as F

    x = s1
    if tuple(x.shape[1:]) != (kmeans_size, kmeans_size):
        x = F.interpolate(x[None], size=(kmeans_size, kmeans_size), mode="bilinear", align_corners=False, antialias=True)[0]
    labels = released_two_means(x.reshape(3, -1).T.contiguous().numpy(), niter)
    mask = (labels == 0).astype(np.float32).reshape(kmeans_size, kmeans_size)
    return labels, _blur3(_resize_linear(_blur3(mask), size))


def _to_unit(image: Any) -> Any:
    """A decoded RGB image as a float32 tensor [3, h, w] in [0, 1] (torchvision's `ToTensor`)."""
    import numpy as np
    import torch

    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(255)


def _save(image: Any, jpeg: bool) -> Any:
    """What reading back the file `save_image` writes gives: uint8 [h, w, 3]."""
    import numpy as np
    import torch
    from PIL import Image

    array = image.mul(255).add(0.5).clamp(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    if not jpeg:
        return array
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")  # PIL's default quality, 75
    return np.asarray(Image.open(buffer).convert("RGB"))


def released_kml_image(
    blobs: list[bytes], size: int, kmeans_size: int = 256, iterations: int = 3, mixup: bool | None = None, released_jpeg: bool = False
) -> Any:
    """One KML image, or with `mixup` (default: when `blobs` hold more than one KML
    image) one KML Mixup image, uint8 [size, size, 3], from encoded base images (`blobs`:
    s1, s2, s3 per KML image). `iterations` is the released `Niter`; `released_jpeg`
    reads each written image back from a JPEG as the released files hold it."""
    import torch

    from harness.bench.timing import decode_image

    made = []
    for i in range(0, len(blobs), 3):
        s1, s2, s3 = (_to_unit(decode_image(blob)) for blob in blobs[i:i + 3])
        _, mask = released_kml_mask(s1, size, kmeans_size, iterations)
        mask = torch.from_numpy(mask)
        made.append(_save(s2 * mask + s3 * (1 - mask), released_jpeg))
    if not (len(made) > 1 if mixup is None else mixup):
        return made[0]
    total = _to_unit(made[0])
    for image in made[1:]:
        total = total + _to_unit(image)
    return _save(total / len(made), released_jpeg)
