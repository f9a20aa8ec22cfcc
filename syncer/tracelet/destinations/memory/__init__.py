"""In-memory (or journaled) reference destination for engine tests: see :mod:`.client`."""
from __future__ import annotations

from .factory import FACTORY


def __getattr__(name: str):  # lazy, as the vendor packages: the registry imports FACTORY only
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.client"), name)
    globals()[name] = value
    return value
