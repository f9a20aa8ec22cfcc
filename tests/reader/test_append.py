"""Concurrent append: another process writes while we read from the saved offset, again and again.

The writer is a real separate process. It frames records itself (TFRecord framing written out
in the script with the C crc32c; TensorBoard's ``RecordWriter`` would cost ~2 s of imports) and
writes the bytes in random-sized pieces, unbuffered, with short random sleeps, so reads see
records cut anywhere, header included. At chosen records it writes only the first part, tells us the
record's start offset, and waits until we have read: at that moment a read must stop exactly at
that offset with ``pending_bytes > 0`` (a handshake, not a sleep, so nothing depends on timing).
At the end the union of everything read must equal TensorBoard's read of the finished file:
every point once, in order, nothing twice.
"""
from __future__ import annotations

import queue
import random
import subprocess
import sys
import textwrap
import threading

import pytest

from tests.reader.helpers import KINDS, oracle_points, points_of_batches
from tracelet.reader import EventFileReader

WRITER = textwrap.dedent('''
    import random, struct, sys, time
    from crc32c import crc32c
    from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2

    path, seed, n, handshakes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    handshakes = {int(x) for x in handshakes.split(",") if x}
    rng = random.Random(seed)

    def masked(b):  # TFRecord's masked CRC-32C, written out here, not taken from Tracelet
        c = crc32c(b)
        return struct.pack("<I", (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF)

    def frame(ev):
        data = ev.SerializeToString()
        header = struct.pack("<Q", len(data))
        return header + masked(header) + data + masked(data)

    def md(plugin):
        return summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))

    def event(i):
        ev = event_pb2.Event(step=i, wall_time=1.7e9 + i * 0.25)
        if i == 0:
            ev.file_version = "brain.Event:2"
            return ev
        kind = i % 5
        val = ev.summary.value.add()
        if kind in (0, 1, 2):
            val.tag = f"loss/{kind}"
            val.simple_value = rng.random()
        elif kind == 3:  # TF2 text tensor: metadata on the tag's first value only
            val.tag = "notes"
            val.tensor.CopyFrom(tensor_pb2.TensorProto(
                dtype=7, string_val=[("x" * rng.randrange(1, 400) + f" {i}").encode()]))
            if i == 3:
                val.metadata.CopyFrom(md("text"))
        else:  # TF2 [k,3] histogram tensor, metadata first only
            k = rng.randrange(1, 30)
            vals = [rng.random() for _ in range(3 * k)]
            val.tag = "hist"
            val.tensor.CopyFrom(tensor_pb2.TensorProto(
                dtype=2, tensor_content=struct.pack(f"<{3 * k}d", *vals),
                tensor_shape=tensor_shape_pb2.TensorShapeProto(
                    dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=k),
                         tensor_shape_pb2.TensorShapeProto.Dim(size=3)])))
            if i == 4:
                val.metadata.CopyFrom(md("histograms"))
        return ev

    written = 0
    with open(path, "ab", buffering=0) as f:
        print("START", flush=True)
        pending = b""

        def put(data):
            global written
            f.write(data)
            written += len(data)

        for i in range(n):
            rec = frame(event(i))
            if i in handshakes:
                put(pending)
                pending = b""
                cut = rng.choice([1, 11, 12, 13, len(rec) // 2, len(rec) - 4, len(rec) - 1])
                put(rec[:cut])
                print("PARTIAL", written - cut, flush=True)
                sys.stdin.readline()  # the reader has looked; finish the record
                put(rec[cut:])
                continue
            pending += rec
            while pending and rng.random() < 0.6:  # random-sized pieces, cut anywhere
                piece = rng.randrange(1, len(pending) + 1)
                put(pending[:piece])
                pending = pending[piece:]
                if rng.random() < 0.2:
                    time.sleep(rng.random() / 1000)
        put(pending)
    print("DONE", n, written, flush=True)
''')


def _lines(proc, q):
    for line in proc.stdout:
        q.put(line.split())
    q.put(["EOF"])


