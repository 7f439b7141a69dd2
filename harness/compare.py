"""`harness compare A B`: are two encoders the same network?

Made for checking that two sources of one published model agree (a hub copy against the
authors' file). The weights decide: the two encoders' torch modules are compared tensor
by tensor (parameters and buffers, by state-dict name), and only bit-identical tensors
under the same names count as the same. The global features of both on the same images
come second: with identical weights they still differ when the encoders preprocess
differently (input size, crop, normalisation), so they show what the encoders' own
pipelines add.

Names are matched as they are; when the two name sets differ, each side's longest dotted
prefix common to all its names (`module.`, `model.backbone.`: a wrapper module) is
stripped first, and the report says which prefixes were.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError

if TYPE_CHECKING:
    import torch

    from harness.config.registry import Registry
    from harness.kinds import Encoder

LISTED = 20  # differing tensors named in the report, largest difference first


@dataclass
class WeightsComparison:
    """Two state dicts compared name by name."""

    prefixes: tuple[str, str] = ("", "")
    identical: list[str] = field(default_factory=list)
    differing: list[tuple[str, float, str]] = field(default_factory=list)  # name, max |a - b|, note
    misshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)

    @property
    def same(self) -> bool:
        """Every tensor present on both sides, with the same shape, dtype and bits."""
        return bool(self.identical) and not (self.differing or self.misshaped or self.only_a or self.only_b)


def common_prefix(names: Any) -> str:
    """The longest dotted prefix that every name shares (`module.backbone.`), '' if none."""
    prefix: list[str] = []
    for pieces in zip(*(str(name).split(".")[:-1] for name in names)):
        if len(set(pieces)) != 1:
            break
        prefix.append(pieces[0])
    return "".join(f"{piece}." for piece in prefix)


def compare_state_dicts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> WeightsComparison:
    """`a` against `b`, tensor by tensor (see the module doc for how names are matched)."""
    import torch

    result = WeightsComparison()
    if a.keys() != b.keys():
        result.prefixes = (common_prefix(a), common_prefix(b))
        a = {name.removeprefix(result.prefixes[0]): value for name, value in a.items()}
        b = {name.removeprefix(result.prefixes[1]): value for name, value in b.items()}
    result.only_a = sorted(a.keys() - b.keys())
    result.only_b = sorted(b.keys() - a.keys())
    for name in sorted(a.keys() & b.keys()):
        x, y = a[name].detach().cpu(), b[name].detach().cpu()
        if x.shape != y.shape:
            result.misshaped.append((name, tuple(x.shape), tuple(y.shape)))
        elif x.dtype == y.dtype and torch.equal(x, y):
            result.identical.append(name)
        else:
            difference = (x.double() - y.double()).abs().max().item() if x.numel() else 0.0
            note = f" ({x.dtype} against {y.dtype})" if x.dtype != y.dtype else ""
            result.differing.append((name, difference, note))
    result.differing.sort(key=lambda item: -item[1])
    return result


def seeded_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """`n` deterministic uint8 images [n, 3, size, size]: seeded noise at an eighth of the
    side, upsampled bilinearly (smooth blobs, which the encoders' resizing treats alike)."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, max(2, size // 8), max(2, size // 8), generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False).mul(255).round().to(torch.uint8)


def _module(encoder: Encoder) -> torch.nn.Module:
    module = encoder.torch_module()
    if module is None:
        raise HarnessError(
            f"encoder {encoder.name!r} ({encoder.plugin_name}) has no torch module after prepare(): "
            "harness compare needs two encoders with weights"
        )
    return module


def _feature_lines(a: torch.Tensor, b: torch.Tensor) -> list[str]:
    import torch.nn.functional as F

    if a.shape != b.shape:
        return [f"  shapes differ: {list(a.shape)} against {list(b.shape)}"]
    cosine = F.cosine_similarity(a.double(), b.double(), dim=1)
    return [
        f"  max |a - b| {(a.double() - b.double()).abs().max().item():.3g} (largest |a| {a.abs().max().item():.3g}); "
        f"cosine similarity min {cosine.min().item():.6f}, mean {cosine.mean().item():.6f}"
    ]


def compare_encoders(registry: Registry, name_a: str, name_b: str, images: int = 64, device: str = "cpu") -> tuple[str, bool]:
    """The report on encoders `name_a` and `name_b` of `registry`, and whether their
    weights are identical. Both are prepared (loaded, or trained when that is what their
    `prepare` does) on `device`."""
    from harness.runner.context import RunContext

    encoders = [registry.create("encoder", name) for name in (name_a, name_b)]
    ctx = RunContext(registry=registry, device=device)
    for encoder in encoders:
        encoder.prepare(ctx)
    modules = [_module(encoder) for encoder in encoders]
    weights = compare_state_dicts(*(module.state_dict() for module in modules))
    lines = [f"{label} {e.name}: {e.plugin_name}, {e.architecture or type(e).__name__}" for label, e in zip("AB", encoders)]
    stripped = " and ".join(f"{p!r} from {label}" for label, p in zip("AB", weights.prefixes) if p)
    compared = len(weights.identical) + len(weights.differing) + len(weights.misshaped)
    lines += ["", f"weights: {compared} tensors under both names" + (f" (prefixes stripped: {stripped})" if stripped else "")]
    for label, only in (("A", weights.only_a), ("B", weights.only_b)):
        if only:
            lines.append(f"  only in {label} ({len(only)}): {', '.join(only[:LISTED])}" + (" ..." if len(only) > LISTED else ""))
    for name, shape_a, shape_b in weights.misshaped[:LISTED]:
        lines.append(f"  shape differs: {name} {list(shape_a)} against {list(shape_b)}")
    for name, difference, note in weights.differing[:LISTED]:
        lines.append(f"  differs: {name} max |a - b| {difference:.3g}{note}")
    if len(weights.differing) > LISTED:
        lines.append(f"  ... and {len(weights.differing) - LISTED} more differing tensors")
    lines.append(f"  bit-identical: {len(weights.identical)} of the {compared} under both names")

    size = max(encoder.input_size for encoder in encoders)
    batch = seeded_images(images, size)
    features = [encoder.embed(batch) for encoder in encoders]
    lines += ["", f"global features of {images} seeded {size} x {size} images, on {device}:", *_feature_lines(*features)]
    if not weights.same:
        verdict = "different weights"
    elif features[0].shape == features[1].shape and features[0].equal(features[1]):
        verdict = "same weights (every tensor bit-identical) and the same features"
    else:
        verdict = "same weights (every tensor bit-identical); the features differ: the encoders preprocess or compute differently"
    lines += ["", verdict]
    return "\n".join(lines), weights.same
