"""Damaged and odd event files: the reader says what is wrong and where, reads every valid record,
never raises, never loops.

The committed fixtures (corruptions.json says what was done to each, at which byte) plus damage
made here on copies: a cut header, a zero-filled tail (NFS hole), an unparsable payload with
valid CRCs, a bad data CRC on the last record, impossible lengths with a valid length CRC; and
hostile values built from real protobufs (shapes that promise more than the record holds),
FIFOs and devices named like event files.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import struct
import tracemalloc

import pytest
from tensorboard.compat.proto import event_pb2, summary_pb2

from tests.reader.helpers import (CORRUPTIONS, FIXTURES, damaged_fixtures, fixture_id, read_points,
                                  record_ends)
from tests.reader.hostile import HOSTILE_VALUES, hostile_event_file
from tracelet.errors import CorruptFileError, NotRegularFileError
from tracelet.export import FileScan
from tracelet.reader import EventFileReader, frame_record, masked_crc32c, tensor_to_ndarray
from tracelet.reader import records as records_mod
from tracelet.reader.events import MAX_EXPANDED_ELEMENTS, MalformedValue
from tracelet.reader.records import MAX_RECORD_BYTES
from tracelet.testing.events import (DT_BFLOAT16, DT_DOUBLE, DT_FLOAT, DT_HALF, DT_STRING, T0, Value,
                                     framed, scalar_event, summary_event, tensor)


def _steps(points, tag="loss"):
    return [s for t, s, _, _ in points["scalar"] if t == tag]


@pytest.mark.parametrize("path,info", damaged_fixtures("bad_data_crc"))
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


@pytest.mark.parametrize("path,info", damaged_fixtures("bad_data_crc"))
def test_bad_data_crc_is_counted_in_the_batch_that_covers_it(path, info, read_path):
    _, _, batches = read_points(path, max_points=1)
    (b,) = [b for b in batches if b.skipped_records]
    assert b.start_offset <= info["record_start"] and info["record_end"] <= b.end_offset


@pytest.mark.parametrize("path,info", damaged_fixtures("bad_data_crc"))
def test_bad_data_crc_status_names_the_record_offset(path, info, read_path):
    _, reader, _ = read_points(path)
    fields = dataclasses.asdict(reader.status)
    named = [k for k, v in fields.items()
             if v == info["record_start"] or (isinstance(v, (list, tuple))
                                              and info["record_start"] in v)]
    assert named, f"no status field holds byte {info['record_start']}: {fields}"


@pytest.mark.parametrize("path,info", damaged_fixtures("bad_length_crc") + damaged_fixtures("garbage"))
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


@pytest.mark.parametrize("path,info", damaged_fixtures("bad_length_crc"))
def test_bad_length_crc_reads_every_record_before(path, info, read_path):
    got, _, _ = read_points(path)
    # records: file_version, then per step a scalar (and a text at steps 0, 10, 20, ...)
    assert len(got["scalar"]) + len(got["text"]) == info["records_before"] - 1
    # scalar steps 0, 1, ... in order, up to the damaged record
    assert _steps(got) == list(range(len(got["scalar"])))


@pytest.mark.parametrize("path,info", damaged_fixtures("truncated_tail"))
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
    return struct.pack("<I", masked_crc32c(b))


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
    junk = frame_record(b"\xff\xff\xff\xff not a protobuf")
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


HUGE_LENGTHS = [MAX_RECORD_BYTES + 1, 1 << 40, 1 << 60, (1 << 64) - 1]


@pytest.mark.parametrize("length", HUGE_LENGTHS, ids=["max+1", "2^40", "2^60", "2^64-1"])
def test_impossible_length_with_valid_crc_is_corrupt_not_a_tail(clean_copy, length, read_path):
    """A length no record can have (an Event is a protobuf message: < 2 GiB), with a valid
    length CRC, is damage: waiting for that "tail" would hide the records after it forever.
    The file stops there and says where; the records after it stay unread (as after any
    corruption), and a re-read from the checkpoint reports the same and returns."""
    size = clean_copy.stat().st_size
    header = struct.pack("<Q", length)
    after = b"".join(framed(scalar_event("loss", 100 + k, 1.0)) for k in range(150))
    with open(clean_copy, "ab") as f:
        f.write(header + _masked_crc(header) + b"partial payload" + after)
    with _bounded_memory():
        got, reader, batches = read_points(clean_copy)
    st = reader.status
    assert (st.offset, st.corrupt_offset, st.pending_bytes) == (size, size, 0)
    assert f"{length:,}" in st.corrupt_reason and "record length" in st.corrupt_reason
    assert _steps(got) == list(range(30)), "every record before the damage is read"
    message = str(CorruptFileError(reader.path, st.corrupt_offset, st.corrupt_reason))
    assert str(clean_copy) in message and f"byte {size}" in message
    again, reader2, _ = read_points(clean_copy, st.offset, reader.tag_plugins)
    assert reader2.status.corrupt_offset == size and not again["scalar"]


def test_largest_possible_length_is_still_not_yet_and_cheap(clean_copy, read_path):
    """At the bound itself the record could be real and still being written: "not yet", and
    the reader allocates nothing for the bytes it does not have."""
    size = clean_copy.stat().st_size
    header = struct.pack("<Q", MAX_RECORD_BYTES)
    with open(clean_copy, "ab") as f:
        f.write(header + _masked_crc(header) + b"partial payload")
    with _bounded_memory():
        got, reader, _ = read_points(clean_copy)
    st = reader.status
    assert (st.offset, st.corrupt_offset) == (size, None)
    assert st.pending_bytes == 12 + len(b"partial payload")
    assert _steps(got) == list(range(30))


# -- values whose fields contradict each other: refused, bounded, reported with the offset ----
@contextlib.contextmanager
def _bounded_memory(limit: int = 64 << 20):
    """The block may allocate at most ``limit`` bytes at its peak (Python and numpy memory)."""
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit, f"peak {peak:,} bytes allocated"


@pytest.mark.parametrize("name", sorted(HOSTILE_VALUES))
def test_hostile_value_is_refused_bounded_and_named(tmp_path, name, read_path):
    path = tmp_path / "events.out.tfevents.1.host"
    at = hostile_event_file(path, HOSTILE_VALUES[name]())
    with _bounded_memory():
        got, reader, batches = read_points(path)
    assert _steps(got) == [0, 1, 2, 3, 4, 6, 7, 8, 9], "every valid record is read"
    assert [t[3] for t in got["text"]] == ["still read"]
    assert sum(b.skipped_records for b in batches) == 1
    assert reader.refused == 1 and reader.unparsable == 0
    assert [o for o, _ in reader.skip_notes] == [at], "the refused record's own byte offset"
    assert f"byte {at}: " in reader.skip_details()
    assert not any(k.startswith("undecodable") for k in got["other"]), got["other"]
    assert reader.status.offset == path.stat().st_size and reader.status.corrupt_offset is None


def test_hostile_value_next_to_good_values_keeps_them(tmp_path, read_path):
    """One bad value in a record with good ones: the good ones are read, the record counted."""
    path = tmp_path / "events.out.tfevents.1.host"
    bad = HOSTILE_VALUES["float_last_value_repeats_256GiB"]()
    ev = event_pb2.Event(step=3, wall_time=1.0, summary=summary_pb2.Summary(
        value=[Value(tag="loss", simple_value=1.5), bad, Value(tag="acc", simple_value=0.25)]))
    path.write_bytes(frame_record(ev.SerializeToString()))
    got, reader, batches = read_points(path)
    assert [(t, s) for t, s, _, _ in got["scalar"]] == [("loss", 3), ("acc", 3)]
    assert sum(b.skipped_records for b in batches) == 1 and reader.skip_notes[0][0] == 0
    assert "'loss_t' at step 3" in reader.skip_notes[0][1]


def test_many_refused_records_are_all_counted_and_notes_bounded(tmp_path, read_path):
    bad = framed(summary_event(1, T0 + 1, [HOSTILE_VALUES["negative_dimension"]()]))
    path = tmp_path / "events.out.tfevents.1.host"
    path.write_bytes(bad * (records_mod.MAX_NOTED + 50))
    _, reader, batches = read_points(path, max_points=7)
    assert reader.refused == sum(b.skipped_records for b in batches) == records_mod.MAX_NOTED + 50
    assert len(reader.skip_notes) == records_mod.MAX_NOTED
    assert [o for o, _ in reader.skip_notes[:3]] == [0, len(bad), 2 * len(bad)]
    assert reader.skip_details().endswith("; and 140 more")


def test_hparams_with_nan_inside_a_list_keep_every_hparam(tmp_path, read_path):
    """JSON cannot hold NaN: such a list/struct hparam is kept as protobuf text, not refused."""
    from google.protobuf import struct_pb2
    from tensorboard.plugins.hparams import plugin_data_pb2

    data = plugin_data_pb2.HParamsPluginData(version=0)
    data.session_start_info.hparams["lr"].number_value = 0.5
    listed = struct_pb2.Value()
    listed.list_value.values.add().number_value = float("nan")
    data.session_start_info.hparams["betas"].CopyFrom(listed)
    v = Value(tag="_hparams_/session_start_info")
    v.metadata.plugin_data.plugin_name = "hparams"
    v.metadata.plugin_data.content = data.SerializeToString()
    path = tmp_path / "events.out.tfevents.1.host"
    path.write_bytes(framed(summary_event(0, T0, [v])))
    _, reader, batches = read_points(path)
    (hp,) = [h for b in batches for h in b.hparams]
    assert hp.hparams["lr"] == 0.5 and "nan" in hp.hparams["betas"]
    assert reader.refused == 0


@pytest.mark.parametrize("rate", [float("nan"), float("inf"), -16000.0])
def test_audio_with_an_impossible_sample_rate_reads_it_as_unknown(tmp_path, rate, read_path):
    """0 means unknown (the WAV header's rate is used); no destination gets NaN to convert."""
    wav = b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0" + (8000).to_bytes(4, "little")
    v = Value(tag="clip", audio=summary_pb2.Summary.Audio(sample_rate=rate,
                                                          encoded_audio_string=wav))
    path = tmp_path / "events.out.tfevents.1.host"
    path.write_bytes(framed(summary_event(0, T0, [v])))
    _, _, batches = read_points(path)
    (a,) = [a for b in batches for a in b.audio]
    assert a.sample_rate == 8000.0


# Compact forms a writer may legitimately use, within the caps, and what they mean (TensorFlow's
# MakeNdarray: no values -> zeros, fewer values -> the last one repeats; TensorBoard's own
# make_ndarray only knows the one-value case, so it cannot be the oracle here).
VALID_COMPACT = {
    "zeros_histogram_30x3": (tensor(DT_DOUBLE, [30, 3]), [[0.0] * 3] * 30),
    "last_value_repeats": (tensor(DT_FLOAT, [4, 2], float_val=[1.0, 2.0]),
                           [[1.0, 2.0], [2.0, 2.0], [2.0, 2.0], [2.0, 2.0]]),
    "one_value_repeats": (tensor(DT_FLOAT, [3], float_val=[0.5]), [0.5] * 3),
    "half_repeats": (tensor(DT_HALF, [3], half_val=[15360, 16384]), [1.0, 2.0, 2.0]),
    "bfloat16_repeats": (tensor(DT_BFLOAT16, [3], half_val=[16256]), [1.0] * 3),
    "string_repeats": (tensor(DT_STRING, [2, 2], string_val=[b"a", b"b"]),
                       [[b"a", b"b"], [b"b", b"b"]]),
    "string_empty": (tensor(DT_STRING, [2]), [b"", b""]),
    "scalar_content": (tensor(DT_DOUBLE, [], tensor_content=struct.pack("<d", 2.5)), 2.5),
    "zero_elements": (tensor(DT_FLOAT, [0, 3]), []),
}


@pytest.mark.parametrize("name", sorted(VALID_COMPACT))
def test_valid_compact_tensors_decode_as_tensorflow_defines(name):
    t, want = VALID_COMPACT[name]
    got = tensor_to_ndarray(t)
    assert got.tolist() == want and got.shape == tuple(d.size for d in t.tensor_shape.dim)


def test_compact_tensor_at_the_element_cap_is_expanded():
    got = tensor_to_ndarray(tensor(DT_FLOAT, [MAX_EXPANDED_ELEMENTS], float_val=[7.0]))
    assert got.shape == (MAX_EXPANDED_ELEMENTS,) and float(got.min()) == float(got.max()) == 7.0


def test_tensor_to_ndarray_refuses_what_the_caps_exclude():
    with pytest.raises(MalformedValue, match="at most"):
        tensor_to_ndarray(tensor(DT_FLOAT, [MAX_EXPANDED_ELEMENTS + 1], float_val=[7.0]))
    with pytest.raises(MalformedValue, match="bytes"):
        tensor_to_ndarray(tensor(DT_STRING, [1000], string_val=[b"x" * (1 << 20)]))
    with pytest.raises(ValueError, match="unsupported tensor dtype"):  # counted, not refused
        tensor_to_ndarray(tensor(8, [1], scomplex_val=[1.0, 2.0]))


# -- not a regular file -------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_fifo_is_refused_at_open_not_waited_on(tmp_path, read_path):
    fifo = tmp_path / "events.out.tfevents.1.fifo"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFileError) as e:
        list(EventFileReader(fifo).batches())
    assert str(fifo) in str(e.value) and "FIFO" in str(e.value)
    scan = FileScan(fifo)  # what inspect and export use: a problem, not a hang
    assert list(scan.batches()) == [] and scan.state() == "unreadable"
    assert any(str(fifo) in p and "FIFO" in p for p in scan.problems())


def test_device_and_folder_are_refused_at_open():
    for path, kind in (("/dev/null", "character device"), ("/", "folder")):
        with pytest.raises(NotRegularFileError, match=kind):
            list(EventFileReader(path).batches())


def test_every_damaged_fixture_is_tested():
    kinds = {info["kind"] for info in CORRUPTIONS.values()}
    assert kinds == {"bad_data_crc", "bad_length_crc", "truncated_tail", "garbage"}
    for rel in CORRUPTIONS:
        assert (FIXTURES / rel).is_file(), fixture_id(FIXTURES / rel)
