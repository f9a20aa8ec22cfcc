"""Layer 1: TFRecord framing, read from any byte offset, both CRCs checked in C.

Frame: ``u64 length | u32 masked_crc32c(length bytes) | data | u32 masked_crc32c(data)``.

Outcomes at a position, and why each is handled the way it is:

* fewer bytes than a whole frame -> **not yet**: the writer is mid-append (or the shared FS has
  not shown us the rest). Stop, keep the offset, read it next time. Never an error.
* header all zero bytes at the tail -> **not yet** as well: NFS can publish a larger size before
  the bytes themselves, and such a hole reads as zeros.
* bad length CRC -> **corrupt**: nothing after it can be framed. Stop the file, report byte
  offset; the checkpoint keeps the offset so the next sync reports it again instead of looping.
* a length with a valid CRC but larger than any record can be (:data:`MAX_RECORD_BYTES`: an
  Event is a protobuf message, and those are under 2 GiB) -> **corrupt** too, at the record's
  offset. Waiting for such a "tail" would wait forever and hide every record after it.
* bad data CRC with a good length CRC -> the frame is intact, its payload is not: **skip** that
  record, count it, continue with the next one.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator


HEADER_BYTES = 12  # u64 length + u32 length crc
FOOTER_BYTES = 4  # u32 data crc
_CHUNK_BYTES = 8 << 20  # read granularity: large enough that syscalls vanish from profiles
_MASK_DELTA = 0xA282EAD8
MAX_NOTED = 100  # bad-record offsets kept per read: enough to locate damage, bounded memory
_U64_U32 = struct.Struct("<QI")
_U32 = struct.Struct("<I")
LENGTH_CRC_MISMATCH = "record length CRC mismatch (not a TFRecord frame)"
# The largest payload a record can hold: an Event is one protobuf message, and protobuf caps a
# message at 2 GiB - 1 byte. A larger length (with a valid length CRC) is damage, not a tail.
MAX_RECORD_BYTES = (1 << 31) - 1


def length_too_large(length: int) -> str:
    """The corrupt_reason for a record length beyond :data:`MAX_RECORD_BYTES`."""
    return (f"record length {length:,} bytes (valid length CRC) is more than a record can hold "
            f"({MAX_RECORD_BYTES:,} bytes, protobuf's limit): not a record being written")


_crc32c = None  # crc32c.crc32c, imported on first use: the C reader checks CRCs itself, and
#                the package's import (its version lookup through importlib.metadata) costs ~15 ms


def masked_crc32c(data) -> int:
    global _crc32c
    if _crc32c is None:
        from crc32c import crc32c as _crc32c
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """Encode one TFRecord frame (used by tests, fixture builders and benchmarks)."""
    header = struct.pack("<Q", len(data))
    return b"".join(
        (header, _U32.pack(masked_crc32c(header)), data, _U32.pack(masked_crc32c(data)))
    )


@dataclass(slots=True)
class FramingStatus:
    """What stopped (or did not stop) a read, in byte offsets of the file."""

    offset: int = 0  # next unread byte: resume here
    bad_data_crc: int = 0  # records skipped because their payload CRC did not match
    bad_data_offsets: list[int] = field(default_factory=list)  # where (first MAX_NOTED of them)
    corrupt_offset: int | None = None  # bad length CRC / impossible length here; nothing after read
    corrupt_reason: str = ""
    pending_bytes: int = 0  # bytes after `offset` that do not form a whole record yet


def iter_records(
    f: BinaryIO, start: int, end: int, status: FramingStatus
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset_after_record, payload)`` for each intact record in ``[start, end)``.

    ``end`` is the file size seen when the sync started (the "signpost"): bytes appended later
    wait for the next sync. ``status`` is updated as records are consumed, so after the
    generator stops (or is abandoned) ``status.offset`` is the correct resume point.
    """
    status.offset = start
    pos = start  # file offset of buf[0]
    buf = b""
    i = 0  # index into buf of the next record
    unpack_header = _U64_U32.unpack_from
    unpack_u32 = _U32.unpack_from
    while True:
        avail = len(buf) - i
        if avail < HEADER_BYTES:
            if pos + len(buf) >= end:
                break
            buf, pos, i = _refill(f, buf, pos, i, end, HEADER_BYTES)
            if len(buf) == avail:
                break  # file shrank under us; the identity check reports it
            continue
        length, length_crc = unpack_header(buf, i)
        if masked_crc32c(buf[i : i + 8]) != length_crc:
            if buf[i : i + HEADER_BYTES] == b"\0" * HEADER_BYTES:
                break  # hole not yet filled in by the FS: "not yet"
            status.corrupt_offset = pos + i
            status.corrupt_reason = LENGTH_CRC_MISMATCH
            break
        if length > MAX_RECORD_BYTES:
            status.corrupt_offset = pos + i
            status.corrupt_reason = length_too_large(length)
            break
        total = HEADER_BYTES + length + FOOTER_BYTES
        if avail < total:
            if pos + i + total > end:
                break  # incomplete tail: "not yet"
            buf, pos, i = _refill(f, buf, pos, i, end, total)
            if len(buf) - i < total:
                break  # file shrank under us; treat as not yet, identity check reports it
            continue
        data_start = i + HEADER_BYTES
        data_end = data_start + length
        data = buf[data_start:data_end]
        i = data_end + FOOTER_BYTES
        if masked_crc32c(data) != unpack_u32(buf, data_end)[0]:
            note_bad_data(status, pos + data_start - HEADER_BYTES)
            status.offset = pos + i
            continue
        status.offset = pos + i
        yield status.offset, data
    status.pending_bytes = max(0, end - status.offset) if status.corrupt_offset is None else 0


def note_bad_data(status: FramingStatus, record_offset: int, counted: bool = False) -> None:
    """Count a record skipped for its data CRC and remember where it starts."""
    if not counted:
        status.bad_data_crc += 1
    if len(status.bad_data_offsets) < MAX_NOTED:
        status.bad_data_offsets.append(record_offset)


def _refill(f: BinaryIO, buf: bytes, pos: int, i: int, end: int, need: int):
    """Drop consumed bytes and read at least ``need`` bytes (or up to ``end``) after index i."""
    keep = buf[i:]
    pos += i
    # an object store's ranged file sets its own chunk: TRACELET_READ_BLOCK_BYTES per GET
    want = max(need, getattr(f, "read_chunk", _CHUNK_BYTES)) - len(keep)
    want = min(want, end - (pos + len(keep)))
    if want > 0:
        f.seek(pos + len(keep))
        chunk = f.read(want)
        keep = keep + chunk if keep else chunk
    return keep, pos, 0
