"""A plain run's source id (tracelet.identity): from its first event file's name and first
record, bounded, stable as the file grows, never computed on the no-op path."""
from __future__ import annotations

import pytest

from tracelet.identity import FIRST_RECORD_MAX, same_source_names, source_id_for
from tracelet.reader import discover_runs, frame_record
from tracelet.testing.events import EVENT_NAME, T0, header_record
from tracelet.testing.sources import SourceTruth, write_simple_run


def _run(logdir):
    [run] = discover_runs(logdir).runs
    return run


def test_same_files_same_id_at_every_level_and_as_the_file_grows(tmp_path):
    truth = SourceTruth()
    write_simple_run(tmp_path / "sub" / "exp" / "r1", "exp/r1", truth, ["loss"], [0, 1], seed=1)
    ids = {source_id_for(_run(tmp_path / "sub"), None),
           source_id_for(_run(tmp_path / "sub" / "exp"), None),
           source_id_for(_run(tmp_path / "sub" / "exp" / "r1"), None)}
    write_simple_run(tmp_path / "sub" / "exp" / "r1", "exp/r1", truth, ["loss"], list(range(2, 500)),
                     seed=1, append=True)
    ids.add(source_id_for(_run(tmp_path / "sub"), None))
    assert len(ids) == 1 and len(ids.pop()) == 32


def test_another_first_record_or_file_name_is_another_source(tmp_path):
    ids = set()
    for i, (name, wall) in enumerate([(EVENT_NAME, T0), (EVENT_NAME, T0 + 0.000001),
                                      ("events.out.tfevents.1700000000.host.2.0", T0)]):
        d = tmp_path / str(i)
        d.mkdir()
        (d / name).write_bytes(header_record(wall))
        ids.add(source_id_for(_run(d), None))
    assert len(ids) == 3 and "" not in ids


@pytest.mark.parametrize("content", [
    b"",  # just created
    b"\x10\x00\x00",  # not even a whole length field
    header_record()[:-3],  # the first record cut short (its data CRC)
    header_record()[:-10],  # ... in its data
    header_record()[:-5] + b"\xff" + header_record()[-4:],  # damaged: the data CRC fails
    b"\xff" + header_record()[1:],  # damaged length: its CRC fails
    frame_record(b""),  # an empty first record
    frame_record(b"x" * (FIRST_RECORD_MAX + 1))[:FIRST_RECORD_MAX],  # a big one, cut short
])
def test_no_whole_first_record_no_id(tmp_path, content):
    (tmp_path / EVENT_NAME).write_bytes(content)
    assert source_id_for(_run(tmp_path), None) == ""


def test_a_huge_first_record_is_read_only_up_to_the_bound(tmp_path, monkeypatch):
    import tracelet.identity as identity

    big = frame_record(b"x" * (FIRST_RECORD_MAX * 4))
    (tmp_path / EVENT_NAME).write_bytes(big)
    read = []
    real_open = identity.open_event_file

    def counting_open(path):
        f = real_open(path)
        real_read = f.read
        f.read = lambda n=-1: read.append(n) or real_read(n)  # type: ignore[method-assign]
        return f

    monkeypatch.setattr(identity, "open_event_file", counting_open)
    sid = source_id_for(_run(tmp_path), None)
    assert sid and read and all(0 < n <= FIRST_RECORD_MAX + 16 for n in read), read
    # a longer record with the same first FIRST_RECORD_MAX bytes: the same source (bounded)
    (tmp_path / EVENT_NAME).write_bytes(frame_record(b"x" * (FIRST_RECORD_MAX * 8)))
    assert source_id_for(_run(tmp_path), None) == sid


def test_a_fifo_put_in_place_of_the_first_event_file_is_no_id_and_never_blocks(tmp_path):
    import os

    (tmp_path / EVENT_NAME).write_bytes(header_record())
    run = _run(tmp_path)
    os.remove(tmp_path / EVENT_NAME)
    os.mkfifo(tmp_path / EVENT_NAME)  # swapped in after discovery: no writer will ever come
    assert source_id_for(run, None) == ""


def test_manifest_runs_have_none(tmp_path):
    truth = SourceTruth()
    write_simple_run(tmp_path, "r", truth, ["loss"], [0])
    assert source_id_for(_run(tmp_path), {"run_id": "x"}) == ""


def test_names_of_one_folder_seen_from_two_levels():
    assert same_source_names("exp/r1", "r1") and same_source_names("r1", "sub/exp/r1")
    assert same_source_names("r1", "r1")
    assert not same_source_names("exp/xr1", "r1") and not same_source_names("a/r1", "b/r1")
    assert not same_source_names("", "r1") and not same_source_names("r1", "r1x")


def test_the_no_op_path_never_computes_it(tmp_path, monkeypatch):
    """Computed for a run that changed (once per sync of it), never for an unchanged one."""
    import tracelet
    import tracelet.engine.protocol as protocol

    truth = SourceTruth()
    for r in range(3):
        write_simple_run(tmp_path / "logs" / f"run{r}", f"run{r}", truth, ["loss"], [0, 1], seed=r)
    calls = []
    real = protocol.source_id_for
    monkeypatch.setattr(protocol, "source_id_for", lambda *a: calls.append(a) or real(*a))
    cfg = {"memory_store": str(tmp_path / "journal")}
    assert tracelet.sync(tmp_path / "logs", to="memory", dest_config=cfg).exit_code == 0
    assert len(calls) == 3
    calls.clear()
    again = tracelet.sync(tmp_path / "logs", to="memory", dest_config=cfg)
    assert {r.destinations["memory"].state for r in again.runs} == {"unchanged"}
    assert calls == []
