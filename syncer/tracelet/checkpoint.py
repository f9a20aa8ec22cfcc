"""Checkpoints: one JSON file per (destination target, run), replaced atomically.

Layout under the state dir (``<logdir>/.tracelet`` by default)::

    <state>/checkpoints/<dest>-<target hash>/<quoted run path>.json
    <state>/checkpoints/<dest>-<target hash>/<quoted run path>.sig   no-op fast path cache
    <state>/locks/<quoted run path>.lock
    <state>/sig.key                                                  key of the .sig MACs

A checkpoint is an acknowledgement: offsets in it were confirmed by the destination. The one
exception is ``pending_end``, written *before* a file's first send of a sync: bytes between
``offset`` and ``pending_end`` may have reached the destination without being committed (a kill
-9 between send and commit). The next sync re-reads exactly that range with the same batch
boundaries and sends it with ``dedupe=True``.

Nothing read from the state dir is trusted. Every path is built from the target key and run
path the engine computed, never from a checkpoint's content; a checkpoint is validated on load
(:data:`CHECKPOINT_SCHEMA`, and it must name the run and destination it is loaded for), and one
that is not (:class:`InvalidCheckpointError`) is moved aside by the engine and rebuilt by asking
the destination. Folders are opened without following links and files must be plain files
(:mod:`tracelet._fs`).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ._fs import (KEY_FILE_MODE, STATE_FILE_MODE, _NOFOLLOW, _new_temp, _unlink_quietly,
                  describe_entry, exclusive_lock_at, open_state_dir, open_state_file,
                  replace_in_dir)
from .errors import FileReplacedError, InvalidCheckpointError, StateError, UnsafeStatePathError

CHECKPOINT_VERSION = 1
# 2: a tag or param a destination must rename gets a ``-<hash>`` suffix (destinations/keys.py);
# checkpoints written before say nothing (read as 1).
KEY_SCHEME = 2
HEAD_HASH_BYTES = 4096  # enough to tell two event files apart (header + first events)
# A real checkpoint is a few KB per event file; a bigger file is damage (or an attack on memory).
MAX_CHECKPOINT_BYTES = 64 * 1024 * 1024
KEY_NAME = "sig.key"
INT64_MAX = 2**63 - 1


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
    # the latest point wall time delivered (unix s): a plain run's end (``--finish-idle``)
    last_wall_time: float | None = None
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
    # the destination's target as reports show it (no credentials): `tracelet status` names
    # the target of a checkpoint folder with it (the folder's name is only a hash)
    target: str = ""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return d

    @classmethod
    def from_json(cls, d: Any, where: str = "checkpoint") -> "Checkpoint":
        """Build from parsed JSON after validating it (:class:`InvalidCheckpointError` names
        the first bad field). Unknown fields are dropped (a newer Tracelet may add some)."""
        _validate(d, where)
        files = {k: FileState(**{f: x for f, x in v.items() if f in FileState.__dataclass_fields__})
                 for k, v in (d.get("files") or {}).items()}
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        d["files"] = files
        d.setdefault("key_scheme", 1)  # written before key schemes existed
        return cls(**d)

    @classmethod
    def from_bytes(cls, raw: bytes, where: str) -> "Checkpoint":
        return cls.from_json(_parse_json(raw, where), where)

    def add_counts(self, field_name: str, counts: dict[str, int]) -> None:
        add_counts(getattr(self, field_name), counts)

    @property
    def total_points(self) -> int:
        return sum(self.points_sent.values())


# ---------------------------------------------------------------------------------------------
# validation: types and ranges of everything a checkpoint holds
# ---------------------------------------------------------------------------------------------
_COUNT = {"type": "integer", "minimum": 0, "maximum": INT64_MAX}
_OPT_COUNT = {"type": ["integer", "null"], "minimum": 0, "maximum": INT64_MAX}
_STR = {"type": "string"}
_OPT_STR = {"type": ["string", "null"]}
_OPT_NUM = {"type": ["number", "null"]}  # NaN/Infinity never get here: refused by the parser
_COUNTS = {"type": "object", "additionalProperties": _COUNT}

# Every field a version-1 checkpoint has always held is required: a missing one would silently
# become its default (offset 0: the whole file re-sent, without dedupe). Fields added since are
# optional (checkpoints written before them lack them; their defaults are safe). Unknown fields
# (a newer Tracelet's) are dropped.
_ADDED_LATER = {"incomplete_tail", "etag", "quarantined", "quarantine", "keys", "key_scheme",
                "last_wall_time", "target"}
FILE_STATE_SCHEMA = {
    "type": "object",
    "required": [f for f in FileState.__dataclass_fields__ if f not in _ADDED_LATER],
    "properties": {
        "incomplete_tail": {"type": ["object", "null"]},  # track_incomplete_tail checks it
        "etag": _STR,
        "offset": _COUNT, "size_seen": _COUNT, "records": _COUNT, "points": _COUNT,
        "skipped_records": _COUNT, "corrupt_offset": _OPT_COUNT, "pending_end": _OPT_COUNT,
        "head_len": {"type": "integer", "minimum": 0, "maximum": HEAD_HASH_BYTES},
        "head_sha1": {"type": "string", "pattern": "^([0-9a-f]{40})?$"},
        "corrupt_reason": _STR, "replaced": _STR,
        "tag_plugins": {"type": "object", "additionalProperties": _STR},
    },
}

CHECKPOINT_SCHEMA = {
    "type": "object",
    "required": [f for f in Checkpoint.__dataclass_fields__ if f not in _ADDED_LATER],
    "properties": {
        "version": {"const": CHECKPOINT_VERSION},
        "destination": _STR, "target_key": _STR, "run_path": _STR, "run_id": _STR,
        "identity": {"type": ["object", "null"]},  # each destination checks its own (open_run)
        "files": {"type": "object", "additionalProperties": FILE_STATE_SCHEMA},
        "sidecar_done": {"type": "array", "items": _STR},
        "sidecar_pending": _OPT_STR,
        "params": {"type": "object", "additionalProperties": _STR},
        # [size, mtime_ns] of a local file, [size, ETag/generation] of an object
        "artifacts": {"type": "object", "additionalProperties": {
            "type": "array", "minItems": 2, "items": False, "prefixItems": [
                _COUNT,
                {"type": ["integer", "string"], "minimum": -INT64_MAX - 1, "maximum": INT64_MAX}]}},
        "status": _OPT_STR, "ended_at": _OPT_NUM,
        "last_wall_time": {"type": ["number", "null"], "minimum": 0, "exclusiveMaximum": 1e12},
        "points_sent": _COUNTS, "unsupported": _COUNTS, "other": _COUNTS,
        "quarantined": _COUNTS, "quarantine": {"type": "array", "items": _STR},
        "keys": {"type": "object", "additionalProperties": _STR},
        "key_scheme": {"type": "integer", "minimum": 1, "maximum": KEY_SCHEME},
        "reconcile": {"type": "boolean"},
        "source_signature": _STR, "last_sync": _OPT_NUM, "last_error": _OPT_STR,
        "target": {"type": "string", "maxLength": 2000},
    },
}

_VALIDATOR = None


def _validator():
    global _VALIDATOR
    if _VALIDATOR is None:  # jsonschema only when a checkpoint is loaded: never on the fast path
        from jsonschema import Draft202012Validator, validators

        # JSON Schema's "integer" accepts 1.0; an offset must be a real int (seek, pread, slices)
        strict = Draft202012Validator.TYPE_CHECKER.redefine(
            "integer", lambda _, x: isinstance(x, int) and not isinstance(x, bool))
        cls = validators.extend(Draft202012Validator, type_checker=strict)
        _VALIDATOR = cls(CHECKPOINT_SCHEMA)
    return _VALIDATOR


def _validate(d: Any, where: str) -> None:
    from jsonschema.exceptions import best_match

    err = best_match(_validator().iter_errors(d))
    if err is not None:
        raise InvalidCheckpointError(where, f"field {err.json_path}: {_short(err.message)}")
    for rel, fs in d["files"].items():
        if fs["pending_end"] is not None and fs["pending_end"] < fs["offset"]:
            raise InvalidCheckpointError(where, f"field $.files[{rel!r}].pending_end: "
                                         f"{fs['pending_end']} is below its offset {fs['offset']}")
        if fs["head_len"] and not fs["head_sha1"]:
            raise InvalidCheckpointError(where, f"field $.files[{rel!r}].head_sha1: empty, but "
                                         f"head_len is {fs['head_len']}")


def _parse_json(raw: bytes, where: str) -> Any:
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a number a checkpoint holds")

    def finite(text: str) -> float:
        v = float(text)
        if v in (float("inf"), float("-inf")):
            raise ValueError(f"number {_short(text)} is out of range")
        return v

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidCheckpointError(where, f"not UTF-8 text (byte {e.start})") from None
    try:
        return json.loads(text, parse_constant=no_constant, parse_float=finite)
    except RecursionError:
        raise InvalidCheckpointError(where, "not JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, an int of more digits than Python converts
        why = "a number with thousands of digits" if "digits" in str(e) else _short(str(e))
        raise InvalidCheckpointError(where, f"not JSON: {why}") from None


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------------------------
class CheckpointStore:
    """Loads and commits checkpoints under one state dir.

    The state dir's own name (``.tracelet``, or ``<logdir name>-<hash>`` under ``--state-dir``)
    and everything below it are opened with O_NOFOLLOW; only the folder above it (the logdir or
    the ``--state-dir`` given) may be reached through links."""

    def __init__(self, state_dir: str | os.PathLike):
        self.root = Path(state_dir)
        self._root_s = os.path.normpath(os.fspath(state_dir))
        base, leaf = os.path.split(self._root_s)
        if leaf in ("", ".", ".."):  # a state dir given as "/" or ".": nothing above it to trust
            base, leaf = self._root_s, ""
        self._base, self._parts = base or ".", [leaf] if leaf else []
        self._key_cache: bytes | None = None  # b"": the key is unusable this pass
        self.problem: str | None = None  # about the state dir as a whole (the key), per pass

    def new_pass(self) -> None:
        """Read the key again at the next use (once per pass, not per run)."""
        self._key_cache, self.problem = None, None

    # -- paths: only ever from the engine's target key and run path --------------------------
    def path(self, target_key: str, run_path: str) -> Path:
        return Path(self._path(target_key, run_path))

    def _path(self, target_key: str, run_path: str) -> str:
        # plain string joins: this runs once per run and destination on every no-op cron pass
        return os.path.join(self._root_s, "checkpoints", target_key, quote_run(run_path) + ".json")

    def lock_path(self, run_path: str, target_key: str | None = None) -> Path:
        if target_key is None:
            return self.root / "locks" / f"{quote_run(run_path)}.lock"
        return self.root / "locks" / target_key / f"{quote_run(run_path)}.lock"

    @contextmanager
    def _dir(self, *parts: str, create: bool) -> Iterator[int]:
        fd = open_state_dir(self._base, [*self._parts, *parts], create=create,
                            display=self._root_s)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def lock(self, run_path: str, what: str, *, target_key: str | None = None,
             shared: bool = False) -> Iterator[None]:
        """The run's lock (``target_key`` None), or the lock of one (run, destination target).

        A sync holds the run's lock *shared* and the lock of each (run, target) it syncs
        exclusively: an MLflow sync and a W&B sync of one run run side by side, two syncs of
        the same (run, target) exclude each other, and whoever holds the run's lock
        exclusively (``tracelet reset``) excludes every sync of the run."""
        parts = ("locks",) if target_key is None else ("locks", target_key)
        with self._dir(*parts, create=True) as fd:
            with exclusive_lock_at(fd, f"{quote_run(run_path)}.lock", what,
                                   display=str(self.lock_path(run_path, target_key)),
                                   shared=shared):
                yield

    # -- the no-op fast path: .sig files -----------------------------------------------------
    def signature_matches(self, target_key: str, run_path: str, signature: str) -> bool:
        """True if the ``.sig`` next to the checkpoint holds this signature's MAC.

        A cache of ``Checkpoint.source_signature`` for the no-op fast path (no JSON parse, no
        lock): written only after the checkpoint that carries the same signature was committed,
        and a pass only ever runs on a run whose current signature differs from it, so a stale
        ``.sig`` can never claim "unchanged" for a run that is not. It holds an HMAC under the
        state dir's key (0600, the owner's only), so a ``.sig`` written by anyone else —
        even with the right source signature in it — is ignored: the run takes the slow path,
        which checks the checkpoint under the lock. Cost: one open + one tiny read."""
        key = self._key(create=False)
        if not key:
            return False
        want = _mac(key, target_key, run_path, signature)
        try:
            fd = os.open(self._path(target_key, run_path)[:-5] + ".sig", os.O_RDONLY | _NOFOLLOW)
        except OSError:
            return False
        try:
            got = os.read(fd, 128)
        except OSError:
            return False
        finally:
            os.close(fd)
        return hmac.compare_digest(got.strip(), want)

    def write_signature(self, target_key: str, run_path: str, ck: "Checkpoint") -> None:
        if not ck.source_signature or ck.last_error:
            return
        key = self._key(create=True)
        if not key:
            return  # the problem with the key is reported once per pass
        with self._dir("checkpoints", target_key, create=True) as fd:
            replace_in_dir(fd, quote_run(run_path) + ".sig",
                           _mac(key, target_key, run_path, ck.source_signature),
                           display=self._path(target_key, run_path)[:-5] + ".sig",
                           mode=STATE_FILE_MODE)

    def _key(self, create: bool) -> bytes | None:
        if self._key_cache is not None:
            return self._key_cache or None
        key_path = os.path.join(self._root_s, KEY_NAME)
        try:
            with self._dir(create=create) as fd:
                key = _read_key(fd, key_path)
                if key is None and create:
                    key = _make_key(fd, key_path)
        except FileNotFoundError:
            return None  # no state dir yet: nothing to be fast about
        except (OSError, StateError) as e:
            self.problem = (f"{e}; the no-op fast path is off (each run is re-checked under its "
                            f"lock) until {key_path} is a key file only you can read: remove it "
                            "and Tracelet makes a new one.")
            self._key_cache = b""
            return None
        if key is not None:
            self._key_cache = key
        return key

    # -- checkpoints -------------------------------------------------------------------------
    def load(self, destination: str, target_key: str, run_path: str,
             run_id: str | None = None) -> Checkpoint | None:
        """The checkpoint of (destination target, run), None if there is none.

        Raises :class:`InvalidCheckpointError` for a damaged one or one that names another
        destination, target, run path or run id (``run_id``: None skips that check), and
        :class:`UnsafeStatePathError` if a folder on the way is a link or not a folder."""
        where = self._path(target_key, run_path)
        try:
            with self._dir("checkpoints", target_key, create=False) as fd:
                raw = _read_state_file(fd, quote_run(run_path) + ".json", where)
        except FileNotFoundError:
            return None
        if raw is None:
            return None
        ck = Checkpoint.from_bytes(raw, where)
        for name, want in (("destination", destination), ("target_key", target_key),
                           ("run_path", run_path), ("run_id", run_id)):
            got = getattr(ck, name)
            if want is not None and got != want:
                raise InvalidCheckpointError(
                    where, f"field $.{name} is {_short(repr(got), 100)}, not {want!r}: it is "
                    "not this run's checkpoint (copied or edited)")
        return ck

    def set_aside(self, target_key: str, run_path: str) -> str:
        """Move an unusable checkpoint to ``<name>.json.bad-<UTC time>-<pid>`` (kept for
        inspection; renaming a link moves the link, never its target) and drop its ``.sig``.
        Returns the new path. OSError if it cannot be moved."""
        name = quote_run(run_path) + ".json"
        bad = f"{name}.bad-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
        with self._dir("checkpoints", target_key, create=False) as fd:
            os.rename(name, bad, src_dir_fd=fd, dst_dir_fd=fd)
            _unlink_quietly(name[:-5] + ".sig", fd)
            try:
                os.fsync(fd)
            except OSError:
                pass
        return os.path.join(os.path.dirname(self._path(target_key, run_path)), bad)

    def forget(self, target_key: str, run_path: str) -> bool:
        """Remove the checkpoint of (target, run) and its ``.sig`` (``tracelet reset``); True if
        there was one. The next sync finds the run on the destination and re-sends it with
        dedupe, as after a lost state dir."""
        name = quote_run(run_path) + ".json"
        try:
            with self._dir("checkpoints", target_key, create=False) as fd:
                try:
                    os.unlink(name, dir_fd=fd)
                except FileNotFoundError:
                    return False
                finally:
                    _unlink_quietly(name[:-5] + ".sig", fd)
                try:
                    os.fsync(fd)
                except OSError:
                    pass
        except FileNotFoundError:  # no checkpoint folder for this target at all
            return False
        return True

    def commit(self, target_key: str, run_path: str, ck: Checkpoint) -> None:
        """Write ``ck`` as the checkpoint of (target, run): the path comes from the arguments
        (the engine's own values), never from the checkpoint's fields."""
        ck.last_sync = time.time()
        data = json.dumps(ck.to_json(), indent=1, sort_keys=True, default=str).encode()
        with self._dir("checkpoints", target_key, create=True) as fd:
            replace_in_dir(fd, quote_run(run_path) + ".json", data,
                           display=self._path(target_key, run_path), mode=STATE_FILE_MODE)

    # -- small caches kept in the state dir (the local copy of a cloud run's manifest) --------
    def read_cached(self, folder: str, run_path: str, limit: int) -> bytes | None:
        """What :meth:`write_cached` stored for the run (at most ``limit`` bytes), or None: absent,
        not a plain file (a link or FIFO there is never followed or read), or not carrying this
        state dir key's HMAC (written by anyone else: not trusted)."""
        key = self._key(create=False)
        if not key:
            return None
        name = quote_run(run_path) + ".json"
        try:
            with self._dir(folder, create=False) as fd:
                f = open_state_file(fd, name, os.O_RDONLY,
                                    display=os.path.join(self._root_s, folder, name), what="cache")
                try:
                    raw = os.read(f, limit + 65)
                finally:
                    os.close(f)
        except (OSError, StateError):
            return None
        mac, _, data = raw.partition(b"\n")
        ok = hmac.compare_digest(mac, _cache_mac(key, folder, run_path, data))
        return data if ok and len(data) <= limit else None

    def write_cached(self, folder: str, run_path: str, data: bytes) -> None:
        key = self._key(create=True)
        if not key:
            return
        name = quote_run(run_path) + ".json"
        with self._dir(folder, create=True) as fd:
            replace_in_dir(fd, name, _cache_mac(key, folder, run_path, data) + b"\n" + data,
                           display=os.path.join(self._root_s, folder, name), mode=STATE_FILE_MODE)

    def list_checkpoints(self) -> list[Path]:
        root = self.root / "checkpoints"
        if not root.is_dir():
            return []
        return sorted(root.glob("*/*.json"))


def _mac(key: bytes, target_key: str, run_path: str, signature: str) -> bytes:
    msg = f"{target_key}\0{run_path}\0{signature}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest().encode()


def _cache_mac(key: bytes, folder: str, run_path: str, data: bytes) -> bytes:
    msg = f"cache\0{folder}\0{run_path}\0".encode() + data
    return hmac.new(key, msg, hashlib.sha256).hexdigest().encode()


def _read_state_file(dir_fd: int, name: str, where: str) -> bytes | None:
    """A checkpoint's bytes; None if absent; InvalidCheckpointError if it is not a plain file
    or too big (read without following links, never more than the limit)."""
    try:
        fd = open_state_file(dir_fd, name, os.O_RDONLY, display=where, what="checkpoint")
    except FileNotFoundError:
        return None
    except UnsafeStatePathError as e:
        raise InvalidCheckpointError(where, f"{describe_entry(dir_fd, name)}, not a plain file "
                                     "(never followed or read)") from e
    try:
        size = os.fstat(fd).st_size
        if size > MAX_CHECKPOINT_BYTES:
            raise InvalidCheckpointError(where, f"{size} bytes, more than the "
                                         f"{MAX_CHECKPOINT_BYTES >> 20} MiB a checkpoint may hold")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_CHECKPOINT_BYTES:  # grew while read
                raise InvalidCheckpointError(where, f"more than the {MAX_CHECKPOINT_BYTES >> 20} "
                                             "MiB a checkpoint may hold")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_key(dir_fd: int, key_path: str) -> bytes | None:
    """The state dir's MAC key; None if there is none; UnsafeStatePathError if the file is not
    a plain file of this user's that no one else can read, or does not hold a key."""
    try:
        fd = os.open(KEY_NAME, os.O_RDONLY | _NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UnsafeStatePathError(f"{key_path}: is {describe_entry(dir_fd, KEY_NAME)}, not the "
                                   f"state dir's key file ({e.strerror})") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeStatePathError(f"{key_path}: is {describe_entry(dir_fd, KEY_NAME, st)}, "
                                       "not the state dir's key file")
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
            raise UnsafeStatePathError(
                f"{key_path}: the key file is owned by uid {st.st_uid} with mode "
                f"{stat.S_IMODE(st.st_mode):o}; it must be yours and 600 (others could forge "
                "the .sig files it signs)")
        text = os.read(fd, 256).strip()
    finally:
        os.close(fd)
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except ValueError:
        key = b""
    if len(key) != 32:
        raise UnsafeStatePathError(f"{key_path}: does not hold a key (64 hex digits)")
    return key


def _make_key(dir_fd: int, key_path: str) -> bytes:
    """A new random key, published with link(2) so it appears whole and never replaces one a
    concurrent sync made first (that one wins, and is returned)."""
    key = secrets.token_bytes(32)
    fd, tmp = _new_temp(dir_fd, KEY_NAME, key_path, KEY_FILE_MODE)
    try:
        try:
            os.fchmod(fd, KEY_FILE_MODE)
            os.write(fd, key.hex().encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, KEY_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            theirs = _read_key(dir_fd, key_path)
            if theirs is None:
                raise
            return theirs
    finally:
        _unlink_quietly(tmp, dir_fd)
    return key


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
