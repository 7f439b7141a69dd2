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
"""PIL modes of single-channel images whose values span 0..65535 (16-bit PNG and TIFF).

Mode "I" holds 32-bit integers: Pillow opens 16-bit grey PNG and PGM files in it (some
versions), but also 32-bit TIFFs, which `decode_image` refuses (see `check_bit_depth`)."""

CONVERT_HINT = "convert it to an 8-bit or 16-bit PNG or TIFF (values 0..255 or 0..65535)"
"""What to do with an image whose values have no fixed 8- or 16-bit range."""


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


def scale_sixteen_bit(values: np.ndarray) -> np.ndarray:
    """16-bit values (0..65535) as uint8, value * 255 / 65535 rounded: the one rule for
    16-bit files and uint16 arrays alike."""
    return np.clip(np.rint(np.asarray(values, dtype=np.float64) * (255.0 / 65535.0)), 0, 255).astype(np.uint8)


def sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    """A 16-bit single-channel image scaled to 8 bits (`scale_sixteen_bit`), as RGB.

    PIL's own conversion clips these values at 255, so all but the darkest greys would
    become white."""
    from PIL import Image

    return Image.fromarray(scale_sixteen_bit(np.asarray(image)), mode="L").convert("RGB")


def bits_per_sample(image: Image.Image) -> int | None:
    """The file's bits per sample where its header says (TIFF's BitsPerSample), else None."""
    tags = getattr(image, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None
    if isinstance(bits, tuple):
        bits = max(bits, default=None)
    return int(bits) if isinstance(bits, int) else None


def _depth(image: Image.Image) -> str:
    bits = bits_per_sample(image)
    return f"PIL mode {image.mode}" + (f", {bits} bits per sample" if bits else "")


def check_bit_depth(image: Image.Image, path: object, suffix: str) -> None:
    """Refuse, from the header, an image no 8-bit conversion would render faithfully.

    PIL's convert("RGB") clips floating-point values (an image in 0..1 becomes black) and
    32-bit integers at 255; scaling 32-bit values as 16-bit ones would darken them instead."""
    if image.mode == "F":
        raise DataFormatError(
            f"{path}: a floating-point image ({_depth(image)}){suffix} has no fixed range of values to map to 0..255; {CONVERT_HINT}"
        )
    bits = bits_per_sample(image)
    if image.mode == "I" and bits is not None and bits > 16:
        raise DataFormatError(f"{path}: a {bits}-bit integer image ({_depth(image)}){suffix} is not read; {CONVERT_HINT}")


def check_sixteen_bit_values(image: Image.Image, path: object, suffix: str) -> None:
    """Mode "I" images whose file does not state a depth above 16 bits (PNG, PGM) are read
    as 16-bit: values outside 0..65535 show they are not, and are refused, not clipped."""
    if image.mode != "I":
        return
    values = np.asarray(image)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise DataFormatError(
            f"{path}: an integer image ({_depth(image)}) with values {low}..{high}, outside the 16-bit range "
            f"0..65535{suffix}; {CONVERT_HINT}"
        )


def image_to_rgb(image: Image.Image, path: object, suffix: str = "") -> Image.Image:
    """A decoded image as RGB: 16-bit grey scaled (`sixteen_bit_to_rgb`), float and 32-bit
    images refused (DataFormatError naming `path`), every other mode converted by PIL."""
    check_bit_depth(image, path, suffix)
    check_sixteen_bit_values(image, path, suffix)
    if image.mode in SIXTEEN_BIT_MODES:
        return sixteen_bit_to_rgb(image)
    return image.convert("RGB")


def decode_image(path: str | os.PathLike, where: str = "", limit: PixelLimit = PixelLimit()) -> Image.Image:
    """Open an image file as RGB; a missing or undecodable file raises DataFormatError,
    and so does an image larger than `limit` (before its pixels are decoded).

    `where` says where the file is listed (e.g. "images.txt line 12") for the message.
    16-bit grey images are scaled to 8 bits; 16-bit colour images PIL reduces to their
    high byte (within 1 of the scaled value). Floating-point and 32-bit integer images
    raise DataFormatError: no 8-bit rendering of them would be right. The EXIF
    orientation is not applied, as in torchvision's loaders and DINO's evaluation. The
    harness applies `limit` itself, so PIL's process-wide decompression-bomb check
    (which would refuse a limit raised past it) is switched off."""
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
            check_bit_depth(image, path, suffix)  # from the header, before decoding
            image.load()
            return image_to_rgb(image, path, suffix)
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
