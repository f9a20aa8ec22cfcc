"""The ``harness`` fixture over every destination harness (``harnesses.py``), for the
conformance, kill -9 and foreign-identity suites (servers the harnesses started are stopped
at the end of the session), ``aim_h`` (a local Aim repo per test) and ``aim_server`` (a real
``aim server`` per test)."""
from __future__ import annotations

from tests.destinations.harness_aim import aim_h, aim_server  # noqa: F401  fixtures
from tests.destinations.harnesses import HARNESS_CLASSES
from tracelet.testing.conformance import harness_fixture, project  # noqa: F401  fixtures

harness = harness_fixture(*HARNESS_CLASSES)


def pytest_sessionfinish(session, exitstatus):
    for cls in HARNESS_CLASSES:
        server = getattr(cls, "server", None)
        if server is not None and hasattr(server, "stop"):
            server.stop()
