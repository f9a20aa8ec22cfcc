"""The plugin's tests/test_conformance.py: Tracelet's conformance suite against the dummy."""
from dummy_harness import DummyHarness

from tracelet.testing.conformance import *  # noqa: F401,F403  the tests and `project`
from tracelet.testing.conformance import harness_fixture

harness = harness_fixture(DummyHarness)
