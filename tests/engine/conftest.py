"""Engine tests: the sync protocol against the memory destination (no vendor SDK, seconds)."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _fresh_memory_stores():
    from tracelet.destinations.memory import reset_stores

    reset_stores()
    yield
    reset_stores()
