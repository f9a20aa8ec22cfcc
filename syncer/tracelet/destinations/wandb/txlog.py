"""Reading (and repairing) W&B's own files: the ``.wandb`` transaction log of each run.

A ``.wandb`` file is a leveldb log: after a 7-byte header (``:W&B``, u16 magic ``0xBEE1``, u8
version) come 32 KiB blocks of chunks (u32 CRC-32 over type byte + data, u16 length, u8 type:
full, first, middle, last; a block's last < 7 bytes are zero padding), and the chunks hold
serialized ``wandb.proto.wandb_internal_pb2.Record`` messages. wandb 0.31 has no Python reader
for them any more (``wandb-core`` reads them), so :class:`LogScanner` reads the framing and
:func:`record_field` tells a record's kind without parsing it; protobufs are parsed only where
needed (``wandb.proto`` is imported inside the functions that parse).

Offline, each sync of a run writes one fragment ``$WANDB_DIR/wandb/offline-run-<time>-<id>/
run-<id>.wandb`` (:class:`Fragment`). What this module does with them:

- :func:`find_fragments`: a run's fragments in ``wandb sync`` upload order (their first Run
  record's start time); a fragment without a Run record (a sync killed inside ``wandb.init``:
  no data, and ``wandb sync`` of the whole folder would fail on it) is renamed
  ``*.wandb.tracelet-empty``;
- :func:`next_free_step`: the first ``_step`` above everything they hold, cutting off a record
  the writer never finished (``wandb sync`` stops at it, and skips the run's later fragments);
- :func:`source_texts`: the ``_tracelet`` texts of their history rows (what landed);
- :func:`config_values`: the run config they leave (which params W&B already holds);
- :func:`wait_for_writers`: before any of that, wait until no other process (a killed sync's
  W&B service, which outlives it by a second or two) holds a fragment open;
- the ``is_*`` predicates: has the service written a given record to the live fragment yet.
"""
from __future__ import annotations

import glob
import json
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from ...errors import DestinationError
from ...redact import scrubbed_logger
from .mapping import SOURCE_KEY

log = scrubbed_logger("tracelet.wandb")  # log lines never show a credential

_BLOCK = 32768
_CHUNK_HEADER = 7  # u32 crc32 (IEEE, over type byte + data) | u16 length | u8 type
_FILE_HEADER = b":W&B"  # then u16 magic 0xBEE1, u8 version: 7 bytes
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_READ_BYTES = 1 << 22  # read big files in pieces
F_HISTORY, F_CONFIG, F_FILES, F_RUN, F_EXIT = 2, 5, 6, 17, 18


