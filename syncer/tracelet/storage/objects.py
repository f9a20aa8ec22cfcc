"""A logdir in object storage: one listing per pass, ranged GETs pinned to a version.

Shared by every backend (:mod:`.s3` through boto3, :mod:`.fsspec_store` through gcsfs and
adlfs); a backend supplies four primitives on keys *relative to the logdir*:

``_list()``             every object under the prefix: ``(rel, Entry)`` (one paginated listing)
``_get(rel, a, b, v)``  bytes ``[a, b)`` of version ``v`` (ETag / generation); raises
                        :class:`ObjectChangedError` when the object is no longer that version
``_head(rel)``          the object's :class:`Entry`, or None
``_container_exists()`` for the message when a listing comes back empty

Why each rule:

* Writers on object stores "append" by re-uploading the whole object (TF's and tensorboardX's
  S3 writers on every flush), so an object is read only up to the size the listing showed
  (the signpost) and only from the version the listing showed: a rewrite during the read
  stops that file for this pass (what was read is committed) instead of mixing two versions.
* Keys are untrusted: a key with an empty, ``.`` or ``..`` segment could name a folder that is
  not under the logdir once copied to local disk (artifacts are uploaded from local copies);
  such objects are skipped and reported. Keys ending in ``/`` are console "folder" markers.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

from ..errors import SourceError, UsageError
from .paths import Entry, ObjectPath


class ObjectChangedError(SourceError):
    """The object was rewritten (or deleted) after the listing that named its version."""


STAT_KEYS = ("list_calls", "get_calls", "head_calls", "bytes_read")
_HEAD_CACHE_ENTRIES = 4096


class ObjectLocation:
    """A prefix in a bucket/container, named by its URL (``s3://bucket/runs``)."""

    is_local = False
    extra = ""  # the pip extra that brings the SDK

    def __init__(self, url: str):
        self.root = ObjectPath(url)
        self.display = self.root.url
        self.problems: list[str] = []  # from the last listing: skipped keys
        self._listing: dict[str, Entry] | None = None
        self._sorted: tuple[dict, list[str]] | None = None  # (listing, its keys sorted)
        self._lock = threading.Lock()
        self.stats = {k: 0 for k in STAT_KEYS}
        self._heads: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()

    # -- primitives (backends) ----------------------------------------------------------------
    def _list(self):
        raise NotImplementedError

    def _get(self, rel: str, start: int, end: int, etag: str) -> bytes:
        raise NotImplementedError

    def _head(self, rel: str) -> Entry | None:
        raise NotImplementedError

    def _container_exists(self) -> bool:
        return True

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    # -- listing ------------------------------------------------------------------------------
    def listing(self, refresh: bool = False) -> dict[str, Entry]:
        """Every object under the logdir: relative key -> Entry. One listing, cached until
        ``refresh`` (the engine refreshes once per pass)."""
        if self._listing is not None and not refresh:
            return self._listing
        out: dict[str, Entry] = {}
        problems: list[str] = []
        for rel, entry in self._list():
            if not rel or rel.endswith("/"):
                continue  # the prefix itself, or a console's zero-byte "folder" marker
            parts = rel.split("/")
            if any(p in ("", ".", "..") for p in parts):
                problems.append(f"{self.display}/{rel}: object key has an empty, '.' or '..' "
                                "path segment; skipped. Rename the object to sync it.")
                continue
            out[rel] = entry
        if not out and not self._container_exists():
            raise UsageError(f"{self.display}: no such bucket or container (or no permission "
                             "to see it). Check the URL and the credentials.")
        self._listing, self.problems = out, problems
        return out

    def under(self, path) -> list[tuple[str, Entry]]:
        """Objects of the current listing below folder ``path``: (key relative to it, entry),
        in key order. No request: a bisect in the sorted listing."""
        import bisect

        listing = self.listing()
        if self._sorted is None or self._sorted[0] is not listing:
            self._sorted = (listing, sorted(listing))
        keys = self._sorted[1]
        prefix = self.rel(path)
        prefix = prefix + "/" if prefix else ""
        out = []
        for i in range(bisect.bisect_left(keys, prefix), len(keys)):
            k = keys[i]
            if not k.startswith(prefix):
                break
            out.append((k[len(prefix):], listing[k]))
        return out

    def rel(self, path) -> str:
        url = str(path)
        base = self.root.url
        if url == base:
            return ""
        if not url.startswith(base + "/"):
            raise ValueError(f"{url} is not under {base}")
        return url[len(base) + 1:]

    def entry(self, path) -> Entry | None:
        """The object's entry in the current listing (no request)."""
        return self.listing().get(self.rel(path))

    def head(self, path) -> Entry | None:
        """Ask the store (one HEAD request): for a URL that may name a single object."""
        self.count("head_calls")
        return self._head(self.rel(path))

    # -- reading ------------------------------------------------------------------------------
    def read_range(self, path, start: int, end: int, etag: str = "") -> bytes:
        if end <= start:
            return b""
        data = self._get(self.rel(path), start, end, etag)
        self.count("get_calls")
        self.count("bytes_read", len(data))
        if len(data) != end - start:
            raise ObjectChangedError(f"{path}: asked for bytes {start}..{end} and got "
                                     f"{len(data)}; the object changed under the read")
        return data

    def head_bytes(self, path, n: int, etag: str) -> bytes:
        """The first ``n`` bytes of version ``etag`` (one small GET, cached per version: the
        identity check and the head hash of one file share it)."""
        key = (str(path), etag, n)
        with self._lock:
            cached = self._heads.get(key)
        if cached is not None:
            return cached
        data = self.read_range(path, 0, n, etag)
        with self._lock:
            self._heads[key] = data
            while len(self._heads) > _HEAD_CACHE_ENTRIES:
                self._heads.popitem(last=False)
        return data

    def read_bytes(self, path, max_bytes: int) -> bytes:
        """A small object whole (manifest, sidecar part), at the version the listing saw."""
        entry = self.entry(path)
        if entry is None:
            raise SourceError(f"{path}: no longer in the bucket; skipped this sync.")
        if entry.size > max_bytes:
            raise SourceError(f"{path}: {entry.size:,} bytes, more than the {max_bytes:,} "
                              "Tracelet reads for this kind of file; skipped.")
        return self.read_range(path, 0, entry.size, entry.etag)

    def open(self, path, size: int, etag: str = "") -> "RangedFile":
        from . import read_block_bytes

        return RangedFile(self, path, size, etag, read_block_bytes())

    def download(self, path, dest, entry: Entry) -> None:
        """Copy the object to local file ``dest`` block by block (artifacts)."""
        from . import read_block_bytes

        block = read_block_bytes()
        with open(dest, "wb") as f:
            for a in range(0, entry.size, block):
                f.write(self.read_range(path, a, min(a + block, entry.size), entry.etag))

    def stats_snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.stats)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.display!r})"


