"""Search engines: they propose candidate neighbours in float32, best first.

  * "faiss": an exact inner-product index (faiss' GPU build on a GPU when present),
  * "torch": blocked matmul + top-k on a torch device; on a CUDA GPU in TF32, on tensor
    cores (about 7 x the float32 rate of an H100 or H200).

Neither decides the final answer: `harness.memory.exact` re-scores their candidates in
float64 and orders them by (similarity desc, id asc), after widening each candidate
list past every row within 2.5 times the engine's `error` of the k-th, so every engine
returns the same neighbours.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Literal

import numpy as np

Backend = Literal["faiss", "torch"]
QUERY_BLOCK = 4096  # queries per torch matmul block, and per search `exact_neighbours` asks for
_MEMORY_BLOCK = 1 << 18  # memory rows per torch matmul block
_FAISS_GPU_MAX_K = 2048  # faiss' GPU flat search returns at most this many neighbours
# Below this many multiply-adds a CPU search runs on one OpenMP thread: waking faiss'
# thread pool costs more than the search (tens of ms where OpenMP and OpenBLAS threads
# contend for few cores; faiss' troubleshooting notes advise OMP_WAIT_POLICY=PASSIVE).
_FAISS_SINGLE_THREAD_WORK = 1 << 26
FLOAT32_UNIT_ROUNDOFF = 2.0**-24


def float32_error(dim: int) -> float:
    """The most a float32 dot product of two unit vectors of dimension `dim` can differ
    from the exact value, whatever the summation order (BLAS blocking, FMA, GPU
    reductions): dim x 2^-24."""
    return dim * FLOAT32_UNIT_ROUNDOFF


def tf32_error(dim: int) -> float:
    """The same bound for a matmul on tensor cores in TF32. Each input keeps 10 of
    float32's 23 mantissa bits, rounded or truncated: a relative error of up to 2^-10
    each, so up to (1 + 2^-10)^2 - 1 per product, and the products' magnitudes sum to at
    most 1 for unit vectors. The exact products are summed in float32, at up to 2^-22
    per addition (twice the rounding error, in case the accumulator truncates)."""
    products = (1 + 2.0**-10) ** 2 - 1
    return products + dim * 2.0**-22 * (1 + products)


class Engine:
    """Proposes candidates: (float32 similarities desc, positions) [q, width]."""

    def add(self, rows: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]: ...

    def error(self, dim: int) -> float:
        """How far a candidate similarity may be from the exact one, for unit vectors."""
        return float32_error(dim)


def make_engine(backend: Backend, dim: int, device: str) -> Engine:
    return FaissEngine(dim, device) if backend == "faiss" else TorchEngine(dim, device)


def faiss_has_gpu() -> bool:
    """Whether the installed faiss can search on a GPU (a GPU build, and a GPU it sees)."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def automatic_backend(device: str) -> Backend:
    """faiss, unless `device` is a CUDA GPU that the installed faiss cannot use (faiss-cpu):
    there the torch engine searches on the GPU, in TF32 on tensor cores, where faiss would
    search on the CPU (an H200's torch engine: 58 x faiss on its CPU, at 1.28M rows)."""
    return "torch" if device.startswith("cuda") and not faiss_has_gpu() else "faiss"


class FaissEngine(Engine):
    def __init__(self, dim: int, device: str) -> None:
        import faiss

        self.faiss = faiss
        self.dim = dim
        self.index = faiss.IndexFlatIP(dim)
        self.on_gpu = False
        self._cpu_copy = None
        if device.startswith("cuda") and faiss_has_gpu():
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


class TorchEngine(Engine):
    def __init__(self, dim: int, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.rows = torch.zeros((0, dim), dtype=torch.float32, device=self.device)
        # TF32 on a CUDA GPU; elsewhere full float32 ("high" may mean bfloat16 sums on a CPU)
        self.tf32 = self.device.type == "cuda"

    def add(self, rows: np.ndarray) -> None:
        self.rows = self.torch.cat([self.rows, self.torch.from_numpy(rows).to(self.device)])

    def error(self, dim: int) -> float:
        return tf32_error(dim) if self.tf32 else float32_error(dim)

    @contextmanager
    def _matmul_precision(self) -> Iterator[None]:
        """The matmul precision `error` stands for, whatever the user's setting, restored after."""
        torch = self.torch
        previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high" if self.tf32 else "highest")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(previous)

    def search(self, queries: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        out_sims, out_pos = [], []
        with self._matmul_precision():
            for q_start in range(0, len(queries), QUERY_BLOCK):
                q = torch.from_numpy(queries[q_start : q_start + QUERY_BLOCK]).to(self.device)
                best_sims = torch.empty((len(q), 0), device=self.device)
                best_pos = torch.empty((len(q), 0), dtype=torch.int64, device=self.device)
                for m_start in range(0, len(self.rows), _MEMORY_BLOCK):
                    block = self.rows[m_start : m_start + _MEMORY_BLOCK]
                    sims, pos = self._similarities(q, block).topk(min(width, len(block)), dim=1)
                    merged_sims = torch.cat([best_sims, sims], 1)
                    merged_pos = torch.cat([best_pos, pos + m_start], 1)
                    best_sims, keep = merged_sims.topk(min(width, merged_sims.shape[1]), dim=1)
                    best_pos = merged_pos.gather(1, keep)
                out_sims.append(best_sims.cpu().numpy())
                out_pos.append(best_pos.cpu().numpy())
        return np.concatenate(out_sims), np.concatenate(out_pos)

    def _similarities(self, queries: Any, rows: Any) -> Any:
        """float32 similarities [q, rows] in the engine's matmul precision."""
        return queries @ rows.T
