"""Collects every destination harness (``harness_*.py``) into the ``harness`` fixture."""
from __future__ import annotations

import importlib
import sys
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


def _all_harnesses():
    out = []
    for path in sorted(HERE.glob("harness_*.py")):
        mod = importlib.import_module(path.stem)
        out.extend(getattr(mod, "HARNESSES", []))
    return out


HARNESS_CLASSES = _all_harnesses()


@pytest.fixture(params=HARNESS_CLASSES, ids=[h.label for h in HARNESS_CLASSES])
def harness(request, tmp_path, monkeypatch):
    h = request.param()
    h.config = h.setup(tmp_path, monkeypatch)
    yield h
    h.teardown()


@pytest.fixture
def project() -> str:
    return f"p{uuid.uuid4().hex[:10]}"


def pytest_sessionfinish(session, exitstatus):
    for cls in HARNESS_CLASSES:
        server = getattr(cls, "server", None)
        if server is not None and hasattr(server, "stop"):
            server.stop()
