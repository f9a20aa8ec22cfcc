"""A logdir on a local or shared filesystem (NFS, Lustre): plain system calls.

The sync engine, discovery and reports keep their own local code paths (``os.scandir``,
``os.stat``, ``open``), tuned for the no-op cron pass; this class gives the same interface as
:class:`~tracelet.storage.objects.ObjectLocation` to code that reads either kind alike.
"""
from __future__ import annotations

import os
from pathlib import Path

from .paths import Entry


class LocalLocation:
    is_local = True

    def __init__(self, path):
        self.root = Path(path)
        self.display = os.path.abspath(os.fspath(path))

    def entry(self, path) -> Entry | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return Entry(st.st_size, "", st.st_mtime)

    def open(self, path, size: int | None = None, etag: str = ""):
        return open(path, "rb")

    def read_bytes(self, path, max_bytes: int | None = None) -> bytes:
        with open(path, "rb") as f:
            return f.read() if max_bytes is None else f.read(max_bytes)

    def __repr__(self) -> str:
        return f"LocalLocation({self.display!r})"
