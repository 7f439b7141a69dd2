"""The visual memory: a kNN database of L2-normalised image embeddings with labels.

Learning real data is `add`, unlearning is `remove`: afterwards every answer equals
that of a memory that never held the removed rows, because the rows are simply gone
(there is no approximate index to retrain).

Search runs on one of two engines, chosen by `backend`:
  * "faiss": an exact inner-product index (faiss' GPU build on a GPU when present),
  * "torch": blocked matmul + top-k on `device` (a plain reference for checks).
Both only propose candidates in float32. Candidates are then re-scored in float64 and
ordered by (similarity descending, id ascending), with the candidate list widened until
every row within float32 rounding of the k-th similarity is in it. So ties are broken by
the lower id and both engines return identical neighbours and similarities.

Exactness rests on two properties that the privacy audit relies on too:
  * the float64 similarity of a (query, row) pair is a fixed function of the two
    vectors: every product of two float32 values is exact in float64, and the products
    are summed by numpy's pairwise reduction over one contiguous row, whose order
    depends only on the dimension (not on how many candidates or queries are scored
    together, nor on what else the memory holds);
  * class scores are accumulated neighbour by neighbour, best first, starting from 0.0
    (`vote_mass`), so a class score is a fixed function of the ordered neighbour list.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from harness.cache import atomic_write
from harness.errors import HarnessError

Vote = Literal["weighted", "majority"]
VOTES = ("weighted", "majority")
_FLOAT32_UNIT_ROUNDOFF = 2.0**-24
_QUERY_BLOCK = 4096  # queries per torch matmul block
_MEMORY_BLOCK = 1 << 18  # memory rows per torch matmul block
_CLASSIFY_BLOCK = 8192  # queries per classification block (bounds the [q, classes] scores)
_RESCORE_ELEMENTS = 1 << 22  # float64 products per re-scoring block (32 MiB)
_AUDIT_ELEMENTS = 1 << 20  # (query, neighbour) pairs per privacy-audit block
_FAISS_GPU_MAX_K = 2048  # faiss' GPU flat search returns at most this many neighbours
# Below this many multiply-adds a CPU search runs on one OpenMP thread: waking faiss'
# thread pool costs more than the search (tens of ms where OpenMP and OpenBLAS threads
# contend for few cores; faiss' troubleshooting notes advise OMP_WAIT_POLICY=PASSIVE).
_FAISS_SINGLE_THREAD_WORK = 1 << 26


def tie_margin(dim: int) -> float:
    """How far below the k-th float32 candidate similarity a row must be to be safely out.

    A float32 dot product of two unit vectors of dimension d is within d * 2^-24 of the
    exact value whatever the summation order (BLAS blocking, FMA, GPU reductions), so a
    row whose float32 similarity is more than twice that below the k-th candidate's
    cannot be among the exact k nearest. (Reduced-precision matmul such as TF32 breaks
    this bound; the torch engine switches it off while it searches.)
    """
    return max(1e-5, 2.5 * dim * _FLOAT32_UNIT_ROUNDOFF)


def _as_float_matrix(values: object, dim: int, what: str) -> np.ndarray:
    array = values.detach().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != dim:
        raise HarnessError(f"{what} must have shape [n, {dim}], got {list(array.shape)}")
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise HarnessError(f"{what} contain NaN or infinite values (rows {rows}); check the encoder's output")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.ascontiguousarray(array / np.maximum(norms, 1e-12), dtype=np.float32)


def _check_vote(vote: str, temperature: float) -> None:
    if vote not in VOTES:
        raise HarnessError(f"vote must be 'weighted' or 'majority', got {vote!r}")
    if vote == "weighted" and not (np.isfinite(temperature) and temperature > 0):
        raise HarnessError(f"temperature must be a positive number, got {temperature!r}")


@dataclass(frozen=True)
class PrivacyReport:
    """The outcome of `VisualMemory.privacy_report`.

    `ids` are the non-private memory rows (ascending): removing any one of them changes
    the prediction of at least one query. `flips[i]` is the number of queries whose
    prediction changes when `ids[i]` is removed. `changed_queries` counts the queries
    whose prediction some single removal changes; `other_class_flips` counts the
    (query, removed row) flips where the removed row's label is not the query's
    prediction (the released script never looks at those).
    """

    ids: np.ndarray
    flips: np.ndarray
    memory_size: int
    num_queries: int
    k: int
    vote: str
    temperature: float
    changed_queries: int
    other_class_flips: int

    @property
    def count(self) -> int:
        """Number of non-private memory rows."""
        return len(self.ids)

    @property
    def fraction(self) -> float:
        """Non-private rows as a percentage of the memory."""
        return 100.0 * self.count / self.memory_size if self.memory_size else 0.0


class VisualMemory:
    """Cosine-similarity kNN memory with integer labels and stable integer ids."""

    def __init__(self, dim: int, device: str | None = None, backend: Literal["auto", "faiss", "torch"] = "auto") -> None:
        if dim <= 0:
            raise HarnessError(f"VisualMemory dim must be positive, got {dim}")
        if backend not in ("auto", "faiss", "torch"):
            raise HarnessError(f"VisualMemory backend must be 'auto', 'faiss' or 'torch', got {backend!r}")
        self.dim = int(dim)
        self.device = device or _default_device()
        self.backend = "faiss" if backend == "auto" else backend
        self._features = np.zeros((0, dim), np.float32)
        self._labels = np.zeros(0, np.int64)
        self._ids = np.zeros(0, np.int64)
        self._next_id = 0
        self._engine: _Engine | None = None
        self.metadata: dict = {}
        """Free-form provenance (encoder, dataset, split, unlearning log), saved with the memory."""

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"VisualMemory(dim={self.dim}, size={len(self)}, backend={self.backend!r}, device={self.device!r})"

    @property
    def ids(self) -> np.ndarray:
        return self._ids.copy()

    @property
    def labels(self) -> np.ndarray:
        return self._labels.copy()

    @property
    def features(self) -> np.ndarray:
        """The stored (L2-normalised) features, a copy."""
        return self._features.copy()

    @classmethod
    def from_arrays(
        cls,
        features: object,
        labels: object,
        ids: object,
        next_id: int | None = None,
        device: str | None = None,
        backend: Literal["auto", "faiss", "torch"] = "auto",
        metadata: dict | None = None,
    ) -> VisualMemory:
        """A memory holding exactly these stored rows (another memory's `features`, already
        L2-normalised, kept bit for bit: `add` would normalise them once more, and a second
        normalisation can move a row by a rounding step)."""
        rows = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
        if rows.ndim != 2:
            raise HarnessError(f"from_arrays: features must have shape [n, dim], got {list(rows.shape)}")
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if not len(rows) == len(labels) == len(ids):
            raise HarnessError(f"from_arrays: {len(rows)} rows, {len(labels)} labels and {len(ids)} ids")
        if not np.isfinite(rows).all():
            raise HarnessError("from_arrays: features contain NaN or infinite values")
        norms = np.linalg.norm(rows.astype(np.float64), axis=1)
        if not ((np.abs(norms - 1.0) < 1e-4) | (norms == 0)).all():
            raise HarnessError("from_arrays: features must be L2-normalised rows (use add() for raw features)")
        if (labels < 0).any():
            raise HarnessError("from_arrays: labels must be non-negative integers (class indices)")
        if len(np.unique(ids)) != len(ids):
            raise HarnessError("from_arrays: ids must be unique")
        memory = cls(rows.shape[1], device=device, backend=backend)
        memory._features, memory._labels, memory._ids = rows, labels, ids
        floor = int(ids.max(initial=-1)) + 1
        memory._next_id = floor if next_id is None else max(int(next_id), floor)
        memory.metadata = dict(metadata or {})
        return memory

    # ----------------------------------------------------------------- learning
    def add(self, features: object, labels: object, ids: object | None = None) -> np.ndarray:
        """Add rows; returns their ids (a running counter unless given)."""
        rows = _as_float_matrix(features, self.dim, "features")
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) != len(rows):
            raise HarnessError(f"add: {len(rows)} feature rows but {len(labels)} labels")
        if (labels < 0).any():
            raise HarnessError("add: labels must be non-negative integers (class indices)")
        if ids is None:
            new_ids = np.arange(self._next_id, self._next_id + len(rows), dtype=np.int64)
        else:
            new_ids = np.asarray(ids, dtype=np.int64).reshape(-1)
            if len(new_ids) != len(rows):
                raise HarnessError(f"add: {len(rows)} feature rows but {len(new_ids)} ids")
            if len(np.unique(new_ids)) != len(new_ids) or np.isin(new_ids, self._ids).any():
                raise HarnessError("add: ids must be unique and not already in the memory")
        self._features = np.concatenate([self._features, rows])
        self._labels = np.concatenate([self._labels, labels])
        self._ids = np.concatenate([self._ids, new_ids])
        self._next_id = max(self._next_id, int(new_ids.max(initial=-1)) + 1)
        if self._engine is not None:
            self._engine.add(rows)
        return new_ids

    def remove(self, ids: object) -> int:
        """Forget the rows with these ids (exact unlearning); returns how many were removed."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        keep = ~np.isin(self._ids, ids)
        removed = int((~keep).sum())
        if removed:
            self._features = self._features[keep]
            self._labels = self._labels[keep]
            self._ids = self._ids[keep]
            self._engine = None
        return removed

    def build_index(self) -> VisualMemory:
        """Build the search index now (otherwise the first search builds it); returns self."""
        self._engine_ready()
        return self

    # ---------------------------------------------------------------- querying
    def search(self, queries: object, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar rows per query: (similarities [q, k], ids [q, k]), best first."""
        k = self._check_k(k, clip=False)
        sims, positions = self._search_positions(_as_float_matrix(queries, self.dim, "queries"), k)
        return sims.astype(np.float32), self._ids[positions]

    def class_scores(
        self,
        queries: object,
        k: int = 20,
        vote: Vote = "weighted",
        temperature: float = 0.07,
        num_classes: int | None = None,
    ) -> np.ndarray:
        """Vote mass per class [q, C]: sum of exp(sim / T) ("weighted") or counts ("majority")
        over the min(k, len) nearest rows."""
        _check_vote(vote, temperature)
        k = self._check_k(k, clip=True)
        sims, positions = self._search_positions(_as_float_matrix(queries, self.dim, "queries"), k)
        return vote_mass(sims, self._labels[positions], vote, temperature, num_classes or self.num_classes)

    def classify(
        self, queries: object, k: int = 20, vote: Vote = "weighted", temperature: float = 0.07
    ) -> np.ndarray:
        """Predicted label per query: the class with the most vote mass (lowest label on ties)."""
        _check_vote(vote, temperature)
        k = self._check_k(k, clip=True)
        queries = _as_float_matrix(queries, self.dim, "queries")
        predictions = np.empty(len(queries), np.int64)
        for start in range(0, len(queries), _CLASSIFY_BLOCK):
            block = slice(start, start + _CLASSIFY_BLOCK)
            sims, positions = self._search_positions(queries[block], k)
            scores = vote_mass(sims, self._labels[positions], vote, temperature, self.num_classes)
            predictions[block] = scores.argmax(axis=1)
        return predictions

    def privacy_audit(
        self, queries: object, k: int = 20, vote: Vote = "weighted", temperature: float = 0.07
    ) -> np.ndarray:
        """The ids (ascending) of the memory rows whose removal changes the prediction of at
        least one query (the paper's non-private samples, section 6). Exact: equal to
        rebuilding the memory without each row in turn and classifying every query."""
        return self.privacy_report(queries, k, vote, temperature).ids

    def privacy_report(
        self,
        queries: object,
        k: int = 20,
        vote: Vote = "weighted",
        temperature: float = 0.07,
        block: int | None = None,
    ) -> PrivacyReport:
        """`privacy_audit` with, per non-private row, how many queries its removal flips.

        One (k+1)-NN search per query decides it: only a query's k nearest rows can change
        its prediction, and removing one of them lets the (k+1)-th enter (the list is
        ordered by (similarity desc, id asc), so that is exactly the row a fresh search on
        the reduced memory returns). For every (query, neighbour) pair the class scores
        are recomputed with that neighbour swapped out, in the same order and float64
        arithmetic as `classify`, and compared under classify's own tie rule (lowest label
        wins). With k >= len(memory) a removal leaves a vote over all remaining rows.
        The removal of the only row of a one-row memory leaves nothing to classify with;
        it counts as changing every query's prediction. `block` bounds the queries
        handled at once (default: about a million (query, neighbour) pairs).
        """
        _check_vote(vote, temperature)
        queries = _as_float_matrix(queries, self.dim, "queries")
        used = self._check_k(k, clip=True)
        n = len(self)
        width = min(used + 1, n)  # the k nearest, plus the row that enters after a removal
        block = int(block) if block else max(1, _AUDIT_ELEMENTS // width)
        flips = np.zeros(n, np.int64)
        changed_queries = other_class_flips = 0
        for start in range(0, len(queries), block):
            sims, positions = self._search_positions(queries[start : start + block], width)
            labels = self._labels[positions]
            weights = vote_weights(sims, vote, temperature)
            before = _winning_labels(_running_class_sums(weights[:, :used], labels[:, :used]), labels[:, :used])
            if n == 1:
                flipped = np.ones((len(labels), 1), bool)
            else:
                after = _predictions_after_removal(weights, labels, used)
                flipped = after != before[:, None]
            flips += np.bincount(positions[:, :used][flipped], minlength=n)
            changed_queries += int(flipped.any(axis=1).sum())
            other_class_flips += int((flipped & (labels[:, :used] != before[:, None])).sum())
        rows = np.flatnonzero(flips)
        order = np.argsort(self._ids[rows], kind="stable")
        return PrivacyReport(
            ids=self._ids[rows][order],
            flips=flips[rows][order],
            memory_size=n,
            num_queries=len(queries),
            k=int(k),
            vote=vote,
            temperature=float(temperature),
            changed_queries=changed_queries,
            other_class_flips=other_class_flips,
        )

    def labels_of(self, ids: object) -> np.ndarray:
        """The labels of rows given by id (any shape)."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self) == 0:
            if ids.size:
                raise HarnessError("labels_of: the memory is empty")
            return np.zeros(ids.shape, np.int64)
        order = np.argsort(self._ids, kind="stable")
        found = np.searchsorted(self._ids, ids, sorter=order)
        positions = order[np.minimum(found, len(order) - 1)]
        if not np.array_equal(self._ids[positions], ids):
            raise HarnessError("labels_of: some ids are not in the memory")
        return self._labels[positions]

    @property
    def num_classes(self) -> int:
        return int(self._labels.max(initial=-1)) + 1

    # -------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the memory to a .npz file (atomically; no pickled objects)."""
        path = Path(path)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(
                    handle,
                    features=self._features,
                    labels=self._labels,
                    ids=self._ids,
                    next_id=np.int64(self._next_id),
                    metadata=np.array(json.dumps(self.metadata, sort_keys=True, default=str)),
                )

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None, backend: Literal["auto", "faiss", "torch"] = "auto") -> VisualMemory:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in ("features", "labels", "ids", "next_id")}
                metadata = json.loads(str(data["metadata"])) if "metadata" in data.files else {}
        except FileNotFoundError:
            raise HarnessError(f"{path}: no such memory file") from None
        except KeyError as exc:
            raise HarnessError(f"{path}: not a saved VisualMemory (missing key {exc})") from None
        except Exception as exc:
            raise HarnessError(f"{path}: cannot read memory file ({exc})") from None
        features = arrays["features"]
        if features.ndim != 2 or features.shape[1] == 0:
            raise HarnessError(f"{path}: features must have shape [n, dim], got {list(features.shape)}")
        if not len(features) == len(arrays["labels"]) == len(arrays["ids"]):
            raise HarnessError(
                f"{path}: {len(features)} feature rows, {len(arrays['labels'])} labels and {len(arrays['ids'])} ids"
            )
        memory = cls(features.shape[1], device=device, backend=backend)
        memory._features = np.ascontiguousarray(features, dtype=np.float32)
        memory._labels = arrays["labels"].astype(np.int64)
        memory._ids = arrays["ids"].astype(np.int64)
        memory._next_id = int(arrays["next_id"])
        memory.metadata = metadata if isinstance(metadata, dict) else {}
        return memory

    # ---------------------------------------------------------------- internals
    def _check_k(self, k: int, clip: bool) -> int:
        if len(self) == 0:
            raise HarnessError("the visual memory is empty: add features before searching")
        k = int(k)
        if k < 1:
            raise HarnessError(f"k must be at least 1, got {k}")
        if k > len(self):
            if clip:
                return len(self)
            raise HarnessError(f"k={k} is larger than the memory ({len(self)} rows); use k <= {len(self)}")
        return k

    def _engine_ready(self) -> _Engine:
        if self._engine is None:
            engine_cls = _FaissEngine if self.backend == "faiss" else _TorchEngine
            self._engine = engine_cls(self.dim, self.device)
            self._engine.add(self._features)
        return self._engine

    def _search_positions(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k positions, ordered by (float64 similarity desc, id asc)."""
        n = len(self)
        out_sims = np.empty((len(queries), k), np.float64)
        out_pos = np.empty((len(queries), k), np.int64)
        if len(queries) == 0:
            return out_sims, out_pos
        engine = self._engine_ready()
        margin = tie_margin(self.dim)
        pending = np.arange(len(queries))
        width = min(n, k + 8)
        while len(pending):
            cand_sims, cand_pos = engine.search(queries[pending], width)
            if width < n:
                boundary_open = cand_sims[:, -1] >= cand_sims[:, k - 1] - margin
            else:
                boundary_open = np.zeros(len(pending), bool)
            closed = ~boundary_open
            if closed.any():
                rows = pending[closed]
                sims, pos = self._rescore(queries[rows], cand_pos[closed], k)
                out_sims[rows], out_pos[rows] = sims, pos
            pending = pending[boundary_open]
            width = min(n, width * 4)
        return out_sims, out_pos

    def _rescore(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best candidates per query by (float64 similarity desc, id asc)."""
        width = candidates.shape[1]
        out_sims = np.empty((len(queries), k), np.float64)
        out_pos = np.empty((len(queries), k), np.int64)
        rows_per_block = max(1, _RESCORE_ELEMENTS // (width * self.dim))
        for start in range(0, len(queries), rows_per_block):
            block = slice(start, start + rows_per_block)
            cands = candidates[block]
            sims = pair_similarities(queries[block], self._features, cands)
            order = np.lexsort((self._ids[cands], -sims), axis=-1)[:, :k]
            out_sims[block] = np.take_along_axis(sims, order, 1)
            out_pos[block] = np.take_along_axis(cands, order, 1)
        return out_sims, out_pos


def pair_similarities(queries: np.ndarray, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """float64 similarity of query i with rows[positions[i, j]], as [q, c].

    Each value depends on the two vectors only: float32 x float32 products are exact in
    float64, and numpy sums each contiguous row of products pairwise in an order fixed by
    the dimension. Blocks over candidates keep the [q, c, d] products bounded.
    """
    queries64 = np.asarray(queries, dtype=np.float64)
    out = np.empty(positions.shape, np.float64)
    dim = queries64.shape[1]
    columns = max(1, _RESCORE_ELEMENTS // max(1, len(queries64) * dim))
    for start in range(0, positions.shape[1], columns):
        cols = slice(start, start + columns)
        out[:, cols] = (queries64[:, None, :] * rows[positions[:, cols]]).sum(axis=-1)
    return out


def vote_weights(sims: np.ndarray, vote: Vote, temperature: float) -> np.ndarray:
    """Per-neighbour vote weight: exp(sim / T) ("weighted", DINO) or 1 ("majority")."""
    _check_vote(vote, temperature)
    sims = np.asarray(sims, dtype=np.float64)
    if vote == "weighted":
        with np.errstate(over="ignore"):  # a tiny temperature may overflow to inf; ties then go to the lowest label
            return np.exp(sims / float(temperature))
    return np.ones(sims.shape, np.float64)


def vote_mass(sims: np.ndarray, labels: np.ndarray, vote: Vote, temperature: float, num_classes: int) -> np.ndarray:
    """Per-query class scores from neighbour similarities and labels ([q, k] each).

    Accumulated neighbour by neighbour, best first, from 0.0: the float64 value of a class
    score is a fixed function of the ordered neighbour list (what the privacy audit
    reproduces when it swaps one neighbour out).
    """
    weights = vote_weights(sims, vote, temperature)
    labels = np.asarray(labels, dtype=np.int64).reshape(weights.shape)
    if labels.size and (labels.max() >= num_classes or labels.min() < 0):
        raise HarnessError(f"vote_mass: labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    scores = np.zeros((len(weights), num_classes), np.float64)
    rows = np.arange(len(weights))
    for column in range(weights.shape[1]):
        scores[rows, labels[:, column]] += weights[:, column]
    return scores


def _running_class_sums(weights: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[q, m]: for each neighbour position p, its class's score over all m positions,
    accumulated best first from 0.0 exactly as `vote_mass` does (adding 0.0 is exact)."""
    sums = np.zeros(weights.shape, np.float64)
    for column in range(weights.shape[1]):
        sums += np.where(labels == labels[:, column : column + 1], weights[:, column : column + 1], 0.0)
    return sums


def _winning_labels(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """What argmax over the class-score vector picks, from per-position class scores
    [q, m]: the most mass, the lowest label on ties; label 0 when every score is 0
    (classes without neighbours score 0 and the lowest class index is 0)."""
    best = scores.max(axis=1)
    tied = np.where(scores == best[:, None], labels, np.iinfo(np.int64).max)
    return np.where(best > 0, tied.min(axis=1), 0)


def _predictions_after_removal(weights: np.ndarray, labels: np.ndarray, used: int) -> np.ndarray:
    """[q, used]: the prediction after removing neighbour j (j < used) of each query.

    weights/labels are [q, m] for the ordered neighbour list, m = used + 1 when a row
    enters after a removal, else m = used (the vote already covers the whole memory).
    The reduced list is the m positions without j, in their order, so:
      * a class other than label[j] keeps its score over all m positions,
      * label[j]'s class gets the sum over its other positions, accumulated in order,
    and the winner is chosen by the running (score desc, label asc) maximum over the
    classes present, vectorised over queries x removed positions.
    """
    q, m = weights.shape
    removed_labels = labels[:, :used]
    full = _running_class_sums(weights, labels)  # [q, m]
    others = np.arange(used)
    without = np.zeros((q, used), np.float64)  # label[j]'s class score without j
    for column in range(m):
        same = (labels[:, column : column + 1] == removed_labels) & (others != column)
        without += np.where(same, weights[:, column : column + 1], 0.0)
    best = np.full((q, used), -1.0)
    best_label = np.zeros((q, used), np.int64)
    for column in range(m):
        label = labels[:, column : column + 1]
        score = np.where(label == removed_labels, without, full[:, column : column + 1])
        better = (score > best) | ((score == best) & (label < best_label))
        best = np.where(better, score, best)
        best_label = np.where(better, label, best_label)
    return np.where(best > 0, best_label, 0)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class _Engine:
    """Proposes candidates: (float32 similarities desc, positions) [q, width]."""

    def add(self, rows: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]: ...


class _FaissEngine(_Engine):
    def __init__(self, dim: int, device: str) -> None:
        import faiss

        self.faiss = faiss
        self.dim = dim
        self.index = faiss.IndexFlatIP(dim)
        self.on_gpu = False
        self._cpu_copy = None
        if device.startswith("cuda") and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            self._resources = faiss.StandardGpuResources()
            self.index = faiss.index_cpu_to_gpu(self._resources, 0, self.index)
            self.on_gpu = True

    def add(self, rows: np.ndarray) -> None:
        if len(rows):
            self.index.add(rows)
            self._cpu_copy = None

    def search(self, queries: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        index = self.index
        if self.on_gpu and width > _FAISS_GPU_MAX_K:
            # a tie group wider than the GPU's k limit: finish on a CPU copy of the index
            if self._cpu_copy is None:
                self._cpu_copy = self.faiss.index_gpu_to_cpu(self.index)
            index = self._cpu_copy
        on_gpu = self.on_gpu and index is self.index
        small = len(queries) * index.ntotal * self.dim < _FAISS_SINGLE_THREAD_WORK
        if on_gpu or not small:
            sims, positions = index.search(queries, width)
        else:
            threads = self.faiss.omp_get_max_threads()
            self.faiss.omp_set_num_threads(1)
            try:
                sims, positions = index.search(queries, width)
            finally:
                self.faiss.omp_set_num_threads(threads)
        return sims, positions.astype(np.int64)


class _TorchEngine(_Engine):
    def __init__(self, dim: int, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.rows = torch.zeros((0, dim), dtype=torch.float32, device=self.device)

    def add(self, rows: np.ndarray) -> None:
        self.rows = self.torch.cat([self.rows, self.torch.from_numpy(rows).to(self.device)])

    @contextmanager
    def _full_precision(self) -> Iterator[None]:
        """float32 matmul without TF32, so the tie margin's error bound holds."""
        torch = self.torch
        previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(previous)

    def search(self, queries: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        out_sims, out_pos = [], []
        with self._full_precision():
            for q_start in range(0, len(queries), _QUERY_BLOCK):
                q = torch.from_numpy(queries[q_start : q_start + _QUERY_BLOCK]).to(self.device)
                best_sims = torch.empty((len(q), 0), device=self.device)
                best_pos = torch.empty((len(q), 0), dtype=torch.int64, device=self.device)
                for m_start in range(0, len(self.rows), _MEMORY_BLOCK):
                    block = self.rows[m_start : m_start + _MEMORY_BLOCK]
                    sims, pos = (q @ block.T).topk(min(width, len(block)), dim=1)
                    merged_sims = torch.cat([best_sims, sims], 1)
                    merged_pos = torch.cat([best_pos, pos + m_start], 1)
                    best_sims, keep = merged_sims.topk(min(width, merged_sims.shape[1]), dim=1)
                    best_pos = merged_pos.gather(1, keep)
                out_sims.append(best_sims.cpu().numpy())
                out_pos.append(best_pos.cpu().numpy())
        return np.concatenate(out_sims), np.concatenate(out_pos)
