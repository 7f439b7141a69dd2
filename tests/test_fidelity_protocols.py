"""The paper's released protocols: MedMNIST's k chosen on val, the paper column beside the
released rows only, the MedMNIST size hint, skipped reasons in the run's summary table,
the k that a kNN vote actually used, and OpenCV's INTER_NEAREST label grid. Each number is
checked against a computation written out here (numpy brute force, scikit-learn, the
formula by hand)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import harness
from harness.config.schema import DatasetSpec
from harness.datasets import open_dataset
from harness.errors import DatasetUnavailable

from test_datasets import make_imagefolder, make_medmnist, protocol_crop
from test_tasks import pick, run_cli, write_registry

T = 0.07


def noisy_medmnist(path, n, classes, seed, noise=200):
    """A MedMNIST-layout .npz (train/val/test keys) whose classes overlap: brightness
    carries the class, noise of `noise` grey levels blurs it, so ACC depends on k."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        labels = rng.integers(0, classes, size=(count, 1)).astype(np.uint8)
        level = labels[:, 0].astype(np.int64) * (255 - noise) // max(classes - 1, 1)
        images = level[:, None, None, None] + rng.integers(0, noise, size=(count, 4, 4, 3))
        arrays[f"{split}_images"] = np.clip(images, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels
    np.savez_compressed(path, **arrays)
    return arrays


def rgb_features(images: np.ndarray) -> np.ndarray:
    encoder = harness.get_encoder("rgb")
    encoder.prepare()
    batch = torch.from_numpy(np.repeat(images[:, None], 3, axis=1) if images.ndim == 3 else images.transpose(0, 3, 1, 2).copy())
    return encoder.embed(batch).numpy().astype(np.float64)


def brute_force_top1_by_k(memory, memory_labels, queries, query_labels, num_classes, k_max):
    """Top-1 (fraction) of DINO's weighted vote for k = 1..k_max: numpy cosine similarities,
    neighbours by (similarity desc, index asc), the vote summed by hand for each k."""
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    sims = unit(queries) @ unit(memory).T
    orders = np.array([sorted(range(len(memory)), key=lambda j: (-sims[q, j], j)) for q in range(len(queries))])
    rows = np.arange(len(queries))[:, None]
    accs = []
    for k in range(1, k_max + 1):  # each k from scratch: the k nearest, exp(sim / T) summed per class
        nearest = orders[:, :k]
        votes = np.zeros((len(queries), num_classes))
        np.add.at(votes, (np.broadcast_to(rows, nearest.shape), memory_labels[nearest]), np.exp(sims[rows, nearest] / T))
        accs.append(float(np.mean(np.argmax(votes, axis=1) == query_labels)))
    return np.array(accs), sims


# ---------------------------------------------------------------- MedMNIST, released
def test_medmnist_released_chooses_k_on_val_as_brute_force(tmp_path):
    from sklearn.metrics import roc_auc_score

    big = noisy_medmnist(tmp_path / "toybig.npz", n=(230, 40, 30), classes=3, seed=5)
    small = noisy_medmnist(tmp_path / "toysmall.npz", n=(25, 30, 20), classes=3, seed=6)
    registry = write_registry(
        tmp_path,
        f"  toybig: {{format: medmnist, root: {tmp_path / 'toybig.npz'}}}\n"
        f"  toysmall: {{format: medmnist, root: {tmp_path / 'toysmall.npz'}}}",
        "  medmnist-released: {plugin: medmnist, params: {datasets: [toybig, toysmall], protocol: released}}",
    )
    out = tmp_path / "out"
    records = run_cli(registry, "medmnist-released", out)
    for name, arrays, k_max in (("toybig", big, 200), ("toysmall", small, 25)):  # 200, or the memory size
        train = rgb_features(arrays["train_images"])
        train_labels = arrays["train_labels"][:, 0]
        val_accs, _ = brute_force_top1_by_k(train, train_labels, rgb_features(arrays["val_images"]),
                                            arrays["val_labels"][:, 0], 3, k_max)
        best = int(np.flatnonzero(val_accs == val_accs.max())[0]) + 1  # the smallest k on ties
        mine = [r for r in records if r["dataset"] == name]
        assert {r["metric"] for r in mine} == {"acc", "auc", "val_acc"}
        acc = pick(mine, "acc")
        assert acc["headline"] and acc["params"] == {"protocol": "released", "k": best, "vote": "weighted", "k_max": k_max}
        assert pick(mine, "val_acc")["value"] == pytest.approx(100 * val_accs.max(), abs=1e-9)
        test_accs, sims = brute_force_top1_by_k(train, train_labels, rgb_features(arrays["test_images"]),
                                                arrays["test_labels"][:, 0], 3, best)
        assert acc["value"] == pytest.approx(100 * test_accs[best - 1], abs=1e-9), name
        nearest = np.argsort(-sims, axis=1, kind="stable")[:, :best]
        mass = np.zeros((len(sims), 3))
        for q in range(len(sims)):
            np.add.at(mass[q], train_labels[nearest[q]], np.exp(sims[q, nearest[q]] / T))
        scores = mass / mass.sum(axis=1, keepdims=True)
        labels = arrays["test_labels"][:, 0]
        auc = np.mean([roc_auc_score(labels == c, scores[:, c]) for c in range(3)])
        assert pick(mine, "auc")["value"] == pytest.approx(100 * auc, abs=1e-9)
    assert 1 < pick(records, "acc", k_max=200)["params"]["k"] < 200  # the fixture makes the choice non-trivial
    with np.load(out / "medmnist" / "medmnist-released__toysmall__rgb.npz") as saved:
        assert int(saved["k"]) == pick(records, "acc", k_max=25)["params"]["k"]


def test_medmnist_released_multilabel_chooses_k_as_brute_force(tmp_path):
    arrays = make_medmnist(tmp_path / "chestmnist.npz", n=(50, 30, 20), multilabel=3, size=4, seed=8)
    registry = write_registry(tmp_path, f"  chestmnist: {{format: medmnist, root: {tmp_path / 'chestmnist.npz'}}}",
                              "  medmnist-released: {plugin: medmnist, params: {datasets: [chestmnist], protocol: released}}")
    records = run_cli(registry, "medmnist-released", tmp_path / "out")
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    sims = unit(rgb_features(arrays["val_images"])) @ unit(rgb_features(arrays["train_images"])).T
    order = np.argsort(-sims, axis=1, kind="stable")
    accs = []
    for k in range(1, 51):  # per label: the share of exp(sim / T) carried by neighbours with it, > 0.5
        nearest = order[:, :k]
        weights = np.exp(np.take_along_axis(sims, nearest, axis=1) / T)
        share = np.einsum("qk,qkl->ql", weights, arrays["train_labels"][nearest].astype(float)) / weights.sum(axis=1, keepdims=True)
        accs.append(np.mean((share > 0.5) == arrays["val_labels"]))
    acc = pick(records, "acc")
    assert acc["params"]["k"] == int(np.argmax(accs)) + 1 and acc["params"]["k_max"] == 50
    assert pick(records, "val_acc")["value"] == pytest.approx(100 * max(accs), abs=1e-9)


def test_medmnist_acc_and_scores_by_k_equal_the_reference_functions():
    from harness_plugins.tasks.medmnist import medmnist_acc, medmnist_metrics, normalised_scores, scores_by_k

    rng = np.random.default_rng(0)
    sims = np.sort(rng.uniform(-1, 1, size=(40, 12)), axis=1)[:, ::-1].copy()
    single = rng.integers(0, 4, size=(40, 12))
    multi = rng.integers(0, 2, size=(40, 12, 3))
    for neighbours, label_type, labels in ((single, "multi-class", rng.integers(0, 4, 40)),
                                           (single % 2, "binary-class", rng.integers(0, 2, 40)),
                                           (multi, "multi-label, binary-class", rng.integers(0, 2, (40, 3)))):
        for k, scores in enumerate(scores_by_k(sims, neighbours, T, 4 if label_type == "multi-class" else 2), start=1):
            reference = normalised_scores(sims[:, :k], neighbours[:, :k], "weighted", T, 4 if label_type == "multi-class" else 2)
            if neighbours.ndim == 2:
                assert np.array_equal(scores, reference)  # the same additions, in the same order
            else:
                assert np.allclose(scores, reference, rtol=1e-12)
            assert medmnist_acc(labels, scores, label_type) == medmnist_metrics(labels, scores, label_type)[0]


def test_paper_column_only_beside_the_released_protocol(tmp_path):
    noisy_medmnist(tmp_path / "toy.npz", n=(40, 20, 20), classes=3, seed=1)
    registry = write_registry(
        tmp_path,
        f"  pathmnist: {{format: medmnist, root: {tmp_path / 'toy.npz'}}}",
        "  medmnist-fixed: {plugin: medmnist, params: {datasets: [pathmnist]}}\n"
        "  medmnist-released: {plugin: medmnist, params: {datasets: [pathmnist], protocol: released}}",
        extra="encoders:\n  rgb-as-random-init: {plugin: rgb, paper_row: Random init.}\n",
    )
    out = tmp_path / "out"
    records = run_cli(registry, "medmnist-fixed,medmnist-released", out, encoders="rgb-as-random-init")
    from harness_plugins.tasks.medmnist import MedMNISTTask

    paper = MedMNISTTask.paper_numbers()
    reported = paper[(paper.paper_row == "Random init.") & (paper.dataset == "pathmnist")].value.item()
    board = (out / "LEADERBOARD.md").read_text()

    def encoder_row(task):
        section = board.split(f"## {task}:")[1].split("\n## ")[0]
        header = next(line for line in section.splitlines() if line.startswith("| group"))
        row = next(line for line in section.splitlines() if "rgb-as-random-init" in line)
        cells = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
        return dict(zip(cells(header), cells(row)))

    released, fixed = encoder_row("medmnist-released"), encoder_row("medmnist-fixed")
    assert released["paper"] == f"{reported:.2f}" and float(released["pathmnist"]) == pytest.approx(pick(records, "acc", protocol="released")["value"], abs=0.006)
    assert fixed["paper"] == "" and fixed["pathmnist"] != ""
    assert {r["paper_row"] for r in records if r["task"] == "medmnist-fixed"} == {None}
    table = MedMNISTTask.table3(__import__("pandas").DataFrame([r for r in records if r["task"] == "medmnist-fixed"]))
    assert table.row.tolist() == ["Best from original paper", "rgb-as-random-init"]
    table = MedMNISTTask.table3(__import__("pandas").DataFrame([r for r in records if r["task"] == "medmnist-released"]))
    assert table.row.tolist() == ["Best from original paper", "rgb-as-random-init", "Random init. (paper)"]


def test_medmnist_reader_has_a_val_split(tmp_path):
    arrays = make_medmnist(tmp_path / "toymnist.npz", n=(12, 7, 5))
    data = open_dataset("toymnist", DatasetSpec(format="medmnist", root=str(tmp_path / "toymnist.npz")))
    assert len(data.splits["val"]) == 7
    assert np.array_equal(data.splits["val"].labels, arrays["val_labels"][:, 0])


# ------------------------------------------------------------- MedMNIST, wrong size
def test_medmnist_directory_with_other_sizes_names_them(tmp_path, capsys):
    make_medmnist(tmp_path / "data" / "pathmnist.npz")
    make_medmnist(tmp_path / "data" / "pathmnist_64.npz")
    make_medmnist(tmp_path / "data" / "dermamnist_128.npz")  # another dataset: not offered
    spec = DatasetSpec(format="medmnist", root=str(tmp_path / "data"), env="MEDMNIST_ROOT")
    with pytest.raises(DatasetUnavailable) as error:
        open_dataset("pathmnist", spec)
    message = str(error.value)
    for part in ("no pathmnist_224.npz (size 224)", "pathmnist.npz = 28 px", "pathmnist_64.npz = 64 px",
                 "options: {size: 28}", "options: {size: 64}", "datasets.pathmnist", "registry.yaml"):
        assert part in message, part
    assert "128" not in message and "sizes 28, 64: set options: {size: 28} or options: {size: 64}" in message
    with pytest.raises(DatasetUnavailable, match=r"octmnist_224\.npz.*datasets\.octmnist\.root.*MEDMNIST_ROOT"):
        open_dataset("octmnist", spec)  # no size of it at all: the root is what to fix
    # and through the CLI: the cell is skipped, the summary table says why
    registry = write_registry(tmp_path, f"  pathmnist: {{format: medmnist, root: {tmp_path / 'data'}}}",
                              "  medmnist: {plugin: medmnist, params: {datasets: [pathmnist]}}")
    capsys.readouterr()
    records = run_cli(registry, "medmnist", tmp_path / "out")
    assert [r["status"] for r in records] == ["skipped"] and "options: {size: 28}" in records[0]["message"]
    assert "no pathmnist_224.npz (size 224); the root has sizes 28, 64: set" in capsys.readouterr().out


# ------------------------------------------------------------ skipped in the summary
def test_skipped_cell_shows_its_reason_in_the_summary_table(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    registry = write_registry(tmp_path, f"  mine: {{format: imagefolder, root: {missing}}}",
                              "  knn-mine: {plugin: knn, params: {datasets: [mine]}}")
    capsys.readouterr()
    records = run_cli(registry, "knn-mine", tmp_path / "out")
    assert [r["status"] for r in records] == ["skipped"]
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if "knn-mine" in line and "skipped" in line)
    reason = " ".join(records[0]["message"].split())
    shown = reason if len(reason) <= 100 else reason[:97] + "..."
    assert row.rstrip().endswith(shown) and str(missing)[:40] in row
    # reused from results.jsonl, the reason is shown again
    capsys.readouterr()
    run_cli(registry, "knn-mine", tmp_path / "out")
    again = next(line for line in capsys.readouterr().out.splitlines() if "skipped (reused)" in line)
    assert again.rstrip().endswith(shown)


def test_short_reason_cuts_long_messages_to_one_line():
    from harness.runner.cells import short_reason

    assert short_reason("a\n  b") == "a b"
    long = "x" * 150
    assert short_reason(long) == "x" * 97 + "..." and len(short_reason(long)) == 100


# --------------------------------------------------------------- kNN k above memory
def test_knn_k_above_the_memory_records_the_k_used(tmp_path):
    from sklearn.neighbors import KNeighborsClassifier

    root = make_imagefolder(tmp_path / "folder", n_train=4, n_test=3, seed=2)  # 12 memory rows
    registry = write_registry(tmp_path, f"  mine: {{format: imagefolder, root: {root}, options: {{crop: 16}}}}",
                              "  knn-mine: {plugin: knn, params: {datasets: [mine], ks: [5, 50]}}")
    records = run_cli(registry, "knn-mine", tmp_path / "out")
    assert "k_used" not in pick(records, "top1", k=5, vote="weighted")["params"]
    for vote in ("weighted", "majority"):
        for k in (20, 50):  # 20: the headline, also above the 12 rows
            record = pick(records, "top1", k=k, vote=vote)
            assert record["params"]["k_used"] == 12
    encoder = harness.get_encoder("rgb")
    encoder.prepare()

    def features(split):
        paths = sorted(p for p in (root / split).glob("*/*.*") if p.suffix in (".png", ".jpg"))
        images = torch.from_numpy(np.stack([protocol_crop(p, 16, 18) for p in paths]))
        return encoder.embed(images).numpy().astype(np.float64), np.array([["cat", "dog", "owl"].index(p.parent.name) for p in paths])

    train, train_labels = features("train")
    test, test_labels = features("test")
    model = KNeighborsClassifier(12, weights=lambda d: np.exp((1.0 - d) / T), metric="cosine", algorithm="brute")
    expected = 100.0 * (model.fit(train, train_labels).predict(test) == test_labels).mean()
    assert pick(records, "top1", k=50, vote="weighted")["value"] == pytest.approx(expected, abs=1e-9)


def test_medmnist_fixed_k_above_the_memory_records_the_k_used(tmp_path):
    noisy_medmnist(tmp_path / "toy.npz", n=(15, 5, 10), classes=3, seed=3)
    registry = write_registry(tmp_path, f"  toy: {{format: medmnist, root: {tmp_path / 'toy.npz'}}}",
                              "  medmnist: {plugin: medmnist, params: {datasets: [toy], ks: [5, 100]}}")
    records = run_cli(registry, "medmnist", tmp_path / "out")
    assert "k_used" not in pick(records, "acc", k=5, vote="majority")["params"]
    for k in (20, 100):
        assert pick(records, "acc", k=k, vote="weighted")["params"]["k_used"] == 15
        assert pick(records, "acc", k=k, vote="weighted")["value"] == pick(records, "acc", k=100, vote="weighted")["value"]


# ------------------------------------------------------------- INTER_NEAREST grid
def opencv_nearest_sources(source: int, size: int) -> np.ndarray:
    """OpenCV's resizeNN written out: inv_scale = (double)size / source, scale = 1. / inv_scale,
    source index min(floor(i * scale), source - 1)."""
    scale = 1.0 / (size / source)
    return np.array([min(math.floor(i * scale), source - 1) for i in range(size)])


def test_label_grid_follows_opencv_inter_nearest():
    from harness.metrics import _label_grid, _nearest_sources

    differs = 0
    for size in (14, 16, 28, 224):
        for length in range(1, 1001):  # every side length up to 1000
            sources = opencv_nearest_sources(length, size)
            assert np.array_equal(_nearest_sources(length, size).numpy(), sources), (length, size)
            differs += not np.array_equal(sources, np.arange(size) * length // size)
    assert differs > 0  # the exact integer division would have been wrong on some of these
    assert not np.array_equal(opencv_nearest_sources(400, 224), np.arange(224) * 400 // 224)
    rng = np.random.default_rng(0)
    for height, width in ((400, 333), (113, 1000), (224, 224), (7, 500), (999, 3)):
        labels = rng.integers(0, 200, size=(height, width))
        expected = labels[opencv_nearest_sources(height, 224)][:, opencv_nearest_sources(width, 224)]
        assert np.array_equal(_label_grid(torch.from_numpy(labels), 224).numpy(), expected), (height, width)
        assert np.array_equal(_label_grid(labels, 16).numpy(), labels[opencv_nearest_sources(height, 16)][:, opencv_nearest_sources(width, 16)])


def test_label_grid_equals_cv2_resize():
    cv2 = pytest.importorskip("cv2")
    from harness.metrics import _label_grid

    rng = np.random.default_rng(1)
    for size in (14, 16, 28, 224):
        for height in range(1, 1001, 37):
            width = int(rng.integers(1, 1001))
            labels = rng.integers(0, 250, size=(height, width)).astype(np.uint8)
            expected = cv2.resize(labels, (size, size), interpolation=cv2.INTER_NEAREST)
            assert np.array_equal(_label_grid(labels, size).numpy(), expected), (height, width, size)


def test_released_protocol_is_a_checked_parameter():
    from harness.kinds import ParamsError

    assert harness.get_task("medmnist").params.protocol == "fixed"
    assert harness.get_task("medmnist", protocol="released").params.protocol == "released"
    assert harness.get_task("medmnist", protocol="released").paper_comparable
    assert not harness.get_task("medmnist").paper_comparable
    with pytest.raises(ParamsError, match="protocol"):
        harness.get_task("medmnist", protocol="best-on-test")
    assert re.search(r"released", harness.get_task("medmnist").Params.model_fields["protocol"].description)
