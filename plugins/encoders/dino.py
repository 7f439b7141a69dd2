"""`dino`: a timm ViT trained with DINO on a procedural generator or an image folder.

    dino-vit-s16-shaders-kml-mixup:
      plugin: dino
      params: {data: shaders-kml-mixup, recipe: paper}          # the paper's ViT-S/16 row
    dino-tiny-dead-leaves:
      plugin: dino
      params: {data: dead-leaves, recipe: tiny, steps: 300}     # minutes on a laptop CPU
    places-dino-vit-s16:
      plugin: dino
      group: realistic
      params: {data: {folder: ~/data/places365/train}, recipe: paper}

`data` is a generator instance (streamed: image i of the stream is
`generator.sample(data_seed, 1, source_size, start=i)`, nothing is written to disk) or
`{folder: PATH}` (every image file under PATH). `recipe` picks the defaults (`RECIPES`);
every recipe key can be overridden as a parameter. The weights are cached under
`<cache>/weights/<weights key>/`, the key hashing every parameter that determines them
(the recipe's values, the architecture, the seed, and the data: the generator's registry
entry with nested generator instances expanded, or the folder path). Training writes a
checkpoint every `checkpoint_every` steps and resumes from it; `harness train NAME`
under `torchrun` trains with DDP. Evaluation uses the teacher's backbone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from harness.errors import HarnessError
from harness.hookspecs import hookimpl
from harness.kinds import stable_hash
from harness_plugins.encoders.vit import ViTEncoder

if TYPE_CHECKING:
    import torch

# The paper: DINO's ImageNet defaults for ViT-S/16 at 224 px (REFERENCE.md, "Training").
PAPER: dict[str, Any] = {
    "arch": "vit_small_patch16_224",
    "img_size": 224,
    "patch_size": 16,
    "model_kwargs": {},
    "out_dim": 65536,
    "hidden_dim": 2048,
    "bottleneck_dim": 256,
    "head_layers": 3,
    "norm_last_layer": True,
    "momentum_teacher": 0.996,
    "teacher_temp": 0.04,
    "warmup_teacher_temp": 0.04,
    "warmup_teacher_temp_epochs": 0,
    "student_temp": 0.1,
    "center_momentum": 0.9,
    "lr": 5e-4,  # per 256 images: the learning rate is lr * train_batch_size / 256
    "min_lr": 1e-6,
    "warmup_epochs": 10,
    "weight_decay": 0.04,
    "weight_decay_end": 0.4,
    "clip_grad": 3.0,
    "drop_path": 0.1,
    "freeze_last_layer": 1,
    "train_batch_size": 512,  # global, over all processes
    "epochs": 100,
    "steps": None,  # total steps; default epochs x steps_per_epoch
    "dataset_size": 1_300_000,  # images per epoch (the paper caps its training sets at 1.3M)
    "steps_per_epoch": None,  # default dataset_size // train_batch_size
    "source_size": 256,  # images are rendered / loaded at this size, then cropped
    "global_crops_scale": [0.4, 1.0],
    "local_crops_number": 8,
    "local_crop_size": 96,
    "local_crops_scale": [0.05, 0.4],
    "blur_sigma": [0.1, 2.0],
    "blur_sigma_scale": None,  # default img_size / 224
    "data_seed": None,  # default seed
}

# A CPU recipe (about 2.5 minutes on 2 cores): a 4-block ViT-tiny (width 192, 3 heads) at
# 32 px with patch 8, a small head, 4 local crops of 16 px, 4096 images rendered once at
# 96 px (crops are area-downsampled from them) and kept in memory, 5 epochs (320 steps of
# 64), teacher momentum 0.99 for the short schedule. It beats the same architecture at
# random init on the digits kNN task (docs/encoders.md, "Acceptance").
TINY: dict[str, Any] = {
    **PAPER,
    "arch": "vit_tiny_patch16_224",
    "img_size": 32,
    "patch_size": 8,
    "model_kwargs": {"depth": 4},
    "out_dim": 1024,
    "hidden_dim": 512,
    "bottleneck_dim": 128,
    "lr": 2e-3,
    "min_lr": 1e-5,
    "warmup_epochs": 1,
    "weight_decay_end": 0.1,
    "drop_path": 0.0,
    "train_batch_size": 64,
    "epochs": 5,
    "momentum_teacher": 0.99,
    "dataset_size": 4096,
    "source_size": 96,
    "local_crops_number": 4,
    "local_crop_size": 16,
}

RECIPES: dict[str, dict[str, Any]] = {"paper": PAPER, "tiny": TINY}

# Parameters that change how training runs, not what it produces (not in the key).
RUN_OPTIONS = {"checkpoint_every": None, "num_workers": None, "memory_cache_mb": None}
DEFAULT_CHECKPOINT_EVERY = {"paper": 1000, "tiny": 100}


def _expand_generator(name: str, registry: Any, seen: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A generator instance's registry entry with nested generator instances expanded."""
    spec = registry.spec("generator", name) if registry is not None else None
    if spec is None or name in seen:
        return {"generator": name}
    seen = seen | {name}

    def expand(value: Any) -> Any:
        if isinstance(value, str) and registry.spec("generator", value) is not None:
            return _expand_generator(value, registry, seen)
        if isinstance(value, list):
            return [expand(v) for v in value]
        if isinstance(value, dict):
            return {k: expand(v) for k, v in value.items()}
        return value

    return {"generator": name, "plugin": spec.plugin, "params": expand(dict(spec.params))}


