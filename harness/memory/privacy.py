"""The leave-one-out privacy audit's arithmetic (paper section 6), and its report.

Only a query's k nearest rows can change its prediction, and removing one of them lets
the (k+1)-th enter. Given each query's ordered k+1 neighbours, the class scores with one
neighbour swapped out are recomputed in the same order and float64 arithmetic as
`vote_mass`, and compared under the classifier's own tie rule (lowest label wins), so
the audit equals rebuilding the memory without each row and classifying every query.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from harness.memory.exact import worker_threads
from harness.memory.voting import Vote, running_class_sums, vote_weights, winning_labels

_FLIP_QUERIES = 2048  # queries per worker-thread item of the audit's counts


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


@dataclass
class FlipCounts:
    """Leave-one-out outcomes summed over blocks of queries."""

    per_position: np.ndarray  # [memory size]: queries whose prediction the row's removal flips
    changed_queries: int = 0
    other_class_flips: int = 0


def count_flips(
    counts: FlipCounts, sims: np.ndarray, positions: np.ndarray, labels: np.ndarray, used: int, vote: Vote, temperature: float
) -> None:
    """Add one block of queries to `counts`.

    sims/positions/labels are [q, m]: each query's neighbours ordered by (similarity desc,
    id asc), m = used + 1 (the k used by the vote, plus the row that enters after a
    removal) or m = used when the vote already covers the whole memory. The removal of
    the only row of a one-row memory leaves nothing to classify with; it counts as
    changing every query's prediction. The queries are split across worker threads
    (numpy releases the GIL); each query's outcome depends on its own row alone.
    """
    weights = vote_weights(sims, vote, temperature)
    parts = [slice(start, start + _FLIP_QUERIES) for start in range(0, len(labels), _FLIP_QUERIES)]
    only_row = len(counts.per_position) == 1
    with ThreadPoolExecutor(max_workers=worker_threads()) as pool:
        outcomes = list(pool.map(lambda part: _flipped(weights[part], labels[part], used, only_row), parts))
    removed = [np.empty(0, np.int64)]
    for part, (flipped, before) in zip(parts, outcomes):
        removed.append(positions[part, :used][flipped])
        counts.changed_queries += int(flipped.any(axis=1).sum())
        counts.other_class_flips += int((flipped & (labels[part, :used] != before[:, None])).sum())
    counts.per_position += np.bincount(np.concatenate(removed), minlength=len(counts.per_position))


def _flipped(weights: np.ndarray, labels: np.ndarray, used: int, only_row: bool) -> tuple[np.ndarray, np.ndarray]:
    """[q, used]: whether removing neighbour j changes the query's prediction; and the
    predictions [q] before any removal."""
    before = winning_labels(running_class_sums(weights[:, :used], labels[:, :used]), labels[:, :used])
    if only_row:
        return np.ones((len(labels), 1), bool), before
    return predictions_after_removal(weights, labels, used) != before[:, None], before


def predictions_after_removal(weights: np.ndarray, labels: np.ndarray, used: int) -> np.ndarray:
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
    full = running_class_sums(weights, labels)  # [q, m]
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
