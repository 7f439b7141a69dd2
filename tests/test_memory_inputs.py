"""The visual memory with input it must refuse or must not be fooled by: links to the
memory file, arrays in any memory layout, damaged saved files, ids and labels that are
not integers, arrays changed by the caller afterwards, and the file mode it writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.errors import HarnessError
from harness.memory import VisualMemory
from test_reliability_memory import files  # noqa: F401  (the 12-row memory file, queries and ids file naming rows 3 and 4)

DIM = 8
ROWS = 12
FORGET = [3, 4]


def normalised(x: np.ndarray) -> np.ndarray:
    """The reference normalisation: numpy on C-ordered float32 rows."""
    x = np.ascontiguousarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def brute_force_search(features: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int):
    """Every row scored in float64, ordered by (similarity desc, id asc)."""
    sims = normalised(queries).astype(np.float64) @ features.astype(np.float64).T
    order = np.lexsort((np.broadcast_to(ids, sims.shape), -sims), axis=-1)[:, :k]
    return ids[order]


def remove(memory: Path, files: dict[str, Path], out: Path) -> int:
    return main(
        ["memory", "remove", str(memory), "--ids", str(files["ids"]), "--out", str(out), "--verify",
         "--queries", str(files["queries"]), "--k", "3", "--device", "cpu"]
    )


def ids_in(path: Path) -> list[int]:
    return VisualMemory.load(path, device="cpu").ids.tolist()


# ------------------------------------------------------------- links to the memory file
@pytest.mark.parametrize("given", ["real file", "symlink"])
def test_unlearning_through_a_symlink_removes_the_rows_from_the_file_it_points_to(files, tmp_path, given):
    link = tmp_path / "sym.npz"
    link.symlink_to(files["memory"])
    memory = files["memory"] if given == "real file" else link
    assert remove(memory, files, link) == 0
    assert link.is_symlink() and link.resolve() == files["memory"].resolve()
    expected = np.setdiff1d(np.arange(ROWS), FORGET).tolist()
    assert ids_in(files["memory"]) == expected and ids_in(link) == expected


def test_saving_through_a_symlink_replaces_the_file_it_points_to(tmp_path):
    memory = VisualMemory(DIM, device="cpu")
    memory.add(np.eye(DIM), np.arange(DIM))
    real, link = tmp_path / "real.npz", tmp_path / "link.npz"
    memory.save(real)
    link.symlink_to(real)
    memory.remove([0])
    memory.save(link)
    assert link.is_symlink() and ids_in(real) == list(range(1, DIM))


@pytest.mark.parametrize("out", ["the other name", "the memory's own name"])
def test_in_place_unlearning_of_a_file_with_other_hard_links_is_refused(files, tmp_path, capsys, out):
    other = tmp_path / "hard.npz"
    os.link(files["memory"], other)
    target = other if out == "the other name" else files["memory"]
    assert remove(files["memory"], files, target) == 2
    err = capsys.readouterr().err
    assert str(target) in err and "hard links" in err and "rows being removed" in err
    assert ids_in(files["memory"]) == ids_in(other) == list(range(ROWS))


def test_unlearning_into_a_new_file_leaves_a_hard_linked_original_alone(files, tmp_path):
    os.link(files["memory"], tmp_path / "hard.npz")
    assert remove(files["memory"], files, tmp_path / "reduced.npz") == 0
    assert ids_in(tmp_path / "reduced.npz") == np.setdiff1d(np.arange(ROWS), FORGET).tolist()


def test_a_new_memory_file_gets_the_umasks_mode_and_a_replaced_one_keeps_its_mode(tmp_path):
    memory = VisualMemory(DIM, device="cpu")
    memory.add(np.eye(DIM), np.arange(DIM))
    previous = os.umask(0o027)
    try:
        memory.save(tmp_path / "new.npz")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "new.npz").st_mode) == 0o640
    os.chmod(tmp_path / "new.npz", 0o604)
    memory.save(tmp_path / "new.npz")
    assert stat.S_IMODE(os.stat(tmp_path / "new.npz").st_mode) == 0o604


# ------------------------------------------------------------------- memory layout
def test_rows_in_any_memory_layout_are_stored_as_the_same_bits():
    rng = np.random.default_rng(1)
    values = rng.standard_normal((64, 384)).astype(np.float32)
    labels = rng.integers(0, 4, 64)
    layouts = {
        "C": values,
        "F": np.asfortranarray(values),
        "transposed tensor": torch.from_numpy(np.ascontiguousarray(values.T)).T,
    }
    memories = {}
    for name, features in layouts.items():
        memories[name] = VisualMemory(384, device="cpu")
        memories[name].add(features, labels)
    queries = rng.standard_normal((10, 384)).astype(np.float32)
    for name, memory in memories.items():
        np.testing.assert_array_equal(memory.features.view(np.uint32), normalised(values).view(np.uint32), err_msg=name)
        _, ids = memory.search(np.asfortranarray(queries), 5)
        np.testing.assert_array_equal(ids, brute_force_search(normalised(values), memory.ids, queries, 5), err_msg=name)


@pytest.mark.parametrize(
    "scale, dtype", [(1e30, np.float32), (1e20, np.float32), (1e-20, np.float32), (1e-30, np.float32),
                     (1e300, np.float64), (1e39, np.float64), (1e-50, np.float64), (1e-300, np.float64)]
)
def test_rows_of_any_scale_are_stored_unit_length_like_the_same_rows_at_scale_one(scale, dtype):
    """float32 squares overflow beyond about 1e19 and underflow below about 1e-19, and
    float64 values beyond float32's range overflow or vanish when cast: the reference here
    is the float64 norm of the unscaled rows."""
    rng = np.random.default_rng(3)
    values = rng.standard_normal((20, 16))
    memory = VisualMemory(16, device="cpu")
    memory.add((values * scale).astype(dtype), np.zeros(20, np.int64))
    reference = values / np.linalg.norm(values, axis=1, keepdims=True)
    np.testing.assert_allclose(memory.features, reference, atol=2e-7)
    np.testing.assert_allclose(np.linalg.norm(memory.features.astype(np.float64), axis=1), 1.0, atol=1e-6)
    memory.add(np.zeros((1, 16), np.float32), [0])  # an all-zero row stays zero
    assert not memory.features[-1].any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_tensors_of_any_float_dtype_are_accepted_as_their_float32_values(dtype):
    rng = np.random.default_rng(4)
    tensor = torch.from_numpy(rng.standard_normal((6, 8))).to(dtype)
    memory = VisualMemory(8, device="cpu")
    memory.add(tensor, np.arange(6))
    widened = tensor.double().numpy()
    np.testing.assert_allclose(memory.features, widened / np.linalg.norm(widened, axis=1, keepdims=True), atol=1e-6)
    assert memory.classify(tensor, k=1).tolist() == list(range(6))
    from harness.memory.files import audit

    summary = audit(memory, queries=tensor, k=2)  # the file-level audit takes the tensor as the memory does
    assert summary["num_queries"] == 6 and summary["non_private_count"] == len(memory.privacy_audit(tensor, k=2))
    with pytest.raises(HarnessError, match=r"queries must be real numbers, got complex"):
        memory.classify(tensor.to(torch.complex64), k=1)


def test_classify_with_labels_up_to_the_int64_limit_equals_the_same_memory_with_small_labels():
    """The vote's scores take one column per class present, not per label value up to the
    largest: labels near 2**63 classify as their ranks 0..4 do, ties included."""
    rng = np.random.default_rng(5)
    features, queries = rng.standard_normal((200, 8)), rng.standard_normal((50, 8))
    ranks = rng.integers(0, 5, 200)
    huge = np.array([0, 7, 10**12, 2**62, 2**63 - 1])
    small, large = VisualMemory(8, device="cpu"), VisualMemory(8, device="cpu")
    small.add(features, ranks)
    large.add(features, huge[ranks])
    duplicate = features[:1]  # two equal rows of different labels: a tie between classes
    small.add(np.repeat(duplicate, 2, axis=0), [4, 3])
    large.add(np.repeat(duplicate, 2, axis=0), huge[[4, 3]])
    for vote in ("weighted", "majority"):
        for k in (1, 2, 7):
            expected = small.classify(np.vstack([queries, duplicate]), k=k, vote=vote)
            got = large.classify(np.vstack([queries, duplicate]), k=k, vote=vote)
            np.testing.assert_array_equal(got, huge[expected], err_msg=f"{vote} k={k}")


def test_duplicates_added_in_different_layouts_tie_and_go_to_the_lower_id():
    rng = np.random.default_rng(2)
    values = rng.standard_normal((32, 384)).astype(np.float32)
    memory = VisualMemory(384, device="cpu")
    memory.add(np.asfortranarray(values), np.zeros(32, np.int64))
    memory.add(values, np.ones(32, np.int64))
    sims, ids = memory.search(values, 2)
    np.testing.assert_array_equal(sims[:, 0], sims[:, 1])
    np.testing.assert_array_equal(ids, np.stack([np.arange(32), np.arange(32) + 32], axis=1))
    np.testing.assert_array_equal(memory.classify(values, k=2), np.zeros(32, np.int64))


# --------------------------------------------------------------- damaged saved files
def saved(tmp_path: Path, **changes: object) -> Path:
    rows = normalised(np.random.default_rng(3).standard_normal((4, DIM)))
    arrays = {"features": rows, "labels": np.array([0, 1, 0, 1]), "ids": np.arange(4), "next_id": np.int64(4)}
    arrays.update(changes)
    path = tmp_path / "damaged.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"ids": np.array([0, 1, 1, 2])}, "ids must be unique; id 1 appears 2 times"),
        ({"next_id": np.int64(3)}, "next_id 3 is not above every id"),
        ({"next_id": np.array([4, 5])}, "next_id must be one integer"),
        ({"next_id": np.float64(4.0)}, "next_id must be integers"),
        ({"features": np.ones((4, DIM), np.float32)}, "features must be L2-normalised rows"),
        ({"features": np.full((4, DIM), np.nan, np.float32)}, "NaN or infinite"),
        ({"features": np.zeros((4, 0), np.float32)}, "dim >= 1"),
        ({"labels": np.array([0, -1, 0, 1])}, "labels must be non-negative"),
        ({"labels": np.array([[0, 1], [0, 1]])}, "labels and ids must be 1-D"),
        ({"labels": np.array([0.0, 1.0, 0.0, 1.0])}, "labels must be integers"),
        ({"ids": np.array([0, 1, 2])}, "4 feature rows, 4 labels and 3 ids"),
    ],
)
def test_a_damaged_memory_file_is_refused_with_its_name(tmp_path, changes, reason):
    path = saved(tmp_path, **changes)
    with pytest.raises(HarnessError) as error:
        VisualMemory.load(path, device="cpu")
    message = str(error.value)
    assert message.startswith(f"{path}: ") and reason in message and "damaged" in message


def test_a_valid_hand_written_memory_file_loads(tmp_path):
    memory = VisualMemory.load(saved(tmp_path, next_id=np.int64(10)), device="cpu")
    assert memory.ids.tolist() == [0, 1, 2, 3]
    assert memory.add(np.eye(DIM)[:1], [2]).tolist() == [10]


# ------------------------------------------------------------- ids, labels and k
@pytest.fixture
def memory() -> VisualMemory:
    memory = VisualMemory(DIM, device="cpu")
    memory.add(np.random.default_rng(4).standard_normal((6, DIM)), [0, 1, 2, 0, 1, 2])
    return memory


@pytest.mark.parametrize(
    "call, reason",
    [
        (lambda m: m.remove([1.9]), "remove: ids must be integers"),
        (lambda m: m.remove(["x"]), "remove: ids must be integers"),
        (lambda m: m.remove(None), "remove: ids must be integers"),
        (lambda m: m.remove([True]), "remove: ids must be integers"),
        (lambda m: m.remove([2**63]), "remove: ids must fit in int64"),
        (lambda m: m.remove([-1, 2**63]), "remove: ids must fit in int64"),
        (lambda m: m.remove(torch.tensor([1.0])), "remove: ids must be integers"),
        (lambda m: m.add(np.ones((2, DIM)), [0.9, 1.5]), "add: labels must be integers"),
        (lambda m: m.add(np.ones((1, DIM)), ["cat"]), "add: labels must be integers"),
        (lambda m: m.add(np.ones((1, DIM)), [0], ids=np.array([2**64 - 1], np.uint64)), "add: ids must fit in int64"),
        (lambda m: m.add(np.ones((1, DIM)), [0], ids=[2**63 - 1]), "add: ids must be below"),
        (lambda m: m.labels_of([0.5]), "labels_of: ids must be integers"),
        (lambda m: m.search(np.ones((1, DIM)), 2.7), "k must be a positive integer, got 2.7"),
        (lambda m: m.classify(np.ones((1, DIM)), k="3"), "k must be a positive integer"),
        (lambda m: m.privacy_report(np.ones((3, DIM)), k=2, block=-1), "block must be at least 1, got -1"),
        (lambda m: m.privacy_report(np.ones((3, DIM)), k=2, block=0), "block must be at least 1, got 0"),
        (lambda m: m.privacy_report(np.ones((3, DIM)), k=2, block=1.5), "block must be a positive integer"),
    ],
)
def test_non_integer_and_out_of_range_ids_labels_k_and_block_are_refused(memory, call, reason):
    before = (memory.features, memory.labels, memory.ids)
    with pytest.raises(HarnessError, match=reason):
        call(memory)
    for was, now in zip(before, (memory.features, memory.labels, memory.ids)):
        np.testing.assert_array_equal(was, now)


def test_integer_ids_labels_and_k_of_any_integer_type_are_accepted(memory):
    assert memory.remove(np.array([1], np.uint8)) == 1
    assert memory.remove(torch.tensor([2])) == 1
    assert memory.remove([]) == 0 and memory.remove(np.array([], np.float64)) == 0
    assert memory.remove([-5, 2**62]) == 0
    added = memory.add(np.ones((2, DIM)), torch.tensor([3, 4], dtype=torch.int32), ids=np.array([20, 21], np.uint64))
    assert added.tolist() == [20, 21] and memory.labels_of([20, 21]).tolist() == [3, 4]
    _, ids = memory.search(np.ones((1, DIM)), np.int64(2))
    assert ids.tolist() == [[20, 21]]


def test_an_audit_in_blocks_of_one_query_counts_like_the_default(memory):
    queries = np.random.default_rng(5).standard_normal((7, DIM))
    default = memory.privacy_report(queries, k=2)
    one_by_one = memory.privacy_report(queries, k=2, block=1)
    np.testing.assert_array_equal(default.ids, one_by_one.ids)
    np.testing.assert_array_equal(default.flips, one_by_one.flips)


# --------------------------------------------------------- arrays the caller changes
def test_from_arrays_copies_what_it_is_given():
    rng = np.random.default_rng(6)
    features = normalised(rng.standard_normal((20, DIM)))
    labels, ids = rng.integers(0, 3, 20), np.arange(20) * 2
    kept = VisualMemory.from_arrays(features.copy(), labels.copy(), ids.copy(), device="cpu")
    memory = VisualMemory.from_arrays(features, labels, ids, device="cpu")
    features[:] = features[::-1]
    labels[:] = 0
    ids[:] = ids[::-1]
    np.testing.assert_array_equal(memory.features, kept.features)
    np.testing.assert_array_equal(memory.labels, kept.labels)
    np.testing.assert_array_equal(memory.ids, kept.ids)
    queries = rng.standard_normal((5, DIM))
    np.testing.assert_array_equal(memory.search(queries, 4)[1], kept.search(queries, 4)[1])
    np.testing.assert_array_equal(memory.classify(queries, k=4), kept.classify(queries, k=4))


def test_from_arrays_refuses_a_next_id_that_is_not_above_every_id():
    with pytest.raises(HarnessError, match="from_arrays: next_id 1 is not above every id"):
        VisualMemory.from_arrays(np.eye(DIM)[:3], [0, 1, 2], [0, 1, 5], next_id=1)
