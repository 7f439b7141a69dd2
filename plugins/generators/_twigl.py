"""twigl programs (twigl.app, as collected in shaders21k) turned into single-pass
Shadertoy code, so they go through the same `fragment_source` wrapper as every program.

twigl has four modes, each in a WebGL 1 form, a "300 es" form and an MRT form:

- `classic`: a whole shader that declares `resolution`, `mouse`, `time`, `backbuffer`
  and writes `gl_FragColor` (300 es: `out vec4 outColor`; MRT: `outColor0..`);
- `geek`: a whole shader with the short names `r`, `m`, `t`, `f`, `s`, `b` (300 es:
  `out vec4 o`; MRT: `o0..`);
- `geeker`: `void main(){...}` only; twigl supplies the short uniforms and `o`;
- `geekest`: the body of `main` only, with `FC` = `gl_FragCoord` and twigl's helper
  library (`hsv`, `rotate2D`, `rotate3D`, `snoise2D/3D/4D`, `fsnoise`, `PI`, `PI2`).

The conversion renames the program's `main` to `st_twigl_main`, turns its uniforms and
outputs into globals that a generated `mainImage` sets from the Shadertoy uniforms
(`resolution`/`r` = iResolution.xy, `time`/`t` = iTime, `frame`/`f` = iFrame, `mouse`/`m`
= 0, `s` = 0) and reads back, and points `gl_FragCoord` / `FC` at the tile's pixel
coordinate. `backbuffer` / `b` (the previous frame) stay sampler uniforms bound to the
first noise texture, the same for every image. The helper library of `geekest` is this
harness's own code with twigl's names and signatures (its simplex noises are gradient
noises of the same range, not bit-identical). twigl's fix-up of assignments inside `?:`
(the mode file's fourth line) is not applied: such a program fails to compile and is
skipped with its GLSL log.
"""

from __future__ import annotations

import re

MODES = ("classic", "geek", "geeker", "geekest")
_CLASSIC = {"resolution": "vec2", "mouse": "vec2", "time": "float", "frame": "float"}
_SHORT = {"r": "vec2", "m": "vec2", "t": "float", "f": "float", "s": "float"}
_SET = {
    "resolution": "iResolution.xy", "r": "iResolution.xy", "mouse": "vec2(0.0)", "m": "vec2(0.0)",
    "time": "iTime", "t": "iTime", "frame": "float(iFrame)", "f": "float(iFrame)", "s": "0.0",
}
_UNIFORM = re.compile(r"\buniform\s+(\w+)\s+(resolution|mouse|time|frame|backbuffer\d*|[rmtfs]|b\d*)\s*;")
_OUTPUT = re.compile(r"(?:\blayout\s*\([^)]*\)\s*)?\bout\s+vec4\s+(\w+)\s*;")
_MAIN = re.compile(r"\bvoid\s+main\s*\(\s*(?:void)?\s*\)")
_BARE_INT = re.compile(r"\bint\s+([a-z])\s*;")

GEEKEST_LIBRARY = """
const float PI = 3.141592653589793;
const float PI2 = PI * 2.0;
vec3 hsv(float h, float s, float v) {
    vec3 k = clamp(abs(fract(vec3(h) + vec3(0.0, 2.0, 1.0) / 3.0) * 6.0 - 3.0) - 1.0, 0.0, 1.0);
    return v * mix(vec3(1.0), k, s);
}
mat2 rotate2D(float a) { float c = cos(a), s = sin(a); return mat2(c, s, -s, c); }
mat3 rotate3D(float a, vec3 axis) {
    vec3 u = normalize(axis);
    float c = cos(a), s = sin(a), k = 1.0 - c;
    return mat3(u.x * u.x * k + c, u.y * u.x * k + u.z * s, u.z * u.x * k - u.y * s,
                u.x * u.y * k - u.z * s, u.y * u.y * k + c, u.z * u.y * k + u.x * s,
                u.x * u.z * k + u.y * s, u.y * u.z * k - u.x * s, u.z * u.z * k + c);
}
float fsnoise(vec2 c) { return fract(sin(dot(c, vec2(12.9898, 78.233))) * 43758.5453); }
float fsnoiseDigits(vec2 c) { return fract(sin(dot(c, vec2(0.129898, 0.78233))) * 437.585453); }
vec3 st_grad3(vec3 p) {
    p = vec3(dot(p, vec3(127.1, 311.7, 74.7)), dot(p, vec3(269.5, 183.3, 246.1)), dot(p, vec3(113.5, 271.9, 124.6)));
    return normalize(fract(sin(p) * 43758.5453) * 2.0 - 1.0 + 1e-4);
}
float snoise3D(vec3 p) {
    vec3 i = floor(p), f = fract(p), u = f * f * (3.0 - 2.0 * f);
    float n000 = dot(st_grad3(i), f), n100 = dot(st_grad3(i + vec3(1, 0, 0)), f - vec3(1, 0, 0));
    float n010 = dot(st_grad3(i + vec3(0, 1, 0)), f - vec3(0, 1, 0)), n110 = dot(st_grad3(i + vec3(1, 1, 0)), f - vec3(1, 1, 0));
    float n001 = dot(st_grad3(i + vec3(0, 0, 1)), f - vec3(0, 0, 1)), n101 = dot(st_grad3(i + vec3(1, 0, 1)), f - vec3(1, 0, 1));
    float n011 = dot(st_grad3(i + vec3(0, 1, 1)), f - vec3(0, 1, 1)), n111 = dot(st_grad3(i + vec3(1, 1, 1)), f - vec3(1, 1, 1));
    float n = mix(mix(mix(n000, n100, u.x), mix(n010, n110, u.x), u.y), mix(mix(n001, n101, u.x), mix(n011, n111, u.x), u.y), u.z);
    return clamp(n * 1.6, -1.0, 1.0);
}
float snoise2D(vec2 p) { return snoise3D(vec3(p, 0.5)); }
float snoise4D(vec4 p) { return mix(snoise3D(p.xyz + floor(p.w) * 17.0), snoise3D(p.xyz + (floor(p.w) + 1.0) * 17.0), fract(p.w)); }
"""


