"""Whether a plugin may fetch files from the network now.

The harness downloads nothing of its own accord: a plugin fetches a file (a hub model's
weights) only for an instance the user named, when a run needs it. A dry run only plans,
so it runs under `no_downloads()`: a plugin then looks in its local cache alone and
reports what is missing there instead of fetching it (or of waiting on a hub that
cannot be reached).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

_ALLOWED = contextvars.ContextVar("harness_downloads_allowed", default=True)


def downloads_allowed() -> bool:
    """False inside `no_downloads()`: use local copies only."""
    return _ALLOWED.get()


@contextlib.contextmanager
def no_downloads() -> Iterator[None]:
    """Within this block plugins fetch nothing (see the module's docstring)."""
    token = _ALLOWED.set(False)
    try:
        yield
    finally:
        _ALLOWED.reset(token)
