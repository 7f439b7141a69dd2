"""Folders of a run's output that plugins write into as well.

Kept apart from the leaderboard's code on purpose: what a task imports is part of its
results' key (docs/plugins.md, "What keys see"), and a task that writes figures needs
only this name, so the leaderboard's rendering can change without recomputing them.
"""

FIGURES = "figures"  # the leaderboard's images; tasks put theirs below it
