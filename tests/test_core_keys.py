"""The core's contract on parameters and keys, through the CLI and the public API:
typed parameters with errors that name the file, instance and field; `harness list`
showing parameters; keys that see referred instances and code; the run manifest; the
summary table with reused cells."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from helpers import TESTS, cli

TOY_PLUGIN = '''
"""A third-party generator and task for the key tests."""

from pydantic import Field

from harness import Generator, Task, hookimpl
from harness.kinds import GeneratorRef

LEVEL_OFFSET = 0


class Flat(Generator):
    """One grey level per image."""

    class Params(Generator.Params):
        level: int = Field(10, ge=0, le=255, description="grey level of image 0")

    def sample(self, seed, n, size, start=0):
        import torch

        values = torch.arange(start, start + n) + self.params.level + LEVEL_OFFSET
        return values.clamp(0, 255).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, size, size).contiguous()


class MeanLevel(Task):
    """Reports the mean grey level the encoder's first feature sees on a generator's images."""

    default_datasets = ("toy",)

    class Params(Task.Params):
        source: GeneratorRef = Field(description="the generator whose images are embedded")
        images: int = Field(4, ge=1, description="how many images")

    def run(self, encoder, ctx):
        images = self.resolve(self.params.source).sample(0, self.params.images, 8)
        value = float(encoder.embed(images)[:, 0].mean())
        return [ctx.result("mean", value, n=self.params.images, headline=True)]


@hookimpl
def register_generators(register):
    register("flat", Flat)


@hookimpl
def register_tasks(register):
    register("mean-level", MeanLevel)
'''

REGISTRY = """
plugins: [{module}]
generators:
  flat-a: {{plugin: flat, params: {{level: 10}}}}
encoders:
  rgb-tiny: {{plugin: rgb, params: {{size: 4}}}}
  dino-flat: {{plugin: dino, params: {{data: flat-a, recipe: tiny}}}}
tasks:
  mean-a: {{plugin: mean-level, params: {{source: flat-a}}}}
profiles:
  default: {{encoders: [rgb-tiny], tasks: [mean-a]}}
