"""The visual memory: kNN rules against independent references, exact unlearning,
backend agreement under exact ties, errors, persistence."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import HarnessError
from harness.memory import VisualMemory
from harness.memory.engines import TorchEngine, float32_error
from harness.memory.exact import exact_neighbours, pair_similarities

BACKENDS = ("faiss", "torch")


def normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def random_data(seed: int, n: int = 300, q: int = 60, dim: int = 16, classes: int = 5):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n, dim)).astype(np.float32),
        rng.integers(0, classes, n),
        rng.standard_normal((q, dim)).astype(np.float32),
    )


def quantised_data(seed: int, n: int = 200, q: int = 40, dim: int = 4, classes: int = 4):
    """Features in {-1, 0, 1}^dim with many duplicated rows: similarities tie exactly."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(-1, 2, (12, dim)).astype(np.float32)
    pool[np.abs(pool).sum(1) == 0, 0] = 1
    features = pool[rng.integers(0, len(pool), n)]
    queries = rng.integers(-1, 2, (q, dim)).astype(np.float32)
    return features, rng.integers(0, classes, n), queries


def memory_of(features, labels, ids=None, backend="faiss") -> VisualMemory:
    memory = VisualMemory(features.shape[1], device="cpu", backend=backend)
    memory.add(features, labels, ids)
    return memory


def reference_neighbours(memory: VisualMemory, queries: np.ndarray, k: int):
    """By hand: every row scored, ordered by (similarity desc, id asc)."""
    q = normalised(queries)
    rows = memory.features
    positions = np.broadcast_to(np.arange(len(rows)), (len(q), len(rows)))
    sims = pair_similarities(q, rows, positions)
    order = np.lexsort((np.broadcast_to(memory.ids, sims.shape), -sims), axis=-1)[:, :k]
    return np.take_along_axis(sims, order, 1), memory.ids[order]


def assert_same_answers(a: VisualMemory, b: VisualMemory, queries: np.ndarray, ks=(1, 3, 10)) -> None:
    for k in ks:
        if k <= len(a):
            sa, ia = a.search(queries, k)
            sb, ib = b.search(queries, k)
            np.testing.assert_array_equal(ia, ib)
            np.testing.assert_array_equal(sa, sb)
        for vote in ("weighted", "majority"):
            np.testing.assert_array_equal(a.classify(queries, k, vote), b.classify(queries, k, vote))
            np.testing.assert_array_equal(a.class_scores(queries, k, vote), b.class_scores(queries, k, vote))


# ------------------------------------------------------------------ kNN rules
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 4, 7, 20])
def test_majority_vote_equals_scikit_learn(seed, k):
    from sklearn.neighbors import KNeighborsClassifier

    features, labels, queries = random_data(seed)
    memory = memory_of(features, labels)
    reference = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(normalised(features).astype(np.float64), labels)
    expected = reference.predict(normalised(queries).astype(np.float64))
    np.testing.assert_array_equal(memory.classify(queries, k=k, vote="majority"), expected)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_weighted_vote_is_dinos_rule(seed, k):
    features, labels, queries = random_data(seed, classes=7)
    memory = memory_of(features, labels)
    fn, qn = normalised(features).astype(np.float64), normalised(queries).astype(np.float64)
    sims = qn @ fn.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    scores = np.zeros((len(qn), 7))
    for i in range(len(qn)):
        for j in top[i]:
            scores[i, labels[j]] += np.exp(sims[i, j] / 0.07)
    np.testing.assert_allclose(memory.class_scores(queries, k=k, num_classes=7), scores, rtol=1e-9)
    np.testing.assert_array_equal(memory.classify(queries, k=k), scores.argmax(1))


def test_ties_in_vote_go_to_the_lowest_label():
    # two neighbours at the same similarity with labels 3 and 1: both votes tie
    memory = memory_of(np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]), [3, 1, 0])
    for vote in ("weighted", "majority"):
        assert memory.classify([[1.0, 0.0]], k=2, vote=vote).tolist() == [1]


