"""Weights & Biases destination (``--to wandb``).

Target (DESIGN §7), decided exactly as :func:`tracelet.destinations.target_key` decides it:

- ``--wandb-mode offline`` / ``WANDB_MODE=offline`` (or ``dryrun``), or no mode and no
  credentials (``WANDB_API_KEY``, ``wandb login``): **offline**. Each sync writes ordinary W&B
  offline runs under ``$WANDB_DIR/wandb/offline-run-*`` (``WANDB_DIR`` defaults to the current
  folder). Upload them later from a connected machine with
  ``wandb sync $WANDB_DIR/wandb/offline-run-*`` (already-uploaded folders are skipped). One line
  on stderr per sync says so.
- ``WANDB_MODE=online`` (or credentials present): **online**, ``WANDB_ENTITY`` /
  ``WANDB_BASE_URL`` as W&B reads them. ``WANDB_MODE=disabled`` is refused (it would drop
  everything).

Identity (DESIGN §5): project = the run's project (``WANDB_PROJECT`` is not consulted: tracelet's
project wins); W&B run id = the tracelet run id when it is 1-64 letters/digits, else
``tl`` + 30 hex digits of its SHA-1 (:func:`wandb_run_id`); display name = run path; config
``tracelet = {run_id, run_path}``; manifest tags become W&B tags ``key:value``. Every sync
opens the same id with ``resume="allow"``: one W&B run, one offline fragment
(``offline-run-<time>-<id>``) per sync, ``run.finish()`` in ``close_run``.

Mapping:

==================  =========================================================================
TensorBoard kind    W&B form
==================  =========================================================================
scalar              history key = tag (see :func:`wandb_key`); every row carries the
                    TensorBoard step as ``global_step`` (``define_metric("*",
                    step_metric="global_step")``), ``_timestamp`` = the event's wall time.
                    Consecutive points of one step share a row; a key seen twice in one step
                    starts a new row. NaN/±Inf kept (W&B stores them as NaN/Infinity).
histogram           ``wandb.Histogram(np_histogram=(counts, edges))``; more than 512 buckets are
                    merged into 512 (whole adjacent buckets, so counts stay exact)
image               ``wandb.Image`` from the writer's encoded bytes (PNG/JPEG/GIF copied
                    byte-for-byte; other encodings decoded with PIL); several images of one
                    tag and step become one image list. An image Pillow cannot decode
                    (truncated, a bad chunk CRC, a size over Pillow's pixel limit) is left
                    out and quarantined (``tracelet.media``, ``tracelet.quarantine``)
audio               ``wandb.Audio`` from the writer's clip file (WAV bytes unchanged), caption =
                    the TF2 label; several clips of one tag and step go to consecutive rows
                    (a list of clips would need the ``soundfile`` package)
text                ``wandb.Html`` holding the text verbatim in ``<pre>`` (HTML-escaped):
                    light (a file per point, no artifact per point as ``wandb.Table`` makes)
                    and the text is kept exactly; Markdown is shown as written, not rendered
hparams, params     run config (``config.update(..., allow_val_change=True)``): the latest
                    value wins, so ``log_params`` never reports conflicts
system metrics      history keys ``system/<name>`` with their own step metric ``system_step``
                    (seconds since the run started; ``define_metric("system/*",
                    step_metric="system_step")``), ``_timestamp`` = sample time
artifacts/          run files ``artifacts/<relative path>`` (copied into the run folder, then
                    ``run.save(..., policy="now")``): what ``wandb sync`` uploads; a changed
                    file is saved again and overwrites
status              exit record at ``close_run``: finished → exit 0 ("finished"); failed → 1
                    ("failed"); killed → 137 (W&B: failed, exit code 137); running → marked
                    preempting, exit 0 (W&B: "preempted"; the next sync resumes it). The end
                    time is the sync's (W&B takes it from the exit record).
==================  =========================================================================

Tag names are kept unchanged (W&B accepts any text). Only names that collide with keys W&B or
this destination reserve (``_step``, ``_runtime``, ``_timestamp``, ``_wandb``, ``_tracelet``,
``global_step``, ``system_step``, anything under ``system/``) and the empty tag are renamed
``tb/<tag>-<8 hex of its SHA-1>`` (:mod:`.keys`), params ``tracelet``/``_wandb*``
``params/<name>-<hash>``.

Steps and exactly-once
----------------------
W&B numbers history rows with ``_step`` and needs it to increase. This destination logs every
row with an explicit ``step=`` taken from ``handle.identity["next_step"]`` (committed with the
checkpoint), and at ``open_run`` raises it above the highest ``_step`` already written for this
run (offline: read back from the newest fragment; online: ``run.starting_step``), so the
fragments of one run continue each other. That is required: older W&B servers drop a resumed
row whose ``_step`` is not above the last one, and ``wandb sync`` of wandb 0.31 renumbers such a
row instead (so a re-sent row would be stored twice). Re-sending rows and trusting the uploader
to drop them is therefore NOT safe; instead nothing is ever written twice:

- Each row carries a hidden key ``_tracelet`` naming the exact source points in it:
  ``<file hash>:<kind><first ordinal>+<count>,...`` where the ordinal is the point's index among
  the points of its kind in its event file (or the row index in its sidecar part). Ordinals
  are deterministic: ``identity["ords"][file] = [offset, scalars, histograms, images, texts,
  audio]`` (checkpoints from before audio hold five entries: audio starts at 0)
  is committed together with the engine's offset, so a batch re-read from the committed offset
  numbers its points exactly as before, however its end moved (the file grew, the batch size
  changed, the points were split differently into rows).
- ``send(..., dedupe=True)`` (a range that may have landed: kill -9 between send and commit, a
  failed send, a lost state dir) reads what landed (offline: every earlier fragment of this run
  id, read with the transaction-log framing; online: the API's history) and writes only the
  points whose ordinal is not there, as new rows above every existing ``_step``. A kill -9
  while the W&B service was writing leaves a prefix of the rows; a half-written last record is
  cut off at the next ``open_run`` (``wandb sync`` stops at it otherwise).
- ``send`` returns only after its last row is in the ``.wandb`` file (the service flushes it
  every ``FLUSH_INTERVAL_S``; we read the file until the row is there, then fsync it), so what
  the engine commits is on disk even if the sync and the W&B service die right after.
- A retry of a send that failed half-way skips the rows it already logged in this fragment.
- Leftovers of a killed sync are repaired at the next ``open_run`` of the run, because
  ``wandb sync`` stops at them: a record the service never finished writing is cut off the end
  of its file, and a fragment killed inside ``wandb.init`` (no Run record, so no data; it would
  fail ``wandb sync`` of the whole folder) is renamed ``*.wandb.tracelet-empty``.

Limits: offline, a lost state dir is reconciled against the offline folders still under
``WANDB_DIR``; if they were deleted after uploading, tracelet cannot see what the server has and
re-sends everything (keep the folders, or sync online, where the API is asked). Online mode
(not exercised by the test suite, which has no W&B account) dedupes against the API's history;
a sync killed online leaves what its service had not uploaded in that run's ``run-*.wandb``,
which the next sync re-sends: do not ``wandb sync`` the folders of killed online syncs.

Threads: ``wandb.setup()`` starts W&B's service once per process and every run of every worker
thread shares it (a service inherited from a parent process through ``WANDB_SERVICE`` is not
used: a kill -9 of the sync would leave our runs open in it); runs are created with
``reinit="create_new"``; ``wandb.init`` / ``run.finish`` are serialised by a module-level lock
(the SDK's global state is not thread-safe there); ``run.log`` of different runs runs
concurrently.
"""
from __future__ import annotations

