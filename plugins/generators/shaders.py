"""`shaders`: Shadertoy-style fragment programs rendered headless with moderngl.

The library shipped in `harness_plugins.shaders` (the repository's `shaders/` folder)
holds original programs written for this harness; `paths` adds a user's corpus of
Shadertoy programs (shaders21k-style JSON or plain `.glsl` / `.frag` files with a
`mainImage`). Image i of stream `seed` draws, from (seed, i) alone, a program
(uniformly over the usable ones), `iTime ~ U(time_range)`, `iDate`, and sixteen U(0, 1)
values `iParams[4]` (vec4s) that the built-in programs read as colours, scales, warps
and counts. Uniforms follow Shadertoy (`iResolution = (size, size, size)`, `iFrame =
floor(iTime * fps)`, `iTimeDelta = 1 / fps`, `iFrameRate = fps`, `iMouse = 0`,
`iChannel0..3`); a program's output is read back flipped vertically (GL's origin is
bottom-left) and clamped to [0, 1] (NaN -> 0).

Rendering is batched: every image of a call is a tile of one framebuffer, drawn as one
instance of a full-tile quad, with its per-image uniforms passed as per-instance
attributes (flat varyings that `iTime`, `iFrame`, `iDate` and `iParams` are defined
as). So a batch costs one draw per distinct program and one readback. Each process has
its own EGL context, created on first use; a process forked from one that already holds
an EGL context (whose Mesa state does not survive the fork) renders through a helper
process instead (`RemoteRenderer`), with the same results.

iChannel policy (`channels`): "noise" (default) binds fixed procedural noise textures
to iChannel0..3 so programs that sample them still render; "exclude" drops such
programs. Programs that do not compile are skipped with a warning that names the file
and quotes the GLSL log; programs whose probe renders are all near-constant are dropped
from sampling with a warning naming them. Neither is ever an error while at least one
program is usable.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError
from harness.hookspecs import hookimpl
from harness.kinds import Generator

from harness_plugins.generators._seeding import check_sample_args, derive_seed, number, reject_unknown, rng, uniforms

if TYPE_CHECKING:
    import numpy as np
    import torch


class ShaderWarning(UserWarning):
    """A shader program was skipped (does not compile, renders near-constant images, or
    is not a single-pass Shadertoy program)."""


# ------------------------------------------------------------------------- programs
SHADERTOY_UNIFORMS = (
    "iResolution", "iTime", "iGlobalTime", "iTimeDelta", "iFrame", "iFrameRate", "iMouse", "iDate",
    "iSampleRate", "iChannelTime", "iChannelResolution", "iChannel0", "iChannel1", "iChannel2", "iChannel3",
)
_UNIFORM_DECL = re.compile(
    r"^\s*uniform\s+\w+\s+(" + "|".join(SHADERTOY_UNIFORMS) + r")\s*(\[\s*\d*\s*\])?\s*;[^\n]*$", re.M
)
_VERSION = re.compile(r"^\s*#\s*version[^\n]*$", re.M)
_MAIN_IMAGE = re.compile(r"\bvoid\s+mainImage\s*\(")
_CHANNEL = re.compile(r"\biChannel[0-3]\b")
CHANNEL_TYPES = ("2d", "cube", "3d")


@dataclass
class Program:
    """One single-pass Shadertoy program: `code` defines `mainImage`."""

    name: str
    code: str
    origin: str  # where it came from (a file, or the library)
    common: str = ""  # code shared by the passes (Shadertoy's Common tab / our prelude)
    channels: tuple[str, ...] = ("2d", "2d", "2d", "2d")  # sampler kind of iChannel0..3

    @property
    def uses_channels(self) -> bool:
        return bool(_CHANNEL.search(self.code) or _CHANNEL.search(self.common))

    @property
    def digest(self) -> str:
        key = (self.code, self.common, self.channels)
        if getattr(self, "_digest_of", None) != key:
            text = json.dumps([self.code, self.common, list(self.channels)])
            self._digest_of, self._digest = key, hashlib.sha256(text.encode()).hexdigest()[:16]
        return self._digest


def _clean(code: str) -> str:
    """Shadertoy code as pasted: drop `#version` and re-declared Shadertoy uniforms."""
    code = code.replace("\r\n", "\n")
    code = _VERSION.sub("", code)
    return _UNIFORM_DECL.sub("", code)


def library_dir() -> Any:
    from importlib.resources import files

    return files("harness_plugins.shaders")


def library_names() -> list[str]:
    """The names of the built-in programs (files `shaders/*.glsl`, `_*.glsl` excluded)."""
    return sorted(
        p.name[: -len(".glsl")]
        for p in library_dir().iterdir()
        if p.name.endswith(".glsl") and not p.name.startswith("_")
    )


def load_library() -> list[Program]:
    """The built-in programs, each with the shared prelude `_common.glsl`."""
    root = library_dir()
    common = _clean(root.joinpath("_common.glsl").read_text())
    return [
        Program(name, _clean(root.joinpath(name + ".glsl").read_text()), f"library program {name}.glsl", common)
        for name in library_names()
    ]


def _warn(message: str) -> None:
    warnings.warn(message, ShaderWarning, stacklevel=3)


def _channel_kind(ctype: Any) -> str:
    return {"cubemap": "cube", "volume": "3d"}.get(str(ctype), "2d")


def _from_json(path: Path, name: str) -> Program | None:
    """A shaders21k / Shadertoy-API JSON program; multi-pass programs are rejected."""
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError) as exc:
        _warn(f"shader program {name!r} ({path}): not readable as JSON ({exc}); skipped")
        return None
    shader = data.get("Shader", data) if isinstance(data, dict) else None
    passes = shader.get("renderpass") if isinstance(shader, dict) else None
    if not isinstance(passes, list) or not passes:
        _warn(f"shader program {name!r} ({path}): no `renderpass` list (not a Shadertoy JSON program); skipped")
        return None
    kinds = [str(p.get("type", "image")) if isinstance(p, dict) else "?" for p in passes]
    images = [p for p, k in zip(passes, kinds) if k == "image"]
    others = [k for k in kinds if k not in ("image", "common")]
    if len(images) != 1 or others:
        _warn(f"shader program {name!r} ({path}): multi-pass program (passes: {', '.join(kinds)}); "
              "only single-pass programs are rendered; skipped")
        return None
    image = images[0]
    code = image.get("code")
    if not isinstance(code, str):
        _warn(f"shader program {name!r} ({path}): renderpass has no `code`; skipped")
        return None
    common = "\n".join(str(p.get("code", "")) for p, k in zip(passes, kinds) if k == "common")
    channels = ["2d"] * 4
    for inp in image.get("inputs") or []:
        if isinstance(inp, dict):
            slot = inp.get("channel", inp.get("id"))
            if isinstance(slot, int) and 0 <= slot < 4:
                channels[slot] = _channel_kind(inp.get("ctype", inp.get("type")))
    return Program(name, _clean(code), str(path), _clean(common), tuple(channels))


def load_paths(paths: list[str]) -> list[Program]:
    """Programs from a user's folders and files (`*.json`, `*.glsl`, `*.frag`)."""
    programs: list[Program] = []
    for raw in paths:
        root = Path(raw).expanduser()
        if root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".json", ".glsl", ".frag") and p.is_file())
            base = root
        elif root.is_file():
            files, base = [root], root.parent
        else:
            raise FileNotFoundError(f"parameter `paths`: {root} is neither a file nor a folder")
        for path in files:
            name = path.relative_to(base).with_suffix("").as_posix()
            if path.suffix.lower() == ".json":
                program = _from_json(path, name)
            else:
                program = Program(name, _clean(path.read_text(encoding="utf-8", errors="replace")), str(path))
            if program is None:
                continue
            if not _MAIN_IMAGE.search(program.code):
                _warn(f"shader program {name!r} ({path}): no `void mainImage(out vec4, in vec2)`; skipped")
                continue
            programs.append(program)
    return programs


