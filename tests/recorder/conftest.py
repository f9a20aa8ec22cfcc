"""Recorder test fixtures: a temporary logdir and a clean recorder per test (helpers that read
runs back live in recorder_helpers.py)."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest


@pytest.fixture
def logdir(tmp_path, monkeypatch) -> Path:
    """An empty logdir that is also the working directory (so relative paths stay in tmp)."""
    d = tmp_path / "logs"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRACELET_LOGDIR", str(d))
    return d


@pytest.fixture(autouse=True)
def _no_run_left_behind():
    """Every test ends with no active experiment and the exit hooks restored."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    hook = sys.excepthook
    yield
    from tracelet.recorder import experiment

    if experiment._active is not None:
        experiment._active.stop()
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert sys.excepthook is hook
