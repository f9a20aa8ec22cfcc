"""What W&B's run page shows for a recorded run (#11 item 2): git commit and remote (no
credentials), program/command, host, python, config, summary (each scalar's last value), the
reproducibility files and the diff, the start time, all of the TRAINING (not of the sync): a
real ``python train.py`` run in a git repository (``recorded_repo``, as the MLflow and Aim
reproducibility tests).

Read back from the offline ``.wandb`` files with W&B's own protobufs (harness_wandb): the Run
record (git, host, display name), the environment record (what wandb-core writes to
``wandb-metadata.json`` and the Overview shows), the summary and files records.
"""
from __future__ import annotations

import json
import platform
import socket
import sys

import pytest

from tests.destinations.harness_wandb import WandbOfflineHarness, upload
from tests.destinations.recorded_repo import API_KEY, SECRET, git, record_in_repo
from tracelet.destinations.wandb.mapping import environment, program_args
from tracelet.manifest import manifest_time
from tracelet.testing.conformance import sync_once


@pytest.fixture
def wb(tmp_path, monkeypatch):
    h = WandbOfflineHarness()
    h.config = h.setup(tmp_path, monkeypatch)
    return h


def test_recorded_run_shows_git_command_host_python_summary_files(wb, tmp_path, project):
    from torch.utils.tensorboard import SummaryWriter

    repo = tmp_path / "repo"
    repo.mkdir()
    logdir, run_dir, repo, argv = record_in_repo(repo, "wandb")
    head = git(repo, "rev-parse", "HEAD")
    manifest = json.loads((run_dir / "tracelet.json").read_text())
    report = sync_once(logdir, wb, project)
    assert report.exit_code == 0, report.to_dict()

    run_path = run_dir.relative_to(logdir).as_posix()
    frags = sorted([f for f in wb.fragments() if (f.config.get("tracelet") or {}).get(
        "run_path") == run_path], key=lambda g: g.start)
    # the points, then the summary with the training's Duration
    assert len(frags) == 2 and not frags[1].rows
    f = frags[0]
    seconds = int(manifest_time(manifest["ended_at"]) - manifest_time(manifest["started_at"]))
    assert upload(frags)["summary"]["_wandb/runtime"] == seconds
    assert frags[1].environment == f.environment and frags[1].run_start == f.run_start
    # the Run record: what W&B's run page shows as the git state and host
    assert f.git == {"remote_url": "https://example.com/org/repo.git", "commit": head}
    # a recorded run shows its run path less "<project>/" (README "Run names")
    assert f.host == socket.gethostname() and f.display_name == run_path.split("/", 1)[1]
    # the run's start time: the training's (a Run record update; test_wandb_times.py)
    assert f.run_start == pytest.approx(manifest_time(manifest["started_at"]), abs=1e-3)
    # the environment record (wandb-metadata.json)
    e = f.environment
    assert e["program"] == "train.py" and e["codePath"] == "train.py"
    assert e["args"] == ["--lr", "0.1", "--api-key", "***REDACTED***"]
    assert e["executable"] == sys.executable == argv[0]
    assert e["python"] == platform.python_version() and e["host"] == socket.gethostname()
    assert e["git"] == {"remote": "https://example.com/org/repo.git", "commit": head}
    assert e["startedAt"].startswith(manifest["started_at"][:19]), (e["startedAt"],
                                                                    manifest["started_at"])
    assert e["writerId"] == "tracelet"
    everything = json.dumps([f.environment, f.config, f.git, f.summary])
    assert SECRET not in everything and "user:" not in everything and API_KEY not in everything
    # config: the params (nested ones are flattened: the conformance tests); summary: each
    # scalar's last value
    assert f.config["lr"] == 0.1 and f.config["batch_size"] == 32, f.config
    assert f.config["api_key"] == "***REDACTED***"
    assert f.summary["Loss/train"] == pytest.approx(0.2)
    # run files: the reproducibility files (also requirements.txt, W&B's name) and the diff
    # (artifacts/git_diff.patch as every artifact, and diff.patch, W&B's name for it)
    assert {"tracelet/tracelet.json", "tracelet/requirements.txt", "requirements.txt",
            "artifacts/git_diff.patch", "diff.patch"} <= set(f.files), f.files
    files_dir = f.path.parent / "files"
    assert "+DEPTH = 101" in (files_dir / "diff.patch").read_text()
    assert "torch==" in (files_dir / "requirements.txt").read_text()
    assert SECRET not in (files_dir / "tracelet" / "tracelet.json").read_text()

    # a later sync: new points move the summary; unchanged repro files are not saved again
    exp_dir_writer = SummaryWriter(log_dir=str(run_dir))
    exp_dir_writer.add_scalar("acc", 0.95, 5)
    exp_dir_writer.close()
    assert sync_once(logdir, wb, project).exit_code == 0
    frags = sorted([g for g in wb.fragments() if (g.config.get("tracelet") or {}).get(
        "run_path") == run_path], key=lambda g: g.start)
    assert len(frags) == 4
    assert frags[2].summary["acc"] == pytest.approx(0.95)
    assert frags[2].summary["Loss/train"] == pytest.approx(0.2)  # not in this fragment's rows
    assert "tracelet/requirements.txt" not in frags[2].files
    assert frags[2].run_start == frags[3].run_start == f.run_start
    assert upload(frags)["summary"]["_wandb/runtime"] == seconds


