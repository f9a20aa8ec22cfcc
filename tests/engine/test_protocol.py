"""The per-run protocol, driven against the memory destination: pending_end, fan-out lag,
locks, shards, retries. Every test checks the end state point by point (exactly once)."""
from __future__ import annotations

import json
import os
from collections import Counter
from contextlib import contextmanager

import pytest

from tracelet._fs import exclusive_lock
from tracelet.checkpoint import CheckpointStore
from tracelet.destinations import register, target_key, unregister
from tracelet.destinations.memory import MemoryDestination, MemoryStore, store_named
from tracelet.destinations.memory.factory import MemoryFactory
from tracelet.engine import EXIT_LOCKED, SyncOptions, run_sync, state_dir_for
from tracelet.testing.harness import canon
from tracelet.testing.sources import build_kill_logdir, write_simple_run


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setattr("tracelet.retry.RETRY_BASE_DELAY_S", 0.001)
    monkeypatch.setattr("tracelet.retry.RETRY_MAX_DELAY_S", 0.001)


def sync(logdir, dests=("memory",), **kw):
    config = kw.pop("dest_config", {})
    return run_sync([str(logdir)], SyncOptions(destinations=list(dests), project="p",
                                               dest_config=config, progress=False, **kw))


def stored(store: MemoryStore) -> dict[tuple[str, str], Counter]:
    out: dict[tuple[str, str], Counter] = {}
    for run in store.runs.values():
        for tag, pts in run.scalars().items():
            out.setdefault((run.run_path, tag), Counter()).update((s, canon(v)) for s, v in pts)
    return out


def truth_of(truth) -> dict[tuple[str, str], Counter]:
    return {k: Counter((s, canon(v)) for s, v, _ in pts) for k, pts in truth.scalars.items()}


def checkpoint(logdir, run: str, name="memory", config=None):
    store = CheckpointStore(state_dir_for(logdir, None))
    return store.load(name, target_key(name, config or {}), run)


def test_exactly_once_through_repeated_and_growing_syncs(tmp_path):
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=3, steps=300)
    assert sync(logdir, batch_points=70).exit_code == 0
    write_simple_run(logdir / "run1", "run1", truth, ["loss", "acc"], list(range(300, 420)),
                     seed=7, append=True)
    report = sync(logdir, batch_points=70)
    assert report.exit_code == 0, report.to_dict()
    states = {r.run: r.destinations["memory"].state for r in report.runs}
    assert states == {"run0": "unchanged", "run1": "synced", "run2": "unchanged"}
    assert stored(store_named("mem:default")) == truth_of(truth)


def test_pending_end_is_committed_before_the_first_send_and_resent_with_dedupe(tmp_path, monkeypatch):
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=1, steps=300)
    seen = []
    real_send = MemoryDestination.send

    def spy(self, handle, batch, *, dedupe):
        ck = checkpoint(logdir, "run0")
        fs = ck.files[next(iter(ck.files))]
        seen.append((batch.start_offset, fs.offset, fs.pending_end, dedupe))
        return real_send(self, handle, batch, dedupe=dedupe)

    monkeypatch.setattr(MemoryDestination, "send", spy)
    # the 3rd send fails for good after half of its points landed: what a crash between a
    # vendor's write and our commit leaves behind
    report = sync(logdir, batch_points=100, dest_config={"memory_fail_sends": "3!"})
    assert report.exit_code == 1
    size = (logdir / "run0" / "events.out.tfevents.1700000000.host.1.0").stat().st_size
    # every send happened with pending_end already durable at the file size (the signpost)
    assert seen and all(pending == size for _, _, pending, _ in seen), seen
    assert [d for *_, d in seen] == [False, False, False]
    ck = checkpoint(logdir, "run0")
    fs = ck.files[next(iter(ck.files))]
    assert fs.offset == seen[2][0] and fs.pending_end == size
    seen.clear()
    assert sync(logdir, batch_points=100).exit_code == 0
    # the range that may have landed is re-sent with dedupe, and only that range
    assert [(start, d) for start, _, _, d in seen][:1] == [(fs.offset, True)]
    assert all(not d for start, _, _, d in seen if start >= size)
    assert stored(store_named("mem:default")) == truth_of(truth)
    assert checkpoint(logdir, "run0").files[next(iter(ck.files))].pending_end is None


class MemoryB(MemoryDestination):
    """A second, independent memory destination (its own store) for fan-out tests."""

    name = "memory-b"

    def __init__(self, config=None):
        config = dict(config or {})
        config["memory_store"] = config.get("memory_b_store") or "mem:b"
        config["memory_down"] = config.get("memory_b_down")
        super().__init__(config)


