"""Vision Transformers from timm: the shared feature extractor, `random-init` and `pretrained`.

`ViTEncoder` owns everything between uint8 images and features for any timm ViT:
bicubic resize to the model's input size, ImageNet normalisation, batching (automatic
batch size: halved and retried when the GPU runs out of memory), bf16 autocast on GPU,
the CLS token (global) or the patch tokens (dense) of a chosen block (`layer`: 0-based,
negative counts from the end, default the last; followed by the final norm). Subclasses
only say where the weights come from (`load_weights`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError

from harness.hookspecs import hookimpl
from harness.kinds import Encoder

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ViTEncoder(Encoder):
    """Base for timm ViT encoders. Params: arch, img_size, patch_size, layer, crop_fraction,
    batch_size, model_kwargs (extra timm arguments, e.g. depth).

    Global features (`embed`) resize the whole image to img_size (bicubic): the dataset
    readers already apply the benchmark's protocol (e.g. resize 256, centre crop 224), so
    cropping again here would crop twice. For images that arrive uncropped, crop_fraction
    < 1 applies DINO's evaluation transform here instead: shorter side resized to
    img_size / crop_fraction, centre crop img_size (0.875 = 224/256). Patch features
    (`embed_patches`) resize the whole image to img_size x img_size, so the patch grid
    covers the image and aligns with label maps.
    """

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
        crop_fraction: float = 1.0,
        **params: Any,
    ) -> None:
        if not 0.0 < float(crop_fraction) <= 1.0:
            raise TypeError(f"crop_fraction must be in (0, 1], got {crop_fraction!r}")
        super().__init__(
            name, arch=arch, img_size=img_size, patch_size=patch_size, layer=layer, seed=seed, crop_fraction=crop_fraction, **params
        )
        self.arch, self.img_size, self.patch_size = arch, img_size, patch_size
        self.layer, self.seed = layer, seed
        self.crop_fraction = float(crop_fraction)
        self.batch_size = batch_size
        self.model: torch.nn.Module | None = None
        self.device = "cpu"

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """Extra timm arguments of the architecture (e.g. depth)."""
        return dict(self.params.get("model_kwargs") or {})

    @property
    def architecture(self) -> str:
        """The network in a few words (timm name, input size, patch size, extra timm
        arguments): encoders with the same string compute at the same speed, so
        `harness bench` and `--dry-run` key throughputs by it."""
        extra = "".join(f" {k}={v}" for k, v in sorted(self.model_kwargs.items()))
        return f"{self.arch} {self.img_size}px/{self.patch_size or 'default'}{extra}"

    def build_model(self) -> torch.nn.Module:
        """A freshly initialised timm model, seeded by `seed` (without touching the global RNG)."""
        import timm
        import torch

        kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0, "img_size": self.img_size}
        if self.patch_size:
            kwargs["patch_size"] = self.patch_size
        kwargs.update(self.model_kwargs)
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
    def _resize(self, x: torch.Tensor, crop: bool) -> torch.Tensor:
        """Float images [n, 3, H, W] in 0..1 -> [n, 3, img_size, img_size] (see the class doc)."""
        import torch.nn.functional as F

        size = self.img_size
        height, width = x.shape[-2:]
        if crop and self.crop_fraction < 1.0:
            scale = size / self.crop_fraction / min(height, width)
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

    def _auto_batch_size(self) -> int:
        """Images per forward pass when `batch_size` is not set: by device and token count."""
        tokens = (self.img_size // (self.patch_size or 16)) ** 2 + 1
        budget = 2**17 if self.device.startswith("cuda") else 2**14  # tokens per pass
        return int(max(8, min(1024, 2 ** int(budget / tokens).bit_length() // 2)))

    def _batched(self, images: torch.Tensor, fn: Any) -> torch.Tensor:
        import torch

        if self.model is None:
            self.prepare()
        size = self.batch_size or self._auto_batch_size()
        out, i = [], 0
        while i < len(images):
            try:
                out.append(fn(images[i : i + size]).cpu())
                i += size
            except torch.cuda.OutOfMemoryError:
                if self.batch_size or size <= 1:
                    raise
                torch.cuda.empty_cache()
                size //= 2  # automatic batch size: back off and retry this batch
        self._last_batch_size = size
        return torch.cat(out) if out else fn(images[:0]).cpu()

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


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """The file's sha256, remembered per (path, size, mtime) within the process."""
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _FILE_HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _FILE_HASHES[memo] = digest.hexdigest()
    return _FILE_HASHES[memo]


WRAPPER_KEYS = ("teacher", "state_dict", "model", "module")
STRIP_PREFIXES = ("module.", "backbone.")


def read_checkpoint(path: Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """A backbone state dict from a safetensors or torch file, in timm's key names.

    Torch files are read with `torch.load(weights_only=True)`. DINO's layout is
    accepted: a `teacher` (default) or `student` entry (or `key`), `module.` and
    `backbone.` prefixes stripped, DINO head (`head.`) entries dropped. Every problem
    raises HarnessError naming the file.
    """
    import pickle

    import torch

    if not path.is_file():
        raise HarnessError(f"checkpoint {path} does not exist; set the encoder's `checkpoint` parameter to a local file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path))
        except Exception as exc:
            raise HarnessError(f"checkpoint {path}: not a readable safetensors file ({exc})") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise HarnessError(
                f"checkpoint {path}: torch.load(weights_only=True) refused it ({first}). Only tensors and plain "
                "containers are loaded; save the state dict alone, e.g. torch.save(model.state_dict(), path)"
            ) from None
        except Exception as exc:
            raise HarnessError(f"checkpoint {path}: cannot be read as a torch file ({type(exc).__name__}: {exc})") from None
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
    """A timm ViT with weights from a local checkpoint (safetensors or torch state dict)."""

    group = "target"

    def __init__(
        self,
        name: str | None = None,
        checkpoint: str | None = None,
        checkpoint_key: str | None = None,
        checkpoint_env: str | None = None,
        **params: Any,
    ) -> None:
        if not checkpoint and not checkpoint_env:
            raise TypeError("pretrained needs `checkpoint`: the path of a .safetensors or torch state-dict file")
        super().__init__(name, checkpoint=checkpoint, checkpoint_key=checkpoint_key, checkpoint_env=checkpoint_env, **params)
        self.checkpoint_key = checkpoint_key
        self.checkpoint_env = checkpoint_env

    @property
    def checkpoint_path(self) -> Path:
        """`checkpoint` ($VARS and ~ expanded); the variable `checkpoint_env` overrides it when set."""
        raw = (os.environ.get(self.checkpoint_env) if self.checkpoint_env else None) or self.params.get("checkpoint") or ""
        return Path(os.path.expandvars(str(raw))).expanduser()

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        params = {k: v for k, v in described["params"].items() if k not in ("checkpoint", "checkpoint_env")}
        path = self.checkpoint_path
        # the weights are identified by the file's content, not where it lies
        params["checkpoint_sha256"] = file_sha256(path) if path.is_file() else f"missing:{path}"
        return {**described, "params": params}

    def load_weights(self, model: torch.nn.Module, ctx: Any) -> None:
        path = self.checkpoint_path
        state = read_checkpoint(path, self.checkpoint_key)
        size = f"img_size {self.img_size}" + (f", patch_size {self.patch_size}" if self.patch_size else "")
        load_state_strict(model, state, path, f"{self.arch} ({size})")


@hookimpl
def register_encoders(register: Any) -> None:
    register("random-init", RandomInitViT)
    register("pretrained", PretrainedViT)
