"""The generators stage: images/s per generator instance and size, beside the released
pipeline's way of making the same images."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.bench.timing import best_time, jpeg_decode_rate

if TYPE_CHECKING:
    from harness.config.schema import ProfileSpec
    from harness.config.registry import Registry


def bench_generators(registry: Registry, profile: ProfileSpec, quick: bool, device: str) -> list[dict[str, Any]]:
    """images/s per generator instance and size, beside the released pipeline's way of
    making the same images: decoding them from pre-rendered JPEGs, or what the generator's
    `reference_rate` measures (e.g. CPU k-means over decoded base images)."""
    rows: list[dict[str, Any]] = []
    sizes = (64,) if quick else (64, 128, 224)
    decode_rate: dict[int, float] = {}
    for name in profile.generators:
        try:
            generator = registry.create("generator", name)
        except Exception as exc:
            rows.append({"generator": name, "error": str(exc)})
            continue
        for size in sizes:
            n = max(8 if quick else 64, (64 if quick else 256) * 64 * 64 // (size * size))  # 64 programs: at least one pass
            try:
                seconds = best_time(lambda: generator.sample(seed=1, n=n, size=size), repeats=1 if quick else 2)
                rate = n / seconds
                reference = generator.reference_rate(seed=2, n=min(n, 32), size=size)
                if reference is None:
                    if size not in decode_rate:
                        decode_rate[size] = jpeg_decode_rate(generator.sample(seed=2, n=min(n, 64), size=size))
                    reference = ("decode pre-rendered JPEGs", decode_rate[size])
                rows.append({
                    "generator": name, "size": size, "images": n, "images_per_s": round(rate, 1),
                    "reference_pipeline": reference[0], "reference_images_per_s": round(reference[1], 1),
                    "ratio_to_reference": round(rate / reference[1], 2),
                })
            except Exception as exc:
                rows.append({"generator": name, "size": size, "error": f"{type(exc).__name__}: {exc}"})
        generator.close()
    return rows
