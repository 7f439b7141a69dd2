"""Metrics with a published definition, kept outside the visual memory (like faiss' contrib)."""

from __future__ import annotations

import numpy as np


def two_afc(d0: object, d1: object, p: object) -> float:
    """NIGHTS two-alternative forced choice score.

    d0, d1: distances from the reference to the left and right distortion; p: fraction of
    humans who chose the right one. Per triplet the score is
    (d0 < d1) * (1 - p) + (d1 < d0) * p + 0.5 * (d0 == d1); returned is the mean.
    """
    d0, d1, p = (np.asarray(x, dtype=np.float64).reshape(-1) for x in (d0, d1, p))
    if not (len(d0) == len(d1) == len(p)):
        raise ValueError(f"two_afc: d0, d1 and p must have the same length, got {len(d0)}, {len(d1)}, {len(p)}")
    if len(d0) == 0:
        raise ValueError("two_afc: no triplets")
    scores = (d0 < d1) * (1.0 - p) + (d1 < d0) * p + 0.5 * (d0 == d1)
    return float(scores.mean())
