"""MLflow drift: a run deleted in MLflow, a store wiped (the sqlite file removed, a server's
database replaced), rows lost — each followed by a sync that finds the loss, says so in the
report (``destinations["mlflow"].drift``) and leaves every source point in MLflow exactly once;
``tracelet reset`` and ``sync --resync`` after rows were deleted; ``check_run``.

Syncs run as ``tracelet sync`` subprocesses, as cron runs them: MLflow caches its sqlite store
per process, so a file removed under a live process would not look wiped to it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.destinations.harness_mlflow import MlflowServer, free_port
from tracelet.destinations.mlflow import mlflow_key
from tracelet.testing.conformance import assert_exactly_once, project_fn
from tracelet.testing.sources import build_kill_logdir, write_simple_run

PROJECT = "drift"


class _Readback:
    """Just enough of a harness for assert_exactly_once against a tracking URI."""

    name = "mlflow"

    def __init__(self, uri: str):
        from tests.destinations.harness_mlflow import MlflowLocalHarness

        self._h = MlflowLocalHarness()
        self._h.uri = uri
        self.label = uri

    def read_back(self, project, run_path):
        return self._h.read_back(project, run_path)

    def metric_key(self, tag):
        return mlflow_key(tag)


class Store:
    """A real MLflow store: the local sqlite file, or an `mlflow server` on its own sqlite."""

    def __init__(self, kind: str, root: Path):
        self.kind, self.root = kind, root
        self.server: MlflowServer | None = None
        if kind == "server":
            self.server = MlflowServer(root / "server", free_port()).start()
            self.uri = self.server.uri
        else:
            self.uri = f"sqlite:///{root / 'mlflow.db'}"

    def wipe(self) -> None:
        """Remove the database (the server: stopped, database deleted, restarted on its port)."""
        if self.server is None:
            (self.root / "mlflow.db").unlink()
            return
        port = self.server.port
        self.server.stop()
        (self.root / "server" / "mlflow.db").unlink()
        shutil.rmtree(self.root / "server" / "artifacts", ignore_errors=True)
        self.server = MlflowServer(self.root / "server", port).start()

    def _db(self) -> Path:
        return self.root / ("server" if self.server is not None else "") / "mlflow.db"

    def backup(self) -> Path:
        """A copy of the database as it is now (what a nightly backup holds)."""
        copy = self.root / "mlflow.db.backup"
        shutil.copyfile(self._db(), copy)
        return copy

    def restore(self, copy: Path) -> None:
        """The database put back from ``copy`` (the server: stopped, restored, restarted)."""
        if self.server is None:
            shutil.copyfile(copy, self._db())
            return
        port = self.server.port
        self.server.stop()
        shutil.copyfile(copy, self._db())
        self.server = MlflowServer(self.root / "server", port).start()

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


@pytest.fixture(params=["sqlite", pytest.param("server", marks=[pytest.mark.server,
                                                                 pytest.mark.slow])])
def store(request, tmp_path):
    s = Store(request.param, tmp_path)
    yield s
    s.close()


def tracelet(store: Store, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.uri}
    return subprocess.run([sys.executable, "-m", "tracelet.cli", *args], env=env,
                          capture_output=True, text=True, timeout=600)


def sync(store: Store, logdir: Path, *extra: str) -> dict:
    proc = tracelet(store, "sync", str(logdir), "--to", "mlflow", "--project", PROJECT, "--json",
                    *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {r["run"]: r["destinations"]["mlflow"] for r in json.loads(proc.stdout)["runs"]}


def sent(dest: dict) -> int:
    return sum(dest["points_sent"].values())


def mlflow_runs(store: Store, run_path: str, deleted: bool = False) -> list:
    from mlflow.entities import ViewType

    c = store.client()
    exp = c.get_experiment_by_name(PROJECT)
    if exp is None:
        return []
    return c.search_runs([exp.experiment_id], f"tags.`tracelet.run_path` = '{run_path}'",
                         run_view_type=ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY)


def grow(logdir: Path, truth, runs=("run0",), start: int = 60) -> None:
    for r in runs:
        write_simple_run(logdir / r, r, truth, ["loss", "acc"], list(range(start, start + 15)),
                         seed=9, append=True)


def test_a_run_deleted_in_mlflow_is_drift_and_resent_to_a_new_run(store, tmp_path):
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=2, steps=60)
    sync(store, logdir)
    (old,) = mlflow_runs(store, "run0")
    store.client().delete_run(old.info.run_id)  # the user deleted it in the UI
    grow(logdir, truth)

    d = sync(store, logdir)
    assert d["run0"]["drift"] and d["run0"]["drift"].startswith("run missing on mlflow: deleted at "), d["run0"]
    assert old.info.run_id in d["run0"]["drift"] and store.uri in d["run0"]["drift"]
    assert "new run" in d["run0"]["drift"]
    assert d["run1"]["state"] == "unchanged" and not d["run1"].get("drift")
    assert_exactly_once(_Readback(store.uri), truth, project_fn(PROJECT))
    (new,) = mlflow_runs(store, "run0")
    assert new.info.run_id != old.info.run_id
    # what the user deleted stays deleted: not restored, not written to
    (still,) = mlflow_runs(store, "run0", deleted=True)
    assert still.info.run_id == old.info.run_id
    assert len(store.client().get_metric_history(old.info.run_id, "loss")) == 60
    d = sync(store, logdir)
    assert d["run0"]["state"] == "unchanged" and not d["run0"].get("drift")


def test_a_wiped_store_is_drift_and_every_run_lands_again(store, tmp_path):
    from tracelet.destinations.base import RunRef
    from tracelet.destinations.mlflow.client import MlflowDestination

    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=2, steps=60)
    sync(store, logdir)
    ck = json.loads(next((logdir / ".tracelet" / "checkpoints").glob("mlflow-*/run0.json"))
                    .read_text())
    store.wipe()
    if store.server is not None:  # status --check's call, against the restarted server
        dest = MlflowDestination({"mlflow_uri": store.uri})
        ref = RunRef(run_id=ck["run_id"], run_path="run0", project=PROJECT, source_dir=logdir)
        assert "store wiped" in dest.check_run(ref, ck["identity"])
    grow(logdir, truth, runs=("run0", "run1"))

    d = sync(store, logdir)
    for run in ("run0", "run1"):
        assert (d[run].get("drift") or "").startswith("run missing on mlflow: store wiped at "), \
            d[run]
        assert store.uri in d[run]["drift"]
        assert sent(d[run]) == 2 * 75  # the whole run again, not only the new points
    assert_exactly_once(_Readback(store.uri), truth, project_fn(PROJECT))
    assert sync(store, logdir)["run0"]["state"] == "unchanged"


def _delete_metric_rows(db: Path, run_id: str, below_step: int) -> int:
    """Lose data the way a store does: rows deleted from MLflow's own tables (latest_metrics
    too, so MLflow's view of the run stays consistent)."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    s = SqlAlchemyStore(f"sqlite:///{db}", str(db.parent / "mlartifacts"))
    with s.ManagedSessionMaker() as session:
        n = session.query(SqlMetric).filter(SqlMetric.run_uuid == run_id,
                                            SqlMetric.step < below_step).delete()
        session.query(SqlLatestMetric).filter(SqlLatestMetric.run_uuid == run_id).delete()
    s.engine.dispose()
    return n


