"""A plain run's identity does not depend on the LOGDIR level it is synced from (README "The
same plain run from another LOGDIR level"), in Aim.

The same TensorBoard files synced as ``tracelet sync sub`` (run ``exp/r1``, experiment ``sub``),
then ``sub/exp`` (``r1``, experiment ``exp``), then ``sub/exp/r1`` (``r1``, experiment ``r1``) —
each with its own state dir, so no checkpoint links them — land in ONE Aim run, each point
exactly once, read back from a real local Aim repo with ``aim.Repo``; each level reached under
another name says so in one warning line. A sibling run whose files start with the very same
bytes (the fixtures write one file name and header for every run) stays its own run, and a
project given is the only experiment looked in.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.destinations.harness_aim import AimLocalHarness, index_repo
from tests.destinations.identity_scenarios import (TAGS, same_source_lines,
                                                 sync_project_given, sync_same_head_apart)
from tracelet.testing.conformance import assert_exactly_once, project_fn
from tracelet.testing.sources import SourceTruth, write_simple_run



def _all_runs(root: str) -> list[tuple[str, str, str, str]]:
    """(experiment, run path, name, source id) of every run in the repo's folder of runs, read
    from each run's own storage (indexed or not)."""
    from aim import Repo

    Repo._all_run_hashes.cache_clear()  # Aim caches the listing 0.5 s
    repo = Repo(root)
    out = []
    for h in sorted(repo.list_all_runs()):
        tree = repo.request_tree("meta", h, read_only=True, skip_read_optimization=True)
        attrs = tree.subtree(("meta", "chunks", h, "attrs"))
        tracelet = attrs.get("tracelet") or {}
        props = repo.structured_db.find_run(h)
        out.append((props.experiment if props else None, tracelet.get("run_path"),
                    props.name if props else None, tracelet.get("source_id", "")))
    return sorted(out)



