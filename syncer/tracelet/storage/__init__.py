"""Where a logdir lives: a local folder, or a prefix in object storage (S3, GCS, Azure Blob).

``open_location(path_or_url)`` gives a :class:`~tracelet.storage.local.LocalLocation` for a
path and an :class:`~tracelet.storage.objects.ObjectLocation` for ``s3://``, ``gs://``,
``az://`` / ``abfs://`` URLs. What the rest of Tracelet needs from a location:

* ``listing()`` — everything under the logdir, files only: relative key → :class:`Entry`
  (size, ETag/generation, mtime). For object stores this is ONE paginated prefix listing per
  pass; discovery, the no-op signature, sidecar parts and artifacts all come from it.
* ``open(path, size, etag)`` — a seekable binary file whose reads are ranged GETs in blocks of
  ``TRACELET_READ_BLOCK_BYTES`` (default 8 MiB), never past ``size`` (the signpost) and pinned
  to the version ``etag`` names, so an object rewritten mid-read is noticed, not mixed in.
* ``read_bytes(path, max_bytes)`` for small objects (manifests, sidecar parts).
* ``display`` — the stable string that names the logdir (its URL, or its absolute path).

Local logdirs keep their own code paths (``os.scandir``, ``os.stat``, ``open``): nothing here
is on the local no-op path. Vendor SDKs (boto3, gcsfs, adlfs) are imported only when a cloud
location is opened: ``import tracelet`` imports none of them.
"""
from __future__ import annotations

import os
import re

from .paths import Entry, ObjectPath

__all__ = ["Entry", "ObjectPath", "is_object_url", "open_location", "read_block_bytes",
           "READ_BLOCK_ENV", "SCHEMES"]

# URL scheme -> the extra that serves it (Tracelet's `[<extra>]`, installed from a checkout)
SCHEMES = {"s3": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure",
           "abfss": "azure"}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
READ_BLOCK_ENV = "TRACELET_READ_BLOCK_BYTES"
DEFAULT_READ_BLOCK = 8 << 20
MIN_READ_BLOCK = 64 << 10


def is_object_url(text) -> bool:
    """True for ``s3://``, ``gs://``, ``az://``, ``abfs://`` … (any ``scheme://`` but file)."""
    if isinstance(text, ObjectPath):
        return True
    m = _URL.match(str(text))
    return bool(m) and m.group(1).lower() != "file"


def read_block_bytes() -> int:
    """Bytes per ranged GET: ``TRACELET_READ_BLOCK_BYTES`` (default 8 MiB, at least 64 KiB).

    Large on purpose: object stores bill and delay per request, so a resync of a 10 MB tail is
    two requests, not thousands."""
    raw = os.environ.get(READ_BLOCK_ENV, "").strip()
    if not raw:
        return DEFAULT_READ_BLOCK
    try:
        return max(MIN_READ_BLOCK, int(raw))
    except ValueError:
        from ..errors import UsageError

        raise UsageError(f"{READ_BLOCK_ENV}={raw!r}: expected a number of bytes "
                         f"(e.g. {DEFAULT_READ_BLOCK})") from None


def open_location(path_or_url):
    """A :class:`LocalLocation` for a path, an :class:`ObjectLocation` for a storage URL.

    Raises :class:`~tracelet.errors.UsageError` for an unknown scheme or a missing extra."""
    if is_object_url(path_or_url):
        from .objects import open_object_location

        return open_object_location(str(path_or_url))
    from .local import LocalLocation

    return LocalLocation(path_or_url)
