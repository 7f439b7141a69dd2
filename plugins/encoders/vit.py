"""Vision Transformers from timm: the shared feature extractor, `random-init` and `pretrained`.

`ViTEncoder` owns everything between uint8 images and features for any timm ViT:
bicubic resize to the model's input size, ImageNet normalisation, batching (automatic
batch size: halved and retried when the GPU runs out of memory), the arithmetic
(`precision`: float32, or bfloat16 autocast), the CLS token (global) or the patch
tokens (dense) of a chosen block (`layer`: 0-based, negative counts from the end,
default the last; followed by the final norm). Subclasses only say where the weights
come from (`load_weights`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from harness.device import Precision, forward_precision
from harness.errors import HarnessError
from harness.hookspecs import hookimpl
from harness.kinds import Encoder
from harness.preprocessing import normalize

from harness_plugins.encoders._shared import PrecisionParam, file_sha256, in_batches, load_weights_file

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Network:
    """The timm model an encoder builds: name, input side, patch side, extra arguments."""

    arch: str
    img_size: int
    patch_size: int | None
    model_kwargs: dict[str, Any]


class ViTEncoder(Encoder):
    """Base for timm ViT encoders.

    Global features (`embed`) resize the whole image to img_size (bicubic): the dataset
    readers already apply the benchmark's protocol (e.g. resize 256, centre crop 224), so
    cropping again here would crop twice. For images that arrive uncropped, crop_fraction
    < 1 applies DINO's evaluation transform here instead: shorter side resized to
    img_size / crop_fraction, centre crop img_size (0.875 = 224/256). Patch features
    (`embed_patches`) resize the whole image to img_size x img_size, so the patch grid
    covers the image and aligns with label maps.
    """

    supports_patches = True

    class Params(Encoder.Params):
        arch: str = Field("vit_small_patch16_224", description="timm model name")
        img_size: int = Field(224, ge=8, description="side of the square input in pixels")
        patch_size: int | None = Field(None, ge=1, description="patch side in pixels (default: the timm model's)")
        model_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra timm.create_model arguments, e.g. {depth: 4}")
        seed: int = Field(0, ge=0, description="seed of the weight initialisation")
        layer: int | None = Field(None, description="block whose tokens are the features (0-based, negative from the end; default the last)")
        crop_fraction: float = Field(1.0, gt=0.0, le=1.0, description="< 1: resize the shorter side to img_size / crop_fraction, centre crop (DINO's eval transform)")
        precision: PrecisionParam = "float32"
        batch_size: int | None = Field(
            None, ge=1, exclude=True, description="images per forward pass (default: automatic, halved on GPU out-of-memory)"
        )

    def __init__(self, name: str | None = None, /, **params: Any) -> None:
        super().__init__(name, **params)
        self.model: torch.nn.Module | None = None
        self.device = "cpu"

    @property
    def network(self) -> Network:
        """What `build_model` builds (DINO takes it from its recipe)."""
        p = self.params
        return Network(p.arch, p.img_size, p.patch_size, dict(p.model_kwargs))

    @property
    def architecture(self) -> str:
        """The network in a few words (timm name, input size, patch size, extra timm
        arguments): encoders with the same string compute at the same speed, so
        `harness bench` and `--dry-run` key throughputs by it."""
        net = self.network
        extra = "".join(f" {k}={v}" for k, v in sorted(net.model_kwargs.items()))
        return f"{net.arch} {net.img_size}px/{net.patch_size or 'default'}{extra}"

    @property
    def input_size(self) -> int:
        return self.network.img_size

    @property
    def precision(self) -> Precision:
        return self.params.precision

    def torch_module(self) -> torch.nn.Module | None:
        return self.model

    def build_model(self, drop_path: float = 0.0, dynamic: bool = False) -> torch.nn.Module:
        """A freshly initialised timm model, seeded by `seed` (without touching the global
        RNG); DINO's student takes `drop_path` and a `dynamic` input size (local crops)."""
        import timm
        import torch

        net = self.network
        kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0, "img_size": net.img_size}
        if net.patch_size:
            kwargs["patch_size"] = net.patch_size
        kwargs.update(net.model_kwargs)
        if drop_path:
            kwargs["drop_path_rate"] = drop_path
        if dynamic:
            kwargs["dynamic_img_size"] = True
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.params.seed)
            return timm.create_model(net.arch, **kwargs)

    def load_weights(self, model: torch.nn.Module, ctx: Any) -> None:
        """Put trained weights into `model` (default: keep the seeded initialisation)."""

    def prepare(self, ctx: Any = None) -> None:
        if self.model is not None:
            return
        from harness.device import default_device

        self.device = getattr(ctx, "device", None) or default_device()
        model = self.build_model()
        self.load_weights(model, ctx)
        self.model = model.to(self.device).eval()

    # ------------------------------------------------------------------ features
    def _resize(self, x: torch.Tensor, crop: bool) -> torch.Tensor:
        """Float images [n, 3, H, W] in 0..1 -> [n, 3, img_size, img_size] (see the class doc)."""
        import torch.nn.functional as F

        size, fraction = self.network.img_size, self.params.crop_fraction
        height, width = x.shape[-2:]
        if crop and fraction < 1.0:
            scale = size / fraction / min(height, width)
            new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
        else:
            new_h, new_w = size, size
        if (new_h, new_w) != (height, width):
            x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True).clamp_(0.0, 1.0)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        return x[..., top : top + size, left : left + size]

    def _tokens(self, images: torch.Tensor, crop: bool = False) -> torch.Tensor:
        """Normalised tokens [n, prefix + h*w, d] of block `layer` for one batch."""
        import torch

        if self.model is None:
            self.prepare()
        model = self.model
        x = self._resize(images.to(self.device, non_blocking=True).float().div_(255.0), crop)
        x = normalize(x, IMAGENET_MEAN, IMAGENET_STD)
        with torch.inference_mode(), forward_precision(self.device, self.precision):
            layer = self.params.layer
            if layer is None:
                tokens = model.forward_features(x)
            else:
                tokens = self._intermediate(model, x, layer % len(model.blocks))
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

    def _auto_batch_size(self) -> int:
        """Images per forward pass when `batch_size` is not set: by device and token count."""
        net = self.network
        tokens = (net.img_size // (net.patch_size or 16)) ** 2 + 1
        budget = 2**17 if self.device.startswith("cuda") else 2**14  # tokens per pass
        return int(max(8, min(1024, 2 ** int(budget / tokens).bit_length() // 2)))

    def _batched(self, images: torch.Tensor, fn: Any) -> torch.Tensor:
        if self.model is None:
            self.prepare()
        out, self._last_batch_size = in_batches(images, fn, self.params.batch_size, self._auto_batch_size(), self.device)
        return out

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self._batched(images, lambda batch: self._tokens(batch, crop=True)[:, 0])

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        def patches(batch: torch.Tensor) -> torch.Tensor:
            tokens = self._tokens(batch)[:, self.model.num_prefix_tokens :]
            side = int(round(tokens.shape[1] ** 0.5))
            return tokens.reshape(len(batch), side, side, -1)

        return self._batched(images, patches)


class RandomInitViT(ViTEncoder):
    """A timm ViT with seeded random weights: the paper's "random init." row."""

    group = "white-box"


WRAPPER_KEYS = ("teacher", "state_dict", "model", "module")
STRIP_PREFIXES = ("module.", "backbone.")


def read_checkpoint(path: Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """A backbone state dict from a safetensors or torch file, in timm's key names.

    Torch files are read with `torch.load(weights_only=True)`. DINO's layout is
    accepted: a `teacher` (default) or `student` entry (or `key`), `module.` and
    `backbone.` prefixes stripped, DINO head (`head.`) entries dropped. Every problem
    raises HarnessError naming the file.
    """
    import torch

    obj = load_weights_file(path, "the encoder's `checkpoint` parameter")
    if not isinstance(obj, dict):
        raise HarnessError(f"checkpoint {path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    if key is not None:
        if key not in obj:
            raise HarnessError(f"checkpoint {path}: no entry {key!r} (checkpoint_key); top-level keys: {sorted(map(str, obj))[:20]}")
        obj = obj[key]
    else:
        while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            wrapper = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if wrapper is None:
                raise HarnessError(
                    f"checkpoint {path}: holds no tensors at the top level and none of the entries "
                    f"{', '.join(WRAPPER_KEYS)}; set checkpoint_key (top-level keys: {sorted(map(str, obj))[:20]})"
                )
            obj = obj[wrapper]
    state: dict[str, torch.Tensor] = {}
    for name, value in obj.items():
        clean = str(name)
        stripped = True
        while stripped:
            stripped = False
            for prefix in STRIP_PREFIXES:
                if clean.startswith(prefix):
                    clean, stripped = clean[len(prefix) :], True
        if clean.startswith("head.") or clean == "head":
            continue  # DINO's projection head is not part of the backbone
        if not isinstance(value, torch.Tensor):
            raise HarnessError(f"checkpoint {path}: entry {name!r} is a {type(value).__name__}, not a tensor")
        state[clean] = value
    return state


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Load every tensor of `state` into `model`, or raise naming the file and the keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k} (checkpoint {list(state[k].shape)}, model {list(expected[k].shape)})"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped keys: {_listing(misshaped)}")
    if problems:
        raise HarnessError(f"checkpoint {path} does not fit {what}: " + "; ".join(problems))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


class PretrainedViT(ViTEncoder):
    """A timm ViT with weights from a local checkpoint (safetensors or torch state dict).

    The checkpoint's path is machine-local and stays out of the key; the key holds the
    file's sha256 instead, so the same weights give the same key wherever they lie.
    """

    group = "target"

    class Params(ViTEncoder.Params):
        checkpoint: str | None = Field(
            None, exclude=True, description="path of a .safetensors or torch state-dict file ($VARS and ~ expanded)"
        )
        checkpoint_env: str | None = Field(None, exclude=True, description="environment variable that overrides `checkpoint` when set")
        checkpoint_key: str | None = Field(
            None, description="entry holding the state dict (default: found among teacher, state_dict, model, module)"
        )

        @model_validator(mode="after")
        def _names_a_file(self) -> PretrainedViT.Params:
            if not self.checkpoint and not self.checkpoint_env:
                raise ValueError("pretrained needs `checkpoint`: the path of a .safetensors or torch state-dict file")
            return self

    @property
    def checkpoint_path(self) -> Path:
        """`checkpoint` ($VARS and ~ expanded); the variable `checkpoint_env` overrides it when set."""
        env = self.params.checkpoint_env
        raw = (os.environ.get(env) if env else None) or self.params.checkpoint or ""
        return Path(os.path.expandvars(raw)).expanduser()

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        path = self.checkpoint_path
        digest = file_sha256(path) if path.is_file() else f"missing:{path}"
        return {**described, "params": {**described["params"], "checkpoint_sha256": digest}}

    def load_weights(self, model: torch.nn.Module, ctx: Any) -> None:
        path = self.checkpoint_path
        state = read_checkpoint(path, self.params.checkpoint_key)
        net = self.network
        size = f"img_size {net.img_size}" + (f", patch_size {net.patch_size}" if net.patch_size else "")
        load_state_strict(model, state, path, f"{net.arch} ({size})")


@hookimpl
def register_encoders(register: Any) -> None:
    register("random-init", RandomInitViT)
    register("pretrained", PretrainedViT)
