"""DINO's own data path, for `harness bench train`'s side-by-side ratio.

DINO's loader reads JPEG files and augments each image separately with PIL and
torchvision in data-loader workers (its `DataAugmentationDINO`): random resized crop
(bicubic), flip, colour jitter, grayscale, PIL Gaussian blur, solarisation, to tensor,
normalise. Ours (`_dino_augment.MultiCrop`) draws the same operations batched on the
training device from images that arrive as tensors. Both are timed on the same images.
"""

from __future__ import annotations

import random
from typing import Any

from harness_plugins.encoders._dino_augment import IMAGENET_MEAN, IMAGENET_STD, MultiCrop


class _RandomBlur:
    """PIL Gaussian blur with probability p and a radius drawn from [low, high]."""

    def __init__(self, p: float, low: float, high: float) -> None:
        self.p, self.low, self.high = p, low, high

    def __call__(self, image: Any) -> Any:
        from PIL import ImageFilter

        if random.random() >= self.p:
            return image
        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.low, self.high)))


def pil_multicrop(multicrop: MultiCrop) -> Any:
    """A function of one PIL image returning its normalised crops (2 global + n local),
    built from torchvision's PIL transforms with `multicrop`'s settings."""
    from torchvision import transforms as T

    bicubic = T.InterpolationMode.BICUBIC
    jitter = T.Compose([
        T.RandomHorizontalFlip(p=multicrop.flip_p),
        T.RandomApply([T.ColorJitter(*multicrop.jitter)], p=multicrop.jitter_p),
        T.RandomGrayscale(p=multicrop.grayscale_p),
    ])
    normalize = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    low, high = (s * multicrop.sigma_scale for s in multicrop.blur_sigma)
    pipelines = []
    for spec in multicrop.crops:
        steps = [T.RandomResizedCrop(spec.size, scale=spec.scale, interpolation=bicubic), jitter, _RandomBlur(spec.blur_p, low, high)]
        if spec.solarize_p:
            steps.append(T.RandomSolarize(threshold=128, p=spec.solarize_p))
        pipelines.append(T.Compose(steps + [normalize]))
    return lambda image: [pipeline(image) for pipeline in pipelines]


def _augment_share(job: tuple[MultiCrop, list[bytes]]) -> int:
    """Decode and augment one worker's share of the JPEG files (`pil_multicrop`)."""
    import torch

    from harness.bench.timing import decode_image

    multicrop, share = job
    augment = pil_multicrop(multicrop)
    with torch.inference_mode():
        for blob in share:
            augment(decode_image(blob))
    return len(share)


def reference_augment_rate(images: Any, multicrop: MultiCrop) -> float:
    """images/s of DINO's data path on these uint8 images [n, 3, H, W]: decode each from
    a JPEG file and augment it with `pil_multicrop`, on one worker process per core."""
    from harness.bench.timing import cores, encode_jpegs, parallel_rate

    blobs = encode_jpegs(images)
    workers = cores()
    return parallel_rate(_augment_share, [(multicrop, blobs[i::workers]) for i in range(workers)], workers)
