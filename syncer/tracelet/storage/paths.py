"""Small value types shared by every location: a listing entry and a path in object storage.

No SDK is imported here: the engine, discovery and reports use these types on every pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath


@dataclass(frozen=True, slots=True)
class Entry:
    """One object (or file) as a listing shows it.

    ``etag`` names the object's version: the ETag on S3 and Azure, the generation on GCS. It
    changes whenever the object is written again, which is how an object store tells "same
    bytes" without reading them (and why a no-op pass needs nothing but the listing)."""

    size: int
    etag: str = ""
    mtime: float | None = None


class ObjectPath:
    """A path in object storage, written as its URL (``s3://bucket/runs/exp1/events…``).

    Offers the few ``pathlib`` operations the reader and the engine use (``/``, ``name``,
    ``parent``, ``relative_to``, ``as_posix``), so run and file paths read the same whether
    a logdir is local or not. ``os.fspath`` gives the URL: destinations and reports use it as
    the file's name; no local system call can succeed on it, so a missed seam fails loudly
    (FileNotFoundError naming the URL) instead of reading a local file by accident.
    """

    __slots__ = ("url", "_split")

    def __init__(self, url: str):
        url = str(url)
        scheme, sep, rest = url.partition("://")
        if not sep:
            raise ValueError(f"{url!r} is not a storage URL (scheme://bucket/key)")
        rest = rest.strip("/")
        self.url = f"{scheme}://{rest}"
        self._split = len(scheme) + 3 + (rest.find("/") if "/" in rest else len(rest))

    # the bucket (or container) part and the key inside it
    @property
    def anchor(self) -> str:
        return self.url[: self._split]

    @property
    def key(self) -> str:
        return self.url[self._split + 1:]

    @property
    def name(self) -> str:
        tail = self.url[self._split:]
        if not tail:  # the bucket itself
            return self.url.partition("://")[2]
        return tail.rpartition("/")[2]

    @property
    def parent(self) -> "ObjectPath":
        if not self.key:
            return self
        return ObjectPath(self.url.rpartition("/")[0])

    def __truediv__(self, part) -> "ObjectPath":
        part = str(part).strip("/")
        return ObjectPath(f"{self.url}/{part}") if part else self

    def relative_to(self, other) -> PurePosixPath:
        base = str(other).rstrip("/")
        if self.url == base:
            return PurePosixPath(".")
        if not self.url.startswith(base + "/"):
            raise ValueError(f"{self.url} is not under {base}")
        return PurePosixPath(self.url[len(base) + 1:])

    def resolve(self) -> "ObjectPath":
        return self

    def as_posix(self) -> str:
        return self.url

    def __fspath__(self) -> str:
        return self.url

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"ObjectPath({self.url!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, ObjectPath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(("ObjectPath", self.url))

    def __lt__(self, other) -> bool:
        return str(self) < str(other)
