"""The visual memory: a kNN database of L2-normalised image embeddings with labels.

Learning real data is `add`, unlearning is `remove`: afterwards every answer equals
that of a memory that never held the removed rows, because the rows are simply gone
(there is no approximate index to retrain).

Search runs on one of two engines (`harness.memory.engines`), chosen by `backend`
(`auto`: faiss, except on a CUDA device that the installed faiss cannot use, where the
torch engine searches on the GPU); their candidates are made exact by
`harness.memory.exact`, so ties are broken by the lower id and both engines return
identical neighbours and similarities. Votes follow `harness.memory.voting`, the
privacy audit `harness.memory.privacy`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import numpy as np

from harness.cache import atomic_write
from harness.device import default_device
from harness.errors import HarnessError
from harness.memory.engines import Engine, automatic_backend, make_engine
from harness.memory.exact import exact_neighbours
from harness.memory.inputs import INT64, as_unit_rows, checked_rows, int64_values, positive_int
from harness.memory.privacy import FlipCounts, PrivacyReport, count_flips
from harness.memory.voting import Vote, check_vote, vote_mass

_CLASSIFY_BLOCK = 8192  # queries per classification block (bounds the [q, classes present] scores)
_AUDIT_ELEMENTS = 1 << 20  # (query, neighbour) pairs per privacy-audit block


class _Rows:
    """The stored features, labels and ids, in arrays with room to grow at their end:
    adding rows in many small batches takes time linear in the rows, as appending to a
    list does, where concatenating at every `add` would take time quadratic in them."""

    GROWTH = 1.5  # capacity after a full array grows, relative to the rows it holds

    def __init__(self, features: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> None:
        self.replace(features, labels, ids)

    def replace(self, features: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> None:
        """Hold exactly these rows (the arrays are kept, not copied: full, they are never
        written into)."""
        self._arrays = (features, labels, ids)
        self.size = len(ids)

    @property
    def features(self) -> np.ndarray:
        return self._arrays[0][: self.size]

    @property
    def labels(self) -> np.ndarray:
        return self._arrays[1][: self.size]

    @property
    def ids(self) -> np.ndarray:
        return self._arrays[2][: self.size]

    def extend(self, features: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> None:
        size, end = self.size, self.size + len(ids)
        if end > len(self._arrays[2]):
            capacity = max(end, int(size * self.GROWTH))
            grown = []
            for old in self._arrays:
                new = np.empty((capacity, *old.shape[1:]), old.dtype)
                new[:size] = old[:size]
                grown.append(new)
            self._arrays = tuple(grown)
        for array, values in zip(self._arrays, (features, labels, ids)):
            array[size:end] = values
        self.size = end


class VisualMemory:
    """Cosine-similarity kNN memory with integer labels and stable integer ids."""

    def __init__(self, dim: int, device: str | None = None, backend: Literal["auto", "faiss", "torch"] = "auto") -> None:
        if dim <= 0:
            raise HarnessError(f"VisualMemory dim must be positive, got {dim}")
        if backend not in ("auto", "faiss", "torch"):
            raise HarnessError(f"VisualMemory backend must be 'auto', 'faiss' or 'torch', got {backend!r}")
        self.dim = int(dim)
        self.device = device or default_device()
        self.backend = automatic_backend(self.device) if backend == "auto" else backend
        self._rows = _Rows(np.zeros((0, dim), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))
        self._next_id = 0
        self._engine: Engine | None = None
        self.metadata: dict = {}
        """Free-form provenance (encoder, dataset, split, unlearning log), saved with the memory."""

    def __len__(self) -> int:
        return self._rows.size

    def __repr__(self) -> str:
        return f"VisualMemory(dim={self.dim}, size={len(self)}, backend={self.backend!r}, device={self.device!r})"

    @property
    def ids(self) -> np.ndarray:
        return self._rows.ids.copy()

    @property
    def labels(self) -> np.ndarray:
        return self._rows.labels.copy()

    @property
    def features(self) -> np.ndarray:
        """The stored (L2-normalised) features, a copy."""
        return self._rows.features.copy()

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
        normalisation can move a row by a rounding step). The arrays are copied: changing
        them afterwards does not change the memory. `next_id` (default: just above the
        largest id) must be above every id."""
        rows, labels, ids, next_id = checked_rows(features, labels, ids, next_id, "from_arrays")
        return cls._holding(rows, labels, ids, next_id, device, backend, metadata)

    @classmethod
    def _holding(
        cls,
        rows: np.ndarray,
        labels: np.ndarray,
        ids: np.ndarray,
        next_id: int,
        device: str | None,
        backend: Literal["auto", "faiss", "torch"],
        metadata: dict | None,
    ) -> VisualMemory:
        """A memory that takes over rows already checked by `_checked_rows`."""
        memory = cls(rows.shape[1], device=device, backend=backend)
        memory._rows.replace(rows, labels, ids)
        memory._next_id = next_id
        memory.metadata = dict(metadata or {})
        return memory

    # ----------------------------------------------------------------- learning
    def add(self, features: object, labels: object, ids: object | None = None) -> np.ndarray:
        """Add rows; returns their ids (a running counter unless given)."""
        rows = as_unit_rows(features, self.dim, "features")
        labels = int64_values(labels, "add: labels").reshape(-1)
        if len(labels) != len(rows):
            raise HarnessError(f"add: {len(rows)} feature rows but {len(labels)} labels")
        if (labels < 0).any():
            raise HarnessError("add: labels must be non-negative integers (class indices)")
        if ids is None:
            new_ids = np.arange(self._next_id, self._next_id + len(rows), dtype=np.int64)
        else:
            new_ids = int64_values(ids, "add: ids").reshape(-1)
            if len(new_ids) != len(rows):
                raise HarnessError(f"add: {len(rows)} feature rows but {len(new_ids)} ids")
            if len(np.unique(new_ids)) != len(new_ids) or np.isin(new_ids, self._rows.ids).any():
                raise HarnessError("add: ids must be unique and not already in the memory")
            if (new_ids == INT64.max).any():
                raise HarnessError(f"add: ids must be below {INT64.max}, so that the next id to hand out fits in int64")
        self._rows.extend(rows, labels, new_ids)
        self._next_id = max(self._next_id, int(new_ids.max(initial=-1)) + 1)
        if self._engine is not None:
            self._engine.add(rows)
        return new_ids

    def remove(self, ids: object) -> int:
        """Forget the rows with these ids (exact unlearning); returns how many were removed."""
        ids = int64_values(ids, "remove: ids").reshape(-1)
        keep = ~np.isin(self._rows.ids, ids)
        removed = int((~keep).sum())
        if removed:
            self._rows.replace(self._rows.features[keep], self._rows.labels[keep], self._rows.ids[keep])
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
        sims, positions = self._search_positions(as_unit_rows(queries, self.dim, "queries"), k)
        return sims.astype(np.float32), self._rows.ids[positions]

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
        check_vote(vote, temperature)
        k = self._check_k(k, clip=True)
        sims, positions = self._search_positions(as_unit_rows(queries, self.dim, "queries"), k)
        return vote_mass(sims, self._rows.labels[positions], vote, temperature, num_classes or self.num_classes)

    def classify(
        self, queries: object, k: int = 20, vote: Vote = "weighted", temperature: float = 0.07
    ) -> np.ndarray:
        """Predicted label per query: the class with the most vote mass (lowest label on ties)."""
        check_vote(vote, temperature)
        k = self._check_k(k, clip=True)
        queries = as_unit_rows(queries, self.dim, "queries")
        predictions = np.empty(len(queries), np.int64)
        for start in range(0, len(queries), _CLASSIFY_BLOCK):
            block = slice(start, start + _CLASSIFY_BLOCK)
            sims, positions = self._search_positions(queries[block], k)
            # the block's labels renumbered 0..c-1 in order, so the scores take [q, c], not
            # [q, largest label]; the order keeps the tie rule (lowest label wins)
            present, compact = np.unique(self._rows.labels[positions], return_inverse=True)
            scores = vote_mass(sims, compact.reshape(positions.shape), vote, temperature, len(present))
            winners = scores.argmax(axis=1)
            predictions[block] = np.where(scores[np.arange(len(winners)), winners] > 0, present[winners], 0)
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
        check_vote(vote, temperature)
        queries = as_unit_rows(queries, self.dim, "queries")
        used = self._check_k(k, clip=True)
        n = len(self)
        width = min(used + 1, n)  # the k nearest, plus the row that enters after a removal
        block = max(1, _AUDIT_ELEMENTS // width) if block is None else positive_int(block, "privacy_report: block")
        counts = FlipCounts(per_position=np.zeros(n, np.int64))
        for start in range(0, len(queries), block):
            sims, positions = self._search_positions(queries[start : start + block], width)
            count_flips(counts, sims, positions, self._rows.labels[positions], used, vote, temperature)
        rows = np.flatnonzero(counts.per_position)
        order = np.argsort(self._rows.ids[rows], kind="stable")
        return PrivacyReport(
            ids=self._rows.ids[rows][order],
            flips=counts.per_position[rows][order],
            memory_size=n,
            num_queries=len(queries),
            k=int(k),
            vote=vote,
            temperature=float(temperature),
            changed_queries=counts.changed_queries,
            other_class_flips=counts.other_class_flips,
        )

    def labels_of(self, ids: object) -> np.ndarray:
        """The labels of rows given by id (any shape)."""
        ids = int64_values(ids, "labels_of: ids")
        if len(self) == 0:
            if ids.size:
                raise HarnessError("labels_of: the memory is empty")
            return np.zeros(ids.shape, np.int64)
        order = np.argsort(self._rows.ids, kind="stable")
        found = np.searchsorted(self._rows.ids, ids, sorter=order)
        positions = order[np.minimum(found, len(order) - 1)]
        if not np.array_equal(self._rows.ids[positions], ids):
            raise HarnessError("labels_of: some ids are not in the memory")
        return self._rows.labels[positions]

    @property
    def num_classes(self) -> int:
        return int(self._rows.labels.max(initial=-1)) + 1

    # -------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the memory to a .npz file (atomically; no pickled objects).

        A symlink at `path` keeps pointing at its file, which is replaced. Other hard links
        to a replaced file keep its old contents (the rename gives `path` a new file)."""
        path = Path(path)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(
                    handle,
                    features=self._rows.features,
                    labels=self._rows.labels,
                    ids=self._rows.ids,
                    next_id=np.int64(self._next_id),
                    metadata=np.array(json.dumps(self.metadata, sort_keys=True, default=str)),
                )

        return atomic_write(path, write, through_symlinks=True)

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
        try:
            rows, labels, ids, next_id = checked_rows(
                arrays["features"], arrays["labels"], arrays["ids"], arrays["next_id"], str(path)
            )
        except HarnessError as exc:
            raise HarnessError(f"{exc}; the file is damaged or was not written by VisualMemory.save") from None
        return cls._holding(rows, labels, ids, next_id, device, backend, metadata if isinstance(metadata, dict) else {})

    # ---------------------------------------------------------------- internals
    def _check_k(self, k: int, clip: bool) -> int:
        if len(self) == 0:
            raise HarnessError("the visual memory is empty: add features before searching")
        k = positive_int(k, "k")
        if k > len(self):
            if clip:
                return len(self)
            raise HarnessError(f"k={k} is larger than the memory ({len(self)} rows); use k <= {len(self)}")
        return k

    def _engine_ready(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.backend, self.dim, self.device)
            self._engine.add(self._rows.features)
        return self._engine

    def _search_positions(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k positions, ordered by (float64 similarity desc, id asc)."""
        return exact_neighbours(self._engine_ready(), self._rows.features, self._rows.ids, queries, k)
