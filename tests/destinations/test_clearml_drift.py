"""ClearML drift: the offline sessions that are the record of what landed go missing.

Offline, a run's sessions (``<cache>/offline/offline-<run hex>*`` folders and zips) are what
ClearML will import; ``<zip>.imported`` markers (the import helper's) say a removed session is on
the server. A session the checkpoint says was written that has neither folder, zip nor marker
is drift: the engine re-sends the whole run with dedupe into new sessions (names never reused),
and the new sessions hold each missing point exactly once. Read back with ClearML's own import
rules (harness_clearml) and by counting the raw events in the session files."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.destinations.harness_clearml import ClearmlOfflineHarness
from tracelet._fs import atomic_write_bytes
from tracelet.checkpoint import CheckpointStore
from tracelet.destinations import target_key
from tracelet.destinations.base import RunRef
from tracelet.destinations.clearml import plan_offline_import
from tracelet.engine import state_dir_for
from tracelet.testing.conformance import assert_exactly_once, project_fn, sync_once
from tracelet.testing.sources import SourceTruth, build_conformance_logdir, write_simple_run

SYNCER = Path(__file__).resolve().parents[2] / "syncer"


@pytest.fixture
def cml(tmp_path, monkeypatch):
    h = ClearmlOfflineHarness()
    h.config = h.setup(tmp_path, monkeypatch)
    return h


def remove(sessions, marker: str | None = None) -> list[str]:
    """Remove sessions (folder and zip), leaving the import helper's marker if ``marker``."""
    names = []
    for s in sessions:
        if marker is not None:
            assert s.zip_path is not None
            atomic_write_bytes(f"{s.zip_path}.imported", json.dumps({"task_id": marker}).encode())
        if s.folder is not None:
            shutil.rmtree(s.folder)
        if s.zip_path is not None:
            s.zip_path.unlink()
        names.append(s.name)
    return names


def raw_events(sessions) -> Counter:
    """Each event the session files hold, by the server's id fields: import would send each."""
    out: Counter = Counter()
    for s in sessions:
        sid = s.doc["id"]
        for line in s.lines():
            for e in json.loads(line):
                if e.get("task") == sid:
                    out[(e["type"], e["iter"], e["metric"], e["variant"])] += 1
    return out


def assert_each_point_once(h, truth, project="p"):
    assert_exactly_once(h, truth, project_fn(project))  # as ClearML's server would show it
    for run in truth.runs():
        sessions = h.sessions(project, run)
        counts = raw_events(sessions)
        assert counts and max(counts.values()) == 1, (run, counts.most_common(3))  # no copy
        rb = h.read_back(project, run)
        for kind in ("audio", "images", "texts", "histograms"):
            assert getattr(rb, kind) == getattr(truth, kind).get(run, 0), (run, kind)


