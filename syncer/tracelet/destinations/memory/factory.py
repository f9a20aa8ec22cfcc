"""The memory destination's factory side: options and target, no import of the client."""
from __future__ import annotations

import hashlib
import os
from typing import Any, Mapping

NAME = "memory"
OPTIONS = ("memory_store", "memory_down", "memory_fail_sends", "memory_slow_s", "memory_kinds",
           "memory_reject")


def option(config: Mapping[str, Any], key: str) -> Any:
    """A knob from the destination config, else from ``TRACELET_<KEY>`` (subprocess tests)."""
    value = config.get(key)
    if value is None or value == "":
        value = os.environ.get(f"TRACELET_{key.upper()}") or None
    return value


def target_key(config: Mapping[str, Any]) -> str:
    store = option(config, "memory_store") or "mem:default"
    if not store.startswith("mem:"):
        store = os.path.abspath(store)
    return f"{NAME}-{hashlib.sha1(store.encode()).hexdigest()[:10]}"
