"""W&B: the run's start time and Duration are the training's (#11: "start/end times from the
source").

Every fragment (one per sync) ends with the run's start time = ``RunRef.started_at`` (the
manifest), else the first event's wall time: a Run record update, read back here from the
``.wandb`` files with W&B's own protobufs (harness_wandb). Each fragment's FIRST Run record
keeps its sync time: ``wandb sync`` uploads the fragments of one run in that order, so a resumed
sync, a reset and the exactly-once read back (which models that order) are checked too.

W&B's Duration is the summary's ``_wandb.runtime``, which wandb-core writes from its own timer
(destinations/wandb/runtime.py): the summary W&B ends with, in ``wandb sync``'s upload order
(harness_wandb.upload), holds source end (else its newest point delivered) - source start,
whatever the sync took, and every point once.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.destinations.harness_wandb import WandbOfflineHarness, upload
from tracelet.testing.conformance import assert_exactly_once, project_fn, sync_once
from tracelet.testing.sources import T0, SourceTruth, write_recorded_run, write_simple_run

PROJECT = "p"  # write_recorded_run's manifest names it
TAGS = ["Loss/Train/CrossEntropy", "Metrics/Accuracy/Validation"]  # write_recorded_run's


@pytest.fixture
def wb(tmp_path, monkeypatch):
    h = WandbOfflineHarness()
    h.config = h.setup(tmp_path, monkeypatch)
    return h


def _fragments(wb, run_path: str) -> list:
    """The run's fragments in `wandb sync` upload order (the first Run record's start)."""
    return sorted((f for f in wb.fragments() if (f.config.get("tracelet") or {}).get(
        "run_path") == run_path), key=lambda f: f.start)


def test_run_start_is_the_trainings_in_every_fragment(wb, tmp_path):
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_recorded_run(logdir / "rec", "rec", truth, PROJECT)
    manifest = logdir / "rec" / "tracelet.json"  # started a day before its first event
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "started_at": T0 - 86400.25}))
    write_simple_run(logdir / "plain", "plain", truth, ["loss"], list(range(10)), seed=3)
    # plain: the first event's wall time (its file_version record's, T0)
    start = {"rec": T0 - 86400.25, "plain": T0}
    # each sync writes the points' fragment and one of the summary (the Duration tests below)
    per_sync = {"rec": 2, "plain": 2}
    synced_at = []
    for n in (1, 2, 3):
        if n == 2:  # a resumed sync appends points (later wall times) to both runs
            write_simple_run(logdir / "rec", "rec", truth, TAGS, [25, 26], seed=9, append=True)
            write_simple_run(logdir / "plain", "plain", truth, ["loss"], [10, 11], seed=9,
                             append=True)
        if n == 3:  # a lost state dir: the run is found and sent again with dedupe
            shutil.rmtree(logdir / ".tracelet")
        synced_at.append(time.time())
        report = sync_once(logdir, wb, PROJECT)
        assert report.exit_code == 0, report.to_dict()
        for run, want in start.items():
            frags = _fragments(wb, run)
            assert len(frags) == n * per_sync[run], (run, [f.path for f in frags])
            for f in frags:
                assert f.run_start == pytest.approx(want, abs=1e-3), (run, f.path)
            # the first Run record of each fragment: the time of its sync (the upload order)
            assert [f.start[0] >= int(synced_at[i // per_sync[run]])
                    for i, f in enumerate(frags)] == [True] * len(frags)
        assert_exactly_once(wb, truth, project_fn(PROJECT))


# -- Duration ------------------------------------------------------------------------------------
def _run(wb, run_path: str) -> tuple[list, dict]:
    """The run's fragments in upload order, and what W&B holds after uploading them."""
    frags = _fragments(wb, run_path)
    return frags, upload(frags)


def _manifest(path, **fields):
    m = path / "tracelet.json"
    m.write_text(json.dumps({**json.loads(m.read_text()), **fields}))


