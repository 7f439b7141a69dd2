"""Shared test setup: a private cache per session and a fresh registry per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# Tests never touch the network: a hub model named in registry.yaml must come from the
# local cache (or be reported missing), never be downloaded.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["HARNESS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.pop("HARNESS_REGISTRY", None)


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.config.registry

    monkeypatch.setattr(harness.config.registry, "_active", None)


@pytest.fixture
def shared_data() -> Path:
    """`../shared/data` beside the checkout; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("shared test data (../shared/data) is not present")
    return SHARED_DATA


def write_registry(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
