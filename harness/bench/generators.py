"""The generators stage: images/s per generator instance and size, beside the released
pipeline's way of making the same images and, on a GPU machine, beside the same
generator on this machine's CPU (the GPU hidden from a child process).

    python -m harness.bench.generators   # the child: reads "NAME SIZE" lines, answers images/s
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator

from harness.bench.timing import best_time, cores, jpeg_decode_rate

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
    """(images, images/s) of `sample(n)`, n the first of the counts doubling from as many
    images as 64 at 64 px (one per shader program) whose call takes `MIN_SECONDS` (a fast
    device needs many images per call to be timed at all). A call too short also skips
    the counts that its time, scaled in proportion, says are too short: a call's fixed
    cost makes the scaled time of a larger call an overestimate, so no count long enough
    is skipped."""
    n = max(8, 64 * 64 * 64 // (size * size))
    if not quick:
        sample(n)  # first use: programs compile, kernels load
    while not quick and n < MAX_IMAGES:
        began = time.perf_counter()
        sample(n)
        seconds = time.perf_counter() - began
        if seconds >= MIN_SECONDS:
            break
        measured = n
        n *= 2
        while n < MAX_IMAGES and n * seconds / measured < MIN_SECONDS:
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


class HiddenGpuTimer:
    """Times generators in a child process that sees no GPU (CUDA hidden; OpenGL through
    Mesa's CPU renderer, `cpu_gl_environment`), started at the first request and kept for
    the next: its imports, its GL context and the shader programs it compiled serve every
    generator of the stage. It waits on its input while the parent times the GPU."""

    REPLY = "@rate "  # marks the child's answers among whatever else its generators print

    def __init__(self) -> None:
        self.child: subprocess.Popen[str] | None = None
        self.errors: IO[str] | None = None  # the child's standard error, for why it ended

    def start(self) -> str | None:
        """Start the child, which imports what it needs while the parent goes on; None,
        or why there is no child."""
        env = cpu_gl_environment()
        if isinstance(env, str):
            return env
        if self.child is None:
            self.errors = tempfile.TemporaryFile("w+")
            self.child = subprocess.Popen([sys.executable, "-m", "harness.bench.generators"], env=env, text=True,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors)
        return None

    def rate(self, name: str, size: int) -> tuple[float | None, str]:
        """images/s of generator `name` at `size` in the child, or None and why not."""
        missing = self.start()
        if missing is not None:
            return None, missing
        assert self.child is not None and self.child.stdin is not None and self.child.stdout is not None
        try:
            self.child.stdin.write(f"{name} {size}\n")
            self.child.stdin.flush()
        except BrokenPipeError:
            pass  # it ended: said below
        for line in self.child.stdout:
            if line.startswith(self.REPLY):
                reply = json.loads(line[len(self.REPLY):])
                if "error" in reply:
                    return None, f"failed: {reply['error']}"
                return float(reply["images_per_s"]), "this machine's CPU, GPU hidden"
        assert self.errors is not None
        self.errors.seek(0)
        last = self.errors.read().strip().splitlines()[-1:]
        return None, f"failed: the child process ended ({self.child.wait()}): {last}"

    def close(self) -> None:
        if self.child is not None:
            with contextlib.suppress(OSError):
                self.child.stdin.close()  # type: ignore[union-attr]
            try:
                self.child.wait(timeout=5)  # an idle child ends at once; a busy one was cut off
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()
            if self.errors is not None:
                self.errors.close()
            self.child = None


def bench_generators(registry: Registry, profile: ProfileSpec, quick: bool, device: str) -> Iterator[dict[str, Any]]:
    """images/s per generator instance and size, beside the released pipeline's way of
    making the same images: decoding them from pre-rendered JPEGs, or what the generator's
    `reference_rate` measures (e.g. CPU k-means over decoded base images). On a GPU, also
    beside the same generator with the GPU hidden (`HiddenGpuTimer`)."""
    sizes = profile.bench.sizes[:1] if quick else profile.bench.sizes
    decode_rate: dict[int, float] = {}
    cpu = HiddenGpuTimer() if device.startswith("cuda") else None
    generators: dict[str, Any] = {}
    try:
        if cpu is not None:
            cpu.start()  # its imports overlap with making the generators here
        for name in profile.generators:
            try:
                generators[name] = registry.create("generator", name)
            except Exception as exc:
                yield {"generator": name, "error": str(exc)}
        for size in sizes:  # every generator at the first size before the next size: a stage cut off keeps those rows
            for name, generator in generators.items():
                yield _generator_row(generator, name, size, quick, cpu, decode_rate)
    finally:
        for generator in generators.values():
            generator.close()
        if cpu is not None:
            cpu.close()


def _generator_row(
    generator: Any, name: str, size: int, quick: bool, cpu: HiddenGpuTimer | None, decode_rate: dict[int, float],
) -> dict[str, Any]:
    """The stage's row of `generator` at `size`, with the warnings it gave while timed,
    and its rate on this machine's CPU where `cpu` times it, or an error row where it
    fails. `decode_rate` keeps the JPEG decoding rate per size, measured once for all
    generators."""
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
            "ratio_to_reference": round(rate / reference[1], 2), "reference_processes": cores(),
        }
        said = dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught)
        if said:  # e.g. a pipeline the driver could not give: the rate is of what ran instead
            row["warnings"] = "; ".join(said)
        if cpu is not None:
            cpu_rate, how = cpu.rate(name, size)
            row["cpu_images_per_s"] = round(cpu_rate, 1) if cpu_rate else how
            if cpu_rate:
                row["ratio_to_cpu"] = round(rate / cpu_rate, 2)
        return row
    except Exception as exc:
        return {"generator": name, "size": size, "error": f"{type(exc).__name__}: {exc}"}


def _serve() -> None:
    """The child of `HiddenGpuTimer`: for each line "NAME SIZE" read, the generator's
    images/s as a marked JSON line (or the error), each generator made once."""
    from harness.config.registry import use_registry

    registry = use_registry(None)
    generators: dict[str, Any] = {}
    for line in sys.stdin:
        name, size = line.split()
        try:
            if name not in generators:
                generators[name] = registry.create("generator", name)
            generator = generators[name]
            n, rate = sampling_rate(lambda k: generator.sample(seed=1, n=k, size=int(size)), int(size), False)
            reply: dict[str, Any] = {"images": n, "images_per_s": rate}
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(HiddenGpuTimer.REPLY + json.dumps(reply), flush=True)
    for generator in generators.values():
        generator.close()


if __name__ == "__main__":
    _serve()
