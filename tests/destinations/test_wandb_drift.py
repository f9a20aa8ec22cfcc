"""W&B offline drift (#10 item 1): a checkpoint names a run whose offline folder was removed.

Read back from the ``.wandb`` files W&B wrote (harness_wandb), as ``wandb sync`` would upload
the folders still there.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.destinations.harness_wandb import WandbOfflineHarness, load_fragment
from tracelet.destinations.base import RunRef
from tracelet.destinations.wandb.client import WandbDestination
from tracelet.destinations.wandb.mapping import wandb_run_id
from tracelet.engine import SyncOptions, reset_runs
from tracelet.testing.conformance import assert_exactly_once, project_fn, sync_once
from tracelet.testing.sources import SourceTruth, write_simple_run


@pytest.fixture
def wb(tmp_path, monkeypatch):
    h = WandbOfflineHarness()
    h.config = h.setup(tmp_path, monkeypatch)
    return h


def _checkpoint(logdir: Path, run: str) -> dict:
    (path,) = (logdir / ".tracelet" / "checkpoints").glob(f"wandb-*/{run}.json")
    return json.loads(path.read_text())


def _identity(logdir: Path, run: str) -> dict:
    return _checkpoint(logdir, run)["identity"]


def _wid(logdir: Path, run: str) -> str:
    return wandb_run_id(_checkpoint(logdir, run)["run_id"])


def _folders(h, logdir: Path, run: str) -> list[Path]:
    """The run's offline folders holding its points (each sync's first: the next one, named
    the same or with a ``-N`` suffix within one second, holds the summary only)."""
    wid = _wid(logdir, run)
    return sorted(d for d in (h.root / "wandb").glob(f"offline-run-*-{wid}*")
                  if d.name.endswith(wid) or d.name.rpartition("-")[0].endswith(wid)
                  if load_fragment(d / f"run-{wid}.wandb").rows)


def _ref(logdir: Path, run: str, project: str) -> RunRef:
    return RunRef(run_id=_checkpoint(logdir, run)["run_id"], run_path=run, project=project,
                  source_dir=logdir / run)


def test_removed_offline_folder_is_drift_and_the_run_is_resent_once(wb, tmp_path, project):
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    for run in ("a", "b"):
        write_simple_run(logdir / run, run, truth, ["loss", "acc"], list(range(40)), seed=1)
    assert sync_once(logdir, wb, project).exit_code == 0
    dest = WandbDestination(wb.config)
    assert dest.check_run(_ref(logdir, "a", project), _identity(logdir, "a")) is None

    (folder,) = _folders(wb, logdir, "a")
    ref_a = _ref(logdir, "a", project)
    shutil.rmtree(folder)  # a user cleaned the offline folder up
    line = dest.check_run(ref_a, _identity(logdir, "a"))
    assert line == f"run missing on wandb: offline folder removed: {folder}"
    assert dest.check_run(_ref(logdir, "b", project), _identity(logdir, "b")) is None

    write_simple_run(logdir / "a", "a", truth, ["loss", "acc"], list(range(40, 55)), seed=2,
                     append=True)
    report = sync_once(logdir, wb, project)
    assert report.exit_code == 0, report.to_dict()
    d = {r.run: r.destinations["wandb"] for r in report.runs}
    assert d["a"].drift == line
    assert any(line in n for r in report.runs for n in r.problems), [r.problems for r in report.runs]
    assert d["a"].points == 2 * 55  # the whole run again, not only the 30 new points
    assert d["b"].state == "unchanged" and d["b"].drift is None
    # the new offline run holds every point exactly once
    assert len(_folders(wb, logdir, "a")) == 1
    assert_exactly_once(wb, truth, project_fn(project))
    assert dest.check_run(_ref(logdir, "a", project), _identity(logdir, "a")) is None

    # reset and --resync ask the folders what landed: nothing twice
    done = reset_runs([str(logdir)], ["a"], SyncOptions(destinations=["wandb"],
                                                        dest_config=dict(wb.config)))
    assert done.exit_code == 0 and done.forgotten
    report = sync_once(logdir, wb, project)
    assert report.exit_code == 0 and report.runs[0].destinations["wandb"].drift is None
    assert_exactly_once(wb, truth, project_fn(project))
    report = sync_once(logdir, wb, project, resync=True)
    assert report.exit_code == 0
    assert all(d.drift is None for r in report.runs for d in r.destinations.values())
    assert_exactly_once(wb, truth, project_fn(project))


def test_a_fragment_holding_another_run_is_drift(wb, tmp_path, project):
    """The checkpoint's ``.wandb`` file was replaced by one of another run (same name)."""
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_simple_run(logdir / "a", "a", truth, ["loss"], list(range(10)), seed=1)
    write_simple_run(logdir / "b", "b", truth, ["loss"], list(range(10)), seed=1)
    assert sync_once(logdir, wb, project).exit_code == 0
    (fa,) = _folders(wb, logdir, "a")
    (fb,) = _folders(wb, logdir, "b")
    wid = _wid(logdir, "a")
    mine = fa / f"run-{wid}.wandb"
    shutil.copyfile(fb / f"run-{_wid(logdir, 'b')}.wandb", mine)
    dest = WandbDestination(wb.config)
    line = dest.check_run(_ref(logdir, "a", project), _identity(logdir, "a"))
    assert line == f"run missing on wandb: {mine} no longer holds run {wid}"


def test_a_linked_wandb_dir_is_no_drift(wb, tmp_path, monkeypatch, project):
    """WANDB_DIR through a symlink: the folder the checkpoint names is found again."""
    link = tmp_path / "wandb-link"
    link.symlink_to(wb.root, target_is_directory=True)
    monkeypatch.setenv("WANDB_DIR", str(link))
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_simple_run(logdir / "a", "a", truth, ["loss"], list(range(10)), seed=1)
    assert sync_once(logdir, wb, project).exit_code == 0
    write_simple_run(logdir / "a", "a", truth, ["loss"], list(range(10, 20)), seed=2, append=True)
    report = sync_once(logdir, wb, project)
    assert report.exit_code == 0 and report.runs[0].destinations["wandb"].drift is None
    assert report.runs[0].destinations["wandb"].points == 10
    assert_exactly_once(wb, truth, project_fn(project))
