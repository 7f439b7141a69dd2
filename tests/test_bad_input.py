"""Bad input, case by case, through the public API and the command line.

Each case checks three things: the message names the file, key, row or plugin at
fault (and what to do where there is something to do); a command exits with status 2
for bad input (1 for a bug in a plugin, 0 for a dataset that is simply not there); and
what is already in results.jsonl survives: a good cell is run first into the same
--out, and after the bad run it is still there and was not recomputed.

Commands run in this process through `harness.cli.main` (what `harness` calls), and
the exit statuses once more in a subprocess, as a user would see them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import subprocess
import zlib
from unittest import mock

import numpy as np
import pytest
from PIL import Image

import harness
from harness.cli import main
from harness.datasets import open_dataset
from harness.errors import DataFormatError, DatasetUnavailable, HarnessError, RegistryError, UnknownNameError
from harness.memory import VisualMemory
from harness.config.schema import DatasetSpec
from harness.config.registry import use_registry
from harness.results.store import ResultStore
from helpers import cli
from test_datasets import make_imagefolder, make_medmnist, make_nights, spec

GOOD_REGISTRY = """
plugins: [fake_plugins, bad_input_plugins]
encoders:
  const-a: {plugin: constant}
tasks:
  quick: {plugin: sleepy, params: {datasets: [a, b]}}
"""


def write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def run(capsys, monkeypatch):
    """`harness --registry REGISTRY ARGS` in this process: (returncode, stdout, stderr)."""

    def call(registry, *args, env=None):
        for key, value in (env or {}).items():
            if key == "PYTHONPATH":
                monkeypatch.syspath_prepend(value)
            else:
                monkeypatch.setenv(key, value)
        capsys.readouterr()
        code = main(["--registry", str(registry), *args])
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return call


def lines(path):
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def good_run(tmp_path, run):
    """A registry, an --out holding the two cells of `quick`, and the call log."""
    registry = write(tmp_path / "registry.yaml", GOOD_REGISTRY)
    out, log = tmp_path / "out", tmp_path / "calls.log"
    first = run(registry, "run", "--encoders", "const-a", "--tasks", "quick", "--out", str(out), env={"FAKE_CALL_LOG": str(log)})
    assert first.returncode == 0, first.stderr
    assert len(lines(log)) == 2
    return registry, out, log


def assert_kept(out, before: bytes):
    """results.jsonl still starts with exactly what it held before the bad run."""
    assert (out / "results.jsonl").read_bytes()[: len(before)] == before


# ------------------------------------------------------------------------ registry
MALFORMED_YAML = "encoders:\n  my-enc: {plugin: constant\n  other: 1\n"


def test_malformed_yaml_names_the_file_and_line(good_run, run):
    registry, out, _ = good_run
    before = (out / "results.jsonl").read_bytes()
    write(registry, MALFORMED_YAML)
    for args in (["list"], ["run", "--out", str(out)], ["train", "my-enc"]):
        result = run(registry, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert f"{registry}: not valid YAML" in result.stderr and "line 2" in result.stderr
        assert "Traceback" not in result.stderr
    assert (out / "results.jsonl").read_bytes() == before
    with pytest.raises(RegistryError, match="not valid YAML"):
        harness.run(registry=registry, out=out)


WRONG_TYPES = """
plugins: fake_plugins
slurm: {mem_gb: lots}
datasets:
  mine: {format: imagefolder, root: [a, b]}
encoders:
  my-enc: {plugin: constant, group: procedual}
tasks:
  my-task: {plugin: sleepy, params: [1, 2]}
profiles:
  mine: {encoders: my-enc}
