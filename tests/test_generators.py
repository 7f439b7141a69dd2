"""The procedural generators, through the public API: determinism, stream slicing,
typed parameters and references, keys, streaming shards, composition, the KML and
Mixup recipes, the shader library and a user's Shadertoy corpus, and writing images to
disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import harness
from harness.config.registry import load_registry, use_registry
from harness.errors import HarnessError, RegistryError
from harness.hookspecs import hookimpl
from harness.keys import code_closure
from harness.kinds import Generator, ParamsError

REGISTRY = """
plugins: [test_generators]
generators:
  dead-leaves: {plugin: dead-leaves, params: {shape: mixed}}
  shaders: {plugin: shaders}
  shaders-mixup: {plugin: mixup, params: {base: shaders, n: 6}}
  shaders-kml: {plugin: kml, params: {base: shaders}}
  shaders-kml-mixup: {plugin: kml-mixup, params: {base: shaders, n: 2}}
  stylegan-oriented: {plugin: stylegan-oriented}
  constant-colours: {plugin: test-constant-colours}
  circles: {plugin: dead-leaves, params: {shape: circle}}
"""
INSTANCES = ["dead-leaves", "shaders", "shaders-mixup", "shaders-kml", "shaders-kml-mixup", "stylegan-oriented"]


@pytest.fixture(autouse=True)
def registry(tmp_path):
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY)
    return use_registry(path)


def near_constant(images: torch.Tensor) -> torch.Tensor:
    """Every channel's spatial std below 2 (of 255)."""
    return images.float().flatten(2).std(dim=2).amax(dim=1) < 2.0


# ----------------------------------------------------------------------------- all
@pytest.mark.parametrize("name", INSTANCES)
def test_deterministic_and_sliceable(name):
    gen = harness.get_generator(name)
    full = gen.sample(7, 5, 32)
    assert full.dtype == torch.uint8 and full.shape == (5, 3, 32, 32)
    assert torch.equal(full, harness.get_generator(name).sample(7, 5, 32)), "same seed, same bytes"
    assert torch.equal(gen.sample(7, 2, 32, start=3), full[3:5]), "a slice equals the longer stream's slice"
    assert torch.equal(gen.sample(7, 1, 32, start=1)[0], full[1])
    assert not torch.equal(gen.sample(8, 5, 32), full), "another seed, other images"
    assert len({bytes(x.numpy()) for x in full}) == 5, "images of a stream differ"
    assert gen.sample(7, 0, 32).shape == (0, 3, 32, 32)


def test_parameters_are_validated_with_their_names():
    with pytest.raises(ParamsError, match="shape"):
        harness.get_generator("dead-leaves", shape="hexagon")
    with pytest.raises(ParamsError, match="channels"):
        harness.get_generator("shaders", channels="webcam")
    with pytest.raises(ParamsError, match="stylegan-oriented.params.channels: unknown parameter"):
        harness.get_generator("stylegan-oriented", channels=3)
    with pytest.raises(ParamsError, match=r"\.n: .*greater than or equal to 1"):
        harness.get_generator("shaders-mixup", n=0)
    with pytest.raises(ParamsError, match=r"rmax: .*must be >= rmin"):
        harness.get_generator("dead-leaves", rmin=0.5, rmax=0.1)
    with pytest.raises(ParamsError, match=r"time_range: .*low <= high"):
        harness.get_generator("shaders", time_range=[5, 1])
    with pytest.raises(ValueError, match="size"):
        harness.get_generator("dead-leaves").sample(0, 1, 0)


@pytest.mark.parametrize(
    ("name", "params", "field", "closest"),
    [
        ("dead-leaves", {"max_shape": 10}, "max_shape", "max_shapes"),
        ("shaders", {"program": ["fbm_*"]}, "program", "programs"),
        ("kml", {"base": "shaders", "kmeans": 64}, "kmeans", "kmeans_size"),
        ("stylegan-oriented", {"channel_bas": 64}, "channel_bas", "channel_base"),
    ],
)
def test_unknown_parameters_name_the_closest_valid_one(name, params, field, closest):
    with pytest.raises(ParamsError, match=rf"\.{field}: unknown parameter; did you mean '{closest}'"):
        harness.get_generator(name, **params)


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("dead-leaves", {"rmin": "big"}, "rmin"),
        ("dead-leaves", {"max_shapes": 2.5}, "max_shapes"),
        ("shaders", {"programs": 3}, "programs"),
        ("mixup", {"base": "shaders", "alpha": [1.0]}, "alpha"),
        ("kml", {"base": "no such/name"}, "base"),
    ],
)
def test_ill_typed_parameters_are_refused_with_their_field(name, params, field):
    with pytest.raises(ParamsError, match=rf"params\.{field}: "):
        harness.get_generator(name, **params)


