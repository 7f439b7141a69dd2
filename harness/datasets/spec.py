"""What a dataset reader is, and the option handling every reader shares.

A reader is a function `reader(name, spec) -> dataset object`: `name` is the dataset's
key in registry.yaml (used in messages), `spec` its `DatasetSpec` (format, root, env,
options). Readers are registered by format name through the `register_dataset_formats`
hook, the core's own ones included (see `harness.datasets.formats`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.config.schema import DatasetSpec

Reader = Callable[[str, "DatasetSpec"], Any]


FINGERPRINT_MODES = ("sample", "full")
COMMON_OPTIONS: dict[str, Any] = {"fingerprint": "sample"}
"""Options every dataset takes, whatever its format. `fingerprint`: how much of the
data's content the cache and result keys hash, "sample" or "full" (harness.datasets.fingerprint)."""


def fingerprint_mode(name: str, spec: DatasetSpec) -> str:
    """The dataset's `fingerprint` option, checked."""
    mode = spec.options.get("fingerprint", COMMON_OPTIONS["fingerprint"])
    if mode not in FINGERPRINT_MODES:
        raise HarnessError(f"datasets.{name}.options.fingerprint must be one of {', '.join(FINGERPRINT_MODES)}, got {mode!r}")
    return mode


def dataset_options(name: str, spec: DatasetSpec, defaults: dict[str, Any]) -> dict[str, Any]:
    """The dataset's options over `defaults` (and COMMON_OPTIONS); an unknown option is an
    error naming it."""
    known = {**COMMON_OPTIONS, **defaults}
    unknown = sorted(set(spec.options) - set(known))
    if unknown:
        raise HarnessError(f"datasets.{name}.options: unknown option(s) {unknown}; known: {', '.join(sorted(known))}")
    fingerprint_mode(name, spec)
    return {**known, **spec.options}


def default_workers() -> int:
    """Threads that decode image files: one per core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))
