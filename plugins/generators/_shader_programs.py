"""Shader programs: loading the shipped library and a user's Shadertoy corpus, and the
GLSL that wraps a program's `mainImage` into a complete fragment shader.

A program is single-pass Shadertoy code (`Program`); `fragment_source` adds the
Shadertoy uniforms, the per-image flat varyings that `iTime`, `iFrame`, `iDate` and
`iParams` are defined as, and a `main` that clamps the output. `compute_source` wraps
the same code into a compute program (the `compute` pipeline of `shaders`): one
invocation per pixel, the per-image values read from a storage buffer, the clamped
colour stored into the image's tile.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ShaderWarning(UserWarning):
    """A shader program was skipped (does not compile, renders near-constant images, or
    is not a single-pass Shadertoy program)."""


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
_FRAG_COORD = re.compile(r"\bgl_FragCoord\b")
# What only a fragment program has: derivatives (over the 2 x 2 pixel quads a
# rasteriser shades together), texture lookups whose level of detail comes from them, and
# discard. A program that uses any of them is never run as a compute program.
_FRAGMENT_ONLY = re.compile(
    r"\b(?:dFd[xy]\w*|fwidth\w*|discard)\b"
    r"|\b(?:texture|texture[123]D|textureCube|textureProj|textureOffset|textureProjOffset|texture2DProj)\s*\("
)


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
    def fragment_only(self) -> bool:
        """Does the program need the fragment stage (derivatives, implicit-LOD texture
        lookups or discard), so that it cannot run as a compute program?"""
        return bool(_FRAGMENT_ONLY.search(self.code) or _FRAGMENT_ONLY.search(self.common))

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


def warn_shader(message: str) -> None:
    """Warn (ShaderWarning) about a program that is skipped, at the caller's caller."""
    warnings.warn(message, ShaderWarning, stacklevel=3)


def _channel_kind(ctype: Any) -> str:
    return {"cubemap": "cube", "volume": "3d"}.get(str(ctype), "2d")


def _from_json(path: Path, name: str, skipped: dict[str, str] | None = None) -> Program | None:
    """A shaders21k / Shadertoy-API JSON program (`renderpass` at the top or under
    `Shader`): the `image` pass with the `common` pass prepended; `sound` passes are
    ignored; a program with `buffer` or `cubemap` passes is skipped (recorded in `skipped`)."""

    def skip(reason: str) -> None:
        if skipped is not None:
            skipped[name] = reason
        warn_shader(f"shader program {name!r} ({path}): {reason}; skipped")

    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError) as exc:
        return skip(f"not readable as JSON ({exc})")
    shader = data.get("Shader", data) if isinstance(data, dict) else None
    passes = shader.get("renderpass") if isinstance(shader, dict) else None
    if not isinstance(passes, list) or not passes:
        return skip("no `renderpass` list (not a Shadertoy JSON program)")
    kinds = [str(p.get("type", "image")) if isinstance(p, dict) else "?" for p in passes]
    images = [p for p, k in zip(passes, kinds) if k == "image"]
    others = [k for k in kinds if k not in ("image", "common", "sound")]
    if len(images) != 1 or others:
        return skip(f"multi-pass program (passes: {', '.join(kinds)}); only single-pass programs are rendered")
    image = images[0]
    code = image.get("code")
    if not isinstance(code, str):
        return skip("renderpass has no `code`")
    common = "\n".join(str(p.get("code", "")) for p, k in zip(passes, kinds) if k == "common")
    channels = ["2d"] * 4
    for inp in image.get("inputs") or []:
        if isinstance(inp, dict):
            slot = inp.get("channel", inp.get("id"))
            if isinstance(slot, int) and 0 <= slot < 4:
                channels[slot] = _channel_kind(inp.get("ctype", inp.get("type")))
    return Program(name, _clean(code), str(path), _clean(common), tuple(channels))


# ------------------------------------------------------------------------- GLSL
# The per-image values, in this order: tile origin (2), iTime and iFrame (4, two unused),
# iDate (4), iParams (16); per-instance attributes of a draw, a storage buffer's floats
# for a compute dispatch.
INSTANCE_FLOATS = 26
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

_SHADERTOY_DECLARATIONS = """uniform vec3 iResolution;
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
"""

_FRAGMENT_HEADER = """#version 330 core
flat in vec2 st_origin;
flat in vec4 st_time;
flat in vec4 st_date;
flat in vec4 st_params[4];
vec4 st_FragCoord;
""" + _SHADERTOY_DECLARATIONS + """out vec4 st_fragColor;
"""

