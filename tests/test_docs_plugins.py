"""docs/plugins.md cannot go stale: its example plugin, pyproject and registry are written
out and driven through the command line, its reader example reads a file, and its hook
table names exactly the hooks of harness.hookspecs."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import harness.hookspecs as hookspecs
from harness.config.registry import load_registry
from harness.config.schema import DatasetSpec, RegistryFile
from harness.datasets import ClassificationData
from helpers import cli

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
N, SIZE, PAD = 4, 32, 2  # harness generate's grid: 2 x 2 images with 2 px white padding


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", GUIDE.read_text(), flags=re.S | re.M)


@pytest.fixture
def example(tmp_path: Path) -> tuple[Path, str]:
    """The guide's plugin module and registry file written to tmp_path; (registry, module)."""
    pyproject = tomllib.loads(code_blocks("toml")[0])
    (module,) = pyproject["project"]["entry-points"]["harness.plugins"].values()
    (tmp_path / f"{module}.py").write_text(code_blocks("python")[0])
    registry = tmp_path / "registry.yaml"
    registry.write_text(code_blocks("yaml")[0])
    return registry, module


def test_pyproject_names_the_module_in_the_entry_point_group() -> None:
    pyproject = tomllib.loads(code_blocks("toml")[0])
    assert pyproject["project"]["name"] and pyproject["project"]["version"]
    (module,) = pyproject["project"]["entry-points"]["harness.plugins"].values()
    assert "def register_generators" in code_blocks("python")[0]
    assert re.fullmatch(r"[a-z_][a-z0-9_]*", module), module


def test_every_yaml_block_is_a_valid_registry_file() -> None:
    import yaml

    for block in code_blocks("yaml"):
        RegistryFile.model_validate(yaml.safe_load(block))


def test_every_python_block_compiles() -> None:
    for i, block in enumerate(code_blocks("python")):
        compile(block, f"{GUIDE.name} python block {i}", "exec")


def test_hook_table_matches_hookspecs() -> None:
    specs = {name for name in dir(hookspecs) if name.startswith("register_")}
    documented = set(re.findall(r"^\| `(register_\w+)\(register\)`", GUIDE.read_text(), flags=re.M))
    assert documented == specs


def test_list_prints_the_example_parameters(example: tuple[Path, str], tmp_path: Path) -> None:
    registry, module = example
    listed = cli("--registry", str(registry), "list", "rings-soft", env={"PYTHONPATH": str(tmp_path)})
    assert listed.returncode == 0, listed.stderr
    assert f"registry module {module!r}" not in listed.stdout, "the example module failed to load:\n" + listed.stdout
    table = listed.stdout.split("parameters", 1)[1]
    for field, bounds, default, value, meaning in [
        ("max_rings", ">= 1, <= 64", 8, 4, "most rings across the image side"),
        ("softness", ">= 0.0, <= 1.0", 0.0, 1.0, "0: hard edges; 1: a cosine blend"),
    ]:
        row = next(line for line in table.splitlines() if line.startswith(field))
        assert f"  {bounds}  " in row and row.endswith(meaning), row
        assert [float(x) for x in row.split(bounds)[1].split()[:2]] == [default, value], row
    nothing = cli("--registry", str(registry), "list", "rings-nothing*", env={"PYTHONPATH": str(tmp_path)})
    assert nothing.returncode == 1 and "nothing matched" in nothing.stderr


def test_generate_draws_the_negative_of_its_base(
    example: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, module = example
    made = cli(
        "--registry", str(registry), "generate", "rings-soft-negative", "--n", str(N), "--size", str(SIZE),
        "--out", str(tmp_path / "out"), env={"PYTHONPATH": str(tmp_path)},
    )
    assert made.returncode == 0, made.stderr
    grid = np.asarray(Image.open(tmp_path / "out" / "rings-soft-negative_grid.png").convert("RGB"))
    side = 2 * (SIZE + PAD) + PAD
    assert grid.shape == (side, side, 3)

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    base = load_registry(registry).create("generator", "rings-soft").sample(0, N, SIZE).permute(0, 2, 3, 1).numpy()
    monkeypatch.delitem(sys.modules, module)
    for k in range(N):
        top, left = PAD + (k // 2) * (SIZE + PAD), PAD + (k % 2) * (SIZE + PAD)
        assert base[k].std() > 0, "a blank image"
        assert np.array_equal(grid[top : top + SIZE, left : left + SIZE], 255 - base[k])


def test_reader_example_reads_an_npz_file(tmp_path: Path) -> None:
    namespace: dict = {}
    exec(compile(code_blocks("python")[1], "reader example", "exec"), namespace)
    reader = namespace["read_npz_pair"]
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(
        path,
        train_images=rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8), train_labels=np.arange(6) % 3,
        test_images=rng.integers(0, 256, (4, 3, 8, 8), dtype=np.uint8), test_labels=np.arange(4) % 3,
    )
    data = reader("mine", DatasetSpec(format="npz-pair", root=str(path), options={"classes": 3}))
    assert isinstance(data, ClassificationData)
    assert (len(data.train), len(data.test), data.num_classes) == (6, 4, 3)
    registered = {}
    namespace["register_dataset_formats"](registered.__setitem__)
    assert registered == {"npz-pair": reader}
