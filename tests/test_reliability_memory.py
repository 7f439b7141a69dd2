"""`harness memory remove|audit` with input it must refuse, and unlearning it must prove.

Each test runs the command line in-process (`harness.cli.main`); one runs it as a user
does, where the exit status and the absence of a traceback are the point."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.memory import VisualMemory
from harness.memory.files import remove_ids

DIM = 8
ROWS = 12


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A 12-row memory (ids 0..11), 5 query rows and an ids file naming rows 3 and 4."""
    rng = np.random.default_rng(0)
    memory = VisualMemory(DIM, device="cpu")
    memory.add(rng.normal(size=(ROWS, DIM)), rng.integers(0, 3, ROWS))
    memory.save(tmp_path / "m.npz")
    np.save(tmp_path / "queries.npy", rng.normal(size=(5, DIM)).astype(np.float32))
    (tmp_path / "ids.txt").write_text("3\n4\n")
    return {"memory": tmp_path / "m.npz", "queries": tmp_path / "queries.npy", "ids": tmp_path / "ids.txt"}


def remove(files: dict[str, Path], out: Path, *extra: str) -> int:
    return main(
        ["memory", "remove", str(files["memory"]), "--ids", str(files["ids"]), "--out", str(out),
         "--queries", str(files["queries"]), "--k", "3", "--device", "cpu", *extra]
    )


def rows_in(path: Path) -> int:
    return len(VisualMemory.load(path, device="cpu"))


# ------------------------------------------------------- verifying an in-place removal
def test_verify_in_place_compares_with_a_rebuild_from_the_original_rows(files, capsys):
    assert remove(files, files["memory"], "--verify") == 0
    out = capsys.readouterr().out
    assert "removed: 2" in out and "identical: True" in out
    assert f"rebuilt_from: {ROWS} original rows less the 2 removed" in out
    assert rows_in(files["memory"]) == ROWS - 2


def test_verification_in_the_api_starts_from_the_original_rows(files, tmp_path):
    summary = remove_ids(
        files["memory"], files["ids"], files["memory"], verify=True, queries=files["queries"], k=3, device="cpu"
    )
    check = summary["verification"]
    assert (check["rows_before"], check["removed"], check["identical"]) == (ROWS, 2, True)
    assert summary["path"] == str(files["memory"]) and rows_in(files["memory"]) == ROWS - 2


@pytest.mark.parametrize("alias", ["same path", "dotted path", "symlink", "hard link"])
def test_in_place_removal_without_verify_is_refused(files, tmp_path, capsys, alias):
    out = {
        "same path": files["memory"],
        "dotted path": tmp_path / "." / "m.npz",
        "symlink": tmp_path / "link.npz",
        "hard link": tmp_path / "hard.npz",
    }[alias]
    if alias == "symlink":
        out.symlink_to(files["memory"])
    if alias == "hard link":
        os.link(files["memory"], out)
    assert remove(files, out) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--verify" in err
    assert rows_in(files["memory"]) == ROWS


def test_a_failed_verification_writes_nothing(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(VisualMemory, "remove", lambda self, ids: 0)  # a removal that forgets nothing
    assert remove(files, tmp_path / "reduced.npz", "--verify") == 1
    assert remove(files, files["memory"], "--verify") == 1
    out = capsys.readouterr().out
    assert "identical: False" in out and "nothing written" in out
    assert not (tmp_path / "reduced.npz").exists() and rows_in(files["memory"]) == ROWS


# ------------------------------------------------------------------------ ids files
@pytest.mark.parametrize(
    "bad, reason",
    [
        ("1_0", "decimal"),
        ("\u0661", "decimal"),  # ARABIC-INDIC DIGIT ONE
        ("0x10", "decimal"),
        ("2.0", "decimal"),
        ("99999999999999999999", "range"),
        ("-3", "negative"),
    ],
)
def test_ids_must_be_plain_decimal_integers_in_range(files, tmp_path, capsys, bad, reason):
    files["ids"].write_text(f"1\n{bad}\n", encoding="utf-8")
    assert remove(files, tmp_path / "r.npz") == 2
    err = capsys.readouterr().err
    assert f"{files['ids']}:2:" in err and reason in err
    assert not (tmp_path / "r.npz").exists()


def test_negative_ids_are_accepted_where_the_memory_has_them(tmp_path, capsys):
    memory = VisualMemory(2, device="cpu")
    memory.add([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [0, 1, 0], ids=[-5, 0, 3])
    memory.save(tmp_path / "m.npz")
    (tmp_path / "ids.txt").write_text("-5\n")
    ids, out = tmp_path / "ids.txt", tmp_path / "r.npz"
    assert main(["memory", "remove", str(tmp_path / "m.npz"), "--ids", str(ids), "--out", str(out)]) == 0
    assert "removed: 1" in capsys.readouterr().out


def test_unreadable_ids_files_are_named(files, tmp_path, capsys):
    files["ids"].write_bytes(b"1\n\xff\xfe2\n")
    assert remove(files, tmp_path / "r.npz") == 2
    assert f"{files['ids']}: not UTF-8 text" in capsys.readouterr().err
    folder = tmp_path / "ids-folder"
    folder.mkdir()
    files["ids"] = folder
    assert remove(files, tmp_path / "r.npz") == 2
    assert f"{folder}: is a folder" in capsys.readouterr().err


# -------------------------------------------------------------------- query files
def test_query_files_that_are_not_numeric_arrays_are_named(files, tmp_path, capsys):
    cases = {
        "objects.npy": lambda p: np.save(p, np.array([np.zeros(DIM), "text"], dtype=object), allow_pickle=True),
        "strings.npy": lambda p: np.save(p, np.full((2, DIM), "1.5")),
        "text.npy": lambda p: p.write_text("not an array"),
        "narrow.npy": lambda p: np.save(p, np.zeros((2, DIM - 1), np.float32)),
        "objects.npz": lambda p: np.savez(p, features=np.array([None, 1.0], dtype=object)),
        "labels.npz": lambda p: np.savez(p, features=np.ones((2, DIM)), labels=np.array(["cat", "dog"])),
    }
    for name, write in cases.items():
        write(tmp_path / name)
        argv = ["memory", "audit", str(files["memory"]), "--queries", str(tmp_path / name), "--device", "cpu"]
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert str(tmp_path / name) in err and "expected" in err, (name, err)


def test_an_object_array_query_file_exits_2_without_a_traceback(files, tmp_path):
    from helpers import cli

    queries = tmp_path / "objects.npy"
    np.save(queries, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    result = cli("memory", "audit", str(files["memory"]), "--queries", str(queries), "--device", "cpu")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(queries) in result.stderr and "numbers" in result.stderr


# ------------------------------------------------------------------ audit --out
def test_an_unwritable_audit_out_is_named(files, tmp_path, capsys):
    a_file = tmp_path / "plain.txt"
    a_file.write_text("")
    for out in (tmp_path, a_file / "missing" / "ids.txt"):
        argv = ["memory", "audit", str(files["memory"]), "--queries", str(files["queries"]), "--k", "3",
                "--device", "cpu", "--out", str(out)]
        assert main(argv) == 2, out
        assert str(out) in capsys.readouterr().err