def test_program_and_args_of_recorded_commands():
    assert program_args(["/usr/bin/python3", "train.py", "--lr", "1"]) == (
        "train.py", ["--lr", "1"], "/usr/bin/python3")
    assert program_args(["python", "-m", "pkg.train", "x"]) == ("-m pkg.train", ["x"], "python")
    assert program_args(["./run.sh", "a"]) == ("./run.sh", ["a"], "")
    assert program_args([]) == ("", [], "")


def test_start_time_falls_back_to_the_first_event():
    from tracelet.destinations.base import RunRef

    ref = RunRef(run_id="r", run_path="r", project="p", source_dir=".")
    assert environment(ref, 1700000000.5) == {"started_at": 1700000000.5}
    assert environment(ref, None) == {}


def test_entity_option_is_the_runs_entity_and_keeps_the_target(wb, tmp_path, monkeypatch,
                                                               project):
    from tracelet.destinations.wandb.factory import FACTORY
    from tracelet.testing.sources import SourceTruth, write_simple_run

    logdir = tmp_path / "logs"
    write_simple_run(logdir / "r", "r", SourceTruth(), ["loss"], list(range(3)))
    wb.config = {**wb.config, "wandb_entity": "acme"}
    assert sync_once(logdir, wb, project).exit_code == 0
    frags = [g for g in wb.fragments() if g.project == project]
    assert len(frags) == 2  # the points, the summary (test_wandb_times.py)
    assert {f.entity for f in frags} == {"acme"}  # `wandb sync` uploads the folders there
    # the option names the target WANDB_ENTITY names; configs without it keep theirs
    online = {"wandb_mode": "online"}
    before = FACTORY.target(online)
    monkeypatch.setenv("WANDB_ENTITY", "acme")
    assert FACTORY.target(online) == FACTORY.target({**online, "wandb_entity": "acme"})
    monkeypatch.delenv("WANDB_ENTITY")
    assert FACTORY.target(online) == before
    assert FACTORY.target({"wandb_mode": "offline"}) == FACTORY.target(
        {"wandb_mode": "offline", "wandb_entity": "acme"})


def test_untrusted_manifest_values_are_left_out_of_the_environment_record():
    from google.protobuf import json_format
    from wandb.proto import wandb_internal_pb2 as pb

    from tracelet.destinations.base import RunRef

    ref = RunRef(run_id="r", run_path="r", project="p", source_dir=".",
                 env={"python": 3, "platform": ["x"], "executable": "/bin/py"},
                 system={"hostname": {"a": 1}, "cpus": "many", "cpus_physical": True,
                         "memory_bytes": -5, "gpus": [7, {"name": "A100"}]},
                 git={"commit": 12, "remote": None, "root": "/r"},
                 command=("/usr/bin/python3", "/r/train.py", "--x"), user="u")
    fields = environment(ref, float("nan"))
    assert fields == {"executable": "/bin/py", "program": "/r/train.py", "args": ["--x"],
                      "username": "u", "root": "/r", "code_path": "train.py", "gpu_count": 2}
    json_format.ParseDict(fields, pb.EnvironmentRecord())  # W&B's record takes every field
    # a relative script: from the training's working folder (manifest env.cwd)
    ref = RunRef(run_id="r", run_path="r", project="p", source_dir=".", env={"cwd": "/r/sub"},
                 git={"root": "/r"}, command=("python", "train.py"))
    assert environment(ref, None)["code_path"] == "sub/train.py"
