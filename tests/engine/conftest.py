"""Engine tests: the sync protocol against the memory destination (no vendor SDK, seconds)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "destinations"))  # sources.py: logdirs with known truth


@pytest.fixture(autouse=True)
def _fresh_memory_stores():
    from tracelet.destinations.memory import reset_stores

    reset_stores()
    yield
    reset_stores()