import bisect
import glob
import hashlib
import html
import io
import json
import math
import os
import re
import shutil
import struct
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import pyarrow as pa

from ..._fs import _crash_point
from ...errors import DestinationError, UsageError
from ...reader.points import AUDIO, HISTOGRAM, IMAGE, SCALAR, TEXT, Batch
from ...media import image_problem
from ...redact import scrubbed_logger
from ..base import SystemRows, Capabilities, Destination, Rejected, RunHandle, RunRef
from ..keys import suffixed

log = scrubbed_logger("tracelet.wandb")  # log lines never show a credential

STEP_METRIC = "global_step"  # the key W&B's own TensorBoard integration uses
SYSTEM_STEP_METRIC = "system_step"
SOURCE_KEY = "_tracelet"  # hidden ("_") history key naming the source points of a row
MAX_HISTOGRAM_BINS = 512  # wandb.Histogram refuses more
FLUSH_INTERVAL_S = 0.05  # the service writes its buffer to the .wandb file this often
WRITE_TIMEOUT_S = 120.0  # a row not on disk after this: the service is stuck (transient)
MAX_CONFIG_COPY_BYTES = 256_000  # params re-applied to every fragment up to this size
RESERVED_KEYS = frozenset({"_step", "_runtime", "_timestamp", "_wandb", SOURCE_KEY, STEP_METRIC,
                           SYSTEM_STEP_METRIC})
_RUN_ID_OK = re.compile(r"^[A-Za-z0-9]{1,64}$")
_EXIT_CODES = {"finished": 0, "failed": 1, "killed": 137}
_KIND_CODE = {SCALAR: "s", HISTOGRAM: "h", IMAGE: "i", TEXT: "t", AUDIO: "a"}
_SYSTEM_CODE = "y"

# One service, one lock, one announcement per process (see the module docstring).
_LOCK = threading.RLock()
_SETUP_DONE = False
_ANNOUNCED: set[str] = set()


def wandb_key(tag: str) -> str:
    """A TensorBoard tag as a W&B history key: unchanged unless it is empty or collides with a
    key W&B or this destination reserves; then ``tb/<tag>-<hash>`` (:mod:`.keys`: the suffix
    keeps it apart from a tag that is literally ``tb/<tag>``)."""
    if not tag:
        return suffixed("tb/untagged", tag)
    if tag in RESERVED_KEYS or tag.startswith(("system/", "_wandb")):
        return suffixed("tb/" + tag, tag)
    return tag


def wandb_run_id(run_id: str) -> str:
    """The deterministic W&B run id for a tracelet run id (letters/digits, at most 64)."""
    if _RUN_ID_OK.match(run_id):
        return run_id
    return "tl" + hashlib.sha1(run_id.encode()).hexdigest()[:30]