def test_a_base_that_names_nothing_is_reported():
    with pytest.raises(RegistryError, match=r"kml'\.params\.base: unknown generator .*'no-such'.*Known: .*dead-leaves"):
        harness.get_generator("kml", base="no-such")
    with pytest.raises(ParamsError, match=r"base: Field required"):
        harness.get_generator("mixup")


def test_generators_that_refer_to_each_other_are_refused(tmp_path):
    path = tmp_path / "cycle.yaml"
    path.write_text(
        "generators:\n"
        "  loop-a: {plugin: mixup, params: {base: loop-b}}\n"
        "  loop-b: {plugin: kml, params: {base: loop-a}}\n"
        "  loop-self: {plugin: kml-mixup, params: {base: loop-self}}\n"
    )
    registry = load_registry(path)
    with pytest.raises(RegistryError, match="cycle: generator loop-a -> generator loop-b -> generator loop-a"):
        registry.create("generator", "loop-a")
    with pytest.raises(RegistryError, match="cycle"):
        registry.create("generator", "loop-self")


def test_keys_cover_the_base_and_leave_out_run_options():
    kml = harness.get_generator("kml", base="dead-leaves")
    described = kml.describe()["params"]["base"]
    assert described["instance"] == "dead-leaves" and described["params"]["shape"] == "mixed"
    assert kml.key == harness.get_generator("kml", base="dead-leaves", device="cpu").key, "device is a run option"
    assert "device" not in kml.describe()["params"]
    others = {harness.get_generator("kml", base=base).key for base in ("circles", "stylegan-oriented", "dead-leaves")}
    assert len(others) == 3, "another base, or the same plugin with other parameters, is another key"
    assert kml.key != harness.get_generator("kml", base="dead-leaves", iterations=2).key
    assert kml.key != harness.get_generator("kml-mixup", base="dead-leaves", n=1).key


def test_every_helper_module_is_part_of_a_generator_code_fingerprint():
    """Editing any module a generator runs changes its key: the registering modules import
    every helper module of the package (`code_closure` is what the fingerprint hashes)."""
    from pathlib import Path

    import harness_plugins.generators as package

    folder = Path(package.__file__).parent
    helpers = {f"harness_plugins.generators.{p.stem}" for p in folder.glob("_*.py") if p.stem != "__init__"}
    closures = {
        module: set(code_closure(f"harness_plugins.generators.{module}"))
        for module in ("dead_leaves", "shaders", "mixing", "stylegan")
    }
    assert helpers <= set().union(*closures.values())
    assert {"harness_plugins.generators._shader_programs", "harness_plugins.generators._shader_gl",
            "harness_plugins.generators._shader_server"} <= closures["shaders"]
    assert "harness_plugins.generators._kml" in closures["mixing"]
    assert harness.get_generator("shaders-kml").describe()["code"] != harness.get_generator("shaders").describe()["code"]


