"""Exceptions with messages that say what is at fault and what to do.

`HarnessError` and its subclasses are user errors: the command line prints the message
without a traceback and exits with status 2.
"""

from __future__ import annotations

import difflib


class HarnessError(Exception):
    """A problem with the user's input or configuration (exit status 2)."""


class RegistryError(HarnessError):
    """registry.yaml is malformed: the message names the file and the field path."""


class PluginError(HarnessError):
    """A plugin registered something invalid, or two plugins claim the same name."""


class UnknownNameError(HarnessError, KeyError):
    """A name that is not registered; the message lists the closest known names."""

    def __init__(self, what: str, name: str, known: list[str]) -> None:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(known) if known else "none"
        super().__init__(f"unknown {what} {name!r}.{hint} Known: {listing}.")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DatasetUnavailable(HarnessError):
    """A dataset a task needs is not on this machine: the cell is recorded as skipped."""


class DataFormatError(HarnessError):
    """A dataset file is malformed: the message names the file and the row or key."""