def parse_mode(lines: list[str]) -> tuple[str, bool, bool]:
    """A shaders21k mode file (`modes/NAME.fragment`): the mode name, then `True`/`False`
    for "300 es" and for MRT (a fourth line, the `?:` fix-up, is read and ignored)."""
    words = [w.strip() for w in lines if w.strip()]
    if not words or words[0] not in MODES:
        raise ValueError(f"the first line must be one of {', '.join(MODES)} (got {words[0] if words else 'nothing'!r})")
    flags = []
    for i, word in enumerate(words[1:3], start=2):
        if word not in ("True", "False"):
            raise ValueError(f"line {i} must be True or False (got {word!r})")
        flags.append(word == "True")
    flags += [False] * (2 - len(flags))
    return words[0], flags[0], flags[1]


def twigl_code(source: str, mode: str, es300: bool, mrt: bool) -> tuple[str, str]:
    """(common, code): the globals and helpers, and the program plus a `mainImage`."""
    if mode not in MODES:
        raise ValueError(f"unknown twigl mode {mode!r} (one of {', '.join(MODES)})")
    short = mode != "classic"
    code = source.replace("\r\n", "\n")
    code = _BARE_INT.sub(r"int \1 = 0;", code)
    samplers = ["b0", "b1", "b2", "b3"] if (mrt and mode in ("geeker", "geekest")) else []
    samplers += ["b"] if mode in ("geeker", "geekest") else []
    for kind, name in _UNIFORM.findall(code):
        if kind.startswith("sampler") and name not in samplers:
            samplers.append(name)
    code = _UNIFORM.sub("", code)
    outputs = _OUTPUT.findall(code)
    code = _OUTPUT.sub("", code)
    if mode in ("geeker", "geekest"):
        outputs = outputs or (["o0", "o1", "o2", "o3"] if mrt else ["o"] if es300 else [])
    if not outputs:
        outputs = ["st_o"]
    code = re.sub(r"\bgl_FragColor\b", outputs[0], code)
    code = re.sub(r"\bgl_FragCoord\b", "st_fc", code)
    if mode == "geekest":
        code = f"void st_twigl_main() {{\n{code}\n}}"
    else:
        code, found = _MAIN.subn("void st_twigl_main()", code)
        if not found:
            raise ValueError(f"a twigl {mode} program defines `void main()`; none found")
    names = _CLASSIC if not short else _SHORT
    common = ["vec4 st_fc;", *(f"vec4 {o};" for o in outputs)]
    common += [f"{kind} {name};" for name, kind in names.items()]
    common += [f"uniform sampler2D {name};" for name in samplers]
    if short:
        common.append("#define FC st_fc")
    if mode == "geekest":
        common.append(GEEKEST_LIBRARY)
    sets = "\n".join(f"    {name} = {_SET[name]};" for name in names)
    clears = "\n".join(f"    {o} = vec4(0.0, 0.0, 0.0, 1.0);" for o in outputs)
    main_image = (
        "\nvoid mainImage(out vec4 st_col, in vec2 st_coord) {\n"
        "    st_fc = vec4(st_coord, gl_FragCoord.zw);\n"
        f"{sets}\n{clears}\n    st_twigl_main();\n    st_col = {outputs[0]};\n}}\n"
    )
    return "\n".join(common), code + main_image
