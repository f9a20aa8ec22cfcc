"""The reader tests' fixture: both read paths (helpers live in helpers.py)."""
from __future__ import annotations

import pytest

from tests.reader.helpers import fastscan_available


@pytest.fixture(params=["python", "fastscan"])
def read_path(request, monkeypatch):
    """Run the test once with the pure-Python reader and once with the C fast path."""
    if request.param == "fastscan":
        if not fastscan_available():
            pytest.skip("tracelet.reader._fastscan is not built here (no C compiler at install?)")
        monkeypatch.delenv("TRACELET_NO_FASTSCAN", raising=False)
    else:
        monkeypatch.setenv("TRACELET_NO_FASTSCAN", "1")
    return request.param