_PROJECT_REJECTED = re.compile(r"[/\\#?%:]")
MAX_PROJECT_CHARS = 128


def wandb_project(project: str) -> str:
    """W&B rejects ``/ \\ # ? % :`` in project names and names over 128 characters: those
    characters become ``_`` and a longer name is cut and ends in ``~<hash>``."""
    name = _PROJECT_REJECTED.sub("_", project).strip() or "tracelet"
    if len(name) > MAX_PROJECT_CHARS:
        name = name[: MAX_PROJECT_CHARS - 9] + "~" + hashlib.sha1(project.encode()).hexdigest()[:8]
    return name


def wandb_mode(config: Mapping[str, Any]) -> str:
    """``offline`` or ``online``, decided as ``target_key`` decides it (keep the two in step)."""
    from .factory import wandb_has_credentials as _wandb_has_credentials

    mode = config.get("wandb_mode") or os.environ.get("WANDB_MODE") or ""
    if mode in ("offline", "dryrun"):
        return "offline"
    if mode in ("online", "run"):
        return "online"
    if not mode:
        return "online" if _wandb_has_credentials() else "offline"
    if mode == "disabled":
        raise UsageError("wandb: WANDB_MODE=disabled would drop every point; use "
                         "--wandb-mode offline (upload later with `wandb sync`) or online")
    raise UsageError(f"wandb: unknown mode {mode!r}; use offline or online")


def wandb_root() -> str:
    """The folder W&B writes ``wandb/`` into (``WANDB_DIR``, else the current folder)."""
    return os.path.abspath(os.environ.get("WANDB_DIR") or ".")


def upload_hint(root: str) -> str:
    return (f"tracelet: W&B offline: runs are written to {root}/wandb/offline-run-*; upload "
            f"them from a machine with W&B access with: wandb sync {root}/wandb/offline-run-*")


# ---------------------------------------------------------------------------------------------
# the .wandb transaction log: leveldb-log framing of W&B `Record` protobufs
# ---------------------------------------------------------------------------------------------
_BLOCK = 32768
_CHUNK_HEADER = 7  # u32 crc32 (IEEE, over type byte + data) | u16 length | u8 type
_FILE_HEADER = b":W&B"  # then u16 magic 0xBEE1, u8 version: 7 bytes
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_READ_BYTES = 1 << 22  # read big files in pieces
_F_HISTORY, _F_CONFIG, _F_FILES, _F_RUN, _F_EXIT = 2, 5, 6, 17, 18


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
        return json.loads(item.json)
    return getattr(item, which)


def history_step(history, items: Mapping[str, Any]) -> int:
    step = items.get("_step")
    return int(step) if isinstance(step, (int, float)) else int(history.step.num)


# ---------------------------------------------------------------------------------------------
# which source points landed
# ---------------------------------------------------------------------------------------------
class Landed:
    """Source points present on the destination: ``(file hash, kind) -> [start, end)`` ranges."""

    def __init__(self) -> None:
        self.ranges: dict[tuple[str, str], list[list[int]]] = {}

    def add_source(self, text: str) -> None:
        fk, _, segs = text.partition(":")
        for seg in segs.split(","):
            if not seg:
                continue
            start, _, count = seg[1:].partition("+")
            try:
                a, n = int(start), int(count or 1)
            except ValueError:
                continue
            self.ranges.setdefault((fk, seg[0]), []).append([a, a + n])

    def finish(self) -> "Landed":
        for key, rs in self.ranges.items():
            rs.sort()
            merged: list[list[int]] = []
            for a, b in rs:
                if merged and a <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], b)
                else:
                    merged.append([a, b])
            self.ranges[key] = merged
        return self

    def covered(self, fk: str, kind: str, start: int, n: int) -> set[int]:
        """Indexes ``i`` in ``[0, n)`` whose ordinal ``start + i`` landed."""
        rs = self.ranges.get((fk, kind))
        out: set[int] = set()
        if not rs or n <= 0:
            return out
        k = max(0, bisect.bisect_right(rs, [start, float("inf")]) - 1)
        while k < len(rs) and rs[k][0] < start + n:
            a, b = max(rs[k][0], start), min(rs[k][1], start + n)
            out.update(range(a - start, b - start))
            k += 1
        return out


@dataclass
class Fragment:
    """One offline run folder (``offline-run-<time>-<id>``): one sync of one run."""

    path: str  # the .wandb file
    start_time: tuple[int, int]  # the Run record's start time: `wandb sync` uploads in this order
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
    """The ``RunRecord`` at the head of a ``.wandb`` file, or None if it has none (yet)."""
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
            if record_field(raw) == _F_RUN:
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
        if record_field(raw) == _F_HISTORY:
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


