"""Vision Transformers from timm: the shared feature extractor and `random-init`.

`ViTEncoder` owns everything between uint8 images and features for any timm ViT:
bicubic resize to the model's input size, ImageNet normalisation, batching, bf16
autocast on GPU, the CLS token (global) or the patch tokens (dense) of a chosen block
(`layer`, default the last, followed by the final norm). Subclasses only say where the
weights come from (`load_weights`).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from harness.hookspecs import hookimpl
from harness.kinds import Encoder

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ViTEncoder(Encoder):
    """Base for timm ViT encoders. Params: arch, img_size, patch_size, layer, batch_size."""

    supports_patches = True

    def __init__(
        self,
        name: str | None = None,
        arch: str = "vit_small_patch16_224",
        img_size: int = 224,
        patch_size: int | None = None,
        layer: int | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        **params: Any,
    ) -> None:
        super().__init__(name, arch=arch, img_size=img_size, patch_size=patch_size, layer=layer, seed=seed, **params)
        self.arch, self.img_size, self.patch_size = arch, img_size, patch_size
        self.layer, self.seed = layer, seed
        self.batch_size = batch_size
        self.model: torch.nn.Module | None = None
        self.device = "cpu"

    def build_model(self) -> torch.nn.Module:
        """A freshly initialised timm model, seeded by `seed` (without touching the global RNG)."""
        import timm
        import torch

        kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0, "img_size": self.img_size}
        if self.patch_size:
            kwargs["patch_size"] = self.patch_size
        kwargs.update(self.params.get("model_kwargs", {}))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return timm.create_model(self.arch, **kwargs)

    def load_weights(self, model: torch.nn.Module, ctx: Any) -> None:
        """Put trained weights into `model` (default: keep the seeded initialisation)."""

    def prepare(self, ctx: Any = None) -> None:
        if self.model is not None:
            return
        from harness.context import default_device

        self.device = getattr(ctx, "device", None) or default_device()
        model = self.build_model()
        self.load_weights(model, ctx)
        self.model = model.to(self.device).eval()

    # ------------------------------------------------------------------ features
    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised tokens [n, prefix + h*w, d] of block `layer` for one batch."""
        import torch
        import torch.nn.functional as F

        if self.model is None:
            self.prepare()
        model = self.model
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        if x.shape[-2:] != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bicubic", align_corners=False, antialias=True)
            x = x.clamp_(0.0, 1.0)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.startswith("cuda") else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            if self.layer is None:
                tokens = model.forward_features(x)
            else:
                tokens = self._intermediate(model, x, self.layer % len(model.blocks))
        return tokens.float()

    @staticmethod
    def _intermediate(model: Any, x: torch.Tensor, last: int) -> torch.Tensor:
        """Tokens after block `last` (0-based), through the final norm as for the last block."""
        x = model.patch_embed(x)
        x = model._pos_embed(x)
        x = model.patch_drop(x)
        x = model.norm_pre(x)
        for block in model.blocks[: last + 1]:
            x = block(x)
        return model.norm(x)

    def _batched(self, images: torch.Tensor, fn: Any) -> torch.Tensor:
        import torch

        size = self.batch_size or (512 if self.device.startswith("cuda") else 128)
        return torch.cat([fn(images[i : i + size]).cpu() for i in range(0, len(images), size)])

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self._batched(images, lambda batch: self._tokens(batch)[:, 0])

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        def patches(batch: torch.Tensor) -> torch.Tensor:
            tokens = self._tokens(batch)[:, self.model.num_prefix_tokens :]
            side = int(round(tokens.shape[1] ** 0.5))
            return tokens.reshape(len(batch), side, side, -1)

        return self._batched(images, patches)


class RandomInitViT(ViTEncoder):
    """A timm ViT with seeded random weights: the paper's "random init." row."""

    group = "white-box"


@hookimpl
def register_encoders(register: Any) -> None:
    register("random-init", RandomInitViT)
