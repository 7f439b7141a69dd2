"""The in-process shader renderer: one headless EGL context (moderngl), the compiled
programs, the fixed iChannel noise textures, and batched rendering into a tiled
framebuffer.

Every image of a call is a tile of one framebuffer, drawn as one instance of a
full-tile quad with its per-image values as per-instance attributes, so a batch costs
one draw per distinct program and one readback.

The wait for a batch's draws happens in `glFinish` called through ctypes, which lets go
of Python's GIL (moderngl's own calls hold it): so another thread can stop waiting for a
batch that runs past its render timeout (see `_shader_server.LocalRenderer`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError

from harness_plugins.generators._seeding import rng
from harness_plugins.generators._shader_programs import VERTEX_SHADER, Program, fragment_source

if TYPE_CHECKING:
    import numpy as np

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
        self.gl_finish = ctypes.CDLL(ctypes.util.find_library("GL") or "libGL.so.1").glFinish  # as glcontext loads it
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
                for i, kind in enumerate(program.channels):  # every unit: twigl's `b` samplers read unit 0
                    self.textures[kind][i].use(location=i)
                buf.write(data[members].tobytes())
                vao.render(self.moderngl.TRIANGLE_STRIP, vertices=4, instances=len(members))
            self.gl_finish()  # the draws run here, without the GIL
            raw = fbo.read(viewport=(0, 0, width, height), components=3, alignment=1)
            grid = np.frombuffer(raw, dtype=np.uint8).reshape(grid_rows, size, cols, size, 3)
            tiles_img = grid.transpose(0, 2, 1, 3, 4).reshape(grid_rows * cols, size, size, 3)[:m]
            out[f0:f0 + m] = tiles_img[:, ::-1]  # GL rows run bottom-up
        return out

    def release(self) -> None:
        self.ctx.release()
