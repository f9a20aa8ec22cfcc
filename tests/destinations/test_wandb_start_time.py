"""W&B: the run's start time is the training's (#11 item 2, "start time from the source").

Every fragment (one per sync) ends with the run's start time = ``RunRef.started_at`` (the
manifest), else the first event's wall time: a Run record update, read back here from the
``.wandb`` files with W&B's own protobufs (harness_wandb). Each fragment's FIRST Run record
keeps its sync time: ``wandb sync`` uploads the fragments of one run in that order, so a resumed
sync, a reset and the exactly-once read back (which models that order) are checked too.
"""
from __future__ import annotations

import json
import shutil
import time

import pytest

from tests.destinations.harness_wandb import WandbOfflineHarness
from tracelet.testing.conformance import assert_exactly_once, project_fn, sync_once
from tracelet.testing.sources import T0, SourceTruth, write_recorded_run, write_simple_run

PROJECT = "p"  # write_recorded_run's manifest names it
TAGS = ["Loss/Train/CrossEntropy", "Metrics/Accuracy/Validation"]  # write_recorded_run's


@pytest.fixture
def wb(tmp_path, monkeypatch):
    h = WandbOfflineHarness()
    h.config = h.setup(tmp_path, monkeypatch)
    return h


def _fragments(wb, run_path: str) -> list:
    """The run's fragments in `wandb sync` upload order (the first Run record's start)."""
    return sorted((f for f in wb.fragments() if (f.config.get("tracelet") or {}).get(
        "run_path") == run_path), key=lambda f: f.start)


def test_run_start_is_the_trainings_in_every_fragment(wb, tmp_path):
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_recorded_run(logdir / "rec", "rec", truth, PROJECT)
    manifest = logdir / "rec" / "tracelet.json"  # started a day before its first event
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "started_at": T0 - 86400.25}))
    write_simple_run(logdir / "plain", "plain", truth, ["loss"], list(range(10)), seed=3)
    # plain: the first event's wall time (its file_version record's, T0)
    start = {"rec": T0 - 86400.25, "plain": T0}
    # each sync writes the points' fragment and one of the summary (test_wandb_runtime.py)
    per_sync = {"rec": 2, "plain": 2}
    synced_at = []
    for n in (1, 2, 3):
        if n == 2:  # a resumed sync appends points (later wall times) to both runs
            write_simple_run(logdir / "rec", "rec", truth, TAGS, [25, 26], seed=9, append=True)
            write_simple_run(logdir / "plain", "plain", truth, ["loss"], [10, 11], seed=9,
                             append=True)
        if n == 3:  # a lost state dir: the run is found and sent again with dedupe
            shutil.rmtree(logdir / ".tracelet")
        synced_at.append(time.time())
        report = sync_once(logdir, wb, PROJECT)
        assert report.exit_code == 0, report.to_dict()
        for run, want in start.items():
            frags = _fragments(wb, run)
            assert len(frags) == n * per_sync[run], (run, [f.path for f in frags])
            for f in frags:
                assert f.run_start == pytest.approx(want, abs=1e-3), (run, f.path)
            # the first Run record of each fragment: the time of its sync (the upload order)
            assert [f.start[0] >= int(synced_at[i // per_sync[run]])
                    for i, f in enumerate(frags)] == [True] * len(frags)
        assert_exactly_once(wb, truth, project_fn(PROJECT))
