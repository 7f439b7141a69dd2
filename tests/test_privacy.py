"""The privacy audit equals brute-force leave-one-out; the privacy task; unlearning."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import HarnessError
from harness.memory import VisualMemory

ROOT = Path(__file__).resolve().parents[1]


def brute_force(memory: VisualMemory, queries, k: int, vote: str, temperature: float) -> dict[int, int]:
    """Rebuild the memory without each row in turn, classify every query, count changes.
    A one-row memory has nothing left after the removal: every prediction is lost."""
    before = memory.classify(queries, k=k, vote=vote, temperature=temperature)
    features, labels, ids = memory.features, memory.labels, memory.ids
    flips = {}
    for j in range(len(memory)):
        keep = np.arange(len(memory)) != j
        if not keep.any():
            flips[int(ids[j])] = len(before)
            continue
        reduced = VisualMemory.from_arrays(features[keep], labels[keep], ids[keep], device="cpu", backend=memory.backend)
        after = reduced.classify(queries, k=k, vote=vote, temperature=temperature)
        flips[int(ids[j])] = int((after != before).sum())
    return flips


def assert_audit_is_exact(memory: VisualMemory, queries, k: int, vote: str, temperature: float = 0.07, block=None) -> None:
    report = memory.privacy_report(queries, k=k, vote=vote, temperature=temperature, block=block)
    expected = brute_force(memory, queries, k, vote, temperature)
    got = dict(zip(report.ids.tolist(), report.flips.tolist()))
    assert got == {i: f for i, f in expected.items() if f}, (k, vote, temperature)
    np.testing.assert_array_equal(memory.privacy_audit(queries, k=k, vote=vote, temperature=temperature), report.ids)
    assert report.count == len(report.ids)
    assert report.fraction == pytest.approx(100.0 * report.count / len(memory))
    assert (np.diff(report.ids) > 0).all()


def memory_of(features, labels, ids=None, backend="faiss") -> VisualMemory:
    memory = VisualMemory(np.asarray(features).shape[1], device="cpu", backend=backend)
    memory.add(features, labels, ids)
    return memory


def random_case(seed, n=60, q=25, dim=8, classes=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, dim)), rng.integers(0, classes, n), rng.standard_normal((q, dim))


def quantised_case(seed, n=60, q=25, dim=3, classes=3):
    """Few distinct directions, many duplicated rows: exact ties everywhere, also at the
    (k+1)-th neighbour, and tied votes."""
    rng = np.random.default_rng(seed)
    pool = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [2, 2, 0], [1, 1, 1], [0, -1, 1], [1, 0, 1]], float)[:, :dim]
    queries = rng.integers(-1, 2, (q, dim)).astype(float)
    queries[np.abs(queries).sum(1) == 0] = 1
    return pool[rng.integers(0, len(pool), n)], rng.integers(0, classes, n), queries


def duplicated_case(seed, n=40, q=20):
    """Every feature appears twice, with different labels."""
    features, labels, queries = random_case(seed, n // 2, q, dim=4, classes=4)
    return np.concatenate([features, features]), np.concatenate([labels, (labels + 1) % 4]), queries


CASES = {"random": random_case, "quantised": quantised_case, "duplicated": duplicated_case}


# ---------------------------------------------------- equals brute force
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("vote", ["weighted", "majority"])
@pytest.mark.parametrize("k", [1, 2, 5, 20])
def test_audit_equals_brute_force_leave_one_out(case, vote, k):
    features, labels, queries = CASES[case](k)
    memory = memory_of(features, labels)
    assert_audit_is_exact(memory, queries, k, vote)


@pytest.mark.parametrize("vote", ["weighted", "majority"])
@pytest.mark.parametrize("k", [9, 10, 11, 40])  # memory of 10 rows: k = n - 1, n, > n
def test_k_at_or_beyond_the_memory_size(vote, k):
    features, labels, queries = quantised_case(3, n=10, q=15)
    assert_audit_is_exact(memory_of(features, labels), queries, k, vote)
    features, labels, queries = random_case(3, n=10, q=15)
    assert_audit_is_exact(memory_of(features, labels), queries, k, vote)


@pytest.mark.parametrize("temperature", [0.001, 0.02, 1.0, 10.0])
def test_other_temperatures_including_overflow(temperature):
    # at T = 0.001, exp(sim / T) overflows to inf for close rows: inf scores tie, lowest label wins
    features, labels, queries = quantised_case(4)
    assert_audit_is_exact(memory_of(features, labels), queries, 5, "weighted", temperature)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_both_backends(backend):
    features, labels, queries = quantised_case(5)
    assert_audit_is_exact(memory_of(features, labels, backend=backend), queries, 4, "weighted")


@pytest.mark.parametrize("block", [1, 2, 7])
def test_blocks_of_queries_give_the_same_report(block):
    features, labels, queries = random_case(6)
    memory = memory_of(features, labels)
    whole = memory.privacy_report(queries, k=5)
    parts = memory.privacy_report(queries, k=5, block=block)
    np.testing.assert_array_equal(whole.ids, parts.ids)
    np.testing.assert_array_equal(whole.flips, parts.flips)
    assert (whole.changed_queries, whole.other_class_flips) == (parts.changed_queries, parts.other_class_flips)


@pytest.mark.parametrize("threads", [1, 3])
def test_queries_split_across_worker_threads_give_the_brute_force_report(threads):
    # 5,000 queries: the counts of a block are split into three parts across the threads
    import torch

    features, labels, queries = quantised_case(7, n=60, q=5_000)
    memory = memory_of(features, labels)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert_audit_is_exact(memory, queries, 5, "weighted")
    finally:
        torch.set_num_threads(before)


def test_one_row_memory_and_no_queries():
    memory = memory_of([[1.0, 0.0]], [3], ids=[17])
    report = memory.privacy_report([[1.0, 0.0], [0.0, 1.0]], k=5)
    assert report.ids.tolist() == [17] and report.flips.tolist() == [2]
    assert len(memory.privacy_audit(np.zeros((0, 2)))) == 0


def unit(angle_cos: float) -> list[float]:
    return [angle_cos, float(np.sqrt(1 - angle_cos**2))]


def test_the_entering_neighbour_is_the_lower_id_of_a_tie():
    # query [1, 0]; rows: A at 0.9, then two identical rows at 0.5 (ids 3 and 7).
    # k = 1: removing A lets exactly one of the tied rows in: the lower id, 3.
    for label_of_3, label_of_7 in [(1, 2), (2, 1)]:
        memory = memory_of([unit(0.9), unit(0.5), unit(0.5)], [0, label_of_7, label_of_3], ids=[0, 7, 3])
        report = memory.privacy_report([[1.0, 0.0]], k=1, vote="majority")
        assert report.ids.tolist() == [0]
        reduced = memory_of([unit(0.5), unit(0.5)], [label_of_7, label_of_3], ids=[7, 3])
        assert reduced.classify([[1.0, 0.0]], k=1).tolist() == [label_of_3]
        assert_audit_is_exact(memory, [[1.0, 0.0]], 1, "majority")
        assert_audit_is_exact(memory, [[1.0, 0.0]], 2, "weighted")


def test_flip_to_a_third_class_by_removing_a_neighbour_of_another_class():
    # k = 3, T = 0.5: neighbours A (0.9), B (0.85), C (0.84), then C (0.83) enters.
    # Before: A wins. Remove B: C gets two votes and overtakes A. The removed row is
    # not of the predicted class; the released script only looks at rows of that class.
    features = [unit(0.9), unit(0.85), unit(0.84), unit(0.83), unit(-0.9)]
    memory = memory_of(features, [0, 1, 2, 2, 1])
    query = [[1.0, 0.0]]
    assert memory.classify(query, k=3, temperature=0.5).tolist() == [0]
    report = memory.privacy_report(query, k=3, temperature=0.5)
    assert 1 in report.ids.tolist()
    assert report.other_class_flips >= 1
    reduced = memory_of([f for i, f in enumerate(features) if i != 1], [0, 2, 2, 1])
    assert reduced.classify(query, k=3, temperature=0.5).tolist() == [2]
    assert_audit_is_exact(memory, query, 3, "weighted", 0.5)


POOL = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [3, 3, 0], [1, 1, 1], [-1, 0, 1], [1, 2, 0]], np.float32)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(st.tuples(st.integers(0, len(POOL) - 1), st.integers(0, 3)), min_size=1, max_size=14),
    queries=st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=6),
    k=st.integers(1, 16),
    vote=st.sampled_from(["weighted", "majority"]),
    temperature=st.sampled_from([0.07, 0.5, 0.001, 1e15, 2e15, 4e15]),  # huge T: weights 1 + a few ulps
    ids_seed=st.integers(0, 1000),
    backend=st.sampled_from(["faiss", "torch"]),
)
def test_audit_equals_brute_force_on_any_small_memory(rows, queries, k, vote, temperature, ids_seed, backend):
    ids = np.random.default_rng(ids_seed).permutation(100)[: len(rows)]  # ids not in row order
    memory = memory_of(POOL[[r for r, _ in rows]], [label for _, label in rows], ids=ids, backend=backend)
    query_rows = POOL[queries] + np.float32(0.1) * (np.arange(len(queries))[:, None] % 2)
    assert_audit_is_exact(memory, query_rows, k, vote, temperature)


def test_scores_are_summed_in_classifys_order():
    # At T = 2e15 the weights are 1 plus a few rounding steps, so a class score depends on
    # the order its weights are added in: summing the same weights in another order than
    # classify does (best neighbour first) changes which rows are non-private here.
    rows, labels = [2, 6, 4, 4, 0, 0, 6, 2, 4, 5, 3], [2, 1, 0, 0, 1, 0, 2, 2, 0, 2, 2]
    queries = [[1.0, 0.0, 0.0], [3.1, 3.1, 0.1], [1.0, 0.0, 0.0]]
    memory = memory_of(POOL[rows], labels)
    assert_audit_is_exact(memory, np.float32(queries), 10, "weighted", 2e15)


@pytest.mark.slow
def test_audit_equals_brute_force_at_a_larger_size():
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((10, 32))
    labels = rng.integers(0, 10, 1500)
    features = centres[labels] * 0.4 + rng.standard_normal((1500, 32))
    queries = centres[rng.integers(0, 10, 200)] * 0.4 + rng.standard_normal((200, 32))
    memory = memory_of(features, labels)
    for vote in ("weighted", "majority"):
        assert_audit_is_exact(memory, queries, 20, vote)


# ------------------------------------------------------------ the task
@pytest.fixture(scope="module")
def registry():
    from harness.config.registry import load_registry

    return load_registry()


def run_task(registry, tmp_path, **params):
    from harness.runner.context import RunContext
    from harness.runner.cells import Cell, run_cell

    encoder = registry.create("encoder", "rgb")
    task = registry.create("task", "privacy", **params)
    ctx = RunContext(registry=registry, device="cpu", out_dir=tmp_path, progress=False)
    return run_cell(ctx, Cell(encoder, task, "digits", "test-cell"))


def test_privacy_task_on_digits(registry, tmp_path):
    from harness.memory.reference import leave_one_out, report_flips

    records = run_task(registry, tmp_path, k=10)
    assert all(r.status == "ok" for r in records), [r.message for r in records]
    values = {r.metric: r for r in records}
    assert set(values) == {"top1", "non_private_count", "non_private_fraction", "changed_query_fraction"}
    assert values["top1"].value > 80  # RGB pixels classify digits well
    count, fraction = values["non_private_count"], values["non_private_fraction"]
    assert count.headline and fraction.headline and not values["top1"].headline
    assert count.n == 1257 and 0 < count.value < 1257
    assert fraction.value == pytest.approx(100 * count.value / 1257)
    assert count.params == {"k": 10, "vote": "weighted", "temperature": 0.07}

    # the task's count against brute force on a sample of rows (every row would be 1257 rebuilds)
    from harness.memory.files import embed_dataset_split

    features, labels, _ = embed_dataset_split("rgb", "digits", "train", registry, "cpu")
    queries, _, _ = embed_dataset_split("rgb", "digits", "test", registry, "cpu")
    memory = memory_of(features, labels)
    report = memory.privacy_report(queries, k=10)
    assert report.count == count.value
    sample = np.concatenate([report.ids[:8], np.setdiff1d(memory.ids, report.ids)[:8]])
    positions = np.flatnonzero(np.isin(memory.ids, sample))
    assert leave_one_out(memory, queries, k=10, rows=positions) == report_flips(report, memory.ids[positions])


def test_privacy_task_paper_numbers_and_figure(registry, tmp_path):
    import pandas

    from harness_plugins.tasks.privacy import PrivacyTask

    paper = PrivacyTask.paper_numbers()
    assert set(paper.columns) >= {"dataset", "paper_row", "metric", "value"}
    assert len(paper[(paper.dataset == "imagenet") & (paper.metric == "non_private_count")]) == 8
    assert float(paper[paper.paper_row == "ImageNet"].value.iloc[0]) == 7798

    records = run_task(registry, tmp_path / "a", k=5)
    other = run_task(registry, tmp_path / "b", k=5, vote="majority")
    for r in other:
        r.encoder = "rgb-majority"
    frame = pandas.DataFrame([r.model_dump() for r in records + other])
    paths = PrivacyTask.figures(frame, tmp_path)
    assert len(paths) == 1 and paths[0].suffix == ".png" and paths[0].stat().st_size > 1000
    assert PrivacyTask.figures(frame[frame.metric == "top1"], tmp_path) == []


def test_leaderboard_shows_the_privacy_table(registry, tmp_path):
    from harness.results.leaderboard import render_leaderboard
    from harness.results.store import ResultStore

    ResultStore(tmp_path).append(run_task(registry, tmp_path, k=5))
    board = render_leaderboard(tmp_path, registry=registry).read_text()
    assert "non_private_fraction" in board and "privacy_nonprivate_vs_accuracy.png" in board


# ------------------------------------------------------------- unlearning
@pytest.fixture(scope="module")
def built(tmp_path_factory, registry):
    from harness.memory.files import build_memory

    folder = tmp_path_factory.mktemp("memory")
    summary = build_memory("rgb", "digits", "train", folder / "digits.npz", registry=registry, device="cpu")
    return folder, summary


def test_build_memory_records_its_provenance(built):
    folder, summary = built
    assert summary["rows"] == 1257 and summary["dim"] == 768
    memory = VisualMemory.load(summary["path"])
    assert memory.metadata["encoder"] == "rgb" and memory.metadata["dataset"] == "digits"
    assert memory.metadata["split"] == "train" and memory.metadata["encoder_group"] == "white-box"
    np.testing.assert_array_equal(memory.ids, np.arange(1257))


def test_remove_ids_and_verify(built, registry):
    from harness.memory.files import remove_ids, verify_unlearning

    folder, summary = built
    ids_file = folder / "forget.txt"
    ids_file.write_text("# rows to forget\n5\n17\n\n17\n99999  # not in the memory\n1200\n")
    result = remove_ids(summary["path"], ids_file, folder / "forgotten.npz")
    assert result["removed"] == 3 and result["requested"] == 4 and result["missing"] == [99999]
    assert (result["rows_before"], result["rows_after"]) == (1257, 1254)
    assert result["seconds_to_unlearn"] >= 0 and "no retraining" in result["note"]
    reduced = VisualMemory.load(folder / "forgotten.npz")
    assert len(reduced) == 1254 and not np.isin([5, 17, 1200], reduced.ids).any()
    assert reduced.metadata["unlearned"][-1]["removed"] == 3

    check = verify_unlearning(summary["path"], ids_file, registry=registry, device="cpu")
    assert check["identical"] and check["differing_predictions"] == 0
    assert check["num_queries"] == 540 and check["removed"] == 3
    assert check["seconds_to_unlearn"] > 0 and check["seconds_to_rebuild"] > 0
    # removing the non-private rows of an audit changes predictions, and still equals a rebuild
    audit_ids = VisualMemory.load(summary["path"]).privacy_audit(np.load(_queries_file(folder, registry)), k=10)
    check = verify_unlearning(summary["path"], audit_ids, _queries_file(folder, registry), k=10)
    assert check["identical"]


def _queries_file(folder: Path, registry) -> Path:
    from harness.memory.files import embed_dataset_split

    path = folder / "queries.npy"
    if not path.exists():
        features, _, _ = embed_dataset_split("rgb", "digits", "test", registry, "cpu")
        np.save(path, features)
    return path


def test_audit_function(built, registry):
    from harness.memory.files import audit, read_ids

    folder, summary = built
    result = audit(summary["path"], k=10, out_path=folder / "nonprivate.txt", registry=registry, device="cpu")
    ids = read_ids(result["path"])
    assert len(ids) == result["non_private_count"] > 0
    np.testing.assert_array_equal(ids, result["report"].ids)
    assert result["num_queries"] == 540 and result["top1"] > 80
    from_file = audit(summary["path"], _queries_file(folder, registry), k=10)
    assert from_file["non_private_count"] == result["non_private_count"]


def test_input_errors(built, tmp_path):
    from harness.memory.files import audit, read_ids, remove_ids

    folder, summary = built
    bad = tmp_path / "bad.txt"
    bad.write_text("3\nfour\n")
    with pytest.raises(HarnessError, match=r"bad.txt:2: expected one integer id per line"):
        read_ids(bad)
    with pytest.raises(HarnessError, match="no such ids file"):
        remove_ids(summary["path"], tmp_path / "absent.txt", tmp_path / "out.npz")
    plain = VisualMemory(768, device="cpu")
    plain.add(np.ones((3, 768)), [0, 1, 2])
    plain.save(tmp_path / "plain.npz")
    with pytest.raises(HarnessError, match="does not record its encoder"):
        audit(tmp_path / "plain.npz")
    with pytest.raises(HarnessError, match="no split 'validation'"):
        audit(summary["path"], "validation")


def test_memory_command_line_in_process(built, tmp_path, capsys):
    from harness.memory.cli import add_memory_parser

    folder, summary = built
    parser = argparse.ArgumentParser(prog="harness")
    parser.add_argument("--registry")
    add_memory_parser(parser.add_subparsers(dest="command", required=True))
    (tmp_path / "ids.txt").write_text("1\n2\n3\n")
    for argv in (
        ["memory", "build", "rgb", "digits", "--out", str(tmp_path / "m.npz"), "--device", "cpu"],
        ["memory", "remove", str(tmp_path / "m.npz"), "--ids", str(tmp_path / "ids.txt"),
         "--out", str(tmp_path / "r.npz"), "--verify", "--k", "5"],
        ["memory", "audit", str(tmp_path / "r.npz"), "--k", "5", "--vote", "majority", "--out", str(tmp_path / "np.txt")],
    ):
        args = parser.parse_args(argv)
        assert args.func(args) == 0, argv
    out = capsys.readouterr().out
    assert "removed: 3" in out and "identical: True" in out and "non_private_count:" in out
    count, size = (int(re.search(rf"^{key}: (\d+)$", out, re.M).group(1)) for key in ("non_private_count", "memory_size"))
    assert f"\nnon_private_fraction: {100 * count / size:.4g} % of the memory\n" in out  # a percentage, as it says
    assert (tmp_path / "np.txt").is_file()


def test_memory_command_line_as_a_user_runs_it(built, tmp_path):
    from helpers import cli

    folder, summary = built
    (tmp_path / "ids.txt").write_text("0\n")
    removed = cli("memory", "remove", summary["path"], "--ids", str(tmp_path / "ids.txt"), "--out", str(tmp_path / "r.npz"))
    assert removed.returncode == 0, removed.stderr
    assert "removed: 1" in removed.stdout
    missing = cli("memory", "audit", str(tmp_path / "absent.npz"))
    assert missing.returncode == 2 and "no such memory file" in missing.stderr


# -------------------------------------------------------------- benchmark
def test_measure_memory_small():
    from harness.bench.memory import measure_memory

    rows = list(measure_memory(sizes=(400, 800), queries=60, dim=16, device="cpu", brute_force_rows=6, brute_force_max_size=400))
    assert [r["memory"] for r in rows] == [400, 800]
    first, second = rows
    assert first["identical_on_sample"] is True and first["speedup_vs_brute_force"] > 1
    assert first["brute_force_rows_measured"] == 6
    assert "speedup_vs_brute_force" not in second
    assert all(r["classify_queries_per_s"] > 0 and r["audit_queries_per_s"] > 0 for r in rows)


def test_measure_memory_with_the_torch_engine_compares_faiss_on_the_cpu():
    """With the torch engine (the GPU's), faiss on the CPU searches the same rows: its
    neighbours of every compared query are the torch engine's, and it gives a rate."""
    pytest.importorskip("faiss")
    from harness.bench.memory import measure_memory

    (row,) = measure_memory(sizes=(3000,), queries=200, dim=16, device="cpu", backend="torch", cpu_sample=120, brute_force_max_size=0)
    assert row["identical_to_faiss_cpu"] is True and row["compared_queries"] == 120
    assert row["faiss_cpu_classify_queries_per_s"] > 0 and row["ratio_to_faiss_cpu"] > 0
