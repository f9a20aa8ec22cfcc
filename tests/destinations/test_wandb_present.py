"""W&B: a resync that only confirmed what had landed says so (#10 item 4).

``sync --resync`` / ``tracelet reset`` send every point again with dedupe; the W&B destination
leaves out what its earlier offline fragments already hold (``_tracelet`` source texts, read
back from the ``.wandb`` files) and reports those points as present: the CLI line says
``confirmed N already present``, or ``(K of them already present)`` when new points landed too.
Real W&B offline mode; the fragments are read back with W&B's own protobufs (harness_wandb).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.destinations.harness_wandb import WandbOfflineHarness
from tracelet.testing.conformance import assert_exactly_once, project_fn
from tracelet.testing.sources import SourceTruth, write_recorded_run, write_simple_run, write_tf2_run

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
PROJECT = "p"  # write_recorded_run's manifest names it; plain runs take it from --project


@pytest.fixture
def wb(tmp_path, monkeypatch):
    h = WandbOfflineHarness()
    h.config = h.setup(tmp_path, monkeypatch)
    return h


def _cli(wb, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "tracelet.cli", *args], capture_output=True,
                       text=True, env={**os.environ, **wb.env()}, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


def _sync(wb, logdir: Path, *extra: str) -> dict[str, str]:
    """One CLI sync: what tracelet's line says for each run on wandb (``synced ...``)."""
    r = _cli(wb, "sync", str(logdir), "--to", "wandb", "--project", PROJECT, *extra)
    prefix = f"tracelet: (.+) -> wandb \\(offline:{re.escape(str(wb.root))}\\): (.*)$"
    found = [re.match(prefix, ln.split(" ", 1)[1]) for ln in r.stderr.splitlines()
             if re.match(STAMP + " tracelet: ", ln)]
    return {m.group(1): m.group(2) for m in found if m}


def _logdir(tmp_path: Path) -> tuple[Path, SourceTruth]:
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    # scalars + system rows (manifest, sidecar parts); scalars, histograms, images, texts and
    # audio; a plain run of scalars
    write_recorded_run(logdir / "rec", "rec", truth, PROJECT)
    write_tf2_run(logdir / "keras", "keras", truth)
    write_simple_run(logdir / "plain", "plain", truth, ["loss", "acc"], list(range(30)), seed=3)
    return logdir, truth


def test_resync_of_landed_points_says_confirmed_present(wb, tmp_path):
    logdir, truth = _logdir(tmp_path)
    assert _sync(wb, logdir) == {
        "rec": "synced scalar 50, system 20",
        "keras": "synced audio 4, histogram 3, hparams 1, image 3, scalar 80, text 3",
        "plain": "synced scalar 60"}
    assert _sync(wb, logdir, "--resync") == {
        # every point was there already: scalars, system rows, ...
        "rec": "confirmed 70 already present", "plain": "confirmed 60 already present",
        # ... and media; the TensorBoard hparams (W&B config, sent as params) too: the earlier
        # fragment's config holds every one of them with the same value
        "keras": "confirmed 94 already present"}
    assert_exactly_once(wb, truth, project_fn(PROJECT))

    # tracelet reset: the next sync dedupes against the fragments the same way
    _cli(wb, "reset", str(logdir), "plain", "--to", "wandb")
    assert _sync(wb, logdir) == {"plain": "confirmed 60 already present"}
    assert_exactly_once(wb, truth, project_fn(PROJECT))


def test_resync_with_new_points_counts_only_the_landed_ones(wb, tmp_path):
    logdir, truth = _logdir(tmp_path)
    _sync(wb, logdir)
    write_simple_run(logdir / "plain", "plain", truth, ["loss", "acc"], list(range(30, 35)),
                     seed=4, append=True)
    write_simple_run(logdir / "rec", "rec", truth,
                     ["Loss/Train/CrossEntropy", "Metrics/Accuracy/Validation"], [25, 26],
                     seed=8, append=True)
    lines = _sync(wb, logdir, "--resync")
    assert lines["plain"] == "synced scalar 70 (60 of them already present)", lines
    assert lines["rec"] == "synced scalar 54, system 20 (70 of them already present)", lines
    assert_exactly_once(wb, truth, project_fn(PROJECT))
