"""Reading W&B's ``.wandb`` files (``tracelet.destinations.wandb.txlog``) that anyone may have
written: framed here with the leveldb-log rules (as ``harness_wandb`` reads them), records are
real ``wandb_internal_pb2.Record`` protobufs."""
from __future__ import annotations

import struct
import zlib

from wandb.proto import wandb_internal_pb2 as pb

from tracelet.destinations.wandb.landed import Landed
from tracelet.destinations.wandb.mapping import SOURCE_KEY
from tracelet.destinations.wandb.txlog import (F_HISTORY, LogScanner, check_fragment,
                                               read_run_record, record_field, source_texts)

BLOCK, HEADER = 32768, 7


def frame(records: list[bytes]) -> bytes:
    """A ``.wandb`` file of ``records`` (FULL, or FIRST/MIDDLE/LAST across blocks)."""
    out = bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 0))
    for rec in records:
        first, rest = True, rec
        while True:
            left = BLOCK - len(out) % BLOCK
            if left < HEADER:
                out += b"\0" * left
                continue
            piece, rest = rest[:left - HEADER], rest[left - HEADER:]
            kind = (1 if not rest else 2) if first else (4 if not rest else 3)
            out += struct.pack("<IHB", zlib.crc32(bytes([kind]) + piece) & 0xFFFFFFFF,
                               len(piece), kind) + piece
            first = False
            if not rest:
                break
    return bytes(out)


def history(step: int, **items) -> bytes:
    rec = pb.Record()
    rec.history.step.num = step
    for key, value in items.items():
        item = rec.history.item.add()
        item.key = key
        if isinstance(value, tuple):  # (oneof field, raw text)
            setattr(item, value[0], value[1])
        else:
            item.value_json = value
    return rec.SerializeToString()


def run_record() -> bytes:
    rec = pb.Record()
    rec.run.run_id, rec.run.project = "r", "p"
    return rec.SerializeToString()


def test_source_texts_of_hostile_history_items(tmp_path):
    """A ``_tracelet`` item whose value is not JSON (in ``value_json`` or in the ``json``
    field) is read as text and names no point; nothing raises, the good rows still count."""
    path = tmp_path / "run-r.wandb"
    records = [run_record(), history(0, **{SOURCE_KEY: '"f:s0+2"'}),
               history(1, **{SOURCE_KEY: ("json", "{not json")}),
               history(2, **{SOURCE_KEY: "[unclosed"}),
               history(3, **{SOURCE_KEY: ("json", '"f:s5"')}),
               history(4, **{SOURCE_KEY: ("integer", 7)}),
               history(5, other='"f:s9"'),
               history(6, **{SOURCE_KEY: '"f:s' + "7" * 40000 + '"'})]  # spans two blocks
    path.write_bytes(frame(records))
    texts = list(source_texts(str(path)))
    assert texts[:4] == ["f:s0+2", "{not json", "[unclosed", "f:s5"] and len(texts) == 5
    landed = Landed()
    for text in texts:
        landed.add_source(text)
    assert landed.finish().ranges == {("f", "s"): [[0, 2], [5, 6]]}
    assert read_run_record(str(path)).project == "p"
    assert check_fragment(str(path)) == (6, None)


def test_torn_and_corrupt_tails(tmp_path):
    good = frame([run_record()] + [history(s, **{SOURCE_KEY: f'"f:s{s}"'}) for s in range(3)])
    path = tmp_path / "run-r.wandb"
    for cut in range(len(good) - 30, len(good)):  # every cut inside the last record
        path.write_bytes(good[:cut])
        top, torn = check_fragment(str(path))
        assert top == 1 and torn is not None and torn <= cut
        assert [record_field(r) for _, r in LogScanner(str(path)).poll()][-1] == F_HISTORY
    bad = bytearray(good)
    bad[-3] ^= 0xFF  # a bit flip in the last record: its CRC fails, it is skipped
    path.write_bytes(bytes(bad))
    assert list(source_texts(str(path))) == ["f:s0", "f:s1"]
