"""`shaders`: Shadertoy-style fragment programs rendered headless with moderngl.

The library shipped in `harness_plugins.shaders` (the repository's `shaders/` folder)
holds original programs written for this harness; `paths` adds a user's corpus
(`_shader_corpus`: Shadertoy JSON, plain `.glsl` / `.frag` files with a `mainImage`, and
shaders21k's layout with `shaders_list`, `.fragment` files and twigl programs). Image i of stream `seed` draws, from (seed, i) alone, a program
(uniformly over the usable ones), `iTime ~ U(time_range)`, `iDate`, and sixteen U(0, 1)
values `iParams[4]` (vec4s) that the built-in programs read as colours, scales, warps
and counts. Uniforms follow Shadertoy (`iResolution = (size, size, size)`, `iFrame =
floor(iTime * fps)`, `iTimeDelta = 1 / fps`, `iFrameRate = fps`, `iMouse = 0`,
`iChannel0..3`); `gl_FragCoord`, like `fragCoord`, is the pixel in the program's own
image; a program's output is read back flipped vertically (GL's origin is bottom-left)
and clamped to [0, 1] (NaN -> 0). `pipeline` runs the programs as drawn fragment
programs (`graphics`) or as compute dispatches (`compute`), the same bytes under Mesa.

The parts: `_shader_programs` loads programs and wraps them into GLSL, `_shader_gl`
renders batches in this process's EGL context, `_shader_server` picks the renderer of a
process (a helper process for one forked from a process that holds an EGL context), and
`_shader_cuda` hands frames to CUDA on the GPU for `sample_on` a CUDA device.

iChannel policy (`channels`): "noise" (default) binds fixed procedural noise textures
to iChannel0..3 so programs that sample them still render; "exclude" drops such
programs. Programs that do not compile are skipped with a warning that names the file
and quotes the GLSL log; programs whose probe renders are all near-constant, or take
longer than the render timeout or than `max_program_ms` per probe image, are dropped
from sampling with a warning naming them (`program_report` lists them and why).
None of these is an error while at least one program is usable.

Every batch has a render timeout (`render_timeout` seconds for up to REFERENCE_PIXELS
pixels, proportionally more for a larger batch): a batch past it fails with an error
naming its programs instead of hanging (a program may loop without end on a GPU driver).
"""

from __future__ import annotations

import fnmatch
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Sequence

from pydantic import Field, field_validator

from harness.errors import HarnessError
from harness.hookspecs import hookimpl
from harness.keys import stable_hash
from harness.kinds import Generator

from harness_plugins.generators._seeding import check_indices, check_sample_args, derive_seed, uniforms
from harness_plugins.generators._shader_corpus import ShaderCorpusError, load_corpus
from harness_plugins.generators._shader_programs import Program, load_library, warn_shader
from harness_plugins.generators._shader_server import RenderTimeout, renderer

if TYPE_CHECKING:
    import torch

PROBE_SIZE = 32
PROBE_DRAWS = 4
CONSTANT_STD = 2.0  # an image whose channels all have a smaller spatial std (0..255) is near-constant
REFERENCE_PIXELS = 64 * 224 * 224  # a batch this large or smaller gets `render_timeout`; a larger one more
# probe images and their cost (ms per probe image) per (program digest, probe values, fps, pipeline), for this process
_PROBES: dict[tuple[str, str, float, str], tuple[Any, float]] = {}


def near_constant(images: Any, threshold: float = CONSTANT_STD) -> Any:
    """Per image [n, 3, h, w]: is it near-constant, i.e. is the spatial std of every
    channel (pixel values 0..255) below `threshold`?"""
    import torch

    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(images)
    return x.float().flatten(2).std(dim=2).amax(dim=1) < threshold


@dataclass
class _Library:
    usable: list[Program] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> GLSL log
    constant: list[str] = field(default_factory=list)
    slow: list[str] = field(default_factory=list)  # past the render timeout at the probe
    costly: dict[str, float] = field(default_factory=dict)  # name -> ms per probe image, over max_program_ms
    cost_ms: dict[str, float] = field(default_factory=dict)  # name -> ms per probe image (every probed program)


