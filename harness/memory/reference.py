"""Brute-force leave-one-out: the reference the privacy audit is checked against (in the
tests and in `harness bench memory`), one rebuild and classification per memory row."""

from __future__ import annotations

import numpy as np

from harness.memory.index import VisualMemory
from harness.memory.privacy import PrivacyReport


def leave_one_out(
    memory: VisualMemory,
    queries: object,
    k: int = 20,
    vote: str = "weighted",
    temperature: float = 0.07,
    rows: object | None = None,
) -> dict[int, int]:
    """Brute force: for each row (all, or the positions `rows`), rebuild the memory without
    it, classify every query, and count the predictions that change. {id: flips}.
    The reference `privacy_report` must equal; one rebuild + classification per row."""
    queries = np.asarray(queries, dtype=np.float32)
    before = memory.classify(queries, k=k, vote=vote, temperature=temperature)  # type: ignore[arg-type]
    features, labels, ids = memory.features, memory.labels, memory.ids
    positions = np.arange(len(memory)) if rows is None else np.asarray(rows, dtype=np.int64)
    flips = {}
    for position in positions:
        keep = np.arange(len(memory)) != position
        if not keep.any():
            flips[int(ids[position])] = len(queries)  # nothing left to classify with
            continue
        reduced = VisualMemory.from_arrays(features[keep], labels[keep], ids[keep], device=memory.device, backend=memory.backend)
        after = reduced.classify(queries, k=k, vote=vote, temperature=temperature)  # type: ignore[arg-type]
        flips[int(ids[position])] = int((after != before).sum())
    return flips


def report_flips(report: PrivacyReport, ids: object) -> dict[int, int]:
    """{id: flips} from a privacy report, 0 for private rows."""
    table = dict(zip(report.ids.tolist(), report.flips.tolist()))
    return {int(i): int(table.get(int(i), 0)) for i in np.asarray(ids).reshape(-1)}
