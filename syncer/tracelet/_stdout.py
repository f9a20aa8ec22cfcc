"""Keeping stdout for Tracelet's own output while vendor SDKs run (``tracelet sync``).

Vendor SDKs print to stdout: MLflow's ``🏃 View run ... at: <uri>`` after ``set_terminated``
against a server, W&B and ClearML banners, and the subprocesses and threads they start (W&B's
service, ClearML's reporters) inherit file descriptor 1 and write there directly. A
``sync --json`` report must be the only thing on stdout, so during the sync both ``sys.stdout``
and descriptor 1 point at stderr; the report is written to a duplicate of the real stdout.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def stdout_reserved() -> Iterator[Callable[[str], None]]:
    """Inside, anything written to ``sys.stdout`` or fd 1 goes to stderr (a process started
    inside keeps that for life). Yields ``write(text)``: the only way to the real stdout."""
    real = sys.stdout
    for stream in (real, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    try:
        real_is_fd1 = real.fileno() == 1
    except (AttributeError, OSError, ValueError):  # click's CliRunner, pytest's capsys
        real_is_fd1 = False
    saved_fd1 = None
    try:
        saved_fd1 = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # fd 1 or 2 closed (a cron job run with >&-): nothing to divert
        if saved_fd1 is not None:
            os.close(saved_fd1)
        saved_fd1 = None
    sys.stdout = sys.stderr

    def write(text: str) -> None:
        if saved_fd1 is not None and real_is_fd1:
            data = text.encode("utf-8", "surrogateescape")
            while data:
                data = data[os.write(saved_fd1, data):]
        else:
            real.write(text)
            real.flush()

    try:
        yield write
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        sys.stdout = real
        if saved_fd1 is not None:
            os.dup2(saved_fd1, 1)
            os.close(saved_fd1)
