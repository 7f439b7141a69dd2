"""How a rendered frame's bytes leave the GL context (the renderer of `_shader_gl` draws
the frames).

Under a software rasteriser (Mesa's llvmpipe) the frame's tiles are read back and laid
out by numpy in one strided copy. On a GPU a second GL pass writes the frame's bytes in
the order of the result (image, channel, row top-down, column) into an integer
framebuffer, read into a pixel buffer behind a fence; the host copies the bytes out
while the GPU draws the next frame. Asked for the images on a CUDA device, the frame is
read into a buffer in device memory instead and CUDA copies it from there
(`_shader_cuda`), where interop is to be had.

The waits for the GL work happen in `glFinish` or `glClientWaitSync` called through
ctypes, which let go of Python's GIL (moderngl's own calls hold it): so another thread
can stop waiting for a batch that runs past its render timeout (see
`_shader_server.LocalRenderer`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import warnings
from typing import TYPE_CHECKING, Any, Callable, ContextManager

from harness.errors import HarnessError

from harness_plugins.generators._shader_cuda import GLToCuda

if TYPE_CHECKING:
    import numpy as np

REORDER_UNIT = 8  # the texture unit of the reorder pass (the programs' iChannels use 0..3)

# The parts of a render that `Renderer.seconds` counts.
DRAWS = "issue the draws (Python, GL calls)"
WAIT = "wait for the GL work"
READBACK = "read back"
HANDOVER = "hand over to CUDA (GL-CUDA interop)"
REORDER = "lay the tiles out (numpy)"
# glFenceSync / glClientWaitSync (OpenGL 3.2)
SYNC_GPU_COMMANDS_COMPLETE = 0x9117
SYNC_FLUSH_COMMANDS_BIT = 0x1
TIMEOUT_EXPIRED = 0x911B
WAIT_FAILED = 0x911D
WAIT_SLICE_NS = 100_000_000  # one glClientWaitSync call waits at most this long
COPY_WRITE_BUFFER = 0x8F37  # a binding point no other code of the renderer uses
STREAM_READ = 0x88E1  # the usage hint of a buffer the GPU fills and the host reads once
STREAM_COPY = 0x88E2  # the usage hint of a buffer the GPU fills and reads itself (kept in device memory)

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


class FrameReader:
    """The readback side of one GL context: the reorder pass, the pixel buffers, the
    fences waited on, and the hand-over to CUDA. `spent(part)` counts the seconds of
    each part into the renderer's `seconds`."""

    def __init__(self, ctx: Any, spent: Callable[[str], ContextManager[None]]) -> None:
        import moderngl

        self.ctx, self.spent, self.moderngl = ctx, spent, moderngl
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
        # Software rasterisers (Mesa's llvmpipe, softpipe) reorder a frame slower than numpy.
        self.reorder_on_gl = not any(name in ctx.info["GL_RENDERER"] for name in ("llvmpipe", "softpipe"))
        self.reorder = ctx.program(vertex_shader=REORDER_VERTEX, fragment_shader=REORDER_FRAGMENT)
        self.reorder["tiles"].value = REORDER_UNIT
        self.reorder_vao = ctx.vertex_array(self.reorder, [])
        self.device_buffers: dict[int, Any] = {}  # by frame side: the buffer a frame is read into for CUDA
        self.interops: dict[str, GLToCuda | None] = {}  # by CUDA device; None: frames go through the host

    def byte_frame(self, side: int) -> tuple[Any, tuple[Any, ...]]:
        """On a GPU, the byte framebuffer (RGBA8UI: four bytes of the result per texel) of
        a frame `side` pixels square and two pixel buffers its bytes are read into in
        turn; else None and ()."""
        if not self.reorder_on_gl:
            return None, ()
        byte_fbo = self.ctx.framebuffer(color_attachments=[self.ctx.texture((side, side), 4, dtype="u1")])
        return byte_fbo, tuple(self.read_buffer(4 * side * side, STREAM_READ) for _ in range(2))

    def release_device_buffers(self) -> None:
        """Unregister and release the buffers read into for CUDA (their frames are released)."""
        for buffer in self.device_buffers.values():
            for interop in filter(None, self.interops.values()):
                interop.forget(buffer.glo)
            buffer.release()
        self.device_buffers.clear()

    def fence(self) -> Any:
        """A fence after the GL commands issued so far."""
        return self.gl_fence_sync(SYNC_GPU_COMMANDS_COMPLETE, 0)

    def read_buffer(self, nbytes: int, usage: int) -> Any:
        """A pixel buffer of `nbytes` that frames are read into, with the usage hint
        `usage`. moderngl allocates a buffer for drawing from (GL_DYNAMIC_DRAW), which a
        GPU driver keeps in device memory, so that copying a frame out first moves it to
        the host; respecified as GL_STREAM_READ, the driver keeps it in host memory and
        the GPU writes the frame's bytes there itself, while it draws on. A buffer that
        CUDA copies from is GL_STREAM_COPY: filled and read on the GPU."""
        buffer = self.ctx.buffer(reserve=nbytes)
        self.gl_bind_buffer(COPY_WRITE_BUFFER, buffer.glo)
        self.gl_buffer_data(COPY_WRITE_BUFFER, nbytes, None, usage)
        self.gl_bind_buffer(COPY_WRITE_BUFFER, 0)
        return buffer

    def interop(self, device: Any) -> GLToCuda | None:
        """The hand-over of frames to CUDA `device`, opened on first use; None (warned once
        per device) where it cannot be had, and with HARNESS_GL=host: frames then go
        through host memory."""
        if os.environ.get("HARNESS_GL") == "host":
            return None
        key = str(device)
        if key not in self.interops:
            interop, why = GLToCuda.open(device)
            if interop is None:
                warnings.warn(f"shader images reach {key} through host memory: {why}", RuntimeWarning, stacklevel=3)
            self.interops[key] = interop
        return self.interops[key]

    def device_buffer(self, side: int) -> Any:
        """The buffer in device memory that frames `side` pixels square are read into for CUDA."""
        if side not in self.device_buffers:
            self.device_buffers[side] = self.read_buffer(4 * side * side, STREAM_COPY)
        return self.device_buffers[side]

    def read_on_host(self, tile_fbo: Any, images: np.ndarray, pitch: int, cols: int) -> None:
        """Read the frame's tiles back and copy them into `images` [m, 3, size, size] in order."""
        import numpy as np

        m, size = len(images), images.shape[-1]
        grid_rows = -(-m // cols)
        with self.spent(WAIT):
            self.gl_finish()  # the draws run here, without the GIL
        with self.spent(READBACK):
            raw = tile_fbo.read(viewport=(0, 0, cols * pitch, grid_rows * pitch), components=3, alignment=1)
        with self.spent(REORDER):
            grid = np.frombuffer(raw, dtype=np.uint8).reshape(grid_rows, pitch, cols, pitch, 3)
            in_order = grid[:, size - 1::-1, :, :size].transpose(0, 2, 4, 1, 3)  # [tile row, column, channel, y, x]
            full, rest = divmod(m, cols)
            images[: full * cols].reshape(full, cols, 3, size, size)[...] = in_order[:full]  # one strided copy
            if rest:
                images[full * cols:] = in_order[full, :rest]

    def reorder_into(self, tiles: Any, byte_fbo: Any, buffer: Any, m: int, size: int, pitch: int, cols: int) -> int:
        """Lay the frame's m tiles out on the GL side (the reorder pass) and queue the read
        of their bytes into the pixel buffer `buffer`; returns their number (a whole last
        texel row, so a few more than the images hold)."""
        width = cols * pitch
        byte_rows = -(-m * 3 * size * size // (4 * width))
        with self.spent(DRAWS):
            byte_fbo.use()
            self.ctx.viewport = (0, 0, width, byte_rows)
            tiles.use(location=REORDER_UNIT)
            for name, value in (("u_size", size), ("u_pitch", pitch), ("u_cols", cols), ("u_width", width),
                                ("u_bytes", m * 3 * size * size)):
                self.reorder[name].value = value
            self.reorder_vao.render(self.moderngl.TRIANGLES, vertices=3)
            byte_fbo.read_into(buffer, viewport=(0, 0, width, byte_rows), components=4, dtype="u1")
        return 4 * width * byte_rows

    def wait_for(self, fence: Any) -> None:
        """Wait (without the GIL) until the GL commands before `fence` are done; delete it."""
        with self.spent(WAIT):
            try:
                status = TIMEOUT_EXPIRED
                while status == TIMEOUT_EXPIRED:
                    status = self.gl_client_wait_sync(fence, SYNC_FLUSH_COMMANDS_BIT, WAIT_SLICE_NS)
            finally:
                self.gl_delete_sync(fence)
            if status == WAIT_FAILED:
                raise HarnessError("waiting for the GL renderer failed (glClientWaitSync); the GL context may be lost")

    def copy_out(self, pending: tuple[Any, Any, int, int], flat: np.ndarray) -> None:
        """Wait for a frame's bytes to be in their pixel buffer, then copy them into `flat`
        from their offset on."""
        fence, buffer, nbytes, offset = pending
        self.wait_for(fence)
        with self.spent(READBACK):
            buffer.read_into(flat, size=nbytes, write_offset=offset)
