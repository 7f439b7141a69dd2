"""Cells in results.jsonl are whole or absent, and a run that cannot write its output
directory (full disk, no permission, a file in the way) exits 2 naming the path and keeps
every cell it had."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from harness import Task, hookimpl
from harness.cli import main
from harness.results.store import CELL_CHECKSUM, CELL_RECORDS, ResultStore

REGISTRY = """
plugins: [fake_plugins, test_reliability_cells]  # this module registers the `twelve` task below
encoders:
  const-a: {plugin: constant}
tasks:
  twelve: {plugin: twelve, params: {datasets: [a, b]}}
  twelve-more: {plugin: twelve, params: {datasets: [c]}}
"""

CALLS: list[str] = []  # "encoder dataset" for every cell the `twelve` task computes


class TwelveTask(Task):
    """Twelve records per cell, like a task that reports several metrics and variants."""

    default_datasets = ("a",)
    builds_own_data = True

    def run(self, encoder, ctx):
        CALLS.append(f"{encoder.name} {ctx.dataset}")
        return [ctx.result(f"metric{i}", float(i), n=1, headline=i == 0) for i in range(12)]


@hookimpl
def register_tasks(register):
    register("twelve", TwelveTask)


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY)
    CALLS.clear()
    return path


def run(registry: Path, out: Path, *more: str) -> int:
    return main(["--registry", str(registry), "run", "--out", str(out), "--encoders", "const-a", *more])


def test_cell_cut_short_is_named_and_computed_again(tmp_path, registry, capsys):
    out = tmp_path / "out"
    assert run(registry, out, "--tasks", "twelve") == 0
    results = out / "results.jsonl"
    lines = results.read_text().splitlines()
    assert len(lines) == 24 and CALLS == ["const-a a", "const-a b"]
    # cell a as written before cells carried their count; then the first line of cell c,
    # torn; then cell b cut short by a full disk: 5 of its 12 records and a torn sixth
    framing = (CELL_RECORDS, CELL_CHECKSUM)
    legacy = [json.dumps({k: v for k, v in json.loads(line).items() if k not in framing}) for line in lines[:12]]
    torn_c = '{"task":"twelve-more","dataset":"c","encoder":"const-a","metric":"met'
    results.write_text("\n".join([*legacy, torn_c, *lines[12:17], lines[17][:40]]))
    capsys.readouterr()

    assert run(registry, out, "--tasks", "twelve,twelve-more") == 0
    assert CALLS == ["const-a a", "const-a b", "const-a b", "const-a c"]  # a is reused
    err = capsys.readouterr().err
    assert f"{results}: cell const-a / twelve / b" in err and "holds 5 of its 12 records" in err
    assert "line 13 is a torn record of cell const-a / twelve-more / c" in err
    records = ResultStore(out).read()
    assert sorted((r.dataset, r.metric) for r in records) == sorted((d, f"metric{i}") for d in "abc" for i in range(12))
    assert all(json.loads(line)[CELL_RECORDS] == 12 for line in results.read_text().splitlines()[-24:])

    assert run(registry, out, "--tasks", "twelve,twelve-more") == 0
    assert len(CALLS) == 4  # the recomputed cells are whole now
    assert "warning" not in capsys.readouterr().err


def test_cell_whose_records_do_not_match_its_checksum_is_computed_again(tmp_path, registry, capsys):
    out = tmp_path / "out"
    assert run(registry, out, "--tasks", "twelve") == 0
    results = out / "results.jsonl"
    results.write_text(results.read_text().replace('"metric3","value":3.0', '"metric3","value":9.0', 1))
    assert run(registry, out, "--tasks", "twelve") == 0
    assert CALLS == ["const-a a", "const-a b", "const-a a"]
    assert "does not match its checksum" in capsys.readouterr().err


def os_write_filling_the_disk_at(path: Path):
    """os.write that writes half of what is asked into `path`, then fails as a full disk does."""
    real_write = os.write

    def write(descriptor: int, data) -> int:
        if os.readlink(f"/proc/self/fd/{descriptor}") != str(path):
            return real_write(descriptor, data)
        real_write(descriptor, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


def test_full_disk_mid_cell_keeps_earlier_cells_and_leaves_no_part(tmp_path, registry, capsys, monkeypatch):
    out = tmp_path / "out"
    assert run(registry, out, "--tasks", "twelve") == 0
    results = out / "results.jsonl"
    before = results.read_bytes()
    capsys.readouterr()

    with monkeypatch.context() as patch:
        patch.setattr(os, "write", os_write_filling_the_disk_at(results))
        assert run(registry, out, "--tasks", "twelve,twelve-more") == 2
    err = capsys.readouterr().err
    assert f"cannot write {results}" in err and "disk is full" in err and "Traceback" not in err
    assert results.read_bytes() == before  # the failed cell is absent, not partly there

    assert run(registry, out, "--tasks", "twelve,twelve-more") == 0
    assert CALLS == ["const-a a", "const-a b", "const-a c", "const-a c"]
    assert "warning" not in capsys.readouterr().err
    assert len(ResultStore(out).read()) == 36


@pytest.mark.parametrize("name", ["results.jsonl", ".lock"])
def test_output_file_on_a_full_device_exits_2_naming_it(tmp_path, registry, capsys, name):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system to stand for a full disk")
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to("/dev/full")  # every write fails with ENOSPC
    assert run(registry, out, "--tasks", "twelve") == 2
    err = capsys.readouterr().err
    assert f"cannot write {out / name}" in err and "disk is full" in err and "Traceback" not in err


def test_read_only_results_exit_2_naming_the_file_and_keep_it(tmp_path, registry, capsys, monkeypatch):
    out = tmp_path / "out"
    assert run(registry, out, "--tasks", "twelve") == 0
    results = out / "results.jsonl"
    before = results.read_bytes()
    results.chmod(0o444)
    if os.access(results, os.W_OK):  # root writes regardless of mode: refuse as the kernel would
        real_open = os.open

        def read_only_open(path, flags, *args, **kwargs):
            if str(path) == str(results) and flags & (os.O_WRONLY | os.O_RDWR):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", read_only_open)
    capsys.readouterr()
    try:
        assert run(registry, out, "--tasks", "twelve-more") == 2
    finally:
        results.chmod(0o644)
    err = capsys.readouterr().err
    assert f"cannot write {results}" in err and "no permission" in err
    assert results.read_bytes() == before


def test_out_that_is_a_file_exits_2_naming_it(tmp_path, registry, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    assert run(registry, out, "--tasks", "twelve") == 2
    err = capsys.readouterr().err
    assert f"cannot write {out}" in err and "a file is in the way" in err
    assert out.read_text() == "mine"


@pytest.mark.parametrize("in_the_way", ["runs", "LEADERBOARD.md"])
def test_failing_manifest_or_leaderboard_exits_2_and_keeps_results(tmp_path, registry, capsys, in_the_way):
    out = tmp_path / "out"
    out.mkdir()
    if in_the_way == "runs":
        (out / "runs").write_text("a file where the manifests' folder goes")
    else:
        (out / "LEADERBOARD.md").mkdir()
    assert run(registry, out, "--tasks", "twelve") == 2
    err = capsys.readouterr().err
    assert f"cannot write {out / in_the_way}" in err and "Traceback" not in err
    assert len(ResultStore(out).read()) == 24


def test_leaderboard_command_on_a_full_disk_exits_2_and_keeps_the_old_page(tmp_path, registry, capsys, monkeypatch):
    out = tmp_path / "out"
    assert run(registry, out, "--tasks", "twelve") == 0
    before = (out / "LEADERBOARD.md").read_text()
    real_write_text = Path.write_text

    def write_text(self: Path, *args, **kwargs):
        if self.name.startswith(".LEADERBOARD.md."):  # the page's temporary file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    assert main(["--registry", str(registry), "leaderboard", "--out", str(out)]) == 2
    assert f"cannot write {out / 'LEADERBOARD.md'}" in capsys.readouterr().err
    assert (out / "LEADERBOARD.md").read_text() == before
    assert len(ResultStore(out).read()) == 24


def test_leaderboard_command_without_results_exits_2_writing_nothing(tmp_path, registry, capsys):
    out = tmp_path / "never-run"
    assert main(["--registry", str(registry), "leaderboard", "--out", str(out)]) == 2
    assert f"{out}: no results.jsonl to render; `harness run --out {out}` writes one" in capsys.readouterr().err
    assert not out.exists()


def test_generate_into_a_file_or_an_uncreatable_folder_exits_2_naming_it(tmp_path, capsys, monkeypatch):
    """`harness generate` where a file stands in the way of the folder, or where the
    folder cannot be created (as under /proc): exit 2 naming the path and what to do,
    the file left as it was."""
    in_the_way = tmp_path / "notes.txt"
    in_the_way.write_text("mine")
    uncreatable = tmp_path / "gone" / "images"
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args, **kwargs):
        if self == uncreatable:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    for out, why in ((in_the_way, "a file is in the way"), (uncreatable, "a folder on the way cannot be created there")):
        assert main(["generate", "dead-leaves", "--n", "2", "--size", "16", "--out", str(out), "--dataset"]) == 2
        err = capsys.readouterr().err
        assert f"cannot write {out}" in err and why in err and "Images already written are kept" in err and "Traceback" not in err
    assert in_the_way.read_text() == "mine"
