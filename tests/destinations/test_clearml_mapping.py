"""ClearML's pure mapping (``tracelet.destinations.clearml.mapping``), without the SDK."""
from __future__ import annotations

import math
import subprocess
import sys

import pyarrow as pa
import pytest
from tensorboard.compat.proto import summary_pb2

from tracelet.destinations.base import RunRef, SystemRows
from tracelet.destinations.clearml.mapping import (
    _SESSION_RE, FLOAT32_MAX, STATUS, _Copies, _finite_or_marker, _media_id, _media_specs,
    _names, _row_id, _scalar_rows, _system_rows, clearml_key, clearml_name, run_hash,
    series_name, server_error_class, session_id, split_tag, system_series)
from tracelet.errors import DestinationError, PermanentDestinationError, TransientDestinationError
from tracelet.reader import EventFileReader
from tracelet.testing.events import T0, event_record, header_record
from tracelet.testing.sources import SourceTruth, write_simple_run


def test_mapping_imports_no_vendor_sdk():
    code = ("import sys, tracelet.destinations.clearml.mapping as m; "
            "print(sorted({k.split('.')[0] for k in sys.modules} & "
            "{'clearml', 'pyarrow', 'requests', 'urllib3', 'pandas'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout


def _run(project="p", run_path="r", run_id="rid") -> RunRef:
    from pathlib import Path

    return RunRef(run_id=run_id, run_path=run_path, project=project, source_dir=Path("."))


def test_names_padded_per_part():
    assert clearml_name("r") == "r__" and clearml_name("ab/x") == "ab/x"
    assert clearml_name("ab/x", nested=True) == "ab_/x__"
    assert clearml_name("") == "___"
    assert _names(_run("a/bc", "r")) == ("a__/bc_", "r__")
    assert _names(_run("proj", "torch/resnet")) == ("proj", "torch/resnet")


@pytest.mark.parametrize("tag", ["X/X", "X", "loss #2", "a/loss #2", "a/v (nan)", "v (+inf)",
                                 "a/v (-inf)", "img [1]", "a/img [12]"])
def test_series_this_destination_makes_are_never_a_tags_own(tag):
    """Any tag whose plain split would be a series the destination itself makes (a repeat, a
    non-finite marker, a tensor item) or meet another tag is renamed with its hash suffix."""
    title, series = split_tag(tag)
    made = {series_name(s, c, m) for s in ("X", "loss", "v", "img") for c in (1, 2, 3)
            for m in (None, "nan", "+inf", "-inf")} | {"img [1]", "img [12]"}
    if tag == "X":
        assert (title, series) == ("X", "X")
        return
    assert series not in made and series.startswith(tag.rpartition("/")[2] + "-"), series
    assert len(series.rpartition("-")[2]) == 8
    assert clearml_key(tag) != clearml_key("X")


def test_series_name_order():
    assert series_name("x") == "x" and series_name("x", 2) == "x #2"
    assert series_name("x", 1, "nan") == "x (nan)" and series_name("x", 3, "-inf") == "x (-inf) #3"


@pytest.mark.parametrize("value, expected", [
    (1.5, (1.5, None)), (-FLOAT32_MAX, (-FLOAT32_MAX, None)), (0.0, (0.0, None)),
    (float("nan"), (0.0, "nan")), (float("inf"), (0.0, "+inf")), (float("-inf"), (0.0, "-inf")),
    (1e39, (0.0, "+inf")), (-1e39, (0.0, "-inf")),  # beyond the server's float32 field
])
def test_finite_or_marker(value, expected):
    assert _finite_or_marker(value) == expected


def test_system_series_every_known_name_and_the_rest():
    gib, mib = 2.0 ** 30, 2.0 ** 20
    known = {
        "cpu/utilization_percent": (":monitor:machine", "cpu_usage", 1.0),
        "memory/used_bytes": (":monitor:machine", "memory_used_gb", 1 / gib),
        "disk/read_bytes": (":monitor:machine", "io_read_mb_total", 1 / mib),
        "disk/write_bytes": (":monitor:machine", "io_write_mb_total", 1 / mib),
        "network/recv_bytes": (":monitor:machine", "network_rx_mb_total", 1 / mib),
        "network/sent_bytes": (":monitor:machine", "network_tx_mb_total", 1 / mib),
        "gpu/3/utilization_percent": (":monitor:gpu", "gpu_3_utilization", 1.0),
        "gpu/3/memory_used_bytes": (":monitor:gpu", "gpu_3_mem_used_gb", 1 / gib),
        "gpu/3/memory_total_bytes": (":monitor:gpu", "gpu_3_mem_total_gb", 1 / gib),
        "gpu/12/temperature_c": (":monitor:gpu", "gpu_12_temperature", 1.0),
        "gpu/0/power_watts": (":monitor:gpu", "gpu_0_power_draw", 1.0),
        "gpu/0/fan_percent": (":monitor:gpu", "gpu_0_fan_percent", 1.0),
        "process/rss bytes": (":monitor:machine", "process_rss_bytes", 1.0),
        "/": (":monitor:machine", "unnamed", 1.0),
    }
    for name, want in known.items():
        assert system_series(name) == want, name


def test_session_ids_sort_in_import_order_and_match_the_listing_rule():
    rhex = run_hash(_run())
    assert len(rhex) == 20 and int(rhex, 16) >= 0
    assert run_hash(_run(run_id="other")) != rhex and run_hash(_run(project="q")) != rhex
    ids = [session_id(rhex, n) for n in (1, 2, 15, 16, 255, 4096, 2**40)]
    assert ids == sorted(ids)
    for n, sid in zip((1, 2, 15, 16, 255, 4096, 2**40), ids):
        m = _SESSION_RE.match(sid)
        assert m and m.group(1) == rhex and int(m.group(2), 16) == n
        assert len(sid) == len("offline-") + 32


def test_status_map():
    assert STATUS == {"running": "in_progress", "finished": "completed", "failed": "failed",
                      "killed": "stopped"}


def _batches(path):
    return list(EventFileReader(path).batches())


def test_scalar_rows_from_a_real_event_file(tmp_path):
    """Rows from what the reader decodes: a repeated step gets ``#2``, a non-finite value its
    marker at value 0, wall time in ms; re-computed from the same state, the same rows."""
    truth = SourceTruth()
    f = write_simple_run(tmp_path / "r", "r", truth, ["a/b", "loss"], [0, 1, 2])
    with open(f, "ab") as fh:  # a restart writing steps 1..2 again, then NaN and +Inf
        for step, value in ((1, 5.0), (2, float("nan")), (7, float("inf"))):
            fh.write(event_record(step, T0 + 100 + step,
                            [summary_pb2.Summary.Value(tag="a/b", simple_value=value)]))
    (batch,) = _batches(f)
    state: dict = {}
    rows = _scalar_rows(_Copies(state), batch)
    assert len(rows) == len(batch.scalars) == 9
    by_series = {}
    for title, series, it, value, ts in rows:
        by_series.setdefault((title, series), []).append((it, value, ts))
    assert [it for it, _, _ in by_series[("a", "b")]] == [0, 1, 2]
    assert by_series[("a", "b #2")] == [(1, 5.0, int((T0 + 101) * 1000))]
    assert by_series[("a", "b (nan) #2")] == [(2, 0.0, int((T0 + 102) * 1000))]
    assert by_series[("a", "b (+inf)")] == [(7, 0.0, int((T0 + 107) * 1000))]
    assert [it for it, _, _ in by_series[("loss", "loss")]] == [0, 1, 2]
    # nothing committed: the same batch maps to the same rows (a re-send lands on the same ids)
    assert _scalar_rows(_Copies(state), batch) == rows
    assert {_row_id(r) for r in rows} == {("training_stats_scalar", r[2], r[0], r[1])
                                          for r in rows}
    assert len({_row_id(r) for r in rows}) == len(rows)  # no two rows share a server id


def test_media_specs_take_copy_numbers_and_skip_refused_images(tmp_path):
    from tracelet.testing.events import image_bytes

    f = tmp_path / "events.out.tfevents.1.h"
    recs = [header_record()]
    for i, step in enumerate((0, 0, 1)):  # step 0 twice
        img = summary_pb2.Summary.Image(height=4, width=4, colorspace=3,
                                        encoded_image_string=image_bytes(4, 4, i))
        recs.append(event_record(step, T0 + i, [summary_pb2.Summary.Value(tag="samples", image=img)]))
    f.write_bytes(b"".join(recs))
    (batch,) = _batches(f)
    assert len(batch.images) == 3
    specs = _media_specs(_Copies({}), batch)
    assert [(k, t, s, st) for k, t, s, st, _, _ in specs] == [
        ("image", "samples", "samples", 0), ("image", "samples", "samples #2", 0),
        ("image", "samples", "samples", 1)]
    # image 1 refused (quarantined): it takes no copy number, image 0 and 2 keep theirs
    kept = _media_specs(_Copies({}), batch, {1})
    assert [(s, st) for _, _, s, st, _, _ in kept] == [("samples", 0), ("samples", 1)]
    assert _media_id(specs[1]) == ("training_debug_image", 0, "samples", "samples #2")


def test_system_rows():
    names = ["cpu/utilization_percent", "memory/used_bytes", "cpu/utilization_percent",
             "gpu/0/power_watts", "gpu/0/power_watts", "x/y"]
    ts = [T0 + 12.7, T0 + 12.7, T0 + 12.2, float("nan"), T0 + 30, None]
    vals = [50.0, 3.0 * 2**30, 51.0, 200.0, float("inf"), 1.0]
    part = SystemRows.from_table("part-000001.parquet", pa.table(
        {"timestamp": pa.array(ts, pa.float64()), "name": names, "value": vals}))
    state: dict = {}
    copies = _Copies(state)
    rows = _system_rows(copies, part, T0)
    assert rows == [
        (":monitor:machine", "cpu_usage", 12, 50.0, int((T0 + 12.7) * 1000)),
        (":monitor:machine", "memory_used_gb", 12, 3.0, int((T0 + 12.7) * 1000)),
        (":monitor:machine", "cpu_usage #2", 12, 51.0, int((T0 + 12.2) * 1000)),  # same second
        (":monitor:gpu", "gpu_0_power_draw", math.floor(0 - T0), 200.0, 0),  # NaN time: 0
        (":monitor:gpu", "gpu_0_power_draw (+inf)", 30, 0.0, int((T0 + 30) * 1000)),
    ]  # the row without a time is left out
    copies.commit()
    assert _system_rows(_Copies(state), part, T0)[0][1] == "cpu_usage #3"  # step 12 seen twice
    # no start time known: iteration = the sample's own unix seconds
    assert _system_rows(_Copies({}), part, None)[0][2] == int(T0 + 12.7)


@pytest.mark.parametrize("code, subcode, expected", [
    (200, None, None), (None, None, None), (302, 0, None),
    (429, 0, TransientDestinationError), (500, 0, TransientDestinationError),
    (503, 0, TransientDestinationError),
    (401, 0, DestinationError), (403, 0, DestinationError), (404, 0, DestinationError),
    (400, 101, DestinationError), (400, 130, DestinationError),  # the task is gone
    (400, 110, DestinationError), (400, 113, DestinationError),  # its status refuses writes
    (400, 403, DestinationError), (400, 75, DestinationError),
    (400, 121, TransientDestinationError),  # someone changed the status meanwhile
    (400, 12, PermanentDestinationError), (400, 131, PermanentDestinationError),
    (400, 0, PermanentDestinationError), (400, None, PermanentDestinationError),
    (413, 0, PermanentDestinationError),
])
def test_server_error_class(code, subcode, expected):
    assert server_error_class(code, subcode) is expected