# Both stages clamp the colour the same way before it is stored as RGBA8.
_CLAMPED = """    vec3 st_rgb = st_c.rgb;
    if (any(isnan(st_rgb))) st_rgb = vec3(0.0);
    vec4 st_out = vec4(clamp(st_rgb, 0.0, 1.0), 1.0);
"""

_FRAGMENT_FOOTER = """
void main() {
    st_FragCoord = vec4(gl_FragCoord.xy - st_origin, gl_FragCoord.zw);
    vec4 st_c = vec4(0.0, 0.0, 0.0, 1.0);
    mainImage(st_c, st_FragCoord.xy);
""" + _CLAMPED + """    st_fragColor = st_out;
}
"""

COMPUTE_GROUP = 8  # a compute work group shades COMPUTE_GROUP x COMPUTE_GROUP pixels of one image
COMPUTE_TARGET_UNIT = 0  # the image unit of the tile texture
COMPUTE_ROWS_BINDING = 1  # the storage buffer of the per-image values (INSTANCE_FLOATS floats per image)

_COMPUTE_HEADER = f"""#version 430 core
layout(local_size_x = {COMPUTE_GROUP}, local_size_y = {COMPUTE_GROUP}) in;
layout(rgba8, binding = {COMPUTE_TARGET_UNIT}) writeonly uniform image2D st_target;
layout(std430, binding = {COMPUTE_ROWS_BINDING}) readonly buffer st_images {{{{ float st_rows[]; }}}};
uniform int u_count;
uniform int u_side;
vec2 st_origin;
vec4 st_time;
vec4 st_date;
vec4 st_params[4];
vec4 st_FragCoord;
""" + _SHADERTOY_DECLARATIONS

# Invocation (x, y, j) shades pixel (x, y) of the dispatch's image j, whose values are
# the buffer's floats INSTANCE_FLOATS * j and on.
_COMPUTE_FOOTER = """
void main() {
    ivec2 st_pixel = ivec2(gl_GlobalInvocationID.xy);
    int st_image = int(gl_GlobalInvocationID.z);
    if (st_pixel.x >= u_side || st_pixel.y >= u_side || st_image >= u_count) return;
    int st_at = """ + str(INSTANCE_FLOATS) + """ * st_image;
    st_origin = vec2(st_rows[st_at], st_rows[st_at + 1]);
    st_time = vec4(st_rows[st_at + 2], st_rows[st_at + 3], st_rows[st_at + 4], st_rows[st_at + 5]);
    st_date = vec4(st_rows[st_at + 6], st_rows[st_at + 7], st_rows[st_at + 8], st_rows[st_at + 9]);
    for (int k = 0; k < 4; ++k) {
        int st_p = st_at + 10 + 4 * k;
        st_params[k] = vec4(st_rows[st_p], st_rows[st_p + 1], st_rows[st_p + 2], st_rows[st_p + 3]);
    }
    st_FragCoord = vec4(vec2(st_pixel) + 0.5, 0.5, 1.0);  // depth and 1/w of the drawn quad
    vec4 st_c = vec4(0.0, 0.0, 0.0, 1.0);
    mainImage(st_c, st_FragCoord.xy);
""" + _CLAMPED + """    imageStore(st_target, ivec2(st_origin) + st_pixel, st_out);
}
"""

_SAMPLER = {"2d": "sampler2D", "cube": "samplerCube", "3d": "sampler3D"}


def fragment_source(program: Program) -> str:
    """The complete fragment shader: Shadertoy header, the program, and a `main`.

    `#line` directives make the GLSL log's line numbers those of the program's code.
    """
    return _wrapped(program, _FRAGMENT_HEADER, _FRAGMENT_FOOTER)


def compute_source(program: Program) -> str:
    """The same program as a compute shader (for a program that is not `fragment_only`):
    pixel centres as `fragCoord`, exactly as the fragment stage passes them."""
    return _wrapped(program, _COMPUTE_HEADER, _COMPUTE_FOOTER)


def _wrapped(program: Program, header: str, footer: str) -> str:
    """`header`, the program and `footer`. The program's own reads of gl_FragCoord read
    `st_FragCoord`, the pixel within its image (Shadertoy draws one image per
    framebuffer; the harness draws many into one)."""
    parts = [header.format(**{f"c{i}": _SAMPLER[k] for i, k in enumerate(program.channels)})]
    if program.common.strip():
        parts += ["#line 1 1", _FRAG_COORD.sub("st_FragCoord", program.common)]
    parts += ["#line 1 0", _FRAG_COORD.sub("st_FragCoord", program.code), "#line 100000 2", footer]
    return "\n".join(parts)
