"""A shader program that loops (almost) without end fails its batch after the render
timeout, naming the program, instead of hanging a run: in this process's renderer, in
the render server (killed and started afresh for the next batch), and from the CLI."""

from __future__ import annotations

import time
import warnings

import pytest

import harness
from harness.errors import HarnessError
from harness_plugins.generators import _shader_server
from helpers import cli

# Each pixel runs iResolution.x squared iterations: 4 probe images of 32 px take a few
# milliseconds on llvmpipe, one image of 512 px takes a minute.
SLOW_AT_LARGE_SIZES = """
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    int n = int(iResolution.x);
    float acc = 0.0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            acc += sin(float(i * j) * 0.001 + fragCoord.x * 0.01 + iTime);
        }
    }
    fragColor = vec4(fract(acc * 0.01), fragCoord / iResolution.xy, 1.0);
}
"""

# llvmpipe stops a loop after 65,535 iterations (nested loops included), so the body is
# made heavy instead: 256 dependent sines per iteration, seconds per small block of
# pixels here, minutes for the probe's four 32 px images.
ENDLESS = """
#define STEP acc = sin(acc * 1.0001 + fragCoord.x + iTime);
#define STEP4 STEP STEP STEP STEP
#define STEP16 STEP4 STEP4 STEP4 STEP4
#define STEP256 STEP16 STEP16 STEP16 STEP16 STEP16 STEP16 STEP16 STEP16 STEP16 STEP16 STEP16 STEP16 STEP16 STEP16 STEP16 STEP16
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    float acc = 0.0;
    for (int i = 0; i < 1000000; i++) {
        STEP256
    }
    fragColor = vec4(fract(acc), fragCoord / iResolution.xy, 1.0);
}
"""

GRADIENT = """
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    fragColor = vec4(fragCoord / iResolution.xy, 0.5 + 0.5 * sin(iTime), 1.0);
}
"""


@pytest.fixture
def render_server(monkeypatch):
    """This test's shader generators render through a fresh render server."""
    monkeypatch.setenv("HARNESS_GL", "subprocess")
    monkeypatch.setattr(_shader_server, "_RENDERER", None)


def test_a_slow_batch_in_the_render_server_fails_and_the_next_batch_renders(tmp_path, render_server):
    (tmp_path / "slow.glsl").write_text(SLOW_AT_LARGE_SIZES)
    gen = harness.get_generator("shaders", paths=[str(tmp_path / "slow.glsl")], builtin=False, render_timeout=1.0)
    assert gen.program_names() == ["slow"]
    server = _shader_server.renderer().proc
    started = time.perf_counter()
    with pytest.raises(HarnessError, match=r"render timeout of 1 s.*'slow'.*Raise render_timeout"):
        gen.sample(0, 1, 512)
    assert time.perf_counter() - started < 2.5
    assert server.poll() is not None  # killed, not left rendering
    images = gen.sample(0, 2, 32)
    assert images.shape == (2, 3, 32, 32) and images.float().std() > 0


def test_a_program_too_slow_for_the_probe_is_dropped_with_a_warning(tmp_path, render_server):
    (tmp_path / "endless.glsl").write_text(ENDLESS)
    (tmp_path / "gradient.glsl").write_text(GRADIENT)
    gen = harness.get_generator("shaders", paths=[str(tmp_path)], builtin=False, render_timeout=1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert gen.program_names() == ["gradient"]
    assert any("'endless'" in str(w.message) and "render_timeout" in str(w.message) for w in caught)


def test_generate_stops_at_the_render_timeout_instead_of_hanging(tmp_path):
    (tmp_path / "endless.glsl").write_text(ENDLESS)
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        "generators:\n"
        f"  endless: {{plugin: shaders, params: {{paths: ['{tmp_path / 'endless.glsl'}'], builtin: false, "
        "render_timeout: 1}}\n"
    )
    result = cli("--registry", str(registry), "generate", "endless", "--n", "2", "--size", "32",
                 "--out", str(tmp_path / "out"), timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "'endless'" in result.stderr and "render_timeout=1 s" in result.stderr
