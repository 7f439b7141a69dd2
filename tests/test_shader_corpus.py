"""A user's shader corpus: a missing path is a clear error (exit 2), the shaders21k layout
(shaders_list, Shadertoy JSON `.fragment` files, twigl programs of every mode) loads and
renders, the per-program cost probe leaves out programs over budget, and the diversity
report counts near-flat images per program."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import harness
from harness_plugins.generators._shader_corpus import ShaderCorpusError
from harness_plugins.generators._shader_programs import ShaderWarning
from harness_plugins.generators.diversity import near_flat
from harness_plugins.generators.shaders import Shaders, near_constant
from helpers import cli

SHADERTOY = "void mainImage(out vec4 c, in vec2 p) { vec2 uv = p / iResolution.xy; c = vec4(uv, wave(uv.x), 1.0); }"
COMMON = "float wave(float x) { return 0.5 + 0.5 * sin(x * 20.0 + iTime); }"

# twigl's example program, written once per mode (and "300 es" / MRT variants); OUT is
# the output declaration, O the output written
LOOP = "for(int i=0;i<8;++i){p.xy=abs(p)/abs(dot(p,p))-vec2(.9+cos(T*.2)*.4);}"
CLASSIC = ("precision highp float;\nuniform vec2 resolution;\nuniform vec2 mouse;\nuniform float time;\n"
           "uniform sampler2D backbuffer;\nOUTvoid main(){vec2 r=resolution,p=(gl_FragCoord.xy*2.-r)/min(r.x,r.y)"
           "-mouse;" + LOOP.replace("T", "time") + "O=vec4(p.xxy,1);}\n")
GEEK = ("precision highp float;\nuniform vec2 r;\nuniform vec2 m;\nuniform float t;\nuniform sampler2D b;\nOUT"
        "void main(){vec2 p=(gl_FragCoord.xy*2.-r)/min(r.x,r.y)-m;" + LOOP.replace("T", "t") + "O=vec4(p.xxy,1);}\n")
GEEKER = "void main(){vec2 p=(gl_FragCoord.xy*2.-r)/min(r.x,r.y)-m;" + LOOP.replace("T", "t") + "O=vec4(p.xxy,1);}\n"
GEEKEST = ("vec2 p=(FC.xy*2.-r)/min(r.x,r.y)-m;" + LOOP.replace("T", "t")
           + "O=vec4(hsv(p.x*.2,.8,1.)*length(p)*.3+snoise2D(p)*.1,1)*vec4(rotate2D(t)[0],1,1);\n")


def mode(template: str, out: str = "", o: str = "gl_FragColor") -> str:
    return template.replace("OUT", out).replace("O=", o + "=")


TWIGL = {  # name: (mode file lines, code)
    "classic": ("classic\nFalse\nFalse\nFalse", mode(CLASSIC)),
    "classic_300": ("classic\nTrue\nFalse\nFalse", mode(CLASSIC, "out vec4 outColor;\n", "outColor")),
    "geek": ("geek\nFalse\nFalse\nFalse", mode(GEEK)),
    "geek_mrt": ("geek\nFalse\nTrue\nFalse", mode(
        GEEK, "layout (location = 0) out vec4 o0;\nlayout (location = 1) out vec4 o1;\n", "o1=o0;o0")),
    "geeker": ("geeker\nFalse\nFalse\nFalse", mode(GEEKER)),
    "geeker_300": ("geeker\nTrue\nFalse\nFalse", mode(GEEKER, o="o")),
    "geekest": ("geekest\nFalse\nFalse\nFalse", mode(GEEKEST)),
    "geekest_300": ("geekest\nTrue\nFalse\nFalse", mode(GEEKEST, o="o")),
    "geekest_mrt": ("geekest\nFalse\nTrue\nFalse", mode(GEEKEST, o="o0")),
}


def shaders21k_corpus(root):
    """A small corpus in the shaders21k layout: Shadertoy JSON `.fragment` files (one
    single-pass with a common pass, one multi-pass) and twigl fragments/ + modes/."""
    (root / "shadertoy").mkdir(parents=True)
    single = {"info": {"id": "st0001"}, "renderpass": [
        {"type": "common", "code": COMMON, "inputs": []},
        {"type": "image", "code": SHADERTOY, "inputs": []}]}
    multi = {"info": {"id": "st0002"}, "renderpass": [
        {"type": "buffer", "code": SHADERTOY, "inputs": []},
        {"type": "image", "code": "void mainImage(out vec4 c, in vec2 p) { c = texture(iChannel0, p); }",
         "inputs": [{"channel": 0, "ctype": "buffer"}]}]}
    (root / "shadertoy" / "st0001.fragment").write_text(json.dumps(single))
    (root / "shadertoy" / "st0002.fragment").write_text(json.dumps(multi))
    for folder in ("fragments", "modes"):
        (root / "twigl" / folder).mkdir(parents=True)
    for name, (mode, code) in TWIGL.items():
        (root / "twigl" / "fragments" / f"{name}.fragment").write_text(code)
        (root / "twigl" / "modes" / f"{name}.fragment").write_text(mode + "\n")
    listed = ["shadertoy/st0001.fragment", "shadertoy/st0002.fragment"]
    listed += [f"twigl/fragments/{name}.fragment" for name in TWIGL]
    (root / "shaders_list").write_text("\n".join(listed) + "\n")
    return root


def test_a_missing_corpus_path_exits_2_naming_it(tmp_path):
    missing = tmp_path / "no-such-corpus"
    registry = tmp_path / "registry.yaml"
    registry.write_text(f"generators:\n  corpus: {{plugin: shaders, params: {{paths: ['{missing}'], builtin: false}}}}\n")
    result = cli("--registry", str(registry), "generate", "corpus", "--n", "4", "--size", "32",
                 "--out", str(tmp_path / "out"), timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert str(missing) in result.stderr and "does not exist" in result.stderr and "`paths`" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(ShaderCorpusError, match="'corpus'.*does not exist"):
        Shaders("corpus", builtin=False, paths=[str(missing)]).candidates()


def test_the_shaders21k_layout_loads_and_every_mode_renders(tmp_path):
    corpus = shaders21k_corpus(tmp_path / "corpus")
    gen = harness.get_generator("shaders", builtin=False, paths=[str(corpus)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ShaderWarning)
        report = gen.program_report()
    messages = "\n".join(str(w.message) for w in caught)
    assert "'shadertoy/st0002'" in messages and "multi-pass" in messages
    assert report["left_out"] == {"shadertoy/st0002": "not loaded: multi-pass program (passes: buffer, image); "
                                  "only single-pass programs are rendered"}
    expected = ["shadertoy/st0001"] + [f"twigl/fragments/{name}" for name in TWIGL]
    assert sorted(report["usable"]) == sorted(expected), messages
    images, names = gen.sample_with_programs(0, 64, 32)
    assert set(names) == set(expected), "64 draws over 10 programs reach every one"
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.uint8
    assert not near_constant(images).any()


def test_a_folder_without_shaders_list_is_searched_and_mode_files_are_not_programs(tmp_path):
    corpus = shaders21k_corpus(tmp_path / "corpus")
    (corpus / "shaders_list").unlink()
    (corpus / "shadertoy" / "st0002.fragment").unlink()
    (corpus / "loose.fragment").write_text("void main(){gl_FragColor=vec4(1);}\n")
    gen = harness.get_generator("shaders", builtin=False, paths=[str(corpus)])
    with pytest.warns(ShaderWarning, match="'loose'.*neither Shadertoy JSON nor a twigl program"):
        names = gen.program_names()
    assert sorted(names) == sorted(["shadertoy/st0001"] + [f"twigl/fragments/{name}" for name in TWIGL])


def test_the_cost_probe_leaves_out_programs_over_budget_and_names_them(tmp_path):
    cheap = "void mainImage(out vec4 c, in vec2 p) { c = vec4(p / iResolution.xy, 0.5, 1.0); }\n"
    costly = ("void mainImage(out vec4 c, in vec2 p) { float a = 0.0;\n"
              "  for (int i = 0; i < 20000; i++) a = sin(a + p.x * 0.01 + float(i));\n"
              "  c = vec4(fract(a), p / iResolution.xy, 1.0); }\n")
    (tmp_path / "cheap.glsl").write_text(cheap)
    (tmp_path / "costly.glsl").write_text(costly)
    free = harness.get_generator("shaders", builtin=False, paths=[str(tmp_path)], max_program_ms=None)
    cost = free.program_report()["cost_ms"]
    assert cost["costly"] > 5 * cost["cheap"], cost
    budget = (cost["costly"] * cost["cheap"]) ** 0.5
    gen = harness.get_generator("shaders", builtin=False, paths=[str(tmp_path)], max_program_ms=budget)
    with pytest.warns(ShaderWarning, match="max_program_ms.*'costly'"):
        report = gen.program_report()
    assert report["usable"] == ["cheap"]
    assert report["left_out"]["costly"].endswith(f"> max_program_ms={budget:g}")
    assert gen.key != free.key


def test_near_flat_counts_images_mostly_one_colour():
    flat = torch.full((3, 3, 16, 16), 100, dtype=torch.uint8)
    flat[1, :, :4] = 200  # a quarter of the pixels differ: still mostly one colour
    flat[2, :, :8] = 200  # half: not
    torch.manual_seed(0)
    noisy = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    got = near_flat(torch.cat([flat, noisy]))
    # by hand: the share of the modal colour is 1, 0.75, 0.5, and ~1/256 for noise
    assert got.tolist() == [True, True, False, False, False]


def test_harness_list_names_the_programs_left_out_and_why(tmp_path):
    corpus = shaders21k_corpus(tmp_path / "corpus")
    registry = tmp_path / "registry.yaml"
    registry.write_text(f"generators:\n  corpus: {{plugin: shaders, params: {{paths: ['{corpus}'], builtin: false}}}}\n")
    result = cli("--registry", str(registry), "list", "corpus", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "programs in use (10):" in result.stdout and "shadertoy/st0001" in result.stdout
    assert "left out (1):\n  shadertoy/st0002: not loaded: multi-pass program" in result.stdout
