"""Checkpoints: one JSON file per (destination target, run), replaced atomically.

Layout under the state dir (``<logdir>/.tracelet`` by default)::

    <state>/checkpoints/<dest>-<target hash>/<quoted run path>.json
    <state>/locks/<quoted run path>.lock

A checkpoint is an acknowledgement: offsets in it were confirmed by the destination. The one
exception is ``pending_end``, written *before* a file's first send of a sync: bytes between
``offset`` and ``pending_end`` may have reached the destination without being committed (a kill
-9 between send and commit). The next sync re-reads exactly that range with the same batch
boundaries and sends it with ``dedupe=True``.
"""
from __future__ import annotations

import hashlib
import os
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._fs import atomic_write_bytes, atomic_write_json, read_json
from .errors import FileReplacedError, StateError

CHECKPOINT_VERSION = 1
# 2: a tag or param a destination must rename gets a ``-<hash>`` suffix (destinations/keys.py);
# checkpoints written before say nothing (read as 1).
KEY_SCHEME = 2
HEAD_HASH_BYTES = 4096  # enough to tell two event files apart (header + first events)


def add_counts(target: dict[str, int], counts: dict[str, int]) -> None:
    """Add per-kind counts into ``target`` (zeros are not recorded)."""
    for k, n in counts.items():
        if n:
            target[k] = target.get(k, 0) + n


def quote_run(run_path: str) -> str:
    return "%2E" if run_path == "." else urllib.parse.quote(run_path, safe="")


@dataclass
class FileState:
    offset: int = 0
    size_seen: int = 0
    head_len: int = 0
    head_sha1: str = ""
    records: int = 0
    points: int = 0
    skipped_records: int = 0
    corrupt_offset: int | None = None
    corrupt_reason: str = ""
    pending_end: int | None = None
    tag_plugins: dict[str, str] = field(default_factory=dict)
    replaced: str = ""  # non-empty: the file shrank/changed; reported, never replayed
    # the incomplete tail left at `offset` by the last pass: {offset, size, mtime_ns, since};
    # found again unchanged (same size and mtime), it is reported as a stuck tail
    incomplete_tail: dict[str, Any] | None = None
    # Object stores: the ETag / generation of the version last read. Same value: the object
    # was not rewritten, so its head need not be read again to know it is the same file.
    etag: str = ""


@dataclass
class Checkpoint:
    destination: str
    target_key: str
    run_path: str
    run_id: str = ""
    identity: dict[str, Any] | None = None
    files: dict[str, FileState] = field(default_factory=dict)
    sidecar_done: list[str] = field(default_factory=list)
    sidecar_pending: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, list[int]] = field(default_factory=dict)
    status: str | None = None
    ended_at: float | None = None
    points_sent: dict[str, int] = field(default_factory=dict)
    unsupported: dict[str, int] = field(default_factory=dict)
    other: dict[str, int] = field(default_factory=dict)
    # refused for good by the destination, per kind, and the last report lines naming them
    # (tracelet.quarantine): their bytes count as done, so they are never sent again
    quarantined: dict[str, int] = field(default_factory=dict)
    quarantine: list[str] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)  # "m:<key>"/"p:<key>" -> tag/param
    key_scheme: int = KEY_SCHEME
    reconcile: bool = False  # state was lost and the run found: dedupe until one full pass
    source_signature: str = ""  # stat-only fingerprint of the run at the last complete sync
    last_sync: float | None = None
    last_error: str | None = None
    version: int = CHECKPOINT_VERSION

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Checkpoint":
        if d.get("version") != CHECKPOINT_VERSION:
            raise StateError(f"checkpoint version {d.get('version')} is not {CHECKPOINT_VERSION}")
        files = {k: FileState(**v) for k, v in (d.get("files") or {}).items()}
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        d["files"] = files
        d.setdefault("key_scheme", 1)  # written before key schemes existed
        return cls(**d)

    def add_counts(self, field_name: str, counts: dict[str, int]) -> None:
        add_counts(getattr(self, field_name), counts)

    @property
    def total_points(self) -> int:
        return sum(self.points_sent.values())


