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


def diversity_report(generator: Generator, n: int = 1000, size: int = 64, seed: int = 0,
                     feature_size: int = 8) -> dict[str, Any]:
    """Diversity of `n` images of stream `seed`: the fraction of near-constant images,
    the mean pairwise distance of downsampled RGB features (feature_size^2 x 3
    area-averaged values in [0, 1], Euclidean, divided by sqrt(dim), i.e. the RMS
    difference), and for shader generators per program its share of the images, its
    near-constant fraction and its own mean pairwise distance."""
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
    per_program: dict[str, dict[str, float]] = {}
    for name in sorted(set(names)):
        idx = torch.tensor([i for i, m in enumerate(names) if m == name])
        per_program[name] = {
            "share": len(idx) / n,
            "near_constant": float(flat[idx].float().mean()),
            "mean_distance": mean_distance(feats[idx]),
        }
    return {
        "n": n,
        "size": size,
        "seed": seed,
        "programs": len(per_program),
        "near_constant_fraction": float(flat.float().mean()),
        "mean_pairwise_distance": mean_distance(feats),
        "per_program": per_program,
    }


def main(argv: list[str]) -> int:
    from harness.config.registry import active_registry

    if len(argv) > 1 or argv[:1] in (["-h"], ["--help"]):
        print("usage: python -m harness_plugins.generators.diversity [GENERATOR]", file=sys.stderr)
        return 2
    generator = active_registry().create("generator", argv[0] if argv else "shaders")
    print(json.dumps(diversity_report(generator), indent=1))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
