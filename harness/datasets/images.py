"""Decoding image files and the evaluation protocol's preprocessing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.errors import DataFormatError, HarnessError

if TYPE_CHECKING:
    from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""File endings an image folder is scanned for (torchvision's list), any case."""

RESIZE_PER_CROP = 256 / 224
"""DINO's evaluation resizes the shorter side to 256 before a 224 centre crop."""


DEFAULT_MAX_PIXELS = 89_478_485
"""The largest image (width x height) a dataset decodes unless its `max_pixels` option
says otherwise: PIL's own decompression-bomb threshold, about 9500 x 9500 px."""

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
"""PIL modes of single-channel images whose values span 0..65535 (16-bit PNG and TIFF)."""


@dataclass(frozen=True)
class PixelLimit:
    """The largest image a dataset decodes, and the option that raises it (for the message).

    It is checked against the file's header, before any pixel is decoded: a small file
    can hold a huge image (a 140 KB PNG of 12000 x 12000 px decodes to 430 MB)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    option: str = "the dataset option max_pixels"


def pixel_limit(name: str, options: dict[str, Any]) -> PixelLimit:
    """The `max_pixels` option of dataset `name`, checked to be a positive integer."""
    value = options.get("max_pixels", DEFAULT_MAX_PIXELS)
    option = f"datasets.{name}.options.max_pixels"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise HarnessError(f"{option} must be a positive integer (pixels per image), got {value!r}")
    return PixelLimit(int(value), option)


def sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    """A 16-bit single-channel image scaled to 8 bits (value * 255 / 65535, rounded), as RGB.

    PIL's own conversion clips these values at 255, so all but the darkest greys would
    become white."""
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    scaled = np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L").convert("RGB")


def decode_image(path: str | os.PathLike, where: str = "", limit: PixelLimit = PixelLimit()) -> Image.Image:
    """Open an image file as RGB; a missing or undecodable file raises DataFormatError,
    and so does an image larger than `limit` (before its pixels are decoded).

    `where` says where the file is listed (e.g. "images.txt line 12") for the message.
    16-bit grey images are scaled to 8 bits; 16-bit colour images PIL reduces to their
    high byte (within 1 of the scaled value). The harness applies `limit` itself, so
    PIL's process-wide decompression-bomb check (which would refuse a limit raised past
    it) is switched off."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None
    suffix = f" ({where})" if where else ""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > limit.max_pixels:
                raise DataFormatError(
                    f"{path}: image is {width} x {height} = {width * height} pixels, more than the limit of "
                    f"{limit.max_pixels}{suffix}; raise {limit.option} if the dataset really holds images this large"
                )
            image.load()
            if image.mode in SIXTEEN_BIT_MODES:
                return sixteen_bit_to_rgb(image)
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataFormatError(f"{path}: image file not found{suffix}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
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
