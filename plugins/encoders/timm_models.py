"""Any timm model as an encoder (`timm`): hub weights by name, or a local checkpoint.

`model` is a name from timm's registry, with or without a pretrained tag
(`vit_small_patch16_224.dino`, `resnet50.a1_in1k`), or `hf-hub:ORG/REPO` (its config.json
names the architecture). Weights come from the Hugging Face hub (`timm/<name>` or the
repo, through huggingface_hub's cache, `revision` optional) or from `checkpoint`
(safetensors, or a torch state dict read with `weights_only=True`). Either way the file
is read here and handed to timm as a state dict, so timm's own conversion
(position-embedding resampling, format filters) applies, and the load is strict: a file
that does not fit the model is an error naming both.

Preprocessing follows the model's data config (`timm.data.resolve_model_data_config`):
input size, interpolation, `crop_pct` / `crop_mode`, mean and std, computed in torch on
batches of uint8 images. Global features are the model's pooled output
(`forward_head(forward_features(x), pre_logits=True)`); patch features come from
`forward_intermediates`, for ViTs and CNNs alike. The key holds the sha256 of the weights
file actually loaded and the data config.
"""

from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, model_validator

from harness.device import Precision, forward_precision
from harness.errors import HarnessError
from harness.hookspecs import hookimpl
from harness.kinds import Encoder
from harness.preprocessing import normalize, resize, resize_and_crop

from harness_plugins.encoders._shared import PrecisionParam, file_sha256, first_line, in_batches, load_weights_file
from harness_plugins.encoders._timm_hub import HUB_FILES, hub_model_config, hub_weights

if TYPE_CHECKING:
    import torch

