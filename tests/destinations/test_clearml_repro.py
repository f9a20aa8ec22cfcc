"""ClearML: what reproduces a recorded run lands where ClearML's own ``Task.init`` puts it.

One run recorded for real (``tests.destinations.recorded_repo``, shared with the MLflow and Aim
tests): a git repository made here (a commit, a remote with credentials, a dirty tracked file),
a training script run as a subprocess in the repo's ``src`` folder (``python train.py --lr 0.1
--api-key <key>``) that calls ``tracelet.start_logging`` and writes with torch's
``SummaryWriter()``; synced offline; the session's ``task.json`` read back as a file and through
ClearML's own data model (what ClearML's offline ``Task`` loads, and what its importer sends)."""
from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import zipfile
from datetime import datetime

import pytest

from tests.destinations.harness_clearml import ClearmlOfflineHarness
from tests.destinations.recorded_repo import API_KEY, SECRET, git, record_in_repo
from tracelet.destinations.clearml.repro import locate_script
from tracelet.engine import SyncOptions, run_sync

@pytest.fixture
def cml(tmp_path, monkeypatch):
    h = ClearmlOfflineHarness()
    h.config = h.setup(tmp_path, monkeypatch)
    return h


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """(logdir, run dir, repo, argv, commit): one training run (``repro/baseline``) recorded
    once for every test here, run in the repo's ``src`` folder; the training sees none of the
    CLEARML_/TRACELET_ variables of the test."""
    drop = tuple(k for k in os.environ if k.startswith(("CLEARML_", "TRACELET_")))
    logdir, run_dir, repo, argv = record_in_repo(tmp_path_factory.mktemp("repo"), "clearml",
                                                 drop_env=drop, subdir="src")
    return logdir, run_dir, repo, argv, git(repo, "rev-parse", "HEAD")


def _sync(logdir, h, **kw):
    return run_sync([str(logdir)], SyncOptions(destinations=["clearml"], dest_config=dict(h.config),
                                               progress=False, **kw))