# ------------------------------------------------------------------------- GLSL
VERTEX_SHADER = """#version 330 core
in vec2 in_pos;
in vec2 in_origin;
in vec4 in_time;
in vec4 in_date;
in vec4 in_p0;
in vec4 in_p1;
in vec4 in_p2;
in vec4 in_p3;
uniform vec2 u_fb;
uniform float u_size;
flat out vec2 st_origin;
flat out vec4 st_time;
flat out vec4 st_date;
flat out vec4 st_params[4];
void main() {
    vec2 px = in_origin + in_pos * u_size;
    gl_Position = vec4(px / u_fb * 2.0 - 1.0, 0.0, 1.0);
    st_origin = in_origin;
    st_time = in_time;
    st_date = in_date;
    st_params[0] = in_p0;
    st_params[1] = in_p1;
    st_params[2] = in_p2;
    st_params[3] = in_p3;
}
"""

_FRAGMENT_HEADER = """#version 330 core
flat in vec2 st_origin;
flat in vec4 st_time;
flat in vec4 st_date;
flat in vec4 st_params[4];
uniform vec3 iResolution;
uniform float iTimeDelta;
uniform float iFrameRate;
uniform vec4 iMouse;
uniform float iSampleRate;
uniform float iChannelTime[4];
uniform vec3 iChannelResolution[4];
uniform {c0} iChannel0;
uniform {c1} iChannel1;
uniform {c2} iChannel2;
uniform {c3} iChannel3;
#define iTime st_time.x
#define iGlobalTime st_time.x
#define iFrame int(st_time.y)
#define iDate st_date
#define iParams st_params
out vec4 st_fragColor;
"""