WRAPPER_KEYS = ("state_dict", "model", "module", "teacher")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or a torch state dict (`weights_only=True`),
    unwrapped from a `state_dict` / `model` / `module` / `teacher` entry and with any
    `module.` prefix removed. Every problem is a HarnessError naming the file."""
    import torch

    obj = load_weights_file(path, "the timm encoder's `checkpoint`")
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        wrapper = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if wrapper is None:
            raise HarnessError(f"checkpoint {path}: no tensors, and none of the entries {', '.join(WRAPPER_KEYS)}")
        obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise HarnessError(f"checkpoint {path}: expected a state dict (names to tensors), got {type(obj).__name__}")
    state = {}
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise HarnessError(f"checkpoint {path}: entry {name!r} is a {type(value).__name__}, not a tensor")
        state[str(name).removeprefix("module.")] = value
    return state


class TimmEncoder(Encoder):
    """Any timm model, pretrained weights from the hub or a local checkpoint.

    Global features (`embed`): the data config's resize and centre crop (`crop_pct`,
    `crop_mode`), then the pooled pre-logits output. Patch features (`embed_patches`):
    the whole image resized to the input size (so the feature grid covers it and aligns
    with label maps), then the last feature map of `forward_intermediates` (ViT tokens
    after the final norm, CNN stage outputs), [n, h, w, c]. `layer` picks another
    feature level (blocks for ViTs, stages for CNNs); its global feature is the class
    token for token-pooled models, else the map's spatial mean. `layers` sweeps levels:
    the runner runs one instance per level, `<name>.layer<i>` (see `variants`).
    """

    group = "target"
    supports_patches = True

    class Params(Encoder.Params):
        model: str = Field(description="timm model name, optionally tagged (resnet50.a1_in1k, vit_small_patch16_224.dino), or hf-hub:ORG/REPO")
        pretrained: bool = Field(True, description="load pretrained weights (false: seeded random initialisation)")
        checkpoint: str | None = Field(
            None, exclude=True, description="local .safetensors or torch state-dict file instead of the hub ($VARS and ~ expanded)"
        )
        revision: str | None = Field(None, description="hub revision (branch, tag or commit) of the weights")
        img_size: int | None = Field(None, ge=8, description="input side (default: the model's data config); ViTs are built for it")
        crop_pct: float | None = Field(None, gt=0.0, le=1.0, description="centre-crop fraction for global features (default: the data config's)")
        model_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra timm.create_model arguments")
        layer: int | None = Field(None, description="feature level of forward_intermediates (0-based, negative from the end; default the last)")
        layers: Literal["all"] | Annotated[list[int], Field(min_length=1)] | None = Field(
            None, description="sweep of feature levels (`all`, or a list of `layer` values): one instance <name>.layer<i> per level"
        )
        seed: int = Field(0, ge=0, description="seed of the initialisation (only what the weights leave unset)")
        precision: PrecisionParam = "float32"
        batch_size: int | None = Field(
            None, ge=1, exclude=True, description="images per forward pass (default: automatic, halved on GPU out-of-memory)"
        )

        @model_validator(mode="after")
        def _one_source(self) -> TimmEncoder.Params:
            if self.checkpoint and (self.revision or not self.pretrained):
                raise ValueError("`checkpoint` gives the weights: leave out `revision` and `pretrained: false`")
            if self.layers is not None and self.layer is not None:
                raise ValueError("`layer` picks one feature level and `layers` sweeps several: set one of them")
            return self

    def __init__(self, name: str | None = None, /, **params: Any) -> None:
        super().__init__(name, **params)
        self.model: torch.nn.Module | None = None
        self.device = "cpu"
        self.data_config: dict[str, Any] | None = None

    # ------------------------------------------------------------ what is loaded
    def hub_config(self) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
        """(architecture, pretrained config, model arguments) of an `hf-hub:` model, else None."""
        return hub_model_config(self.params.model, self.params.revision) if self.params.model.startswith("hf-hub:") else None

    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's pretrained config of `model` (the default tag when it names none)."""
        from timm.models import get_pretrained_cfg, is_model, list_models, split_model_name_tag

        if self.params.model.startswith("hf-hub:"):
            return self.hub_config()[1]
        name = self.params.model
        arch, _ = split_model_name_tag(name)
        if not is_model(arch):
            close = difflib.get_close_matches(arch, list_models(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
            raise HarnessError(f"encoder {self.name!r}: timm has no model {arch!r}{hint}")
        try:
            cfg = get_pretrained_cfg(name)
        except RuntimeError as exc:
            raise HarnessError(f"encoder {self.name!r}: {exc} Tags: timm.list_pretrained('{arch}.*')") from None
        return cfg.to_dict() if cfg is not None else {}

    def resolved_data_config(self, config: dict[str, Any] | None = None) -> dict[str, Any]:
        """`config` (default: the one timm resolves from the pretrained config, which is
        what `prepare` gets from the model, without building it) with `img_size` and
        `crop_pct` applied."""
        from timm.data import resolve_data_config

        config = dict(config if config is not None else resolve_data_config(pretrained_cfg=self.pretrained_cfg()))
        if self.params.img_size:
            config["input_size"] = (3, self.params.img_size, self.params.img_size)
        if self.params.crop_pct:
            config["crop_pct"] = self.params.crop_pct
        return config

    @property
    def checkpoint_path(self) -> Path | None:
        raw = self.params.checkpoint
        return Path(os.path.expandvars(raw)).expanduser() if raw else None

    def weights_file(self) -> Path | None:
        """The file the weights come from: `checkpoint`, the hub file, or None (random init)."""
        if self.checkpoint_path is not None:
            return self.checkpoint_path
        if not self.params.pretrained:
            return None
        from timm.models._hub import hf_split

        cfg = self.pretrained_cfg()
        if not cfg.get("hf_hub_id"):
            raise HarnessError(
                f"encoder {self.name!r}: timm lists no hub weights for {self.params.model!r}; set `checkpoint:` to a local file"
            )
        repo, pinned = hf_split(cfg["hf_hub_id"])
        filenames = (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else HUB_FILES
        return hub_weights(self.params.model, repo, self.params.revision or pinned, filenames)

    def describe(self) -> dict[str, Any]:
        """Adds the weights' sha256 (the path stays out: it is local to a machine; a file
        that cannot be found gives a `missing:` marker, and `prepare` raises) and the
        data config, which timm's version could change."""
        described = super().describe()
        config = None  # stays None for an hf-hub: repo that is not in the cache
        try:
            config = {k: list(v) if isinstance(v, tuple) else v for k, v in self.resolved_data_config().items()}
            path = self.weights_file()
            digest = None if path is None else file_sha256(path) if path.is_file() else f"missing:{path.name}"
        except HarnessError:
            digest = f"missing:{self.params.model}"
        return {**described, "params": {**described["params"], "weights_sha256": digest, "data_config": config}}

    @property
    def architecture(self) -> str | None:
        """None while it cannot be known: an `hf-hub:` repo's config.json, which names it,
        not at hand (the cell's error says why; the dry run leaves the encoder unpriced)."""
        from timm.models import split_model_name_tag

        try:
            hub = self.hub_config()
        except HarnessError:
            return None
        extra = "".join(f" {k}={v}" for k, v in sorted(self.params.model_kwargs.items()))
        return f"{hub[0] if hub else split_model_name_tag(self.params.model)[0]} {self.input_size}px{extra}"

    @property
    def input_size(self) -> int:
        return int(self.resolved_data_config()["input_size"][-1])

    @property
    def precision(self) -> Precision:
        return self.params.precision

    def torch_module(self) -> torch.nn.Module | None:
        return self.model

    def feature_levels(self) -> int:
        """How many feature levels `forward_intermediates` offers (`layer` 0 to this - 1):
        from the prepared model, else from one built on the meta device (no weights, no
        memory)."""
        import torch

        model = self.model
        if model is None:
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                model = self._create(pretrained=False, **self._create_kwargs(self.pretrained_cfg()))
        return len(getattr(model, "feature_info", None) or [])

    def variants(self) -> dict[str, dict[str, Any]]:
        """With `layers`, one instance per feature level swept: `layer<i>` -> `layer: i`."""
        if self.params.layers is None:
            return {}
        levels = self.feature_levels()
        if not levels:
            raise HarnessError(f"encoder {self.name!r}: timm model {self.params.model!r} has no feature levels to sweep; remove `layers`")
        if self.params.layers == "all":
            chosen = list(range(levels))
        else:
            outside = [i for i in self.params.layers if not -levels <= i < levels]
            if outside:
                raise HarnessError(
                    f"encoder {self.name!r}: `layers` {outside} outside {self.params.model}'s {levels} feature levels (0 to {levels - 1})"
                )
            chosen = sorted({i % levels for i in self.params.layers})
        return {f"layer{i}": {"layer": i, "layers": None} for i in chosen}

    def _create_kwargs(self, cfg: dict[str, Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"num_classes": 0}
        if self.params.img_size and cfg.get("fixed_input_size"):
            kwargs["img_size"] = self.params.img_size
        kwargs.update(self.params.model_kwargs)
        return kwargs

    def _create(self, **kwargs: Any) -> torch.nn.Module:
        """timm.create_model of `model` (an `hf-hub:` repo: per its config.json, `kwargs` first)."""
        import timm

        name, cfg, model_args = self.hub_config() or (self.params.model, None, {})
        return timm.create_model(name, pretrained_cfg=cfg, **{**model_args, **kwargs})

    def build_model(self) -> torch.nn.Module:
        """The timm model with its weights, without a classifier (`num_classes=0`)."""
        import torch

        cfg = self.pretrained_cfg()
        kwargs = self._create_kwargs(cfg)
        path = self.weights_file()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.params.seed)
            if path is None:
                return self._create(pretrained=False, **kwargs)
            state = read_state_dict(path)
            classifiers = cfg.get("classifier") or ()
            for head in (classifiers,) if isinstance(classifiers, str) else classifiers:
                state.pop(f"{head}.weight", None)
                state.pop(f"{head}.bias", None)
            # num_classes 0 on both sides keeps timm's load strict (it relaxes it when they differ)
            overlay = {"state_dict": state, "num_classes": 0, "label_offset": 0}
            try:
                model = self._create(pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
            except RuntimeError as exc:
                raise HarnessError(
                    f"encoder {self.name!r}: weights file {path} does not fit timm model {self.params.model!r}: "
                    + " ".join(str(exc).split())[:800]
                ) from None
        for config in {id(c): c for c in (model.pretrained_cfg, getattr(model, "default_cfg", {}))}.values():
            config.pop("state_dict", None)  # timm keeps the overlay: drop the second copy of the weights
        return model

    def prepare(self, ctx: Any = None) -> None:
        if self.model is not None:
            return
        if self.params.layers is not None:
            raise HarnessError(
                f"encoder {self.name!r}: `layers` sweeps feature levels, one instance per level, which the runner makes "
                "from a registry entry (harness run --encoders NAME, or harness.run(encoders=['NAME'])); "
                "to embed with this object, set `layer` instead"
            )
        from timm.data import resolve_model_data_config

        from harness.device import default_device

        self.device = getattr(ctx, "device", None) or default_device()
        model = self.build_model().eval()
        self.data_config = self.resolved_data_config(resolve_model_data_config(model))
        levels = len(getattr(model, "feature_info", None) or [])
        layer = self.params.layer
        if layer is not None and levels and not -levels <= layer < levels:
            raise HarnessError(f"encoder {self.name!r}: layer {layer} is outside {self.params.model}'s {levels} feature levels")
        self.model = model.to(self.device)

    # ------------------------------------------------------------ features
    def preprocess(self, images: torch.Tensor, crop: bool = True) -> torch.Tensor:
        """uint8 [n, 3, H, W] -> normalised float [n, 3, h, w] on the encoder's device, as
        timm's eval transform does (`crop`), or the whole image resized to the input size."""
        if self.model is None:
            self.prepare()
        config = self.data_config or self.resolved_data_config()
        size = tuple(int(s) for s in config["input_size"][-2:])
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        if crop:
            x = resize_and_crop(x, size, config)
        else:
            x = resize(x, size, config["interpolation"])
        return normalize(x, config["mean"], config["std"])

    def _intermediate(self, x: torch.Tensor, prefix: bool = False) -> Any:
        """The feature map of level `layer` (default the last), NCHW; with `prefix`, also
        its prefix tokens (ViTs)."""
        model = self.model
        forward = getattr(model, "forward_intermediates", None)
        if forward is None:
            raise HarnessError(f"encoder {self.name!r}: timm model {self.params.model!r} has no forward_intermediates (no patch features)")
        accepted = inspect.signature(forward).parameters
        layer = self.params.layer
        kwargs: dict[str, Any] = {"indices": 1 if layer is None else [layer], "intermediates_only": True, "output_fmt": "NCHW"}
        kwargs.update({k: True for k in ("norm", "stop_early") if k in accepted})
        if prefix:
            kwargs["return_prefix_tokens"] = True
        try:
            out = forward(x, **kwargs)
        except (AssertionError, IndexError) as exc:
            raise HarnessError(f"encoder {self.name!r}: layer {layer} is not a feature level of {self.params.model!r} ({first_line(exc)})") from None
        return out[-1]

    def _global(self, batch: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logits; at `layer`, the class token of token-pooled models (ViTs), else the map's mean."""
        import torch

        model = self.model
        forward = getattr(model, "forward_intermediates", None)
        class_token = getattr(model, "num_prefix_tokens", 0) > 0 and getattr(model, "global_pool", None) == "token"
        class_token = class_token and forward is not None and "return_prefix_tokens" in inspect.signature(forward).parameters
        x = self.preprocess(batch, crop=True)
        with torch.inference_mode(), forward_precision(self.device, self.precision):
            if self.params.layer is None:
                features = model.forward_head(model.forward_features(x), pre_logits=True)
            elif class_token:
                features = self._intermediate(x, prefix=True)[1][:, 0]
            else:
                features = self._intermediate(x).mean(dim=(2, 3))
        return features.flatten(1).float()

    def _patches(self, batch: torch.Tensor) -> torch.Tensor:
        import torch

        x = self.preprocess(batch, crop=False)
        with torch.inference_mode(), forward_precision(self.device, self.precision):
            feature_map = self._intermediate(x)
        return feature_map.permute(0, 2, 3, 1).float()

    def _auto_batch_size(self) -> int:
        """Images per pass when `batch_size` is unset: the pixel budget of vit.py's token
        budget (2^14 tokens of 16 x 16 px on a CPU, 2^17 on a GPU), a power of two."""
        height, width = (self.data_config or self.resolved_data_config())["input_size"][-2:]
        budget = (2**17 if self.device.startswith("cuda") else 2**14) * 256
        return int(max(8, min(1024, 2 ** int(budget / (height * width)).bit_length() // 2)))

    def _batched(self, images: torch.Tensor, fn: Any) -> torch.Tensor:
        if self.model is None:
            self.prepare()
        out, self._last_batch_size = in_batches(images, fn, self.params.batch_size, self._auto_batch_size(), self.device)
        return out

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self._batched(images, self._global)

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        return self._batched(images, self._patches)


@hookimpl
def register_encoders(register: Any) -> None:
    register("timm", TimmEncoder)