class LogScanner:
    """Incremental reader of one growing ``.wandb`` file: ``poll()`` yields the complete records
    appended since the last call; an incomplete tail is "not yet" and is read again next time."""

    def __init__(self, path: str, start: int = _CHUNK_HEADER):
        self.path = path
        self.chunk_pos = start  # next chunk header to read
        self.pos = start  # end of the last complete record
        self.record_start = start  # where the record being assembled began
        self.parts: list[bytes] = []
        self.assembling = False
        self.bad_chunks = 0

    def poll(self, limit: int | None = None) -> Iterator[tuple[int, bytes]]:
        """Yield ``(offset, record bytes)`` up to the end of what is complete (or ``limit``)."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        with f:
            end = os.fstat(f.fileno()).st_size
            if limit is not None:
                end = min(end, limit)
            while self.chunk_pos < end:
                base = self.chunk_pos
                f.seek(base)
                data = f.read(min(_READ_BYTES, end - base))
                n, i = len(data), 0
                while True:
                    left = _BLOCK - (base + i) % _BLOCK
                    if left < _CHUNK_HEADER:  # the writer pads a block's last bytes with zeros
                        if i + left > n:
                            break
                        i += left
                        self.chunk_pos = base + i
                        if not self.assembling:
                            self.pos = self.record_start = self.chunk_pos
                        continue
                    if i + _CHUNK_HEADER > n:
                        break
                    crc, length, kind = struct.unpack_from("<IHB", data, i)
                    if i + _CHUNK_HEADER + length > n:
                        break
                    chunk_at = base + i
                    chunk = data[i + _CHUNK_HEADER:i + _CHUNK_HEADER + length]
                    i += _CHUNK_HEADER + length
                    self.chunk_pos = base + i
                    if zlib.crc32(chunk, zlib.crc32(bytes((kind,)))) & 0xFFFFFFFF != crc:
                        self.bad_chunks += 1  # W&B's own reader skips corrupt data too
                        self.parts, self.assembling = [], False
                    elif kind == _FULL:
                        self.parts, self.assembling = [], False
                        self.pos = self.chunk_pos
                        yield chunk_at, chunk
                    elif kind == _FIRST:
                        self.parts, self.assembling = [chunk], True
                        self.record_start = chunk_at
                    elif kind in (_MIDDLE, _LAST) and self.assembling:
                        self.parts.append(chunk)
                        if kind == _LAST:
                            record, self.parts, self.assembling = b"".join(self.parts), [], False
                            self.pos = self.chunk_pos
                            yield self.record_start, record
                    else:  # a continuation whose start we did not see (a scan begun mid-record)
                        self.parts, self.assembling = [], False
                    if not self.assembling:
                        self.pos = self.record_start = self.chunk_pos
                if self.chunk_pos == base:
                    return  # only an incomplete chunk is left: not yet

    @property
    def torn_at(self) -> int | None:
        """After a full ``poll``: where an unfinished record starts, if the file ends inside one."""
        return self.record_start if self.assembling else None


_NOT_RECORD_TYPE = frozenset({1, 16, 19, 200})  # num, control, uuid, _info


def record_field(raw: bytes) -> int:
    """The number of the ``Record`` oneof field a serialized record holds (``history`` = 2, ...),
    found by walking its top-level fields without parsing them: most records are skipped so.
    (Field order is not fixed: records from the client carry ``_info`` first.)"""
    i, n = 0, len(raw)
    while i < n:
        tag, i = _varint(raw, i)
        if tag < 0:
            return -1
        field_no, wire = tag >> 3, tag & 7
        if field_no not in _NOT_RECORD_TYPE:
            return field_no
        if wire == 0:
            _, i = _varint(raw, i)
        elif wire == 2:
            length, i = _varint(raw, i)
            i += length
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            return -1
    return -1


def _varint(raw: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while i < len(raw):
        b = raw[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
    return -1, i


def history_items(history) -> dict[str, Any]:
    """A ``HistoryRecord`` as ``{top-level key: JSON value}`` (media values are dicts)."""
    out: dict[str, Any] = {}
    for item in history.item:
        path = list(item.nested_key) or [item.key]
        value = _item_value(item)
        if len(path) == 1:
            out[path[0]] = value
        else:
            node = out.setdefault(path[0], {})
            if isinstance(node, dict):
                for p in path[1:-1]:
                    node = node.setdefault(p, {})
                node[path[-1]] = value
    return out


def _item_value(item) -> Any:
    if item.value_json:
        try:
            return json.loads(item.value_json)
        except ValueError:
            return item.value_json
    which = item.WhichOneof("value") if hasattr(item, "WhichOneof") else None
    if which in (None, "none"):
        return None
    if which == "json":
        try:
            return json.loads(item.json)
        except ValueError:  # the file is anyone's: text that is not JSON stays text
            return item.json
    return getattr(item, which)


def history_step(history, items: Mapping[str, Any]) -> int:
    step = items.get("_step")
    return int(step) if isinstance(step, (int, float)) else int(history.step.num)


@dataclass
class Fragment:
    """One offline run folder (``offline-run-<time>-<id>``): one sync of one run."""

    path: str  # the .wandb file
    start_time: tuple[int, int]  # the FIRST Run record's start: `wandb sync` uploads in this order
    project: str


WRITER_WAIT_S = 60.0  # how long a killed sync's orphaned W&B service may take to exit
_RECENT_S = 120.0  # only fragments written this recently can still have a writer


def wait_for_writers(paths: list[str], timeout_s: float = WRITER_WAIT_S) -> None:
    """Wait until no other process holds one of these fragments open.

    A ``kill -9`` of a sync leaves its W&B service (``wandb-core``, a separate process) alive
    for a second or two, still writing rows it had been handed. Reading a fragment then (to
    cut a torn tail or to see what landed) races those writes: rows read as landed could be cut
    away, or rows cut could be written back. Recently modified fragments are checked against
    every process's open files (``/proc``; elsewhere: until the file is quiet for 5 s)."""
    now = time.time()
    recent = []
    for p in paths:
        try:
            if now - os.stat(p).st_mtime < _RECENT_S:
                recent.append(os.path.realpath(p))
        except OSError:
            pass
    if not recent:
        return
    deadline = time.monotonic() + timeout_s
    fresh = False  # the first look may use a scan of the last second (many runs, one scan)
    while True:
        holders = _open_by_others(recent, max_age_s=0.0 if fresh else 1.0)
        fresh = True
        if holders is None:  # no /proc: wait for the files to be quiet instead
            quiet = all(time.time() - os.stat(p).st_mtime >= 5.0 for p in recent if os.path.exists(p))
            holders = {} if quiet else {p: "?" for p in recent}
        if not holders:
            return
        if time.monotonic() > deadline:
            path, pid = next(iter(holders.items()))
            raise DestinationError(
                f"wandb: {path} is still open in process {pid} (the W&B service of an earlier, "
                f"killed sync?) after {timeout_s:.0f} s; sync again once it has exited.")
        time.sleep(0.1)


