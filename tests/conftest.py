"""Shared test setup: a private cache per session and a fresh registry per test."""

from __future__ import annotations

import inspect
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


ACCEPTANCE_FILE = "test_acceptance.py"
# Tests that reuse what the acceptance training puts into the session's cache: they run after it.
AFTER_ACCEPTANCE = {"test_default_run_writes_a_leaderboard_above_chance"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The acceptance tests near the end: their training starts in the background
    (below) and the suite runs beside it; then the tests that reuse it."""

    def place(item: pytest.Item) -> int:
        if item.name in AFTER_ACCEPTANCE:
            return 2
        return 1 if item.path.name == ACCEPTANCE_FILE else 0

    items.sort(key=place)


def asks_for(item: pytest.Item, fixture: str) -> bool:
    """Whether a test names the fixture among its arguments (an autouse fixture is in
    every test's fixture closure, so that cannot tell)."""
    function = getattr(item, "function", None)
    return function is not None and fixture in inspect.signature(function).parameters


@pytest.fixture(autouse=True, scope="session")
def acceptance_training(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, _private_cache: None):
    """The acceptance test's training process and its folder, started in the background
    at the first test when a selected test asks for it by name (else None), on one
    thread; stopped if the session ends first."""
    if not any(asks_for(item, "acceptance_training") for item in request.session.items):
        yield None
        return
    from test_acceptance import start_acceptance_training

    folder = tmp_path_factory.mktemp("acceptance")
    process = start_acceptance_training(folder)
    yield process, folder
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture
def shared_data() -> Path:
    """`../shared/data` beside the checkout; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("shared test data (../shared/data) is not present")
    return SHARED_DATA


def write_registry(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
