"""The destination contract (:mod:`tracelet.testing.conformance`) run against every built-in
destination harness (the ``harness`` fixture of ``conftest.py``): the same tests a
third-party destination imports into its own suite."""
from __future__ import annotations

from tracelet.testing.conformance import *  # noqa: F401,F403  the tests, `project`
