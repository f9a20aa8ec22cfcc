"""The state dir of a logdir in object storage holds a local copy of each run's manifest (so an
unchanged logdir costs one listing): that copy is state like any other. A forged copy is not
trusted, a FIFO in its place never hangs a sync, a symlinked ``manifests/`` folder is never
written through. S3 on moto, MLflow's real sqlite store."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.cloud.test_cloud_sync import stats, sync
from tracelet.engine import state_dir_for
from tracelet.storage import open_location
from tracelet.testing.sources import SourceTruth, write_recorded_run


def _setup(s3, mlflow, tmp_path, project):
    local = tmp_path / "logs"
    truth = SourceTruth()
    write_recorded_run(local / "exp", "exp", truth, project)
    s3.upload_dir(local, "runs")
    url = s3.url("runs")
    assert sync(url, tmp_path, project).exit_code == 0
    state = state_dir_for(open_location(url).root, str(tmp_path / "state"))
    (copy,) = (state / "manifests").glob("*.json")
    return url, state, copy, local


@pytest.mark.timeout(300)
def test_forged_manifest_copy_is_not_trusted(s3, mlflow, tmp_path, project):
    url, state, copy, local = _setup(s3, mlflow, tmp_path, project)
    raw = copy.read_bytes()
    # "<size>:<etag>" of the object, as the listing shows it (anyone can list the bucket)
    header = next(line for line in raw.split(b"\n") if re.match(rb"\d+:", line))
    forged = json.loads((local / "exp" / "tracelet.json").read_text())
    forged["status"], forged["params"] = "failed", {"learning_rate": "forged"}
    copy.write_bytes(header + b"\n" + json.dumps(forged).encode())  # the format without a MAC

    report = sync(url, tmp_path, project)
    assert report.exit_code == 0, report.to_dict()
    assert stats(report, url)["get_calls"] >= 1  # the manifest was read again from the bucket
    rb = mlflow.read_back(project, "exp")
    assert rb.status == "FINISHED" and rb.params["learning_rate"] == "0.001"
    report = sync(url, tmp_path, project)  # a trusted copy again: the no-op costs the listing
    assert {d.state for r in report.runs for d in r.destinations.values()} == {"unchanged"}
    assert stats(report, url)["get_calls"] == 0


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["fifo", "symlinked-folder"])
def test_manifest_copy_entry_that_is_not_a_plain_file(s3, mlflow, tmp_path, project, kind):
    url, state, copy, local = _setup(s3, mlflow, tmp_path, project)
    elsewhere = tmp_path / "elsewhere"
    if kind == "fifo":
        copy.unlink()
        os.mkfifo(copy)
    else:
        (state / "manifests").rename(elsewhere)
        (state / "manifests").symlink_to(elsewhere, target_is_directory=True)
        before = {p.name: p.read_bytes() for p in elsewhere.iterdir()}
        for p in elsewhere.iterdir():
            p.unlink()  # what a write through the link would recreate
    report = sync(url, tmp_path, project)  # never hangs on the FIFO; reads the object instead
    assert report.exit_code == 0, report.to_dict()
    assert {d.state for r in report.runs for d in r.destinations.values()} == {"unchanged"}
    if kind == "fifo":  # the copy is rewritten by a rename over the FIFO's name, not into it
        assert Path(copy).is_file() and not Path(copy).is_fifo()
    else:
        assert before and list(elsewhere.iterdir()) == []
