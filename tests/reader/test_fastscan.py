"""The C fast path (``tracelet.reader._fastscan``) must read exactly what the Python path reads.

Every test builds event files, reads them once with the extension and once with
``TRACELET_NO_FASTSCAN=1``, and compares every field of every batch (floats by bit pattern, so
NaN payloads and -0.0 count) plus the reader's final status.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import struct
import sysconfig

import numpy as np
import pytest
from tensorboard.compat.proto import event_pb2, graph_pb2, summary_pb2

from tracelet.reader import EventFileReader, frame_record, masked_crc32c
from tracelet.reader import events as events_mod
from tracelet.reader import records as records_mod
from tracelet.reader.points import TypedScalars
from tracelet.testing.events import (DT_FLOAT, Value, framed, scalar_event, summary_event, tensor,
                                     tensor_value, version_event, write_frames)

try:
    from tracelet.reader import _fastscan
except ImportError:  # reported by test_extension_is_built; the comparisons need it
    _fastscan = None

needs_ext = pytest.mark.skipif(_fastscan is None, reason="C extension not built (no compiler?)")


# -- helpers ---------------------------------------------------------------------------------
def _norm(x):
    """Turn a batch (or anything in it) into plain data where floats compare by bit pattern."""
    if isinstance(x, float):
        return ("f", struct.pack("<d", x))
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return (type(x).__name__,) + tuple(
            (f.name, _norm(getattr(x, f.name))) for f in dataclasses.fields(x)
        )
    if isinstance(x, dict):
        return ("d",) + tuple(sorted((k, _norm(v)) for k, v in x.items()))
    if isinstance(x, (list, tuple)):
        return ("l",) + tuple(_norm(v) for v in x)
    if isinstance(x, np.generic):
        return _norm(x.item())
    return x


def _read(path, *, fast: bool, offset=0, tag_plugins=None, end=None, max_points=20_000,
          first_only=False, typed=False):
    prev = os.environ.pop("TRACELET_NO_FASTSCAN", None)
    if not fast:
        os.environ["TRACELET_NO_FASTSCAN"] = "1"
    try:
        r = EventFileReader(path, offset, tag_plugins, typed_scalars=typed)
        out = []
        for b in r.batches(end=end, max_points=max_points):
            if typed:  # export's layout: compared as the lists it stands for
                assert isinstance(b.scalars, TypedScalars)
                b.scalars = b.scalars.to_columns()
            # type check: the fast path must hand out the same column types
            assert all(type(t) is str for t in b.scalars.tags)
            assert all(type(s) is int for s in b.scalars.steps)
            assert all(type(v) is float for v in b.scalars.values + b.scalars.wall_times)
            out.append(_norm(b))
            if first_only:
                break
        # skipped records, with the byte offset and reason of each, must agree too
        return out, _norm(r.status), (r.unparsable, r.refused, list(r.skip_notes)), dict(r.tag_plugins)
    finally:
        os.environ.pop("TRACELET_NO_FASTSCAN", None)
        if prev is not None:
            os.environ["TRACELET_NO_FASTSCAN"] = prev


def assert_same(path, **kw):
    """The C and the Python path agree, in the engine's list layout and in export's typed one."""
    slow = _read(path, fast=False, **kw)
    for fast, typed in ((True, False), (True, True), (False, True)):
        other = _read(path, fast=fast, typed=typed, **kw)
        assert other[0] == slow[0], f"batches differ (C path: {fast}, typed: {typed})"
        assert other[1:] == slow[1:], "status / unparsable / tag_plugins differ"
    return slow


def assert_same_everywhere(path, max_points_list=(1, 2, 3, 7, 20_000)):
    """Whole-file reads at several batch sizes, then a resume from every batch's end_offset."""
    for mp in max_points_list:
        batches = assert_same(path, max_points=mp)[0]
    for mp in max_points_list[:3]:
        chain = {True: [], False: []}
        for fast in (True, False):
            offset, plugins = 0, {}
            for _ in range(10_000):
                got, status, _, plugins = _read(path, fast=fast, offset=offset,
                                                tag_plugins=plugins, max_points=mp,
                                                first_only=True)
                if not got:
                    break
                chain[fast].append(got[0])
                end_offset = dict(got[0][1:])["end_offset"]
                if end_offset == offset:
                    break
                offset = end_offset
        assert chain[True] == chain[False]
    return batches