"""


@pytest.fixture
def toy(tmp_path):
    """A registry using a plugin module written to tmp_path (importable via PYTHONPATH)."""
    module = f"toy_plugin_{tmp_path.name.replace('-', '_')}"
    source = tmp_path / f"{module}.py"
    source.write_text(TOY_PLUGIN)
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY.format(module=module))
    return {"module": module, "source": source, "registry": registry, "env": {"PYTHONPATH": str(tmp_path)}}


def keys_in_subprocess(toy, *names: str) -> dict[str, str]:
    """Instance keys computed by a fresh interpreter (code fingerprints are per process)."""
    script = textwrap.dedent(f"""
        import json, sys
        from harness.config.registry import load_registry
        registry = load_registry({str(toy['registry'])!r})
        out = {{}}
        for item in sys.argv[1:]:
            kind, name = item.split(":")
            out[item] = registry.create(kind, name).key
        print(json.dumps(out))
    """)
    env = {"PYTHONPATH": f"{toy['env']['PYTHONPATH']}:{TESTS}"}
    done = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, env={**__import__("os").environ, **env})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_unknown_parameter_exits_2_naming_file_instance_field_and_closest_name(tmp_path):
    registry = tmp_path / "registry.yaml"
    registry.write_text("tasks:\n  knn-typo: {plugin: knn, params: {kz: 5, datasets: [digits]}}\n")
    done = cli("--registry", str(registry), "run", "--encoders", "rgb", "--tasks", "knn-typo", "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    assert str(registry) in done.stderr
    assert "tasks.knn-typo.params.kz" in done.stderr
    assert "did you mean 'ks'" in done.stderr
    assert "Traceback" not in done.stderr


def test_ill_typed_parameter_exits_2_naming_the_field(tmp_path):
    registry = tmp_path / "registry.yaml"
    registry.write_text("tasks:\n  knn-bad: {plugin: knn, params: {temperature: abc, datasets: [digits]}}\n")
    done = cli("--registry", str(registry), "run", "--encoders", "rgb", "--tasks", "knn-bad", "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "tasks.knn-bad.params.temperature" in done.stderr
    assert "'abc'" in done.stderr


def test_python_api_refuses_unknown_parameters():
    import harness
    from harness.kinds import ParamsError

    with pytest.raises(ParamsError, match=r"typo_param: unknown parameter"):
        harness.get_encoder("rgb", typo_param=1)
    with pytest.raises(ParamsError, match=r"size"):
        harness.get_encoder("rgb", size="large")


def test_a_plugin_taking_parameters_in_init_is_reported_not_loaded(tmp_path):
    (tmp_path / "old_style.py").write_text(textwrap.dedent('''
        from harness import Generator, hookimpl

        class Old(Generator):
            def __init__(self, name=None, level=3):
                super().__init__(name)

            def sample(self, seed, n, size, start=0):
                raise NotImplementedError

        class Unfinished(Generator):
            """Forgets to implement sample()."""

        @hookimpl
        def register_generators(register):
            register("old", Old)
            register("unfinished", Unfinished)
    '''))
    registry = tmp_path / "registry.yaml"
    registry.write_text("plugins: [old_style]\n")
    done = cli("--registry", str(registry), "list", env={"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    broken = done.stdout.split("broken plugins")[1]
    assert "generator 'old'" in broken and "its __init__ takes level" in broken and "Params" in broken
    assert "generator 'unfinished'" in broken and "it does not implement sample" in broken


def test_list_an_instance_prints_its_parameters(toy):
    done = cli("--registry", str(toy["registry"]), "list", "mean-a", env=toy["env"])
    assert done.returncode == 0, done.stderr
    table = done.stdout.split("parameters")[1]
    assert "source" in table and "GeneratorRef" in table and "'flat-a'" in table
    assert "images" in table and "int" in table and "how many images" in table
    assert "datasets" in table


def test_list_says_when_nothing_matched(toy):
    done = cli("--registry", str(toy["registry"]), "list", "zzz-*", env=toy["env"])
    assert done.returncode == 1
    assert "nothing matched 'zzz-*'" in done.stderr and "glob" in done.stderr


def test_a_reference_is_hashed_whole(toy):
    before = keys_in_subprocess(toy, "task:mean-a", "generator:flat-a")
    toy["registry"].write_text(toy["registry"].read_text().replace("level: 10", "level: 11"))
    after = keys_in_subprocess(toy, "task:mean-a", "generator:flat-a")
    assert before["generator:flat-a"] != after["generator:flat-a"]
    assert before["task:mean-a"] != after["task:mean-a"]


def test_keys_see_code(toy):
    names = ("task:mean-a", "generator:flat-a", "encoder:rgb-tiny", "encoder:dino-flat")
    first = keys_in_subprocess(toy, *names)
    assert keys_in_subprocess(toy, *names) == first
    toy["source"].write_text(TOY_PLUGIN.replace("LEVEL_OFFSET = 0", "LEVEL_OFFSET = 1"))
    edited = keys_in_subprocess(toy, *names)
    assert edited["generator:flat-a"] != first["generator:flat-a"]
    assert edited["encoder:dino-flat"] != first["encoder:dino-flat"]  # trained on the edited generator
    assert edited["task:mean-a"] != first["task:mean-a"]
    assert edited["encoder:rgb-tiny"] == first["encoder:rgb-tiny"]  # its code did not change


PACKAGED_PLUGIN = {
    "__init__.py": "",
    "plugin.py": '''
from harness import Generator, hookimpl


class Flat(Generator):
    """Images of one grey level, from a helper module; timed by a `_bench` module."""

    def sample(self, seed, n, size, start=0):
        from {package}._levels import grey

        return grey(n, size)

    def reference_rate(self, seed, n, size):
        from {package}._flat_bench import rate

        return rate(self, n, size)


@hookimpl
def register_generators(register):
    register("flat", Flat)
''',
    "_levels.py": '''
LEVEL = 10


def grey(n, size):
    import torch

    return torch.full((n, 3, size, size), LEVEL, dtype=torch.uint8)
''',
    "_flat_bench.py": '''
import time


def rate(generator, n, size):
    began = time.perf_counter()
    generator.sample(0, n, size)
    return "one call", n / (time.perf_counter() - began)
''',
}


def test_keys_see_a_plugin_package_helper_but_not_its_bench_module(tmp_path):
    """A plugin's helper module is part of its key; a module named `*_bench`, which only
    times code, is not: editing it recomputes nothing."""
    package = f"toy_package_{tmp_path.name.replace('-', '_')}"
    folder = tmp_path / package
    folder.mkdir()
    for name, text in PACKAGED_PLUGIN.items():
        (folder / name).write_text(text.format(package=package))
    registry = tmp_path / "registry.yaml"
    registry.write_text(f"plugins: [{package}.plugin]\ngenerators:\n  flat-a: {{plugin: flat}}\n")
    toy = {"registry": registry, "env": {"PYTHONPATH": str(tmp_path)}}
    first = keys_in_subprocess(toy, "generator:flat-a")

    (folder / "_flat_bench.py").write_text(PACKAGED_PLUGIN["_flat_bench.py"] + "\nREPEATS = 3\n")
    assert keys_in_subprocess(toy, "generator:flat-a") == first

    (folder / "_levels.py").write_text(PACKAGED_PLUGIN["_levels.py"].replace("LEVEL = 10", "LEVEL = 11"))
    assert keys_in_subprocess(toy, "generator:flat-a") != first


def test_keys_see_the_code_of_a_plugin_class_inherited_from_another_package(tmp_path):
    """A generator that subclasses another package's generator (as a third party may
    subclass a built-in one) is keyed by the base class's code too: its own package
    imports the base, but the import leads out of that package."""
    suffix = tmp_path.name.replace("-", "_")
    base, derived = tmp_path / f"toy_base_{suffix}", tmp_path / f"toy_derived_{suffix}"
    for folder in (base, derived):
        folder.mkdir()
        (folder / "__init__.py").write_text("")
    base_source = (
        "import torch\nfrom harness import Generator\n\n\nclass Grey(Generator):\n"
        "    LEVEL = 10\n\n    def sample(self, seed, n, size, start=0):\n"
        "        return torch.full((n, 3, size, size), self.LEVEL, dtype=torch.uint8)\n"
    )
    (base / "grey.py").write_text(base_source)
    (derived / "plugin.py").write_text(
        f"from harness import hookimpl\nfrom {base.name}.grey import Grey\n\n\nclass Brighter(Grey):\n"
        "    def sample(self, seed, n, size, start=0):\n        return super().sample(seed, n, size, start) + 1\n\n\n"
        "@hookimpl\ndef register_generators(register):\n    register('brighter', Brighter)\n"
    )
    registry = tmp_path / "registry.yaml"
    registry.write_text(f"plugins: [{derived.name}.plugin]\ngenerators:\n  brighter-a: {{plugin: brighter}}\n")
    toy = {"registry": registry, "env": {"PYTHONPATH": str(tmp_path)}}
    first = keys_in_subprocess(toy, "generator:brighter-a")
    (base / "grey.py").write_text(base_source.replace("LEVEL = 10", "LEVEL = 11"))
    assert keys_in_subprocess(toy, "generator:brighter-a") != first


def test_the_dino_encoders_keys_leave_out_their_timing_code():
    """What trains a DINO encoder is in its key; how fast it trains (`_dino_bench`, DINO's
    own data path for the ratio, `harness.bench`) is not."""
    from harness.keys import code_closure

    closure = set(code_closure("harness_plugins.encoders.dino"))
    assert {"harness_plugins.encoders._dino_run", "harness_plugins.encoders._dino_train",
            "harness_plugins.encoders._dino_augment", "harness_plugins.encoders._dino_data"} <= closure
    assert not closure & {"harness_plugins.encoders._dino_bench", "harness_plugins.encoders._dino_reference"}
    assert not [name for name in closure if name.startswith("harness.bench")]


def test_editing_code_recomputes_its_cells_and_the_summary_shows_reused_ones(toy, tmp_path):
    out = tmp_path / "out"
    args = ("--registry", str(toy["registry"]), "run", "--out", str(out))
    first = cli(*args, env=toy["env"])
    assert first.returncode == 0, first.stderr
    value = json.loads((out / "results.jsonl").read_text().splitlines()[0])["value"]
    assert value == pytest.approx((10 + 11 + 12 + 13) / 4 / 255 - 0.5, abs=1e-6)  # rgb features: pixel/255 - 0.5

    again = cli(*args, env=toy["env"])
    assert "0 cells computed, 1 reused" in again.stdout
    assert "ok (reused)" in again.stdout and "rgb-tiny" in again.stdout

    toy["source"].write_text(TOY_PLUGIN.replace("LEVEL_OFFSET = 0", "LEVEL_OFFSET = 1"))
    edited = cli(*args, env=toy["env"])
    assert "1 cells computed, 0 reused" in edited.stdout
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert records[-1]["value"] == pytest.approx((11 + 12 + 13 + 14) / 4 / 255 - 0.5, abs=1e-6)


def test_a_run_writes_its_manifest_and_the_leaderboard_links_it(toy, tmp_path):
    out = tmp_path / "out"
    done = cli("--registry", str(toy["registry"]), "run", "--out", str(out), "--threads", "1", env=toy["env"])
    assert done.returncode == 0, done.stderr
    manifests = sorted((out / "runs").glob("*.json"))
    assert len(manifests) == 1
    manifest = json.loads(manifests[0].read_text())
    assert manifest["command"][-4:] == ["--out", str(out), "--threads", "1"]
    assert {"torch", "numpy", "scikit-learn", "timm"} <= set(manifest["libraries"])
    assert manifest["machine"]["torch_threads"] == 1
    assert manifest["machine"]["cpu"] and manifest["machine"]["device"] == "cpu"
    assert [c["encoder"] for c in manifest["computed"]] == ["rgb-tiny"] and manifest["reused"] == []
    assert f"runs/{manifests[0].name}" in (out / "LEADERBOARD.md").read_text()
