"""In-memory (or journaled) reference destination for engine tests: see :mod:`.client`."""
from .client import MemoryDestination, MemoryStore, StoredRun, reset_stores, store_named

__all__ = ["MemoryDestination", "MemoryStore", "StoredRun", "reset_stores", "store_named"]
