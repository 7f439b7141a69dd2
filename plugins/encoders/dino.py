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
`{folder: PATH}` (every image file under PATH). `recipe` picks the values of the
training parameters (`_dino_recipes.RECIPES`); a training parameter that an instance
sets replaces the recipe's value. The weights are cached under
`<cache>/weights/<weights key>/`, the key hashing everything that determines them: the
resolved training config, the seed, the data (the generator instance's whole
description, its code included, or the folder path) and this plugin's code. Training
writes a checkpoint every `checkpoint_every` steps and resumes from it; `harness train
NAME` under `torchrun` trains with DDP. Evaluation uses the teacher's backbone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

from pydantic import Field

from harness.errors import HarnessError
from harness.hookspecs import hookimpl
from harness.keys import stable_hash
from harness.kinds import GeneratorRef, Params, TrainingCost
from harness_plugins.encoders._dino_recipes import DEFAULT_CHECKPOINT_EVERY, RECIPES
from harness_plugins.encoders.vit import Network, ViTEncoder

if TYPE_CHECKING:
    import torch

    from harness.runner.context import RunContext


def recipe_value(description: str, **constraints: Any) -> Any:
    """A training parameter: left out, it takes the recipe's value (shown as None)."""
    return Field(None, description=f"{description} (default: the recipe's)", **constraints)


class FolderData(Params):
    """Training images read from a folder instead of rendered by a generator."""

    folder: str = Field(description="folder whose image files (recursively) are the training set; ~ and $VARS expanded")


