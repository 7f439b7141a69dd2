"""The in-process shader renderer: one headless EGL context (moderngl), the compiled
programs, the fixed iChannel noise textures, and batched rendering into a tiled
framebuffer.

Every image of a call is a tile of one framebuffer, drawn as one instance of a
full-tile quad with its per-image values as per-instance attributes; a second pass on
the GL side lays the tiles' bytes out as the result is laid out, so a batch costs one
draw per distinct program, one reorder draw and one readback straight into the result.
With the compute pipeline a program's tiles are instead written by one compute dispatch
(an invocation per pixel, the per-image values in a storage buffer), into the same
texture; a program that needs the fragment stage is still drawn.
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
import warnings
from typing import TYPE_CHECKING, Any, Iterator

from harness.errors import HarnessError

from harness_plugins.generators._shader_inputs import channel_textures, set_draw_uniforms, set_fixed_uniforms
from harness_plugins.generators._shader_programs import (
    COMPUTE_GROUP, COMPUTE_ROWS_BINDING, COMPUTE_TARGET_UNIT, INSTANCE_FLOATS, VERTEX_SHADER, Program, ShaderWarning,
    compute_source, fragment_source,
)

if TYPE_CHECKING:
    import numpy as np

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
COPY_WRITE_BUFFER = 0x8F37  # a binding point no other code of the renderer uses
STREAM_READ = 0x88E1  # the usage hint of a buffer the GPU fills and the host reads once

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
        self.gl_bind_buffer, self.gl_buffer_data = gl.glBindBuffer, gl.glBufferData
        self.gl_bind_buffer.argtypes, self.gl_bind_buffer.restype = [ctypes.c_uint, ctypes.c_uint], None
        self.gl_buffer_data.argtypes = [ctypes.c_uint, ctypes.c_ssize_t, ctypes.c_void_p, ctypes.c_uint]
        self.gl_buffer_data.restype = None
        self.pid = os.getpid()
        self.quad = self.ctx.buffer(np.array([0, 0, 1, 0, 0, 1, 1, 1], dtype="f4").tobytes())
        self.compiled: dict[str, Any] = {}  # digest -> (program, vao, instance buffer, capacity) or error
        self.dispatched: dict[str, Any] = {}  # digest -> (compute program, values buffer, capacity), or None: drawn instead
        self.compute_capable = self.ctx.version_code >= 430
        self.frames: dict[int, tuple[Any, Any, tuple[Any, ...]]] = {}
        self.seconds: dict[str, float] = {}  # by part of the work, for `Generator.time_split`
        # Software rasterisers (Mesa's llvmpipe, softpipe) reorder a frame slower than numpy.
        self.reorder_on_gl = not any(name in self.ctx.info["GL_RENDERER"] for name in ("llvmpipe", "softpipe"))
        self.reorder = self.ctx.program(vertex_shader=REORDER_VERTEX, fragment_shader=REORDER_FRAGMENT)
        self.reorder["tiles"].value = REORDER_UNIT
        self.reorder_vao = self.ctx.vertex_array(self.reorder, [])
        self.textures = channel_textures(self.ctx)  # by sampler kind, iChannel0..3 each

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
        set_fixed_uniforms(prog, program)
        self.compiled[key] = [prog, None, None, 0]
        return None

    def _dispatch_entry(self, program: Program) -> list[Any] | None:
        """The compute program of `program` and its values buffer, compiled on first use;
        None where the program is drawn instead: it needs the fragment stage, the context
        has no compute shaders (OpenGL < 4.3), or its compute form does not compile (warned)."""
        key = program.digest
        if key not in self.dispatched:
            self.dispatched[key] = None
            if self.compute_capable and not program.fragment_only:
                try:
                    prog = self.ctx.compute_shader(compute_source(program))
                except Exception as exc:
                    warnings.warn(
                        f"shader program {program.name!r} ({program.origin}) does not compile as a compute program; "
                        f"it is drawn as a fragment program. GLSL log:\n{str(exc).strip()}", ShaderWarning, stacklevel=2,
                    )
                else:
                    set_fixed_uniforms(prog, program)
                    self.dispatched[key] = [prog, None, 0]
        return self.dispatched[key]

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
                buffers = tuple(self._read_buffer(4 * side * side) for _ in range(2))
            self.frames[side] = (self.ctx.framebuffer(color_attachments=[tiles]), byte_fbo, buffers)
        return self.frames[side]

    def _read_buffer(self, nbytes: int) -> Any:
        """A pixel buffer of `nbytes` that frames are read into. moderngl allocates a
        buffer for drawing from (GL_DYNAMIC_DRAW), which a GPU driver keeps in device
        memory, so that copying a frame out first moves it to the host; respecified as
        GL_STREAM_READ, the driver keeps it in host memory and the GPU writes the frame's
        bytes there itself, while it draws on."""
        buffer = self.ctx.buffer(reserve=nbytes)
        self.gl_bind_buffer(COPY_WRITE_BUFFER, buffer.glo)
        self.gl_buffer_data(COPY_WRITE_BUFFER, nbytes, None, STREAM_READ)
        self.gl_bind_buffer(COPY_WRITE_BUFFER, 0)
        return buffer

    @contextlib.contextmanager
    def _spent(self, part: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - start

    def render(self, programs: list[Program], rows: Any, size: int, fps: float, pipeline: str = "graphics") -> np.ndarray:
        """Images [n, 3, size, size] uint8 (top row first) of `programs[i]` with the
        per-image values `rows[i]` = (iTime, iFrame, iDate[4], iParams[16]), drawn
        (`pipeline` "graphics") or dispatched where the program allows it ("compute").

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
                    self._draw_tiles(
                        programs[f0:f0 + m], rows[f0:f0 + m], size, pitch, fps, cols, side, grid_rows * pitch,
                        tile_fbo.color_attachments[0] if pipeline == "compute" else None,
                    )
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
        self, programs: list[Program], rows: Any, size: int, pitch: int, fps: float, cols: int, width: int, height: int,
        target: Any = None,
    ) -> None:
        """Shade image j of the frame into the tile at (j % cols, j // cols) * pitch: one
        instanced draw per program, or, given the tile texture `target`, one compute
        dispatch per program that can run as one."""
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
        dispatched = False
        for members in groups.values():
            program = programs[members[0]]
            for i, kind in enumerate(program.channels):  # every unit: twigl's `b` samplers read unit 0
                self.textures[kind][i].use(location=i)
            entry = self._dispatch_entry(program) if target is not None else None
            if entry is None:
                prog, vao, buf = self._vao(program, len(members))
                set_draw_uniforms(prog, size, fps)
                prog["u_fb"].value = (float(width), float(height))
                prog["u_size"].value = float(size)
                buf.write(data[members].tobytes())
                vao.render(self.moderngl.TRIANGLE_STRIP, vertices=4, instances=len(members))
                continue
            if entry[2] < len(members):
                if entry[1] is not None:
                    entry[1].release()
                entry[2] = max(len(members), 2 * entry[2], 16)
                entry[1] = self.ctx.buffer(reserve=entry[2] * INSTANCE_FLOATS * 4)
            prog, buf = entry[0], entry[1]
            set_draw_uniforms(prog, size, fps)
            prog["u_side"].value = size
            prog["u_count"].value = len(members)
            buf.write(data[members].tobytes())
            buf.bind_to_storage_buffer(COMPUTE_ROWS_BINDING)
            target.bind_to_image(COMPUTE_TARGET_UNIT, read=False, write=True)
            groups_per_side = -(-size // COMPUTE_GROUP)
            prog.run(groups_per_side, groups_per_side, len(members))
            dispatched = True
        if dispatched:  # image stores become visible to the reorder pass and the readback
            self.ctx.memory_barrier()

    def release(self) -> None:
        self.ctx.release()
