"""What reproduces a run, in Aim's own fields (issue #11): a training script in a git repository
(a commit, a remote with credentials in its URL, a dirty tracked file) run as
``python train.py --lr 0.1 ...`` with ``tracelet.start_logging`` and torch's ``SummaryWriter()``,
then ``tracelet sync --to aim``, read back with ``aim.Repo``: ``run["__system_params"]`` in the
shape Aim's ``Run(log_system_params=True)`` writes (git info, packages, executable, arguments;
no environment variables), hostname and user, creation and end times from the training (not the
sync), params, and the reproducibility files as run artifacts."""
from __future__ import annotations

import getpass
import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.destinations.recorded_repo import API_KEY, SECRET, git, record_in_repo
from tracelet.manifest import manifest_time

pytestmark = pytest.mark.slow  # a real training process (torch) and CLI syncs


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """(logdir, run dir, repo, argv): one training run, recorded once for every test here."""
    return record_in_repo(tmp_path_factory.mktemp("repo"), "aim", drop_env=("AIM_REPO",))


def _sync(logdir: Path, aim_root: Path, *extra: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tracelet.cli", "sync", str(logdir), "--to",
                           "aim", "--aim-repo", str(aim_root), "--json", *extra],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _run(aim_root: Path, experiment: str):
    from aim import Repo
    from aim.sdk.run import Run

    repo = Repo(str(aim_root))
    (h,) = [r.hash for r in repo.iter_runs() if r.experiment == experiment]
    return Run(h, repo=repo, read_only=True)


def _artifact(run, name: str) -> str:
    """An artifact's bytes where Aim put it (``<artifacts uri>/<run hash>/<name>``)."""
    art = run.artifacts[name]
    return Path(urlparse(art.uri).path).read_text()


def test_a_recorded_run_carries_what_reproduces_it_in_aims_fields(recorded, tmp_path):
    logdir, run_dir, repo, argv = recorded
    aim_root = tmp_path / "aim"
    _sync(logdir, aim_root)
    run = _run(aim_root, "repro")
    manifest = json.loads((run_dir / "tracelet.json").read_text())
    sp = run["__system_params"]

    # Aim's own keys, as Run(log_system_params=True) writes them (its run page's cards)
    assert sp["git_info"] == {
        "branch": "main", "remote_origin_url": "https://example.com/org/repo.git",
        "commit": {"hash": git(repo, "rev-parse", "HEAD"), "timestamp": None, "author": None},
        "dirty": True}
    assert sp["packages"]["torch"] == metadata.version("torch")
    assert sp["packages"]["aim"] == metadata.version("aim")
    assert sp["executable"] == sys.executable
    assert sp["arguments"] == ["train.py", "--lr", "0.1", "--api-key", "***REDACTED***"]
    assert "env_variables" not in sp  # Tracelet records none; a value may be a secret
    assert sp["hostname"] == socket.gethostname() and sp["user"] == getpass.getuser()
    assert sp["python"] == platform.python_version()
    # the training's times, not the sync's
    assert run.creation_time == pytest.approx(manifest_time(manifest["started_at"]), abs=1e-3)
    assert run.end_time == pytest.approx(manifest_time(manifest["ended_at"]), abs=1e-3)
    assert not run.active and run["tracelet"]["status"] == "finished"
    assert run["hparams"]["lr"] == 0.1 and run["hparams"]["batch_size"] == 32
    assert run["hparams"]["api_key"] == "***REDACTED***"
    assert run["tracelet"]["run_path"] == run_dir.relative_to(logdir).as_posix() == "repro/baseline"
    assert run.name == "baseline"  # the display name: less its project (README: Run names)
    (loss,) = [m for m in run.metrics() if m.name == "Loss/train"]
    assert list(loss.data.view(["val"]).items_list()[0]) == list(range(5))

    # the reproducibility files and the diff: run artifacts (Aim's Artifacts tab)
    assert sorted(run.artifacts) == ["git_diff.patch", "tracelet/requirements.txt",
                                     "tracelet/tracelet.json"]
    diff = _artifact(run, "git_diff.patch")
    assert "-DEPTH = 50" in diff and "+DEPTH = 101" in diff
    reqs = _artifact(run, "tracelet/requirements.txt")
    assert f"torch=={metadata.version('torch')}\n" in reqs
    doc_text = _artifact(run, "tracelet/tracelet.json")
    doc = json.loads(doc_text)
    assert doc["run_id"] == manifest["run_id"] and doc["git"]["commit"] == sp["git_info"]["commit"]["hash"]
    assert doc["params"]["api_key"] == "***REDACTED***"
    everything = json.dumps(run[...], default=str) + doc_text
    assert SECRET not in everything and API_KEY not in everything

    # a later change of the manifest is applied to the same run (set-if-different), and the
    # manifest artifact follows it (same name); nothing else is uploaded again
    repro = sorted(os.listdir(urlparse(run.artifacts["tracelet/requirements.txt"].uri).path
                              .rsplit("/tracelet/", 1)[0]))
    manifest["user"] = "someone-else"
    (run_dir / "tracelet.json").write_text(json.dumps(manifest))
    report = _sync(logdir, aim_root)
    assert report["runs"][0]["destinations"]["aim"]["state"] == "synced"
    run2 = _run(aim_root, "repro")
    assert run2.hash == run.hash and run2["__system_params"]["user"] == "someone-else"
    assert json.loads(_artifact(run2, "tracelet/tracelet.json"))["user"] == "someone-else"
    assert sorted(run2.artifacts) == sorted(run.artifacts)
    assert sorted(os.listdir(urlparse(run2.artifacts["tracelet/requirements.txt"].uri).path
                             .rsplit("/tracelet/", 1)[0])) == repro