_FRAGMENT_FOOTER = """
void main() {
    vec4 st_c = vec4(0.0, 0.0, 0.0, 1.0);
    mainImage(st_c, gl_FragCoord.xy - st_origin);
    vec3 st_rgb = st_c.rgb;
    if (any(isnan(st_rgb))) st_rgb = vec3(0.0);
    st_fragColor = vec4(clamp(st_rgb, 0.0, 1.0), 1.0);
}
"""

_SAMPLER = {"2d": "sampler2D", "cube": "samplerCube", "3d": "sampler3D"}


def fragment_source(program: Program) -> str:
    """The complete fragment shader: Shadertoy header, the program, and a `main`.

    `#line` directives make the GLSL log's line numbers those of the program's code.
    """
    header = _FRAGMENT_HEADER.format(**{f"c{i}": _SAMPLER[k] for i, k in enumerate(program.channels)})
    parts = [header]
    if program.common.strip():
        parts += ["#line 1 1", program.common]
    parts += ["#line 1 0", program.code, "#line 100000 2", _FRAGMENT_FOOTER]
    return "\n".join(parts)


# ------------------------------------------------------------------------- renderer
INSTANCE_FLOATS = 26  # origin 2, time 4, date 4, params 16
NOISE_SIZES = (256, 64, 256, 32)  # iChannel0..3: white, coarse white, smooth, very coarse


def _gl_error(exc: BaseException) -> HarnessError:
    return HarnessError(
        f"cannot create a headless OpenGL 3.3 context through EGL ({type(exc).__name__}: {exc}). "
        "The shader generators render with moderngl on EGL; on Debian/Ubuntu install the packages "
        "libegl1 and libgl1-mesa-dri (Mesa's llvmpipe renders on the CPU, no GPU needed)."
    )


def _noise_textures() -> list[Any]:
    """The fixed RGBA8 textures bound to iChannel0..3 (same bytes everywhere)."""
    import numpy as np

    out = []
    for i, size in enumerate(NOISE_SIZES):
        tex = rng("shaders-ichannel", i).integers(0, 256, (size, size, 4)).astype(np.uint8)
        if i == 2:  # smooth noise: a wrapped box blur of white noise, re-stretched
            f = tex.astype(np.float32)
            for axis in (0, 1):
                f = sum(np.roll(f, s, axis=axis) for s in range(-4, 5)) / 9.0
            f = (f - f.mean()) / (f.std() + 1e-6) * 64.0 + 128.0
            tex = np.clip(f, 0, 255).astype(np.uint8)
        out.append(tex)
    return out