def cli(h, *args):
    env = dict(os.environ, **h.env(), PYTHONPATH=str(SYNCER))
    proc = subprocess.run([sys.executable, "-m", "tracelet.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300)
    return proc


def destination_and_identity(h, logdir, run_path, project="p"):
    from tracelet.destinations.clearml.client import ClearmlDestination

    store = CheckpointStore(state_dir_for(logdir, None))
    ck = store.load("clearml", target_key("clearml", h.config), run_path)
    ref = RunRef(run_id=ck.run_id, run_path=run_path, project=project, source_dir=logdir / run_path)
    return ClearmlDestination(h.config), ref, ck.identity


def test_removed_sessions_are_drift_and_the_run_is_resent_exactly_once(cml, tmp_path):
    logdir = tmp_path / "logs"
    truth = build_conformance_logdir(logdir, "p")
    assert sync_once(logdir, cml, "p").exit_code == 0
    dest, ref, ident = destination_and_identity(cml, logdir, "torch/resnet")
    assert dest.check_run(ref, ident) is None
    gone = remove(cml.sessions("p", "torch/resnet"))  # removed by mistake: no marker
    line = dest.check_run(ref, ident)  # tracelet status --check: one listing, nothing created
    assert line and line.startswith("run missing on clearml: offline session removed: "), line
    assert str(cml.offline / gone[0]) in line, line
    assert not cml.sessions("p", "torch/resnet")
    write_simple_run(logdir / "torch" / "resnet", "torch/resnet", truth,
                     ["Loss/train", "Accuracy/val"], list(range(300, 330, 3)), seed=5, append=True)
    report = sync_once(logdir, cml, "p")
    assert report.exit_code == 0, report.to_dict()
    d = {r.run: r.destinations["clearml"] for r in report.runs}
    assert d["torch/resnet"].drift == line, d["torch/resnet"]
    assert any("drift: clearml: run missing on clearml: offline session removed" in n for r in report.runs
               for n in r.problems), [r.problems for r in report.runs]
    assert all(d[r].drift is None and d[r].state == "unchanged" for r in d if r != "torch/resnet")
    new = cml.sessions("p", "torch/resnet")
    assert new and not {s.name for s in new} & set(gone)  # a new sequence: no name reused
    assert_each_point_once(cml, truth)
    dest2, ref2, ident2 = destination_and_identity(cml, logdir, "torch/resnet")
    assert dest2.check_run(ref2, ident2) is None  # caught up
    dest.close()


def test_some_sessions_removed_resend_only_what_they_held(cml, tmp_path):
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    for k in range(3):  # three syncs, three sessions
        write_simple_run(logdir / "r", "r", truth, ["loss", "acc/val"],
                         list(range(10 * k, 10 * k + 10)), seed=k, append=k > 0)
        assert sync_once(logdir, cml, "p").exit_code == 0
    s1, s2, s3 = cml.sessions("p", "r")
    held = raw_events([s2])
    remove([s2])
    write_simple_run(logdir / "r", "r", truth, ["loss"], [30], seed=9, append=True)
    report = sync_once(logdir, cml, "p")
    d = report.runs[0].destinations["clearml"]
    assert report.exit_code == 0 and d.drift and "(1 of the 3 session(s)" in d.drift, d
    assert d.drift.startswith(f"run missing on clearml: offline session removed: "
                              f"{cml.offline / s2.name} (")
    names = [s.name for s in cml.sessions("p", "r")]
    assert names[:2] == [s1.name, s3.name] and len(names) == 3
    added = raw_events(cml.sessions("p", "r")[2:])
    assert added - held == Counter({("training_stats_scalar", 30, "loss", "loss"): 1})
    assert held - added == Counter()  # what session 2 held is back, nothing else again
    assert_each_point_once(cml, truth)


def test_sessions_imported_then_removed_are_not_drift(cml, tmp_path):
    """The import helper's markers are the record that a removed session is on the server:
    nothing is re-sent, new points go into the next session (never a marked name), and the
    import continues the task the markers name."""
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_simple_run(logdir / "r", "r", truth, ["loss"], list(range(10)))
    assert sync_once(logdir, cml, "p").exit_code == 0
    (old,) = remove(cml.sessions("p", "r"), marker="task-on-server")
    write_simple_run(logdir / "r", "r", truth, ["loss"], list(range(10, 15)), seed=1, append=True)
    report = sync_once(logdir, cml, "p")
    d = report.runs[0].destinations["clearml"]
    assert report.exit_code == 0 and d.drift is None, d
    (new,) = cml.sessions("p", "r")
    assert new.name > old and sorted(k[1] for k in raw_events([new])) == list(range(10, 15))
    (plan,) = plan_offline_import(cml.offline)
    assert plan["earlier_task_id"] == "task-on-server"
    assert [s["imported_as"] for s in plan["sessions"]] == [None]
    # a reset (or a lost state dir): Tracelet cannot see the server offline, so what only the
    # server holds is written again (imported into the task the markers name, each event
    # replaces itself) — into a session whose name no marker holds; what a session on disk
    # holds is not
    proc = cli(cml, "reset", str(logdir), "--to", "clearml")
    assert proc.returncode == 0, proc.stderr
    assert sync_once(logdir, cml, "p").exit_code == 0
    last = cml.sessions("p", "r")[-1]
    assert last.name > new.name and not Path(f"{last.zip_path}.imported").exists()
    assert sorted(k[1] for k in raw_events([last])) == list(range(10))


def test_reset_and_resync_leave_each_point_exactly_once(cml, tmp_path):
    logdir = tmp_path / "logs"
    truth = build_conformance_logdir(logdir, "p")
    assert sync_once(logdir, cml, "p").exit_code == 0
    # everything of one run removed, then `tracelet reset`: the run is written again once
    remove(cml.sessions("p", "keras/train"))
    proc = cli(cml, "reset", str(logdir), "keras/train", "--to", "clearml")
    assert proc.returncode == 0, proc.stderr
    assert sync_once(logdir, cml, "p").exit_code == 0
    assert_each_point_once(cml, truth)
    # reset again with every session there: nothing is written (dedupe against the sessions)
    before = sorted(p.name for p in cml.offline.iterdir())
    assert cli(cml, "reset", str(logdir), "--to", "clearml").returncode == 0
    assert sync_once(logdir, cml, "p").exit_code == 0
    assert sorted(p.name for p in cml.offline.iterdir()) == before
    # part of a run removed, then `sync --resync` (no source change): only what it held.
    # (A run of one event file: see the README's limits for event files that grow after a
    # later file of the same run was sent.)
    write_simple_run(logdir / "solo", "solo", truth, ["Loss/train"], list(range(20)), seed=4)
    assert sync_once(logdir, cml, "p").exit_code == 0
    write_simple_run(logdir / "solo", "solo", truth, ["Loss/train"], list(range(20, 26)), seed=5,
                     append=True)
    assert sync_once(logdir, cml, "p").exit_code == 0
    first, second = cml.sessions("p", "solo")
    remove([first])
    proc = cli(cml, "sync", str(logdir), "--to", "clearml", "--project", "p", "--resync",
               "--clearml-offline")
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = [s.name for s in cml.sessions("p", "solo")]
    assert names[0] == second.name and first.name not in names and len(names) == 2
    assert_each_point_once(cml, truth)


def test_check_run_offline_without_a_checkpoint_and_a_foreign_identity(cml, tmp_path):
    from tracelet.destinations.clearml.client import ClearmlDestination

    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_simple_run(logdir / "r", "r", truth, ["loss"], list(range(3)))
    dest = ClearmlDestination(cml.config)
    ref = RunRef(run_id="rid", run_path="r", project="p", source_dir=logdir / "r")
    assert "run missing on clearml: no offline session" in dest.check_run(ref, None)
    assert sync_once(logdir, cml, "p").exit_code == 0
    _, ref, ident = destination_and_identity(cml, logdir, "r")
    assert dest.check_run(ref, None) is None  # found by the run's session prefix
    for bad in ({**ident, "run_hash": "0" * 20}, {**ident, "next_seq": "many"},
                {**ident, "next_seq": 10 ** 30}):
        assert "another run's sessions" in dest.check_run(ref, bad)
    huge = {**ident, "next_seq": 16 ** 12 - 1}  # a huge record costs nothing to check
    assert "offline sessions removed" in dest.check_run(ref, huge)  # all but the first
    moved = {**ident, "dir": str(tmp_path / "elsewhere")}
    assert "offline folder changed" in dest.check_run(ref, moved)
    dest.close()


def test_a_deleted_task_is_told_from_other_server_errors():
    """Online, open_run confirms the task the checkpoint names with one tasks.get_by_id: the
    server's 400 InvalidTaskId (101) / TaskNotFound (130), read from ClearML's own SendError,
    is drift; any other error is not (it is typed and retried or fails the destination)."""
    from clearml.backend_api.session.callresult import CallResult
    from clearml.backend_api.session.response import ResponseMeta
    from clearml.backend_interface.session import SendError
    from tracelet.destinations.clearml.client import _task_gone

    def send_error(code, subcode):
        meta = ResponseMeta(is_valid=True, id="x", trx="x", endpoint={"name": "tasks.get_by_id"},
                            result_code=code, result_subcode=subcode, result_msg="refused")
        return SendError(CallResult(meta=meta), "Action failed")

    assert _task_gone(send_error(400, 101)) and _task_gone(send_error(400, 130))
    assert _task_gone(ValueError('Task ID "abc" could not be found'))
    for other in (send_error(400, 110), send_error(401, None), send_error(500, None),
                  ValueError("Task object can only be updated if created or in_progress"),
                  ConnectionError("refused")):
        assert not _task_gone(other), other