_OPEN_FILES: tuple[float, dict[str, str] | None] = (0.0, None)
_OPEN_FILES_LOCK = threading.Lock()


def _open_by_others(paths: list[str], max_age_s: float = 0.0) -> dict[str, str] | None:
    """{path: pid} for the paths another process has open, from /proc; None without /proc.
    One scan of every process's open files serves all runs for ``max_age_s`` (a ``--follow``
    pass over many runs with recent fragments scans /proc about once a second, not per run)."""
    global _OPEN_FILES
    with _OPEN_FILES_LOCK:
        at, table = _OPEN_FILES
        if table is None or time.monotonic() - at > max_age_s:
            table = _scan_open_files()
            _OPEN_FILES = (time.monotonic(), table)
    if table is None:
        return None
    return {p: table[p] for p in paths if p in table}


def _scan_open_files() -> dict[str, str] | None:
    try:
        pids = [d for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return None
    me = str(os.getpid())
    table: dict[str, str] = {}
    for pid in pids:
        if pid == me:
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to look at
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.endswith(".wandb"):
                table[target] = pid
    return table


def read_run_record(path: str):
    """The first ``RunRecord`` of a ``.wandb`` file, or None if it has none (yet). Its
    ``start_time`` is the time of the sync that wrote the file (what ``wandb sync`` orders a
    run's fragments by); a later Run record is an update (the training's start time)."""
    from wandb.proto import wandb_internal_pb2 as pb

    try:
        with open(path, "rb") as f:
            if f.read(4) != _FILE_HEADER:
                return None
    except OSError:
        return None
    scanner = LogScanner(path)
    for limit in (16384, None):  # it is the second record: the first read nearly always has it
        for _, raw in scanner.poll(limit):
            if record_field(raw) == F_RUN:
                rec = pb.Record()
                rec.ParseFromString(raw)
                return rec.run
    return None


def last_history_step(path: str) -> int:
    """The highest ``_step`` in a ``.wandb`` file, reading backwards block by block (-1: none)."""
    size = os.path.getsize(path)
    block = max(0, (size - 1) // _BLOCK)
    while block >= 0:
        best = _max_step(LogScanner(path, max(_CHUNK_HEADER, block * _BLOCK)).poll())
        if best >= 0:
            return best
        block -= 1
    return -1


def _max_step(records: Iterator[tuple[int, bytes]]) -> int:
    """The ``_step`` of the last history record (steps only grow within a file)."""
    from wandb.proto import wandb_internal_pb2 as pb

    last = None
    for _, raw in records:
        if record_field(raw) == F_HISTORY:
            last = raw
    if last is None:
        return -1
    rec = pb.Record()
    rec.ParseFromString(last)
    return history_step(rec.history, history_items(rec.history))


def check_fragment(path: str) -> tuple[int, int | None]:
    """Read a whole fragment: its highest ``_step`` (-1: none) and, when the file ends inside a
    record (the writer was killed), the offset where that unfinished record begins."""
    scanner = LogScanner(path)
    best = _max_step(scanner.poll())
    size = os.path.getsize(path)
    rest = size - scanner.chunk_pos
    if scanner.assembling:
        return best, scanner.record_start
    if rest <= 0 or (rest < _CHUNK_HEADER and size % _BLOCK == 0):
        return best, None  # a clean end (or the zero padding of a full block)
    return best, scanner.chunk_pos  # a chunk header or body cut short


def cut_torn_tail(path: str, offset: int) -> None:
    """Cut a record the writer never finished off the end of ``path``: ``wandb sync`` stops with
    an error at it, and then skips the run's later fragments."""
    with open(path, "r+b") as f:
        f.truncate(offset)
        f.flush()
        os.fsync(f.fileno())




# -- the fragments of one run -------------------------------------------------------------------
def find_fragments(root: str, wid: str, project: str, exclude: str | None = None) -> list[Fragment]:
    """Run ``wid``'s offline fragments of ``project`` under ``root`` (``WANDB_DIR``), in
    ``wandb sync`` upload order, ``exclude`` (an absolute path: this sync's own) left out. A
    fragment with no Run record (a sync killed inside ``wandb.init``) holds no data and would
    make ``wandb sync`` of the whole folder fail: it is renamed out of the way."""
    pattern = os.path.join(glob.escape(os.path.join(root, "wandb")), "offline-run-*",
                           f"run-{wid}.wandb")
    paths = [p for p in glob.glob(pattern) if not (exclude and os.path.abspath(p) == exclude)]
    wait_for_writers(paths)
    out = []
    for path in paths:
        run = read_run_record(path)
        if run is None:
            # Its writer is gone (wait_for_writers): a sync killed inside wandb.init
            _set_aside(path, "it holds no run record")
            continue
        if run.project != project or run.run_id != wid:
            continue  # another project's, or a file renamed: `wandb sync` uploads it elsewhere
        out.append(Fragment(path, (run.start_time.seconds, run.start_time.nanos), run.project))
    out.sort(key=lambda f: f.start_time)
    return out


def _set_aside(path: str, why: str) -> None:
    target = path + ".tracelet-empty"
    try:
        os.replace(path, target)
        log.warning("wandb: %s renamed to %s: %s (a sync killed while starting the run)",
                    path, os.path.basename(target), why)
    except OSError as e:
        log.warning("wandb: cannot move %s aside (%s): `wandb sync` of its folder may fail", path, e)


def next_free_step(fragments: list[Fragment], checked_through: tuple[int, int]) -> int:
    """The first ``_step`` above everything ``fragments`` hold; torn tails are cut on the way.
    Only fragments that started at or after ``checked_through`` (what an earlier open already
    checked) are read whole (normally the last sync's)."""
    best = -1
    for frag in fragments:
        if frag.start_time < checked_through:
            continue
        top, torn = check_fragment(frag.path)
        best = max(best, top)
        if torn is not None:
            cut_torn_tail(frag.path, torn)
            log.warning("wandb: %s ended inside a record its writer never finished (a "
                        "killed sync); cut at byte %d", frag.path, torn)
    if best < 0:
        for frag in reversed(fragments):  # steps only grow: the newest rows hold the max
            best = last_history_step(frag.path)
            if best >= 0:
                break
    return best + 1


def source_texts(path: str) -> Iterator[str]:
    """The ``_tracelet`` texts of the history rows in a ``.wandb`` file (what landed)."""
    from wandb.proto import wandb_internal_pb2 as pb

    for _, raw in LogScanner(path).poll():
        if record_field(raw) != F_HISTORY:
            continue
        rec = pb.Record()
        rec.ParseFromString(raw)
        for item in rec.history.item:
            if (item.key or (item.nested_key[0] if item.nested_key else "")) == SOURCE_KEY:
                text = _item_value(item)
                if isinstance(text, str):
                    yield text


def config_values(path: str) -> dict[str, Any]:
    """The run config a ``.wandb`` file leaves (its Run record's config, then its config
    updates and removals in order): top-level key -> JSON value. A value that is not JSON
    (the file is anyone's) is left out."""
    from wandb.proto import wandb_internal_pb2 as pb

    out: dict[str, Any] = {}
    for _, raw in LogScanner(path).poll():
        kind = record_field(raw)
        if kind not in (F_RUN, F_CONFIG):
            continue
        rec = pb.Record()
        rec.ParseFromString(raw)
        config = rec.run.config if kind == F_RUN else rec.config
        for item in config.update:
            key = item.key or (item.nested_key[0] if len(item.nested_key) == 1 else "")
            try:
                out[key] = json.loads(item.value_json)
            except ValueError:
                out.pop(key, None)
        for item in config.remove:
            out.pop(item.key or (item.nested_key[0] if item.nested_key else ""), None)
    out.pop("", None)
    return out


# -- has the service written it yet --------------------------------------------------------------
def is_history_step(step: int) -> Callable[[bytes], bool]:
    """A history record of ``_step`` ``step`` or later."""
    from wandb.proto import wandb_internal_pb2 as pb

    def match(raw: bytes) -> bool:
        if record_field(raw) != F_HISTORY:
            return False
        rec = pb.Record()
        rec.ParseFromString(raw)
        return rec.history.step.num >= step  # the service sets it on every row it writes

    return match


def is_config_with(keys: set[str]) -> Callable[[bytes], bool]:
    """A config record updating every key of ``keys``."""
    from wandb.proto import wandb_internal_pb2 as pb

    def match(raw: bytes) -> bool:
        if record_field(raw) != F_CONFIG:
            return False
        rec = pb.Record()
        rec.ParseFromString(raw)
        got = {u.key or (u.nested_key[0] if u.nested_key else "") for u in rec.config.update}
        return keys <= got

    return match


def is_files_with(name: str) -> Callable[[bytes], bool]:
    """A files record naming ``name``."""
    from wandb.proto import wandb_internal_pb2 as pb

    def match(raw: bytes) -> bool:
        if record_field(raw) != F_FILES:
            return False
        rec = pb.Record()
        rec.ParseFromString(raw)
        return any(f.path == name for f in rec.files.files)

    return match


def is_exit(raw: bytes) -> bool:
    """The exit record (the last a run writes)."""
    return record_field(raw) == F_EXIT
