"""The memory stage: kNN classification and privacy-audit throughput against memory size,
on synthetic rows, and the audit's speed-up over brute-force leave-one-out."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterator, Literal

import numpy as np

from harness.bench.timing import best_time
from harness.device import default_device
from harness.memory.index import VisualMemory
from harness.memory.reference import leave_one_out, report_flips

LARGE_WORK = 10**10  # rows x queries above which one timed pass suffices
FAISS_TIMED_QUERIES = 500  # queries faiss on the CPU classifies for its rate (1.28M rows: about 2.5 s)

if TYPE_CHECKING:
    from harness.config.schema import ProfileSpec
    from harness.config.registry import Registry


def bench_memory(registry: Registry, profile: ProfileSpec, quick: bool, device: str) -> Iterator[dict[str, Any]]:
    """The `memory` stage of `harness bench`: the profile's memory sizes and query count.
    On a GPU the torch engine searches there, beside faiss on the CPU."""
    spec = profile.bench
    backend = "torch" if device.startswith("cuda") else "auto"
    return measure_memory(tuple(spec.memory_rows), spec.memory_queries, device=device, quick=quick, backend=backend)


def _centres(classes: int, dim: int) -> np.ndarray:
    return np.random.default_rng(99).standard_normal((classes, dim)).astype(np.float32) * 0.35


def synthetic_memory(
    n: int, dim: int, classes: int, seed: int, device: str | None = None, backend: Literal["auto", "faiss", "torch"] = "auto"
) -> VisualMemory:
    """n rows in `classes` loose clusters (so votes are neither unanimous nor noise)."""
    rng = np.random.default_rng(seed)
    centres = _centres(classes, dim)
    memory = VisualMemory(dim, device=device, backend=backend)
    for start in range(0, n, 100_000):
        size = min(100_000, n - start)
        labels = rng.integers(0, classes, size)
        rows = centres[labels] + rng.standard_normal((size, dim), dtype=np.float32)
        memory.add(rows, labels)
    return memory


def synthetic_queries(q: int, dim: int, classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _centres(classes, dim)[rng.integers(0, classes, q)] + rng.standard_normal((q, dim), dtype=np.float32)


def measure_memory(
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000),
    queries: int = 1000,
    dim: int = 384,
    device: str | None = None,
    quick: bool = False,
    k: int = 20,
    classes: int = 100,
    brute_force_rows: int = 40,
    brute_force_max_size: int = 10_000,
    backend: Literal["auto", "faiss", "torch"] = "auto",
    cpu_sample: int = 2000,
) -> Iterator[dict[str, Any]]:
    """kNN classification and privacy-audit throughput (queries/s, best of 2 runs) against
    memory size, on synthetic rows, a row per size as it is measured (with the seconds of
    drawing the rows and building the index, `build_s`); where brute force is
    feasible (size <= `brute_force_max_size`), the audit's speed-up over brute-force
    leave-one-out and a check that both agree.

    Brute force needs one rebuild + classification of every query per memory row: a
    random sample of `brute_force_rows` rows is measured (half of them non-private where
    there are that many), the time is extrapolated to all rows, and the flip counts of the
    sampled rows are compared with the audit's (`identical_on_sample`).

    When the memory is not faiss on the CPU (the torch engine on a GPU), faiss on the
    CPU searches the same rows too: its neighbours of `cpu_sample` queries must equal
    the measured engine's (`identical_to_faiss_cpu`), and its queries/s classifying some
    of them gives the ratio."""
    device = device or default_device()
    repeats = 1 if quick else 2
    if quick:
        sizes, queries, brute_force_rows = (2_000, 10_000), min(queries, 200), 10
    # the same queries (drawn around the same centres as the memory) at every size
    seed = 1234
    query_rows = synthetic_queries(queries, dim, classes, seed + 1)
    for size in sizes:
        began = time.perf_counter()
        memory = synthetic_memory(size, dim, classes, seed, device, backend)
        memory.search(query_rows[:1], 1)  # build the index outside the timings
        build_seconds = time.perf_counter() - began
        memory.classify(query_rows[: min(50, queries)], k=k)  # warm-up
        passes = 1 if size * queries >= LARGE_WORK else repeats  # a long pass is its own average
        classify_seconds = best_time(lambda: memory.classify(query_rows, k=k), passes, warmup=False)
        reports = []
        audit_seconds = best_time(lambda: reports.append(memory.privacy_report(query_rows, k=k)), passes, warmup=False)
        report = reports[-1]
        row: dict[str, Any] = {
            "classify_s": round(classify_seconds, 4),
            "memory": size,
            "dim": dim,
            "queries": queries,
            "k": k,
            "classify_queries_per_s": round(queries / classify_seconds, 1),
            "audit_queries_per_s": round(queries / audit_seconds, 1),
            "audit_s": round(audit_seconds, 4),
            "non_private": report.count,
            "build_s": round(build_seconds, 2),
        }
        if memory.backend != "faiss" or memory.device != "cpu":
            row.update(_beside_faiss_cpu(memory, query_rows[:cpu_sample], k, classify_seconds / queries))
        if size <= brute_force_max_size:
            rng = np.random.default_rng(0)
            non_private = np.flatnonzero(np.isin(memory.ids, report.ids))
            private = np.flatnonzero(~np.isin(memory.ids, report.ids))
            half = brute_force_rows // 2
            sample = np.concatenate([
                rng.choice(non_private, min(half, len(non_private)), replace=False),
                rng.choice(private, min(brute_force_rows - min(half, len(non_private)), len(private)), replace=False),
            ])
            start = time.perf_counter()
            brute = leave_one_out(memory, query_rows, k=k, rows=sample)
            per_row = (time.perf_counter() - start) / len(sample)
            extrapolated = per_row * size
            row.update({
                "brute_force_rows_measured": len(sample),
                "brute_force_s_per_row": round(per_row, 4),
                "brute_force_s_extrapolated": round(extrapolated, 1),
                "speedup_vs_brute_force": round(extrapolated / audit_seconds, 1),
                "identical_on_sample": brute == report_flips(report, memory.ids[sample]),
            })
        del memory
        yield row


def _beside_faiss_cpu(memory: VisualMemory, queries: np.ndarray, k: int, seconds_per_query: float) -> dict[str, Any]:
    """faiss on the CPU over the same rows: whether its exact neighbours of `queries`
    equal `memory`'s, and its classification rate on `FAISS_TIMED_QUERIES` of them (a
    rate needs fewer queries than the comparison, and each takes the CPU as long)."""
    cpu = VisualMemory.from_arrays(memory.features, memory.labels, ids=memory.ids, device="cpu", backend="faiss")
    cpu.build_index()
    timed = queries[:FAISS_TIMED_QUERIES]
    cpu.classify(timed[:50], k=k)  # warm-up
    cpu_seconds = best_time(lambda: cpu.classify(timed, k=k), repeats=1, warmup=False)
    sims, ids = memory.search(queries, k)
    cpu_sims, cpu_ids = cpu.search(queries, k)
    return {
        "faiss_cpu_classify_queries_per_s": round(len(timed) / cpu_seconds, 1),
        "ratio_to_faiss_cpu": round(cpu_seconds / len(timed) / seconds_per_query, 2),
        "identical_to_faiss_cpu": bool(np.array_equal(ids, cpu_ids) and np.array_equal(sims, cpu_sims)),
        "compared_queries": len(queries),
    }
