"""The visual memory: a kNN database of real-image embeddings, its exact unlearning and
its privacy audit. Saved memories and id files are handled by `harness.memory.files`,
the brute-force reference by `harness.memory.reference`, `harness memory` by
`harness.memory.cli`."""

from harness.memory.index import VisualMemory
from harness.memory.privacy import PrivacyReport
from harness.memory.voting import vote_mass

__all__ = ["PrivacyReport", "VisualMemory", "vote_mass"]
