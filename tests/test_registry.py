"""registry.yaml validation, plugin discovery and name resolution."""

from __future__ import annotations

import sys

import pytest

import harness
from harness.errors import PluginError, RegistryError, UnknownNameError
from harness.config.registry import load_registry, use_registry
from helpers import TESTS, cli


@pytest.fixture(autouse=True)
def _tests_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


def test_installed_registry_loads_builtins():
    registry = load_registry()
    assert "random-init" in registry.plugins.names("encoder")
    assert "rgb" in registry.plugins.names("encoder")
    assert "knn" in registry.plugins.names("task")
    assert registry.config.profiles["default"].tasks


def test_user_file_overrides_and_adds(tmp_path):
    path = tmp_path / "registry.yaml"
    path.write_text(
        "encoders:\n"
        "  rgb: {plugin: rgb, params: {size: 4}}\n"
        "  rgb8: {plugin: rgb, params: {size: 8}}\n"
    )
    use_registry(path)
    assert harness.get_encoder("rgb").params.size == 4
    assert harness.get_encoder("rgb8").params.size == 8
    assert harness.get_encoder("random-init").params.img_size == 32  # inherited from the installed file
    assert harness.get_encoder("rgb8", size=2).params.size == 2  # keyword overrides


@pytest.mark.parametrize(
    "text, field",
    [
        ("encoders:\n  e: {plugin: rgb, params: [1, 2]}\n", "encoders.e.params"),
        ("encoders:\n  e: {params: {}}\n", "encoders.e.plugin"),
        ("encoders:\n  e: {plugin: rgb, group: alien}\n", "encoders.e.group"),
        ("datasets:\n  d: {format: digits, rooot: /x}\n", "datasets.d.rooot"),
        ("profiles:\n  p: {encoders: [no-such-encoder], tasks: []}\n", "profiles.p.encoders[0]"),
    ],
)
def test_bad_registry_names_file_and_field(tmp_path, text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    assert str(path) in str(info.value)
    assert field in str(info.value)


def test_bad_registry_exits_2_from_cli(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("tasks:\n  knn: {plugin: knn, params: {datasets: [digits]}, extra_field: 1}\n")
    result = cli("--registry", str(path), "list")
    assert result.returncode == 2
    assert "tasks.knn.extra_field" in result.stderr and str(path) in result.stderr
    not_yaml = tmp_path / "broken.yaml"
    not_yaml.write_text("encoders: [unclosed\n")
    result = cli("--registry", str(not_yaml), "run")
    assert result.returncode == 2 and "not valid YAML" in result.stderr


def test_unknown_name_suggests_closest():
    with pytest.raises(UnknownNameError) as info:
        harness.get_encoder("random-int")
    message = str(info.value)
    assert "'random-init'" in message and "Did you mean" in message and "rgb" in message


def test_broken_plugin_is_reported_not_fatal(tmp_path):
    path = tmp_path / "registry.yaml"
    path.write_text("plugins: [broken_plugin, fake_plugins]\n")
    registry = load_registry(path)
    assert "sleepy" in registry.plugins.names("task")  # the good module still loaded
    (broken,) = [b for b in registry.plugins.broken if "broken_plugin" in b.source]
    assert "broken on purpose" in broken.error
    result = cli("--registry", str(path), "list")
    assert result.returncode == 0
    assert "broken plugins" in result.stdout and "broken on purpose" in result.stdout
    assert "sleepy" in result.stdout


def test_duplicate_name_names_both_sources(tmp_path):
    path = tmp_path / "registry.yaml"
    path.write_text("plugins: [duplicate_plugin]\n")
    with pytest.raises(PluginError) as info:
        load_registry(path)
    message = str(info.value)
    assert "'rgb'" in message and "whitebox" in message and "duplicate_plugin" in message


def test_list_does_not_import_torch():
    code = "import sys; from harness.cli import main; main(['list']); print('torch' in sys.modules)"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
    assert "random-init" in out


def test_dataset_env_overrides_root(tmp_path, monkeypatch):
    from harness.errors import DatasetUnavailable

    path = tmp_path / "registry.yaml"
    path.write_text(f"datasets:\n  mine: {{format: imagefolder, root: {tmp_path / 'nowhere'}, env: MINE_ROOT}}\n")
    registry = load_registry(path)
    spec = registry.dataset("mine")
    with pytest.raises(DatasetUnavailable) as info:
        spec.resolved_root("mine")
    assert "datasets.mine.root" in str(info.value) and "MINE_ROOT" in str(info.value)
    monkeypatch.setenv("MINE_ROOT", str(tmp_path / "elsewhere"))
    with pytest.raises(DatasetUnavailable) as info:
        spec.resolved_root("mine")
    assert str(info.value) == (
        f"dataset 'mine': {tmp_path / 'elsewhere'} does not exist; the environment variable MINE_ROOT names it "
        "(and overrides datasets.mine.root): point it at the dataset, or unset it"
    )
    monkeypatch.setenv("MINE_ROOT", str(tmp_path))
    assert spec.resolved_root("mine") == tmp_path
