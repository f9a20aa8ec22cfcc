"""The content identity of a plain TensorBoard run: the same files are the same run, whatever
folder the sync was pointed at.

A plain run (no ``tracelet.json``) is named by its path under the LOGDIR, so the same files
synced as ``tracelet sync sub`` (run ``exp/r1``), ``tracelet sync sub/exp`` (``r1``) and
``tracelet sync sub/exp/r1`` (``r1``) have three names, three run ids and three projects. Their
first event file does not change: its name (TensorBoard puts the creation time, host and
process id in it) and its first record (the ``file_version`` event with the writer's wall time
to the microsecond) are written once, when the file is created, and never again. Their hash is
the run's **source id**, carried in each destination's identity tags (``tracelet.source_id``)
and used to find the run again when it is reached under another name.

Only a bounded read (:data:`FIRST_RECORD_MAX` bytes of the first record) of a run that CHANGED:
the no-op fast path (:meth:`tracelet.engine.plan.Planner.unchanged`) never computes it.

A copied template (fixtures, a script that writes files with fixed names and times) can give
unrelated runs the same head: a run found by source id is only taken as the same run when one
name is the other or ends with it (``exp/r1`` and ``r1``: the levels of one path), see
:func:`same_source_names`.
"""
from __future__ import annotations

import hashlib
import os
import struct

from .checkpoint import HEAD_HASH_BYTES
from .errors import TraceletError
from .reader import RunSource
from .reader.events import open_event_file
from .reader.records import FOOTER_BYTES, HEADER_BYTES, masked_crc32c

# One read of the file's first HEAD_HASH_BYTES (4 KiB): in object storage the same cached GET
# as the file identity check. The file_version event is ~30 bytes; the bound is for hostile input.
FIRST_RECORD_MAX = HEAD_HASH_BYTES - HEADER_BYTES - FOOTER_BYTES
SOURCE_ID_TAG = "tracelet.source_id"  # the identity tag destinations store it in


def source_id_for(run: RunSource, manifest: dict | None) -> str:
    """The source id of a plain run, ``""`` for a manifest run (its ``run_id`` is already its
    identity), a run without event files, or one whose first event file does not hold a whole
    first record with valid CRCs yet (or cannot be read: the sync reports that file itself)."""
    if manifest is not None or run.has_manifest or not run.event_files:
        return ""
    first = run.event_files[0]
    try:
        head = _head(run, first, HEAD_HASH_BYTES)
    except (OSError, ValueError, TraceletError):  # the events facet reports the file itself
        return ""
    data = _first_record(head)
    if data is None:
        return ""
    h = hashlib.sha1(b"tracelet source v1\n")
    h.update(first.name.encode("utf-8", "surrogatepass") + b"\n")
    h.update(data)
    return h.hexdigest()[:32]


def _first_record(head: bytes) -> bytes | None:
    """The first record's data (its first :data:`FIRST_RECORD_MAX` bytes), once it is written
    whole and its CRCs hold (a torn or damaged start is no identity); else None."""
    if len(head) < HEADER_BYTES:
        return None
    (length,) = struct.unpack("<Q", head[:8])
    if length == 0 or struct.unpack("<I", head[8:12])[0] != masked_crc32c(head[:8]):
        return None
    if length > FIRST_RECORD_MAX:  # bounded: the prefix stands for it (no data CRC to check)
        data = head[HEADER_BYTES:HEADER_BYTES + FIRST_RECORD_MAX]
        return data if len(data) == FIRST_RECORD_MAX else None
    data = head[HEADER_BYTES:HEADER_BYTES + length]
    crc = head[HEADER_BYTES + length:HEADER_BYTES + length + FOOTER_BYTES]
    if len(crc) < FOOTER_BYTES or struct.unpack("<I", crc)[0] != masked_crc32c(data):
        return None
    return data


def _head(run: RunSource, path, n: int) -> bytes:
    if run.location is None:
        with open_event_file(os.fspath(path)) as f:  # refuses a FIFO or device put there since
            return f.read(n)
    entry = run.location.entry(path)  # object storage: one small ranged GET (cached)
    if entry is None:
        return b""
    return run.location.head_bytes(path, min(n, entry.size), entry.etag)


def same_source_names(a: str, b: str) -> bool:
    """Whether run paths ``a`` and ``b`` can name the same folder seen from two levels: equal,
    or one ends with ``/`` + the other (``sub`` → ``exp/r1``, ``sub/exp`` → ``r1``)."""
    if not a or not b:
        return False
    return a == b or a.endswith("/" + b) or b.endswith("/" + a)


def same_source_line(dest: str, run_path: str, project: str, found_as: str) -> str:
    """The warning for a run found by its source id under another name (one line)."""
    return (f"{dest}: run '{run_path}' (project '{project}') is the same source as {found_as} "
            "(same first event file): continued in that run, nothing sent twice; a plain "
            "run's name is its path under the LOGDIR given, so sync the same LOGDIR to keep "
            "one name")