class MemoryBFactory(MemoryFactory):
    name = "memory-b"
    client = f"{__name__}:MemoryB"

    def target(self, config):
        return "memory-b:" + (config.get("memory_b_store") or "mem:b")


@pytest.fixture
def two_memories():
    register(MemoryBFactory())  # what a plugin's entry point does, at run time
    yield
    unregister("memory-b")


def test_a_lagging_destination_catches_up_from_its_own_offset_reading_each_range_once(
        tmp_path, monkeypatch, two_memories):
    from tracelet.reader import events

    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=2, steps=200)
    r1 = sync(logdir, ("memory", "memory-b"), dest_config={"memory_b_down": "1"},
              batch_points=60)
    assert r1.exit_code == 1
    assert {r.destinations["memory-b"].state for r in r1.runs} == {"failed"}
    assert stored(store_named("mem:default")) == truth_of(truth)
    assert stored(store_named("mem:b")) == {}
    # training goes on; B is back
    write_simple_run(logdir / "run0", "run0", truth, ["loss", "acc"], list(range(200, 260)),
                     seed=5, append=True)
    reads = []
    real_init = events.EventFileReader.__init__

    def spy(self, path, offset=0, tag_plugins=None, **kw):
        reads.append((str(path), offset))
        real_init(self, path, offset, tag_plugins, **kw)

    monkeypatch.setattr(events.EventFileReader, "__init__", spy)
    r2 = sync(logdir, ("memory", "memory-b"), batch_points=60)
    assert r2.exit_code == 0, r2.to_dict()
    assert stored(store_named("mem:default")) == truth_of(truth)
    assert stored(store_named("mem:b")) == truth_of(truth)
    # run0: B from 0, A joins at its old end: two segments, each read once
    run0 = [o for p, o in reads if "/run0/" in p]
    assert run0[0] == 0 and len(run0) == len(set(run0)) == 2, reads
    points_a = {r.run: r.destinations["memory"].points for r in r2.runs}
    assert points_a == {"run0": 120, "run1": 0}


@contextmanager
def held_by_another_process(path):
    """POSIX record locks do not exclude their own process: hold it from a forked child."""
    r, w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: take the lock, say so, wait to be told to go
        try:
            with exclusive_lock(path, "test"):
                os.write(w, b"x")
                os.read(done_r, 1)
        finally:
            os._exit(0)
    try:
        assert os.read(r, 1) == b"x"
        yield
    finally:
        os.write(done_w, b"x")
        os.waitpid(pid, 0)
        for fd in (r, w, done_r, done_w):
            os.close(fd)


def test_a_locked_run_is_skipped_with_exit_75_and_the_others_sync(tmp_path):
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=3, steps=50)
    store = CheckpointStore(state_dir_for(logdir, None))
    with held_by_another_process(store.lock_path("run1")):
        report = sync(logdir)
    assert report.exit_code == EXIT_LOCKED
    assert [r.run for r in report.runs if r.locked] == ["run1"]
    got = stored(store_named("mem:default"))
    assert {run for run, _ in got} == {"run0", "run2"}
    assert sync(logdir).exit_code == 0
    assert stored(store_named("mem:default")) == truth_of(truth)


def test_shards_partition_the_runs_stably(tmp_path):
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=12, steps=5)
    owners: dict[str, list[int]] = {}
    for k in range(4):
        report = sync(logdir, shard=(k, 4))
        assert report.exit_code == 0
        for r in report.runs:
            owners.setdefault(r.run, []).append(k)
    assert sorted(owners) == sorted({run for run, _ in truth.scalars})
    assert all(len(v) == 1 for v in owners.values()), owners
    assert len(set(k for v in owners.values() for k in v)) > 1  # not all in one shard
    again = {r.run for r in sync(logdir, shard=(0, 4)).runs}
    assert again == {run for run, v in owners.items() if v == [0]}
    assert stored(store_named("mem:default")) == truth_of(truth)


def test_a_transient_failure_is_retried_and_lands_once(tmp_path, monkeypatch):
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=1, steps=200)
    report = sync(logdir, batch_points=100, dest_config={"memory_fail_sends": "2"})
    assert report.exit_code == 0, report.to_dict()
    assert stored(store_named("mem:default")) == truth_of(truth)


def test_journaled_store_survives_a_new_process_view(tmp_path):
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=2, steps=40)
    folder = tmp_path / "journal"
    assert sync(logdir, dest_config={"memory_store": str(folder)}).exit_code == 0
    assert stored(MemoryStore(folder)) == truth_of(truth)
    lines = [json.loads(x) for p in folder.glob("*.jsonl") for x in p.read_text().splitlines()]
    assert {e["op"] for e in lines} >= {"create", "points"}