def tensor_scalar(tag, step, value, plugin=""):
    t = tensor(DT_FLOAT, [], float_val=[value])
    return summary_event(step, 1.5, [tensor_value(tag, t, plugin)])


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, wt, payload: bytes) -> bytes:
    key = varint((num << 3) | wt)
    if wt == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def raw_value(tag: bytes | None, value: float | None, extra: bytes = b"") -> bytes:
    out = b""
    if tag is not None:
        out += field(1, 2, tag)
    if value is not None:
        out += field(2, 5, struct.pack("<f", value))
    return out + extra


def raw_event(values: list[bytes], step=5, wall=2.0, extra=b"", step_bytes=None) -> bytes:
    summary = b"".join(field(1, 2, v) for v in values)
    return (field(1, 1, struct.pack("<d", wall))
            + (step_bytes if step_bytes is not None else field(2, 0, varint(step)))
            + field(5, 2, summary) + extra)


# -- the extension itself ----------------------------------------------------------------------
def test_extension_is_built():
    if _fastscan is None:
        cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
        if shutil.which(cc) is None:  # setup.py builds it optional=True: Python path only
            pytest.skip(f"no C compiler ({cc}): the reader runs its pure-Python path")
        pytest.fail("tracelet.reader._fastscan is missing although a C compiler is here: "
                    "run `pip install -e . --no-deps` and read the build output")


@needs_ext
def test_crc32c_matches_reference_in_both_implementations():
    from crc32c import crc32c

    rng = random.Random(1)
    for n in list(range(0, 70)) + [255, 1000, 4097]:
        data = bytes(rng.getrandbits(8) for _ in range(n))
        for off in range(0, min(n, 9)):  # unaligned starts exercise the head loops
            assert _fastscan.crc32c(data[off:]) == crc32c(data[off:])
            assert _fastscan.crc32c_software(memoryview(data)[off:]) == crc32c(data[off:])


@needs_ext
def test_simple_values_never_reach_python(tmp_path, monkeypatch):
    p = tmp_path / "ev"
    write_frames(p, [version_event(1.0)]
                 + [scalar_event(step=k, wall=1.0 + k, pairs=[("loss", k * 0.5), ("acc", 1.0)])
                    for k in range(50)])
    calls = []
    orig = EventFileReader._decode_event
    monkeypatch.setattr(EventFileReader, "_decode_event",
                        lambda self, *args: calls.append(1) or orig(self, *args))
    monkeypatch.delenv("TRACELET_NO_FASTSCAN", raising=False)
    (b,) = list(EventFileReader(p).batches())
    assert len(b.scalars) == 100 and b.records == 51 and not calls
    monkeypatch.setenv("TRACELET_NO_FASTSCAN", "1")
    list(EventFileReader(p).batches())
    assert len(calls) == 51  # the switch really selects the Python path


# -- content ---------------------------------------------------------------------------------
@needs_ext
def test_simple_values_steps_and_special_floats(tmp_path):
    steps = [0, 1, -1, -(2**63), 2**40, 2**63 - 1, 127, 128, 300, -300]
    vals = [0.0, -0.0, math.nan, math.inf, -math.inf, 1e-45, 3.4e38, 1.0 / 3.0, -2.5]
    evs = [version_event(1e9)]
    for k, s in enumerate(steps):
        evs.append(scalar_event(step=s, wall=1.6e9 + k / 7, pairs=[(f"t{j}", v) for j, v in enumerate(vals)]))
    evs.append(scalar_event("nan_wall", 3, 1.0, math.nan))
    evs.append(event_pb2.Event(step=9, wall_time=3.0))  # no `what` at all
    evs.append(event_pb2.Event(step=9, wall_time=3.0, summary=summary_pb2.Summary()))  # empty
    p = tmp_path / "ev"
    write_frames(p, evs)
    (b,) = assert_same_everywhere(p)
    assert dict(b[1:])["records"] == len(evs)


@needs_ext
def test_unicode_and_many_tags(tmp_path):
    tags = ["loss/train", "ünïcödé/λ", "日本語/損失", "emoji/🚀", "nul\x00inside", "x" * 3000]
    tags += [f"many/{k}" for k in range(5000)]  # past the C tag cache's capacity: it starts over
    evs = [scalar_event(t, k, float(k), float(k)) for k, t in enumerate(tags)]
    evs += [scalar_event(t, k, 2.0, float(k)) for k, t in enumerate(tags[:10])]
    p = tmp_path / "ev"
    write_frames(p, evs)
    for mp in (999, 20_000):
        assert_same(p, max_points=mp)


