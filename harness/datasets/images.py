"""Decoding image files and the evaluation protocol's preprocessing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from harness.errors import DataFormatError

if TYPE_CHECKING:
    from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""File endings an image folder is scanned for (torchvision's list), any case."""

RESIZE_PER_CROP = 256 / 224
"""DINO's evaluation resizes the shorter side to 256 before a 224 centre crop."""


def decode_image(path: str | os.PathLike, where: str = "") -> Image.Image:
    """Open an image file as RGB; a missing or undecodable file raises DataFormatError.

    `where` says where the file is listed (e.g. "images.txt line 12") for the message."""
    from PIL import Image, UnidentifiedImageError

    suffix = f" ({where})" if where else ""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataFormatError(f"{path}: image file not found{suffix}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataFormatError(f"{path}: cannot decode image: {exc}{suffix}") from None


@dataclass(frozen=True)
class Preprocess:
    """Decoded image -> uint8 [3, S, S].

    mode "resize_crop": shorter side to `resize` (bicubic), centre crop `crop` x `crop`
    (torchvision's Resize(resize, BICUBIC) + CenterCrop(crop), as DINO evaluates).
    mode "squash": bicubic resize to `crop` x `crop`, aspect ratio not kept (NIGHTS).
    """

    crop: int = 224
    resize: int = 256
    mode: str = "resize_crop"

    @property
    def size(self) -> int:
        return self.crop

    def __call__(self, image: Image.Image) -> np.ndarray:
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        if self.mode == "squash":
            image = TF.resize(image, [self.crop, self.crop], interpolation=InterpolationMode.BICUBIC)
        else:
            image = TF.resize(image, self.resize, interpolation=InterpolationMode.BICUBIC)
            image = TF.center_crop(image, [self.crop, self.crop])
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
