"""A plain run's identity does not depend on the LOGDIR level it is synced from (README "Run
names and identity").

The same TensorBoard files synced as ``tracelet sync sub`` (run ``exp/r1``, experiment
``sub``), then ``sub/exp`` (``r1``, experiment ``exp``), then ``sub/exp/r1`` (``r1``,
experiment ``r1``) — each with its own state dir, so no checkpoint links them — land in ONE
MLflow run, each point exactly once, read back from MLflow's real sqlite store with its own
client; each level reached under another name says so in one warning line. A sibling run whose
files start with the very same bytes (the fixtures write one file name and header for every
run) stays its own run.
"""
from __future__ import annotations

import os
import subprocess
import sys

from tests.destinations.harness_mlflow import MlflowLocalHarness
from tests.destinations.identity_scenarios import (TAGS, same_source_lines,
                                                 sync_project_given, sync_same_head_apart)
from tracelet.testing.conformance import assert_exactly_once, project_fn
from tracelet.testing.sources import SourceTruth, write_simple_run



def _all_runs(uri: str) -> list:
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exps = [e.experiment_id for e in c.search_experiments()]
    return c.search_runs(exps)



def test_three_levels_of_one_run_are_one_mlflow_run_with_each_point_once(tmp_path, monkeypatch):
    import tracelet

    harness = MlflowLocalHarness()
    config = harness.config = harness.setup(tmp_path, monkeypatch)
    sub = tmp_path / "sub"
    r1, r2 = sub / "exp" / "r1", sub / "exp" / "r2"
    truth = SourceTruth()  # named as first synced: from `sub`
    write_simple_run(r1, "exp/r1", truth, TAGS, list(range(0, 30)), seed=1)
    write_simple_run(r2, "exp/r2", truth, TAGS, list(range(0, 20)), seed=2)

    first = tracelet.sync(sub, to="mlflow", dest_config=config)
    assert first.exit_code == 0, first.to_dict()
    assert not any(same_source_lines(r.problems) for r in first.runs)
    assert_exactly_once(harness, truth, project_fn("sub"))

    # the files grow (the identity is their first record: unchanged), then the sync is pointed
    # one level lower, through the command line as cron runs it
    write_simple_run(r1, "exp/r1", truth, TAGS, list(range(30, 45)), seed=1, append=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run([sys.executable, "-m", "tracelet.cli", "sync", str(sub / "exp"),
                        "--to", "mlflow", "--mlflow-uri", harness.uri],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    # cron lines start with an ISO timestamp (README "Command line")
    warned = [ln.split(" ", 1)[1] for ln in p.stderr.splitlines() if "is the same source as" in ln]
    assert sorted(warned) == [
        "tracelet: r1: mlflow: run 'r1' (project 'exp') is the same source as 'exp/r1' in "
        "experiment 'sub' (same first event file): continued in that run, nothing sent twice; a "
        "plain run's name is its path under the LOGDIR given, so sync the same LOGDIR to keep "
        "one name",
        "tracelet: r2: mlflow: run 'r2' (project 'exp') is the same source as 'exp/r2' in "
        "experiment 'sub' (same first event file): continued in that run, nothing sent twice; a "
        "plain run's name is its path under the LOGDIR given, so sync the same LOGDIR to keep "
        "one name"], p.stderr

    write_simple_run(r1, "exp/r1", truth, TAGS, list(range(45, 50)), seed=1, append=True)
    third = tracelet.sync(r1, to="mlflow", dest_config=config)
    assert third.exit_code == 0, third.to_dict()
    [run] = third.runs
    assert run.run == "r1" and run.destinations["mlflow"].state == "synced"
    [line] = same_source_lines(run.problems)
    assert "run 'r1' (project 'r1')" in line and "as 'exp/r1' in experiment 'sub'" in line

    # ONE MLflow run per source, in the experiment of the first sync; no empty experiments
    from mlflow import MlflowClient

    runs = _all_runs(harness.uri)
    assert sorted(r.data.tags["tracelet.run_path"] for r in runs) == ["exp/r1", "exp/r2"]
    client = MlflowClient(tracking_uri=harness.uri)
    assert client.get_experiment_by_name("exp") is None
    assert client.get_experiment_by_name("r1") is None
    assert_exactly_once(harness, truth, project_fn("sub"))

    # the next sync from that level continues from its checkpoint: no warning, no rebuild
    write_simple_run(r1, "exp/r1", truth, TAGS, list(range(50, 60)), seed=1, append=True)
    again = tracelet.sync(r1, to="mlflow", dest_config=config)
    assert again.exit_code == 0 and not again.runs[0].problems, again.to_dict()
    assert again.runs[0].destinations["mlflow"].points == 2 * 10
    assert len(_all_runs(harness.uri)) == 2
    assert_exactly_once(harness, truth, project_fn("sub"))


def test_runs_with_the_same_head_under_unrelated_names_stay_apart(tmp_path, monkeypatch):
    """Two folders whose first event file is byte-for-byte the same start (a copied template)
    but whose names are not two levels of one path are two runs, as before."""
    harness = MlflowLocalHarness()
    harness.config = harness.setup(tmp_path, monkeypatch)
    truth = sync_same_head_apart(tmp_path, "mlflow", harness)
    assert sorted(r.data.tags["tracelet.run_path"] for r in _all_runs(harness.uri)) \
        == ["r1", "r1x"]
    assert_exactly_once(harness, truth, project_fn("same"))


def test_a_project_given_is_where_the_run_is_looked_for(tmp_path, monkeypatch):
    """With --project (or a manifest project) the level changes the run path only: the run is
    found by source id in that project; in another project given it is a run of its own."""
    from mlflow import MlflowClient

    harness = MlflowLocalHarness()
    harness.config = harness.setup(tmp_path, monkeypatch)
    sync_project_given(tmp_path, "mlflow", harness, projects=("P", "Q"), container="experiment")
    c = MlflowClient(tracking_uri=harness.uri)
    assert sorted((c.get_experiment(r.info.experiment_id).name, r.data.tags["tracelet.run_path"])
                  for r in _all_runs(harness.uri)) == [("P", "exp/r1"), ("Q", "r1")]