@needs_ext
@pytest.mark.parametrize("fast", [True, False])
def test_typed_scalars_share_one_tag_table_per_file(tmp_path, fast, monkeypatch):
    """Export's layout: every batch of a file numbers its tags in one table, each tag once, also
    after the C tag cache starts over (more than 4,096 tags) and across slow (protobuf) records
    holding simple_values next to C-decoded ones."""
    if not fast:
        monkeypatch.setenv("TRACELET_NO_FASTSCAN", "1")
    tags = [f"many/{k}" for k in range(5000)] + ["loss"]
    evs = [scalar_event(t, k, float(k)) for k, t in enumerate(tags)]
    evs.append(raw_event([raw_value(b"loss", 1.0), raw_value(b"many/3", 2.0, field(9, 2, b""))],
                         extra=field(4, 0, varint(1))))  # a field C refuses: Python decodes it
    evs += [scalar_event(t, 9000 + k, 3.0) for k, t in enumerate(tags[:50])]
    p = tmp_path / "ev"
    write_frames(p, evs)
    reader = EventFileReader(p, typed_scalars=True)
    batches = list(reader.batches(max_points=777))
    assert len(batches) > 5
    tables = {id(b.scalars.table) for b in batches}
    assert len(tables) == 1
    names = batches[0].scalars.names
    assert sorted(names) == sorted(set(tags)) and len(names) == len(set(names))
    got = [(names[i], s) for b in batches
           for i, s in zip(b.scalars.ids[:b.scalars.n], b.scalars.steps[:b.scalars.n])]
    want = [(t, s) for b in EventFileReader(p).batches(max_points=777)
            for t, s in zip(b.scalars.tags, b.scalars.steps)]
    assert got == want and len(got) == 5001 + 2 + 50


@needs_ext
def test_wire_format_edge_cases(tmp_path):
    """Hand-built payloads: what C must take, and what it must leave to protobuf."""
    good = raw_value(b"ok", 1.0)
    meta_ok = field(1, 2, field(1, 2, b"scalars") + field(2, 2, b"\x00\xff")) + field(4, 0, varint(1))
    payloads = [
        raw_event([good]),
        raw_event([raw_value(b"\xff\xfe", 1.0)]),  # invalid UTF-8 tag: upb rejects -> unparsable
        raw_event([raw_value(b"\xed\xa0\x80", 1.0)]),  # UTF-8-encoded surrogate: invalid too
        raw_event([raw_value(b"\xc0\xaf", 1.0)]),  # overlong
        raw_event([raw_value(b"ok\xf4\x90\x80\x80", 1.0)]),  # > U+10FFFF
        raw_event([good, raw_value(b"\xe2\x82", 2.0)]),  # 2nd value bad: nothing of it kept
        raw_event([raw_value(None, 1.0)]),  # no tag -> tag ""
        raw_event([raw_value(b"ok", None)]),  # no value -> WhichOneof is None -> other
        raw_event([raw_value(b"a", 1.0) + field(1, 2, b"b")]),  # tag twice: last wins
        raw_event([raw_value(b"a", 1.0) + field(2, 5, struct.pack("<f", 9.0))]),  # value twice
        raw_event([raw_value(b"a", 1.0, field(9, 2, meta_ok))]),  # metadata on a simple_value
        raw_event([raw_value(b"a", 1.0, field(9, 2, field(1, 2, field(1, 2, b"\xff"))))]),
        raw_event([raw_value(b"a", 1.0, field(9, 2, field(2, 2, b"\xff")))]),
        raw_event([raw_value(b"a", 1.0, field(9, 2, field(7, 0, b"\x01")))]),  # unknown in meta
        raw_event([raw_value(b"a", 1.0, field(9, 2, meta_ok) + field(9, 2, meta_ok))]),
        raw_event([raw_value(b"a", 1.0, field(7, 2, b"node"))]),  # node_name
        raw_event([raw_value(b"a", 1.0, field(15, 0, b"\x01"))]),  # unknown Value field
        raw_event([raw_value(b"a", 1.0, field(2, 0, b"\x01"))]),  # wrong wire type for field 2
        raw_event([good], extra=field(3, 2, b"brain.Event:2")),  # summary + file_version
        raw_event([good], extra=field(5, 2, field(1, 2, raw_value(b"z", 3.0)))),  # summary twice
        raw_event([good], extra=field(1, 1, struct.pack("<d", 7.0)) + field(2, 0, varint(-4))),
        raw_event([good], extra=field(11, 0, b"\x01")),  # unknown Event field
        raw_event([good], step_bytes=field(2, 0, b"\xff" * 9 + b"\x01")),  # step -1
        raw_event([good], step_bytes=field(2, 0, b"\xff" * 9 + b"\x7f")),  # high bits dropped
        raw_event([good], step_bytes=field(2, 0, b"\xff" * 10 + b"\x01")),  # 11-byte varint
        raw_event([good], step_bytes=field(2, 0, b"\x80\x80\x00")),  # non-canonical 0
        field(3, 2, b"brain.Event:2"),
        field(3, 2, b"\xff"),  # bad UTF-8 file_version
        field(3, 2, b"a") + field(3, 2, b"b"),
        field(4, 2, graph_pb2.GraphDef().SerializeToString() + b"\x08\x01"),  # graph_def
        field(1, 1, struct.pack("<d", 1.0)),  # wall time only
        b"",  # empty Event
        raw_event([good])[:-3],  # truncated inside the summary
        raw_event([good]) + b"\x80",  # dangling varint
        b"\x2a\x05" + field(1, 2, b"\x0a\x10"),  # inner length past its parent
        b"\xff" * 11,
        raw_event([]),  # summary present but empty
        raw_event([field(1, 2, b"") for _ in range(3)]),  # three empty Values
    ]
    p = tmp_path / "ev"
    write_frames(p, payloads)
    for mp in (1, 2, 20_000):
        assert_same(p, max_points=mp)
    batches, status, (unparsable, _, notes), _ = _read(p, fast=True)
    assert unparsable >= 6 and len(notes) == unparsable


