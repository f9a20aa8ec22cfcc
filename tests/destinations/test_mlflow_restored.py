"""MLflow: a store restored from an older copy (a database backup put back) keeps the run — same
id, same tags — but not the points sent since; the checkpoint's sentinel point finds it
(destinations/mlflow/sentinel.py), the run is re-sent whole with dedupe. A module of its own so
that the test runner gives it a worker apart from test_mlflow_drift.py (whose fixtures it uses).
"""
from __future__ import annotations

from tests.destinations.test_mlflow_drift import (PROJECT, _Readback, grow, mlflow_runs, sent,
                                                  store, sync, tracelet)
from tracelet.testing.conformance import assert_exactly_once, project_fn
from tracelet.testing.sources import build_kill_logdir

__all__ = ["store"]  # the fixture, imported for pytest


def test_a_store_restored_from_an_older_copy_is_drift_and_nothing_is_lost(store, tmp_path):
    """The run is still there (same id, same tags) but the points sent after the backup are
    not: the checkpoint's sentinel point is missing from MLflow's latest metrics, so the next
    sync re-sends the whole run deduplicated, and `status --check` says so meanwhile."""
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=2, steps=60)
    sync(store, logdir)
    copy = store.backup()
    grow(logdir, truth, runs=("run0", "run1"))
    assert sent(sync(store, logdir)["run0"]) == 30
    store.restore(copy)  # the 15 steps of each run sent since are gone from MLflow
    (r0,) = mlflow_runs(store, "run0")
    assert len(store.client().get_metric_history(r0.info.run_id, "loss")) == 60

    proc = tracelet(store, "status", str(logdir), "--to", "mlflow", "--project", PROJECT,
                    "--check")
    assert proc.returncode == 1 and proc.stdout.count("drifted") == 2, proc.stdout + proc.stderr
    assert "points gone" in proc.stdout, proc.stdout

    grow(logdir, truth, runs=("run0",), start=75)  # run0 changes: opened, the loss found
    d = sync(store, logdir)
    line = d["run0"].get("drift") or ""
    assert line.startswith(f"run missing on mlflow: points gone at {store.uri}: MLflow run "
                           f"{r0.info.run_id} no longer holds metric "), d["run0"]
    assert "older copy" in line
    assert sent(d["run0"]) == 2 * 90 and d["run0"]["points_present"] == 2 * 60, d["run0"]
    assert [r.info.run_id for r in mlflow_runs(store, "run0")] == [r0.info.run_id]
    # run1 did not change: not opened (stat-only), its loss found by --check or --resync
    assert d["run1"]["state"] == "unchanged"
    d = sync(store, logdir, "--resync")
    assert_exactly_once(_Readback(store.uri), truth, project_fn(PROJECT))
    d = sync(store, logdir)
    assert {d[r]["state"] for r in d} == {"unchanged"} and not any(d[r].get("drift") for r in d)


def test_sentinel_rules_over_untrusted_checkpoints():
    from types import SimpleNamespace as NS

    from mlflow.entities import Metric

    from tracelet.destinations.mlflow.sentinel import sentinel_gone, sentinel_of

    ms = [Metric("loss", 1.0, 1000, 5), Metric("acc", float("nan"), 9000, 9),
          Metric("acc", 0.5, 2000, 5), Metric("lr", float("inf"), 9999, 99)]
    assert sentinel_of(ms) == ["acc", 5, 2000]  # highest (step, ms) of a finite value
    assert sentinel_of([Metric("a", float("nan"), 1, 1)]) is None
    run = NS(data=NS(_metric_objs=[Metric("acc", 0.1, 2000, 5), Metric("loss", 2.0, 900, 7)]))
    assert sentinel_gone(run, ["acc", 5, 2000]) is None
    assert sentinel_gone(run, ["loss", 7, 800]) is None  # a later point of the key: held
    assert "at step 7" in sentinel_gone(run, ["loss", 7, 901])
    assert "no such metric" in sentinel_gone(run, ["gone", 1, 1])
    for bad in (None, "x", [], ["acc", 5], ["acc", "5", 2000], [1, 2, 3], ["acc", True, 1],
                ["acc", 5, 2000.0], {"k": 1}):
        assert sentinel_gone(run, bad) is None, bad  # an older or damaged checkpoint: no verdict
    assert sentinel_gone(NS(data=NS()), ["acc", 5, 2000]) is None  # another MLflow