def _age(folder, seconds: float = 7200) -> None:
    t = time.time() - seconds
    for p in folder.rglob("events.out.tfevents.*"):
        os.utime(p, (t, t))


def test_a_recorded_runs_duration_is_its_manifests_end_minus_start(wb, tmp_path):
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_recorded_run(logdir / "rec", "rec", truth, PROJECT)
    _manifest(logdir / "rec", started_at=T0 - 0.5, ended_at=T0 + 3725.25)
    report = sync_once(logdir, wb, PROJECT)
    assert report.exit_code == 0, report.to_dict()
    frags, server = _run(wb, "rec")
    # the points' fragment, then one holding the summary only: W&B's upload order
    assert len(frags) == 2 and frags[0].rows and not frags[1].rows
    assert frags[1].summary["_wandb/runtime"] == 3725  # whole seconds, as W&B counts them
    assert server["summary"]["_wandb/runtime"] == 3725 and server["summary"]["_runtime"] == 3725
    assert server["state"] == "finished" and frags[1].exit_code == 0
    assert all(f.run_start == pytest.approx(T0 - 0.5, abs=1e-3) for f in frags)
    # the summary fragment repeats the scalars' last values and the environment record
    assert server["summary"]["Loss/Train/CrossEntropy"] == frags[1].summary[
        "Loss/Train/CrossEntropy"]
    assert frags[1].environment.get("startedAt") == frags[0].environment.get("startedAt")
    assert_exactly_once(wb, truth, project_fn(PROJECT))
    # a later sync of the ended run (an artifact added): its points' fragment ends with W&B's
    # own count again, so the summary fragment follows it again
    (logdir / "rec" / "artifacts" / "late.txt").write_text("late\n")
    assert sync_once(logdir, wb, PROJECT).exit_code == 0
    frags, server = _run(wb, "rec")
    assert len(frags) == 4 and "_wandb/runtime" in frags[2].summary
    assert server["summary"]["_wandb/runtime"] == 3725
    assert "artifacts/late.txt" in server["files"]
    assert sync_once(logdir, wb, PROJECT).runs[0].destinations["wandb"].state == "unchanged"
    assert len(_run(wb, "rec")[0]) == 4


def test_a_running_run_shows_the_span_delivered_then_its_end(wb, tmp_path):
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_recorded_run(logdir / "rec", "rec", truth, PROJECT)  # events at T0 + 7000 + k/2
    _manifest(logdir / "rec", status="running", ended_at=None)
    assert sync_once(logdir, wb, PROJECT).exit_code == 0
    frags, server = _run(wb, "rec")
    assert len(frags) == 2 and not frags[1].rows and frags[1].preempting
    assert server["state"] == "preempted"  # still running: the next sync resumes it
    assert server["summary"]["_wandb/runtime"] == 7012  # the newest point delivered
    write_simple_run(logdir / "rec", "rec", truth, TAGS, [25, 26], seed=9, append=True)
    assert sync_once(logdir, wb, PROJECT).exit_code == 0
    frags, server = _run(wb, "rec")
    assert len(frags) == 4 and server["state"] == "preempted"
    assert server["summary"]["_wandb/runtime"] == 9000
    _manifest(logdir / "rec", status="finished", ended_at=T0 + 9999.9)
    assert sync_once(logdir, wb, PROJECT).exit_code == 0
    frags, server = _run(wb, "rec")
    assert len(frags) == 6 and server["state"] == "finished"
    assert server["summary"]["_wandb/runtime"] == 9999
    assert_exactly_once(wb, truth, project_fn(PROJECT))