@needs_ext
def test_random_mutations(tmp_path):
    """Seeded fuzz: corrupt payload bytes (CRCs recomputed) so C sees every kind of bad proto."""
    rng = random.Random(7)
    base = [scalar_event(step=k, wall=1.0 + k, pairs=[("a/b", 0.5), ("ü", -1.0)]).SerializeToString()
            for k in range(40)]
    base += [tensor_scalar("t", 1, 2.0, "scalars").SerializeToString()]
    payloads = []
    for k in range(3000):
        d = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            j = rng.randrange(len(d))
            if op < 0.6:
                d[j] = rng.getrandbits(8)
            elif op < 0.8:
                del d[j]
            else:
                d.insert(j, rng.getrandbits(8))
        payloads.append(bytes(d))
    p = tmp_path / "ev"
    write_frames(p, payloads)
    for mp in (5, 20_000):
        assert_same(p, max_points=mp)


@needs_ext
def test_mixed_writers(tmp_path):
    """Real writers: simple values interleaved with tensor scalars, histograms, images, text,
    hparams (torch's add_hparams child run) and a graph."""
    from tensorboardX import SummaryWriter as XWriter
    from torch.utils.tensorboard import SummaryWriter as TorchWriter

    rng = np.random.default_rng(0)
    for name, Writer in (("torch", TorchWriter), ("tbx", XWriter)):
        w = Writer(str(tmp_path / name))
        for step in range(12):
            w.add_scalar("loss/train", float(rng.random()), step)
            w.add_scalar("loss/nan", math.nan if step % 3 == 0 else 1.0, step)
            w.add_scalars("multi", {"a": step * 1.0, "b": -step * 1.0}, step)
            if step % 4 == 0:
                w.add_histogram("weights", rng.normal(size=100), step)
                w.add_image("img", rng.random((3, 8, 8)), step)
                w.add_text("note", f"step {step} ünï", step)
            if name == "torch":
                w.add_scalar("new_style", float(step), step, new_style=True)
        w.add_hparams({"lr": 0.1, "opt": "sgd", "layers": 3}, {"hp/acc": 0.9})
        w.close()
    # TF2-style tensor scalars whose plugin metadata comes only with the first value
    write_frames(tmp_path / "tf2.tfevents",
                 [tensor_scalar("tf2", 0, 1.0, "scalars"), scalar_event("s", 0, 1.0, 1.0),
                  tensor_scalar("tf2", 1, 2.0), scalar_event("s", 1, 2.0, 1.0),
                  tensor_scalar("hist_like", 1, 3.0, "histograms")])
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file() and "tfevents" in p.name)
    assert len(files) >= 5
    for f in files:
        assert_same_everywhere(f, max_points_list=(1, 20_000))


