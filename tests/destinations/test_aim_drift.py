"""Drift on Aim: the run a checkpoint names is gone (the repo removed, the run deleted with Aim's
own API) or replaced by another run at the same hash. The next sync says so in the report and
re-sends the whole run with dedupe; read back with Aim's SDK, every source point is there
exactly once. ``tracelet reset --to aim`` and ``sync --resync`` do the same on request.
``check_run`` (``tracelet status --check``) names the same drift without changing anything.
"""
from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.destinations.harness_aim import find_aim_runs, index_repo, read_aim_run
from tracelet.checkpoint import CheckpointStore
from tracelet.destinations import target_key
from tracelet.destinations.base import RunRef
from tracelet.engine import state_dir_for
from tracelet.testing.conformance import assert_exactly_once, project_fn, sync_once
from tracelet.testing.sources import SourceTruth, write_recorded_run, write_simple_run, write_tf2_run

SIMPLE = ("run0", "run1")
EVENTS = "events.out.tfevents.1700000000.host.1.0"  # write_simple_run's file


def _logdir(root: Path, project: str) -> SourceTruth:
    """Two plain runs and a recorded one (manifest, params, sidecar, artifacts, status)."""
    truth = SourceTruth()
    for k, run in enumerate(SIMPLE):
        write_simple_run(root / run, run, truth, ["loss", "acc"], list(range(40)), seed=k)
    write_recorded_run(root / project / "rec", f"{project}/rec", truth, project)
    return truth


def _append(root: Path, truth: SourceTruth, project: str, steps: range) -> None:
    """New points in every run (a changed run is opened again: the fast path skips the rest)."""
    for k, run in enumerate(SIMPLE):
        write_simple_run(root / run, run, truth, ["loss", "acc"], list(steps), seed=10 + k,
                         append=True)
    write_simple_run(root / project / "rec", f"{project}/rec", truth,
                     ["Loss/Train/CrossEntropy", "Metrics/Accuracy/Validation"], list(steps),
                     seed=20, append=True)


def _assert_all_once(h, truth: SourceTruth, project: str) -> None:
    assert_exactly_once(h, truth, project_fn(project))
    rec = f"{project}/rec"
    rb = h.read_back(project, rec)
    assert rb.system_points == truth.system[rec]
    assert sorted(rb.artifacts) == sorted(truth.artifacts[rec] + [
        "tracelet/tracelet.json"]), rb.artifacts
    assert rb.params["learning_rate"] == "0.001" and rb.status == "finished"


def _drift(report) -> dict[str, str | None]:
    return {r.run: r.destinations["aim"].drift for r in report.runs}


def _hash(h, project: str, run: str) -> str:
    (found,) = find_aim_runs(h.repo(), project, run)
    return found


def _cli(h, *args: str, project: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracelet.cli", *args, "--to", "aim",
                           "--project", project, *h.cli_args()], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))


def _identity(h, logdir: Path, run: str) -> dict:
    store = CheckpointStore(state_dir_for(logdir, None))
    return store.load("aim", target_key("aim", h.config), run).identity


def _ref(logdir: Path, run: str, project: str, run_id: str) -> RunRef:
    return RunRef(run_id=run_id, run_path=run, project=project, source_dir=logdir / run)