"""


def test_wrongly_typed_fields_are_each_named(tmp_path, run):
    registry = write(tmp_path / "registry.yaml", WRONG_TYPES)
    result = run(registry, "list")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    for field in ("plugins", "slurm.mem_gb", "datasets.mine.root", "encoders.my-enc.group", "tasks.my-task.params", "profiles.mine.encoders"):
        assert f"{registry}: {field}: " in result.stderr, field
    assert "'target', 'realistic', 'procedural' or 'white-box'" in result.stderr  # what to write instead
    for text, fragment in (
        ("- just\n- a list\n", "the top level must be a mapping"),
        ("encoder:\n  x: {plugin: constant}\n", "encoder: Extra inputs are not permitted"),
        ("encoders:\n  ../escape: {plugin: constant}\n", "encoders.../escape"),
    ):
        write(registry, text)
        result = run(registry, "list")
        assert result.returncode == 2 and fragment in result.stderr, (text, result.stderr)


@pytest.mark.parametrize(
    "datasets, field, problem",
    [
        ("5", "datasets", "Input should be a valid list (got 5)"),
        ("digits", "datasets", "Input should be a valid list (got 'digits')"),
        ("[digits, 3]", "datasets.1", "Input should be a valid string (got 3)"),
        ("[a/b]", "datasets.0", "must be a name of letters, digits, '.', '_', '+', '-' (got 'a/b')"),
    ],
)
def test_task_datasets_of_the_wrong_type_are_refused_before_any_work(tmp_path, datasets, field, problem, run):
    registry = write(tmp_path / "registry.yaml", GOOD_REGISTRY + f"  odd: {{plugin: sleepy, params: {{datasets: {datasets}}}}}\n")
    out = tmp_path / "out"
    result = run(registry, "run", "--encoders", "const-a", "--tasks", "odd", "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert f"{registry}: tasks.odd.params.{field}: {problem}" in result.stderr
    assert "Traceback" not in result.stderr and not (out / "results.jsonl").exists()


def test_unknown_instance_names(good_run, run):
    registry, out, log = good_run
    before = (out / "results.jsonl").read_bytes()
    for args, fragments in (
        (["run", "--encoders", "const-b", "--tasks", "quick"], ["unknown encoder", "'const-b'", "Did you mean 'const-a'"]),
        (["run", "--encoders", "const-a", "--tasks", "quik"], ["unknown task", "Did you mean 'quick'"]),
        (["run", "--profile", "defualt"], ["unknown profile 'defualt'", "Did you mean 'default'"]),
        (["train", "const-b"], ["unknown encoder", "Did you mean 'const-a'"]),
    ):
        result = run(registry, *args, "--out", str(out)) if args[0] == "run" else run(registry, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert all(f in result.stderr for f in fragments), (args, result.stderr)
    assert (out / "results.jsonl").read_bytes() == before and len(lines(log)) == 2
    write(registry, GOOD_REGISTRY + "profiles:\n  mine: {encoders: [const-a, const-b], tasks: [quick]}\n")
    result = run(registry, "run", "--profile", "mine", "--out", str(out))
    assert result.returncode == 2
    assert f"{registry}: profiles.mine.encoders[1]: unknown encoder instance 'const-b'" in result.stderr
    use_registry(write(registry, GOOD_REGISTRY))
    with pytest.raises(UnknownNameError, match="Did you mean 'const-a'"):
        harness.get_encoder("const-b")


def test_a_selection_without_encoders_or_tasks_exits_2_naming_what_is_empty(good_run, run):
    """An empty --encoders or --tasks (or a profile that lists no tasks, as the bench
    profiles do) has no cell to run: the run says which selection is empty instead of
    finishing with nothing done."""
    registry, out, log = good_run
    before = (out / "results.jsonl").read_bytes()
    write(registry, GOOD_REGISTRY + "profiles:\n  timing: {encoders: [const-a]}\n")
    for args, message in (
        (["--encoders", ",", "--tasks", "quick"], "encoders ',' selects no encoder, so there is nothing to run"),
        (["--encoders", "const-a", "--tasks", ""], "tasks '' selects no task"),
        (["--profile", "timing"], "profile 'timing' selects no task"),
    ):
        result = run(registry, "run", *args, "--out", str(out))
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    with pytest.raises(HarnessError, match=r"tasks \[\] selects no task"):
        harness.run(encoders=["const-a"], tasks=[], out=out, registry=registry)
    assert (out / "results.jsonl").read_bytes() == before and len(lines(log)) == 2


@pytest.mark.parametrize("option, value, message", [
    ("--train-gpus", "-1", "must be >= 0, got -1"), ("--eval-gpus", "two", "expected an integer, got 'two'"),
    ("--mem-gb", "0", "must be >= 1, got 0"),
])
def test_a_cluster_resource_out_of_range_exits_2_naming_the_option(option, value, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["run", "--launcher", "slurm", "--dry-run", option, value])
    assert stopped.value.code == 2 and f"argument {option}: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("gpus", [0, 1])
def test_a_device_that_is_not_here_exits_2_before_any_work(good_run, run, monkeypatch, gpus):
    """A device named on the command line or to the API that this machine lacks (here, a
    machine with no GPU and one with one GPU, as torch reports them) is refused before
    any cell runs, naming the device and what to do, instead of failing every cell."""
    import torch

    import harness.device

    registry, out, log = good_run
    before = (out / "results.jsonl").read_bytes()
    monkeypatch.setattr(harness.device, "cuda_usable", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    missing = "cuda" if gpus == 0 else "cuda:1"
    because = "torch sees no CUDA GPU here" if gpus == 0 else "this machine has 1 CUDA GPU(s), cuda:0 to cuda:0"
    for args, fragments in (
        (["run", "--encoders", "const-a", "--tasks", "quick", "--force", "--device", missing], [f"device '{missing}'", because]),
        (["run", "--encoders", "const-a", "--tasks", "quick", "--device", "gpu"], ["device 'gpu': not a device torch knows", "cpu, cuda or cuda:N"]),
        (["train", "const-a", "--device", missing], [f"device '{missing}'", because]),
        (["memory", "build", "const-a", "a", "--out", str(out / "m.npz"), "--device", missing], [f"device '{missing}'", because]),
        (["run", "--encoders", "const-a", "--tasks", "quick", "--launcher", "slurm", "--device", "cuda"],
         ["--device cuda: sets where a local run computes", "--train-gpus and --eval-gpus"]),
    ):
        result = run(registry, *args, "--out", str(out)) if args[0] == "run" else run(registry, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert all(f in result.stderr for f in fragments), (args, result.stderr)
    assert (out / "results.jsonl").read_bytes() == before and len(lines(log)) == 2 and not (out / "m.npz").exists()
    with pytest.raises(HarnessError, match=because.replace("(", r"\(").replace(")", r"\)")):
        harness.run(encoders=["const-a"], tasks=["quick"], out=out, registry=registry, device=missing, force=True)
    planned = run(registry, "run", "--encoders", "const-a", "--tasks", "quick", "--dry-run", "--device", missing, "--out", str(out))
    assert planned.returncode == 0, planned.stderr  # a plan for that device, made here
    assert len(lines(log)) == 2


def test_instance_of_an_unknown_plugin_names_the_field(good_run, run):
    registry, out, _ = good_run
    before = (out / "results.jsonl").read_bytes()
    write(registry, GOOD_REGISTRY + "  typo: {plugin: sleppy}\n")
    result = run(registry, "run", "--encoders", "const-a", "--tasks", "quick,typo", "--out", str(out))
    assert result.returncode == 2
    assert f"{registry}: tasks.typo.plugin: unknown task plugin 'sleppy'. Did you mean 'sleepy'" in result.stderr
    assert (out / "results.jsonl").read_bytes() == before
    # an instance reached through a reference, or made by `generate`, is named at its own entry
    write(registry, GOOD_REGISTRY.replace("encoders:\n", "encoders:\n  dino-gx: {plugin: dino, params: {data: gx}}\n") + "generators:\n  gx: {plugin: dead-leavs}\n")
    for args in (("generate", "gx", "--n", "2", "--size", "8", "--out", str(out.parent / "grid")),
                 ("run", "--encoders", "dino-gx", "--tasks", "quick", "--out", str(out), "--dry-run")):
        result = run(registry, *args)
        assert result.returncode == 2
        assert f"{registry}: generators.gx.plugin: unknown generator plugin 'dead-leavs'. Did you mean 'dead-leaves'" in result.stderr


# ------------------------------------------------------------------------ plugins
def test_plugin_that_raises_on_import_is_listed_as_broken(good_run, tmp_path, run):
    registry, out, log = good_run
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "divides_by_zero.py").write_text("RATE = 1 / 0\n")
    env = {"PYTHONPATH": str(tmp_path / "modules"), "FAKE_CALL_LOG": str(log)}
    write(registry, GOOD_REGISTRY.replace("bad_input_plugins]", "bad_input_plugins, broken_plugin, divides_by_zero]")
          + "  stripes-task: {plugin: stripes}\n")
    listing = run(registry, "list", env=env)
    assert listing.returncode == 0, listing.stderr
    broken = listing.stdout.split("broken plugins (not loaded)")[1]
    assert "registry module 'broken_plugin': ImportError: this plugin is broken on purpose" in broken
    assert "registry module 'divides_by_zero': ZeroDivisionError: division by zero" in broken
    assert "plugin   constant" in listing.stdout and "plugin   knn" in listing.stdout  # the others loaded
    # the good cells still run (here: are reused); an instance of a missing plugin says what broke
    again = run(registry, "run", "--encoders", "const-a", "--tasks", "quick", "--out", str(out), env=env)
    assert again.returncode == 0 and "0 cells computed, 2 reused" in again.stdout
    result = run(registry, "run", "--encoders", "const-a", "--tasks", "quick,stripes-task", "--out", str(out), env=env)
    assert result.returncode == 2
    assert "tasks.stripes-task.plugin: unknown task plugin 'stripes'" in result.stderr
    assert "broken_plugin" in result.stderr and "divides_by_zero" in result.stderr
    assert len(lines(log)) == 2


@pytest.mark.parametrize(
    "task, params, status, kind, fragment",
    [
        ("raising", "{error: input}", 2, "input", "HarnessError: one.txt: row 3: expected a number"),
        ("raising", "{error: internal}", 1, "internal", "RuntimeError: the fake task has a bug"),
        ("junk", "{}", 1, "internal", "TypeError: task plugin 'junk' returned [{'metric'"),
        ("exiting", "{}", 1, "internal", "SystemExit: bye"),
    ],
)
def test_plugin_that_raises_on_use(good_run, task, params, status, kind, fragment, run):
    registry, out, log = good_run
    before = (out / "results.jsonl").read_bytes()
    write(registry, GOOD_REGISTRY + f"  bad: {{plugin: {task}, params: {params}}}\n")
    env = {"FAKE_CALL_LOG": str(log)}
    result = run(registry, "run", "--encoders", "const-a", "--tasks", "quick,bad", "--out", str(out), env=env)
    assert result.returncode == status, result.stderr
    assert "2 reused" in result.stdout
    assert_kept(out, before)
    records = ResultStore(out).read()
    assert [r.dataset for r in records if r.task == "quick"] == ["a", "b"]  # not recomputed, not lost
    (bad,) = [r for r in records if r.task == "bad"]
    assert bad.status == "error" and bad.error_kind == kind and fragment in bad.message
    assert (out / bad.message.split("(traceback: ")[1].rstrip(")")).is_file()
    assert [line for line in lines(log) if len(line.split()) == 2] == ["const-a a", "const-a b"]  # the good cells ran once


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_task_naming_a_dataset_the_registry_lacks_exits_2_before_any_work(good_run, run, dry_run):
    registry, out, log = good_run
    before, calls = (out / "results.jsonl").read_bytes(), lines(log)
    write(registry, GOOD_REGISTRY + "  knn-typo: {plugin: knn, params: {datasets: [digitz]}}\n")
    args = ("run", "--encoders", "const-a", "--tasks", "quick,knn-typo", "--out", str(out), *(["--dry-run"] if dry_run else []))
    result = run(registry, *args, env={"FAKE_CALL_LOG": str(log)})
    assert result.returncode == 2, result.stderr
    assert f"{registry}: tasks.knn-typo.params.datasets: unknown dataset 'digitz'. Did you mean 'digits'" in result.stderr
    assert (out / "results.jsonl").read_bytes() == before and lines(log) == calls  # nothing ran, nothing lost


def test_a_cell_whose_newest_run_failed_is_computed_again(good_run, run, monkeypatch):
    """After a `--force` rerun fails a cell, its older good records are not reused: the
    next run computes it again, and the leaderboard and the run agree."""
    registry, out, log = good_run
    monkeypatch.setenv("FAKE_CALL_LOG", str(log))
    monkeypatch.setenv("FAKE_FAIL_DATASET", "a")
    failed = run(registry, "run", "--encoders", "const-a", "--tasks", "quick", "--out", str(out), "--force")
    assert failed.returncode == 2 and "failed on purpose" in (out / "LEADERBOARD.md").read_text()
    monkeypatch.delenv("FAKE_FAIL_DATASET")
    again = run(registry, "run", "--encoders", "const-a", "--tasks", "quick", "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert lines(log)[-3:] == ["const-a a", "const-a b", "const-a a"]  # the forced run, then only the failed cell
    assert "1 reused" in again.stdout and "failed on purpose" not in (out / "LEADERBOARD.md").read_text()


def test_exit_status_of_a_failing_plugin_in_a_subprocess(good_run):
    registry, out, log = good_run
    write(registry, GOOD_REGISTRY + "  bad-input: {plugin: raising, params: {error: input}}\n"
          "  bad-code: {plugin: raising, params: {error: internal}}\n")
    args = ["--registry", str(registry), "run", "--encoders", "const-a", "--out", str(out)]
    env = {"FAKE_CALL_LOG": str(log)}
    before = (out / "results.jsonl").read_bytes()
    for task, status in (("bad-input", 2), ("bad-code", 1)):
        result = cli(*args, "--tasks", f"quick,{task}", env=env)
        assert result.returncode == status, result.stderr
        assert "Traceback" not in result.stderr and "2 reused" in result.stdout
    assert_kept(out, before)
    assert lines(log) == ["const-a a", "const-a b", "const-a bad-input one", "const-a bad-code one"]
    kinds = {r.task: r.error_kind for r in ResultStore(out).read() if r.status == "error"}
    assert kinds == {"bad-input": "input", "bad-code": "internal"}


# ------------------------------------------------------------- dataset files (API)
def png_bytes(size=(12, 10)):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def huge_png():
    """A 1x1 PNG whose header claims 20000 x 20000 pixels (a decompression bomb)."""
    data = bytearray(png_bytes((1, 1)))
    header = bytearray(data[16:29])
    header[0:8] = struct.pack(">II", 20000, 20000)
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(header)))
    return bytes(data)


def jpeg_bytes():
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


CORRUPTIONS = {
    "garbage": lambda: b"this is not an image",
    "empty": lambda: b"",
    "truncated-png": lambda: png_bytes()[:-30],
    "truncated-jpeg": lambda: jpeg_bytes()[: len(jpeg_bytes()) // 2],
    "png-signature-only": lambda: b"\x89PNG\r\n\x1a\n",
    "decompression-bomb": huge_png,
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_image_in_an_imagefolder_names_the_file(tmp_path, corruption):
    root = make_imagefolder(tmp_path / "folder", n_train=2, n_test=2)
    bad = root / "test" / "dog" / ("dog_01.jpg" if "jpeg" in corruption else "dog_01.png")
    for old in (root / "test" / "dog").iterdir():
        old.unlink()
    bad.write_bytes(CORRUPTIONS[corruption]())
    data = open_dataset("mine", spec("imagefolder", root, crop=8))
    assert len(data.train) == 6  # the train split is untouched
    expected = "more than the limit of" if corruption == "decompression-bomb" else "cannot decode image"
    with pytest.raises(DataFormatError, match=expected) as info:
        [b for b in data.test.batches(4)]
    assert str(bad) in str(info.value)


def test_nights_csv_with_missing_columns_names_them(tmp_path):
    import pandas

    make_nights(tmp_path)
    csv = tmp_path / "data.csv"
    table = pandas.read_csv(csv)
    for dropped in (["split"], ["ref_path", "votes"], [c for c in table.columns if c != "prompt"]):
        table.drop(columns=dropped).to_csv(csv, index=False)
        with pytest.raises(DataFormatError) as info:
            open_dataset("nights", spec("nights", tmp_path))
        message = str(info.value)
        assert message.startswith(f"{csv}: missing column(s)") and all(repr(c) in message for c in dropped)
    csv.write_text("")
    with pytest.raises(DataFormatError, match=r"data\.csv: not a readable CSV file"):
        open_dataset("nights", spec("nights", tmp_path))


def test_nights_path_that_does_not_exist_names_file_and_row(tmp_path):
    import pandas

    make_nights(tmp_path)
    csv = tmp_path / "data.csv"
    table = pandas.read_csv(csv)
    table.loc[2, "left_path"] = "distort/000/gone_0.png"  # row 4 of the file, a val triplet
    table.to_csv(csv, index=False)
    data = open_dataset("nights", spec("nights", tmp_path, size=8))  # paths are checked as images are read
    assert len(data.splits["val"].ref.take([0, 1, 2])) == 3
    with pytest.raises(DataFormatError) as info:
        [b for b in data.splits["val"].left.batches(4)]
    assert str(info.value) == f"{tmp_path / 'distort/000/gone_0.png'}: image file not found (data.csv row 4)"


@pytest.mark.parametrize("key", ["train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels"])
def test_medmnist_npz_with_a_missing_key(tmp_path, key):
    arrays = make_medmnist(tmp_path / "full.npz", n=(6, 3, 3))
    path = tmp_path / "toymnist.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if k != key})
    with pytest.raises(DataFormatError) as info:
        open_dataset("toy", spec("medmnist", path))
    assert str(info.value).startswith(f"{path}: missing key {key!r} (found: ")


WRONG_SHAPES = {
    "non-square": ("train_images", np.zeros((6, 8, 5), np.uint8), "key 'train_images' must be uint8 N x S x S"),
    "four-channels": ("val_images", np.zeros((3, 8, 8, 4), np.uint8), "key 'val_images' must be uint8 N x S x S"),
    "flat": ("test_images", np.zeros((3, 64), np.uint8), "got shape [3, 64]"),
    "scalar": ("train_images", np.uint8(7), "got shape [] uint8"),
    "zero-size": ("train_images", np.zeros((6, 0, 0), np.uint8), "(S >= 1), got shape [6, 0, 0]"),
    "float-images": ("train_images", np.zeros((6, 8, 8), np.float32), "got shape [6, 8, 8] float32"),
    "label-rows": ("test_labels", np.zeros((2, 1), np.uint8), "key 'test_labels' has 2 rows but test_images has 3"),
    "label-3d": ("train_labels", np.zeros((6, 1, 1), np.uint8), "key 'train_labels' must be an N x L array"),
    "label-strings": ("train_labels", np.array(["a"] * 6), "key 'train_labels' must be an N x L array"),
    "label-negative": ("val_labels", np.array([[0], [-1], [1]]), "key 'val_labels' must hold non-negative integer labels"),
    "label-fraction": ("val_labels", np.array([[0.5], [0], [1]]), "must hold non-negative integer labels"),
    "label-infinite": ("train_labels", np.full((6, 1), np.inf), "key 'train_labels' must hold non-negative integer labels"),
    "label-nan": ("train_labels", np.full((6, 1), np.nan), "must hold non-negative integer labels"),
    "label-huge": ("test_labels", np.full((3, 1), 2_000_000), "key 'test_labels' holds label 2000000; class indices must be below"),
    "label-columns": ("val_labels", np.zeros((3, 2), np.uint8), "disagree on the number of label columns"),
    "label-not-in-memory": ("test_labels", np.array([[0], [5], [1]]), "key 'test_labels' row 1 holds class 5, which no row of 'train_labels' holds"),
    "val-label-not-in-memory": ("val_labels", np.array([[3], [0], [1]]), "key 'val_labels' row 0 holds class 3, which no row of"),
}


@pytest.mark.parametrize("case", sorted(WRONG_SHAPES))
def test_medmnist_npz_with_wrong_shapes(tmp_path, case):
    key, value, fragment = WRONG_SHAPES[case]
    arrays = make_medmnist(tmp_path / "full.npz", n=(6, 3, 3))
    path = tmp_path / "toymnist.npz"
    np.savez(path, **{**arrays, key: value})
    with pytest.raises(DataFormatError) as info:
        open_dataset("toy", spec("medmnist", path))
    assert str(info.value).startswith(f"{path}: ") and fragment in str(info.value)


def test_medmnist_label_type_is_one_of_medmnists(tmp_path):
    path = tmp_path / "toymnist.npz"
    np.savez(path, **make_medmnist(tmp_path / "full.npz", n=(6, 3, 3)))
    for typo in ("binary", "multiclass", "multi-label"):
        with pytest.raises(HarnessError, match=rf"datasets\.toy\.options\.label_type must be one of 'multi-class', .* got '{typo}'"):
            open_dataset("toy", spec("medmnist", path, label_type=typo))
    assert open_dataset("toy", spec("medmnist", path, label_type="ordinal-regression")).label_type == "multi-class"  # scored as classes


def test_medmnist_npz_cut_short_or_damaged(tmp_path):
    arrays = make_medmnist(tmp_path / "full.npz", n=(200, 3, 3), size=16)
    stored = tmp_path / "stored.npz"
    np.savez(stored, **arrays)  # uncompressed: a damaged image row shows up only when it is read
    raw = stored.read_bytes()
    offset = raw.index(b"train_images.npy") + 40_000
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFormatError, match=r"cut\.npz: not a valid \.npz file"):
        open_dataset("toy", spec("medmnist", tmp_path / "cut.npz"))
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(raw[:offset] + bytes([raw[offset] ^ 0xFF]) + raw[offset + 1 :])
    data = open_dataset("toy", spec("medmnist", damaged))
    with pytest.raises(DataFormatError, match=r"damaged\.npz: key 'train_images' is corrupt"):
        [b for b in data.train.batches(4)]


FORMATS_WITH_ROOTS = ["imagefolder", "imagenet", "flowers102", "cub200", "food101", "medmnist", "nights"]


@pytest.mark.parametrize("fmt", FORMATS_WITH_ROOTS)
def test_dataset_root_that_does_not_exist(tmp_path, monkeypatch, fmt):
    monkeypatch.delenv("HARNESS_TEST_ROOT", raising=False)
    missing = DatasetSpec(format=fmt, root=str(tmp_path / "nowhere"), env="HARNESS_TEST_ROOT")
    with pytest.raises(DatasetUnavailable) as info:
        open_dataset("mydata", missing)
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message
    assert ("set datasets.mydata.root in a registry.yaml in the working directory (or a file given with --registry) "
            "or the environment variable HARNESS_TEST_ROOT") in message  # a spec outside a registry file
    monkeypatch.setenv("HARNESS_TEST_ROOT", str(tmp_path / "elsewhere"))
    with pytest.raises(DatasetUnavailable, match="elsewhere does not exist.*HARNESS_TEST_ROOT"):
        open_dataset("mydata", missing)
    with pytest.raises(DatasetUnavailable, match=r"has no root: set datasets\.mydata\.root"):
        open_dataset("mydata", DatasetSpec(format=fmt))


# ------------------------------------------------------- dataset files (command line)
@pytest.fixture(scope="module")
def dataset_runs(tmp_path_factory):
    """One --out: the good cells first, then every bad dataset, then the missing roots."""
    import pandas

    base = tmp_path_factory.mktemp("bad-data")
    good = make_imagefolder(base / "good", n_train=2, n_test=2)
    corrupt = make_imagefolder(base / "corrupt", n_train=2, n_test=2)
    (corrupt / "test" / "owl" / "owl_01.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    truncated = make_imagefolder(base / "truncated", n_train=2, n_test=2)
    (truncated / "train" / "cat" / "cat_01.png").write_bytes(png_bytes()[:-40])
    make_nights(base / "nights-good")
    make_nights(base / "nights-nocols")
    table = pandas.read_csv(base / "nights-nocols" / "data.csv")
    table.drop(columns=["left_vote"]).to_csv(base / "nights-nocols" / "data.csv", index=False)
    make_nights(base / "nights-nopath")
    table = pandas.read_csv(base / "nights-nopath" / "data.csv")
    table.loc[0, "ref_path"] = "ref/999/999.png"
    table.to_csv(base / "nights-nopath" / "data.csv", index=False)
    arrays = make_medmnist(base / "full.npz", n=(6, 3, 3))
    np.savez(base / "nokeys.npz", **{k: v for k, v in arrays.items() if k != "test_labels"})
    np.savez(base / "badshape.npz", **{**arrays, "val_images": np.zeros((3, 8, 6), np.uint8)})
    registry = write(base / "registry.yaml", f"""
