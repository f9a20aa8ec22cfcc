"""kill -9 a `tracelet sync` of a cloud logdir (a real subprocess, the CLI as cron runs it) at
exact protocol steps and at random instants while the writer keeps re-uploading longer
objects; then sync again: every point in MLflow exactly once."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import pytest

from tests.cloud.test_cloud_sync import sync
from tracelet.testing.conformance import assert_exactly_once, project_fn
from tracelet.testing.sources import build_kill_logdir, write_simple_run

pytestmark = pytest.mark.slow
EV = "events.out.tfevents.1700000000.host.1.0"


def _cmd(url, state, project):
    return [sys.executable, "-m", "tracelet.cli", "sync", url, "--to", "mlflow", "--project",
            project, "--state-dir", str(state)]


def _env(store, **extra):
    env = {**os.environ, **store.env, "TRACELET_BATCH_POINTS": "150",
           "TRACELET_READ_BLOCK_BYTES": str(64 << 10)}
    env.update(extra)
    return env


def _latest(state) -> float:
    latest = 0.0
    for p in state.rglob("*.json") if state.exists() else []:
        try:
            latest = max(latest, p.stat().st_mtime)
        except OSError:
            pass
    return latest


@pytest.mark.parametrize("crash_at", ["after_send:2", "before_rename:3"])
def test_kill9_at_protocol_steps(pinned_store, mlflow, tmp_path, project, crash_at):
    local = tmp_path / "logs"
    truth = build_kill_logdir(local, runs=2, steps=400)
    pinned_store.upload_dir(local, "runs")
    url = pinned_store.url("runs")
    proc = subprocess.run(_cmd(url, tmp_path / "state", project),
                          env=_env(pinned_store, TRACELET_CRASH_AT=crash_at),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    report = sync(url, tmp_path, project)
    assert report.exit_code == 0, report.to_dict()
    assert_exactly_once(mlflow, truth, project_fn(project))


def test_kill9_at_random_instants_while_objects_grow(s3, mlflow, tmp_path, project):
    local = tmp_path / "logs"
    truth = build_kill_logdir(local, runs=2, steps=1500)
    s3.upload_dir(local, "runs")
    url = s3.url("runs")
    state = tmp_path / "state"
    rng = random.Random(12)
    env = _env(s3)
    killed, delay, next_step = 0, 0.6, 1500
    for trial in range(12):
        if killed >= 4:
            break
        if trial:  # the writer flushed: the object is re-uploaded whole, longer
            r = trial % 2
            write_simple_run(local / f"run{r}", f"run{r}", truth, ["loss", "acc"],
                             list(range(next_step, next_step + 300)), seed=100 + trial,
                             append=True)
            s3.put(f"runs/run{r}/{EV}", (local / f"run{r}" / EV).read_bytes())
            next_step += 300
        before = _latest(state)
        proc = subprocess.Popen(_cmd(url, state, project), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if _latest(state) > before:  # committing: kill shortly after, mid-protocol
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, delay))
        if proc.poll() is None:
            proc.kill()
            killed += 1
        else:
            delay = max(0.01, delay / 2)
        proc.wait()
    assert killed >= 2, "kills did not land during syncs"
    report = sync(url, tmp_path, project)
    assert report.exit_code == 0, report.to_dict()
    assert_exactly_once(mlflow, truth, project_fn(project))
