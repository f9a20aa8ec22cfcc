"""A plain run's identity does not depend on the LOGDIR level it is synced from (README "The
same plain run from another LOGDIR level"), on ClearML offline sessions.

The same TensorBoard files synced as ``tracelet sync sub`` (run ``exp/r1``, project ``sub``),
then ``sub/exp`` (``r1``, project ``exp``), then ``sub/exp/r1`` (``r1``, project ``r1``) — each
with its own state dir, so no checkpoint links them — land in ONE ClearML run: every session
has the first sync's session prefix, run id, run path, project and task name (the import
chains them into one task), each point exactly once, read back from the session files with the
harness (ClearML's importer and server rules). A sibling whose files start with the very same
bytes stays its own run; a project given is the only one looked in.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.destinations.harness_clearml import ClearmlOfflineHarness, offline_sessions
from tests.destinations.identity_scenarios import (SAME, TAGS, same_source_lines,
                                                 sync_project_given, sync_same_head_apart)
from tracelet.testing.conformance import assert_exactly_once, project_fn
from tracelet.testing.sources import SourceTruth, write_simple_run




def _runs(harness) -> dict[str, set]:
    """Session prefix -> the (project, task name, run id, run path, source id) its sessions hold."""
    out: dict[str, set] = {}
    for s in offline_sessions(harness.offline):
        hp = s.doc["hyperparams"]["tracelet"]
        out.setdefault(s.name[:28], set()).add((
            s.doc["project_name"], s.doc["name"], hp["run_id"]["value"],
            hp["run_path"]["value"], (hp.get("source_id") or {}).get("value")))
    return out


def test_three_levels_of_one_run_are_one_clearml_run_with_each_point_once(tmp_path, monkeypatch):
    import tracelet
    from tracelet.destinations.clearml.importer import plan_offline_import

    harness = ClearmlOfflineHarness()
    config = harness.config = harness.setup(tmp_path, monkeypatch)
    sub = tmp_path / "sub"
    r1, r2 = sub / "exp" / "r1", sub / "exp" / "r2"
    truth = SourceTruth()  # named as first synced: from `sub`
    write_simple_run(r1, "exp/r1", truth, TAGS, list(range(0, 30)), seed=1)
    write_simple_run(r2, "exp/r2", truth, TAGS, list(range(0, 20)), seed=2)

    first = tracelet.sync(sub, to="clearml", dest_config=config)
    assert first.exit_code == 0, first.to_dict()
    assert not any(same_source_lines(r.problems) for r in first.runs)
    assert_exactly_once(harness, truth, project_fn("sub"))
    runs = _runs(harness)
    assert len(runs) == 2 and all(len(v) == 1 for v in runs.values()), runs

    # the files grow (the identity is their first record: unchanged), then the sync is pointed
    # one level lower, through the command line as cron runs it
    write_simple_run(r1, "exp/r1", truth, TAGS, list(range(30, 45)), seed=1, append=True)
    env = {**os.environ, **harness.env(), "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run([sys.executable, "-m", "tracelet.cli", "sync", str(sub / "exp"),
                        "--to", "clearml", "--clearml-offline"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    warned = [ln[ln.index("tracelet: "):] for ln in p.stderr.splitlines() if SAME in ln]
    assert sorted(warned) == [
        "tracelet: r1: clearml: run 'r1' (project 'exp') is the same source as 'exp/r1' in "
        "project 'sub' (same first event file): continued in that run, nothing sent twice; a "
        "plain run's name is its path under the LOGDIR given, so sync the same LOGDIR to keep "
        "one name",
        "tracelet: r2: clearml: run 'r2' (project 'exp') is the same source as 'exp/r2' in "
        "project 'sub' (same first event file): continued in that run, nothing sent twice; a "
        "plain run's name is its path under the LOGDIR given, so sync the same LOGDIR to keep "
        "one name"], p.stderr

    # `status --check` asks the destination: the sessions of the upper level are this level's
    p = subprocess.run([sys.executable, "-m", "tracelet.cli", "status", str(sub / "exp"),
                        "--to", "clearml", "--clearml-offline", "--check", "--json"],
                       env=env, capture_output=True, text=True, timeout=300)
    checked = {r["run"]: r["checked"] for r in json.loads(p.stdout)["runs"]}
    assert p.returncode == 0 and checked == {"r1": "present", "r2": "present"}, (p.stdout, p.stderr)

    write_simple_run(r1, "exp/r1", truth, TAGS, list(range(45, 50)), seed=1, append=True)
    third = tracelet.sync(r1, to="clearml", dest_config=config)
    assert third.exit_code == 0, third.to_dict()
    [run] = third.runs
    assert run.run == "r1" and run.destinations["clearml"].state == "synced"
    [line] = same_source_lines(run.problems)
    assert "run 'r1' (project 'r1')" in line and "as 'exp/r1' in project 'sub'" in line

    # ONE run per source: every session (a new one per sync that wrote) keeps the identity of
    # the first sync (no session in project 'exp' or 'r1_', no task named 'r1_')
    runs = _runs(harness)
    idents = sorted(v for vs in runs.values() for v in vs)  # one per prefix: all its sessions
    assert [(p, n, path) for p, n, _, path, _ in idents] == [
        ("sub", "exp/r1", "exp/r1"), ("sub", "exp/r2", "exp/r2")], idents
    # r1: a session per sync that had something new; r2 (nothing new since) none after its first
    assert sorted(s.name[:28] for s in offline_sessions(harness.offline)) == sorted(
        [k for k, (ident,) in runs.items() for _ in range(3 if ident[3] == "exp/r1" else 1)])
    assert_exactly_once(harness, truth, project_fn("sub"))
    # what the import would do: two runs, each its sessions in order into one task
    plan = plan_offline_import(harness.offline)
    assert sorted((r["project"], r["task_name"], len(r["sessions"])) for r in plan) == [
        ("sub", "exp/r1", 3), ("sub", "exp/r2", 1)]

    # the next sync from that level continues from its checkpoint: no warning, no rebuild
    write_simple_run(r1, "exp/r1", truth, TAGS, list(range(50, 60)), seed=1, append=True)
    again = tracelet.sync(r1, to="clearml", dest_config=config)
    assert again.exit_code == 0 and not again.runs[0].problems, again.to_dict()
    assert again.runs[0].destinations["clearml"].points == 2 * 10
    assert len(_runs(harness)) == 2
    assert_exactly_once(harness, truth, project_fn("sub"))


def test_runs_with_the_same_head_under_unrelated_names_stay_apart(tmp_path, monkeypatch):
    """Two folders whose first event file is byte-for-byte the same start (a copied template)
    but whose names are not two levels of one path are two runs, as before."""
    harness = ClearmlOfflineHarness()
    harness.config = harness.setup(tmp_path, monkeypatch)
    truth = sync_same_head_apart(tmp_path, "clearml", harness)
    runs = _runs(harness)
    assert len({h[4] for vs in runs.values() for h in vs}) == 1  # the same source id ...
    assert sorted(h[3] for vs in runs.values() for h in vs) == ["r1", "r1x"]  # ... two runs
    assert_exactly_once(harness, truth, project_fn("same"))


def test_a_project_given_is_where_the_run_is_looked_for(tmp_path, monkeypatch):
    """With --project (or a manifest project) the level changes the run path only: the run is
    found by source id in that project; in another project given it is a run of its own."""
    harness = ClearmlOfflineHarness()
    harness.config = harness.setup(tmp_path, monkeypatch)
    sync_project_given(tmp_path, "clearml", harness, projects=("PPP", "QQQ"),
                       container="project")
    assert sorted({(h[0], h[3]) for vs in _runs(harness).values() for h in vs}) == [
        ("PPP", "exp/r1"), ("QQQ", "r1")]


def _ref(logdir, run_path: str, project: str, ck):
    from tracelet.destinations.base import RunRef
    from tracelet.identity import source_id_for
    from tracelet.reader import discover_runs

    [run] = [r for r in discover_runs(logdir).runs if r.name == run_path]
    return RunRef(run_id=ck.run_id, run_path=run_path, project=project,
                  source_dir=logdir / run_path, source_id=source_id_for(run, None),
                  source_anywhere=True)


def test_the_checkpoint_of_a_run_taken_by_source_id_is_confirmed_and_never_trusted_blindly(
        tmp_path, monkeypatch):
    """The lower level's checkpoint names the upper level's sessions: `status --check` and the
    next open confirm them by the source id, the names and the sessions' own task.json; an
    identity that says otherwise (edited, or naming another run's sessions) is never used: the
    run is found again by its source id. Junk in the offline folder (unreadable task.json, a
    broken zip, wrong types, the same source under an unrelated name) is passed over."""
    import tracelet
    from tracelet.checkpoint import CheckpointStore
    from tracelet.destinations import target_key
    from tracelet.destinations.clearml.client import ClearmlDestination
    from tracelet.engine import state_dir_for

    harness = ClearmlOfflineHarness()
    config = harness.config = harness.setup(tmp_path, monkeypatch)
    sub = tmp_path / "sub"
    truth = SourceTruth()
    write_simple_run(sub / "exp" / "r1", "exp/r1", truth, TAGS, [0, 1, 2], seed=1)
    write_simple_run(sub / "exp" / "r2", "exp/r2", truth, TAGS, [0, 1], seed=2)
    assert tracelet.sync(sub, to="clearml", dest_config=config).exit_code == 0
    runs = _runs(harness)
    [r2_hex] = [k for k, vs in runs.items() if next(iter(vs))[3] == "exp/r2"]
    [(_, _, _, _, sid)] = [next(iter(vs)) for vs in runs.values()
                           if next(iter(vs))[3] == "exp/r1"]

    # junk sorted before the real sessions: none of it is taken, none of it raises
    junk = {"0" * 32: b"{not json", "1" * 32: b"[1, 2]",
            "2" * 32: json.dumps({"hyperparams": {"tracelet": "x"}}).encode(),
            "3" * 32: json.dumps({"project_name": "sub", "name": "exp/r1", "hyperparams": {
                "tracelet": {"run_id": {"value": 5}, "run_path": {"value": ["exp/r1"]},
                             "source_id": {"value": sid}}}}).encode(),
            "4" * 32: json.dumps({"project_name": "sub", "name": "other/r9", "hyperparams": {
                "tracelet": {"run_id": {"value": "x"}, "run_path": {"value": "other/r9"},
                             "source_id": {"value": sid}}}}).encode()}
    for name, body in junk.items():
        (harness.offline / f"offline-{name}").mkdir()
        (harness.offline / f"offline-{name}" / "task.json").write_bytes(body)
    (harness.offline / f"offline-{'5' * 32}.zip").write_bytes(b"PK\x03\x04 broken")

    write_simple_run(sub / "exp" / "r1", "exp/r1", truth, TAGS, [3, 4], seed=1, append=True)
    second = tracelet.sync(sub / "exp", to="clearml", dest_config=config)
    assert second.exit_code == 0, second.to_dict()
    assert all(len(same_source_lines(r.problems)) == 1 for r in second.runs)
    import shutil

    for name in junk:  # not Tracelet's: the read-back (as ClearML's importer) would stop at it
        shutil.rmtree(harness.offline / f"offline-{name}")
    (harness.offline / f"offline-{'5' * 32}.zip").unlink()
    assert_exactly_once(harness, truth, project_fn("sub"))

    store = CheckpointStore(state_dir_for(sub / "exp", None))
    ck = store.load("clearml", target_key("clearml", config), "r1")
    ident = ck.identity
    assert ident["source_run"]["run_path"] == "exp/r1" and ident["run_hash"] != r2_hex
    ref = _ref(sub / "exp", "r1", "exp", ck)
    dest = ClearmlDestination(config)
    try:
        assert dest.check_run(ref, ident) is None  # the adopted sessions are this run's
        src = ident["source_run"]
        for bad in ({**ident, "run_hash": r2_hex},  # another run's sessions
                    {**ident, "run_hash": "../" + "0" * 17},
                    {**ident, "source_run": {**src, "source_id": "f" * 32}},
                    {**ident, "source_run": {**src, "run_path": "other/r1x"}},
                    {**ident, "source_run": {**src, "run_id": 7}},
                    {**ident, "source_run": "exp/r1"},
                    {**ident, "source_run": {**src, "run_id": "forged"}}):  # sessions disagree
            assert "another run's sessions" in dest.check_run(ref, bad), bad
            handle = dest.open_run(ref, bad)  # never used: found again by its source id
            assert handle.identity_ignored and handle.same_source == "'exp/r1' in project 'sub'"
            assert handle.identity["run_hash"] == ident["run_hash"]
            dest.close_run(handle)
    finally:
        dest.close()

    # the state dir of the lower level lost: found again by source id, nothing twice
    shutil.rmtree(sub / "exp" / ".tracelet")
    write_simple_run(sub / "exp" / "r1", "exp/r1", truth, TAGS, [5], seed=1, append=True)
    third = tracelet.sync(sub / "exp", to="clearml", dest_config=config)
    assert third.exit_code == 0, third.to_dict()
    assert all(len(same_source_lines(r.problems)) == 1 for r in third.runs)
    assert len(_runs(harness)) == 2
    assert_exactly_once(harness, truth, project_fn("sub"))