def test_reset_and_resync_put_back_what_mlflow_lost_and_nothing_twice(tmp_path):
    store = Store("sqlite", tmp_path)
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=3, steps=50)
    sync(store, logdir)
    (r0,) = mlflow_runs(store, "run0")
    assert _delete_metric_rows(tmp_path / "mlflow.db", r0.info.run_id, 30) == 60
    assert sync(store, logdir)["run0"]["state"] == "unchanged"  # stat-only: the loss is unseen
    proc = tracelet(store, "reset", str(logdir), "run0", "--to", "mlflow")
    assert proc.returncode == 0 and "checkpoint forgotten" in proc.stderr, proc.stderr
    d = sync(store, logdir)
    assert sent(d["run0"]) == 100 and d["run1"]["state"] == "unchanged"
    assert_exactly_once(_Readback(store.uri), truth, project_fn(PROJECT))
    assert [r.info.run_id for r in mlflow_runs(store, "run0")] == [r0.info.run_id]

    # --resync, without touching the state: every run compared with what MLflow holds
    (r1,) = mlflow_runs(store, "run1")
    assert _delete_metric_rows(tmp_path / "mlflow.db", r1.info.run_id, 10) == 20
    d = sync(store, logdir, "--resync")
    assert {d[r]["state"] for r in d} == {"synced"}
    # what MLflow already held is reported as present ("confirmed N already present"), the
    # 20 deleted rows as sent again
    assert d["run1"]["points_present"] == sent(d["run1"]) - 20 > 0, d["run1"]
    assert d["run0"]["points_present"] == sent(d["run0"]) > 0, d["run0"]
    assert_exactly_once(_Readback(store.uri), truth, project_fn(PROJECT))

    # reset of a run deleted in MLflow: a new run gets all of it
    (r2,) = mlflow_runs(store, "run2")
    store.client().delete_run(r2.info.run_id)
    assert tracelet(store, "reset", str(logdir), "--to", "mlflow").returncode == 0
    d = sync(store, logdir)
    assert sent(d["run2"]) == 100
    assert_exactly_once(_Readback(store.uri), truth, project_fn(PROJECT))
    (new,) = mlflow_runs(store, "run2")
    assert new.info.run_id != r2.info.run_id


