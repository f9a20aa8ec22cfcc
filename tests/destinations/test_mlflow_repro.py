"""What reproduces a run, in MLflow's own fields (issue #11): a training script in a git
repository (a commit, a remote with credentials in its URL, a dirty tracked file) run as
``python train.py --lr 0.1 ...`` with ``tracelet.start_logging`` and torch's ``SummaryWriter()``,
then ``tracelet sync`` to MLflow, read back with ``MlflowClient``: the git commit, branch and
remote (without its credentials), the dirty flag and the diff, the command, user, host and
Python, the packages, start and end times from the run (not the sync's), params, and the
redacted manifest as ``tracelet/tracelet.json``. Also ``--experiment`` and
``MLFLOW_EXPERIMENT_NAME`` (which never change the checkpoint's target)."""
from __future__ import annotations

import getpass
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests.destinations.recorded_repo import API_KEY, SECRET, git, record_in_repo
from tracelet.manifest import manifest_time
from tracelet.testing.events import T0, scalar_event, version_event, write_frames


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """(logdir, run dir, repo, argv): one training run, recorded once for every test here."""
    return record_in_repo(tmp_path_factory.mktemp("repo"), "mlflow")


def _sync(logdir: Path, uri: str, *extra: str, env: dict | None = None) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tracelet.cli", "sync", str(logdir), "--to",
                           "mlflow", "--json", *extra],
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri, **(env or {})},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _run(uri: str, experiment: str):
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None, [e.name for e in c.search_experiments()]
    (r,) = c.search_runs([exp.experiment_id])
    return c, r


def _artifact(c, run_id: str, path: str, dest: Path) -> str:
    return Path(c.download_artifacts(run_id, path, str(dest))).read_text()


@pytest.mark.slow  # a real training process (torch) and CLI syncs
def test_a_recorded_run_carries_what_reproduces_it(recorded, tmp_path):
    logdir, run_dir, repo, argv = recorded
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _sync(logdir, uri)
    c, r = _run(uri, "repro")
    tags = r.data.tags
    manifest = json.loads((run_dir / "tracelet.json").read_text())

    assert tags["mlflow.source.git.commit"] == git(repo, "rev-parse", "HEAD")
    assert tags["mlflow.source.git.branch"] == "main"
    assert tags["mlflow.source.git.repoURL"] == "https://example.com/org/repo.git"
    assert tags["tracelet.git.dirty"] == "true"
    assert tags["mlflow.source.name"] == "train.py"
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.user"] == getpass.getuser()
    # the display name: the run path less its project (README "Run names")
    assert run_dir.relative_to(logdir).as_posix() == "repro/baseline"
    assert tags["mlflow.runName"] == r.info.run_name == "baseline"
    assert tags["tracelet.host"] == socket.gethostname()
    assert tags["tracelet.python"] == platform.python_version()
    assert tags["tracelet.command"] == shlex.join([*argv[:-1], "***REDACTED***"])
    assert tags["tracelet.run_id"] == manifest["run_id"]
    # start and end: the training's, from the manifest (the sync ran after it)
    assert r.info.start_time == int(manifest_time(manifest["started_at"]) * 1000)
    assert r.info.end_time == int(manifest_time(manifest["ended_at"]) * 1000)
    assert r.info.status == "FINISHED"
    assert r.data.params["lr"] == "0.1" and r.data.params["batch_size"] == "32"
    assert r.data.params["api_key"] == "***REDACTED***"
    assert [m.step for m in c.get_metric_history(r.info.run_id, "Loss/train")] == list(range(5))

    diff = _artifact(c, r.info.run_id, "git_diff.patch", tmp_path / "dl")
    assert "-DEPTH = 50" in diff and "+DEPTH = 101" in diff
    reqs = _artifact(c, r.info.run_id, "tracelet/requirements.txt", tmp_path / "dl")
    assert f"torch=={metadata.version('torch')}\n" in reqs
    assert f"mlflow=={metadata.version('mlflow')}\n" in reqs
    doc_text = _artifact(c, r.info.run_id, "tracelet/tracelet.json", tmp_path / "dl")
    doc = json.loads(doc_text)
    assert doc["run_id"] == manifest["run_id"] and doc["git"]["commit"] == tags["mlflow.source.git.commit"]
    assert doc["git"]["remote"] == "https://example.com/org/repo.git"
    assert doc["params"]["api_key"] == "***REDACTED***" and doc["params"]["lr"] == 0.1
    assert doc["command"][-1] == "***REDACTED***"
    everything = json.dumps(tags) + doc_text + json.dumps(r.data.params)
    assert SECRET not in everything and API_KEY not in everything

    # a later change of what the tags come from is applied (set-if-different)
    manifest["user"] = "someone-else"
    (run_dir / "tracelet.json").write_text(json.dumps(manifest))
    report = _sync(logdir, uri)
    assert report["runs"][0]["destinations"]["mlflow"]["state"] == "synced"
    c, r2 = _run(uri, "repro")
    assert r2.info.run_id == r.info.run_id and r2.data.tags["mlflow.user"] == "someone-else"
    doc = json.loads(_artifact(c, r.info.run_id, "tracelet/tracelet.json", tmp_path / "dl2"))
    assert doc["user"] == "someone-else"  # the manifest artifact follows it (same name)
    names = [a.path for a in c.list_artifacts(r.info.run_id, "tracelet")]
    assert names == ["tracelet/requirements.txt", "tracelet/tracelet.json"]