class DINOEncoder(ViTEncoder):
    """A ViT trained with DINO on a generator or an image folder."""

    trainable: ClassVar[bool] = True
    group = "procedural"

    class Params(ViTEncoder.Params):
        """`data` and `recipe`, then the training parameters: each one left out takes the
        recipe's value (its default is shown as None), one that is set replaces it; the
        run options at the end change how training runs, not what it produces."""

        data: GeneratorRef | FolderData = Field(description="a generator instance name, or {folder: PATH}")
        recipe: Literal["paper", "tiny"] = Field("tiny", description="paper: DINO's ViT-S/16 ImageNet recipe; tiny: minutes on a CPU")
        # the network (ViTEncoder's parameters, here the recipe's by default)
        arch: str = recipe_value("timm model name")
        img_size: int = recipe_value("side of the global crops and of evaluation images", ge=8)
        patch_size: int = recipe_value("patch side in pixels", ge=1)
        model_kwargs: dict[str, Any] = recipe_value("extra timm.create_model arguments, e.g. {depth: 4}")
        # the DINO head and loss
        out_dim: int = recipe_value("dimension of the head's output (prototypes)", ge=1)
        hidden_dim: int = recipe_value("width of the head's MLP", ge=1)
        bottleneck_dim: int = recipe_value("width of the head's bottleneck before the last layer", ge=1)
        head_layers: int = recipe_value("layers of the head's MLP", ge=1)
        norm_last_layer: bool = recipe_value("keep the norm of the head's weight-normalised last layer fixed")
        momentum_teacher: float = recipe_value("teacher EMA momentum at the start (cosine to 1)", ge=0.0, le=1.0)
        teacher_temp: float = recipe_value("teacher temperature after its warm-up", gt=0.0)
        warmup_teacher_temp: float = recipe_value("teacher temperature at the start of its warm-up", gt=0.0)
        warmup_teacher_temp_epochs: int = recipe_value("epochs of the teacher temperature warm-up", ge=0)
        student_temp: float = recipe_value("student temperature", gt=0.0)
        center_momentum: float = recipe_value("momentum of the teacher output's centre", ge=0.0, le=1.0)
        # optimisation
        lr: float = recipe_value("peak learning rate per 256 images (scaled by train_batch_size / 256)", gt=0.0)
        min_lr: float = recipe_value("learning rate at the end of the cosine schedule", ge=0.0)
        warmup_epochs: float = recipe_value("epochs of linear learning-rate warm-up", ge=0.0)
        weight_decay: float = recipe_value("weight decay at the start (cosine to weight_decay_end)", ge=0.0)
        weight_decay_end: float = recipe_value("weight decay at the end", ge=0.0)
        clip_grad: float = recipe_value("per-parameter gradient norm limit (0: no clipping)", ge=0.0)
        drop_path: float = recipe_value("stochastic depth rate of the student", ge=0.0, lt=1.0)
        freeze_last_layer: float = recipe_value("epochs during which the head's last layer is frozen", ge=0.0)
        train_batch_size: int = recipe_value("images per step, over all processes", ge=1)
        compile: bool = recipe_value("run the student and the teacher under torch.compile (on a GPU, fused kernels; not bit for bit an eager run)")
        epochs: int = recipe_value("epochs of training", ge=1)
        steps: int | None = recipe_value("total steps (null: epochs x steps_per_epoch)", ge=1)
        # data and augmentation
        dataset_size: int | None = recipe_value("images per epoch (null: an endless stream of fresh images)", ge=1)
        steps_per_epoch: int | None = recipe_value("steps per epoch (null: dataset_size // train_batch_size)", ge=1)
        source_size: int = recipe_value("side at which images are rendered or loaded before cropping", ge=8)
        global_crops_scale: tuple[float, float] = recipe_value("area range of the 2 global crops")
        local_crops_number: int = recipe_value("local crops per image", ge=0)
        local_crop_size: int = recipe_value("side of the local crops", ge=1)
        local_crops_scale: tuple[float, float] = recipe_value("area range of the local crops")
        blur_sigma: tuple[float, float] = recipe_value("Gaussian blur sigma range in pixels at 224 px")
        blur_sigma_scale: float | None = recipe_value("factor on blur_sigma (null: img_size / 224)", gt=0.0)
        data_seed: int | None = recipe_value("stream of the generator / subset of the folder (null: seed)", ge=0)
        # how training runs, not what it produces: in no key
        checkpoint_every: int | None = Field(None, ge=1, exclude=True, description="steps between checkpoints (null: 1000 for paper, 100 for tiny)")
        num_workers: int | None = Field(None, ge=0, exclude=True, description="DataLoader workers (null: 0 on a CPU, up to 8 on a GPU)")
        memory_cache_mb: float | None = Field(None, ge=0.0, exclude=True, description="hold a finite dataset in memory up to this size (null: 1024)")

    def __init__(self, name: str | None = None, /, **params: Any) -> None:
        super().__init__(name, **params)
        self.group = "realistic" if isinstance(self.params.data, FolderData) else "procedural"
        self.training_info: dict[str, Any] = {}
        self.step_callback: Callable[[int, float], None] | None = None  # called after every step

    # ------------------------------------------------------------------ identity
    def training_config(self) -> dict[str, Any]:
        """Every hyperparameter of training: the recipe's values, those this instance
        sets, the seed, and the defaults that depend on others resolved."""
        chosen = self.params.model_fields_set & set(RECIPES[self.params.recipe])
        cfg = {**RECIPES[self.params.recipe], **{key: getattr(self.params, key) for key in chosen}}
        cfg["model_kwargs"] = dict(cfg["model_kwargs"])
        cfg["seed"] = self.params.seed
        cfg["data_seed"] = self.params.seed if cfg["data_seed"] is None else int(cfg["data_seed"])
        if cfg["blur_sigma_scale"] is None:
            cfg["blur_sigma_scale"] = int(cfg["img_size"]) / 224.0
        for key in ("global_crops_scale", "local_crops_scale", "blur_sigma"):
            cfg[key] = [float(v) for v in cfg[key]]
        return cfg

    @property
    def network(self) -> Network:
        cfg = self.training_config()
        return Network(cfg["arch"], int(cfg["img_size"]), cfg["patch_size"], cfg["model_kwargs"])

    def weights_description(self) -> dict[str, Any]:
        """What determines the trained weights: the plugin and its code, the training
        config and the data's whole description (evaluation options left out)."""
        described = super().describe()
        return {
            "plugin": described["plugin"],
            "version": described["version"],
            "code": described["code"],
            "train": self.training_config(),
            "data": described["params"]["data"],
        }

    @property
    def weights_key(self) -> str:
        return stable_hash(self.weights_description())

    def describe(self) -> dict[str, Any]:
        evaluation = {"layer": self.params.layer, "crop_fraction": self.params.crop_fraction, "precision": self.params.precision}
        return {**self.weights_description(), **evaluation}

    def weights_dir(self, ctx: RunContext | None = None) -> Path:
        if ctx is not None:
            return ctx.cache_path("weights", self.weights_key)
        from harness.cache import cache_root

        return cache_root() / "weights" / self.weights_key

    @property
    def data_label(self) -> str:
        """The generator instance's name or the folder, for the leaderboard."""
        data = self.params.data
        return data.folder if isinstance(data, FolderData) else str(data)

    @property
    def checkpoint_every(self) -> int:
        return self.params.checkpoint_every or DEFAULT_CHECKPOINT_EVERY[self.params.recipe]

    # ------------------------------------------------------------------ data
    def open_source(self) -> Any:
        """The training images: a `GeneratorSource` or a `FolderSource`."""
        from harness_plugins.encoders._dino_data import FolderSource, GeneratorSource

        cfg = self.training_config()
        size = int(cfg["source_size"])
        data = self.params.data
        if isinstance(data, FolderData):
            root = Path(os.path.expandvars(data.folder)).expanduser()
            return FolderSource(root, size, limit=cfg["dataset_size"], seed=cfg["data_seed"])
        cache_mb = self.params.memory_cache_mb
        cache_bytes = int((1024 if cache_mb is None else cache_mb) * 2**20)
        length = None if cfg["dataset_size"] is None else int(cfg["dataset_size"])
        return GeneratorSource(self.resolve(data), str(data), cfg["data_seed"], size, length, cache_bytes)

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
        return cfg

    # ------------------------------------------------------------------ the Encoder interface
    def training_cost(self) -> TrainingCost:
        """Images the training will see (steps x global batch); None when they depend on
        the size of an image folder not yet read."""
        cfg = self.training_config()
        batch = int(cfg["train_batch_size"])
        images: int | None
        if cfg["steps"] is not None:
            images = int(cfg["steps"]) * batch
        elif cfg["steps_per_epoch"] is not None:
            images = int(cfg["epochs"]) * int(cfg["steps_per_epoch"]) * batch
        elif cfg["dataset_size"] is not None:
            images = int(cfg["epochs"]) * max(1, int(cfg["dataset_size"]) // batch) * batch
        else:
            images = None
        return TrainingCost(images=images, recipe=self.params.recipe, batch_size=batch)

    def scaled_params(self, factor: float) -> dict[str, Any]:
        """`factor` times the images (`dataset_size`) and the steps; the epochs stay, so a
        step still sees the same share of an epoch and the schedules keep their shape."""
        cfg = self.training_config()
        overrides = {key: max(1, round(int(cfg[key]) * factor)) for key in ("steps", "steps_per_epoch", "dataset_size") if cfg[key] is not None}
        if not overrides:
            raise HarnessError(f"encoder {self.name!r}: an endless stream without steps has no budget to scale; set `steps`")
        return overrides

    def load_weights(self, model: torch.nn.Module, ctx: RunContext | None) -> None:
        from harness.device import default_device
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
        return {"weights_key": self.weights_key, "data": self.data_label, **{k: info[k] for k in keys if k in info}}

    def measure_training(
        self, ctx: RunContext | None, steps: int, batch_size: int | None, budget_s: float | None, profile: bool = False,
        compiled: bool = False, prerendered: str | None = None,
    ) -> dict[str, Any]:
        """Training images per second over `steps` steps of `batch_size` images (default:
        the recipe's) after one warm-up step (with `budget_s`, only as many as fit in it),
        end to end (data + augmentation + step) and for the model alone, beside DINO's own
        data path; with `compiled`, the model alone under torch.compile too; with
        `prerendered` (`png` or `jpeg`), end to end on the generator's images written as
        such files first. Nothing is saved."""
        from harness.device import default_device
        from harness_plugins.encoders._dino_bench import throughput

        device = getattr(ctx, "device", None) or default_device()
        return throughput(self, device, steps, batch_size, budget_s, profile, compiled, prerendered)


@hookimpl
def register_encoders(register: Any) -> None:
    register("dino", DINOEncoder)
