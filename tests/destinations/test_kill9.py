"""Nothing lost, nothing twice: kill -9 the sync at random instants and at exact protocol steps,
sync again, and every source point is on the destination exactly once (as the vendor reads it).
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import zlib

import pytest

from tracelet.testing.conformance import assert_exactly_once, project_fn, sync_once
from tracelet.testing.sources import build_kill_logdir, write_simple_run

pytestmark = pytest.mark.slow


def _sync_cmd(harness, logdir, project):
    return [sys.executable, "-m", "tracelet.cli", "sync", str(logdir), "--to", harness.name,
            "--project", project, *harness.cli_args()]


def _env(harness, **extra):
    env = dict(os.environ)
    env.update(harness.env())
    env["TRACELET_BATCH_POINTS"] = "150"  # many commits: many places for a kill to land
    env.update(extra)
    return env


def _checkpoint_mtime(logdir) -> float:
    latest = 0.0
    for p in (logdir / ".tracelet").rglob("*.json") if (logdir / ".tracelet").exists() else []:
        try:
            latest = max(latest, p.stat().st_mtime)
        except OSError:
            pass
    return latest


def test_kill9_at_random_instants(harness, tmp_path, project):
    if harness.kill_trials == 0:
        pytest.skip(f"{harness.label}: random kills of this destination run through its other "
                    "harnesses (same code path); here only the protocol-step kills")
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=3, steps=1200)
    rng = random.Random(zlib.crc32(harness.label.encode()))  # reproducible per destination
    env = _env(harness)
    killed_mid_sync = 0
    max_delay = 0.6  # halved after a sync that ended before its kill: fast destinations and
    # loaded machines both still get most kills mid-sync
    next_step = 1200
    # Trials go on until `kill_trials` kills landed mid-sync (at most 3x as many syncs): the
    # guard is about the kills, not about how fast this machine happens to be today.
    for trial in range(3 * harness.kill_trials):
        if killed_mid_sync >= harness.kill_trials:
            break
        if trial:  # training goes on between cron runs: every sync has new points to send
            r = trial % 3
            write_simple_run(logdir / f"run{r}", f"run{r}", truth, ["loss", "acc"],
                             list(range(next_step, next_step + 300)), seed=100 + trial,
                             append=True)
            next_step += 300
        before = _checkpoint_mtime(logdir)
        proc = subprocess.Popen(_sync_cmd(harness, logdir, project), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Wait until this sync is committing (a checkpoint changed), then kill at a random
        # instant shortly after: lands mid-batch, mid-send or mid-checkpoint-write.
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if _checkpoint_mtime(logdir) > before:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, max_delay))
        if proc.poll() is None:
            proc.kill()
            killed_mid_sync += 1
        else:
            max_delay = max(0.01, max_delay / 2)
        proc.wait()
    assert killed_mid_sync >= harness.kill_trials // 2, "kills did not land during syncs"
    report = sync_once(logdir, harness, project)
    assert report.exit_code == 0, report.to_dict()
    assert_exactly_once(harness, truth, project_fn(project))


@pytest.mark.parametrize("crash_at", ["after_send:2", "before_rename:3", "before_rename:1"])
def test_kill9_at_protocol_steps(harness, tmp_path, project, crash_at):
    """SIGKILL exactly between a destination's confirmation and the checkpoint commit, and in
    the middle of the atomic checkpoint write (temp written, not yet renamed)."""
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=2, steps=400)
    proc = subprocess.run(_sync_cmd(harness, logdir, project),
                          env=_env(harness, TRACELET_CRASH_AT=crash_at),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    report = sync_once(logdir, harness, project)
    assert report.exit_code == 0, report.to_dict()
    assert_exactly_once(harness, truth, project_fn(project))