# -- framing ---------------------------------------------------------------------------------
def _mixed_payloads(n=60):
    out = [version_event(1.0).SerializeToString()]
    for k in range(n):
        out.append(scalar_event(step=k, wall=1.0 + k, pairs=[("loss", k / 3), ("acc", 0.5)]).SerializeToString())
        if k % 9 == 4:
            out.append(tensor_scalar("t", k, 2.0, "scalars").SerializeToString())
    return out


@needs_ext
@pytest.mark.parametrize("chunk_bytes", [1, 13, 100, 8 << 20])
def test_framing_errors_and_chunk_boundaries(tmp_path, monkeypatch, chunk_bytes):
    monkeypatch.setattr(records_mod, "_CHUNK_BYTES", chunk_bytes)
    frames = [frame_record(p) for p in _mixed_payloads()]
    blob = bytearray(b"".join(frames))
    starts = np.cumsum([0] + [len(f) for f in frames])
    # bad data CRC in records 3, 4 (adjacent) and 20; bad length CRC in record 40
    for r in (3, 4, 20):
        blob[starts[r] + 14] ^= 0x55
    p = tmp_path / "bad_data"
    p.write_bytes(bytes(blob[: starts[40]]))
    slow = assert_same_everywhere(p)
    blob[starts[40] + 2] ^= 0x01
    p2 = tmp_path / "bad_length"
    p2.write_bytes(bytes(blob))
    assert_same_everywhere(p2)
    _, status, _, _ = _read(p2, fast=True)
    status = dict(status[1:])
    assert status["corrupt_offset"] == starts[40] and status["bad_data_crc"] == 3
    assert status["offset"] == starts[40]
    assert slow


@needs_ext
def test_truncated_tail_at_every_byte(tmp_path):
    frames = [frame_record(p) for p in _mixed_payloads(8)]
    frames.append(framed(scalar_event(step=99, wall=9.0, pairs=[("last", 1.0), ("last2", 2.0)])))
    full = b"".join(frames)
    head = len(full) - len(frames[-1])
    whole = tmp_path / "whole"
    whole.write_bytes(full)
    for cut in range(head, len(full) + 1):
        p = tmp_path / f"cut{cut}"
        p.write_bytes(full[:cut])
        assert_same(p, max_points=4)  # the file really ends there
        assert_same(whole, end=cut, max_points=3)  # the size seen at sync start ends there
        _, status, _, _ = _read(p, fast=True)
        status = dict(status[1:])
        assert status["offset"] == (len(full) if cut == len(full) else head)
        assert status["corrupt_offset"] is None
        assert status["pending_bytes"] == cut - status["offset"]
        p.unlink()


@needs_ext
@pytest.mark.parametrize("zeros", [1, 12, 16, 40, 5000])
def test_zero_filled_tail(tmp_path, zeros):
    frames = b"".join(frame_record(p) for p in _mixed_payloads(5))
    p = tmp_path / "ev"
    p.write_bytes(frames + b"\0" * zeros)
    assert_same_everywhere(p, max_points_list=(1, 20_000))
    _, status, _, _ = _read(p, fast=True)
    status = dict(status[1:])
    assert status["offset"] == len(frames) and status["corrupt_offset"] is None
    assert status["pending_bytes"] == zeros


@needs_ext
def test_end_bound_and_resume_offsets(tmp_path):
    frames = [frame_record(p) for p in _mixed_payloads(30)]
    p = tmp_path / "ev"
    p.write_bytes(b"".join(frames))
    bounds = np.cumsum([0] + [len(f) for f in frames])
    for end in list(bounds[:12]) + [int(bounds[12]) + 5, int(bounds[-1])]:
        assert_same(p, end=int(end), max_points=3)
    for start in bounds[::7]:
        assert_same(p, offset=int(start), max_points=2)


@needs_ext
def test_big_event_many_values(tmp_path):
    evs = [scalar_event(step=k, wall=1.0, pairs=[(f"v{j}", float(j)) for j in range(700)]) for k in range(5)]
    evs.insert(2, event_pb2.Event(step=1, summary=summary_pb2.Summary(
        value=[Value(tag="h", histo=summary_pb2.HistogramProto(min=0, max=1, num=1,
                                                             bucket_limit=[1.0], bucket=[1.0]))])))
    p = tmp_path / "ev"
    write_frames(p, evs)
    assert_same_everywhere(p, max_points_list=(1, 500, 701, 20_000))


@needs_ext
def test_masked_crc_consistent_with_records_module():
    data = b"some bytes"
    c = _fastscan.crc32c(data)
    assert masked_crc32c(data) == (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    assert events_mod._fastscan is _fastscan
