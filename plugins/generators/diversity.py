"""How diverse a generator's images are: the measure behind the diversity tables of
docs/generators.md, for any registered generator.

`python -m harness_plugins.generators.diversity [NAME]` prints the report of the
generator instance NAME (default `shaders`) of the active registry as JSON.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from harness.kinds import Generator

from harness_plugins.generators.shaders import near_constant

FLAT_SHARE = 0.75  # an image whose modal colour (8 levels per channel) covers this share of pixels is near-flat
FLAT_LEVELS = 8


def near_flat(images: Any, share: float = FLAT_SHARE, levels: int = FLAT_LEVELS) -> Any:
    """Per image [n, 3, h, w] uint8: is it mostly one flat colour, i.e. does its most
    frequent colour, each channel quantised to `levels` equal bins, cover at least
    `share` of the pixels? Catches images that `near_constant` lets through: a flat
    background with a small shape, or an escape-time set filling the view."""
    import torch

    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(images)
    n = x.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.bool)
    q = x.long() * levels // 256
    code = ((q[:, 0] * levels + q[:, 1]) * levels + q[:, 2]).flatten(1)
    code = code + torch.arange(n).unsqueeze(1) * levels**3
    counts = torch.bincount(code.flatten(), minlength=n * levels**3).view(n, -1)
    return counts.max(dim=1).values >= share * code.shape[1]


def diversity_report(generator: Generator, n: int = 1000, size: int = 64, seed: int = 0,
                     feature_size: int = 8) -> dict[str, Any]:
    """Diversity of `n` images of stream `seed`: the fraction of near-constant and of
    near-flat images (`near_flat`),
    the mean pairwise distance of downsampled RGB features (feature_size^2 x 3
    area-averaged values in [0, 1], Euclidean, divided by sqrt(dim), i.e. the RMS
    difference), and for shader generators per program its share of the images, its
    near-constant and near-flat fractions, its count of near-flat images and its own mean
    pairwise distance."""
    import torch
    import torch.nn.functional as F

    images, names = [], []
    for s in range(0, n, 256):
        if hasattr(generator, "sample_with_programs"):
            x, p = generator.sample_with_programs(seed, min(256, n - s), size, start=s)
        else:  # any other generator: no per-program breakdown
            x, p = generator.sample(seed, min(256, n - s), size, start=s), []
        images.append(x)
        names += p
    x = torch.cat(images)
    feats = F.interpolate(x.float() / 255.0, size=(feature_size, feature_size), mode="area").flatten(1)
    dim = feats.shape[1]

    def mean_distance(f: torch.Tensor) -> float:
        if len(f) < 2:
            return float("nan")
        d = torch.cdist(f.double(), f.double()) / dim**0.5
        return float(d.sum() / (len(f) * (len(f) - 1)))

    flat = near_constant(x)
    mostly_flat = near_flat(x)
    per_program: dict[str, dict[str, float]] = {}
    for name in sorted(set(names)):
        idx = torch.tensor([i for i, m in enumerate(names) if m == name])
        per_program[name] = {
            "share": len(idx) / n,
            "near_constant": float(flat[idx].float().mean()),
            "near_flat": float(mostly_flat[idx].float().mean()),
            "near_flat_count": int(mostly_flat[idx].sum()),
            "mean_distance": mean_distance(feats[idx]),
        }
    return {
        "n": n,
        "size": size,
        "seed": seed,
        "programs": len(per_program),
        "near_constant_fraction": float(flat.float().mean()),
        "near_flat_fraction": float(mostly_flat.float().mean()),
        "mean_pairwise_distance": mean_distance(feats),
        "per_program": per_program,
    }


def main(argv: list[str]) -> int:
    from harness.config.registry import active_registry

    programs = "--programs" in argv
    argv = [a for a in argv if a != "--programs"]
    if len(argv) > 1 or argv[:1] in (["-h"], ["--help"]):
        print("usage: python -m harness_plugins.generators.diversity [--programs] [GENERATOR]\n"
              "  --programs: the programs drawn from, those left out and why, and each one's probe cost",
              file=sys.stderr)
        return 2
    generator = active_registry().create("generator", argv[0] if argv else "shaders")
    if programs:
        if not hasattr(generator, "program_report"):
            print(f"generator {generator.name!r} has no programs to report", file=sys.stderr)
            return 2
        print(json.dumps(generator.program_report(), indent=1))
        return 0
    print(json.dumps(diversity_report(generator), indent=1))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
