"""timm's evaluation preprocessing (resize, centre crop, mean and std from a model's data
config, `timm.data.resolve_model_data_config`) computed in torch on batches of uint8
images: shared by the timm encoder plugin and `harness.evaluate` of a timm module."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import torch


def resize(x: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """Resize float images in 0..1 to `size` (antialiased bicubic / bilinear, as torchvision)."""
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if interpolation in ("bicubic", "bilinear"):
        x = F.interpolate(x, size=size, mode=interpolation, align_corners=False, antialias=True)
        return x.clamp_(0.0, 1.0) if interpolation == "bicubic" else x
    return F.interpolate(x, size=size, mode="nearest")


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel of a float batch [n, c, h, w]. The constants reach x's
    device by a non-blocking copy: a batch on a GPU does not wait here for the work queued
    before it."""
    import torch

    mean_t = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1).to(x.device, non_blocking=True)
    std_t = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1).to(x.device, non_blocking=True)
    return (x - mean_t) / std_t


def resize_and_crop(x: torch.Tensor, size: tuple[int, int], config: dict[str, Any]) -> torch.Tensor:
    """timm's eval transform (`transforms_imagenet_eval`) on a float batch: resize to
    size / crop_pct ("center": the shorter side, aspect kept; "squash": both sides;
    "border": the longer side, then padded with the mean colour), then centre crop."""
    crop_pct = config.get("crop_pct") or 0.875
    mode = config.get("crop_mode") or "center"
    scale = (math.floor(size[0] / crop_pct), math.floor(size[1] / crop_pct))
    height, width = x.shape[-2:]
    if mode == "squash":
        new = scale
    elif mode == "border" or scale[0] != scale[1]:
        ratio_h, ratio_w = height / scale[0], width / scale[1]
        ratio = max(ratio_h, ratio_w) if mode == "border" else min(ratio_h, ratio_w)
        new = (round(height / ratio), round(width / ratio))
    else:  # torchvision's Resize(int): the shorter side to `scale`, the longer truncated
        short, long = (height, width) if height <= width else (width, height)
        long_new = int(scale[0] * long / short)
        new = (scale[0], long_new) if height <= width else (long_new, scale[0])
    x = resize(x, new, config.get("interpolation", "bicubic"))
    if mode == "border":
        pad_h, pad_w = max(size[0] - new[0], 0), max(size[1] - new[1], 0)
        if pad_h or pad_w:
            fill = [round(255 * m) / 255 for m in config["mean"]]
            padded = x.new_empty(*x.shape[:2], new[0] + pad_h, new[1] + pad_w)
            padded[:] = x.new_tensor(fill).view(1, -1, 1, 1)
            padded[..., pad_h // 2 : pad_h // 2 + new[0], pad_w // 2 : pad_w // 2 + new[1]] = x
            x, new = padded, (new[0] + pad_h, new[1] + pad_w)
    top, left = int(round((new[0] - size[0]) / 2.0)), int(round((new[1] - size[1]) / 2.0))
    return x[..., top : top + size[0], left : left + size[1]]


class TimmPreprocess:
    """timm's eval transform of a model's data config, on batches of uint8 images:
    `resize_and_crop` (`crop`), or the whole image resized to the input size (for patch
    features), then mean and std. Its attributes (the config, and the fingerprint of this
    module's code) are part of an evaluated module's key."""

    def __init__(self, config: dict[str, Any], crop: bool) -> None:
        from harness.keys import code_fingerprint

        self.config = {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(config.items())}
        self.crop = crop
        self.code = code_fingerprint(__name__)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        config = self.config if self.crop else {**self.config, "crop_pct": 1.0, "crop_mode": "squash"}
        size = tuple(int(s) for s in config["input_size"][-2:])
        return normalize(resize_and_crop(images.float().div(255.0), size, config), config["mean"], config["std"])