@pytest.mark.slow
def test_experiment_option_and_environment(recorded, tmp_path):
    from tracelet.destinations import target_key

    logdir, _, _, _ = recorded
    state = tmp_path / "state"
    # MLFLOW_EXPERIMENT_NAME replaces the project as the experiment...
    uri = f"sqlite:///{tmp_path / 'env.db'}"
    _sync(logdir, uri, "--state-dir", str(state / "a"), env={"MLFLOW_EXPERIMENT_NAME": "from-env"})
    c, r = _run(uri, "from-env")
    assert c.get_experiment_by_name("repro") is None
    # ...and --experiment replaces both
    uri = f"sqlite:///{tmp_path / 'opt.db'}"
    _sync(logdir, uri, "--experiment", "from-flag", "--state-dir", str(state / "b"),
          env={"MLFLOW_EXPERIMENT_NAME": "from-env"})
    c, r = _run(uri, "from-flag")
    assert c.get_experiment_by_name("from-env") is None and c.get_experiment_by_name("repro") is None
    assert r.data.tags["tracelet.run_path"] == "repro/baseline"
    # the experiment is not the target: the same checkpoint folder either way
    assert target_key("mlflow", {"mlflow_uri": uri, "mlflow_experiment": "x"}) == \
        target_key("mlflow", {"mlflow_uri": uri})
    (folder,) = (state / "b").glob("*/checkpoints/mlflow-*")  # <logdir name>-<hash>/
    assert folder.name == target_key("mlflow", {"mlflow_uri": uri})


def test_a_plain_tensorboard_run_starts_at_its_first_event(tmp_path):
    """No manifest to say when it started: the wall time of its first event file's first record
    (the writer's file_version event), not the time of the sync nor of a later file."""
    run = tmp_path / "logs" / "plain"
    write_frames(run / "events.out.tfevents.1700000000.host.1.0",
                 [version_event(T0 + 7), scalar_event("loss", 0, 1.0, wall=T0 + 51)])
    write_frames(run / "events.out.tfevents.1700000999.host.1.1",
                 [version_event(T0 + 50), scalar_event("loss", 1, 0.5, wall=T0 + 60)])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _sync(tmp_path / "logs", uri, "--project", "plain")
    c, r = _run(uri, "plain")
    assert r.info.start_time == int((T0 + 7) * 1000)
    assert r.info.run_name == r.data.tags["mlflow.runName"] == "plain"
    assert sorted(m.step for m in c.get_metric_history(r.info.run_id, "loss")) == [0, 1]
