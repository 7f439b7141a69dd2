"""`harness run --limit`: a seeded, stratified subset of each classification split, the
same for every encoder, part of the cell keys and recorded in the run manifest."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import harness
from harness.datasets.subsets import SubsetSplit, parse_limit, subset_indices
from helpers import cli


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_limit_keeps_class_proportions_and_is_seeded() -> None:
    labels = np.repeat(np.arange(4), [40, 30, 20, 10])
    chosen = subset_indices(labels, 50, seed=3)
    assert len(chosen) == 50 and np.all(np.diff(chosen) > 0)
    counts = Counter(labels[chosen].tolist())
    assert {c: counts[c] for c in range(4)} == {0: 20, 1: 15, 2: 10, 3: 5}  # 50 % of every class
    assert np.array_equal(chosen, subset_indices(labels, 50, seed=3))
    assert not np.array_equal(chosen, subset_indices(labels, 50, seed=4))
    assert len(subset_indices(labels, 0.1, seed=0)) == 10 and len(subset_indices(labels, 500, seed=0)) == 100
    assert parse_limit("100") == 100 and parse_limit("0.25") == 0.25
    for bad in ("0", "1.5", "-3", "many"):
        with pytest.raises(Exception, match="expected"):
            parse_limit(bad)


def test_subset_split_serves_the_chosen_images() -> None:
    from harness.datasets.splits import ArraySplit

    images = np.arange(10 * 3 * 2 * 2, dtype=np.uint8).reshape(10, 3, 2, 2)
    split = SubsetSplit(ArraySplit(images, np.arange(10) % 2), np.array([1, 4, 7]))
    assert len(split) == 3 and split.labels.tolist() == [1, 0, 1]
    assert np.array_equal(np.concatenate([b.numpy() for b in split.batches(2)]), images[[1, 4, 7]])
    assert np.array_equal(split.take([2, 0]).numpy(), images[[7, 1]])
    assert [int(i) for i in split.map_raw([1], lambda image, index: image.sum() * 0 + index)] == [1]


def test_limit_cuts_the_memory_and_query_splits_whatever_their_names() -> None:
    """A query split named "val" beside a split named "test" (Flowers-102's protocol, a
    Hugging Face `test_split: validation`): --limit queries a subset of "val"."""
    from harness.datasets.splits import ArraySplit, ClassificationData
    from harness.datasets.subsets import limit_dataset

    def split(first: int) -> ArraySplit:
        return ArraySplit(np.full((40, 3, 2, 2), 0, dtype=np.uint8) + np.arange(first, first + 40, dtype=np.uint8)[:, None, None, None], np.arange(40) % 4)

    first = {"train": 0, "val": 40, "test": 80}
    named = {name: split(start) for name, start in first.items()}
    data = ClassificationData("d", train=named["train"], test=named["val"], classes=list("abcd"), splits=named)
    limited = limit_dataset(data, 8, seed=0)
    for role, name in (("train", "train"), ("test", "val")):
        cut = getattr(limited, role)
        assert cut is limited.splits[name] and cut.split is named[name]
        served = np.concatenate([b.numpy() for b in cut.batches(8)])[:, 0, 0, 0]
        assert len(served) == 8 and set(served.tolist()) <= set(range(first[name], first[name] + 40))
    outside = ClassificationData("d", train=named["train"], test=named["val"], classes=list("abcd"), splits={})
    assert limit_dataset(outside, 8, seed=0).test.split is named["val"]


def test_limit_through_the_cli_is_in_the_keys_and_the_manifest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    limited = cli("run", "--encoders", "rgb", "--tasks", "knn-digits", "--limit", "100", "--out", str(out))
    assert limited.returncode == 0, limited.stderr[-2000:]
    first = records(out)
    assert {r["n"] for r in first if r["metric"] == "top1"} == {100}  # 100 of the 540 test images
    manifest = json.loads(sorted((out / "runs").glob("*.json"))[-1].read_text())
    assert manifest["limit"] == 100 and manifest["seed"] == 0
    assert {r["keys"]["limit"] for r in first} == {100}
    board = (out / "LEADERBOARD.md").read_text()
    assert " †" in board and "- †: computed with `--limit 100`, on a subset of each split" in board
    harness.run(encoders=["rgb"], tasks=["knn-digits"], out=out)
    keys = {r["cell_key"] for r in records(out)}
    assert len(keys) == 2, "the limited cell and the whole one are different cells"
    assert {r["n"] for r in records(out) if r["metric"] == "top1"} == {100, 540}
    assert not any("limit" in r["keys"] for r in records(out) if r["n"] == 540)
    again = cli("run", "--encoders", "rgb", "--tasks", "knn-digits", "--limit", "100", "--out", str(out))
    assert again.returncode == 0 and len(records(out)) == 2 * len(first)  # reused: nothing appended
    board = (out / "LEADERBOARD.md").read_text()  # the quick look, newer, does not replace the whole data's value
    assert "†" not in board
    whole = next(r for r in records(out) if r["headline"] and r["n"] == 540)
    assert f"| {whole['value']:.2f} ±" in board
    fraction = harness.run(encoders=["rgb"], tasks=["knn-digits"], out=tmp_path / "fraction", limit=0.1)
    assert {r.n for r in fraction if r.metric == "top1"} == {54}
    assert cli("run", "--encoders", "rgb", "--tasks", "knn-digits", "--limit", "0", "--out", str(out)).returncode == 2


def test_a_limit_value_shows_where_the_whole_data_has_none_and_seed_means_over_it_are_marked() -> None:
    import pandas

    from harness.results.leaderboard import task_table
    from harness.results.store import Result, latest

    def record(encoder: str, value: float | None, status: str = "ok", limit: int | None = None) -> Result:
        keys = {"seed": 0} if limit is None else {"seed": 0, "limit": limit}
        return Result(task="knn", dataset="d", encoder=encoder, metric="top1", value=value, status=status, headline=True, keys=keys)

    for status in ("skipped", "error"):  # the whole data was not there, or failed: the quick look is the only value
        shown = latest([record("s0", None, status), record("s0", 60.0, limit=100)])
        assert [(r.status, r.value) for r in shown] == [("ok", 60.0)]
    shown = latest([record("s0", 70.0), record("s0", 60.0, limit=100)])
    assert [(r.value, "limit" in r.keys) for r in shown] == [(70.0, False)]
    records = [record("s0", 70.0), record("s1", 60.0, limit=100), record("s2", 80.0)]
    frame = pandas.DataFrame([r.model_dump() for r in latest(records)])
    table, notes = task_table(frame, None, {"recipe": ["s0", "s1", "s2"]})
    lines = {line.split("|")[2].strip(): line.split("|")[3].strip() for line in table.splitlines()[2:]}
    assert lines == {"s0": "70.00", "s1": "60.00 †", "s2": "80.00", "recipe (mean of 3 seeds)": lines["recipe (mean of 3 seeds)"]}
    assert lines["recipe (mean of 3 seeds)"].startswith("70.00 ± ") and lines["recipe (mean of 3 seeds)"].endswith(" †")
    assert notes == ["†: computed with `--limit 100`, on a subset of each split (no record of the whole data yet)"]