@pytest.mark.parametrize("remake", ["by the sync", "with aim init"])
def test_repo_removed_after_a_sync_is_made_again_and_filled(aim_h, tmp_path, project, remake):
    """The repo removed; the next sync makes it anew, or the user made a new one at the same
    path (``aim init``: another repo there, without the runs)."""
    logdir = tmp_path / "logs"
    truth = _logdir(logdir, project)
    assert sync_once(logdir, aim_h, project).exit_code == 0
    shutil.rmtree(Path(aim_h.root) / ".aim")  # the whole repo, after a sync
    if remake == "with aim init":
        done = subprocess.run([str(Path(sys.executable).with_name("aim")), "init", "--repo",
                               aim_h.root], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    _append(logdir, truth, project, range(40, 50))
    report = sync_once(logdir, aim_h, project)
    assert report.exit_code == 0, report.to_dict()
    drift = _drift(report)
    repo = os.path.join(aim_h.root, ".aim")
    for run, line in drift.items():
        assert line and line.startswith(f"run missing on aim: repo removed: {repo} ") and f"('{run}')" in line, line
        assert any(p.startswith("drift: aim: run missing on aim: repo removed") for r in report.runs
                   if r.run == run for p in r.problems)
    # the whole run again, not only the appended points
    sent = {r.run: r.destinations["aim"].points for r in report.runs}
    assert sent["run0"] == sent["run1"] == 2 * 50
    _assert_all_once(aim_h, truth, project)
    assert _drift(sync_once(logdir, aim_h, project)) == dict.fromkeys(drift)  # once only


def test_run_deleted_with_aims_api_is_made_again_without_its_old_landed_record(
        aim_h, tmp_path, project):
    from aim import Repo

    logdir = tmp_path / "logs"
    truth = _logdir(logdir, project)
    assert sync_once(logdir, aim_h, project).exit_code == 0
    gone = {run: _hash(aim_h, project, run) for run in ("run0", f"{project}/rec")}
    # one with Aim's CLI, one with its SDK
    done = subprocess.run([str(Path(sys.executable).with_name("aim")), "runs", "--repo",
                           aim_h.root, "rm", "-y", gone["run0"]], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert Repo(aim_h.root).delete_run(gone[f"{project}/rec"])
    # the landed record lived in the run's own containers: gone with the run
    for run_hash in gone.values():
        for db in ("meta", "seqs"):
            assert not (Path(aim_h.root) / ".aim" / db / "chunks" / run_hash).exists()
    _append(logdir, truth, project, range(40, 45))
    report = sync_once(logdir, aim_h, project)
    assert report.exit_code == 0, report.to_dict()
    drift = _drift(report)
    assert drift["run1"] is None
    for run, run_hash in gone.items():
        assert drift[run].startswith(f"run missing on aim: run deleted: run {run_hash} ('{run}') is no longer in "
                                     f"the Aim repo {aim_h.root}/.aim"), drift[run]
        assert _hash(aim_h, project, run) == run_hash  # the same hash: (project, run id)
    _assert_all_once(aim_h, truth, project)


def _synced_run0(logdir: Path, aim_h, project: str):
    """``run0`` (20 points of ``loss``) synced once: its truth, checkpoint file and document."""
    truth = SourceTruth()
    write_simple_run(logdir / "run0", "run0", truth, ["loss"], list(range(20)), seed=1)
    assert sync_once(logdir, aim_h, project).exit_code == 0
    (ck,) = (logdir / ".tracelet" / "checkpoints").glob("aim-*/run0.json")
    return truth, ck, json.loads(ck.read_text())


def test_a_deleted_run_not_at_the_derived_hash_is_drift_not_a_foreign_identity(
        aim_h, tmp_path, project):
    """A run found by its run id (made by an older Tracelet or another tool: Aim's random hash)
    and deleted since: the checkpoint's hash is in no repo listing. That is drift, not a
    checkpoint naming another run's Aim run (which is set aside: test_foreign_identity.py)."""
    logdir = tmp_path / "logs"
    truth, ck, doc = _synced_run0(logdir, aim_h, project)
    gone = "0123456789abcdef01234567"  # the deleted run's hash, as Aim draws them
    doc["identity"]["run_hash"] = gone
    ck.write_text(json.dumps(doc))
    write_simple_run(logdir / "run0", "run0", truth, ["loss"], list(range(20, 25)), seed=2,
                     append=True)
    report = sync_once(logdir, aim_h, project)
    assert report.exit_code == 0, report.to_dict()
    assert _drift(report)["run0"].startswith(
        f"run missing on aim: run deleted: run {gone} ('run0')"), _drift(report)
    problems = [p for r in report.runs for p in r.problems]
    assert not any("moved aside" in p for p in problems), problems
    assert_exactly_once(aim_h, truth, project_fn(project))


def test_a_checkpoint_from_before_the_tokens_is_not_drift(aim_h, tmp_path, project):
    """Checkpoints written before the repo and run tokens (identity = the run hash alone): the
    run is there, so no drift; the tokens are added for the next comparison."""
    logdir = tmp_path / "logs"
    truth, ck, doc = _synced_run0(logdir, aim_h, project)
    tokens = {k: doc["identity"].pop(k) for k in ("incarnation", "repo")}
    ck.write_text(json.dumps(doc))
    write_simple_run(logdir / "run0", "run0", truth, ["loss"], list(range(20, 25)), seed=2,
                     append=True)
    report = sync_once(logdir, aim_h, project)
    assert report.exit_code == 0 and _drift(report) == {"run0": None}, report.to_dict()
    assert report.runs[0].destinations["aim"].points == 5  # only what is new
    assert {k: json.loads(ck.read_text())["identity"][k] for k in tokens} == tokens
    assert_exactly_once(aim_h, truth, project_fn(project))


def test_run_replaced_at_the_same_hash_is_drift(aim_h, tmp_path, project):
    """Deleted, then made again by a sync of an older copy of the logdir with its own state
    dir: the run at the hash holds part of the points, not what this checkpoint sent."""
    from aim import Repo

    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_simple_run(logdir / "run0", "run0", truth, ["loss"], list(range(30)), seed=1)
    shutil.copytree(logdir, tmp_path / "old")  # another machine's copy, 30 steps
    write_simple_run(logdir / "run0", "run0", truth, ["loss"], list(range(30, 60)), seed=2,
                     append=True)
    assert sync_once(logdir, aim_h, project).exit_code == 0
    run_hash = _hash(aim_h, project, "run0")
    assert Repo(aim_h.root).delete_run(run_hash)
    assert sync_once(tmp_path / "old", aim_h, project).exit_code == 0  # made again: 30 steps
    assert _hash(aim_h, project, "run0") == run_hash
    write_simple_run(logdir / "run0", "run0", truth, ["loss"], list(range(60, 70)), seed=3,
                     append=True)
    report = sync_once(logdir, aim_h, project)
    assert report.exit_code == 0, report.to_dict()
    assert _drift(report)["run0"].startswith(
        f"run replaced on aim: run {run_hash} ('run0') in the Aim repo {aim_h.root}/.aim is not the run "
        "this checkpoint wrote to"), _drift(report)
    assert_exactly_once(aim_h, truth, project_fn(project))  # 70 steps, none twice


def test_check_run_names_the_drift_and_changes_nothing(aim_h, tmp_path, project):
    from aim import Repo

    from tracelet.destinations.aim import AimDestination

    logdir = tmp_path / "logs"
    truth = SourceTruth()
    for run in SIMPLE:
        write_simple_run(logdir / run, run, truth, ["loss"], list(range(5)))
    assert sync_once(logdir, aim_h, project).exit_code == 0
    ids = {run: _identity(aim_h, logdir, run) for run in SIMPLE}
    ck = CheckpointStore(state_dir_for(logdir, None))
    refs = {run: _ref(logdir, run, project, ck.load("aim", target_key("aim", aim_h.config),
                                                    run).run_id) for run in SIMPLE}
    dest = AimDestination(aim_h.config)
    assert [dest.check_run(refs[r], ids[r]) for r in SIMPLE] == [None, None]
    assert Repo(aim_h.root).delete_run(ids["run0"]["run_hash"])
    line = dest.check_run(refs["run0"], ids["run0"])
    assert line.startswith(f"run missing on aim: run deleted: run {ids['run0']['run_hash']} ('run0')"), line
    assert dest.check_run(refs["run1"], ids["run1"]) is None
    # a token other than the checkpoint's: another run at the same hash
    other = dict(ids["run1"], incarnation="0" * 16)
    assert dest.check_run(refs["run1"], other).startswith("run replaced on aim: ")
    dest.close()
    assert find_aim_runs(Repo(aim_h.root), project, "run0") == []  # nothing made
    # the repo removed: named as such, and check_run does not make it again
    repo = Path(aim_h.root) / ".aim"
    dest = AimDestination(aim_h.config)
    shutil.rmtree(repo)
    line = dest.check_run(refs["run1"], ids["run1"])
    assert line.startswith(f"run missing on aim: repo removed: {repo} does not exist"), line
    assert not repo.exists()
    dest.close()
    # another repo at the path now (a destination opened on it: one `tracelet status` makes)
    dest = AimDestination(aim_h.config)
    for run in SIMPLE:
        line = dest.check_run(refs[run], ids[run])
        assert line.startswith(f"run missing on aim: repo removed: {repo} is not the repo of the last "
                               "sync"), line
    dest.close()


def test_a_repo_restored_from_an_older_copy_is_drift_and_nothing_is_lost(aim_h, tmp_path,
                                                                         project):
    """The runs are still there (same hash, same token) but not what was sent after the copy:
    their landed record covers less than the checkpoint saw, so `status --check` says so and
    the next sync of a changed run re-sends it whole, deduplicated by that record. Each sync is
    its own process (as cron runs it): the copy is taken with no process holding the repo."""
    logdir = tmp_path / "logs"
    truth = _logdir(logdir, project)
    assert _cli(aim_h, "sync", str(logdir), project=project).returncode == 0
    repo = Path(aim_h.root) / ".aim"
    backup = tmp_path / "aim-backup"
    shutil.copytree(repo, backup, symlinks=True)
    _append(logdir, truth, project, range(40, 50))
    assert _cli(aim_h, "sync", str(logdir), project=project).returncode == 0
    shutil.rmtree(repo)
    shutil.copytree(backup, repo, symlinks=True)  # the 10 steps of every run are gone from Aim

    done = _cli(aim_h, "status", str(logdir), "--check", project=project)
    assert done.returncode == 1 and done.stdout.count("drifted") == 3, done.stdout + done.stderr
    assert "points gone" in done.stdout, done.stdout

    _append(logdir, truth, project, range(50, 55))
    done = _cli(aim_h, "sync", str(logdir), "--json", project=project)
    assert done.returncode == 0, done.stderr[-3000:]
    d = _dests(done)
    for run in SIMPLE:
        line = d[run].get("drift") or ""
        assert line.startswith("run missing on aim: points gone: run ") and f"('{run}')" in line
        assert "older copy" in line, line
        assert _points(d[run]) == 2 * 55 and d[run]["points_present"] == 2 * 40, d[run]
    _assert_all_once(aim_h, truth, project)
    done = _cli(aim_h, "sync", str(logdir), "--json", project=project)
    assert {x["state"] for x in _dests(done).values()} == {"unchanged"}


def test_reset_and_resync_fill_a_deleted_run_exactly_once(aim_h, tmp_path, project):
    from aim import Repo

    logdir = tmp_path / "logs"
    truth = _logdir(logdir, project)
    done = _cli(aim_h, "sync", str(logdir), project=project)
    assert done.returncode == 0, done.stderr
    assert Repo(aim_h.root).delete_run(_hash(aim_h, project, "run0"))
    # tracelet reset: the checkpoint forgotten, the next sync finds nothing and sends it all
    done = _cli(aim_h, "reset", str(logdir), "run0", project=project)
    assert done.returncode == 0 and "run0 -> aim: checkpoint forgotten" in done.stderr, done.stderr
    done = _cli(aim_h, "sync", str(logdir), "--json", project=project)
    assert done.returncode == 0, done.stderr
    runs = {r["run"]: r["destinations"]["aim"] for r in json.loads(done.stdout)["runs"]}
    assert runs["run0"]["state"] == "synced" and runs["run1"]["state"] == "unchanged"
    _assert_all_once(aim_h, truth, project)
    # sync --resync: every run compared with Aim, the deleted one sent again
    assert Repo(aim_h.root).delete_run(_hash(aim_h, project, f"{project}/rec"))
    done = _cli(aim_h, "sync", str(logdir), "--resync", project=project)
    assert done.returncode == 0, done.stderr
    _assert_all_once(aim_h, truth, project)
    # and once more over a complete repo: nothing doubles
    assert _cli(aim_h, "reset", str(logdir), project=project).returncode == 0
    assert _cli(aim_h, "sync", str(logdir), project=project).returncode == 0
    assert _cli(aim_h, "sync", str(logdir), "--resync", project=project).returncode == 0
    _assert_all_once(aim_h, truth, project)


def _dests(done: subprocess.CompletedProcess) -> dict[str, dict]:
    assert done.returncode == 0, done.stderr
    return {r["run"]: r["destinations"]["aim"] for r in json.loads(done.stdout)["runs"]}


def _points(d: dict) -> int:
    return sum(d["points_sent"].values())


def test_a_resend_of_what_aim_holds_is_confirmed_present_not_synced(aim_h, tmp_path, project):
    """``tracelet reset`` and ``sync --resync`` re-send with dedupe: the points the Aim run
    already holds (its landed record covers them; or, for a file that grew, matched point by
    point) are reported as present (``confirmed N already present``), not as synced; points
    appended since are the only ones synced. Scalars, media, histograms, text and system rows
    alike; read back from the repo with Aim's SDK, every point is there once."""
    logdir = tmp_path / "logs"
    truth = _logdir(logdir, project)
    write_tf2_run(logdir / "keras", "keras", truth)  # images, audio, histograms, text, hparams
    assert _cli(aim_h, "sync", str(logdir), project=project).returncode == 0
    assert _cli(aim_h, "reset", str(logdir), project=project).returncode == 0
    runs = _dests(_cli(aim_h, "sync", str(logdir), "--json", project=project))
    assert set(runs) == {*SIMPLE, f"{project}/rec", "keras"}
    for run, d in runs.items():
        assert d["state"] == "synced" and d["points_present"] == _points(d) > 0, (run, d)
    assert runs[f"{project}/rec"]["points_sent"]["system"] > 0
    assert {"image", "audio", "histogram", "text"} <= set(runs["keras"]["points_sent"])
    _assert_all_once(aim_h, truth, project)

    # sync --resync, as a person reads it
    done = _cli(aim_h, "sync", str(logdir), "--resync", project=project)
    assert done.returncode == 0, done.stderr
    for run in runs:
        n = _points(runs[run])
        assert f"tracelet: {run} -> aim ({aim_h.root}): confirmed {n:,} already present" \
            in done.stderr, done.stderr
    _assert_all_once(aim_h, truth, project)

    # new points since: only they are synced, the rest confirmed (matched one by one: the
    # landed record covers only the file's first part)
    _append(logdir, truth, project, range(40, 50))
    assert _cli(aim_h, "reset", str(logdir), project=project).returncode == 0
    again = _dests(_cli(aim_h, "sync", str(logdir), "--json", project=project))
    for run in (*SIMPLE, f"{project}/rec"):
        d = again[run]
        assert d["points_present"] == _points(d) - 2 * 10 == _points(runs[run]), (run, d)
    done = _cli(aim_h, "sync", str(logdir), "--resync", project=project)
    n = _points(again["run0"])
    assert f"tracelet: run0 -> aim ({aim_h.root}): confirmed {n:,} already present" in done.stderr
    _assert_all_once(aim_h, truth, project)


@pytest.mark.slow
@pytest.mark.server
def test_run_deleted_on_an_aim_server_is_sent_again(aim_server, tmp_path, project):
    from aim import Repo

    h = aim_server.harness()
    url = aim_server.url
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    for k, run in enumerate(SIMPLE):
        write_simple_run(logdir / run, run, truth, ["loss"], list(range(30)), seed=k)
    write_recorded_run(logdir / project / "rec", f"{project}/rec", truth, project)
    assert sync_once(logdir, h, project).exit_code == 0
    run_hash = _hash(h, project, "run0")
    remote = Repo.from_path(url)
    assert remote.delete_run(run_hash)  # through the server, as `aim runs rm` there
    remote = None
    gc.collect()
    for k, run in enumerate(SIMPLE):
        write_simple_run(logdir / run, run, truth, ["loss"], list(range(30, 40)),
                         seed=5 + k, append=True)
    report = sync_once(logdir, h, project)
    assert report.exit_code == 0, report.to_dict()
    drift = _drift(report)
    assert drift["run0"].startswith(f"run missing on aim: run deleted: run {run_hash} ('run0') is no longer in "
                                    f"the Aim repo {url}"), drift
    assert drift["run1"] is None
    index_repo(aim_server.repo)
    repo = Repo(str(aim_server.repo))
    assert_exactly_once(h, truth, project_fn(project))
    assert read_aim_run(repo, run_hash).runs_found == 1
    # no artifact storage on the server: the manifest is in the run's dict instead
    rec = read_aim_run(repo, _hash(h, project, f"{project}/rec")).aim_run
    manifest = rec["tracelet"]["manifest"]
    assert manifest["run_id"] == f"rid-{project}-rec" and manifest["tags"] == {"team": "vision"}
    assert list(rec.artifacts) == []