plugins: [fake_plugins, bad_input_plugins]
datasets:
  good-folder: {{format: imagefolder, root: {good}, options: {{crop: 8}}}}
  corrupt-folder: {{format: imagefolder, root: {corrupt}, options: {{crop: 8}}}}
  truncated-folder: {{format: imagefolder, root: {truncated}, options: {{crop: 8}}}}
  nights-good: {{format: nights, root: {base / 'nights-good'}, options: {{size: 8}}}}
  nights-nocols: {{format: nights, root: {base / 'nights-nocols'}, options: {{size: 8}}}}
  nights-nopath: {{format: nights, root: {base / 'nights-nopath'}, options: {{size: 8}}}}
  med-nokeys: {{format: medmnist, root: {base / 'nokeys.npz'}}}
  med-badshape: {{format: medmnist, root: {base / 'badshape.npz'}}}
  nights-missing: {{format: nights, root: {base / 'nowhere'}, env: HARNESS_TEST_NIGHTS}}
  med-missing: {{format: medmnist, root: {base}, options: {{flag: organmnist, size: 64}}, env: HARNESS_TEST_MEDMNIST}}
encoders:
  const-a: {{plugin: constant}}
tasks:
  knn-good: {{plugin: knn, params: {{datasets: [good-folder], ks: [1, 3]}}}}
  nights-good: {{plugin: nights, params: {{datasets: [nights-good]}}}}
  knn-bad: {{plugin: knn, params: {{datasets: [corrupt-folder, truncated-folder, med-nokeys, med-badshape], ks: [1, 3]}}}}
  nights-bad: {{plugin: nights, params: {{datasets: [nights-nocols, nights-nopath]}}}}
  read-bad: {{plugin: read-all, params: {{datasets: [corrupt-folder, nights-nopath, med-badshape]}}}}
  missing: {{plugin: read-all, params: {{datasets: [nights-missing, med-missing]}}}}
