"""What a shader program reads besides its per-image values: the fixed noise textures
bound to iChannel0..3, and the Shadertoy uniforms that are the same for a whole call.
Both the drawn and the dispatched form of a program (`_shader_gl`) are given these."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness_plugins.generators._seeding import rng

if TYPE_CHECKING:
    from harness_plugins.generators._shader_programs import Program

NOISE_SIZES = (256, 64, 256, 32)  # iChannel0..3: white, coarse white, smooth, very coarse


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


def set_fixed_uniforms(prog: Any, program: Program) -> None:
    """The Shadertoy uniforms that are the same for every image: `iMouse`,
    `iSampleRate`, the iChannels' units and resolutions."""
    for name, value in (
        ("iTimeDelta", 0.0), ("iFrameRate", 0.0), ("iMouse", (0.0, 0.0, 0.0, 0.0)), ("iSampleRate", 44100.0),
    ):
        if name in prog:
            prog[name].value = value
    for i in range(len(program.channels)):
        if f"iChannel{i}" in prog:
            prog[f"iChannel{i}"].value = i
    if "iChannelResolution" in prog:
        prog["iChannelResolution"].value = [
            (float(s), float(s), 1.0) if program.channels[i] == "2d" else (32.0, 32.0, 32.0)
            for i, s in enumerate(NOISE_SIZES)
        ]


def set_draw_uniforms(prog: Any, size: int, fps: float) -> None:
    """The Shadertoy uniforms that depend on the call: resolution and frame rate."""
    for name, value in (
        ("iResolution", (float(size), float(size), float(size))), ("iTimeDelta", 1.0 / fps), ("iFrameRate", float(fps)),
        ("iChannelTime", [0.0] * 4),
    ):
        if name in prog:
            prog[name].value = value


def channel_textures(ctx: Any) -> dict[str, list[Any]]:
    """iChannel0..3's textures in the GL context `ctx`, for each sampler kind a program
    may declare (2d, cube, 3d): the noise textures, a cube map of their corner, and 3D noise."""
    import moderngl
    import numpy as np

    textures: dict[str, list[Any]] = {"2d": [], "cube": [], "3d": []}
    for i, tex in enumerate(_noise_textures()):
        t2 = ctx.texture(tex.shape[:2], 4, tex.tobytes())
        t2.repeat_x = t2.repeat_y = True
        t2.build_mipmaps()
        t2.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
        textures["2d"].append(t2)
        face = tex[:32, :32].tobytes()
        cube = ctx.texture_cube((32, 32), 4, face * 6)
        cube.filter = (moderngl.LINEAR, moderngl.LINEAR)
        textures["cube"].append(cube)
        vol = rng("shaders-ichannel-3d", i).integers(0, 256, (32, 32, 32, 4)).astype(np.uint8)
        t3 = ctx.texture3d((32, 32, 32), 4, vol.tobytes())
        t3.repeat_x = t3.repeat_y = t3.repeat_z = True
        t3.filter = (moderngl.LINEAR, moderngl.LINEAR)
        textures["3d"].append(t3)
    return textures
