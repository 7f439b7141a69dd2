"""White-box encoders: features computed by a fixed formula, no training."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.hookspecs import hookimpl
from harness.kinds import Encoder

if TYPE_CHECKING:
    import torch


class RGBEncoder(Encoder):
    """Downsampled pixels: global features = the image at `size` x `size` (area-averaged),
    patch features = the mean colour of each `patch` x `patch` cell."""

    group = "white-box"
    supports_patches = True

    def __init__(self, name: str | None = None, size: int = 16, patch: int = 16, **params: Any) -> None:
        super().__init__(name, size=size, patch=patch, **params)
        self.size, self.patch = size, patch

    def _pixels(self, images: torch.Tensor, size: int) -> torch.Tensor:
        import torch.nn.functional as F

        x = images.float().div(255.0)
        return F.interpolate(x, size=(size, size), mode="area") if x.shape[-1] != size or x.shape[-2] != size else x

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self._pixels(images, self.size)
        return (pixels - 0.5).flatten(1)

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        grid = max(1, images.shape[-1] // self.patch)
        return self._pixels(images, grid).permute(0, 2, 3, 1).contiguous()


@hookimpl
def register_encoders(register: Any) -> None:
    register("rgb", RGBEncoder)
