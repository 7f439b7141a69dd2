"""Seeds for the built-in generators: every random draw of image i of stream `seed`
comes from a generator seeded by (seed, i, purpose), so any slice of a stream can be
produced on its own, in any batch, worker or process.
"""

from __future__ import annotations

import hashlib
from typing import Any


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any tuple of ints and strings (stable across runs and machines)."""
    digest = hashlib.sha256(repr(tuple(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def rng(*parts: Any) -> Any:
    """A numpy Generator (PCG64) for the purpose named by `parts`."""
    import numpy as np

    return np.random.Generator(np.random.PCG64(derive_seed(*parts)))


def uniforms(key: int, indices: Any, k: int) -> Any:
    """U(0, 1) values [len(indices), k] (float64): value j of index i is a fixed function
    of (key, i, j) (splitmix64 of a counter), so each row can be drawn on its own and a
    whole batch is drawn in a few vectorised operations."""
    import numpy as np

    idx = np.asarray(indices, dtype=np.uint64).reshape(-1, 1)
    j = np.arange(k, dtype=np.uint64).reshape(1, -1)
    with np.errstate(over="ignore"):
        x = np.uint64(key & 0xFFFFFFFFFFFFFFFF) + (idx * np.uint64(k) + j + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def check_sample_args(seed: Any, n: Any, size: Any, start: Any) -> tuple[int, int, int, int]:
    """Validate `sample` arguments; errors name the argument."""
    for label, value in (("seed", seed), ("n", n), ("size", size), ("start", start)):
        if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
            raise TypeError(f"`{label}` must be an integer, got {value!r}")
    seed, n, size, start = int(seed), int(n), int(size), int(start)
    if n < 0:
        raise ValueError(f"`n` must be >= 0, got {n}")
    if size < 1:
        raise ValueError(f"`size` must be >= 1, got {size}")
    if start < 0:
        raise ValueError(f"`start` must be >= 0, got {start}")
    return seed, n, size, start


def check_indices(seed: Any, indices: Any, size: Any) -> tuple[int, list[int], int]:
    """Validate `sample_at` arguments; errors name the argument."""
    indices = [int(i) for i in indices]
    if indices and min(indices) < 0:
        raise ValueError(f"`indices` must be >= 0, got {min(indices)}")
    seed, _, size, _ = check_sample_args(seed, len(indices), size, 0)
    return seed, indices, size