def test_a_recorded_run_carries_what_reproduces_it(cml, recorded):
    logdir, run_dir, repo, argv, commit = recorded
    report = _sync(logdir, cml)
    assert report.exit_code == 0, report.to_dict()
    (session,) = cml.sessions("repro", "repro/baseline")
    doc = session.doc
    manifest = json.loads((run_dir / "tracelet.json").read_text())

    # the execution section, as Task.init fills it
    script = doc["script"]
    assert script["repository"] == "https://example.com/org/repo.git"  # no credentials
    assert SECRET not in json.dumps(doc) and API_KEY not in json.dumps(doc)
    assert script["branch"] == "main"
    assert script["version_num"] == commit
    diff = (run_dir / "artifacts" / "git_diff.patch").read_text()
    assert "+DEPTH = 101" in diff and script["diff"] == diff
    assert script["working_dir"] == "src"  # the folder it ran in, relative to the repository
    assert script["entry_point"] == "train.py"
    assert script["binary"] == "python%d.%d" % sys.version_info[:2]
    pip = script["requirements"]["pip"]
    assert pip.startswith(f"# Python {manifest['env']['python']}\n\n")
    import torch

    assert f"torch=={torch.__version__}\n" in pip
    assert script["requirements"]["conda"] == ""

    # machine and run: ClearML's runtime properties (INFO), plus user and the source's times
    rt = doc["runtime"]
    assert rt["hostname"] == socket.gethostname()
    assert rt["python_version"] == manifest["env"]["python"]
    assert rt["python_exec"] == manifest["env"]["executable"]
    assert rt["OS"] == manifest["env"]["platform"]
    assert rt["cpu_cores"] == os.cpu_count()
    assert rt["gpu_count"] == len(manifest["system"]["gpus"])
    assert rt["user"] == manifest["user"]
    started = datetime.fromisoformat(manifest["started_at"].replace("Z", "+00:00"))
    ended = datetime.fromisoformat(manifest["ended_at"].replace("Z", "+00:00"))
    assert datetime.fromisoformat(rt["started_at"]) == started.replace(microsecond=0)
    assert datetime.fromisoformat(rt["ended_at"]) == ended.replace(microsecond=0)
    assert doc["started"] == rt["started_at"] and doc["completed"] == rt["ended_at"]

    # name, identity, params, the command
    # a recorded run shows its run path less "<project>/" (README "Run names")
    assert doc["name"] == "baseline" and doc["project_name"] == "repro"
    hp = doc["hyperparams"]
    assert hp["tracelet"]["run_path"]["value"] == "repro/baseline"
    assert hp["tracelet"]["run_id"]["value"] == manifest["run_id"]
    assert hp["General"]["lr"]["value"] == "0.1"
    assert hp["General"]["api_key"]["value"] == "***REDACTED***"
    assert hp["tracelet"]["command"]["value"] == shlex.join([*argv[:-1], "***REDACTED***"])
    assert doc["status"] == "completed"

    # the manifest (and requirements) as task artifacts, with their files in the session
    arts = {a["key"]: a for a in doc["execution"]["artifacts"]}
    assert {"tracelet/tracelet.json", "tracelet/requirements.txt", "git_diff.patch"} <= set(arts)
    folder = doc["offline_folder"] + "/data/"
    stored = json.loads(session.read("data/" + arts["tracelet/tracelet.json"]["uri"]
                                     .replace(folder, "", 1)))
    assert stored["run_id"] == manifest["run_id"] and stored["git"]["commit"] == commit
    assert SECRET not in json.dumps(stored) and API_KEY not in json.dumps(stored)
    with zipfile.ZipFile(session.zip_path) as zf:
        assert "task.json" in zf.namelist()

    # ClearML's own data model reads the same (what its offline Task loads from task.json) ...
    from clearml.backend_api.services import tasks

    task = tasks.Task(**{k: v for k, v in doc.items() if k in tasks.Task._get_data_props()})
    assert task.script.repository == "https://example.com/org/repo.git"
    assert task.script.version_num == commit and task.script.entry_point == "train.py"
    assert task.script.requirements["pip"] == pip
    # ... and its importer (Task.import_task) sends every field a task edit takes: the script,
    # the runtime properties (API >= 2.13) and the name go through; started/completed do not
    # (the server sets them when the status changes), hence their copy in the runtime
    from clearml.backend_api.services.v2_23 import tasks as tasks_2_23

    sent = set(tasks_2_23.EditRequest._get_data_props())
    assert {"script", "runtime", "name", "hyperparams", "execution"} <= sent
    assert not {"started", "completed", "last_update"} & sent


def test_an_unchanged_recorded_run_writes_no_new_session(cml, recorded):
    logdir = recorded[0]
    assert _sync(logdir, cml).exit_code == 0
    before = sorted(p.name for p in cml.offline.iterdir())
    for kw in ({}, {"resync": True}):  # the fast path, then everything compared again
        assert _sync(logdir, cml, **kw).exit_code == 0
        assert sorted(p.name for p in cml.offline.iterdir()) == before


@pytest.mark.parametrize("command, root, cwd, expected", [
    (["/usr/bin/python3", "train.py", "--lr", "0.1"], "/r", "/r/src", ("src", "train.py")),
    (["python", "-u", "-W", "ignore", "src/train.py"], "/r", "/r", (".", "src/train.py")),
    (["python3.11", "../tools/run.py"], "/r", "/r/src", ("src", "../tools/run.py")),
    (["python", "/r/src/train.py"], "/r", None, (".", "src/train.py")),  # no cwd recorded
    (["python", "train.py"], "/r", None, (".", "train.py")),
    (["python", "/elsewhere/train.py"], None, "/elsewhere", (".", "train.py")),  # no repo
    (["python", "-m", "pkg.train", "--lr", "1"], "/r", "/r/a", ("a", "-m pkg.train --lr 1")),
    (["python", "train.py"], "/r", "/outside", (".", "../outside/train.py")),
    (["./train.py", "--x"], "/r", "/r", (".", "train.py")),
    (["bash", "run.sh", "a b"], "/r", "/r", (".", "bash run.sh 'a b'")),
    (["python", "-c", "print(1)"], "/r", "/r", (".", "")),
    ([], "/r", "/r", (".", "")),
])
def test_entry_point_and_working_dir_as_clearml_computes_them(command, root, cwd, expected):
    assert locate_script(command, root, cwd) == expected
