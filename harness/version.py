"""The package version, in a module of its own so that the core can read it without
importing the public front end (`harness/__init__.py`)."""

__version__ = "0.1.0"
