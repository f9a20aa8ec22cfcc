"""SIGTERM/SIGINT: drain (finish the batch in hand, commit) and stop."""
from __future__ import annotations

import os
import signal
import threading


def install_signal_handlers(stop: threading.Event):
    """SIGTERM/SIGINT: drain (finish the batch in hand, commit) and stop. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {}

    def handler(signum, frame):
        if stop.is_set():  # second signal: the user really wants out
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):
            pass

    def restore():
        for sig, h in previous.items():
            try:
                signal.signal(sig, h)
            except (ValueError, OSError):
                pass

    return restore