""")
    out = base / "out"
    args = ["--registry", str(registry), "run", "--encoders", "const-a", "--out", str(out)]

    def harness(*more):
        stdout, stderr = io.StringIO(), io.StringIO()
        with mock.patch.dict(os.environ, {"HARNESS_TEST_NIGHTS": "", "HARNESS_TEST_MEDMNIST": ""}):
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                code = main([*args, *more])
        return subprocess.CompletedProcess(more, code, stdout.getvalue(), stderr.getvalue())

    first = harness("--tasks", "knn-good,nights-good")
    snapshot = (out / "results.jsonl").read_bytes()
    bad = harness("--tasks", "knn-good,nights-good,knn-bad,nights-bad,read-bad")
    after_bad = (out / "results.jsonl").read_bytes()
    missing = harness("--tasks", "missing")
    return {"base": base, "out": out, "first": first, "snapshot": snapshot, "bad": bad, "after_bad": after_bad, "missing": missing,
            "registry": registry}


def cell_records(out, task, dataset):
    return [r for r in ResultStore(out).read() if r.task == task and r.dataset == dataset]


def test_bad_datasets_exit_2_and_keep_the_good_cells(dataset_runs):
    first, bad, out = dataset_runs["first"], dataset_runs["bad"], dataset_runs["out"]
    assert first.returncode == 0, first.stderr
    assert bad.returncode == 2, bad.stderr
    assert "9 cells computed, 2 reused" in bad.stdout
    assert dataset_runs["after_bad"].startswith(dataset_runs["snapshot"])  # appended, nothing rewritten
    good = [json.loads(line) for line in dataset_runs["snapshot"].decode().splitlines()]
    for task, dataset in (("knn-good", "good-folder"), ("nights-good", "nights-good")):
        records = cell_records(out, task, dataset)
        assert records and all(r.status == "ok" for r in records)
        assert len(records) == sum(g["task"] == task for g in good)  # not recomputed


@pytest.mark.parametrize(
    "task, dataset, fragments",
    [
        ("knn-bad", "corrupt-folder", ["corrupt/test/owl/owl_01.png: cannot decode image"]),
        ("knn-bad", "truncated-folder", ["truncated/train/cat/cat_01.png: cannot decode image", "truncated"]),
        ("knn-bad", "med-nokeys", ["nokeys.npz: missing key 'test_labels'"]),
        ("knn-bad", "med-badshape", ["badshape.npz: key 'val_images' must be uint8 N x S x S", "[3, 8, 6]"]),
        ("nights-bad", "nights-nocols", ["nights-nocols/data.csv: missing column(s) ['left_vote']"]),
        ("nights-bad", "nights-nopath", ["nights-nopath/ref/999/999.png: image file not found (data.csv row 2)"]),
        ("read-bad", "corrupt-folder", ["owl_01.png: cannot decode image"]),
        ("read-bad", "nights-nopath", ["ref/999/999.png: image file not found (data.csv row 2)"]),
        ("read-bad", "med-badshape", ["badshape.npz: key 'val_images'"]),
    ],
)
def test_bad_dataset_cell_names_the_file(dataset_runs, task, dataset, fragments):
    (record,) = cell_records(dataset_runs["out"], task, dataset)
    assert record.status == "error" and record.error_kind == "input" and record.message.startswith("DataFormatError: ")
    assert all(f in record.message for f in fragments), record.message


def test_missing_dataset_root_is_skipped_naming_key_and_env(dataset_runs):
    missing, out = dataset_runs["missing"], dataset_runs["out"]
    assert missing.returncode == 0, missing.stderr
    for dataset, env in (("nights-missing", "HARNESS_TEST_NIGHTS"), ("med-missing", "HARNESS_TEST_MEDMNIST")):
        (record,) = cell_records(out, "missing", dataset)
        assert record.status == "skipped"
        assert f"set datasets.{dataset}.root in " in record.message and f"or the environment variable {env}" in record.message
    (nights,) = cell_records(out, "missing", "nights-missing")
    assert f"set datasets.nights-missing.root in {dataset_runs['registry']} or" in nights.message  # the user's file, by name
    assert "organmnist_64.npz does not exist" in cell_records(out, "missing", "med-missing")[0].message
    assert (out / "results.jsonl").read_bytes().startswith(dataset_runs["after_bad"])


# ------------------------------------------------------------------ visual memory
def small_memory(n=5, dim=4):
    rng = np.random.default_rng(0)
    memory = VisualMemory(dim, backend="torch", device="cpu")
    memory.add(rng.standard_normal((n, dim)), np.arange(n) % 2)
    return memory, rng.standard_normal((3, dim))


def test_empty_memory_says_to_add_features():
    memory = VisualMemory(4, backend="torch", device="cpu")
    queries = np.ones((2, 4))
    calls = [
        lambda: memory.search(queries, 1),
        lambda: memory.classify(queries, k=20),
        lambda: memory.class_scores(queries, k=20),
        lambda: memory.privacy_audit(queries, k=20),
    ]
    for call in calls:
        with pytest.raises(HarnessError, match="the visual memory is empty: add features before searching"):
            call()
    filled, _ = small_memory()
    filled.remove(filled.ids)
    assert len(filled) == 0
    with pytest.raises(HarnessError, match="the visual memory is empty"):
        filled.classify(queries)


def test_k_larger_than_the_memory():
    memory, queries = small_memory(n=5)
    with pytest.raises(HarnessError, match=r"k=6 is larger than the memory \(5 rows\); use k <= 5"):
        memory.search(queries, 6)
    for k in (0, -3):
        with pytest.raises(HarnessError, match=f"k must be at least 1, got {k}"):
            memory.search(queries, k)
    # voting over more neighbours than there are rows votes over all of them (DINO's eval does the same)
    assert np.array_equal(memory.classify(queries, k=50), memory.classify(queries, k=5))
    assert np.array_equal(memory.privacy_audit(queries, k=50), memory.privacy_audit(queries, k=5))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_refused_and_the_memory_is_unchanged(value):
    memory, queries = small_memory(n=5)
    before = (memory.features, memory.ids)
    bad = np.ones((4, 4))
    bad[2, 1] = value
    with pytest.raises(HarnessError, match=r"features contain NaN or infinite values \(rows \[2\]\); check the encoder's output"):
        memory.add(bad, [0, 1, 0, 1])
    assert np.array_equal(memory.features, before[0]) and np.array_equal(memory.ids, before[1])
    queries[0, 0] = value
    for call in (lambda: memory.search(queries, 2), lambda: memory.classify(queries), lambda: memory.privacy_audit(queries)):
        with pytest.raises(HarnessError, match=r"queries contain NaN or infinite values \(rows \[0\]\)"):
            call()
    with pytest.raises(HarnessError, match="NaN or infinite"):
        VisualMemory.from_arrays(bad / 2, [0] * 4, [0, 1, 2, 3])


def test_memory_commands_exit_2_on_empty_memory_and_bad_queries(tmp_path, capsys):
    VisualMemory(4, backend="torch", device="cpu").save(tmp_path / "empty.npz")
    memory, queries = small_memory()
    memory.save(tmp_path / "mem.npz")
    np.save(tmp_path / "queries.npy", queries.astype(np.float32))
    queries[1, 2] = np.nan
    np.save(tmp_path / "nan.npy", queries.astype(np.float32))
    np.savez(tmp_path / "notmemory.npz", weights=np.ones(3))
    for memory_file, queries_file, fragment in (
        ("empty.npz", "queries.npy", "the visual memory is empty"),
        ("mem.npz", "nan.npy", "queries contain NaN or infinite values (rows [1])"),
        ("notmemory.npz", "queries.npy", "notmemory.npz: not a saved VisualMemory (missing key"),
        ("gone.npz", "queries.npy", "gone.npz: no such memory file"),
    ):
        status = main(["memory", "audit", str(tmp_path / memory_file), "--queries", str(tmp_path / queries_file), "--device", "cpu"])
        assert status == 2, memory_file
        assert fragment in capsys.readouterr().err, memory_file
    status = main(["memory", "audit", str(tmp_path / "mem.npz"), "--queries", str(tmp_path / "queries.npy"), "--k", "50", "--device", "cpu"])
    assert status == 0  # k above the memory size votes over every row, and says so
    printed = capsys.readouterr().out
    assert "\nk: 50\n" in printed and f"\nk_used: {len(memory)} (the whole memory" in printed, printed


def test_non_finite_encoder_output_fails_the_cell_as_bad_input(good_run, run):
    registry, out, log = good_run
    before = (out / "results.jsonl").read_bytes()
    write(registry, GOOD_REGISTRY.replace("encoders:\n", "encoders:\n  nan-enc: {plugin: non-finite, params: {value: nan}}\n")
          + "  knn-digits: {plugin: knn, params: {datasets: [digits], ks: [1]}}\n")
    result = run(registry, "run", "--encoders", "const-a,nan-enc", "--tasks", "quick,knn-digits", "--out", str(out),
                 env={"FAKE_CALL_LOG": str(log)})
    assert result.returncode == 2, result.stderr
    assert_kept(out, before)
    by_encoder = {e: [r for r in cell_records(out, "knn-digits", "digits") if r.encoder == e] for e in ("const-a", "nan-enc")}
    (record,) = by_encoder["nan-enc"]
    assert record.status == "error" and record.error_kind == "input"
    assert "features contain NaN or infinite values" in record.message and "check the encoder's output" in record.message
    assert by_encoder["const-a"] and all(r.status == "ok" for r in by_encoder["const-a"])
    assert sorted(lines(log)) == ["const-a a", "const-a b", "nan-enc a", "nan-enc b"]  # const-a's quick cells ran once


@pytest.mark.parametrize("fault, got", [
    ("row-short", "torch.float32 [255, 4] for 256 images"),
    ("flat", "torch.float32 [256] for 256 images"),
    ("numpy", "float32 [256, 4] for 256 images"),
    ("ragged", "features of [4, 5] dimensions"),
])
def test_encoder_output_of_the_wrong_shape_fails_the_cell_naming_the_encoder_and_is_not_cached(good_run, run, fault, got):
    registry, out, log = good_run
    before = (out / "results.jsonl").read_bytes()
    write(registry, GOOD_REGISTRY.replace("encoders:\n", f"encoders:\n  bad-enc: {{plugin: misshapen, params: {{fault: {fault}}}}}\n")
          + "  knn-digits: {plugin: knn, params: {datasets: [digits], ks: [1]}}\n")
    cache = out.parent / "cache"
    args = ("run", "--encoders", "bad-enc", "--tasks", "knn-digits", "--out", str(out))
    result = run(registry, *args, env={"FAKE_CALL_LOG": str(log), "HARNESS_CACHE": str(cache)})
    assert result.returncode == 2, result.stderr
    assert_kept(out, before)
    (record,) = cell_records(out, "knn-digits", "digits")
    assert record.status == "error" and record.error_kind == "input" and "encoder 'bad-enc'" in record.message and got in record.message
    assert not list((cache / "embeddings").rglob("*.npz"))  # nothing malformed was cached


@pytest.mark.parametrize("fault, got", [
    ("float", "torch.float32 [4, 3, 16, 16]"),
    ("short", "torch.uint8 [3, 3, 16, 16]"),
    ("larger", "torch.uint8 [4, 3, 17, 17]"),
    ("channels-last", "torch.uint8 [4, 16, 16, 3]"),
    ("numpy", "uint8 [4, 3, 16, 16]"),
])
@pytest.mark.parametrize("as_dataset", [False, True])
def test_generator_output_of_the_wrong_shape_is_refused_by_generate_naming_the_generator(tmp_path, run, fault, got, as_dataset):
    registry = write(tmp_path / "registry.yaml", GOOD_REGISTRY + f"generators:\n  bad-gen: {{plugin: misshapen, params: {{fault: {fault}}}}}\n")
    out = tmp_path / "generated"
    result = run(registry, "generate", "bad-gen", "--n", "4", "--size", "16", "--out", str(out), *(["--dataset"] if as_dataset else []))
    assert result.returncode == 2, result.stderr
    assert f"generator 'bad-gen' (misshapen) returned {got}, expected a torch uint8 tensor [4, 3, 16, 16]" in result.stderr
    assert not any(path.is_file() for path in out.rglob("*"))  # no image written
