"""The generators stage: images/s per generator instance and size, beside the released
pipeline's way of making the same images and, on a GPU machine, beside the same
generator on this machine's CPU (the GPU hidden from a child process).

    python -m harness.bench.generators NAME SIZE   # prints {"images_per_s": ...} (the child)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from harness.bench.timing import best_time, jpeg_decode_rate

if TYPE_CHECKING:
    from harness.config.schema import ProfileSpec
    from harness.config.registry import Registry

MIN_SECONDS = 0.5  # a timed call makes at least this many seconds of images
MAX_IMAGES = 8192
# Where glvnd finds Mesa's EGL vendor library, below the root Mesa is installed in ("/",
# or the folder its Debian packages were unpacked into, named by HARNESS_MESA_ROOT):
# with it alone, a child's OpenGL runs on the CPU (llvmpipe) even on a machine whose GPU
# driver offers EGL.
MESA_EGL_VENDOR = Path("usr/share/glvnd/egl_vendor.d/50_mesa.json")


def sampling_rate(sample: Callable[[int], Any], size: int, quick: bool) -> tuple[int, float]:
    """(images, images/s) of `sample(n)`, n doubled until one call takes `MIN_SECONDS`
    (a fast device needs many images per call to be timed at all), starting from as
    many images as 64 at 64 px (one per shader program)."""
    n = max(8, 64 * 64 * 64 // (size * size))
    if not quick:
        sample(n)  # first use: programs compile, kernels load
    while not quick and n < MAX_IMAGES:
        began = time.perf_counter()
        sample(n)
        if time.perf_counter() - began >= MIN_SECONDS:
            break
        n *= 2
    return n, n / best_time(lambda: sample(n), repeats=1 if quick else 2, warmup=quick)


def cpu_gl_environment() -> dict[str, str] | str:
    """The environment in which a child process sees no GPU (CUDA hidden) and renders
    OpenGL with Mesa's llvmpipe: Mesa installed in / or unpacked into HARNESS_MESA_ROOT
    (its libraries and DRI drivers found there first). A string says why there is none."""
    root = Path(os.environ.get("HARNESS_MESA_ROOT") or "/")
    vendor = root / MESA_EGL_VENDOR
    if not vendor.exists():
        return f"no CPU OpenGL here ({vendor} absent)"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "__EGL_VENDOR_LIBRARY_FILENAMES": str(vendor)}
    if root != Path("/"):
        libraries = sorted((root / "usr" / "lib").glob("*-linux-gnu"))
        if libraries:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libraries[0]), os.environ.get("LD_LIBRARY_PATH")]))
            env["LIBGL_DRIVERS_PATH"] = str(libraries[0] / "dri")
    return env


def hidden_gpu_rate(name: str, size: int) -> tuple[float | None, str]:
    """images/s of generator `name` in a child process that sees no GPU (CUDA hidden;
    OpenGL through Mesa's CPU renderer, `cpu_gl_environment`), or None and why not."""
    env = cpu_gl_environment()
    if isinstance(env, str):
        return None, env
    done = subprocess.run(
        [sys.executable, "-m", "harness.bench.generators", name, str(size)], env=env, capture_output=True, text=True, timeout=300,
    )
    if done.returncode != 0:
        return None, f"failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}"
    return float(json.loads(done.stdout.strip().splitlines()[-1])["images_per_s"]), "this machine's CPU, GPU hidden"


def bench_generators(registry: Registry, profile: ProfileSpec, quick: bool, device: str) -> Iterator[dict[str, Any]]:
    """images/s per generator instance and size, beside the released pipeline's way of
    making the same images: decoding them from pre-rendered JPEGs, or what the generator's
    `reference_rate` measures (e.g. CPU k-means over decoded base images). On a GPU, also
    beside the same generator with the GPU hidden (`hidden_gpu_rate`)."""
    sizes = profile.bench.sizes[:1] if quick else profile.bench.sizes
    decode_rate: dict[int, float] = {}
    for name in profile.generators:
        try:
            generator = registry.create("generator", name)
        except Exception as exc:
            yield {"generator": name, "error": str(exc)}
            continue
        try:
            for size in sizes:
                yield _generator_row(generator, name, size, quick, device, decode_rate)
        finally:
            generator.close()


def _generator_row(generator: Any, name: str, size: int, quick: bool, device: str, decode_rate: dict[int, float]) -> dict[str, Any]:
    """The stage's row of `generator` at `size`, with the warnings it gave while timed,
    or an error row where it fails. `decode_rate` keeps the JPEG decoding rate per size,
    measured once for all generators."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            n, rate = sampling_rate(lambda k: generator.sample(seed=1, n=k, size=size), size, quick)
        reference = generator.reference_rate(seed=2, n=min(n, 32), size=size)
        if reference is None:
            if size not in decode_rate:
                decode_rate[size] = jpeg_decode_rate(generator.sample(seed=2, n=min(n, 64), size=size))
            reference = ("decode pre-rendered JPEGs", decode_rate[size])
        row: dict[str, Any] = {
            "generator": name, "size": size, "images": n, "images_per_s": round(rate, 1),
            "reference_pipeline": reference[0], "reference_images_per_s": round(reference[1], 1),
            "ratio_to_reference": round(rate / reference[1], 2),
        }
        said = dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught)
        if said:  # e.g. a pipeline the driver could not give: the rate is of what ran instead
            row["warnings"] = "; ".join(said)
        if device.startswith("cuda"):
            cpu_rate, how = hidden_gpu_rate(name, size)
            row["cpu_images_per_s"] = round(cpu_rate, 1) if cpu_rate else how
            if cpu_rate:
                row["ratio_to_cpu"] = round(rate / cpu_rate, 2)
        return row
    except Exception as exc:
        return {"generator": name, "size": size, "error": f"{type(exc).__name__}: {exc}"}


def _child(name: str, size: int) -> None:
    from harness.config.registry import use_registry

    generator = use_registry(None).create("generator", name)
    n, rate = sampling_rate(lambda k: generator.sample(seed=1, n=k, size=size), size, False)
    generator.close()
    print(json.dumps({"images": n, "images_per_s": rate}))


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]))