class RangedFile:
    """A read-only, seekable view of bytes ``[0, size)`` of one object version.

    A read of half a block or more is one ranged GET of exactly what was asked (the event
    reader asks for whole blocks, less the partial record it keeps); a smaller read fetches one
    block from the position and serves the next reads from it. Nothing past ``size`` is ever
    requested, and no byte is fetched twice by a sequential reader."""

    def __init__(self, loc: ObjectLocation, path, size: int, etag: str, block: int):
        self.loc, self.path, self.size, self.etag, self.block = loc, path, size, etag, block
        self.read_chunk = block  # the event reader's refill size (reader.records._refill)
        self.pos = 0
        self._buf = b""
        self._buf_at = 0

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 1:
            pos += self.pos
        elif whence == 2:
            pos += self.size
        self.pos = max(0, pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self.pos
        n = min(n, self.size - self.pos)
        if n <= 0:
            return b""
        a = self.pos
        out = b""
        lo = a - self._buf_at
        if 0 <= lo < len(self._buf):  # what the last block already holds
            out = self._buf[lo:lo + n]
            a += len(out)
            n -= len(out)
        if n >= self.block // 2:  # a big read (the event reader's refills): exactly that
            out += self.loc.read_range(self.path, a, a + n, self.etag)
        elif n > 0:  # a small one: a block from here, for the small reads that follow
            self._buf_at = a
            self._buf = self.loc.read_range(self.path, a, min(a + self.block, self.size),
                                            self.etag)
            out += self._buf[:n]
        self.pos = self.pos + len(out)
        return out

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        self._buf = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_object_location(url: str) -> ObjectLocation:
    from . import SCHEMES

    scheme = url.partition("://")[0].lower()
    extra = SCHEMES.get(scheme)
    if extra is None:
        raise UsageError(f"{url}: unknown storage scheme '{scheme}://'; Tracelet reads local "
                         "paths and s3://, gs://, az:// or abfs:// URLs.")
    if not url.partition("://")[2].strip("/"):
        raise UsageError(f"{url}: give a bucket (and optionally a prefix): {scheme}://BUCKET/runs")
    if extra == "s3":
        from .s3 import S3Location

        return S3Location(url)
    from .fsspec_store import FsspecLocation

    return FsspecLocation(url, extra)
