"""The command line as a new user meets it: the default run, a third-party plugin, the docs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.results.store import ResultStore
from helpers import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_default_run_writes_a_leaderboard_above_chance(tmp_path):
    out = tmp_path / "out"
    result = cli("run", "--out", str(out), cwd=tmp_path, timeout=1500)  # no ./registry.yaml: the installed copy
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = ResultStore(out).read()
    headline = {(r.task, r.dataset, r.encoder): r.value for r in records if r.headline and r.status == "ok"}
    encoders = ("random-init", "random-init-tiny", "rgb", "dino-tiny-shaders-kml-mixup")
    for encoder in encoders:
        assert headline[("knn-default", "digits", encoder)] > 10.0 * 2  # chance is 10 %
    board = (out / "LEADERBOARD.md").read_text()
    assert "## knn-default" in board and all(f"| {encoder} " in board for encoder in encoders)
    assert "## Training" in board and (out / "training" / "dino-tiny-shaders-kml-mixup.json").is_file()
    for link in re.findall(r"\]\((figures/[^)]+)\)", board):
        assert (out / link).is_file(), link


def test_third_party_generator_plugin(tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(ROOT / "examples" / "third_party_generator")],
        check=True, capture_output=True,
    )
    env = {"PYTHONPATH": str(site)}
    listing = cli("list", env=env)
    assert listing.returncode == 0
    assert re.search(r"plugin\s+stripes\s", listing.stdout)
    out = tmp_path / "grid"
    generated = cli("generate", "stripes", "--n", "4", "--size", "32", "--out", str(out), "--dataset", env=env)
    assert generated.returncode == 0, generated.stderr
    assert (out / "stripes_grid.png").is_file()
    assert len(list((out / "stripes").rglob("*.png"))) == 4


def test_readme_documents_every_command_and_hook():
    from harness.cli import build_parser
    from harness import hookspecs

    readme = (ROOT / "README.md").read_text()
    commands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    for command in commands:
        assert f"harness {command}" in readme or f"harness [--registry PATH] {command}" in readme, command
    for hook in ("register_generators", "register_encoders", "register_tasks"):
        assert f"{hook}(register)" in readme
        assert callable(getattr(hookspecs, hook))
    first_lines = readme.splitlines()[:6]
    assert any("harness run" in line for line in first_lines)
    assert any("pytest" in line for line in first_lines)
    assert "pytest" in (ROOT / ".ci" / "run").read_text()


def test_list_shows_where_each_dataset_is_and_a_formats_options(tmp_path, monkeypatch, capsys) -> None:
    from harness.cli import main

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "breastmnist.npz").write_bytes(b"")  # a MedMNIST root holding the 28 px file only
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        f"datasets:\n  mine-here: {{format: table, root: {tmp_path / 'mine'}}}\n  mine-gone: {{format: imagefolder, root: {tmp_path / 'gone'}, env: MINE_ROOT}}\n"
        f"  mine-28: {{format: medmnist, root: {tmp_path / 'mine'}, options: {{flag: breastmnist, size: 28}}}}\n"
        f"  mine-224: {{format: medmnist, root: {tmp_path / 'mine'}, options: {{flag: breastmnist}}}}\n"
        f"  mine-none: {{format: medmnist, root: {tmp_path / 'mine'}, options: {{flag: pathmnist}}}}\n"
    )
    monkeypatch.delenv("MINE_ROOT", raising=False)
    assert main(["--registry", str(registry), "list", "mine-*"]) == 0
    lines = {line.split()[1]: line.split(None, 3)[3] for line in capsys.readouterr().out.splitlines() if line.startswith("  dataset ")}
    size_hint = lines.pop("mine-224")
    assert size_hint.startswith(
        f"MISSING: dataset 'mine-224': no breastmnist_224.npz (size 224); the root has sizes 28: set options: {{size: 28}} under datasets.mine-224 in {registry}"
    )
    entry = size_hint.split("`")[1]  # the whole entry to write, which a user's file takes as it stands
    assert entry == f"mine-224: {{format: medmnist, root: {tmp_path / 'mine'}, options: {{flag: breastmnist, size: 28}}}}"
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(f"datasets:\n  {entry}\n")
    assert main(["--registry", str(fixed), "list", "mine-224"]) == 0
    listed = capsys.readouterr().out
    assert f"present at {tmp_path / 'mine'}" in listed and "MISSING" not in listed
    assert lines.pop("mine-none") == (
        f"MISSING: dataset 'mine-none': {tmp_path / 'mine' / 'pathmnist_224.npz'} does not exist (looked for pathmnist_224.npz); "
        f"set datasets.mine-none.root in {registry} (a .npz file or a directory holding it)"
    )
    assert lines == {
        "mine-gone": f"MISSING: dataset 'mine-gone': {tmp_path / 'gone'} does not exist; set datasets.mine-gone.root in {registry} or the environment variable MINE_ROOT",
        "mine-here": f"present at {tmp_path / 'mine'}",
        "mine-28": f"present at {tmp_path / 'mine'}",
    }
    assert main(["--registry", str(registry), "list"]) == 0
    out = capsys.readouterr().out
    assert "  dataset  digits                 digits           bundled (digits)" in out
    assert "  dataset  synthetic-scenes       synthetic-scenes made by its reader (synthetic-scenes), no files" in out
    assert main(["--registry", str(registry), "list", "table"]) == 0  # a format's options: its reader's docstring
    out = capsys.readouterr().out
    assert "`label_columns` (a list)" in out and "test_fraction" in out and "`multi_label: true`" in out


def test_list_describes_each_plugin_and_format_by_the_first_sentence_of_its_docstring(capsys) -> None:
    from harness.cli import main

    assert main(["list"]) == 0
    lines = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if line.startswith(("  plugin", "  format"))}
    # sentences that span two lines of their docstring, whole; what follows them, left out
    assert "(area-averaged), patch features = the mean colour of each `patch` x `patch` cell.  [" in lines["rgb"]
    assert "at the root or under root/CUB_200_2011.  [" in lines["cub200"] and "Memory =" not in lines["cub200"]
    assert "(class indices, 0 = other).  [" in lines["ade20k"] and "Options:" not in lines["ade20k"]


def test_help_lists_commands_without_torch():
    code = "import sys\nfrom harness.cli import build_parser\nbuild_parser().format_help()\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("option, value", [("--size", "-5"), ("--n", "0"), ("--size", "big")])
def test_generate_refuses_sizes_below_one_naming_the_option(tmp_path, option, value):
    args = {"--n": "4", "--size": "8"} | {option: value}
    done = cli("generate", "dead-leaves", "--n", args["--n"], "--size", args["--size"], "--out", str(tmp_path))
    assert done.returncode == 2
    assert f"argument {option}:" in done.stderr and "Traceback" not in done.stderr


def test_generate_refuses_another_dataset_before_replacing_the_grid_and_format_needs_dataset(tmp_path, capsys):
    from harness.cli import main

    assert main(["generate", "dead-leaves", "--n", "4", "--size", "16", "--out", str(tmp_path), "--dataset", "--format", "jpeg"]) == 0
    grid = tmp_path / "dead-leaves_grid.png"
    written = grid.read_bytes()
    assert main(["generate", "dead-leaves", "--n", "4", "--size", "24", "--out", str(tmp_path), "--dataset", "--format", "jpeg"]) == 2
    assert "holds jpeg images" in capsys.readouterr().err
    assert grid.read_bytes() == written  # the grid still shows the dataset's images
    assert main(["generate", "dead-leaves", "--n", "4", "--size", "16", "--out", str(tmp_path / "other"), "--format", "jpeg"]) == 2
    assert "--format jpeg sets the files of the dataset --dataset writes; add --dataset" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