def test_k_larger_than_memory_votes_over_all_rows():
    features, labels, queries = random_data(3, n=6)
    memory = memory_of(features, labels)
    for vote in ("weighted", "majority"):
        np.testing.assert_array_equal(memory.classify(queries, k=50, vote=vote), memory.classify(queries, k=6, vote=vote))


# --------------------------------------------------------- exact unlearning
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make", [random_data, quantised_data])
def test_remove_equals_a_memory_built_without_those_ids(backend, make):
    features, labels, queries = make(4)
    memory = memory_of(features, labels, backend=backend)
    memory.search(queries, 5)  # build the index before removing
    gone = np.random.default_rng(0).choice(len(features), 60, replace=False)
    assert memory.remove(gone) == 60
    assert memory.remove(gone) == 0  # already gone
    keep = np.setdiff1d(np.arange(len(features)), gone)
    rebuilt = memory_of(features[keep], labels[keep], ids=keep, backend=backend)
    assert_same_answers(memory, rebuilt, queries)
    assert set(memory.ids.tolist()) == set(keep.tolist())


def test_remove_then_add_keeps_ids_unique():
    features, labels, _ = random_data(5, n=10)
    memory = memory_of(features, labels)
    memory.remove([9])
    new = memory.add(features[:1], labels[:1])
    assert new.tolist() == [10]  # ids are never reused
    with pytest.raises(HarnessError, match="unique"):
        memory.add(features[:1], labels[:1], ids=[3])