def test_three_levels_of_one_run_are_one_aim_run_with_each_point_once(tmp_path, monkeypatch):
    import tracelet

    harness = AimLocalHarness()
    config = harness.config = harness.setup(tmp_path, monkeypatch)
    sub = tmp_path / "sub"
    r1, r2 = sub / "exp" / "r1", sub / "exp" / "r2"
    truth = SourceTruth()  # named as first synced: from `sub`
    write_simple_run(r1, "exp/r1", truth, TAGS, list(range(0, 30)), seed=1)
    write_simple_run(r2, "exp/r2", truth, TAGS, list(range(0, 20)), seed=2)

    first = tracelet.sync(sub, to="aim", dest_config=config)
    assert first.exit_code == 0, first.to_dict()
    assert not any(same_source_lines(r.problems) for r in first.runs)
    assert_exactly_once(harness, truth, project_fn("sub"))
    runs = _all_runs(harness.root)
    assert [r[:3] for r in runs] == [("sub", "exp/r1", "exp/r1"), ("sub", "exp/r2", "exp/r2")]
    # stored; the fixtures give both the same file start: only their names keep them apart
    assert len(runs[0][3]) == 32 and runs[0][3] == runs[1][3]

    # the files grow (the identity is their first record: unchanged), then the sync is pointed
    # one level lower, through the command line as cron runs it
    write_simple_run(r1, "exp/r1", truth, TAGS, list(range(30, 45)), seed=1, append=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run([sys.executable, "-m", "tracelet.cli", "sync", str(sub / "exp"),
                        "--to", "aim", *harness.cli_args()],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    warned = [re.sub(r"^\S+Z ", "", ln)  # less the ISO time stamp of a cron line
              for ln in p.stderr.splitlines() if "is the same source as" in ln]
    assert sorted(warned) == [
        "tracelet: r1: aim: run 'r1' (project 'exp') is the same source as 'exp/r1' in "
        "experiment 'sub' (same first event file): continued in that run, nothing sent twice; a "
        "plain run's name is its path under the LOGDIR given, so sync the same LOGDIR to keep "
        "one name",
        "tracelet: r2: aim: run 'r2' (project 'exp') is the same source as 'exp/r2' in "
        "experiment 'sub' (same first event file): continued in that run, nothing sent twice; a "
        "plain run's name is its path under the LOGDIR given, so sync the same LOGDIR to keep "
        "one name"], p.stderr

    write_simple_run(r1, "exp/r1", truth, TAGS, list(range(45, 50)), seed=1, append=True)
    third = tracelet.sync(r1, to="aim", dest_config=config)
    assert third.exit_code == 0, third.to_dict()
    [run] = third.runs
    assert run.run == "r1" and run.destinations["aim"].state == "synced"
    [line] = same_source_lines(run.problems)
    assert "run 'r1' (project 'r1')" in line and "as 'exp/r1' in experiment 'sub'" in line

    # ONE Aim run per source, in the experiment, name and run path of the first sync
    assert _all_runs(harness.root) == runs
    assert_exactly_once(harness, truth, project_fn("sub"))

    # the next sync from that level continues from its checkpoint: no warning, no rebuild
    write_simple_run(r1, "exp/r1", truth, TAGS, list(range(50, 60)), seed=1, append=True)
    again = tracelet.sync(r1, to="aim", dest_config=config)
    assert again.exit_code == 0 and not again.runs[0].problems, again.to_dict()
    assert again.runs[0].destinations["aim"].points == 2 * 10
    assert _all_runs(harness.root) == runs
    assert_exactly_once(harness, truth, project_fn("sub"))


def test_runs_with_the_same_head_under_unrelated_names_stay_apart(tmp_path, monkeypatch):
    """Two folders whose first event file is byte-for-byte the same start (a copied template)
    but whose names are not two levels of one path are two runs, as before."""
    harness = AimLocalHarness()
    harness.config = harness.setup(tmp_path, monkeypatch)
    truth = sync_same_head_apart(tmp_path, "aim", harness)
    runs = _all_runs(harness.root)
    assert [r[:2] for r in runs] == [("same", "r1"), ("same", "r1x")]
    assert runs[0][3] == runs[1][3]  # the same head: only the names keep them apart
    assert_exactly_once(harness, truth, project_fn("same"))


def test_a_project_given_is_where_the_run_is_looked_for(tmp_path, monkeypatch):
    """With --project (or a manifest project) the level changes the run path only: the run is
    found by source id in that project; in another project given it is a run of its own."""
    harness = AimLocalHarness()
    harness.config = harness.setup(tmp_path, monkeypatch)
    sync_project_given(tmp_path, "aim", harness, projects=("P", "Q"), container="experiment")
    assert [r[:2] for r in _all_runs(harness.root)] == [("P", "exp/r1"), ("Q", "r1")]


@pytest.mark.slow
@pytest.mark.server
def test_remote_aim_server_finds_the_run_by_source_id(aim_server, tmp_path):
    """``--aim-repo aim://``: the lookup goes through the same Aim calls over RPC (the index
    tree, the run's props); the server's repo indexed between the syncs as ``aim up`` on it
    does (Tracelet does not index a remote repo). The second sync may start within the 0.5 s the
    server keeps its run listing, taken before the first sync made the run
    (``storage.RemoteRunListing``)."""
    import tracelet

    h = aim_server.harness()
    config = h.config
    sub = tmp_path / "sub"
    r1 = sub / "exp" / "r1"
    truth = SourceTruth()
    write_simple_run(r1, "exp/r1", truth, TAGS, list(range(0, 20)), seed=1)
    assert tracelet.sync(sub, to="aim", dest_config=config).exit_code == 0
    index_repo(aim_server.repo)
    runs = _all_runs(str(aim_server.repo))
    assert [r[:3] for r in runs] == [("sub", "exp/r1", "exp/r1")] and runs[0][3]
    write_simple_run(r1, "exp/r1", truth, TAGS, list(range(20, 30)), seed=1, append=True)
    report = tracelet.sync(sub / "exp", to="aim", dest_config=config)
    assert report.exit_code == 0, report.to_dict()
    [line] = same_source_lines(report.runs[0].problems)
    assert "run 'r1' (project 'exp') is the same source as 'exp/r1' in experiment 'sub'" in line
    index_repo(aim_server.repo)
    assert _all_runs(str(aim_server.repo)) == runs
    assert_exactly_once(h, truth, project_fn("sub"))


@pytest.mark.server
def test_a_run_made_just_before_is_on_the_aim_server(aim_server, tmp_path):
    """The server answers Aim's run listing from a copy it keeps 0.5 s (``Repo._all_run_hashes``
    there), which the client cannot clear: a run made right after that copy was taken (here:
    its folder put back in place) is still found, not taken as missing."""
    from aim import Repo, Run

    from tracelet.destinations.aim.client import AimDestination
    from tracelet.destinations.base import RunRef

    made = Run(repo=str(aim_server.repo), system_tracking_interval=None,
               log_system_params=False, capture_terminal_logs=False)
    run_hash = made.hash
    made.close()
    made = None
    chunks = aim_server.repo / ".aim" / "meta" / "chunks"
    (chunks / run_hash).rename(tmp_path / "away")
    remote = Repo.from_path(aim_server.url)
    assert run_hash not in remote.list_all_runs()  # the server's copy, taken without the run
    (tmp_path / "away").rename(chunks / run_hash)
    dest = AimDestination({"aim_repo": aim_server.url})
    try:
        ref = RunRef(run_id="r", run_path="r", project="p", source_dir=tmp_path)
        assert dest.check_run(ref, {"run_hash": run_hash}) is None
    finally:
        dest.close()
        remote = None
