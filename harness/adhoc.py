"""A torch module of the user's, as an encoder (`harness.evaluate`).

`ModuleEncoder` wraps any `torch.nn.Module` and a preprocessing callable (uint8 images
[n, 3, H, W] on the module's device -> the float tensor the module takes). Global
features are the module's output, flattened per image: for modules with timm's
`forward_features` / `forward_head`, the pooled pre-logits output (not the classifier's
logits). Patch features exist only when the module offers timm's
`forward_intermediates`; tasks that need them are skipped otherwise.

Its key is derived from what determines its outputs, never from a name:

* the weights: sha256 over every state_dict entry's name, shape, dtype and bytes (so
  changing one weight recomputes every cell, and the same weights reuse them);
* the classes of the module and its submodules: qualified name and source;
* the preprocessing: its qualified name and the sha256 of its source (where
  `inspect.getsource` works, else of its bytecode and constants), the code fingerprint of
  the module that defines it, the arguments of a `functools.partial` and the attributes
  of a callable object. Values a function reads from a closure or from global variables
  are NOT seen: a lambda that captures `mean` hashes the same whatever `mean` holds.
  Make such values arguments of a `functools.partial`, or evaluate with `force=True`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import re
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterator

from harness.errors import HarnessError
from harness.keys import NAME_PATTERN, code_fingerprint
from harness.kinds import Encoder

if TYPE_CHECKING:
    import torch

Preprocess = Callable[["torch.Tensor"], "torch.Tensor"]


def encoder_name(raw: str) -> str:
    """`raw` (e.g. a class name) made a valid instance name: characters outside
    letters, digits, '.', '_', '+', '-' become '-'; never empty."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", raw).lstrip("._+-")
    return name or "module"


