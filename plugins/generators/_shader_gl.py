"""The in-process shader renderer: one headless EGL context (moderngl), the compiled
programs, the fixed iChannel noise textures, and batched rendering into a tiled
framebuffer.

Every image of a call is a tile of one framebuffer, drawn as one instance of a
full-tile quad with its per-image values as per-instance attributes; a second pass on
the GL side lays the tiles' bytes out as the result is laid out, so a batch costs one
draw per distinct program, one reorder draw and one readback straight into the result.
On a GPU the readback of a frame goes into a pixel buffer, and the host copies it out
while the GPU draws the next frame.

The waits for the GL work happen in `glFinish` or `glClientWaitSync` called through
ctypes, which let go of Python's GIL (moderngl's own calls hold it): so another thread
can stop waiting for a batch that runs past its render timeout (see
`_shader_server.LocalRenderer`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import os
import time
from typing import TYPE_CHECKING, Any, Iterator

from harness.errors import HarnessError

from harness_plugins.generators._seeding import rng
from harness_plugins.generators._shader_programs import VERTEX_SHADER, Program, fragment_source

if TYPE_CHECKING:
    import numpy as np

INSTANCE_FLOATS = 26  # origin 2, time 4, date 4, params 16
NOISE_SIZES = (256, 64, 256, 32)  # iChannel0..3: white, coarse white, smooth, very coarse
FRAME_SIDE = 4096  # pixels per side of the framebuffer a batch's tiles are drawn into
FRAMES_KEPT = 8  # frame sizes whose framebuffers a renderer keeps
REORDER_UNIT = 8  # the texture unit of the reorder pass (the programs' iChannels use 0..3)
# The parts of a render that `Renderer.seconds` counts.
DRAWS = "issue the draws (Python, GL calls)"
WAIT = "wait for the GL work"
READBACK = "read back"
REORDER = "lay the tiles out (numpy)"
# glFenceSync / glClientWaitSync (OpenGL 3.2)
SYNC_GPU_COMMANDS_COMPLETE = 0x9117
SYNC_FLUSH_COMMANDS_BIT = 0x1
TIMEOUT_EXPIRED = 0x911B
WAIT_FAILED = 0x911D
WAIT_SLICE_NS = 100_000_000  # one glClientWaitSync call waits at most this long

# The reorder pass: a triangle over the viewport; texel (x, y) of the byte framebuffer
# holds bytes 4 * (y * u_width + x) .. + 3 of the result [image, channel, row, column],
# fetched from the image's tile (GL rows bottom-up, so row r is tile row size - 1 - r;
# tiles start every u_pitch pixels).
REORDER_VERTEX = """#version 330 core
void main() {
    vec2 corner = vec2((gl_VertexID << 1) & 2, gl_VertexID & 2);
    gl_Position = vec4(corner * 2.0 - 1.0, 0.0, 1.0);
}
"""
REORDER_FRAGMENT = """#version 330 core
uniform sampler2D tiles;
uniform int u_size;
uniform int u_pitch;
uniform int u_cols;
uniform int u_width;
uniform int u_bytes;
out uvec4 out_bytes;
void main() {
    ivec2 texel = ivec2(gl_FragCoord.xy);
    int first = 4 * (texel.y * u_width + texel.x);
    uvec4 bytes = uvec4(0u);
    for (int k = 0; k < 4; ++k) {
        int b = first + k;
        if (b >= u_bytes) break;
        int column = b % u_size;
        int rest = b / u_size;
        int row = rest % u_size;
        rest /= u_size;
        int channel = rest % 3;
        int image = rest / 3;
        ivec2 at = ivec2((image % u_cols) * u_pitch + column, (image / u_cols) * u_pitch + u_size - 1 - row);
        bytes[k] = uint(round(texelFetch(tiles, at, 0)[channel] * 255.0));
    }
    out_bytes = bytes;
}
"""


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
        gl = ctypes.CDLL(ctypes.util.find_library("GL") or "libGL.so.1")  # as glcontext loads it
        self.gl_finish = gl.glFinish
        self.gl_fence_sync, self.gl_client_wait_sync, self.gl_delete_sync = gl.glFenceSync, gl.glClientWaitSync, gl.glDeleteSync
        self.gl_fence_sync.argtypes, self.gl_fence_sync.restype = [ctypes.c_uint, ctypes.c_uint], ctypes.c_void_p
        self.gl_client_wait_sync.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint64]
        self.gl_client_wait_sync.restype = ctypes.c_uint
        self.gl_delete_sync.argtypes, self.gl_delete_sync.restype = [ctypes.c_void_p], None
        self.pid = os.getpid()
        self.quad = self.ctx.buffer(np.array([0, 0, 1, 0, 0, 1, 1, 1], dtype="f4").tobytes())
        self.compiled: dict[str, Any] = {}  # digest -> (program, vao, instance buffer, capacity) or error
        self.frames: dict[int, tuple[Any, Any, tuple[Any, ...]]] = {}
        self.seconds: dict[str, float] = {}  # by part of the work, for `Generator.time_split`
        # Software rasterisers (Mesa's llvmpipe, softpipe) reorder a frame slower than numpy.
        self.reorder_on_gl = not any(name in self.ctx.info["GL_RENDERER"] for name in ("llvmpipe", "softpipe"))
        self.reorder = self.ctx.program(vertex_shader=REORDER_VERTEX, fragment_shader=REORDER_FRAGMENT)
        self.reorder["tiles"].value = REORDER_UNIT
        self.reorder_vao = self.ctx.vertex_array(self.reorder, [])
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

    def _frame(self, side: int) -> tuple[Any, Any, tuple[Any, ...]]:
        """The tile framebuffer of a frame `side` pixels square (its RGBA8 texture is what
        the reorder pass reads) and, on a GPU, the byte framebuffer (RGBA8UI: four bytes
        of the result per texel) of the same size and two pixel buffers its bytes are
        read into in turn; else None and ()."""
        if side not in self.frames:
            if len(self.frames) >= FRAMES_KEPT:
                for tile_fbo, byte_fbo, buffers in self.frames.values():
                    for fbo in (fbo for fbo in (tile_fbo, byte_fbo) if fbo is not None):
                        for texture in fbo.color_attachments:
                            texture.release()
                        fbo.release()
                    for buffer in buffers:
                        buffer.release()
                self.frames.clear()
            tiles = self.ctx.texture((side, side), 4)
            tiles.filter = (self.moderngl.NEAREST, self.moderngl.NEAREST)
            byte_fbo, buffers = None, ()
            if self.reorder_on_gl:
                byte_fbo = self.ctx.framebuffer(color_attachments=[self.ctx.texture((side, side), 4, dtype="u1")])
                buffers = tuple(self.ctx.buffer(reserve=4 * side * side, dynamic=True) for _ in range(2))
            self.frames[side] = (self.ctx.framebuffer(color_attachments=[tiles]), byte_fbo, buffers)
        return self.frames[side]

    @contextlib.contextmanager
    def _spent(self, part: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - start

    def render(self, programs: list[Program], rows: Any, size: int, fps: float) -> np.ndarray:
        """Images [n, 3, size, size] uint8 (top row first) of `programs[i]` with the
        per-image values `rows[i]` = (iTime, iFrame, iDate[4], iParams[16]).

        A frame holds up to (FRAME_SIDE / size)^2 tiles. On a GPU, a second pass on the
        GL side writes the frame's bytes in the order of the result (image, channel, row
        top-down, column), read straight into the result: the host copies nothing, which
        would otherwise cost more than the rendering. A software rasteriser runs that pass
        slower than numpy reorders the tiles (one strided copy), so there numpy does."""
        import numpy as np

        n = len(programs)
        # Tiles start on even pixels, so the 2 x 2 pixel quads that derivatives (dFdx,
        # fwidth) are taken over never straddle two tiles: an image does not depend on
        # where in the frame it is drawn, also at odd sizes.
        pitch = size + size % 2
        # Square frames a power of two tiles a side (few frame sizes to keep), at most FRAME_SIDE pixels.
        at_least = math.isqrt(max(n, 1) - 1) + 1  # ceil(sqrt(n))
        cols = min(max(1, FRAME_SIDE // pitch), 1 << math.ceil(math.log2(at_least)))
        per_frame = cols * cols
        image_bytes = 3 * size * size
        side = cols * pitch
        # One texel row of slack: a frame's last row of bytes may run past its images.
        flat = np.empty(n * image_bytes + 4 * side, dtype=np.uint8)
        images = flat[: n * image_bytes].reshape(n, 3, size, size)
        tile_fbo, byte_fbo, buffers = self._frame(side)
        pending: tuple[Any, Any, int, int] | None = None  # the last frame read into a pixel buffer, not yet copied out
        try:
            for frame, f0 in enumerate(range(0, n, per_frame)):
                m = min(per_frame, n - f0)
                grid_rows = -(-m // cols)
                with self._spent(DRAWS):
                    tile_fbo.use()
                    self.ctx.viewport = (0, 0, side, grid_rows * pitch)
                    tile_fbo.clear(0.0, 0.0, 0.0, 1.0, viewport=(0, 0, side, grid_rows * pitch))
                    self._draw_tiles(programs[f0:f0 + m], rows[f0:f0 + m], size, pitch, fps, cols, side, grid_rows * pitch)
                if byte_fbo is None:
                    self._read_on_host(tile_fbo, images[f0:f0 + m], pitch, cols)
                    continue
                fence, nbytes = self._reorder_into(tile_fbo.color_attachments[0], byte_fbo, buffers[frame % 2], m, size, pitch, cols)
                if pending is not None:
                    self._copy_out(pending, flat)  # while the GPU draws this frame
                pending = (fence, buffers[frame % 2], nbytes, f0 * image_bytes)
            if pending is not None:
                self._copy_out(pending, flat)
                pending = None
        finally:
            if pending is not None:
                self.gl_delete_sync(pending[0])
        return images

    def _read_on_host(self, tile_fbo: Any, images: np.ndarray, pitch: int, cols: int) -> None:
        """Read the frame's tiles back and copy them into `images` [m, 3, size, size] in order."""
        import numpy as np

        m, size = len(images), images.shape[-1]
        grid_rows = -(-m // cols)
        with self._spent(WAIT):
            self.gl_finish()  # the draws run here, without the GIL
        with self._spent(READBACK):
            raw = tile_fbo.read(viewport=(0, 0, cols * pitch, grid_rows * pitch), components=3, alignment=1)
        with self._spent(REORDER):
            grid = np.frombuffer(raw, dtype=np.uint8).reshape(grid_rows, pitch, cols, pitch, 3)
            in_order = grid[:, size - 1::-1, :, :size].transpose(0, 2, 4, 1, 3)  # [tile row, column, channel, y, x]
            full, rest = divmod(m, cols)
            images[: full * cols].reshape(full, cols, 3, size, size)[...] = in_order[:full]  # one strided copy
            if rest:
                images[full * cols:] = in_order[full, :rest]

    def _reorder_into(self, tiles: Any, byte_fbo: Any, buffer: Any, m: int, size: int, pitch: int, cols: int) -> tuple[Any, int]:
        """Lay the frame's m tiles out on the GL side (the reorder pass) and queue the read
        of their bytes into the pixel buffer `buffer`; returns a fence that is signalled
        once they are there, and their number (a whole last texel row, so a few more than
        the images hold)."""
        width = cols * pitch
        byte_rows = -(-m * 3 * size * size // (4 * width))
        with self._spent(DRAWS):
            byte_fbo.use()
            self.ctx.viewport = (0, 0, width, byte_rows)
            tiles.use(location=REORDER_UNIT)
            for name, value in (("u_size", size), ("u_pitch", pitch), ("u_cols", cols), ("u_width", width),
                                ("u_bytes", m * 3 * size * size)):
                self.reorder[name].value = value
            self.reorder_vao.render(self.moderngl.TRIANGLES, vertices=3)
            byte_fbo.read_into(buffer, viewport=(0, 0, width, byte_rows), components=4, dtype="u1")
            fence = self.gl_fence_sync(SYNC_GPU_COMMANDS_COMPLETE, 0)
        return fence, 4 * width * byte_rows

    def _copy_out(self, pending: tuple[Any, Any, int, int], flat: np.ndarray) -> None:
        """Wait (without the GIL) for a frame's bytes to be in their pixel buffer, then
        copy them into `flat` from their offset on."""
        fence, buffer, nbytes, offset = pending
        with self._spent(WAIT):
            try:
                status = TIMEOUT_EXPIRED
                while status == TIMEOUT_EXPIRED:
                    status = self.gl_client_wait_sync(fence, SYNC_FLUSH_COMMANDS_BIT, WAIT_SLICE_NS)
            finally:
                self.gl_delete_sync(fence)
            if status == WAIT_FAILED:
                raise HarnessError("waiting for the GL renderer failed (glClientWaitSync); the GL context may be lost")
        with self._spent(READBACK):
            buffer.read_into(flat, size=nbytes, write_offset=offset)

    def _draw_tiles(
        self, programs: list[Program], rows: Any, size: int, pitch: int, fps: float, cols: int, width: int, height: int
    ) -> None:
        """Draw image j of the frame into the tile at (j % cols, j // cols) * pitch: one
        instanced draw per program."""
        import numpy as np

        m = len(programs)
        tiles = np.arange(m)
        data = np.zeros((m, INSTANCE_FLOATS), dtype=np.float32)
        data[:, 0] = (tiles % cols) * pitch
        data[:, 1] = (tiles // cols) * pitch
        data[:, 2:4] = rows[:, 0:2]
        data[:, 6:26] = rows[:, 2:22]
        groups: dict[str, list[int]] = {}
        for j in range(m):
            groups.setdefault(programs[j].digest, []).append(j)
        for members in groups.values():
            program = programs[members[0]]
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

    def release(self) -> None:
        self.ctx.release()