def _assert_whole(run) -> None:
    assert run["__system_params"]["git_info"]["dirty"] is True
    assert run["__system_params"]["arguments"][0] == "train.py"
    assert run["hparams"]["lr"] == 0.1
    assert sorted(run.artifacts) == ["git_diff.patch", "tracelet/requirements.txt",
                                     "tracelet/tracelet.json"]
    (loss,) = [m for m in run.metrics() if m.name == "Loss/train"]
    assert list(loss.data.view(["val"]).items_list()[0]) == list(range(5))  # each step once


def test_the_reproducibility_fields_come_back_after_the_run_is_deleted(recorded, tmp_path):
    """Drift: the run deleted with Aim's API is made again with all of it (resent in full),
    by the next sync that opens the run (its manifest changed) and by ``sync --resync``."""
    from aim import Repo

    logdir, run_dir, repo, _ = recorded
    aim_root = tmp_path / "aim"
    state = ("--state-dir", str(tmp_path / "state"))
    _sync(logdir, aim_root, *state)
    first = _run(aim_root, "repro")
    assert Repo(str(aim_root)).delete_run(first.hash)
    manifest = json.loads((run_dir / "tracelet.json").read_text())
    (run_dir / "tracelet.json").write_text(json.dumps({**manifest, "user": "after-delete"}))
    dest = _sync(logdir, aim_root, *state)["runs"][0]["destinations"]["aim"]
    assert dest["drift"].startswith(f"run missing on aim: run deleted: run {first.hash} "), dest
    run = _run(aim_root, "repro")
    assert run.hash == first.hash and run["__system_params"]["user"] == "after-delete"
    _assert_whole(run)
    # --resync compares with what Aim holds (the checkpoint set aside): the same, once
    assert Repo(str(aim_root)).delete_run(first.hash)
    dest = _sync(logdir, aim_root, "--resync", *state)["runs"][0]["destinations"]["aim"]
    assert dest["state"] == "synced", dest
    _assert_whole(_run(aim_root, "repro"))
    _sync(logdir, aim_root, "--resync", *state)
    _assert_whole(_run(aim_root, "repro"))