# ------------------------------------------------------ backends and ties
@pytest.mark.parametrize("make", [random_data, quantised_data])
@pytest.mark.parametrize("k", [1, 5, 20, 200])
def test_backends_agree_exactly_and_match_the_reference(make, k):
    features, labels, queries = make(6)
    faiss_memory = memory_of(features, labels, backend="faiss")
    torch_memory = memory_of(features, labels, backend="torch")
    fs, fi = faiss_memory.search(queries, k)
    ts, ti = torch_memory.search(queries, k)
    np.testing.assert_array_equal(fi, ti)
    np.testing.assert_array_equal(fs, ts)
    rs, ri = reference_neighbours(faiss_memory, queries, k)
    np.testing.assert_array_equal(fi, ri)
    np.testing.assert_array_equal(fs, rs.astype(np.float32))
    # best first, and among equal similarities the lower id first
    assert (np.diff(fs, axis=1) <= 0).all()
    same = np.diff(fs, axis=1) == 0
    assert (np.diff(fi, axis=1)[same] > 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_tie_group_wider_than_the_candidate_list_gives_the_lowest_ids(backend):
    # 500 identical rows (shuffled ids) and a few worse ones: the k nearest are the k lowest ids
    rng = np.random.default_rng(7)
    features = np.concatenate([np.tile([[1.0, 1.0, 0.0]], (500, 1)), rng.standard_normal((50, 3)) - [3, 3, 0]])
    ids = rng.permutation(10_000)[:550]
    memory = memory_of(features, np.zeros(550, int), ids=ids, backend=backend)
    sims, found = memory.search([[1.0, 1.0, 0.0]], 37)
    np.testing.assert_array_equal(found[0], np.sort(ids[:500])[:37])
    assert (sims == sims[0, 0]).all()


def test_duplicated_rows_with_different_labels():
    row = np.array([[0.6, 0.8]])
    memory = memory_of(np.repeat(row, 4, 0), [2, 0, 1, 0], ids=[40, 30, 10, 20])
    sims, ids = memory.search(row, 4)
    assert ids.tolist() == [[10, 20, 30, 40]]
    assert memory.classify(row, k=1).tolist() == [1]  # id 10 wins the tie, its label is 1
    assert memory.classify(row, k=3, vote="majority").tolist() == [0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_answers_do_not_depend_on_the_search_chunks_or_the_rescoring_threads(backend):
    # 9,000 queries span three search chunks; exact ties leave some candidate lists open,
    # so those queries are searched again, wider, while other chunks are re-scored
    import torch

    features, labels, queries = quantised_data(11, n=400, q=9_000)
    memory = memory_of(features, labels, backend=backend)
    reference_sims, reference_ids = reference_neighbours(memory, queries, 20)
    threads = torch.get_num_threads()
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            sims, ids = memory.search(queries, 20)
            np.testing.assert_array_equal(ids, reference_ids)
            np.testing.assert_array_equal(sims, reference_sims.astype(np.float32))
            np.testing.assert_array_equal(memory.classify(queries, k=20), memory.classify(queries[::-1], k=20)[::-1])
    finally:
        torch.set_num_threads(threads)


class Tf32Emulation(TorchEngine):
    """The torch engine as it searches on a GPU, on the CPU: every input of the matmul cut
    to TF32's 10 mantissa bits (truncated, the larger of TF32's two conversion errors),
    exact products summed in float32. `claims_float32` makes it promise float32's error
    instead, to show that the data below need TF32's margin."""

    def __init__(self, dim: int, claims_float32: bool = False) -> None:
        super().__init__(dim, "cpu")
        self.tf32 = True
        self.claims_float32 = claims_float32

    def error(self, dim: int) -> float:
        return float32_error(dim) if self.claims_float32 else super().error(dim)

    def _similarities(self, queries, rows):
        import torch

        def truncated(x):
            return (x.contiguous().view(torch.int32) & ~((1 << 13) - 1)).view(torch.float32)

        return truncated(queries) @ truncated(rows).T


def test_tf32_candidates_with_tf32s_margin_give_the_exact_neighbours():
    """Rows in tight clusters, so many similarities near the k-th differ by less than
    TF32's error: with the margin of `tf32_error` every answer equals the by-hand
    reference; promising float32's error instead loses true neighbours."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((5, 384)).astype(np.float32)
    rows = normalised(centres[rng.integers(0, 5, 3000)] + 0.02 * rng.standard_normal((3000, 384)).astype(np.float32))
    queries = normalised(centres[rng.integers(0, 5, 300)] + 0.02 * rng.standard_normal((300, 384)).astype(np.float32))
    ids = np.arange(len(rows))
    every = pair_similarities(queries, rows, np.broadcast_to(ids, (len(queries), len(rows))))
    reference = np.lexsort((np.broadcast_to(ids, every.shape), -every), axis=-1)[:, :10]
    answers = {}
    for claims_float32 in (False, True):
        engine = Tf32Emulation(384, claims_float32)
        engine.add(rows)
        sims, positions = exact_neighbours(engine, rows, ids, queries, 10)
        answers[claims_float32] = (positions != reference).any(1).sum()
        if not claims_float32:
            np.testing.assert_array_equal(sims, np.take_along_axis(every, reference, 1))
    assert answers[False] == 0 and answers[True] > 0, answers


def test_auto_backend_searches_with_torch_on_a_gpu_that_faiss_cannot_use(monkeypatch):
    """`auto` keeps faiss, except on a CUDA device with faiss-cpu installed: there the torch
    engine searches on the GPU (nothing touches the device before the first search)."""
    import faiss

    assert VisualMemory(4, device="cpu").backend == "faiss"
    monkeypatch.delattr(faiss, "StandardGpuResources", raising=False)
    assert VisualMemory(4, device="cuda").backend == "torch"
    assert VisualMemory(4, device="cuda:1", backend="faiss").backend == "faiss"
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    assert VisualMemory(4, device="cuda").backend == "faiss"


def test_similarity_of_a_pair_does_not_depend_on_its_company():
    features, _, queries = random_data(8, n=500, dim=384)
    rows = normalised(features)
    q = normalised(queries[:7])
    rng = np.random.default_rng(0)
    alone = pair_similarities(q, rows, np.arange(500)[None].repeat(7, 0))
    for width in (1, 3, 29, 130):
        positions = np.stack([rng.permutation(500)[:width] for _ in range(7)])
        got = pair_similarities(q, rows, positions)
        np.testing.assert_array_equal(got, np.take_along_axis(alone, positions, 1))


# -------------------------------------------------------------------- errors
def test_search_with_k_larger_than_the_memory_is_a_clear_error():
    features, labels, queries = random_data(9, n=5)
    memory = memory_of(features, labels)
    with pytest.raises(HarnessError, match=r"k=6 is larger than the memory \(5 rows\)"):
        memory.search(queries, 6)
    with pytest.raises(HarnessError, match="at least 1"):
        memory.search(queries, 0)


def test_empty_memory_is_a_clear_error():
    memory = VisualMemory(4, device="cpu")
    for call in (
        lambda: memory.search(np.ones((2, 4)), 1),
        lambda: memory.classify(np.ones((2, 4))),
        lambda: memory.class_scores(np.ones((2, 4))),
        lambda: memory.privacy_audit(np.ones((2, 4))),
    ):
        with pytest.raises(HarnessError, match="empty"):
            call()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_and_queries_are_clear_errors(bad):
    features, labels, queries = random_data(10, n=20, dim=4)
    features[3, 1] = bad
    with pytest.raises(HarnessError, match=r"NaN or infinite.*rows \[3\]"):
        memory_of(features, labels)
    memory = memory_of(np.nan_to_num(features, posinf=1, neginf=-1, nan=0), labels)
    queries[1, 0] = bad
    with pytest.raises(HarnessError, match="queries contain NaN or infinite"):
        memory.classify(queries)


def test_other_input_errors():
    memory = memory_of(*random_data(11, n=20, dim=4)[:2])
    with pytest.raises(HarnessError, match=r"shape \[n, 4\]"):
        memory.search(np.ones((2, 5)), 1)
    with pytest.raises(HarnessError, match="vote must be"):
        memory.classify(np.ones((2, 4)), vote="soft")
    with pytest.raises(HarnessError, match="temperature"):
        memory.classify(np.ones((2, 4)), temperature=0)
    with pytest.raises(HarnessError, match="labels"):
        memory.add(np.ones((2, 4)), [0])
    with pytest.raises(HarnessError, match="non-negative"):
        memory.add(np.ones((1, 4)), [-1])
    with pytest.raises(HarnessError, match="not in the memory"):
        memory.labels_of([999])
    with pytest.raises(HarnessError, match="L2-normalised"):
        VisualMemory.from_arrays(np.ones((2, 4)), [0, 1], [0, 1])


def test_no_queries_give_empty_answers():
    memory = memory_of(*random_data(12, n=20, dim=4)[:2])
    for backend in BACKENDS:
        memory = memory_of(*random_data(12, n=20, dim=4)[:2], backend=backend)
        sims, ids = memory.search(np.zeros((0, 4)), 3)
        assert sims.shape == ids.shape == (0, 3)
        assert memory.classify(np.zeros((0, 4))).shape == (0,)
        assert len(memory.privacy_audit(np.zeros((0, 4)))) == 0


# --------------------------------------------------------------- persistence
@pytest.mark.parametrize("backend", BACKENDS)
def test_save_load_round_trip(tmp_path, backend):
    features, labels, queries = quantised_data(13)
    memory = memory_of(features, labels, ids=np.arange(len(features)) * 3 + 5, backend=backend)
    memory.remove([8, 11])
    memory.metadata = {"encoder": "rgb", "dataset": "digits"}
    path = memory.save(tmp_path / "memory.npz")
    loaded = VisualMemory.load(path, device="cpu", backend=backend)
    assert len(loaded) == len(memory) and loaded.dim == memory.dim
    np.testing.assert_array_equal(loaded.ids, memory.ids)
    np.testing.assert_array_equal(loaded.labels, memory.labels)
    np.testing.assert_array_equal(loaded.features, memory.features)
    assert loaded.metadata == {"encoder": "rgb", "dataset": "digits"}
    assert_same_answers(loaded, memory, queries)
    assert loaded.add(features[:1], labels[:1]).tolist() == memory.add(features[:1], labels[:1]).tolist()


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(HarnessError, match="no such memory file"):
        VisualMemory.load(tmp_path / "absent.npz")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file")
    with pytest.raises(HarnessError, match="cannot read memory file"):
        VisualMemory.load(tmp_path / "garbage.npz")
    np.savez(tmp_path / "other.npz", features=np.ones((2, 2)))
    with pytest.raises(HarnessError, match="not a saved VisualMemory"):
        VisualMemory.load(tmp_path / "other.npz")


def test_from_arrays_keeps_rows_bit_for_bit():
    features, labels, queries = random_data(14, dim=32)
    memory = memory_of(features, labels)
    copy = VisualMemory.from_arrays(memory.features, memory.labels, memory.ids)
    np.testing.assert_array_equal(copy.features, memory.features)
    assert_same_answers(copy, memory, queries)


def test_rows_added_in_many_batches_equal_one_add():
    """`add` grows its arrays with spare room: rows added a few at a time end up as those
    added at once, bit for bit; the arrays `from_arrays` was given are not written into,
    and what `features` returns is a copy."""
    features, labels, queries = random_data(15, n=1000, dim=8)
    at_once = memory_of(features, labels)
    given = at_once.features[:10]
    kept = given.copy()
    in_batches = VisualMemory.from_arrays(given, labels[:10], np.arange(10), device="cpu")
    for start in range(10, 1000, 7):
        in_batches.add(features[start : start + 7], labels[start : start + 7])
    np.testing.assert_array_equal(given, kept)
    np.testing.assert_array_equal(in_batches.features, at_once.features)
    np.testing.assert_array_equal(in_batches.labels, at_once.labels)
    np.testing.assert_array_equal(in_batches.ids, at_once.ids)
    assert len(in_batches) == 1000
    assert_same_answers(in_batches, at_once, queries)
    returned = in_batches.features
    returned[:] = 0
    assert np.abs(in_batches.features).sum() > 0


# ------------------------------------------------- add/remove property test
POOL = np.array(
    [[1, 0, 0], [0, 1, 0], [1, 1, 0], [1, 1, 1], [-1, 0, 1], [0, 0, 1], [2, 2, 0], [1, -1, 0]], np.float32
)  # [1, 1, 0] and [2, 2, 0] coincide after normalisation


operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.lists(st.tuples(st.integers(0, 7), st.integers(0, 3)), min_size=1, max_size=8)),
        st.tuples(st.just("remove"), st.lists(st.integers(0, 40), max_size=6)),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, backend=st.sampled_from(BACKENDS), seed=st.integers(0, 2**16))
def test_any_add_remove_sequence_equals_a_rebuilt_memory(ops, backend, seed):
    memory = VisualMemory(3, device="cpu", backend=backend)
    held: dict[int, tuple[int, int]] = {}  # id -> (pool row, label)
    for op, payload in ops:
        if op == "add":
            rows = [p for p, _ in payload]
            labels = [label for _, label in payload]
            for i, pool_row, label in zip(memory.add(POOL[rows], labels), rows, labels):
                held[int(i)] = (pool_row, label)
        else:
            memory.remove(payload)
            for i in payload:
                held.pop(i, None)
        if held:
            memory.search(POOL[:1], 1)  # keep the index warm between operations
    assert sorted(memory.ids.tolist()) == sorted(held)
    if not held:
        return
    # rebuilt from scratch, rows added in a shuffled order
    order = np.random.default_rng(seed).permutation(sorted(held))
    rebuilt = VisualMemory(3, device="cpu", backend=backend)
    rebuilt.add(POOL[[held[i][0] for i in order]], [held[i][1] for i in order], ids=order)
    queries = np.concatenate([POOL, [[0.3, -0.2, 0.9]]])
    assert_same_answers(memory, rebuilt, queries, ks=(1, 2, 5, len(held)))
