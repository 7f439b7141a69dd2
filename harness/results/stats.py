"""Uncertainty of the leaderboard's numbers, and agreement of our ranking with the paper's.

Three sources of spread, each with its own interval:

- the test set: `bootstrap_interval` resamples the per-test-image outcomes of one
  headline record (which images were classified correctly) and gives a 95 % interval of
  their mean. It uses the percentile method: for the mean of hundreds to tens of
  thousands of 0/1 outcomes the bootstrap distribution is close to symmetric, so BCa's
  bias and skew corrections change the ends by a fraction of one test image, while its
  jackknife costs n^2 operations (2.5e9 for ImageNet's 50,000 images, for every cell).
- the training seed: `seed_interval` is the t-interval of the mean over encoders trained
  with the same recipe and different seeds (with one seed there is no interval).
- the ranking: `ranking_agreement` is Kendall's tau (tau-b, with its two-sided p-value)
  between our scores and a reference order, over the names both hold.
"""

from __future__ import annotations

import inspect
import math
from typing import Mapping, NamedTuple, Sequence

import numpy as np


class Agreement(NamedTuple):
    """Kendall's tau between two rankings over `n` names (nan where n < 2)."""

    tau: float
    pvalue: float
    n: int
    names: tuple[str, ...]


def bootstrap_interval(
    outcomes: Sequence[float] | np.ndarray, confidence: float = 0.95, seed: int = 0, resamples: int = 2000
) -> tuple[float, float]:
    """(low, high): the `confidence` percentile-bootstrap interval of the mean of `outcomes`
    (per-test-image 0/1 correctness or scores), with `resamples` resamples drawn from
    numpy.random.default_rng(seed), so the same outcomes always give the same interval."""
    from scipy.stats import bootstrap

    values = np.asarray(outcomes, dtype=np.float64).reshape(-1)
    _check_confidence(confidence)
    if values.size == 0:
        raise ValueError("no outcomes to bootstrap")
    if not np.isfinite(values).all():
        raise ValueError("outcomes must be finite numbers")
    if values.min() == values.max():  # every resample has the same mean
        return float(values[0]), float(values[0])
    batch = max(1, 5_000_000 // values.size)  # resamples held at once: about 40 MB of float64
    result = bootstrap(
        (values,), np.mean, n_resamples=resamples, batch=batch, vectorized=True, confidence_level=confidence,
        method="percentile", **{_rng_keyword(bootstrap): np.random.default_rng(seed)},
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _rng_keyword(bootstrap: object) -> str:
    """scipy >= 1.15 names bootstrap's generator `rng`; older releases `random_state`."""
    return "rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state"


def seed_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """(low, high): the t-interval of the mean of `values` (one per training seed),
    mean -/+ t(1 - (1 - confidence) / 2, n - 1) * s / sqrt(n) with the sample standard
    deviation s; None with fewer than two values."""
    from scipy.stats import t

    data = np.asarray(values, dtype=np.float64).reshape(-1)
    _check_confidence(confidence)
    if data.size < 2:
        return None
    mean = float(data.mean())
    half = float(t.ppf(0.5 + confidence / 2, data.size - 1)) * float(data.std(ddof=1)) / math.sqrt(data.size)
    return mean - half, mean + half


def ranking_agreement(ours: Mapping[str, float], reference_order: Sequence[str]) -> Agreement:
    """Kendall's tau-b between our scores (higher is better) and `reference_order` (best
    first), over the names present in both: +1 when our scores order them exactly as the
    reference does, -1 when in reverse. Ties in our scores count as ties."""
    from scipy.stats import kendalltau

    if len(set(reference_order)) != len(reference_order):
        raise ValueError(f"the reference order names something twice: {list(reference_order)}")
    names = tuple(name for name in reference_order if name in ours)
    if len(names) < 2:
        return Agreement(math.nan, math.nan, len(names), names)
    reference = [-position for position in range(len(names))]  # best first: highest reference score
    result = kendalltau([float(ours[name]) for name in names], reference)
    return Agreement(float(result.statistic), float(result.pvalue), len(names), names)


def overlap(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    """Whether two intervals share a point (False when either is missing)."""
    return a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie between 0 and 1, got {confidence}")


def format_value(value: float | None) -> str:
    """A value as the leaderboard prints it: 2 decimals, 4 below 1 in magnitude."""
    if value is None:
        return ""
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"
