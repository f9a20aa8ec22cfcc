"""Damaged and odd event files: the reader says what is wrong and where, reads every valid record,
never raises, never loops.

The committed fixtures (corruptions.json says what was done to each, at which byte) plus damage
made here on copies: a cut header, a zero-filled tail (NFS hole), an unparsable payload with
valid CRCs, a bad data CRC on the last record, a huge length with a valid length CRC.
"""
from __future__ import annotations

import dataclasses
import struct

import pytest
from conftest import CORRUPTIONS, FIXTURES, fixture_id, read_points, record_ends

from tracelet.errors import CorruptFileError
from tracelet.reader import EventFileReader


def _damaged(kind):
    return [pytest.param(FIXTURES / rel, info, id=rel)
            for rel, info in CORRUPTIONS.items() if info["kind"] == kind]


def _steps(points, tag="loss"):
    return [s for t, s, _, _ in points["scalar"] if t == tag]


@pytest.mark.parametrize("path,info", _damaged("bad_data_crc"))
def test_bad_data_crc_skips_one_record_and_counts_it(path, info, read_path):
    got, reader, batches = read_points(path)
    st = reader.status
    assert st.bad_data_crc == 1
    assert sum(b.skipped_records for b in batches) == 1
    assert st.corrupt_offset is None and st.pending_bytes == 0
    assert st.offset == path.stat().st_size, "records after the bad one are read"
    # the fixture's scalar records are steps 0..39 (one per record, file_version first, a text
    # record every 10 steps); exactly one step is missing, and later steps are all there
    steps = _steps(got)
    assert len(steps) == 39 and steps[-1] == 39
    assert len(set(range(40)) - set(steps)) == 1


@pytest.mark.parametrize("path,info", _damaged("bad_data_crc"))
def test_bad_data_crc_is_counted_in_the_batch_that_covers_it(path, info, read_path):
    _, _, batches = read_points(path, max_points=1)
    (b,) = [b for b in batches if b.skipped_records]
    assert b.start_offset <= info["record_start"] and info["record_end"] <= b.end_offset


@pytest.mark.parametrize("path,info", _damaged("bad_data_crc"))
def test_bad_data_crc_status_names_the_record_offset(path, info, read_path):
    _, reader, _ = read_points(path)
    fields = dataclasses.asdict(reader.status)
    named = [k for k, v in fields.items()
             if v == info["record_start"] or (isinstance(v, (list, tuple))
                                              and info["record_start"] in v)]
    assert named, f"no status field holds byte {info['record_start']}: {fields}"


@pytest.mark.parametrize("path,info", _damaged("bad_length_crc") + _damaged("garbage"))
def test_bad_length_crc_stops_there_and_names_the_offset(path, info, read_path):
    at = info.get("record_start", info.get("corrupt_offset"))
    got, reader, _ = read_points(path)
    st = reader.status
    assert st.corrupt_offset == at and st.offset == at
    assert st.pending_bytes == 0, "corrupt is not 'not yet'"
    assert "CRC" in st.corrupt_reason
    if info["kind"] == "bad_length_crc":
        assert _steps(got), "records before the damage are read"
    else:
        assert got["scalar"] == [] and reader.path == str(path)
    message = str(CorruptFileError(reader.path, st.corrupt_offset, st.corrupt_reason))
    assert str(path) in message and f"byte {at}" in message
    # reading again from the checkpoint: same report, nothing read, and it returns (no loop)
    again, reader2, batches2 = read_points(path, st.offset, reader.tag_plugins)
    assert reader2.status.corrupt_offset == at and not any(again[k] for k in ("scalar", "text"))
    assert all(b.points == 0 for b in batches2)


@pytest.mark.parametrize("path,info", _damaged("bad_length_crc"))
def test_bad_length_crc_reads_every_record_before(path, info, read_path):
    got, _, _ = read_points(path)
    # records: file_version, then per step a scalar (and a text at steps 0, 10, 20, ...)
    assert len(got["scalar"]) + len(got["text"]) == info["records_before"] - 1
    # scalar steps 0, 1, ... in order, up to the damaged record
    assert _steps(got) == list(range(len(got["scalar"])))


