"""The memory destination's factory side: options and target, no import of the client."""
from __future__ import annotations

import hashlib
import os
from typing import Any, Mapping

from ..base import DestinationFactory, Option

NAME = "memory"
KNOBS = ("memory_store", "memory_down", "memory_fail_sends", "memory_slow_s", "memory_kinds",
         "memory_reject")


def option(config: Mapping[str, Any], key: str) -> Any:
    """A knob from the destination config, else from ``TRACELET_<KEY>`` (subprocess tests)."""
    value = config.get(key)
    if value is None or value == "":
        value = os.environ.get(f"TRACELET_{key.upper()}") or None
    return value


class MemoryFactory(DestinationFactory):
    name = NAME
    extra = ""
    vendor_module = None
    client = "tracelet.destinations.memory.client:MemoryDestination"
    summary = "reference destination for tests (in-process, or a journal folder)"
    options = (
        Option("memory_store", "--memory-store", env="TRACELET_MEMORY_STORE",
               help="memory destination: journal folder (default: this process only)."),
    )

    def target(self, config: Mapping[str, Any]) -> str:
        store = option(config, "memory_store") or "mem:default"
        return store if store.startswith("mem:") else os.path.abspath(store)

    def target_key(self, config: Mapping[str, Any]) -> str:
        return f"{self.name}-{hashlib.sha1(self.target(config).encode()).hexdigest()[:10]}"


FACTORY = MemoryFactory()


def target_key(config: Mapping[str, Any]) -> str:
    return FACTORY.target_key(config)