def state_dict_sha256(module: torch.nn.Module) -> str:
    """sha256 over every state_dict entry: name, shape, dtype and raw bytes (any dtype,
    any device; the tensors are read, not copied where they already lie on the CPU)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in module.state_dict(keep_vars=False).items():
        if not isinstance(tensor, torch.Tensor):  # extra state a module may keep
            digest.update(f"{name}\0{tensor!r}\0".encode())
            continue
        digest.update(f"{name}\0{tuple(tensor.shape)}\0{tensor.dtype}\0".encode())
        flat = tensor.detach().reshape(-1).contiguous().cpu()
        digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()


def _version(tensor: Any) -> tuple[int, int]:
    """In-place changes (torch's counter) and where the data lies (`.data = ...` swaps it)."""
    return tensor._version, tensor.data_ptr()


def _stamp(state: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """What tells whether a state dict's tensors changed: a weak reference to each and
    its `_version` (a repr for extra state that is not a tensor)."""
    import torch

    return [
        (name, weakref.ref(value), _version(value)) if isinstance(value, torch.Tensor) else (name, None, repr(value))
        for name, value in state.items()
    ]


def _unchanged(stamp: list[tuple[str, Any, Any]], state: dict[str, Any]) -> bool:
    """Whether `state` holds the very tensors of `stamp`, none changed in place since."""
    if [name for name, _, _ in stamp] != list(state):
        return False
    for (name, ref, version), value in zip(stamp, state.values()):
        if ref is None:
            if repr(value) != version:
                return False
        elif ref() is not value or _version(value) != version:
            return False
    return True


def _source_sha256(obj: Any) -> str | None:
    try:
        return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]
    except (OSError, TypeError):
        return None


def _bytecode_sha256(function: Any) -> str | None:
    code = getattr(function, "__code__", None)
    if code is None:
        return None
    return hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()[:16]


def _qualified_name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def callable_identity(fn: Any) -> dict[str, Any]:
    """What the key sees of a preprocessing callable (see the module docstring)."""
    if isinstance(fn, functools.partial):
        return {
            "partial": callable_identity(fn.func),
            "args": [repr(a) for a in fn.args],
            "keywords": {k: repr(v) for k, v in sorted(fn.keywords.items())},
        }
    if inspect.isfunction(fn) or inspect.ismethod(fn) or inspect.isbuiltin(fn):
        target = fn.__func__ if inspect.ismethod(fn) else fn
        identity: dict[str, Any] = {
            "name": _qualified_name(target),
            "source": _source_sha256(target) or _bytecode_sha256(target),
            "code": code_fingerprint(getattr(target, "__module__", None) or "__main__"),
        }
        if inspect.ismethod(fn):
            identity["self"] = callable_identity(fn.__self__) if callable(fn.__self__) else repr(fn.__self__)
        return identity
    cls = type(fn)
    fields = getattr(fn, "__dict__", {})
    return {
        "name": _qualified_name(cls),
        "source": _source_sha256(cls),
        "code": code_fingerprint(cls.__module__),
        "attributes": {k: repr(v) for k, v in sorted(fields.items())},
    }


@functools.lru_cache(maxsize=None)
def _class_source(cls: type) -> str | None:
    """A class's source sha256, once per process: finding a class's source parses its file."""
    return _source_sha256(cls)


def module_classes(module: torch.nn.Module) -> dict[str, str | None]:
    """Qualified name -> source sha256 of the module's class and its submodules' classes."""
    classes = {type(m) for m in module.modules()}
    return {_qualified_name(c): _class_source(c) for c in sorted(classes, key=_qualified_name)}


class ModuleEncoder(Encoder):
    """A torch module and its preprocessing, as an encoder. Not made by the registry:
    `ModuleEncoder(module, preprocess, name=...)` or `harness.evaluate(...)`.

    `prepare` moves the module to the run's device; each forward pass runs in eval mode
    under `torch.inference_mode`, and the module's training flag is restored afterwards.
    `patch_preprocess` (default: `preprocess`) is used for patch features, which align
    with label maps only when it keeps the whole image (resize, no crop). `group` is the
    leaderboard group of its rows (target, realistic, procedural or white-box; default
    "unspecified", listed after those, since only its author knows what the module was
    trained on); it is not part of the key.
    """

    plugin_name = "torch-module"
    group = "unspecified"

    def __init__(
        self,
        module: torch.nn.Module,
        preprocess: Preprocess,
        name: str | None = None,
        patch_preprocess: Preprocess | None = None,
        input_size: int | None = None,
        group: str | None = None,
    ) -> None:
        import torch

        from harness.config.schema import GROUPS

        if not isinstance(module, torch.nn.Module):
            raise HarnessError(f"ModuleEncoder wraps a torch.nn.Module, got {type(module).__name__}")
        if not callable(preprocess):
            raise HarnessError(f"the preprocessing of {type(module).__name__} must be callable, got {type(preprocess).__name__}")
        name = encoder_name(type(module).__name__) if name is None else name
        if not re.match(NAME_PATTERN, name):
            raise HarnessError(f"encoder name {name!r}: use letters, digits, '.', '_', '+', '-' (no spaces or slashes)")
        if group is not None and group not in GROUPS:
            raise HarnessError(f"encoder {name!r}: group {group!r} is not one of {', '.join(GROUPS)}")
        super().__init__(name)
        self.group = group or type(self).group  # type: ignore[misc]
        self.module = module
        self.preprocess = preprocess
        self.patch_preprocess = patch_preprocess or preprocess
        self.supports_patches = callable(getattr(module, "forward_intermediates", None))  # type: ignore[misc]
        self._input_size = input_size
        self.device: str | None = None
        self._weights_memo: tuple[Any, str] | None = None

    # ------------------------------------------------------------ identity
    def weights_sha256(self) -> str:
        """The state dict's sha256, recomputed only when a tensor was replaced or changed
        in place (torch counts in-place changes in each tensor's `_version`); the key is
        asked for by every record, so the weights are not hashed for each."""
        state = self.module.state_dict(keep_vars=True)
        memo = self._weights_memo
        if memo is None or not _unchanged(memo[0], state):
            memo = self._weights_memo = (_stamp(state), state_dict_sha256(self.module))
        return memo[1]

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        patches = None if self.patch_preprocess is self.preprocess else callable_identity(self.patch_preprocess)
        return {
            **described,
            "params": {
                "weights_sha256": self.weights_sha256(),
                "classes": module_classes(self.module),
                "preprocess": callable_identity(self.preprocess),
                "patch_preprocess": patches,
            },
        }

    @property
    def input_size(self) -> int:
        return self._input_size or 224

    def torch_module(self) -> torch.nn.Module:
        return self.module

    # ------------------------------------------------------------ features
    def prepare(self, ctx: Any = None) -> None:
        from harness.device import default_device

        device = getattr(ctx, "device", None) or self.device or default_device()
        if device != self.device:
            self.module.to(device)
            self.device = device

    @contextlib.contextmanager
    def _evaluating(self) -> Iterator[None]:
        import torch

        if self.device is None:
            self.prepare()
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.module.train(was_training)

    def _input(self, images: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
        import torch

        x = preprocess(images.to(self.device))
        if not isinstance(x, torch.Tensor):
            raise HarnessError(f"encoder {self.name!r}: its preprocessing returned {type(x).__name__}, not a tensor")
        return x.to(self.device)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        import torch

        with self._evaluating():
            x = self._input(images, self.preprocess)
            module = self.module
            if callable(getattr(module, "forward_features", None)) and callable(getattr(module, "forward_head", None)):
                out = module.forward_head(module.forward_features(x), pre_logits=True)
            else:
                out = module(x)
        if not isinstance(out, torch.Tensor):
            raise HarnessError(
                f"encoder {self.name!r}: {type(self.module).__name__} returned {type(out).__name__}; "
                "global features need a module that returns one tensor [n, ...] (wrap it to pick the features)"
            )
        return out.reshape(len(images), -1).float().cpu()

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        if not self.supports_patches:
            raise HarnessError(f"encoder {self.name!r}: {type(self.module).__name__} has no forward_intermediates (no patch features)")
        forward = self.module.forward_intermediates  # type: ignore[operator]
        accepted = inspect.signature(forward).parameters
        kwargs: dict[str, Any] = {"indices": 1, "intermediates_only": True, "output_fmt": "NCHW"}
        kwargs.update({k: True for k in ("norm", "stop_early") if k in accepted})
        with self._evaluating():
            feature_map = forward(self._input(images, self.patch_preprocess), **kwargs)[-1]
        return feature_map.permute(0, 2, 3, 1).float().cpu()
