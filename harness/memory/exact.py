"""Exact top-k from an engine's float32 candidates.

Candidates are re-scored in float64 and ordered by (similarity descending, id
ascending), with the candidate list widened until every row within the engine's error
of the k-th similarity (float32 rounding, or TF32's on a GPU) is in it. So ties are
broken by the lower id and every engine returns identical neighbours and similarities.

The float64 similarity of a (query, row) pair is a fixed function of the two vectors:
every product of two float32 values is exact in float64, and the products are summed by
numpy's pairwise reduction over one contiguous row, whose order depends only on the
dimension (not on how many candidates or queries are scored together, nor on what else
the memory holds). The privacy audit relies on that too.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from harness.memory.engines import QUERY_BLOCK, Engine, float32_error

_RESCORE_ELEMENTS = 1 << 22  # float64 products per re-scoring block (32 MiB)


def tie_margin(error: float) -> float:
    """How far below the k-th candidate similarity a row must be to be safely out, for an
    engine whose similarities of unit vectors are within `error` of the exact values
    (`Engine.error`): a row more than twice that below the k-th candidate cannot be
    among the exact k nearest (the rest of the factor covers norms a rounding step off 1)."""
    return max(1e-5, 2.5 * error)


def first_width(k: int, error: float, dim: int) -> int:
    """Candidates asked for first. A float32 engine's margin rarely holds another row
    past the k-th; TF32's (about 5e-3 at 384 dimensions) does: on 1.28M x 384 clustered
    rows (`harness bench`'s), 28 rows at the median and 36 at most (of 64 queries), the
    20 nearest included, lay within it of the 20th similarity, so k + 8 would send about
    half the queries back for a wider search."""
    return k + 8 if error <= float32_error(dim) else 2 * k + 8


def exact_neighbours(
    engine: Engine, rows: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (float64 similarities, positions into `rows`) [q, k], ordered by
    (similarity desc, id asc). `engine` holds `rows`; `ids` are their ids.

    Queries are searched a chunk at a time; a chunk's candidates are re-scored on worker
    threads (numpy releases the GIL) while the engine searches the next chunk, so a GPU
    search and the CPU's re-scoring overlap. Each query's answer is the same however the
    queries are split, so neither the chunking nor the thread count changes a value."""
    n, dim = rows.shape
    out_sims = np.empty((len(queries), k), np.float64)
    out_pos = np.empty((len(queries), k), np.int64)
    if len(queries) == 0:
        return out_sims, out_pos
    error = engine.error(dim)
    margin = tie_margin(error)
    with ThreadPoolExecutor(max_workers=worker_threads()) as pool:
        rescoring: list[Future[None]] = []
        for start in range(0, len(queries), QUERY_BLOCK):
            pending = np.arange(start, min(start + QUERY_BLOCK, len(queries)))
            width = min(n, first_width(k, error, dim))
            while len(pending):
                cand_sims, cand_pos = engine.search(queries[pending], width)
                if width < n:
                    boundary_open = cand_sims[:, -1] >= cand_sims[:, k - 1] - margin
                else:
                    boundary_open = np.zeros(len(pending), bool)
                closed = ~boundary_open
                done, candidates = pending[closed], cand_pos[closed]
                step = max(1, _RESCORE_ELEMENTS // (width * dim))
                for first in range(0, len(done), step):
                    part = slice(first, first + step)
                    rescoring.append(pool.submit(_rescore_into, out_sims, out_pos, done[part], queries, rows, ids, candidates[part], k))
                pending = pending[boundary_open]
                width = min(n, width * 4)
        for part in rescoring:
            part.result()  # raises what a worker raised
    return out_sims, out_pos


def worker_threads() -> int:
    """Threads for the memory's numpy work (re-scoring, the audit's counts): as many as
    torch may use, which a run pins (`--threads`)."""
    import torch

    return torch.get_num_threads()


def _rescore_into(
    out_sims: np.ndarray,
    out_pos: np.ndarray,
    targets: np.ndarray,
    queries: np.ndarray,
    rows: np.ndarray,
    ids: np.ndarray,
    candidates: np.ndarray,
    k: int,
) -> None:
    """Write the k best candidates of queries[targets] by (float64 similarity desc, id
    asc) into out_sims[targets], out_pos[targets]."""
    sims = pair_similarities(queries[targets], rows, candidates)
    order = np.lexsort((ids[candidates], -sims), axis=-1)[:, :k]
    out_sims[targets] = np.take_along_axis(sims, order, 1)
    out_pos[targets] = np.take_along_axis(candidates, order, 1)


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