class Shaders(Generator):
    """Shadertoy programs rendered headless."""

    version = 1

    class Params(Generator.Params):
        programs: list[str] = Field(["*"], description="shell-style name patterns selecting programs")
        exclude: list[str] = Field([], description="name patterns of programs left out")
        paths: list[str] = Field(
            [], exclude=True,
            description="a user's folders or files of Shadertoy programs (the key holds their code, not the paths)",
        )
        builtin: bool = Field(True, description="include the shipped library of programs")
        channels: Literal["noise", "exclude"] = Field(
            "noise", description="iChannel0..3: bind fixed noise textures, or exclude programs that sample them"
        )
        time_range: tuple[float, float] = Field((0.1, 10.0), description="iTime ~ U(low, high)")
        pipeline: Literal["graphics", "compute"] = Field(
            "graphics",
            description="how programs run: drawn as fragment programs (graphics, as Shadertoy does), or dispatched as "
            "compute programs (compute), which reach every multiprocessor of a GPU whose graphics units are few "
            "(NVIDIA H100/H200); a program that needs the fragment stage (derivatives, texture lookups with an "
            "implicit level of detail, discard) is drawn either way",
        )
        fps: float = Field(10.0, ge=1e-3, le=1e4, description="frame rate behind iFrame, iTimeDelta and iFrameRate")
        render_timeout: float = Field(
            60.0, gt=0, exclude=True,
            description="seconds a batch of up to 64 images of 224 px may take to render (a larger batch gets "
            "proportionally longer); a batch past it fails naming its programs. A run option, not in the key",
        )

        max_program_ms: float | None = Field(
            50.0, gt=0,
            description="leave out programs whose probe renders take longer than this many milliseconds per "
            "32 px image (measured on this machine, after a warm-up draw; the library's dearest takes under 1 ms "
            "on a 2-core CPU); None keeps every program",
        )

        @field_validator("programs", "exclude", "paths", mode="before")
        @classmethod
        def _one_or_many(cls, value: Any) -> Any:
            """A single pattern or path stands for a list of one; paths may be os.PathLike."""
            if isinstance(value, (str, os.PathLike)):
                value = [value]
            if isinstance(value, (list, tuple)):
                return [os.fspath(v) if isinstance(v, os.PathLike) else v for v in value]
            return value

        @field_validator("time_range")
        @classmethod
        def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
            if value[1] < value[0]:
                raise ValueError("must be [low, high] with low <= high")
            return value

    def __init__(self, name: str | None = None, /, **params: Any) -> None:
        super().__init__(name, **params)
        self._candidates: list[Program] | None = None
        self._library: _Library | None = None
        self._library_pid: int | None = None
        self._skipped: dict[str, str] = {}

    # ---------------------------------------------------------------- the program set
    def candidates(self) -> list[Program]:
        """The programs selected by the parameters, before compiling (no GL needed)."""
        if self._candidates is None:
            found: list[Program] = []
            if self.params.builtin:
                found += [p for p in load_library() if self._selected(p.name)]
            if self.params.paths:
                try:
                    loaded, self._skipped = load_corpus(self.params.paths)
                except ShaderCorpusError as exc:
                    raise ShaderCorpusError(f"generator {self.name!r}: {exc}") from None
                user = [p for p in loaded if self._selected(p.name)]
                names = {p.name for p in found}
                for p in user:
                    if p.name in names:
                        p.name = f"user:{p.name}"
                    names.add(p.name)
                found += user
            if self.params.channels == "exclude":
                dropped = [p.name for p in found if p.uses_channels]
                if dropped:
                    warn_shader(f"channels='exclude': dropping {len(dropped)} program(s) that sample iChannel0..3: "
                                + ", ".join(dropped))
                found = [p for p in found if not p.uses_channels]
            if not found:
                raise HarnessError(
                    f"generator {self.name!r}: no shader programs selected (programs={self.params.programs}, "
                    f"exclude={self.params.exclude}, paths={self.params.paths}, builtin={self.params.builtin})"
                )
            self._candidates = found
        return self._candidates

    def _selected(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.params.programs) and not any(
            fnmatch.fnmatchcase(name, p) for p in self.params.exclude
        )

    def library(self) -> _Library:
        """Compile every candidate and probe it (once per process)."""
        if self._library is not None and self._library_pid == os.getpid():
            return self._library
        lib = _Library()
        compiled = []
        for program in self.candidates():
            log = renderer().compile(program)
            if log is None:
                compiled.append(program)
            else:
                lib.failed[program.name] = log
                warn_shader(f"shader program {program.name!r} ({program.origin}) does not compile; skipped. GLSL log:\n{log}")
        if compiled:
            compiled, images = self._probe(compiled, lib)
        if compiled:
            flat = near_constant(images)
            flat = flat.reshape(len(compiled), PROBE_DRAWS).all(dim=1).tolist()
            lib.constant = [p.name for p, c in zip(compiled, flat) if c]
            lib.usable = [p for p, c in zip(compiled, flat) if not c]
            if lib.constant:
                warn_shader("shader program(s) render near-constant images and are dropped from sampling: "
                            + ", ".join(f"{p.name!r} ({p.origin})" for p, c in zip(compiled, flat) if c))
        if not lib.usable:
            raise HarnessError(
                f"generator {self.name!r}: none of the {len(self.candidates())} selected shader programs is usable "
                f"({len(lib.failed)} do not compile, {len(lib.constant)} render near-constant images, "
                f"{len(lib.slow)} take longer than render_timeout={self.params.render_timeout:g} s, "
                f"{len(lib.costly)} over max_program_ms={self.params.max_program_ms})"
            )
        self._library, self._library_pid = lib, os.getpid()
        return lib

    def _probe(self, compiled: list[Program], lib: _Library) -> tuple[list[Program], Any]:
        """The programs kept and their probe images [kept * PROBE_DRAWS, 3, PROBE_SIZE,
        PROBE_SIZE], program by program: a warm-up draw (the driver compiles at the
        first draw), then PROBE_DRAWS timed draws. A program past the render timeout goes
        to `lib.slow`, one over `max_program_ms` to `lib.costly`. Probes are cached per
        (program digest, probe values, fps, pipeline) for the process."""
        import numpy as np

        budget = self.params.max_program_ms
        kept, images = [], []
        for program in compiled:
            rows = self._draw(uniforms(derive_seed("shaders-probe", program.name), range(PROBE_DRAWS), 24))
            key = (program.digest, stable_hash(rows.round(9).tolist()), float(self.params.fps), self.params.pipeline)
            if key not in _PROBES:
                try:
                    self._render([program], rows[:1], PROBE_SIZE)
                    start = time.perf_counter()
                    probe = self._render([program] * PROBE_DRAWS, rows, PROBE_SIZE)
                    _PROBES[key] = (probe, (time.perf_counter() - start) * 1000.0 / PROBE_DRAWS)
                except RenderTimeout:
                    lib.slow.append(program.name)
                    continue
            probe, cost = _PROBES[key]
            lib.cost_ms[program.name] = cost
            if budget is not None and cost > budget:
                lib.costly[program.name] = cost
                continue
            kept.append(program)
            images.append(probe)
        if lib.slow:
            warn_shader(f"shader program(s) take longer than render_timeout={self.params.render_timeout:g} s to "
                        "render the probe and are dropped from sampling: " + ", ".join(map(repr, lib.slow)))
        if lib.costly:
            warn_shader(f"shader program(s) over max_program_ms={budget:g} ms per {PROBE_SIZE} px probe image are "
                        "left out: " + ", ".join(f"{n!r} ({ms:.1f} ms)" for n, ms in lib.costly.items()))
        empty = np.zeros((0, 3, PROBE_SIZE, PROBE_SIZE), dtype=np.uint8)
        return kept, np.concatenate(images or [empty])

    def program_report(self) -> dict[str, Any]:
        """The programs images are drawn from and every selected program left out, with
        the reason, plus each probed program's cost (ms per 32 px probe image); with the
        compute pipeline also the programs that are drawn all the same (`fragment_only`)."""
        lib = self.library()
        left_out = {name: f"not loaded: {why}" for name, why in self._skipped.items()}
        left_out.update({name: "does not compile" for name in lib.failed})
        left_out.update({name: f"probe past render_timeout={self.params.render_timeout:g} s" for name in lib.slow})
        left_out.update({name: f"{ms:.1f} ms per probe image > max_program_ms={self.params.max_program_ms:g}"
                         for name, ms in lib.costly.items()})
        left_out.update({name: "renders near-constant images" for name in lib.constant})
        report: dict[str, Any] = {
            "usable": [p.name for p in lib.usable],
            "left_out": dict(sorted(left_out.items())),
            "cost_ms": {name: round(ms, 3) for name, ms in sorted(lib.cost_ms.items())},
        }
        if self.params.pipeline == "compute":
            report["drawn"] = [p.name for p in lib.usable if p.fragment_only]
        return report

    def inventory(self) -> str:
        """For `harness list`: the programs in use and those left out, with the reason."""
        report = self.program_report()
        lines = [f"programs in use ({len(report['usable'])}): {', '.join(report['usable'])}"]
        if report["left_out"]:
            lines.append(f"left out ({len(report['left_out'])}):")
            lines += [f"  {name}: {why}" for name, why in report["left_out"].items()]
        else:
            lines.append("left out: none")
        if "drawn" in report:
            lines.append(f"drawn as fragment programs, not dispatched ({len(report['drawn'])}): {', '.join(report['drawn']) or 'none'}")
        return "\n".join(lines)

    def _render(self, programs: list[Program], rows: Any, size: int, on: Any = None) -> Any:
        """Images [n, 3, size, size] through this process's renderer, under the render
        timeout (host memory, or on the CUDA stream `on`'s device where GL hands them over)."""
        timeout = self.params.render_timeout * max(1.0, len(programs) * size * size / REFERENCE_PIXELS)
        return renderer().render(programs, rows, size, self.params.fps, timeout, self.params.pipeline, on)

    def program_names(self) -> list[str]:
        """The programs that images are drawn from (compiles them on first use)."""
        return [p.name for p in self.library().usable]

    # ---------------------------------------------------------------- sampling
    def _draw(self, u: Any) -> Any:
        """Per-image values (iTime, iFrame, iDate[4], iParams[16]) [n, 22] from U(0,1)
        draws [n, 24] (u[:, 0] picks the program, u[:, 1] the time, u[:, 2:6] the date,
        u[:, 6:22] iParams)."""
        import numpy as np

        t0, t1 = self.params.time_range
        u = np.atleast_2d(u)
        rows = np.empty((len(u), 22), dtype=np.float64)
        rows[:, 0] = t0 + (t1 - t0) * u[:, 1]
        rows[:, 1] = np.floor(rows[:, 0] * self.params.fps)
        rows[:, 2] = 2000 + np.floor(u[:, 2] * 30)  # year
        rows[:, 3] = np.floor(u[:, 3] * 12)  # month (0-based, as Shadertoy)
        rows[:, 4] = 1 + np.floor(u[:, 4] * 28)  # day
        rows[:, 5] = u[:, 5] * 86400.0  # seconds since midnight
        rows[:, 6:22] = u[:, 6:22]
        return rows

    def draws(self, seed: int, indices: list[int]) -> tuple[list[Program], Any]:
        """The program and per-image values of each image index (no rendering)."""
        import numpy as np

        usable = self.library().usable
        u = uniforms(derive_seed("shaders", seed), indices, 24)
        pick = np.minimum((u[:, 0] * len(usable)).astype(np.int64), len(usable) - 1)
        return [usable[i] for i in pick], self._draw(u)

    def sample(self, seed: int, n: int, size: int, start: int = 0) -> torch.Tensor:
        seed, n, size, start = check_sample_args(seed, n, size, start)
        return self.sample_at(seed, range(start, start + n), size)

    def sample_at(self, seed: int, indices: Sequence[int], size: int) -> torch.Tensor:
        """Any indices in one batch: an image's program and values depend on its index alone."""
        return self.sample_on(seed, indices, size, "cpu")

    def sample_on(self, seed: int, indices: Sequence[int], size: int, device: str | torch.device) -> torch.Tensor:
        """On a CUDA device, the frames go from the GL context to CUDA on the GPU where the
        driver allows it (GL-CUDA interop), else through host memory."""
        import torch

        seed, indices, size = check_indices(seed, indices, size)
        device = torch.device(device)
        if not indices:
            return torch.zeros((0, 3, size, size), dtype=torch.uint8, device=device)
        programs, rows = self.draws(seed, indices)
        on = torch.cuda.current_stream(device) if device.type == "cuda" else None
        try:
            images = self._render(programs, rows, size, on)
        except RenderTimeout as exc:
            raise RenderTimeout(f"generator {self.name!r}: {exc}. Raise render_timeout or exclude the program") from None
        return torch.as_tensor(images).to(device)

    def sample_with_programs(self, seed: int, n: int, size: int, start: int = 0) -> tuple[torch.Tensor, list[str]]:
        """`sample` plus the name of the program behind each image."""
        images = self.sample(seed, n, size, start)
        programs, _ = self.draws(seed, list(range(start, start + n)))
        return images, [p.name for p in programs]

    def time_split(self) -> dict[str, float]:
        """Rendering time by part, counted by this process's renderer (shared by every
        shader generator of the process)."""
        return renderer().seconds()

    def describe(self) -> dict[str, Any]:
        """Parameters plus the selected programs, by name and a digest of their code: an
        edited program file changes the key, a corpus moved to another folder does not."""
        out = super().describe()
        out["program_sources"] = stable_hash([[p.name, p.digest] for p in self.candidates()])
        return out

    def close(self) -> None:
        self._library = None


@hookimpl
def register_generators(register: Any) -> None:
    register("shaders", Shaders)