def test_plugin_modules_import_without_torch_or_moderngl():
    code = (
        "import sys\n"
        "import harness_plugins.generators.dead_leaves, harness_plugins.generators.shaders\n"
        "import harness_plugins.generators.mixing, harness_plugins.generators.stylegan\n"
        "import harness_plugins.generators.diversity\n"
        "heavy = [m for m in ('torch', 'moderngl', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ----------------------------------------------------------------------------- dead leaves
def test_dead_leaves_covers_the_canvas():
    gen = harness.get_generator("dead-leaves")
    labels, palettes = gen.label_maps(seed=0, indices=list(range(12)), size=64)
    assert (labels >= 0).all(), "every pixel lies under a leaf"
    for lab in labels:
        assert len(np.unique(lab)) > 20, "many leaves are visible"
    images = gen.sample(0, 12, 64)
    # each pixel shows its leaf's colour
    for i in range(12):
        assert np.array_equal(images[i].permute(1, 2, 0).numpy(), palettes[i][labels[i]])


@pytest.mark.parametrize("shape", ["circle", "square", "oriented_square", "rectangle", "triangle", "quadrilateral"])
def test_dead_leaves_shapes(shape):
    images = harness.get_generator("dead-leaves", shape=shape).sample(1, 2, 48)
    assert not near_constant(images).any()


# ----------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("name", ["dead-leaves", "shaders"])
def test_stream_shards_cover_each_index_once(name):
    from torch.utils.data import DataLoader

    from harness.streaming import GeneratorStream

    n, size = 22, 16
    reference = harness.get_generator(name).sample(3, n, size)  # the parent now holds any GL state
    seen: dict[int, torch.Tensor] = {}
    for rank in range(2):
        stream = GeneratorStream(name, seed=3, size=size, batch_size=3, n=n, rank=rank, world_size=2, with_indices=True)
        for images, indices in DataLoader(stream, batch_size=None, num_workers=2, timeout=120):
            assert images.dtype == torch.uint8
            for image, index in zip(images, indices.tolist()):
                assert index not in seen, f"index {index} produced twice"
                seen[index] = image
    assert sorted(seen) == list(range(n))
    for index, image in seen.items():
        assert torch.equal(image, reference[index])


def test_imagefolder_is_resumable_and_grid_is_written(tmp_path):
    from PIL import Image

    from harness.streaming import image_path, write_grid, write_imagefolder

    gen = harness.get_generator("dead-leaves")
    out = write_imagefolder(gen, tmp_path / "data", n=5, size=24, seed=2, batch_size=2)
    first = image_path(out, 3).read_bytes()
    image_path(out, 1).unlink()
    write_imagefolder(gen, out, n=7, size=24, seed=2, batch_size=4)
    files = sorted(p.name for p in out.rglob("*.png"))
    assert files == [f"{i:08d}.png" for i in range(7)]
    assert image_path(out, 3).read_bytes() == first, "existing files are kept"
    assert np.array_equal(np.asarray(Image.open(image_path(out, 1))), gen.sample(2, 1, 24, start=1)[0].permute(1, 2, 0).numpy())
    with pytest.raises(HarnessError, match="another folder"):
        write_imagefolder(gen, out, n=7, size=32, seed=2)
    grid = write_grid(gen, tmp_path / "grid.png", n=6, size=16, seed=0)
    assert Image.open(grid).size == (3 * 18 + 2, 2 * 18 + 2)



def test_imagefolder_in_jpeg_holds_what_pil_writes_at_quality_75_and_is_not_mixed_with_png(tmp_path):
    import io

    from PIL import Image

    import typing

    from harness.cli import build_parser
    from harness.config.schema import BenchSpec
    from harness.streaming import IMAGE_FORMATS, image_path, write_imagefolder

    gen = harness.get_generator("dead-leaves")
    out = write_imagefolder(gen, tmp_path / "data", n=3, size=32, seed=1, image_format="jpeg")
    assert sorted(p.name for p in out.rglob("*.*") if p.name != "generator.json") == [f"{i:08d}.jpg" for i in range(3)]
    for index, image in enumerate(gen.sample(1, 3, 32).permute(0, 2, 3, 1).numpy()):
        expected = io.BytesIO()
        Image.fromarray(image).save(expected, format="JPEG", quality=75)
        assert image_path(out, index, "jpeg").read_bytes() == expected.getvalue()
    with pytest.raises(HarnessError, match="holds jpeg images .* not png images"):
        write_imagefolder(gen, out, n=3, size=32, seed=1)
    generate = next(a for a in build_parser()._subparsers._group_actions[0].choices["generate"]._actions if a.dest == "format")  # noqa: SLF001
    assert sorted(generate.choices) == sorted(IMAGE_FORMATS)
    prerendered = typing.get_args(BenchSpec.model_fields["prerendered"].annotation)  # Literal[...] | None
    assert sorted(typing.get_args(prerendered[0])) == sorted(IMAGE_FORMATS)

# ----------------------------------------------------------------------------- composition
class ConstantColours(Generator):
    """Image i of stream `seed` is one flat colour (a test base generator)."""

    def sample(self, seed, n, size, start=0):
        colours = self.colours(seed, list(range(start, start + n)))
        return torch.from_numpy(colours).view(n, 3, 1, 1).expand(n, 3, size, size).contiguous()

    @staticmethod
    def colours(seed, indices):
        i = np.asarray(indices, dtype=np.int64)
        s = seed % 256
        return np.stack([(37 * i + s) % 256, (91 * i + 3 * s) % 256, (13 * i + 7) % 256], 1).astype(np.uint8)


@hookimpl
def register_generators(register):
    """This module is a plugin too (`plugins: [test_generators]` above)."""
    register("test-constant-colours", ConstantColours)


def test_mixup_is_the_weighted_mean_of_its_base_images():
    mixup = harness.get_generator("mixup", base="constant-colours", n=4)
    seed, n = 5, 6
    out = mixup.sample(seed, n, 8, start=10)
    weights = mixup.weights(seed, list(range(10, 10 + n)))
    assert np.allclose(weights.sum(axis=1), 1.0) and (weights >= 0).all()
    base_seed = mixup.base_seed(seed)
    for k in range(n):
        colours = ConstantColours.colours(base_seed, range(4 * (10 + k), 4 * (10 + k) + 4)).astype(np.float64)
        expected = weights[k] @ colours
        got = out[k, :, 0, 0].numpy().astype(np.float64)
        assert np.all(np.abs(got - expected) <= 0.5 + 1e-3)
        assert (out[k] == out[k, :, :1, :1]).all(), "a mix of flat images is flat"


def test_kml_composes_with_any_base():
    for base in ("stylegan-oriented", "dead-leaves", "shaders-mixup"):
        images = harness.get_generator("kml", base=base).sample(0, 2, 24)
        assert images.shape == (2, 3, 24, 24) and images.dtype == torch.uint8
    images = harness.get_generator("mixup", base="shaders-kml", n=2).sample(0, 2, 24)
    assert images.shape == (2, 3, 24, 24)


def numpy_kml_mask(s1: torch.Tensor, size: int) -> np.ndarray:
    """The KML recipe written independently: the float [0, 1] source resized with
    antialiasing (never quantised), numpy unique for the initial centroids, argmin over
    both distances in float64, the released Niter = 3 (two updates, three assignments)."""
    x = F.interpolate(s1[None].float() / 255, size=(256, 256), mode="bilinear", align_corners=False, antialias=True)
    pixels = x[0].permute(1, 2, 0).reshape(-1, 3).numpy()
    distinct = np.unique(pixels, axis=0)
    centroids = np.stack([distinct[0], distinct[-1]]).astype(np.float64)
    points = pixels.astype(np.float64)
    for _ in range(2):
        labels = np.argmin(((points[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
        for k in range(2):
            if (labels == k).any():
                centroids[k] = points[labels == k].mean(axis=0)
    labels = np.argmin(((points[:, None] - centroids[None]) ** 2).sum(-1), axis=1)

    def blur(m):
        p = np.pad(m, 1, mode="reflect")
        return sum(p[i:i + m.shape[0], j:j + m.shape[1]] for i in range(3) for j in range(3)) / 9.0

    mask = blur((labels == 0).astype(np.float64).reshape(256, 256))
    mask = F.interpolate(torch.from_numpy(mask)[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return blur(mask.numpy())


def test_kml_is_a_convex_combination_through_the_two_means_mask_of_s1():
    kml = harness.get_generator("shaders-kml")
    seed, n, size = 11, 3, 48
    out = kml.sample(seed, n, size, start=4).numpy().astype(np.float64)
    base = kml.base_images(seed, n, size, start=4).view(n, 3, 3, size, size)
    for k in range(n):
        s1, s2, s3 = base[k, 0], base[k, 1].numpy().astype(np.float64), base[k, 2].numpy().astype(np.float64)
        lo, hi = np.minimum(s2, s3), np.maximum(s2, s3)
        assert np.all(out[k] >= lo - 0.5) and np.all(out[k] <= hi + 0.5), "per pixel between s2 and s3"
        mask = numpy_kml_mask(s1, size)
        expected = s2 * mask + s3 * (1 - mask)
        off = np.abs(out[k] - expected) > 1.0
        assert off.mean() < 0.005, f"{off.mean():.4f} of the pixels do not follow the 2-means mask of s1"
        assert 0.0 < mask.mean() < 1.0


def test_kml_mixup_is_the_mean_of_two_kml_images():
    kml_mixup = harness.get_generator("shaders-kml-mixup")
    kml = harness.get_generator("kml", base="shaders")
    seed, size = 4, 24
    out = kml_mixup.sample(seed, 2, size).float()
    triples = kml_mixup.base_images(seed, 2, size, 0).view(2, 2, 3, 3, size, size)
    from harness_plugins.generators._kml import kml_blend

    single = torch.from_numpy(kml_blend(triples.reshape(4, 1, 3, 3, size, size).numpy(), size))
    assert torch.allclose(out, single.view(2, 2, 3, size, size).mean(dim=1), atol=0.51)
    assert kml.sample(seed, 1, size).shape == (1, 3, size, size)


def test_kml_torch_path_matches_the_numpy_path():
    """The torch implementation (used on GPUs) against the numpy one, both on the CPU:
    the same float32 operations, so the same values (means of two KML images)."""
    from harness_plugins.generators._kml import kml_blend

    triples = harness.get_generator("shaders-kml").base_images(0, 8, 40, 0).view(4, 2, 3, 3, 40, 40)
    on_numpy = kml_blend(triples.numpy(), 40)
    on_torch = kml_blend(triples, 40).numpy()
    assert np.array_equal(on_numpy, on_torch)


# ----------------------------------------------------------------------------- shaders
from harness_plugins.generators._shader_programs import ShaderWarning, library_names  # noqa: E402


@pytest.mark.parametrize("program", library_names())
def test_every_library_program_compiles_and_renders(program):
    """A library program compiles, draws varied images, and renders the same bytes when
    dispatched as a compute program (under llvmpipe here)."""
    gen = harness.get_generator("shaders", programs=[program])
    dispatched = harness.get_generator("shaders", programs=[program], pipeline="compute")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShaderWarning)
        assert gen.program_names() == [program] == dispatched.program_names()
    images = gen.sample(0, 8, 32)
    assert near_constant(images).sum() <= 1, f"{program} renders near-constant images"
    assert len({bytes(x.numpy()) for x in images}) == 8
    assert torch.equal(dispatched.sample(0, 8, 32), images)


def test_library_is_large_and_varied():
    names = library_names()
    assert len(names) >= 50
    images, programs = harness.get_generator("shaders").sample_with_programs(0, 64, 16)
    assert len(set(programs)) > 20


GOOD = "void mainImage(out vec4 c, in vec2 p) { c = vec4(p / iResolution.xy, fract(iTime), 1.0); }\n"
CHANNEL = "void mainImage(out vec4 c, in vec2 p) { c = texture(iChannel0, p / iResolution.xy * 0.5 + iTime); }\n"


def test_broken_and_constant_programs_are_skipped_with_their_names(tmp_path):
    (tmp_path / "good.glsl").write_text(GOOD)
    (tmp_path / "broken.frag").write_text("void mainImage(out vec4 c, in vec2 p) { c = vec4(oops); }\n")
    (tmp_path / "flat.glsl").write_text("void mainImage(out vec4 c, in vec2 p) { c = vec4(0.2, 0.4, 0.6, 1.0); }\n")
    (tmp_path / "notes.glsl").write_text("// no entry point here\n")
    gen = harness.get_generator("shaders", builtin=False, paths=[str(tmp_path)])
    with pytest.warns(ShaderWarning) as caught:
        names = gen.program_names()
    messages = "\n".join(str(w.message) for w in caught)
    assert "'broken'" in messages and "oops" in messages, "the warning names the file and quotes the GLSL log"
    assert "'flat'" in messages and "near-constant" in messages
    assert "'notes'" in messages and "mainImage" in messages
    assert names == ["good"]
    assert not near_constant(gen.sample(0, 4, 16)).any()


def test_shaders21k_json_programs_render(tmp_path):
    program = {"Shader": {"info": {"id": "abc123", "name": "test"}, "renderpass": [
        {"type": "image", "code": CHANNEL, "inputs": [{"channel": 0, "ctype": "texture"}], "outputs": []}]}}
    (tmp_path / "abc123.json").write_text(json.dumps(program))
    multipass = {"Shader": {"renderpass": [{"type": "buffer", "code": GOOD}, {"type": "image", "code": GOOD}]}}
    (tmp_path / "multi.json").write_text(json.dumps(multipass))
    gen = harness.get_generator("shaders", builtin=False, paths=[str(tmp_path)])
    with pytest.warns(ShaderWarning, match="multi-pass"):
        assert gen.program_names() == ["abc123"]
    images = gen.sample(0, 4, 32)
    assert not near_constant(images).any()
    with pytest.warns(ShaderWarning, match="iChannel"), pytest.raises(HarnessError, match="no shader programs"):
        harness.get_generator("shaders", builtin=False, paths=[str(tmp_path / "abc123.json")], channels="exclude").sample(0, 1, 8)


def test_shader_key_follows_the_programs_code_not_their_folder(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "good.glsl").write_text(GOOD)

    def key(folder):
        return harness.get_generator("shaders", builtin=False, paths=[str(tmp_path / folder)]).key

    assert key("a") == key("b"), "the same corpus in another folder is the same generator"
    (tmp_path / "b" / "good.glsl").write_text(GOOD.replace("fract(iTime)", "0.5"))
    assert key("a") != key("b"), "an edited program is another generator"


def test_diversity_report_counts_every_image_once():
    from harness_plugins.generators.diversity import diversity_report

    report = diversity_report(harness.get_generator("shaders"), n=40, size=16)
    assert report["n"] == 40 and report["near_constant_fraction"] == 0.0
    assert sum(p["share"] for p in report["per_program"].values()) == pytest.approx(1.0)
    assert 0.0 < report["mean_pairwise_distance"] < 1.0
    plain = diversity_report(harness.get_generator("constant-colours"), n=8, size=8)
    assert plain["per_program"] == {} and plain["near_constant_fraction"] == 1.0


def test_missing_gl_is_reported_with_the_packages_to_install(monkeypatch):
    import moderngl

    from harness_plugins.generators._shader_gl import Renderer

    def no_egl(*args, **kwargs):
        raise Exception("libEGL.so.1: cannot open shared object file")

    monkeypatch.setattr(moderngl, "create_standalone_context", no_egl)
    with pytest.raises(HarnessError, match="libegl1.*libgl1-mesa-dri"):
        Renderer()


@pytest.mark.parametrize("name", ["shaders", "shaders-mixup", "shaders-kml-mixup", "dead-leaves"])
def test_sample_at_scattered_indices_equals_sample_of_each(name: str) -> None:
    """`sample_at` makes any indices (shuffled, repeated) in one call, each the image
    `sample` makes for it: a shuffled training epoch relies on it."""
    generator = harness.get_generator(name)
    indices = [7, 2, 30, 2, 3]
    together = generator.sample_at(5, indices, 16)
    one_by_one = torch.cat([generator.sample(5, 1, 16, start=i) for i in indices])
    assert together.dtype == torch.uint8 and torch.equal(together, one_by_one)
    assert generator.sample_at(5, [], 16).shape == (0, 3, 16, 16)
    with pytest.raises(ValueError, match="indices"):
        generator.sample_at(5, [3, -1], 16)


@pytest.mark.parametrize(
    "reorder_on_gl, pipeline", [(False, "graphics"), (True, "graphics"), (True, "compute")],
    ids=["numpy-reorder", "gl-reorder", "gl-reorder-compute"],
)
def test_a_batch_over_several_frames_gives_the_images_drawn_one_at_a_time(monkeypatch, reorder_on_gl: bool, pipeline: str) -> None:
    """Tiles are laid out into the result by numpy under a software rasteriser and by a
    GL pass on a GPU; both, across frames and a last row of tiles left part empty, give
    each image as numpy lays it out from a frame of its own. At an odd size too: where
    in a frame a tile lies must not change what a program that takes derivatives draws.
    Dispatched as compute programs (the one that takes derivatives still drawn, in the
    same frames), the images are those drawn one at a time. Where GL reorders, frames
    alternate between two tile textures (a GPU may shade the next frame while the last
    is read; the device run's pipelines check holds compute runs to each other there)."""
    from harness_plugins.generators import _shader_gl
    from harness_plugins.generators._shader_server import renderer

    generator = harness.get_generator("shaders")
    size, n = 21, 23  # frames of 3 x 3 tiles: two full frames, then 5 tiles over two rows; an odd size
    usable = generator.library().usable
    takes_fwidth = next(p for p in usable if p.name == "contour_bands")  # tiles at odd rows and columns draw it
    programs = [takes_fwidth if j % 2 else usable[j] for j in range(n)]
    _, rows = generator.draws(3, list(range(n)))
    local = renderer()
    gl = local._gl
    for program in programs:
        assert local.compile(program) is None
    monkeypatch.setattr(gl.reader, "reorder_on_gl", False)
    monkeypatch.setattr(gl, "frames", {})
    alone = np.stack([local._run(lambda j=j: gl.render(programs[j:j + 1], rows[j:j + 1], size, 60.0))[0] for j in range(n)])
    monkeypatch.setattr(_shader_gl, "FRAME_SIDE", 3 * (size + 1))
    gl.reader.reorder_on_gl = reorder_on_gl
    gl.frames.clear()
    batch = local._run(lambda: gl.render(programs, rows, size, 60.0, pipeline))
    assert batch.shape == (n, 3, size, size) and batch.dtype == np.uint8
    if pipeline == "compute":
        assert gl.dispatched[usable[0].digest] is not None and gl.dispatched[takes_fwidth.digest] is None
    np.testing.assert_array_equal(batch, alone)
    assert len({image.tobytes() for image in batch}) == n  # distinct images: no tile read twice
    assert len(gl.frames[3 * (size + 1)][0]) == (2 if reorder_on_gl else 1)


class HostCopy:
    """Stands in for the GL-CUDA interop (`_shader_cuda.GLToCuda`) where there is no CUDA:
    it reads the GL buffer on the host and writes its bytes at the target address."""

    def __init__(self, reader) -> None:
        self.reader, self.copied = reader, []

    def copy(self, buffer: int, nbytes: int, target: int, stream: int) -> None:
        import ctypes

        source = next(b for b in self.reader.device_buffers.values() if b.glo == buffer)
        ctypes.memmove(target, source.read(size=nbytes), nbytes)
        self.copied.append(nbytes)

    def forget(self, buffer: int) -> None:
        pass


def test_frames_handed_over_to_a_device_hold_the_bytes_read_back(monkeypatch) -> None:
    """Asked for the images on a device, the renderer reads each frame into a buffer of
    its own and has the interop copy it into a tensor at the frame's offset: across
    frames and a last frame part empty, the tensor holds the bytes the host readback
    gives (a host copy stands in for CUDA here; the device run checks the real one).
    HARNESS_GL=host, no interop to be had, or a CUDA call of it that fails (both warned,
    naming the device and why), reads back through the host."""
    from types import SimpleNamespace

    from harness_plugins.generators import _shader_gl
    from harness_plugins.generators._shader_cuda import InteropError
    from harness_plugins.generators._shader_server import renderer

    generator = harness.get_generator("shaders")
    size, n = 21, 23  # frames of 3 x 3 tiles: two full, then 5 tiles
    programs, rows = generator.draws(8, list(range(n)))
    local = renderer()
    gl = local._gl
    for program in programs:
        assert local.compile(program) is None
    monkeypatch.setattr(_shader_gl, "FRAME_SIDE", 3 * (size + 1))
    monkeypatch.setattr(gl.reader, "reorder_on_gl", True)
    monkeypatch.setattr(gl, "frames", {})
    monkeypatch.setattr(gl.reader, "device_buffers", {})
    stand_in = HostCopy(gl.reader)
    monkeypatch.setattr(gl.reader, "interops", {"cpu": stand_in})
    read_back = local._run(lambda: gl.render(programs, rows, size, 60.0))
    on = SimpleNamespace(device=torch.device("cpu"), cuda_stream=0)
    handed = local._run(lambda: gl.render(programs, rows, size, 60.0, "graphics", on))
    assert isinstance(handed, torch.Tensor) and handed.shape == (n, 3, size, size) and handed.dtype == torch.uint8
    np.testing.assert_array_equal(handed.numpy(), read_back)
    assert len(stand_in.copied) == 3 and len(gl.reader.device_buffers) == 1
    assert "hand over to CUDA (GL-CUDA interop)" in gl.seconds
    monkeypatch.setenv("HARNESS_GL", "host")
    np.testing.assert_array_equal(local._run(lambda: gl.render(programs, rows, size, 60.0, "graphics", on)), read_back)
    assert len(stand_in.copied) == 3
    monkeypatch.delenv("HARNESS_GL")

    def refused(*args) -> None:
        raise InteropError("cudaGraphicsMapResources failed with CUDA error 999: unknown error")

    monkeypatch.setattr(stand_in, "copy", refused)
    with pytest.warns(RuntimeWarning, match="reach cpu through host memory from now on: cudaGraphicsMapResources failed"):
        np.testing.assert_array_equal(local._run(lambda: gl.render(programs, rows, size, 60.0, "graphics", on)), read_back)
    assert gl.reader.interops["cpu"] is None
    if not torch.cuda.is_available():
        cuda = SimpleNamespace(device=torch.device("cuda", 0), cuda_stream=0)
        with pytest.warns(RuntimeWarning, match="reach cuda:0 through host memory: cuda:0 is not a CUDA device"):
            np.testing.assert_array_equal(local._run(lambda: gl.render(programs, rows, size, 60.0, "graphics", cuda)), read_back)
        assert gl.reader.interops["cuda:0"] is None


def test_the_cuda_runtime_torch_loads_has_the_interop_calls() -> None:
    """The renderer finds the CUDA runtime that torch loaded, which has every function
    the interop calls (with a CUDA build of torch; none needs a GPU to be looked up). A
    failing call is an InteropError naming the call and CUDA's own message."""
    import ctypes

    from harness_plugins.generators._shader_cuda import GLToCuda, InteropError, _declare, _runtime_library

    torch.zeros(1)  # torch's libraries are loaded
    path = _runtime_library()
    if path is None:
        pytest.skip("this torch build loads no CUDA runtime library")
    runtime = ctypes.CDLL(path)
    _declare(runtime)  # AttributeError where one is missing
    assert hasattr(runtime, "cudaGLGetDevices")
    if not torch.cuda.is_available():
        with pytest.raises(InteropError, match=r"^cudaSetDevice failed with CUDA error [0-9]+: \w+"):
            GLToCuda(runtime, 0).check(runtime.cudaSetDevice(0), "cudaSetDevice")


@pytest.mark.parametrize("name", ["shaders", "shaders-kml-mixup", "dead-leaves"])
def test_sample_on_a_device_gives_the_images_sample_makes(name: str) -> None:
    """`sample_on` makes scattered indices in one call, on the device asked for (the CPU
    here, and a CUDA device where there is one), each the image `sample` makes for it
    alone (its own frame, for shaders)."""
    generator = harness.get_generator(name)
    indices = [4, 0, 9]
    one_by_one = torch.cat([generator.sample(2, 1, 16, start=i) for i in indices])
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        images = generator.sample_on(2, indices, 16, device)
        assert images.device.type == device and torch.equal(images.cpu(), one_by_one)


def test_time_split_counts_the_parts_of_a_call_within_its_wall_time() -> None:
    """A composite over shaders counts its base images and its own work, and the renderer
    its parts inside the base images; each part lies within what the caller timed."""
    import time

    generator = harness.get_generator("kml-mixup", base="shaders", kmeans_size=16)
    generator.sample(1, 4, 16)
    before = generator.time_split()
    start = time.perf_counter()
    generator.sample(2, 6, 16)
    wall = time.perf_counter() - start
    spent = {part: seconds - before.get(part, 0.0) for part, seconds in generator.time_split().items()}
    inside_base = {part: s for part, s in spent.items() if part.startswith("base images > ")}
    assert set(inside_base) >= {"base images > wait for the GL work", "base images > read back"}
    assert all(s >= 0 for s in spent.values())
    assert spent["base images"] > 0 and spent["combine them"] > 0
    assert spent["base images"] + spent["combine them"] <= wall
    # on a GPU: the wait for its work and the copy of the images to the host (none here)
    within_combine = spent["combine them > wait for the GPU"] + spent["combine them > copy to the host"]
    assert within_combine <= spent["combine them"] and (within_combine > 0) == torch.cuda.is_available()
    assert sum(inside_base.values()) <= spent["base images"]
    assert harness.get_generator("dead-leaves").time_split() == {}


FRONT_FACING = "void mainImage(out vec4 c, in vec2 p) { c = vec4(p / iResolution.xy, gl_FrontFacing ? 0.25 : 0.75, 1.0); }\n"
FRAG_COORD = "void mainImage(out vec4 c, in vec2 p) { c = vec4(fract(gl_FragCoord.xy / 7.0), 0.5, 1.0); }\n"
LOD = "void mainImage(out vec4 c, in vec2 p) { c = textureLod(iChannel2, p / iResolution.xy + iTime, 0.0); }\n"


def test_the_compute_pipeline_renders_the_images_the_graphics_pipeline_draws(tmp_path) -> None:
    """Each program that can run as a compute program gives the bytes its fragment form
    draws (Mesa's llvmpipe here; the device run checks a GPU driver). A program that
    needs the fragment stage is drawn, one whose compute form does not compile is drawn
    with a warning naming it, and the pipeline is part of the key (a driver may round
    the two differently). gl_FragCoord is the pixel in the program's own image, as on
    Shadertoy: the first 8 images of a batch of 40 (another tile layout), rendered by a
    render server, are the same."""
    from harness_plugins.generators._shader_server import RemoteRenderer

    for name, code in (("good", GOOD), ("channel", CHANNEL), ("lod", LOD), ("frag_coord", FRAG_COORD), ("facing", FRONT_FACING)):
        (tmp_path / f"{name}.glsl").write_text(code)
    selected = ["brick_wall", "contour_bands", "good", "channel", "lod", "frag_coord", "facing"]
    drawn = harness.get_generator("shaders", paths=[str(tmp_path)], programs=selected)
    dispatched = harness.get_generator("shaders", paths=[str(tmp_path)], programs=selected, pipeline="compute")
    assert {p.name: p.fragment_only for p in dispatched.candidates()} == {
        "brick_wall": False, "contour_bands": True, "channel": True, "facing": False, "frag_coord": False, "good": False,
        "lod": False}
    assert drawn.key != dispatched.key
    with pytest.warns(ShaderWarning, match=r"'facing'.*does not compile as a compute program"):
        assert dispatched.program_names() == drawn.program_names()
    assert dispatched.program_report()["drawn"] == ["contour_bands", "channel"] and "drawn" not in drawn.program_report()
    images, programs = dispatched.sample_with_programs(4, 40, 45)
    assert set(programs) == set(selected)
    torch.testing.assert_close(images, drawn.sample(4, 40, 45), rtol=0, atol=0)
    centre = (np.arange(45) + 0.5) / 7.0  # gl_FragCoord by hand: pixel centres of the image, rows bottom-up
    expected = np.round(255 * np.stack([np.tile(centre % 1, (45, 1)), np.tile((centre % 1)[::-1, None], (1, 45))]))
    for image in images[[j for j, name in enumerate(programs) if name == "frag_coord"]]:
        np.testing.assert_allclose(image[:2].numpy(), expected, atol=1)
    programs, rows = dispatched.draws(4, list(range(8)))
    remote = RemoteRenderer()
    np.testing.assert_array_equal(remote.render(programs, rows, 45, 10.0, 60.0, "compute"), images[:8].numpy())


def test_a_driver_without_compute_shaders_draws_the_compute_pipeline_and_says_so() -> None:
    """The renderer asks for OpenGL 4.3 and takes 3.3 where the driver has no more (Mesa
    capped at 3.3 here; NVIDIA's driver gives exactly the version asked for). There,
    pipeline 'compute' warns once and draws: the bytes are the graphics pipeline's."""
    code = (
        "import json, warnings, harness\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    dispatched = harness.get_generator('shaders', pipeline='compute')\n"
        "    images = dispatched.sample(3, 8, 32)\n"
        "    images = dispatched.sample(4, 8, 32)\n"
        "print(json.dumps([str(w.message) for w in caught if 'compute shaders' in str(w.message)]))\n"
        "print(bool((images == harness.get_generator('shaders').sample(4, 8, 32)).all()))\n"
    )
    env = {**os.environ, "MESA_GL_VERSION_OVERRIDE": "3.3"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    warned, same = run.stdout.strip().splitlines()
    assert json.loads(warned) == [
        "the OpenGL context is 3.3, without compute shaders (OpenGL 4.3): pipeline 'compute' draws every program as "
        "'graphics' does"
    ]
    assert same == "True"