@pytest.mark.parametrize("path,info", _damaged("truncated_tail"))
def test_truncated_tail_is_not_yet(path, info, read_path):
    got, reader, _ = read_points(path)
    st = reader.status
    assert st.offset == info["record_start"], "offset kept at the start of the cut record"
    assert st.pending_bytes == info["cut_at"] - info["record_start"] > 0
    assert st.corrupt_offset is None and st.bad_data_crc == 0
    assert _steps(got) == list(range(39))
    again, reader2, _ = read_points(path, st.offset, reader.tag_plugins)
    assert (reader2.status.offset, reader2.status.pending_bytes) == (st.offset,
                                                                    st.pending_bytes)
    assert not again["scalar"]


@pytest.mark.parametrize("rel", ["empty_file/run", "empty_file/only_empty"])
def test_empty_file(rel, read_path):
    path = sorted((FIXTURES / rel).glob("*tfevents*"))[0]
    assert path.stat().st_size == 0
    reader = EventFileReader(path)
    assert list(reader.batches()) == []
    st = reader.status
    assert (st.offset, st.pending_bytes, st.corrupt_offset, st.bad_data_crc) == (0, 0, None, 0)


# -- damage made here, on copies of an intact fixture ---------------------------------------
@pytest.fixture
def clean_copy(tmp_path):
    src = next((FIXTURES / "restart_overlapping_steps/torch").glob("*1700000000*"))
    dst = tmp_path / src.name
    dst.write_bytes(src.read_bytes())
    return dst


def _masked_crc(b: bytes) -> bytes:
    from crc32c import crc32c

    c = crc32c(b)
    return struct.pack("<I", (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _frame(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + _masked_crc(header) + data + _masked_crc(data)


@pytest.mark.parametrize("keep", [1, 8, 11, 12, 13])
def test_cut_inside_the_header_is_not_yet(clean_copy, keep, read_path):
    ends = record_ends(clean_copy)
    data = clean_copy.read_bytes()
    clean_copy.write_bytes(data[: ends[-2] + keep])
    got, reader, _ = read_points(clean_copy)
    assert (reader.status.offset, reader.status.pending_bytes) == (ends[-2], keep)
    assert reader.status.corrupt_offset is None
    assert _steps(got) == list(range(29))


def test_zero_filled_tail_is_not_yet(clean_copy, read_path):
    """NFS may show a larger size before the bytes: the hole reads as zeros. Not corrupt."""
    size = clean_copy.stat().st_size
    with open(clean_copy, "ab") as f:
        f.write(b"\0" * 100)
    got, reader, _ = read_points(clean_copy)
    st = reader.status
    assert (st.offset, st.pending_bytes, st.corrupt_offset) == (size, 100, None)
    assert _steps(got) == list(range(30))


def test_unparsable_payload_with_valid_crcs_is_skipped(clean_copy, read_path):
    ends = record_ends(clean_copy)
    data = clean_copy.read_bytes()
    junk = _frame(b"\xff\xff\xff\xff not a protobuf")
    clean_copy.write_bytes(data[: ends[5]] + junk + data[ends[5]:])
    got, reader, batches = read_points(clean_copy)
    assert sum(b.skipped_records for b in batches) == 1
    assert reader.status.offset == len(data) + len(junk)
    assert _steps(got) == list(range(30))


def test_bad_data_crc_on_the_last_record(clean_copy, read_path):
    data = bytearray(clean_copy.read_bytes())
    data[-5] ^= 0xFF  # last payload byte
    clean_copy.write_bytes(bytes(data))
    got, reader, _ = read_points(clean_copy)
    assert reader.status.bad_data_crc == 1
    assert reader.status.offset == len(data) and reader.status.pending_bytes == 0
    assert _steps(got) == list(range(29))


def test_huge_length_with_valid_crc_is_not_yet_and_cheap(clean_copy, read_path):
    """A length of 1 TiB with a valid length CRC could be a writer mid-append: 'not yet', and
    the reader must not try to allocate it."""
    size = clean_copy.stat().st_size
    header = struct.pack("<Q", 1 << 40)
    with open(clean_copy, "ab") as f:
        f.write(header + _masked_crc(header) + b"partial payload")
    got, reader, _ = read_points(clean_copy)
    st = reader.status
    assert (st.offset, st.corrupt_offset) == (size, None)
    assert st.pending_bytes == 12 + len(b"partial payload")
    assert _steps(got) == list(range(30))


def test_every_damaged_fixture_is_tested():
    kinds = {info["kind"] for info in CORRUPTIONS.values()}
    assert kinds == {"bad_data_crc", "bad_length_crc", "truncated_tail", "garbage"}
    for rel in CORRUPTIONS:
        assert (FIXTURES / rel).is_file(), fixture_id(FIXTURES / rel)
