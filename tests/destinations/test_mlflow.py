"""MLflow-specific behaviour: a tracking server killed mid-sync and restarted, tag mapping,
write-once params, runs found again by tag."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.destinations.harness_mlflow import MlflowServer, free_port
from tracelet.destinations.mlflow import mlflow_key
from tracelet.testing.conformance import assert_exactly_once, project_fn
from tracelet.testing.sources import build_kill_logdir

pytestmark = pytest.mark.server


class _ServerHarness:
    """Just enough of a harness for assert_exactly_once against a given server URI."""

    name = "mlflow"
    label = "mlflow-own-server"

    def __init__(self, uri: str):
        from tests.destinations.harness_mlflow import MlflowServerHarness

        self._h = MlflowServerHarness()
        self._h.uri = uri

    def read_back(self, project, run_path):
        return self._h.read_back(project, run_path)

    def metric_key(self, tag):
        return mlflow_key(tag)


def test_tag_mapping_is_identity_when_valid_and_documented_otherwise():
    assert mlflow_key("Loss/Train/CrossEntropy") == "Loss/Train/CrossEntropy"
    assert mlflow_key("Metrics/Accuracy/Validation") == "Metrics/Accuracy/Validation"
    # rewritten tags end in -<8 hex of the tag's SHA-1> (keys.py): never two tags on one key
    from tracelet.destinations.keys import tag_hash

    assert mlflow_key("weird tag:with%chars") == "weird tag:with_chars-" + tag_hash("weird tag:with%chars")
    assert mlflow_key("a//b/./c") == "a/b/c-" + tag_hash("a//b/./c")
    assert mlflow_key("/lead/") == "lead-" + tag_hash("/lead/")
    assert mlflow_key("ünïcode") == "ünïcode"  # \w is Unicode-aware, MLflow accepts it
    long = mlflow_key("x" * 400)
    assert len(long) == 250 and long != mlflow_key("x" * 401)


def test_server_killed_mid_sync_then_restarted_resync_is_exact(tmp_path):
    aim_available = True
    try:
        import aim  # noqa: F401
        from tracelet.destinations import aim as _aim  # noqa: F401
    except Exception:
        aim_available = False
    port = free_port()
    server = MlflowServer(tmp_path / "server", port).start()
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=3, steps=1500)
    project = "killed-server"
    dests = "mlflow,aim" if aim_available else "mlflow"
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri, "TRACELET_BATCH_POINTS": "200",
           "TRACELET_RETRY_ATTEMPTS": "3", "TRACELET_RETRY_BASE_DELAY_S": "0.2"}
    cmd = [sys.executable, "-m", "tracelet.cli", "sync", str(logdir), "--to", dests,
           "--project", project, "--json", "--aim-repo", str(tmp_path / "aimrepo")]
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        ckdir = logdir / ".tracelet" / "checkpoints"
        while time.monotonic() < deadline and proc.poll() is None:
            mlflow_cks = list(ckdir.glob("mlflow-*/*.json")) if ckdir.exists() else []
            if mlflow_cks:
                break
            time.sleep(0.05)
        server.stop(signal.SIGKILL)  # the tracking server dies mid-sync
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, err[-3000:]  # mlflow failed; the sync did not crash
        report = json.loads(out)
        mlflow_states = {r["destinations"]["mlflow"]["state"] for r in report["runs"]}
        assert "failed" in mlflow_states, report
        if aim_available:  # the other destination is unaffected: every run synced
            assert {r["destinations"]["aim"]["state"] for r in report["runs"]} == {"synced"}, report
        server = MlflowServer(tmp_path / "server", port).start()  # same port, same database
        proc2 = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc2.returncode == 0, proc2.stderr[-3000:]
        assert_exactly_once(_ServerHarness(server.uri), truth, project_fn(project))
    finally:
        server.stop()


def test_destination_down_from_the_start_fails_alone(tmp_path):
    logdir = tmp_path / "logs"
    build_kill_logdir(logdir, runs=1, steps=10)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
           "TRACELET_RETRY_ATTEMPTS": "2", "TRACELET_RETRY_BASE_DELAY_S": "0.1"}
    proc = subprocess.run([sys.executable, "-m", "tracelet.cli", "sync", str(logdir), "--to",
                           "mlflow", "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    err = report["runs"][0]["destinations"]["mlflow"]["error"]
    assert "mlflow" in err and "retried at the next sync" in err, err


def test_changed_param_is_reported_not_raised(tmp_path, monkeypatch):
    from tracelet.engine import SyncOptions, run_sync

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run = tmp_path / "logs" / "p" / "r"
    build_kill_logdir(run.parent, runs=1, steps=5)
    rundir = run.parent / "run0"
    manifest = {"run_id": "abc", "project": "p", "params": {"lr": 0.1}, "status": "running"}
    (rundir / "tracelet.json").write_text(json.dumps(manifest))
    opts = SyncOptions(destinations=["mlflow"], progress=False)
    assert run_sync([str(tmp_path / "logs")], opts).exit_code == 0
    manifest["params"]["lr"] = 0.2
    manifest["status"] = "finished"
    manifest["ended_at"] = time.time()
    (rundir / "tracelet.json").write_text(json.dumps(manifest))
    report = run_sync([str(tmp_path / "logs")], opts)
    assert report.exit_code == 0
    d = report.runs[0].destinations["mlflow"]
    assert any("lr" in c for c in d.param_conflicts), d
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    r = c.search_runs([c.get_experiment_by_name("p").experiment_id])[0]
    assert r.data.params["lr"] == "0.1" and r.info.status == "FINISHED"
    assert r.data.tags["tracelet.run_id"] == "abc"