def _load_triton_first() -> None:
    """Import triton (when installed) before a GL context exists. Mesa's llvmpipe and
    triton each carry an LLVM; loading triton's after Mesa's crashes the process (torch
    imports triton lazily, e.g. for FLOP counting or torch.compile), the other order works."""
    with contextlib.suppress(Exception):  # absent or broken: nothing to order
        import triton  # noqa: F401


class Renderer:
    """One EGL context, the compiled programs, and the tiled framebuffers of a process."""

    def __init__(self) -> None:
        try:
            import moderngl
        except ImportError as exc:  # pragma: no cover - moderngl is a dependency
            raise _gl_error(exc) from None
        _load_triton_first()
        try:
            self.ctx = moderngl.create_standalone_context(backend="egl", require=330)
        except Exception as exc:
            raise _gl_error(exc) from None
        import numpy as np

        self.moderngl = moderngl
        self.pid = os.getpid()
        self.quad = self.ctx.buffer(np.array([0, 0, 1, 0, 0, 1, 1, 1], dtype="f4").tobytes())
        self.compiled: dict[str, Any] = {}  # digest -> (program, vao, instance buffer, capacity) or error
        self.fbos: dict[tuple[int, int], Any] = {}
        noise = _noise_textures()
        self.textures: dict[str, list[Any]] = {"2d": [], "cube": [], "3d": []}
        for i, tex in enumerate(noise):
            t2 = self.ctx.texture(tex.shape[:2], 4, tex.tobytes())
            t2.repeat_x = t2.repeat_y = True
            t2.build_mipmaps()
            t2.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
            self.textures["2d"].append(t2)
            face = tex[:32, :32].tobytes()
            cube = self.ctx.texture_cube((32, 32), 4, face * 6)
            cube.filter = (moderngl.LINEAR, moderngl.LINEAR)
            self.textures["cube"].append(cube)
            vol = rng("shaders-ichannel-3d", i).integers(0, 256, (32, 32, 32, 4)).astype(np.uint8)
            t3 = self.ctx.texture3d((32, 32, 32), 4, vol.tobytes())
            t3.repeat_x = t3.repeat_y = t3.repeat_z = True
            t3.filter = (moderngl.LINEAR, moderngl.LINEAR)
            self.textures["3d"].append(t3)

    def compile(self, program: Program) -> str | None:
        """Compile and link `program`; the GLSL log when that fails, else None."""
        key = program.digest
        if key in self.compiled:
            entry = self.compiled[key]
            return entry if isinstance(entry, str) else None
        try:
            prog = self.ctx.program(vertex_shader=VERTEX_SHADER, fragment_shader=fragment_source(program))
        except Exception as exc:  # moderngl.Error carries the compiler's log
            log = str(exc).strip()
            self.compiled[key] = log or "compilation failed"
            return self.compiled[key]
        for name, value in (
            ("iTimeDelta", 0.0), ("iFrameRate", 0.0), ("iMouse", (0.0, 0.0, 0.0, 0.0)), ("iSampleRate", 44100.0),
        ):
            if name in prog:
                prog[name].value = value
        for i, kind in enumerate(program.channels):
            if f"iChannel{i}" in prog:
                prog[f"iChannel{i}"].value = i
        if "iChannelResolution" in prog:
            prog["iChannelResolution"].value = [
                (float(s), float(s), 1.0) if program.channels[i] == "2d" else (32.0, 32.0, 32.0)
                for i, s in enumerate(NOISE_SIZES)
            ]
        self.compiled[key] = [prog, None, None, 0]
        return None

    def _vao(self, program: Program, count: int) -> tuple[Any, Any, Any]:
        entry = self.compiled[program.digest]
        prog, vao, buf, capacity = entry
        if count > capacity:
            if vao is not None:
                vao.release()
                buf.release()
            capacity = max(count, 2 * capacity, 16)
            buf = self.ctx.buffer(reserve=capacity * INSTANCE_FLOATS * 4)
            vao = self.ctx.vertex_array(
                prog,
                [
                    (self.quad, "2f", "in_pos"),
                    (buf, "2f 4f 4f 4f 4f 4f 4f/i", "in_origin", "in_time", "in_date", "in_p0", "in_p1", "in_p2", "in_p3"),
                ],
                skip_errors=True,
            )
            entry[1:] = [vao, buf, capacity]
        return prog, vao, buf

    def _fbo(self, width: int, height: int) -> Any:
        key = (width, height)
        if key not in self.fbos:
            if len(self.fbos) > 4:
                for fbo in self.fbos.values():
                    fbo.release()
                self.fbos.clear()
            self.fbos[key] = self.ctx.simple_framebuffer((width, height), components=4)
        return self.fbos[key]

    def render(self, programs: list[Program], rows: Any, size: int, fps: float) -> np.ndarray:
        """Images [n, size, size, 3] uint8 (top row first) of `programs[i]` with the
        per-image values `rows[i]` = (iTime, iFrame, iDate[4], iParams[16])."""
        import numpy as np

        n = len(programs)
        out = np.empty((n, size, size, 3), dtype=np.uint8)
        cols = max(1, min(n, 2048 // size))
        max_rows = max(1, 2048 // size)
        per_frame = cols * max_rows
        for f0 in range(0, n, per_frame):
            m = min(per_frame, n - f0)
            grid_rows = -(-m // cols)
            width, height = cols * size, grid_rows * size
            fbo = self._fbo(cols * size, max_rows * size)
            fbo.use()
            self.ctx.viewport = (0, 0, width, height)
            fbo.clear(0.0, 0.0, 0.0, 1.0, viewport=(0, 0, width, height))
            tiles = np.arange(m)
            data = np.zeros((m, INSTANCE_FLOATS), dtype=np.float32)
            data[:, 0] = (tiles % cols) * size
            data[:, 1] = (tiles // cols) * size
            data[:, 2:4] = rows[f0:f0 + m, 0:2]
            data[:, 6:26] = rows[f0:f0 + m, 2:22]
            groups: dict[str, list[int]] = {}
            for j in range(m):
                groups.setdefault(programs[f0 + j].digest, []).append(j)
            for digest, members in groups.items():
                program = programs[f0 + members[0]]
                prog, vao, buf = self._vao(program, len(members))
                prog["u_fb"].value = (float(width), float(height))
                prog["u_size"].value = float(size)
                if "iResolution" in prog:
                    prog["iResolution"].value = (float(size), float(size), float(size))
                if "iTimeDelta" in prog:
                    prog["iTimeDelta"].value = 1.0 / fps
                if "iFrameRate" in prog:
                    prog["iFrameRate"].value = float(fps)
                if "iChannelTime" in prog:
                    prog["iChannelTime"].value = [0.0] * 4
                for i, kind in enumerate(program.channels):
                    if f"iChannel{i}" in prog:
                        self.textures[kind][i].use(location=i)
                buf.write(data[members].tobytes())
                vao.render(self.moderngl.TRIANGLE_STRIP, vertices=4, instances=len(members))
            raw = fbo.read(viewport=(0, 0, width, height), components=3, alignment=1)
            grid = np.frombuffer(raw, dtype=np.uint8).reshape(grid_rows, size, cols, size, 3)
            tiles_img = grid.transpose(0, 2, 1, 3, 4).reshape(grid_rows * cols, size, size, 3)[:m]
            out[f0:f0 + m] = tiles_img[:, ::-1]  # GL rows run bottom-up
        return out

    def release(self) -> None:
        self.ctx.release()


class RemoteRenderer:
    """A Renderer in a fresh helper process (`python -m harness_plugins.generators.shaders
    --render-server`), spoken to over its stdin/stdout.

    Used by a process forked from one that already holds an EGL context: Mesa's state
    (llvmpipe's rasteriser threads) does not survive fork, so such a child cannot render
    itself, while a freshly started interpreter can. Same programs, same bytes.
    """

    def __init__(self) -> None:
        import subprocess
        import sys

        self.pid = os.getpid()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness_plugins.generators.shaders", "--render-server"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        self.known: dict[str, str | None] = {}
        import weakref

        weakref.finalize(self, _stop_server, self.proc)

    def _call(self, *request: Any) -> Any:
        import pickle

        data = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.proc.stdin.write(len(data).to_bytes(8, "little") + data)
            self.proc.stdin.flush()
            head = self.proc.stdout.read(8)
            if len(head) < 8:
                raise EOFError
            reply = pickle.loads(self.proc.stdout.read(int.from_bytes(head, "little")))
        except (BrokenPipeError, EOFError, OSError):
            raise HarnessError(
                f"the shader render process exited (status {self.proc.poll()}); see its messages above"
            ) from None
        status, value = reply
        if status == "error":
            raise HarnessError(value)
        return value

    def compile(self, program: Program) -> str | None:
        if program.digest not in self.known:
            self.known[program.digest] = self._call("compile", program)
        return self.known[program.digest]

    def render(self, programs: list[Program], rows: Any, size: int, fps: float) -> np.ndarray:
        for program in {p.digest: p for p in programs}.values():
            self.compile(program)
        return self._call("render", [p.digest for p in programs], rows, size, fps)


def _stop_server(proc: Any) -> None:
    try:
        proc.stdin.close()
        proc.wait(timeout=5)
    except Exception:  # pragma: no cover - best effort at exit
        proc.kill()


def _serve() -> None:
    """The render server's loop: length-prefixed pickles in on stdin, out on stdout."""
    import pickle
    import sys
    import traceback

    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write to the protocol stream
    gl: Renderer | None = None
    programs: dict[str, Program] = {}
    while True:
        head = inp.read(8)
        if len(head) < 8:
            return
        op, *args = pickle.loads(inp.read(int.from_bytes(head, "little")))
        try:
            if gl is None:
                gl = Renderer()
            if op == "compile":
                programs[args[0].digest] = args[0]
                reply: Any = ("ok", gl.compile(args[0]))
            elif op == "render":
                digests, rows, size, fps = args
                reply = ("ok", gl.render([programs[d] for d in digests], rows, size, fps))
            else:
                reply = ("error", f"unknown request {op!r}")
        except HarnessError as exc:
            reply = ("error", str(exc))
        except Exception:
            reply = ("error", "shader render process failed:\n" + traceback.format_exc())
        data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        out.write(len(data).to_bytes(8, "little") + data)
        out.flush()


_RENDERER: Renderer | RemoteRenderer | None = None
_GL_OWNER: int | None = None  # the process that created an EGL context here (inherited by forks)


def renderer() -> Renderer | RemoteRenderer:
    """This process's renderer: in-process, unless this process was forked from one that
    already holds an EGL context (then a render server), or HARNESS_GL=subprocess."""
    global _RENDERER, _GL_OWNER
    pid = os.getpid()
    if _RENDERER is None or _RENDERER.pid != pid:
        forked = _GL_OWNER is not None and _GL_OWNER != pid
        if forked or os.environ.get("HARNESS_GL") == "subprocess":
            _RENDERER = RemoteRenderer()
        else:
            _RENDERER = Renderer()
            _GL_OWNER = pid
    return _RENDERER


# ------------------------------------------------------------------------- generator
PROBE_SIZE = 32
PROBE_DRAWS = 4
CONSTANT_STD = 2.0  # an image whose channels all have a smaller spatial std (0..255) is near-constant


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


class Shaders(Generator):
    """Shadertoy programs rendered headless.

    Params: programs (name patterns over the library, default all), exclude (patterns),
    paths (user folders/files of Shadertoy programs), builtin (include the library,
    default true), channels ("noise" or "exclude"), time_range ([0.1, 10]), fps (10).
    """

    version = 1

    def __init__(
        self,
        name: str | None = None,
        programs: list[str] | str = "*",
        exclude: list[str] | str = (),
        paths: list[str] | str = (),
        builtin: bool = True,
        channels: str = "noise",
        time_range: list[float] | tuple[float, float] = (0.1, 10.0),
        fps: float = 10.0,
        **unknown: Any,
    ) -> None:
        reject_unknown("shaders", unknown, "programs, exclude, paths, builtin, channels, time_range, fps")
        programs = [programs] if isinstance(programs, str) else list(programs)
        exclude = [exclude] if isinstance(exclude, str) else list(exclude)
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        for label, value in (("programs", programs), ("exclude", exclude), ("paths", paths)):
            if not all(isinstance(v, (str, os.PathLike)) for v in value):
                raise TypeError(f"parameter `{label}` must be a list of strings, got {value!r}")
        if not isinstance(builtin, bool):
            raise TypeError(f"parameter `builtin` must be true or false, got {builtin!r}")
        if channels not in ("noise", "exclude"):
            raise TypeError(f"parameter `channels` must be 'noise' or 'exclude', got {channels!r}")
        if not (isinstance(time_range, (list, tuple)) and len(time_range) == 2):
            raise TypeError(f"parameter `time_range` must be [low, high], got {time_range!r}")
        t0, t1 = number("time_range[0]", time_range[0]), number("time_range[1]", time_range[1])
        if t1 < t0:
            raise TypeError(f"parameter `time_range` must have low <= high, got {time_range!r}")
        fps = number("fps", fps, 1e-3, 1e4)
        paths = [str(p) for p in paths]
        super().__init__(
            name, programs=programs, exclude=exclude, paths=paths, builtin=builtin, channels=channels,
            time_range=[t0, t1], fps=fps,
        )
        self.patterns, self.exclude, self.paths = programs, exclude, paths
        self.builtin, self.channels, self.time_range, self.fps = builtin, channels, (t0, t1), fps
        self._candidates: list[Program] | None = None
        self._library: _Library | None = None
        self._library_pid: int | None = None

    # ---------------------------------------------------------------- the program set
    def candidates(self) -> list[Program]:
        """The programs selected by the parameters, before compiling (no GL needed)."""
        if self._candidates is None:
            found: list[Program] = []
            if self.builtin:
                found += [p for p in load_library() if self._selected(p.name)]
            if self.paths:
                user = [p for p in load_paths(self.paths) if self._selected(p.name)]
                names = {p.name for p in found}
                for p in user:
                    if p.name in names:
                        p.name = f"user:{p.name}"
                    names.add(p.name)
                found += user
            if self.channels == "exclude":
                dropped = [p.name for p in found if p.uses_channels]
                if dropped:
                    _warn(f"channels='exclude': dropping {len(dropped)} program(s) that sample iChannel0..3: "
                          + ", ".join(dropped))
                found = [p for p in found if not p.uses_channels]
            if not found:
                raise HarnessError(
                    f"generator {self.name!r}: no shader programs selected (programs={self.patterns}, "
                    f"exclude={self.exclude}, paths={self.paths}, builtin={self.builtin})"
                )
            self._candidates = found
        return self._candidates

    def _selected(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.patterns) and not any(
            fnmatch.fnmatchcase(name, p) for p in self.exclude
        )

    def library(self) -> _Library:
        """Compile every candidate and probe it (once per process)."""
        if self._library is not None and self._library_pid == os.getpid():
            return self._library
        import numpy as np

        gl = renderer()
        lib = _Library()
        compiled = []
        for program in self.candidates():
            log = gl.compile(program)
            if log is None:
                compiled.append(program)
            else:
                lib.failed[program.name] = log
                _warn(f"shader program {program.name!r} ({program.origin}) does not compile; skipped. GLSL log:\n{log}")
        if compiled:
            probes: list[Program] = []
            rows = []
            for program in compiled:
                probes += [program] * PROBE_DRAWS
                rows.append(self._draw(uniforms(derive_seed("shaders-probe", program.name), range(PROBE_DRAWS), 24)))
            images = gl.render(probes, np.concatenate(rows), PROBE_SIZE, self.fps)
            flat = near_constant(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
            flat = flat.reshape(len(compiled), PROBE_DRAWS).all(dim=1).tolist()
            lib.constant = [p.name for p, c in zip(compiled, flat) if c]
            lib.usable = [p for p, c in zip(compiled, flat) if not c]
            if lib.constant:
                _warn(f"shader program(s) render near-constant images and are dropped from sampling: "
                      + ", ".join(f"{p.name!r} ({p.origin})" for p, c in zip(compiled, flat) if c))
        if not lib.usable:
            raise HarnessError(
                f"generator {self.name!r}: none of the {len(self.candidates())} selected shader programs is usable "
                f"({len(lib.failed)} do not compile, {len(lib.constant)} render near-constant images)"
            )
        self._library, self._library_pid = lib, os.getpid()
        return lib

    def program_names(self) -> list[str]:
        """The programs that images are drawn from (compiles them on first use)."""
        return [p.name for p in self.library().usable]

    # ---------------------------------------------------------------- sampling
    def _draw(self, u: Any) -> Any:
        """Per-image values (iTime, iFrame, iDate[4], iParams[16]) [n, 22] from U(0,1)
        draws [n, 24] (u[:, 0] picks the program, u[:, 1] the time, u[:, 2:6] the date,
        u[:, 6:22] iParams)."""
        import numpy as np

        t0, t1 = self.time_range
        u = np.atleast_2d(u)
        rows = np.empty((len(u), 22), dtype=np.float64)
        rows[:, 0] = t0 + (t1 - t0) * u[:, 1]
        rows[:, 1] = np.floor(rows[:, 0] * self.fps)
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
        import torch

        seed, n, size, start = check_sample_args(seed, n, size, start)
        if n == 0:
            return torch.zeros((0, 3, size, size), dtype=torch.uint8)
        programs, rows = self.draws(seed, list(range(start, start + n)))
        images = renderer().render(programs, rows, size, self.fps)
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

    def sample_with_programs(self, seed: int, n: int, size: int, start: int = 0) -> tuple[torch.Tensor, list[str]]:
        """`sample` plus the name of the program behind each image."""
        images = self.sample(seed, n, size, start)
        programs, _ = self.draws(seed, list(range(start, start + n)))
        return images, [p.name for p in programs]

    def describe(self) -> dict[str, Any]:
        """Parameters plus a digest of the selected programs' code (a changed file
        changes the key)."""
        out = super().describe()
        digest = hashlib.sha256("".join(p.digest for p in self.candidates()).encode()).hexdigest()[:16]
        out["programs_digest"] = digest
        return out

    def close(self) -> None:
        self._library = None


# ------------------------------------------------------------------------- diversity
def diversity_report(generator: Any = "shaders", n: int = 1000, size: int = 64, seed: int = 0,
                     feature_size: int = 8) -> dict[str, Any]:
    """Diversity of a generator's images (a name or an instance): the fraction of
    near-constant images, the mean pairwise distance of downsampled RGB features
    (feature_size^2 x 3 area-averaged values in [0, 1], Euclidean, divided by sqrt(dim),
    i.e. the RMS difference), and for shader generators per program its share of the
    images, its near-constant fraction and its own mean pairwise distance.

    `python -m harness_plugins.generators.shaders --diversity [NAME]` prints it as JSON."""
    import torch
    import torch.nn.functional as F

    if isinstance(generator, str):
        from harness.api import get_generator

        generator = get_generator(generator)
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


@hookimpl
def register_generators(register: Any) -> None:
    register("shaders", Shaders)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--render-server"]:
        _serve()
    elif sys.argv[1:2] == ["--diversity"]:
        report = diversity_report(sys.argv[2] if len(sys.argv) > 2 else "shaders")
        print(json.dumps(report, indent=1))
    else:
        print("usage: python -m harness_plugins.generators.shaders --render-server | --diversity [GENERATOR]", file=sys.stderr)
        sys.exit(2)
