"""Splits whose items are fetched one by one from a container (a tar shard, an Arrow
table, a torchvision dataset) rather than from one file per item.

`ItemSplit` is an `ImageFileSplit` whose `decode(i)` asks a fetch function for item i:
decoding runs in the same thread pool, with the same preprocessing and pixel limit, and
a bad item is reported as `DataFormatError` naming the container file and the index.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from harness.datasets.images import PixelLimit, Preprocess, decode_image, scale_sixteen_bit
from harness.datasets.spec import default_workers
from harness.datasets.splits import ImageFileSplit
from harness.errors import DataFormatError, HarnessError

if TYPE_CHECKING:
    from PIL import Image


class NamedBytes(io.BytesIO):
    """Encoded image bytes that print as where they came from, so the messages of
    `decode_image` name the shard member or table row instead of a buffer object."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.label = name

    def __str__(self) -> str:
        return self.label


def decode_bytes(data: bytes, name: str, where: str = "", limit: PixelLimit = PixelLimit()) -> Image.Image:
    """Encoded image bytes as RGB; undecodable or over-large data raises DataFormatError
    naming `name` (the file and member or row) and `where`."""
    return decode_image(NamedBytes(bytes(data), name), where, limit)  # type: ignore[arg-type]


def array_to_image(value: Any, name: str, limit: PixelLimit = PixelLimit()) -> Image.Image:
    """An image stored as numbers ([H, W], [H, W, C] or [C, H, W] with C in 1, 3, 4) as
    RGB. uint16 values are scaled as 16-bit files are (`scale_sixteen_bit`); floats whose
    maximum is at most 1 are scaled from 0..1 to 0..255; every other value is rounded and
    must then lie in 0..255 (bool, uint8, other integers, floats in 0..255). Anything
    else raises DataFormatError naming `name` rather than being clipped."""
    from PIL import Image

    try:
        array = np.asarray(value)
        if array.dtype == object:
            array = np.asarray(array.tolist())
        if array.dtype.kind not in "biuf":
            raise ValueError(f"values of type {array.dtype}")
    except (ValueError, TypeError) as exc:
        raise DataFormatError(f"{name}: not an image array ({exc})") from None
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)) or 0 in array.shape:
        raise DataFormatError(f"{name}: an image array must be [H, W], [H, W, C] or [C, H, W] (C = 1, 3 or 4), got shape {array.shape}")
    if array.shape[0] * array.shape[1] > limit.max_pixels:
        raise DataFormatError(f"{name}: image is {array.shape[1]} x {array.shape[0]} pixels, more than the limit of {limit.max_pixels}; raise {limit.option}")
    if array.dtype.kind == "u" and array.dtype.itemsize == 2:  # uint16 in either byte order
        return Image.fromarray(scale_sixteen_bit(array)).convert("RGB")
    return Image.fromarray(eight_bit_values(array, name)).convert("RGB")


def eight_bit_values(array: np.ndarray, name: str) -> np.ndarray:
    """A non-uint16 image array as uint8 (see `array_to_image`); values that would fall
    outside 0..255 raise DataFormatError, as clipping them would change the image."""
    values = array
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            raise DataFormatError(
                f"{name}: the image array holds {int(array.size - finite.sum())} NaN or infinite value(s); "
                "store finite floats in 0..1, or uint8 values 0..255"
            )
        if float(array.max()) <= 1.0:
            values = array * 255.0
    rounded = np.rint(values.astype(np.float64))
    low, high = float(rounded.min()), float(rounded.max())
    if low < 0 or high > 255:
        if array.dtype.kind == "f":
            raise DataFormatError(
                f"{name}: float image values {float(array.min()):g}..{float(array.max()):g} are neither in 0..1 nor "
                "in 0..255 (a normalised tensor?); store floats in 0..1, or uint8 values 0..255"
            )
        raise DataFormatError(
            f"{name}: {array.dtype} image values {low:.0f}..{high:.0f} fall outside 0..255; store 8-bit images as uint8, "
            "16-bit ones as uint16 arrays (scaled by 255 / 65535) or 16-bit PNGs"
        )
    return rounded.astype(np.uint8)


class ItemSplit(ImageFileSplit):
    """Items fetched by index: `fetch(i)` returns item i as an RGB PIL image (raising
    DataFormatError for a bad one), `name(i)` says where item i lives for messages."""

    def __init__(
        self,
        fetch: Callable[[int], Image.Image],
        labels: Sequence[int] | np.ndarray,
        preprocess: Preprocess,
        name: Callable[[int], str],
        workers: int | None = None,
        limit: PixelLimit = PixelLimit(),
        description: str = "",
    ) -> None:
        self.fetch = fetch
        self.name = name
        self.labels = np.asarray(labels, dtype=np.int64)
        self.preprocess = preprocess
        self.workers = workers or default_workers()
        self.origin = None
        self.limit = limit
        self._files: list[str] = []
        self.description = description

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"ItemSplit({self.description or 'items'}, n={len(self)}, preprocess={self.preprocess})"

    def decode(self, index: int) -> Image.Image:
        if not 0 <= index < len(self):
            raise HarnessError(f"{self.description or 'split'}: index {index} is outside 0..{len(self) - 1}")
        return self.fetch(int(index))