def test_a_plain_run_finished_idle_ends_with_its_events_span(wb, tmp_path):
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_simple_run(logdir / "plain", "plain", truth, ["loss"], list(range(40)), seed=2)
    _age(logdir / "plain")  # walls T0 (file_version) .. T0 + 2000 + 19.5
    report = sync_once(logdir, wb, PROJECT, finish_idle_s=3600)
    assert report.exit_code == 0, report.to_dict()
    frags, server = _run(wb, "plain")
    assert len(frags) == 2 and frags[1].rows == []
    assert server["summary"]["_wandb/runtime"] == 2019
    assert server["state"] == "finished"
    assert server["summary"]["loss"] == truth.scalars[("plain", "loss")][-1][1]  # kept
    assert all(f.run_start == pytest.approx(T0, abs=1e-3) for f in frags)
    assert sync_once(logdir, wb, PROJECT, finish_idle_s=3600).runs[0].destinations[
        "wandb"].state == "unchanged"
    assert len(_run(wb, "plain")[0]) == 2
    assert_exactly_once(wb, truth, project_fn(PROJECT))
    # it grows again (running again), then goes idle: it ends with the new span
    write_simple_run(logdir / "plain", "plain", truth, ["loss"], [40, 41], seed=3, append=True)
    assert sync_once(logdir, wb, PROJECT, finish_idle_s=3600).exit_code == 0
    frags, server = _run(wb, "plain")
    assert len(frags) == 4 and server["state"] == "preempted"
    assert server["summary"]["_wandb/runtime"] == 3000
    _age(logdir / "plain")
    assert sync_once(logdir, wb, PROJECT, finish_idle_s=3600).exit_code == 0
    frags, server = _run(wb, "plain")
    assert len(frags) == 6 and server["state"] == "finished"
    assert server["summary"]["_wandb/runtime"] == 3000
    assert_exactly_once(wb, truth, project_fn(PROJECT))


def test_kill_in_the_summary_fragment_then_resync(wb, tmp_path):
    """kill -9 while the summary fragment is open (its service may still be writing): the
    resync at once runs the run's close again; W&B ends with every point once, the run
    finished and its Duration the training's; every folder uploads (a Run record in each)."""
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_recorded_run(logdir / "rec", "rec", truth, PROJECT)  # T0 .. T0 + 3600
    env = dict(os.environ, **wb.env(), TRACELET_CRASH_AT="wandb_summary_fragment:1")
    proc = subprocess.run([sys.executable, "-m", "tracelet.cli", "sync", str(logdir), "--to",
                           "wandb", "--project", PROJECT], env=env, capture_output=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    report = sync_once(logdir, wb, PROJECT)
    assert report.exit_code == 0, report.to_dict()
    frags, server = _run(wb, "rec")
    assert not any(f.torn for f in frags), [f.torn for f in frags]
    assert server["state"] == "finished" and server["summary"]["_wandb/runtime"] == 3600
    assert_exactly_once(wb, truth, project_fn(PROJECT))
    assert sync_once(logdir, wb, PROJECT).runs[0].destinations["wandb"].state == "unchanged"


@pytest.mark.parametrize("ident,want", [
    ({}, 0),  # nothing delivered yet: the start
    ({"summary": {"a": [T0 + 5.9, 1.0], "b": [T0 + 2, 0.0]}}, 5),
    ({"summary": {"a": ["x", 1.0], "b": None, "c": [float("nan"), 1]}}, 0),
    ({"status": "finished", "ended_at": T0 + 7.5, "summary": {"a": [T0 + 99, 1]}}, 7),
    ({"status": "finished", "ended_at": "soon"}, 0),
    ({"ended_at": T0 - 50}, 0),  # an end before the start: never negative
    ({"ended_at": 1e300}, 2 ** 31 - 1),  # an absurd end: W&B's int32
])
def test_duration_from_untrusted_times(ident, want):
    from tracelet.destinations.base import RunRef
    from tracelet.destinations.wandb.runtime import duration

    ref = RunRef(run_id="r", run_path="r", project="p", source_dir=".", started_at=T0)
    assert duration(ref, ident) == want
    assert duration(RunRef(run_id="r", run_path="r", project="p", source_dir="."), {}) is None
    assert duration(RunRef(run_id="r", run_path="r", project="p", source_dir="."),
                    {"first_wall": T0, "summary": {"a": [T0 + 3, 1]}}) == 3