class Tail:
    """What a sync does each time: read from the checkpoint, commit the last batch's state."""

    def __init__(self, path, seed):
        self.path = path
        self.offset = 0
        self.tag_plugins: dict = {}
        self.batches = []
        self.rng = random.Random(seed)
        self.reads = 0

    def read(self):
        reader = EventFileReader(self.path, self.offset, self.tag_plugins)
        got = list(reader.batches(max_points=self.rng.choice([1, 3, 50, 20_000])))
        st = reader.status
        assert st.corrupt_offset is None and st.bad_data_crc == 0, (self.path, st)
        if got:
            assert got[0].start_offset == self.offset
            self.offset, self.tag_plugins = got[-1].end_offset, got[-1].tag_plugins
        assert st.offset == self.offset
        self.batches += got
        self.reads += 1
        return st


@pytest.mark.parametrize("seed", [1, 2])
def test_concurrent_append_reads_everything_once(tmp_path, read_path, seed):
    path = tmp_path / "events.out.tfevents.1700000000.appender"
    n = 300
    rng = random.Random(seed)
    handshakes = sorted(rng.sample(range(1, n), 8))
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), str(seed), str(n), ",".join(map(str, handshakes))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    q: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc, q), daemon=True).start()
    tail = Tail(path, seed)
    partials_seen = 0
    try:
        assert q.get(timeout=60) == ["START"]
        while True:
            tail.read()
            try:
                msg = q.get(timeout=0.001)  # yield the CPU to the writer between reads
            except queue.Empty:
                continue
            if msg[0] == "PARTIAL":
                start = int(msg[1])
                st = tail.read()
                assert st.offset == start, "every whole record before the partial one was read"
                assert st.pending_bytes > 0, "a partial record is 'not yet'"
                # and again: still not yet, nothing read twice
                before = len(tail.batches)
                st = tail.read()
                assert (st.offset, st.pending_bytes > 0) == (start, True)
                assert all(b.points == 0 for b in tail.batches[before:])
                partials_seen += 1
                proc.stdin.write("go\n")
                proc.stdin.flush()
            elif msg[0] == "DONE":
                total = int(msg[2])
                break
            else:
                pytest.fail(f"writer said {msg}")
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    st = tail.read()
    assert (st.offset, st.pending_bytes) == (total, 0)
    assert partials_seen == len(handshakes)
    got = points_of_batches(tail.batches)
    want = oracle_points(path)
    for kind in KINDS:
        assert got[kind] == want[kind], f"{kind}: union of {tail.reads} reads != one full read"
    assert len(got["scalar"]) == len([i for i in range(1, n) if i % 5 in (0, 1, 2)])
    assert len(got["text"]) == len([i for i in range(1, n) if i % 5 == 3])
    assert len(got["histogram"]) == len([i for i in range(1, n) if i % 5 == 4])


REAL_WRITER = textwrap.dedent('''
    import sys
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.scalar import summary_v2 as scalar_v2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    w = EventFileWriter(sys.argv[1], max_queue_size=1000, flush_secs=3600)
    print(w._file_name, flush=True)  # the writer's own choice of name
    for step in range(int(sys.argv[2])):
        w.add_event(event_pb2.Event(step=step, wall_time=1.7e9 + step,
                                    summary=scalar_v2.scalar_pb("loss", 1.0 / (step + 1))))
        if step % 7 == 0:
            w.flush()
    w.close()
    print("DONE", flush=True)
''')


def test_tail_tensorboards_own_writer(tmp_path):
    """TensorBoard's EventFileWriter in another process, flushing now and then, while we tail.
    (Default read path only: importing the writer costs seconds, the other tests cover both.)"""
    script = tmp_path / "w.py"
    script.write_text(REAL_WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run"), "400"],
                            stdout=subprocess.PIPE, text=True)
    q: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc, q), daemon=True).start()
    path = q.get(timeout=60)[0]
    tail = Tail(path, 0)
    while True:
        tail.read()
        try:
            if q.get(timeout=0.001)[0] in ("DONE", "EOF"):
                break
        except queue.Empty:
            pass
    assert proc.wait(timeout=60) == 0
    tail.read()
    got = points_of_batches(tail.batches)
    assert got["scalar"] == oracle_points(path)["scalar"]
    assert [s for _, s, _, _ in got["scalar"]] == list(range(400))