def _current_registry() -> Any:
    from harness.registry import active_registry

    try:
        return active_registry()
    except HarnessError:
        return None


class DINOEncoder(ViTEncoder):
    """A ViT trained with DINO on a generator or image folder (params: data, recipe, overrides)."""

    trainable: ClassVar[bool] = True
    group = "procedural"
    version: ClassVar[int] = 1

    def __init__(
        self,
        name: str | None = None,
        data: Any = None,
        recipe: str = "tiny",
        layer: int | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        crop_fraction: float = 1.0,
        **params: Any,
    ) -> None:
        if data is None:
            raise TypeError("dino needs `data`: a generator instance name, or {folder: PATH} for an image folder")
        if recipe not in RECIPES:
            raise TypeError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
        unknown = sorted(set(params) - set(RECIPES[recipe]) - set(RUN_OPTIONS))
        if unknown:
            known = sorted(set(RECIPES[recipe]) | set(RUN_OPTIONS) | {"data", "recipe", "layer", "batch_size", "seed", "crop_fraction"})
            raise TypeError(f"unknown parameter(s) {unknown} for dino; known: {', '.join(known)}")
        if isinstance(data, dict) and set(data) != {"folder"}:
            raise TypeError(f"`data` must be a generator instance name or {{folder: PATH}}, got {data!r}")
        self.run_options = {k: params.pop(k) for k in list(params) if k in RUN_OPTIONS}
        cfg = {**RECIPES[recipe], **params}
        overrides = {k: v for k, v in params.items() if k not in ("arch", "img_size", "patch_size")}
        super().__init__(
            name, arch=cfg["arch"], img_size=int(cfg["img_size"]), patch_size=cfg["patch_size"], layer=layer,
            batch_size=batch_size, seed=seed, crop_fraction=crop_fraction, data=data, recipe=recipe, **overrides,
        )
        self.recipe = recipe
        self.data = data
        self.cfg = cfg
        self.group = "realistic" if isinstance(data, dict) else "procedural"
        self.training_info: dict[str, Any] = {}
        # the registry this instance is resolved in: `data` names a generator instance there
        self._registry = _current_registry()
        self.step_callback: Callable[[int, float], None] | None = None  # called after every step

    # ------------------------------------------------------------------ identity
    def training_config(self) -> dict[str, Any]:
        """Every hyperparameter of training, defaults resolved."""
        cfg = dict(self.cfg)
        cfg["seed"] = self.seed
        cfg["data_seed"] = self.seed if cfg["data_seed"] is None else int(cfg["data_seed"])
        if cfg["blur_sigma_scale"] is None:
            cfg["blur_sigma_scale"] = int(cfg["img_size"]) / 224.0
        for key in ("global_crops_scale", "local_crops_scale", "blur_sigma"):
            cfg[key] = [float(v) for v in cfg[key]]
        return cfg

    def data_description(self) -> dict[str, Any]:
        if isinstance(self.data, dict):
            return {"folder": str(self.data["folder"])}
        return _expand_generator(str(self.data), self._registry)

    def weights_description(self) -> dict[str, Any]:
        return {
            "plugin": self.plugin_name,
            "version": self.version,
            "train": self.training_config(),
            "data": self.data_description(),
        }

    @property
    def weights_key(self) -> str:
        return stable_hash(self.weights_description())

    def describe(self) -> dict[str, Any]:
        return {**self.weights_description(), "layer": self.layer, "crop_fraction": self.crop_fraction}

    def weights_dir(self, ctx: Any = None) -> Path:
        if ctx is not None and hasattr(ctx, "cache_path"):
            return ctx.cache_path("weights", self.weights_key)
        from harness.cache import cache_root

        return cache_root() / "weights" / self.weights_key

    # ------------------------------------------------------------------ model and data
    def build_model(self, drop_path: float = 0.0, dynamic: bool = False) -> torch.nn.Module:
        import timm
        import torch

        kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0, "img_size": int(self.cfg["img_size"])}
        if self.cfg["patch_size"]:
            kwargs["patch_size"] = int(self.cfg["patch_size"])
        kwargs.update(self.model_kwargs)
        if drop_path:
            kwargs["drop_path_rate"] = drop_path
        if dynamic:
            kwargs["dynamic_img_size"] = True  # local crops are smaller than global ones
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return timm.create_model(self.cfg["arch"], **kwargs)

    def open_source(self, ctx: Any = None) -> Any:
        """The training images: a `GeneratorSource` or a `FolderSource`."""
        from harness_plugins.encoders._dino_train import FolderSource, GeneratorSource

        cfg = self.training_config()
        size = int(cfg["source_size"])
        if isinstance(self.data, dict):
            root = Path(os.path.expandvars(str(self.data["folder"]))).expanduser()
            return FolderSource(root, size, limit=cfg["dataset_size"], seed=cfg["data_seed"])
        cache_mb = self.run_options.get("memory_cache_mb")
        cache_bytes = int((1024 if cache_mb is None else cache_mb) * 2**20)
        length = None if cfg["dataset_size"] is None else int(cfg["dataset_size"])
        return GeneratorSource(self.resolve_generator(ctx), str(self.data), cfg["data_seed"], size, length, cache_bytes)

    def resolve_generator(self, ctx: Any = None) -> Any:
        name = str(self.data)
        registry = self._registry or getattr(ctx, "registry", None)
        try:
            if registry is not None:
                return registry.create("generator", name)
            from harness.api import get_generator

            return get_generator(name)
        except Exception as exc:
            broken = getattr(getattr(registry, "plugins", None), "broken", []) if registry is not None else []
            hint = f" (plugins that failed to load: {', '.join(b.source for b in broken)})" if broken else ""
            raise HarnessError(
                f"encoder {self.name!r}: cannot resolve its training data generator {name!r}: {exc}{hint}"
            ) from None

    def resolved_schedule(self, source: Any) -> dict[str, Any]:
        """The training config with steps_per_epoch, steps and dataset_size made concrete."""
        cfg = self.training_config()
        size = cfg["dataset_size"]
        if getattr(source, "length", None) is not None:
            size = source.length if size is None else min(int(size), source.length)
        cfg["dataset_size"] = None if size is None else int(size)
        gb = int(cfg["train_batch_size"])
        if cfg["steps_per_epoch"] is None:
            if cfg["dataset_size"] is None:
                raise HarnessError(f"encoder {self.name!r}: set dataset_size or steps_per_epoch (an endless stream has no epochs)")
            cfg["steps_per_epoch"] = max(1, cfg["dataset_size"] // gb)
        if cfg["dataset_size"] is not None and cfg["dataset_size"] < gb:
            raise HarnessError(f"encoder {self.name!r}: {cfg['dataset_size']} training images are fewer than one batch ({gb})")
        if cfg["steps"] is None:
            cfg["steps"] = int(cfg["epochs"]) * int(cfg["steps_per_epoch"])
        cfg["steps"] = int(cfg["steps"])
        if cfg["steps"] < 1:
            raise HarnessError(f"encoder {self.name!r}: steps must be at least 1")
        return cfg

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return dict(self.cfg.get("model_kwargs") or {})

    @property
    def training_images(self) -> int | None:
        """Images the training will see (steps x global batch), for `--dry-run`'s cost;
        None when it depends on the size of an image folder not yet read."""
        cfg = self.training_config()
        batch = int(cfg["train_batch_size"])
        if cfg["steps"] is not None:
            return int(cfg["steps"]) * batch
        per_epoch = cfg["steps_per_epoch"]
        if per_epoch is None:
            if cfg["dataset_size"] is None:
                return None
            per_epoch = max(1, int(cfg["dataset_size"]) // batch)
        return int(cfg["epochs"]) * int(per_epoch) * batch

    # ------------------------------------------------------------------ prepare
    def load_weights(self, model: torch.nn.Module, ctx: Any) -> None:
        from harness.context import default_device
        from harness_plugins.encoders._dino_run import train_or_load

        device = getattr(ctx, "device", None) or default_device()
        state, info = train_or_load(self, ctx, device)
        model.load_state_dict(state)
        self.training_info = info

    def training_summary(self) -> dict[str, Any] | None:
        info = self.training_info
        if not info:
            return None
        keys = ("steps", "images_seen", "wall_time_s", "images_per_s", "device", "world_size", "loss", "resumed_from")
        return {"weights_key": self.weights_key, "data": str(self.data), **{k: info[k] for k in keys if k in info}}

    def training_throughput(
        self, ctx: Any = None, steps: int = 10, train_batch_size: int | None = None, budget_s: float | None = None
    ) -> dict[str, Any]:
        """Training images per second over `steps` steps (after one warm-up step; with
        `budget_s`, only as many as fit in it), end to end (data + augmentation + step) and
        for the model alone, beside DINO's own data path. Nothing is saved."""
        from harness.context import default_device
        from harness_plugins.encoders._dino_run import throughput

        device = getattr(ctx, "device", None) or default_device()
        return throughput(self, ctx, device, steps, train_batch_size, budget_s)


@hookimpl
def register_encoders(register: Any) -> None:
    register("dino", DINOEncoder)