# ---------------------------------------------------------------------------------------------
# the destination
# ---------------------------------------------------------------------------------------------
class WandbDestination(Destination):
    name = "wandb"
    capabilities = Capabilities(kinds=frozenset({SCALAR, HISTOGRAM, IMAGE, TEXT, AUDIO}))

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__(config)
        import wandb

        self.mode = wandb_mode(self.config)
        self.root = wandb_root()
        fields = getattr(wandb.Settings, "model_fields", {})
        if "x_transaction_log_flush_interval" not in fields:
            raise DestinationError(
                f"wandb {wandb.__version__} cannot flush its run file on a timer, which tracelet "
                "needs to confirm each write; install a newer wandb: pip install -U wandb")
        self._open: dict[int, Any] = {}
        _ensure_setup()

    @property
    def target(self) -> str:
        if self.mode == "offline":
            return f"offline:{self.root}"
        return "online:" + os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")

    def metric_key(self, tag: str) -> str:
        return wandb_key(tag)

    def param_key(self, name: str) -> str:
        return _param_key(name)

    # -- identity ----------------------------------------------------------------------------
    def _settings(self):
        import wandb

        fields = getattr(wandb.Settings, "model_fields", {})
        wanted = dict(
            mode=self.mode, silent=True, console="off", x_disable_stats=True,
            x_disable_meta=True, x_disable_machine_info=True, x_save_requirements=False,
            disable_git=True, save_code=False, disable_code=True, disable_job_creation=True,
            symlink=False, allow_media_symlink=False,
            x_transaction_log_flush_interval=FLUSH_INTERVAL_S,
        )
        return wandb.Settings(**{k: v for k, v in wanted.items() if k in fields})

    def fragments(self, wid: str, project: str, exclude: str | None = None) -> list[Fragment]:
        """This run's earlier offline fragments under WANDB_DIR, in `wandb sync` upload order.
        A fragment with no Run record (a sync killed inside ``wandb.init``) holds no data and
        would make ``wandb sync`` of the whole folder fail: it is renamed out of the way."""
        pattern = os.path.join(glob.escape(os.path.join(self.root, "wandb")), "offline-run-*",
                               f"run-{wid}.wandb")
        paths = [p for p in glob.glob(pattern) if not (exclude and os.path.abspath(p) == exclude)]
        wait_for_writers(paths)
        out = []
        for path in paths:
            run = read_run_record(path)
            if run is None:
                # Its writer is gone (wait_for_writers): a sync killed inside wandb.init
                _quarantine(path, "it holds no run record")
                continue
            if run.project != project:
                continue
            out.append(Fragment(path, (run.start_time.seconds, run.start_time.nanos), run.project))
        out.sort(key=lambda f: f.start_time)
        return out

    def open_run(self, run: RunRef, identity: dict[str, Any] | None) -> RunHandle:
        import wandb

        wid, ignored = wandb_run_id(run.run_id), False
        if identity and identity.get("run_id") != wid:
            identity, ignored = None, True  # names another run's id: never used (nor its paths)
        ident = dict(identity or {})
        project = wandb_project(run.project)
        next_step = int(ident.get("next_step") or 0)
        existed = bool(identity)
        if self.mode == "offline":
            _announce(self.root)
            first_free, previous = self._continue_after(wid, project, ident)
            next_step = max(next_step, first_free)
            existed = existed or bool(previous)
        config = {"tracelet": {"run_id": run.run_id, "run_path": run.run_path}}
        config.update(ident.get("config") or {})
        tags = [f"{k}:{v}"[:64] for k, v in sorted(run.tags.items())] or None
        os.makedirs(self.root, exist_ok=True)
        opened_at = time.time()
        with _LOCK:
            r = wandb.init(project=project, entity=os.environ.get("WANDB_ENTITY") or None,
                           id=wid, name=run.run_path, resume="allow", dir=self.root,
                           config=config, tags=tags, reinit="create_new",
                           settings=self._settings())
        self._open[id(r)] = r
        try:
            if self.mode == "online":
                existed = existed or bool(getattr(r, "resumed", False))
                next_step = max(next_step, int(getattr(r, "starting_step", 0) or 0))
            r.define_metric(STEP_METRIC)
            r.define_metric(SYSTEM_STEP_METRIC, hidden=True)
            r.define_metric("*", step_metric=STEP_METRIC)
            r.define_metric("system/*", step_metric=SYSTEM_STEP_METRIC)
        except BaseException:
            self._finish(r, 1)
            raise
        new_identity = {
            "run_id": wid, "project": project, "entity": getattr(r, "entity", None) or None,
            "mode": self.mode, "next_step": next_step, "ords": dict(ident.get("ords") or {}),
            "status": ident.get("status"), "config": dict(ident.get("config") or {}),
            # fragments that started before this one were checked for torn tails by now
            "checked_through": [int(opened_at) - 1, 0],
        }
        return RunHandle(identity=new_identity, existed=existed, identity_ignored=ignored,
                         client=r, extra={
            "source_dir": str(run.source_dir), "live_step": next_step,
            "run_started_at": _run_started_at(run), "sync_file": r.settings.sync_file,
        })

    def _continue_after(self, wid: str, project: str,
                        ident: Mapping[str, Any]) -> tuple[int, list[Fragment]]:
        """The first ``_step`` above everything earlier fragments hold, and those fragments; cut
        torn tails on the way. Only fragments no earlier open has checked are read whole
        (normally the last sync's)."""
        previous = self.fragments(wid, project)
        checked = tuple(ident.get("checked_through") or (0, 0))
        best = -1
        for frag in previous:
            if frag.start_time < checked:
                continue
            top, torn = check_fragment(frag.path)
            best = max(best, top)
            if torn is not None:
                cut_torn_tail(frag.path, torn)
                log.warning("wandb: %s ended inside a record its writer never finished (a "
                            "killed sync); cut at byte %d", frag.path, torn)
        if best < 0:
            for frag in reversed(previous):  # steps only grow: the newest rows hold the max
                best = last_history_step(frag.path)
                if best >= 0:
                    break
        return best + 1, previous

    # -- points ------------------------------------------------------------------------------
    def send(self, handle: RunHandle, batch: Batch, *, dedupe: bool) -> None:
        rel = self._rel_path(handle, batch.path)
        fk = _short_hash(rel)
        ords = handle.identity["ords"].get(rel)
        base = [0, 0, 0, 0, 0]
        if ords:
            if ords[0] > batch.start_offset:
                raise DestinationError(
                    f"wandb: state of {batch.path} says byte {ords[0]} was sent but the sync "
                    f"resumes at byte {batch.start_offset}; the checkpoint was edited or restored. "
                    "Delete the state dir (tracelet then checks what W&B already has).")
            base = (list(ords[1:6]) + [0])[:5]  # [s, h, i, t, a]; older checkpoints lack `a`
        attempt_key = ("events", rel, batch.start_offset, batch.end_offset)
        _retire_attempt(handle, attempt_key)
        landed = self._landed(handle) if dedupe else None
        rows = self._scalar_rows(batch, fk, base[0], landed)
        # wandb.Image decodes with Pillow: an image it cannot take is left out here (its ordinal
        # is still used) and quarantined by the engine, instead of failing the batch forever
        rejected = [Rejected(IMAGE, j, why) for j, im in enumerate(batch.images)
                    if (why := image_problem(im.encoded, decode=True))]
        with tempfile.TemporaryDirectory(prefix="tracelet-wandb-") as tmp:
            if batch.histograms or batch.images or batch.texts or batch.audio:
                rows.extend(self._media_rows(batch, fk, base, landed, Path(tmp),
                                             {r.index for r in rejected}))
            self._log_rows(handle, rows, attempt_key)
        handle.identity["ords"][rel] = [batch.end_offset, base[0] + len(batch.scalars),
                                        base[1] + len(batch.histograms),
                                        base[2] + len(batch.images), base[3] + len(batch.texts),
                                        base[4] + len(batch.audio)]
        return rejected

    def _rel_path(self, handle: RunHandle, path: str) -> str:
        src = handle.extra["source_dir"]
        p = os.path.abspath(path)
        try:
            rel = os.path.relpath(p, src)
        except ValueError:
            rel = ".."
        return "linked:" + p if rel.startswith("..") else rel.replace(os.sep, "/")

    def _scalar_rows(self, batch: Batch, fk: str, base: int, landed: Landed | None) -> list:
        """Rows of consecutive same-step scalars: ``(row dict, source text)``."""
        cols = batch.scalars
        n = len(cols)
        if not n:
            return []
        skip = landed.covered(fk, "s", base, n) if landed is not None else ()
        tags, steps, walls, values = cols.tags, cols.steps, cols.wall_times, cols.values
        keys: dict[str, str] = {}
        rows = []
        row: dict[str, Any] | None = None
        row_step = None
        segs: list[list[int]] = []
        for i in range(n):
            if skip and i in skip:
                continue
            tag = tags[i]
            key = keys.get(tag)
            if key is None:
                key = keys[tag] = wandb_key(tag)
            step = steps[i]
            if row is None or step != row_step or key in row:
                if row is not None:
                    rows.append(_finish_row(row, fk, "s", segs))
                row = {key: values[i], STEP_METRIC: step, "_timestamp": walls[i]}
                row_step = step
                segs = [[base + i, 1]]
            else:
                row[key] = values[i]
                if segs[-1][0] + segs[-1][1] == base + i:
                    segs[-1][1] += 1
                else:
                    segs.append([base + i, 1])
        if row is not None:
            rows.append(_finish_row(row, fk, "s", segs))
        return rows

    def _media_rows(self, batch: Batch, fk: str, base: list[int], landed: Landed | None,
                    tmp: Path, refused: set[int] = frozenset()) -> list:
        """Histograms, images, texts and audio grouped into one row per step where keys allow."""
        items: list[tuple[int, float, str, Any, str, list[int]]] = []  # step, wall, key, value, kind, ords
        # one point per entry; audio too (a list of wandb.Audio needs the soundfile package)
        for kind, points, b, make in (
                (HISTOGRAM, batch.histograms, base[1], lambda p, o: _histogram(p)),
                (TEXT, batch.texts, base[3], lambda p, o: _html(p)),
                (AUDIO, batch.audio, base[4], lambda p, o: _audio(p, tmp, str(o)))):
            code = _KIND_CODE[kind]
            skip = landed.covered(fk, code, b, len(points)) if landed is not None else ()
            for j, p in enumerate(points):
                if j not in skip:
                    items.append((p.step, p.wall_time, wandb_key(p.tag), make(p, b + j), code,
                                  [b + j]))
        skip = landed.covered(fk, "i", base[2], len(batch.images)) if landed is not None else ()
        groups: dict[tuple[str, int], list[int]] = {}
        for j, im in enumerate(batch.images):
            if j not in skip and j not in refused:
                groups.setdefault((im.tag, im.step), []).append(j)
        for (tag, step), idx in groups.items():
            images = [_image(batch.images[j], tmp, f"{base[2] + j}") for j in idx]
            value = images[0] if len(images) == 1 else images
            items.append((step, batch.images[idx[0]].wall_time, wandb_key(tag), value, "i",
                          [base[2] + j for j in idx]))
        rows: list = []
        open_rows: dict[int, tuple[dict, list]] = {}
        for step, wall, key, value, code, ords in items:
            cur = open_rows.get(step)
            if cur is None or key in cur[0]:
                cur = ({STEP_METRIC: step, "_timestamp": wall}, [])
                open_rows[step] = cur
                rows.append(cur)
            cur[0][key] = value
            cur[1].extend(f"{code}{o}" for o in ords)
        return [(row, f"{fk}:" + ",".join(src)) for row, src in rows]

    def send_system(self, handle: RunHandle, rows: SystemRows, run: RunRef, *,
                    dedupe: bool) -> None:
        ts = rows.timestamps
        names = rows.names
        values = rows.values
        if not ts:
            return
        # A part has no name here; its content identifies it (parts are immutable).
        fk = _short_hash(f"part|{len(ts)}|{ts[0]!r}|{ts[-1]!r}|{names[0]}|{names[-1]}")
        _retire_attempt(handle, ("system", fk, 0, len(ts)))
        skip = self._landed(handle).covered(fk, _SYSTEM_CODE, 0, len(ts)) if dedupe else ()
        start = handle.extra.get("run_started_at")
        rows = []
        row: dict[str, Any] | None = None
        row_ts = None
        segs: list[list[int]] = []
        for i, (t, name, v) in enumerate(zip(ts, names, values)):
            if v is None or i in skip:
                continue
            key = "system/" + str(name)
            if row is None or t != row_ts or key in row:
                if row is not None:
                    rows.append(_finish_row(row, fk, _SYSTEM_CODE, segs))
                sys_step = round(t - start, 3) if start else t
                row = {SYSTEM_STEP_METRIC: sys_step, "_timestamp": t}
                row_ts = t
                segs = [[i, 1]]
            elif segs[-1][0] + segs[-1][1] == i:
                segs[-1][1] += 1
            else:
                segs.append([i, 1])
            row[key] = v
        if row is not None:
            rows.append(_finish_row(row, fk, _SYSTEM_CODE, segs))
        self._log_rows(handle, rows, ("system", fk, 0, len(ts)))

    def _log_rows(self, handle: RunHandle, rows: list, attempt_key: tuple) -> None:
        """Log rows with consecutive explicit ``_step`` values; return once they are on disk."""
        r = handle.client
        attempt = handle.extra.get("attempt")
        if attempt and attempt["key"] == attempt_key:  # a retry: skip what the failed try logged
            first, done = attempt["first_step"], attempt["done"]
        else:
            _retire_attempt(handle, attempt_key)
            first, done = handle.extra["live_step"], 0
            attempt = handle.extra["attempt"] = {"key": attempt_key, "first_step": first,
                                                 "done": 0, "srcs": []}
        last = len(rows) - 1
        for k in range(done, len(rows)):
            row, src = rows[k]
            row[SOURCE_KEY] = src
            r.log(row, step=first + k, commit=True if k == last else None)
            attempt["done"] = k + 1
            attempt["srcs"].append(src)
            handle.extra["live_step"] = first + k + 1
        if rows:
            _crash_point("wandb_rows_handed")  # kill -9 tests: rows in the service, not on disk
            self._wait_written(handle, _is_history_step(first + last),
                               f"history row _step={first + last}", last_of=_F_HISTORY)
        handle.extra["attempt"] = None
        handle.identity["next_step"] = max(handle.identity["next_step"], first + len(rows))
        handle.extra["live_step"] = max(handle.extra["live_step"], handle.identity["next_step"])

    # -- what already landed -------------------------------------------------------------------
    def _landed(self, handle: RunHandle) -> Landed:
        cached = handle.extra.get("landed")
        if cached is not None:
            logged = handle.extra.pop("logged", None)
            if logged:
                for text in logged:
                    cached.add_source(text)
                cached.finish()
            return cached
        landed = Landed()
        ident = handle.identity
        if self.mode == "offline":
            from wandb.proto import wandb_internal_pb2 as pb

            current = os.path.abspath(handle.extra["sync_file"])
            for frag in self.fragments(ident["run_id"], ident["project"], exclude=current):
                for _, raw in LogScanner(frag.path).poll():
                    if record_field(raw) != _F_HISTORY:
                        continue
                    rec = pb.Record()
                    rec.ParseFromString(raw)
                    for item in rec.history.item:
                        if (item.key or (item.nested_key[0] if item.nested_key else "")) == SOURCE_KEY:
                            text = _item_value(item)
                            if isinstance(text, str):
                                landed.add_source(text)
        else:
            import wandb

            api = wandb.Api(timeout=60)
            entity = ident.get("entity") or api.default_entity
            try:
                api_run = api.run(f"{entity}/{ident['project']}/{ident['run_id']}")
            except Exception as e:  # not on the server yet: nothing landed
                if "not found" not in str(e).lower() and "404" not in str(e):
                    raise
                api_run = None
            for row in api_run.scan_history(keys=[SOURCE_KEY], page_size=1000) if api_run else ():
                text = row.get(SOURCE_KEY)
                if isinstance(text, str):
                    landed.add_source(text)
        for text in handle.extra.pop("logged", None) or ():
            landed.add_source(text)
        handle.extra["landed"] = landed.finish()
        return landed

    def _wait_written(self, handle: RunHandle, predicate: Callable[[bytes], bool], what: str,
                      last_of: int | None = None) -> None:
        """Read the run's own ``.wandb`` file until a record matching ``predicate`` is there.
        With ``last_of``, only the newest record of that field is tested (history rows: their
        steps only grow, and parsing every row would cost as much as logging it)."""
        scanner: LogScanner = handle.extra.get("scanner") or LogScanner(handle.extra["sync_file"])
        handle.extra["scanner"] = scanner
        deadline = time.monotonic() + WRITE_TIMEOUT_S
        delay = 0.005
        while True:
            newest = None
            for _, raw in scanner.poll():
                if last_of is not None:
                    if record_field(raw) == last_of:
                        newest = raw
                elif predicate(raw):
                    newest = raw
                    break
            if newest is not None and predicate(newest):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"wandb: the W&B service did not write the {what} to "
                                   f"{handle.extra['sync_file']} within {WRITE_TIMEOUT_S:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, FLUSH_INTERVAL_S)
        # The checkpoint is fsynced after this returns; the run file must be on disk before it.
        fd = os.open(handle.extra["sync_file"], os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- params, artifacts, status -------------------------------------------------------------
    def log_params(self, handle: RunHandle, params: Mapping[str, Any]) -> list[str]:
        values = {_param_key(k): _json_value(v) for k, v in params.items()}
        if not values:
            return []
        handle.client.config.update(values, allow_val_change=True)
        keys = set(values)
        self._wait_written(handle, _is_config_with(keys), "config update")
        copy = dict(handle.identity.get("config") or {})
        copy.update(values)
        if len(json.dumps(copy, default=str)) <= MAX_CONFIG_COPY_BYTES:
            handle.identity["config"] = copy
        return []  # W&B config takes the latest value: nothing is refused

    def log_artifacts(self, handle: RunHandle, files: list[tuple[Path, str]]) -> None:
        r = handle.client
        files_dir = Path(r.settings.files_dir)
        names = []
        for path, rel in files:
            name = "artifacts/" + rel.replace(os.sep, "/")
            dest = files_dir / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.tracelet-tmp")
            shutil.copyfile(path, tmp)  # a copy, not a link: the upload is what we saw now
            os.replace(tmp, dest)
            r.save(str(dest), base_path=str(files_dir), policy="now", glob=False)
            names.append(name)
        if names:
            self._wait_written(handle, _is_files_with(names[-1]), f"file record {names[-1]}")

    def finish(self, handle: RunHandle, status: str, ended_at: float | None) -> None:
        # Applied by close_run (W&B writes the state with the exit record). Kept in the identity
        # so every later fragment of this run ends with the same state.
        handle.identity["status"] = status

    def close_run(self, handle: RunHandle) -> None:
        r = handle.client
        if r is None:
            return
        status = handle.identity.get("status")
        code = _EXIT_CODES.get(status or "", 0)
        if status not in _EXIT_CODES:
            try:
                r.mark_preempting()  # still running: W&B shows "preempted" until the next sync
            except Exception as e:
                log.warning("wandb: mark_preempting failed: %s", e)
        self._finish(r, code)
        handle.client = None
        try:  # finish() returns before the service flushes the exit record: wait for it
            self._wait_written(handle, lambda raw: record_field(raw) == _F_EXIT, "exit record")
        except TimeoutError as e:  # the next sync's fragment ends with the same state anyway
            log.warning("%s", e)

    def _finish(self, r, code: int) -> None:
        with _LOCK:
            try:
                r.finish(exit_code=code)
            finally:
                self._open.pop(id(r), None)

    def close(self) -> None:
        with _LOCK:  # the end of a sync: the next one says where its runs went again
            _ANNOUNCED.discard(self.root)
        for r in list(self._open.values()):
            try:
                self._finish(r, 1)
            except Exception as e:
                log.warning("wandb: closing a run left open failed: %s", e)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _ensure_setup() -> None:
    global _SETUP_DONE
    with _LOCK:
        if not _SETUP_DONE:
            import wandb
            from wandb.sdk import wandb_setup

            if getattr(wandb_setup, "_singleton", None) is None and os.environ.get("WANDB_SERVICE"):
                # Inherited from a parent process that uses W&B: sharing its service means a
                # kill -9 of this sync leaves our runs open in the parent's service, and the
                # next sync of them fails there with "run ID is in use". Use our own.
                os.environ.pop("WANDB_SERVICE", None)
            wandb.setup()  # one service process for every run of this sync
            _SETUP_DONE = True


def _announce(root: str) -> None:
    with _LOCK:
        if root in _ANNOUNCED:
            return
        _ANNOUNCED.add(root)
    print(upload_hint(root), file=sys.stderr, flush=True)


def _quarantine(path: str, why: str) -> None:
    target = path + ".tracelet-empty"
    try:
        os.replace(path, target)
        log.warning("wandb: %s renamed to %s: %s (a sync killed while starting the run)",
                    path, os.path.basename(target), why)
    except OSError as e:
        log.warning("wandb: cannot move %s aside (%s): `wandb sync` of its folder may fail", path, e)


def _retire_attempt(handle: RunHandle, key: tuple) -> None:
    """Before a send other than a retry of the last one: if the last one failed part-way (the
    engine then resends parts of it to isolate a refused record), the rows it logged are in
    this sync's fragment, which ``_landed`` does not read: remember them for the dedupe."""
    attempt = handle.extra.get("attempt")
    if attempt and attempt["key"] != key:
        handle.extra.setdefault("logged", []).extend(attempt["srcs"])
        handle.extra["attempt"] = None


def _run_started_at(run: RunRef) -> float | None:
    return run.started_at


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _finish_row(row: dict, fk: str, code: str, segs: list[list[int]]) -> tuple[dict, str]:
    return row, f"{fk}:" + ",".join(f"{code}{a}+{n}" if n > 1 else f"{code}{a}" for a, n in segs)


def _param_key(key: str) -> str:
    """A param name as a W&B config key: ``tracelet`` (this destination's own) and ``_wandb*``
    (W&B's) become ``params/<name>-<hash>``."""
    if key == "tracelet" or key.startswith("_wandb"):
        return suffixed("params/" + key, key)
    return key


def _json_value(v: Any) -> Any:
    try:
        json.dumps(v, allow_nan=True)
        return v
    except (TypeError, ValueError):
        return str(v)


def _is_history_step(step: int) -> Callable[[bytes], bool]:
    from wandb.proto import wandb_internal_pb2 as pb

    def match(raw: bytes) -> bool:
        if record_field(raw) != _F_HISTORY:
            return False
        rec = pb.Record()
        rec.ParseFromString(raw)
        return rec.history.step.num >= step  # the service sets it on every row it writes

    return match


def _is_config_with(keys: set[str]) -> Callable[[bytes], bool]:
    from wandb.proto import wandb_internal_pb2 as pb

    def match(raw: bytes) -> bool:
        if record_field(raw) != _F_CONFIG:
            return False
        rec = pb.Record()
        rec.ParseFromString(raw)
        got = {u.key or (u.nested_key[0] if u.nested_key else "") for u in rec.config.update}
        return keys <= got

    return match


def _is_files_with(name: str) -> Callable[[bytes], bool]:
    from wandb.proto import wandb_internal_pb2 as pb

    def match(raw: bytes) -> bool:
        if record_field(raw) != _F_FILES:
            return False
        rec = pb.Record()
        rec.ParseFromString(raw)
        return any(f.path == name for f in rec.files.files)

    return match


def _histogram(h) -> Any:
    import numpy as np
    import wandb

    counts = np.asarray(h.counts, dtype=np.float64)
    if len(counts):
        edges = np.asarray(list(h.lefts) + [h.rights[-1]], dtype=np.float64)
    else:  # an empty histogram still lands as one (empty) bucket
        lo = h.min if h.min is not None and math.isfinite(h.min) else 0.0
        counts, edges = np.zeros(1), np.asarray([lo, lo])
    edges = _finite(edges)
    if len(counts) > MAX_HISTOGRAM_BINS:  # merge whole adjacent buckets: counts stay exact
        groups = np.array_split(np.arange(len(counts)), MAX_HISTOGRAM_BINS)
        counts = np.asarray([counts[g].sum() for g in groups])
        edges = np.asarray([edges[g[0]] for g in groups] + [edges[-1]])
    return wandb.Histogram(np_histogram=(counts, edges))


def _finite(edges):
    """Replace non-finite bucket edges (±Inf, ±DBL_MAX sentinels) by their finite neighbours."""
    import numpy as np

    ok = np.isfinite(edges) & (np.abs(edges) < 1e300)
    if ok.all() or not ok.any():
        return np.where(ok, edges, 0.0)
    idx = np.arange(len(edges))
    return np.interp(idx, idx[ok], edges[ok])


def _image(im, tmp: Path, name: str) -> Any:
    """``wandb.Image`` of an image :func:`tracelet.media.image_problem` passed: PNG/JPEG/GIF
    from the writer's bytes unchanged, other formats decoded with Pillow."""
    import wandb

    fmt = im.format
    if fmt in ("png", "jpeg", "gif"):
        path = tmp / f"{name}.{'jpg' if fmt == 'jpeg' else fmt}"
        path.write_bytes(im.encoded)  # the writer's bytes, unchanged
        return wandb.Image(str(path))
    from PIL import Image

    return wandb.Image(Image.open(io.BytesIO(im.encoded)))


def _audio(a, tmp: Path, name: str) -> Any:
    import wandb

    path = tmp / f"{name}.{a.format if a.format != 'bin' else 'wav'}"
    path.write_bytes(a.encoded)  # the writer's clip, unchanged
    return wandb.Audio(str(path), sample_rate=int(a.sample_rate) or None, caption=a.label or None)


def _html(t) -> Any:
    import wandb

    return wandb.Html(f"<pre>{html.escape(t.text)}</pre>", inject=False, data_is_not_path=True)
