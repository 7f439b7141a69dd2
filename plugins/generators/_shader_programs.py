"""Shader programs: loading the shipped library and a user's Shadertoy corpus, and the
GLSL that wraps a program's `mainImage` into a complete fragment shader.

A program is single-pass Shadertoy code (`Program`); `fragment_source` adds the
Shadertoy uniforms, the per-image flat varyings that `iTime`, `iFrame`, `iDate` and
`iParams` are defined as, and a `main` that clamps the output.
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