def test_check_run_finds_deleted_replaced_missing_and_wiped_runs(tmp_path):
    from tracelet.destinations.base import RunRef
    from tracelet.destinations.mlflow.client import MlflowDestination

    store = Store("sqlite", tmp_path)
    logdir = tmp_path / "logs"
    build_kill_logdir(logdir, runs=2, steps=5)
    sync(store, logdir)
    folder = next((logdir / ".tracelet" / "checkpoints").glob("mlflow-*"))
    ck0, ck1 = (json.loads((folder / f"run{i}.json").read_text()) for i in (0, 1))
    dest = MlflowDestination({"mlflow_uri": store.uri})
    ref0 = RunRef(run_id=ck0["run_id"], run_path="run0", project=PROJECT, source_dir=logdir / "run0")
    assert dest.check_run(ref0, ck0["identity"]) is None
    replaced = dest.check_run(ref0, ck1["identity"])  # names run1's MLflow run
    assert replaced.startswith("run missing on mlflow: replaced at ") and ck0["run_id"] in replaced
    missing = dest.check_run(ref0, {**ck0["identity"], "run_id": "0" * 32})
    assert missing.startswith("run missing on mlflow: gone from ") and store.uri in missing
    assert dest.check_run(ref0, None).startswith("run missing on mlflow: the checkpoint names no")
    assert dest.check_run(ref0, {"run_id": "../../etc"}).startswith(
        "run missing on mlflow: the checkpoint names no")
    store.client().delete_run(ck0["identity"]["run_id"])
    deleted = dest.check_run(ref0, ck0["identity"])
    assert deleted.startswith("run missing on mlflow: deleted at ") and ck0["identity"]["run_id"] in deleted
    runs_before = len(mlflow_runs(store, "run0")) + len(mlflow_runs(store, "run0", deleted=True))
    assert runs_before == 1  # checking created nothing
    (tmp_path / "mlflow.db").unlink()
    wiped = dest.check_run(ref0, ck0["identity"])
    assert wiped.startswith("run missing on mlflow: store wiped at ") and store.uri in wiped
    assert not (tmp_path / "mlflow.db").exists()  # not even an empty database

