"""The in-process shader renderer: one headless EGL context (moderngl), the compiled
programs, the fixed iChannel noise textures, and batched rendering into a tiled
framebuffer.

Every image of a call is a tile of one framebuffer, drawn as one instance of a
full-tile quad with its per-image values as per-instance attributes; a second pass on
the GL side lays the tiles' bytes out as the result is laid out, so a batch costs one
draw per distinct program, one reorder draw and one readback straight into the result
(`_shader_readback`: how a frame's bytes leave the context, to the host or to CUDA).
With the compute pipeline a program's tiles are instead written by one compute dispatch
(an invocation per pixel, the per-image values in a storage buffer), into the same
texture; a program that needs the fragment stage is still drawn.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from typing import Any, Iterator

from harness.errors import HarnessError

from harness_plugins.generators._shader_cuda import GLToCuda, InteropError
from harness_plugins.generators._shader_inputs import channel_textures, set_draw_uniforms, set_fixed_uniforms
from harness_plugins.generators._shader_programs import (
    COMPUTE_GROUP, COMPUTE_ROWS_BINDING, COMPUTE_TARGET_UNIT, INSTANCE_FLOATS, VERTEX_SHADER, Program, ShaderWarning,
    compute_source, fragment_source,
)
from harness_plugins.generators._shader_readback import DRAWS, HANDOVER, FrameReader

FRAME_SIDE = 4096  # pixels per side of the framebuffer a batch's tiles are drawn into
FRAMES_KEPT = 8  # frame sizes whose framebuffers a renderer keeps


def _gl_error(exc: BaseException) -> HarnessError:
    return HarnessError(
        f"cannot create a headless OpenGL 3.3 context through EGL ({type(exc).__name__}: {exc}). "
        "The shader generators render with moderngl on EGL; on Debian/Ubuntu install the packages "
        "libegl1 and libgl1-mesa-dri (Mesa's llvmpipe renders on the CPU, no GPU needed)."
    )


def standalone_context(moderngl: Any) -> Any:
    """A headless EGL context of OpenGL 4.3 (compute shaders) where the driver has it, else
    of 3.3. A context is of the version asked for on NVIDIA's driver (3.3 has no compute
    shaders), of the highest the driver has under Mesa."""
    try:
        return moderngl.create_standalone_context(backend="egl", require=430)
    except Exception:
        pass
    try:
        return moderngl.create_standalone_context(backend="egl", require=330)
    except Exception as exc:
        raise _gl_error(exc) from None


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
        self.ctx = standalone_context(moderngl)
        import numpy as np

        self.moderngl = moderngl
        self.quad = self.ctx.buffer(np.array([0, 0, 1, 0, 0, 1, 1, 1], dtype="f4").tobytes())
        self.compiled: dict[str, Any] = {}  # digest -> (program, vao, instance buffer, capacity) or error
        self.dispatched: dict[str, Any] = {}  # digest -> (compute program, values buffer, capacity), or None: drawn instead
        self.compute_capable = self.ctx.version_code >= 430
        self.warned_drawn = False  # pipeline "compute" asked for without compute shaders
        self.frames: dict[int, tuple[list[Any], Any, tuple[Any, ...]]] = {}
        self.seconds: dict[str, float] = {}  # by part of the work, for `Generator.time_split`
        self.reader = FrameReader(self.ctx, self._spent)
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

    def _values_buffer(self, buffer: Any, capacity: int, count: int) -> tuple[Any, int]:
        """A buffer of per-image values for `count` images, and how many it holds:
        `buffer` where its `capacity` suffices, else a new one at least twice as large
        (`buffer` released)."""
        if count <= capacity:
            return buffer, capacity
        if buffer is not None:
            buffer.release()
        capacity = max(count, 2 * capacity, 16)
        return self.ctx.buffer(reserve=capacity * INSTANCE_FLOATS * 4), capacity

    def _vao(self, program: Program, count: int) -> tuple[Any, Any, Any]:
        """The drawing program of `program`, its vertex array and its per-instance values
        buffer, holding at least `count` images."""
        entry = self.compiled[program.digest]
        prog, vao, buf, capacity = entry
        if count > capacity:
            if vao is not None:
                vao.release()
            buf, capacity = self._values_buffer(buf, capacity, count)
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

    def _frame(self, side: int) -> tuple[list[Any], Any, tuple[Any, ...]]:
        """The tile framebuffers of a frame `side` pixels square (their RGBA8 textures are
        what the reorder pass reads; `_render_frames` adds a second where it alternates)
        and the reader's byte framebuffer and pixel buffers of the same size
        (`FrameReader.byte_frame`)."""
        if side not in self.frames:
            if len(self.frames) >= FRAMES_KEPT:
                for tile_fbos, byte_fbo, buffers in self.frames.values():
                    for fbo in (fbo for fbo in (*tile_fbos, byte_fbo) if fbo is not None):
                        for texture in fbo.color_attachments:
                            texture.release()
                        fbo.release()
                    for buffer in buffers:
                        buffer.release()
                self.frames.clear()
                self.reader.release_device_buffers()
            self.frames[side] = ([self._tile_framebuffer(side)], *self.reader.byte_frame(side))
        return self.frames[side]

    def _tile_framebuffer(self, side: int) -> Any:
        tiles = self.ctx.texture((side, side), 4)
        tiles.filter = (self.moderngl.NEAREST, self.moderngl.NEAREST)
        return self.ctx.framebuffer(color_attachments=[tiles])

    @contextlib.contextmanager
    def _spent(self, part: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - start

    def render(
        self, programs: list[Program], rows: Any, size: int, fps: float, pipeline: str = "graphics", on: Any = None,
    ) -> Any:
        """Images [n, 3, size, size] uint8 (top row first) of `programs[i]` with the
        per-image values `rows[i]` = (iTime, iFrame, iDate[4], iParams[16]), drawn
        (`pipeline` "graphics") or dispatched where the program allows it ("compute"):
        a numpy array in host memory, or, given `on` (a torch CUDA stream) and where this
        context can hand frames to CUDA, a tensor on that stream's device, its copies
        queued on that stream.

        A frame holds up to (FRAME_SIDE / size)^2 tiles. On a GPU, a second pass on the
        GL side writes the frame's bytes in the order of the result (image, channel, row
        top-down, column), read straight into the result: the host copies nothing, which
        would otherwise cost more than the rendering. A software rasteriser runs that pass
        slower than numpy reorders the tiles (one strided copy), so there numpy does."""
        if pipeline == "compute" and not self.compute_capable and not self.warned_drawn:
            self.warned_drawn = True
            warnings.warn(
                f"the OpenGL context is {self.ctx.version_code // 100}.{self.ctx.version_code % 100 // 10}, without "
                "compute shaders (OpenGL 4.3): pipeline 'compute' draws every program as 'graphics' does",
                ShaderWarning, stacklevel=3,
            )
        n = len(programs)
        # Tiles start on even pixels, so the 2 x 2 pixel quads that derivatives (dFdx,
        # fwidth) are taken over never straddle two tiles: an image does not depend on
        # where in the frame it is drawn, also at odd sizes.
        pitch = size + size % 2
        # Square frames a power of two tiles a side (few frame sizes to keep), at most FRAME_SIDE pixels.
        at_least = math.isqrt(max(n, 1) - 1) + 1  # ceil(sqrt(n))
        cols = min(max(1, FRAME_SIDE // pitch), 1 << math.ceil(math.log2(at_least)))
        interop = self.reader.interop(on.device) if on is not None and self.reader.reorder_on_gl else None
        if interop is not None:
            try:
                return self._render_frames(programs, rows, size, fps, pipeline, pitch, cols, interop, on)
            except InteropError as exc:
                warnings.warn(f"shader images reach {on.device} through host memory from now on: {exc}", RuntimeWarning, stacklevel=2)
                self.reader.interops[str(on.device)] = None
        return self._render_frames(programs, rows, size, fps, pipeline, pitch, cols)

    def _render_frames(
        self, programs: list[Program], rows: Any, size: int, fps: float, pipeline: str, pitch: int, cols: int,
        interop: GLToCuda | None = None, on: Any = None,
    ) -> Any:
        """`render`'s images, frame after frame of cols x cols tiles `pitch` pixels apart;
        copied by `interop` into a tensor on `on`'s device where given."""
        import numpy as np

        n = len(programs)
        per_frame = cols * cols
        image_bytes = 3 * size * size
        side = cols * pitch
        tile_fbos, byte_fbo, buffers = self._frame(side)
        # One texel row of slack: a frame's last row of bytes may run past its images.
        if interop is not None:
            import torch

            with torch.cuda.stream(on) if on.device.type == "cuda" else contextlib.nullcontext():
                flat: Any = torch.empty(n * image_bytes + 4 * side, dtype=torch.uint8, device=on.device)
            target = self.reader.device_buffer(side)
        else:
            flat = np.empty(n * image_bytes + 4 * side, dtype=np.uint8)
        images = flat[: n * image_bytes].reshape(n, 3, size, size)
        pending: tuple[Any, Any, int, int] | None = None  # the last frame read into a pixel buffer, not yet copied out
        try:
            for frame, f0 in enumerate(range(0, n, per_frame)):
                m = min(per_frame, n - f0)
                grid_rows = -(-m // cols)
                # Where the reorder pass reads a frame while the next is shaded, frames
                # alternate between two tile textures. GL does not order a compute
                # program's image stores after earlier reads of their texture (on an
                # NVIDIA H200, batches of two frames gave other compute bytes from call
                # to call), and the texture read two frames back is done: its pixel
                # buffer's fence was waited for. No clear: every pixel read back is shaded.
                if byte_fbo is not None and frame == 1 and len(tile_fbos) == 1:
                    tile_fbos.append(self._tile_framebuffer(side))
                tile_fbo = tile_fbos[frame % len(tile_fbos)]
                with self._spent(DRAWS):
                    tile_fbo.use()
                    self.ctx.viewport = (0, 0, side, grid_rows * pitch)
                    self._draw_tiles(
                        programs[f0:f0 + m], rows[f0:f0 + m], size, pitch, fps, cols, side, grid_rows * pitch,
                        tile_fbo.color_attachments[0] if pipeline == "compute" else None,
                    )
                if byte_fbo is None:
                    self.reader.read_on_host(tile_fbo, images[f0:f0 + m], pitch, cols)
                elif interop is not None:
                    nbytes = self.reader.reorder_into(tile_fbo.color_attachments[0], byte_fbo, target, m, size, pitch, cols)
                    with self._spent(HANDOVER):
                        interop.copy(target.glo, nbytes, flat.data_ptr() + f0 * image_bytes, on.cuda_stream)
                else:
                    nbytes = self.reader.reorder_into(tile_fbo.color_attachments[0], byte_fbo, buffers[frame % 2], m, size, pitch, cols)
                    if pending is not None:
                        self.reader.copy_out(pending, flat)  # while the GPU draws this frame
                    pending = (self.reader.fence(), buffers[frame % 2], nbytes, f0 * image_bytes)
            if pending is not None:
                self.reader.copy_out(pending, flat)
                pending = None
            if interop is not None:  # the GL work ends within this call, under its render timeout
                self.reader.wait_for(self.reader.fence())
        finally:
            if pending is not None:
                self.reader.gl_delete_sync(pending[0])
        return images

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
            entry[1:] = self._values_buffer(entry[1], entry[2], len(members))
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
