"""Live mode (``config={"sync": "live", "sync_interval": 30}``): push the run while it trains.

A daemon thread calls ``tracelet.engine.sync_run_dir(run_dir, backends)`` every
``sync_interval`` seconds and once more at stop. The engine is optional here: if it (or that
function, or a backend SDK) is missing or fails, the failure is logged and training goes on;
``tracelet sync`` later catches up from the same files, exactly once.
"""
from __future__ import annotations

import threading
from pathlib import Path

from ..redact import scrubbed_logger

log = scrubbed_logger("tracelet.recorder")  # log lines never show a credential


class LiveSync:
    def __init__(self, run_dir: Path, backends: list[str], interval_s: float,
                 redact_secrets: bool | list[str] = True, secret_patterns: list[str] | None = None):
        self.run_dir = run_dir
        self.redaction = {"redact_secrets": redact_secrets, "secret_patterns": list(secret_patterns or [])}
        self.backends = backends
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tracelet-live-sync", daemon=True)
        self._warned = False
        self.passes = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, final: bool = True, timeout_s: float = 300.0) -> None:
        """Stop the thread; with ``final``, one last pass (after the manifest is final)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        if final:
            self.sync_once()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sync_once()

    def sync_once(self) -> None:
        try:
            from .. import engine

            sync_run_dir = getattr(engine, "sync_run_dir")
        except Exception as e:  # engine absent or broken: say so once
            if not self._warned:
                self._warned = True
                log.warning("tracelet: live sync unavailable (%s: %s); run `tracelet sync` later",
                            type(e).__name__, e)
            return
        try:
            sync_run_dir(self.run_dir, self.backends, **self.redaction)
            self.passes += 1
        except Exception:
            log.warning("tracelet: live sync of %s failed; will retry", self.run_dir, exc_info=True)