class CheckpointStore:
    """Loads and commits checkpoints under one state dir."""

    def __init__(self, state_dir: str | os.PathLike):
        self.root = Path(state_dir)
        self._root_s = os.fspath(state_dir)

    def path(self, target_key: str, run_path: str) -> Path:
        return Path(self._path(target_key, run_path))

    def _path(self, target_key: str, run_path: str) -> str:
        # plain string joins: this runs once per run and destination on every no-op cron pass
        return os.path.join(self._root_s, "checkpoints", target_key, quote_run(run_path) + ".json")

    def read_signature(self, target_key: str, run_path: str) -> str | None:
        """The source signature of the last complete pass, from its tiny ``.sig`` file.

        A cache of ``Checkpoint.source_signature`` for the no-op fast path (no JSON parse):
        written only after the checkpoint that carries the same signature was committed, and
        a pass only ever runs on a run whose current signature differs from it, so a stale
        ``.sig`` can never claim "unchanged" for a run that is not."""
        try:
            with open(self._path(target_key, run_path)[:-5] + ".sig", "rb") as f:
                return f.read().decode("ascii", "replace").strip() or None
        except OSError:
            return None

    def write_signature(self, ck: "Checkpoint") -> None:
        if ck.source_signature and not ck.last_error:
            atomic_write_bytes(self._path(ck.target_key, ck.run_path)[:-5] + ".sig",
                               ck.source_signature.encode())

    def peek(self, target_key: str, run_path: str) -> dict[str, Any] | None:
        """The raw checkpoint JSON (no validation), or None: for the no-op fast path."""
        try:
            return read_json(self._path(target_key, run_path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable: not "unchanged"; load() reports it properly

    def lock_path(self, run_path: str) -> Path:
        return self.root / "locks" / f"{quote_run(run_path)}.lock"

    def load(self, destination: str, target_key: str, run_path: str) -> Checkpoint | None:
        p = self.path(target_key, run_path)
        try:
            return Checkpoint.from_json(read_json(p))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, StateError) as e:
            raise StateError(
                f"{p}: unreadable checkpoint ({e}). Move it aside to resync this run; the "
                "destination is asked what it already has, so nothing is sent twice."
            ) from e

    def commit(self, ck: Checkpoint) -> None:
        ck.last_sync = time.time()
        atomic_write_json(self.path(ck.target_key, ck.run_path), ck.to_json())

    def list_checkpoints(self) -> list[Path]:
        root = self.root / "checkpoints"
        if not root.is_dir():
            return []
        return sorted(root.glob("*/*.json"))


def head_digest(path: str | os.PathLike, length: int, read_head=None) -> str:
    """SHA-1 of the first ``length`` bytes; ``read_head(path, n)`` reads them from an object
    store (default: the local file)."""
    if read_head is not None:
        return hashlib.sha1(read_head(path, length)).hexdigest()
    from .reader.events import open_event_file  # never blocks on a FIFO put in its place

    with open_event_file(os.fspath(path)) as f:
        return hashlib.sha1(f.read(length)).hexdigest()


def track_incomplete_tail(fs: FileState, pending: int, size: int, mtime_ns: int) -> dict | None:
    """Remember the incomplete tail a pass left at ``fs.offset`` (``pending`` bytes; 0: none).

    Returns the recorded tail when the previous pass left the very same one (same offset, file
    size and mtime): a file that stopped growing mid-record. Otherwise records it (or clears
    it) and returns None."""
    if not pending:
        fs.incomplete_tail = None
        return None
    tail = fs.incomplete_tail
    if (isinstance(tail, dict) and isinstance(tail.get("since"), (int, float))
            and (tail.get("offset"), tail.get("size"), tail.get("mtime_ns")) == (fs.offset, size,
                                                                                 mtime_ns)):
        return tail
    fs.incomplete_tail = {"offset": fs.offset, "size": size, "mtime_ns": mtime_ns,
                          "since": time.time()}
    return None


def check_file_identity(path: Path, fs: FileState, size_now: int, read_head=None,
                        etag: str = "") -> None:
    """Raise FileReplacedError if ``path`` is not the file this state was built from.

    Object stores (``etag`` given): an object rewritten by a writer that appends by
    re-uploading keeps its first bytes and grows; one that shrank or whose head changed was
    replaced. The same ETag as last time means the same version: nothing is read."""
    if fs.head_len == 0:
        return
    where = " (object rewritten: ETag/generation changed)" if etag and fs.etag else ""
    if size_now < fs.offset or size_now < fs.head_len:
        raise FileReplacedError(
            f"{path}: file shrank from at least {max(fs.offset, fs.head_len)} to {size_now} bytes "
            f"since the last sync{where}; not replayed. If it was rewritten on purpose, move its "
            "checkpoint aside (tracelet status shows where) to sync it as new."
        )
    if etag and fs.etag == etag:
        return
    if head_digest(path, fs.head_len, read_head) != fs.head_sha1:
        raise FileReplacedError(
            f"{path}: first {fs.head_len} bytes changed since the last sync (file replaced"
            f"{where}); not replayed. Move its checkpoint aside to sync it as new."
        )


def remember_identity(path: Path, fs: FileState, size_now: int, read_head=None) -> None:
    """Record the head hash once the file is long enough (or grows past the last head)."""
    want = min(size_now, HEAD_HASH_BYTES)
    if want > fs.head_len:
        # hash first: a file that cannot be read must not leave a length without its hash
        # (the next sync would call the file replaced and never read it again)
        fs.head_sha1, fs.head_len = head_digest(path, want, read_head), want
