"""Destinations of a sync: created lazily, once per worker thread, and their target keys."""
from __future__ import annotations

import threading
from typing import Any

from ..destinations import create_destination, get_factory, target_key
from ..destinations.base import Destination
from ..errors import DestinationError, TraceletError
from ..redact import scrub, scrubbed_logger, strip_url_credentials

log = scrubbed_logger("tracelet.sync")


class TargetKeys(dict):
    """name -> target key, computed on first use (only for the destinations a pass names)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = config

    def __missing__(self, name: str) -> str:
        key = self[name] = target_key(name, self.config)
        return key

    def label(self, name: str) -> str:
        """The target as reports and log lines show it, without credentials and without the
        SDK (the factory's target: URI, folder, mode)."""
        labels = self.__dict__.setdefault("_labels", {})
        if name not in labels:
            labels[name] = target_label(name, self.config)
        return labels[name]


def target_label(name: str, config: dict[str, Any]) -> str:
    """``name``'s target for ``config`` as shown to people: no credentials (also not their
    user name), computed without importing the vendor SDK."""
    return scrub(strip_url_credentials(get_factory(name).target(dict(config))))


class DestinationPool:
    """Destinations are created lazily, once per worker thread (vendor clients are rarely
    thread-safe), and only when a run actually needs them: a no-op resync imports no SDK."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.local = threading.local()
        self.all: list[Destination] = []
        self.lock = threading.Lock()
        self.failed: dict[str, str] = {}

    def get(self, name: str) -> Destination:
        if name in self.failed:
            raise DestinationError(self.failed[name])
        cache = getattr(self.local, "dests", None)
        if cache is None:
            cache = self.local.dests = {}
        if name not in cache:
            try:
                dest = create_destination(name, self.config)
            except TraceletError as e:
                with self.lock:
                    self.failed[name] = scrub(str(e))
                raise
            except Exception as e:  # a vendor SDK failing at set-up fails only this destination
                msg = scrub(f"{name}: cannot start the destination: {type(e).__name__}: {e}")
                with self.lock:
                    self.failed[name] = msg
                raise DestinationError(msg) from e
            cache[name] = dest
            with self.lock:
                self.all.append(dest)
        return cache[name]

    def close(self) -> None:
        for d in self.all:
            try:
                d.close()
            except Exception as e:  # closing must not hide the sync's own result
                log.warning("closing %s failed: %s", d.name, scrub(str(e)))
