"""Fault injection for the crash tests: real kills of a real process at exact protocol steps.

``TRACELET_CRASH_AT=name:N`` SIGKILLs this process the N-th time it passes ``crash_point(name)``
(``after_send``, ``before_rename``, ``wandb_rows_handed``, ``wandb_summary_fragment``,
``aim_repo_init``, ``aim_run_open``).
Unset (always, outside the tests), a crash point costs one environment lookup. Imports nothing
of ours, so every layer may call it.
"""
from __future__ import annotations

import os
import signal

_COUNTS: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get("TRACELET_CRASH_AT")
    if not spec:
        return
    want, _, nth = spec.partition(":")
    if want != name:
        return
    _COUNTS[name] = _COUNTS.get(name, 0) + 1
    if _COUNTS[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
