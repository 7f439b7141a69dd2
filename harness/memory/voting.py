"""The kNN vote: per-neighbour weights, class scores, and the tie rule.

Class scores are accumulated neighbour by neighbour, best first, starting from 0.0
(`vote_mass`), so a class score is a fixed function of the ordered neighbour list; the
privacy audit relies on that when it recomputes the scores with one neighbour swapped
out. Ties between classes go to the lowest label.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from harness.errors import HarnessError

Vote = Literal["weighted", "majority"]
VOTES = ("weighted", "majority")


def check_vote(vote: str, temperature: float) -> None:
    if vote not in VOTES:
        raise HarnessError(f"vote must be 'weighted' or 'majority', got {vote!r}")
    if vote == "weighted" and not (np.isfinite(temperature) and temperature > 0):
        raise HarnessError(f"temperature must be a positive number, got {temperature!r}")


def vote_weights(sims: np.ndarray, vote: Vote, temperature: float) -> np.ndarray:
    """Per-neighbour vote weight: exp(sim / T) ("weighted", DINO) or 1 ("majority")."""
    check_vote(vote, temperature)
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


def running_class_sums(weights: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[q, m]: for each neighbour position p, its class's score over all m positions,
    accumulated best first from 0.0 exactly as `vote_mass` does (adding 0.0 is exact)."""
    sums = np.zeros(weights.shape, np.float64)
    for column in range(weights.shape[1]):
        sums += np.where(labels == labels[:, column : column + 1], weights[:, column : column + 1], 0.0)
    return sums


def winning_labels(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """What argmax over the class-score vector picks, from per-position class scores
    [q, m]: the most mass, the lowest label on ties; label 0 when every score is 0
    (classes without neighbours score 0 and the lowest class index is 0)."""
    best = scores.max(axis=1)
    tied = np.where(scores == best[:, None], labels, np.iinfo(np.int64).max)
    return np.where(best > 0, tied.min(axis=1), 0)