def test_kinds_a_destination_lacks_are_filtered_out_and_counted_unsupported(tmp_path):
    """The engine sends a destination only the kinds its Capabilities declare (the memory
    destination refuses any other kind), and reports the rest as unsupported, per kind."""
    from tracelet.testing.sources import build_conformance_logdir

    logdir = tmp_path / "logs"
    truth = build_conformance_logdir(logdir, "p")
    report = sync(logdir, dest_config={"memory_kinds": "scalar"})
    assert report.exit_code == 0, report.to_dict()
    for r in report.runs:
        d = r.destinations["memory"]
        expected = {k: n for k, n in (("histogram", truth.histograms.get(r.run, 0)),
                                      ("image", truth.images.get(r.run, 0)),
                                      ("text", truth.texts.get(r.run, 0)),
                                      ("audio", truth.audio.get(r.run, 0))) if n}
        assert {k: v for k, v in d.unsupported.items() if k in expected} == expected, (r.run, d)
    store = store_named("mem:default")
    assert all(p[0] == "scalar" for run in store.runs.values() for p in run.points)
    assert stored(store) == truth_of(truth)


def test_syncs_of_one_run_to_different_targets_do_not_block_each_other(tmp_path, two_memories):
    """The lock is per (run, destination target): a sync holding run0's lock for one target
    does not stop another sync of run0 to another target; the same target is still excluded."""
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=2, steps=30)
    store = CheckpointStore(state_dir_for(logdir, None))
    held = store.lock_path("run0", target_key("memory", {}))
    held.parent.mkdir(parents=True, exist_ok=True)
    with held_by_another_process(held):
        report = sync(logdir, ("memory", "memory-b"))
    assert report.exit_code == EXIT_LOCKED
    states = {(r.run, n): d.state for r in report.runs for n, d in r.destinations.items()}
    assert states == {("run0", "memory"): "locked", ("run0", "memory-b"): "synced",
                      ("run1", "memory"): "synced", ("run1", "memory-b"): "synced"}
    assert stored(store_named("mem:b")) == truth_of(truth)
    assert sync(logdir, ("memory", "memory-b")).exit_code == 0
    assert stored(store_named("mem:default")) == truth_of(truth)


def test_a_run_lost_on_the_destination_is_resent_in_full_and_reported_as_drift(tmp_path):
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=2, steps=100)
    assert sync(logdir).exit_code == 0
    store = store_named("mem:default")
    (lost,) = [r.run_uid for r in store.runs.values() if r.run_path == "run0"]
    store.drop(lost)  # a user deleted the run in the tracker
    write_simple_run(logdir / "run0", "run0", truth, ["loss", "acc"], list(range(100, 130)),
                     seed=3, append=True)
    report = sync(logdir)
    assert report.exit_code == 0, report.to_dict()
    d = {r.run: r.destinations["memory"] for r in report.runs}
    assert d["run0"].drift and "run missing" in d["run0"].drift
    assert d["run0"].points == 2 * 130  # all of it again, not only the 60 new points
    assert d["run1"].state == "unchanged" and d["run1"].drift is None
    assert stored(store) == truth_of(truth)


def test_reset_and_resync_send_what_is_missing_and_nothing_twice(tmp_path):
    from tracelet.engine import reset_runs

    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=2, steps=50)
    assert sync(logdir).exit_code == 0
    store = store_named("mem:default")
    run0 = next(r for r in store.runs.values() if r.run_path == "run0")
    run0.lose(range(40))  # the destination lost part of run0 (no drift: the run is there)
    assert sync(logdir).runs[0].destinations["memory"].state == "unchanged"  # stat-only: unseen
    done = reset_runs([str(logdir)], ["run0"], SyncOptions(destinations=["memory"]))
    assert done.forgotten == [(str(logdir), "run0", "memory")] and done.exit_code == 0
    assert sync(logdir).exit_code == 0
    assert stored(store) == truth_of(truth)  # the 40 missing points are back, nothing doubled
    # --resync: the same for one pass, without touching the state first
    run1 = next(r for r in store.runs.values() if r.run_path == "run1")
    run1.lose(range(len(run1.points) - 25, len(run1.points)))
    report = sync(logdir, resync=True)
    assert report.exit_code == 0
    assert stored(store) == truth_of(truth)
    assert reset_runs([str(logdir)], ["nope"], SyncOptions(destinations=["memory"])).exit_code == 2
