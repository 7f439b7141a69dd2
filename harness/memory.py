"""The visual memory: a kNN database of L2-normalised image embeddings with labels.

Learning real data is `add`, unlearning is `remove`: afterwards every answer equals
that of a memory that never held the removed rows, because the rows are simply gone
(there is no approximate index to retrain).

Search runs on one of two engines, chosen by `backend`:
  * "faiss": an exact inner-product index (faiss' GPU build on a GPU when present),
  * "torch": blocked matmul + top-k on `device` (a plain reference for checks).
Both only propose candidates. Candidates are then re-scored in float64 and ordered by
(similarity descending, id ascending), with the candidate list widened until every row
within float32 rounding of the k-th similarity is in it. So ties are broken by the
lower id and both engines return identical neighbours and similarities.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from harness.cache import atomic_write
from harness.errors import HarnessError

Vote = Literal["weighted", "majority"]
# Candidates whose float32 similarity is within this margin of the k-th are re-scored.
_TIE_MARGIN = 1e-5
_QUERY_BLOCK = 4096
_MEMORY_BLOCK = 1 << 18


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


class VisualMemory:
    """Cosine-similarity kNN memory with integer labels and stable integer ids."""

    def __init__(self, dim: int, device: str | None = None, backend: Literal["auto", "faiss", "torch"] = "auto") -> None:
        if dim <= 0:
            raise HarnessError(f"VisualMemory dim must be positive, got {dim}")
        if backend not in ("auto", "faiss", "torch"):
            raise HarnessError(f"VisualMemory backend must be 'auto', 'faiss' or 'torch', got {backend!r}")
        self.dim = dim
        self.device = device or _default_device()
        self.backend = "faiss" if backend == "auto" else backend
        self._features = np.zeros((0, dim), np.float32)
        self._labels = np.zeros(0, np.int64)
        self._ids = np.zeros(0, np.int64)
        self._next_id = 0
        self._engine: _Engine | None = None

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

    # ---------------------------------------------------------------- querying
    def search(self, queries: object, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar rows per query: (similarities [q, k], ids [q, k]), best first."""
        self._check_k(k, clip=False)
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
        k = self._check_k(k, clip=True)
        sims, positions = self._search_positions(_as_float_matrix(queries, self.dim, "queries"), k)
        return vote_mass(sims, self._labels[positions], vote, temperature, num_classes or self.num_classes)

    def classify(
        self, queries: object, k: int = 20, vote: Vote = "weighted", temperature: float = 0.07
    ) -> np.ndarray:
        """Predicted label per query: the class with the most vote mass (lowest label on ties)."""
        return self.class_scores(queries, k, vote, temperature).argmax(axis=1)

    def labels_of(self, ids: object) -> np.ndarray:
        """The labels of rows given by id (any shape)."""
        ids = np.asarray(ids, dtype=np.int64)
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
                )

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None, backend: Literal["auto", "faiss", "torch"] = "auto") -> VisualMemory:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in ("features", "labels", "ids", "next_id")}
        except FileNotFoundError:
            raise HarnessError(f"{path}: no such memory file") from None
        except KeyError as exc:
            raise HarnessError(f"{path}: not a saved VisualMemory (missing key {exc})") from None
        except Exception as exc:
            raise HarnessError(f"{path}: cannot read memory file ({exc})") from None
        features = arrays["features"]
        memory = cls(features.shape[1], device=device, backend=backend)
        memory._features = np.ascontiguousarray(features, dtype=np.float32)
        memory._labels = arrays["labels"].astype(np.int64)
        memory._ids = arrays["ids"].astype(np.int64)
        memory._next_id = int(arrays["next_id"])
        return memory

    # ---------------------------------------------------------------- internals
    def _check_k(self, k: int, clip: bool) -> int:
        if len(self) == 0:
            raise HarnessError("the visual memory is empty: add features before searching")
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
        engine = self._engine_ready()
        n = len(self)
        out_sims = np.empty((len(queries), k), np.float64)
        out_pos = np.empty((len(queries), k), np.int64)
        pending = np.arange(len(queries))
        width = min(n, k + 8)
        while len(pending):
            cand_sims, cand_pos = engine.search(queries[pending], width)
            if width < n:
                boundary_open = cand_sims[:, -1] >= cand_sims[:, k - 1] - _TIE_MARGIN
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
        sims = np.einsum(
            "qd,qcd->qc", queries.astype(np.float64), self._features[candidates].astype(np.float64)
        )
        ids = self._ids[candidates]
        order = np.lexsort((ids, -sims), axis=-1)[:, :k]
        return np.take_along_axis(sims, order, 1), np.take_along_axis(candidates, order, 1)


def vote_mass(sims: np.ndarray, labels: np.ndarray, vote: Vote, temperature: float, num_classes: int) -> np.ndarray:
    """Per-query class scores from neighbour similarities and labels ([q, k] each)."""
    if vote == "weighted":
        weights = np.exp(sims / temperature)
    elif vote == "majority":
        weights = np.ones_like(sims)
    else:
        raise HarnessError(f"vote must be 'weighted' or 'majority', got {vote!r}")
    scores = np.zeros((len(sims), num_classes), np.float64)
    rows = np.repeat(np.arange(len(sims)), sims.shape[1])
    np.add.at(scores, (rows, labels.reshape(-1)), weights.reshape(-1))
    return scores


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

        self.index = faiss.IndexFlatIP(dim)
        if device.startswith("cuda") and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            self._resources = faiss.StandardGpuResources()
            self.index = faiss.index_cpu_to_gpu(self._resources, 0, self.index)

    def add(self, rows: np.ndarray) -> None:
        if len(rows):
            self.index.add(rows)

    def search(self, queries: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        sims, positions = self.index.search(queries, width)
        return sims, positions.astype(np.int64)


class _TorchEngine(_Engine):
    def __init__(self, dim: int, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.rows = torch.zeros((0, dim), dtype=torch.float32, device=self.device)

    def add(self, rows: np.ndarray) -> None:
        self.rows = self.torch.cat([self.rows, self.torch.from_numpy(rows).to(self.device)])

    def search(self, queries: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        out_sims, out_pos = [], []
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
