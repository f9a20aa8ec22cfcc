"""W&B-specific behaviour, read back from the ``.wandb`` files W&B itself wrote (harness_wandb).

The conformance and kill -9 suites run against W&B too; these add what only W&B has: its
``_step`` rule across offline fragments, rows per step, the 512-bin histogram limit, and the
repairs a killed sync needs before ``wandb sync`` can upload.
"""
from __future__ import annotations

import hashlib
import importlib
import math
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from tensorboard.compat.proto import summary_pb2

from tests.destinations.harness_wandb import WandbOfflineHarness, load_fragment, upload
from tracelet.testing.conformance import assert_exactly_once, project_fn, sync_once
from tracelet.testing.events import T0, event_record, header_record
from tracelet.testing.harness import canon
from tracelet.testing.sources import (SourceTruth, build_conformance_logdir, f32, write_points,
                                      write_simple_run)


@pytest.fixture
def wb(tmp_path, monkeypatch):
    h = WandbOfflineHarness()
    h.config = h.setup(tmp_path, monkeypatch)
    return h


def run_fragments(h, project, run_path):
    frags = [f for f in h.fragments() if f.project == project
             and (f.config.get("tracelet") or {}).get("run_path") == run_path]
    return sorted(frags, key=lambda f: f.start)


def data_fragments(h, project, run_path):
    """The run's fragments holding rows: each sync's first (the next one holds the summary)."""
    return [f for f in run_fragments(h, project, run_path) if f.rows]


def assert_steps_only_grow(h, project, run_path):
    """No row is ever written at or below a ``_step`` already written for the run: then every
    upload rule (old servers drop such rows, wandb 0.31 renumbers them) keeps the same rows."""
    frags = run_fragments(h, project, run_path)
    steps = [s for f in frags for s, _ in f.rows]
    assert steps == sorted(set(steps)), steps[:50]
    assert upload(frags, "drop")["rows"] == upload(frags, "renumber")["rows"]
    return frags


def truth_of(run, points, truth=None):
    truth = truth or SourceTruth()
    for k, (tag, step, value) in enumerate(points):
        truth.add(run, tag, step, f32(value), T0 + k)
    return truth


def crash_sync(h, logdir, project, crash_at, batch_points):
    env = dict(os.environ, **h.env(), TRACELET_CRASH_AT=crash_at,
               TRACELET_BATCH_POINTS=str(batch_points))
    proc = subprocess.run([sys.executable, "-m", "tracelet.cli", "sync", str(logdir), "--to",
                           "wandb", "--project", project], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]


def test_steps_going_back_are_all_kept(wb, tmp_path, project):
    """A restarted training logs steps 30..59 again: W&B keeps both, global_step tells them."""
    logdir = tmp_path / "logs"
    first = [(t, s, math.sin(s) + i) for s in range(60) for i, t in enumerate(["loss", "acc"])]
    again = [(t, s, math.cos(s) + i) for s in range(30, 90) for i, t in enumerate(["loss", "acc"])]
    write_points(logdir / "r", first + again)
    truth = truth_of("r", first + again)
    assert sync_once(logdir, wb, project).exit_code == 0
    assert_exactly_once(wb, truth, project_fn(project))
    rb = wb.read_back(project, "r")
    assert Counter(s for s, _ in rb.scalars["loss"])[45] == 2
    assert_steps_only_grow(wb, project, "r")


def test_offline_fragments_continue_step(wb, tmp_path, project, capfd):
    """Each sync writes a new offline-run-* folder; its rows continue the previous `_step`."""
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_simple_run(logdir / "a", "a", truth, ["loss", "acc"], list(range(50)), seed=1)
    assert sync_once(logdir, wb, project).exit_code == 0
    write_simple_run(logdir / "a", "a", truth, ["loss", "acc"], list(range(50, 80)), seed=2,
                     append=True)
    assert sync_once(logdir, wb, project).exit_code == 0
    report = sync_once(logdir, wb, project)  # nothing new: no W&B call, no new folder
    assert all(d.state == "unchanged" for r in report.runs for d in r.destinations.values())
    assert len(assert_steps_only_grow(wb, project, "a")) == 4  # each sync: rows, summary
    frags = data_fragments(wb, project, "a")
    assert len(frags) == 2
    assert frags[1].rows[0][0] == frags[0].rows[-1][0] + 1
    assert_exactly_once(wb, truth, project_fn(project))
    err = capfd.readouterr().err
    assert err.count("wandb sync ") == 2, err  # one upload hint per sync (not per run)


def test_rows_grouped_per_step(wb, tmp_path, project):
    """Points of one step share a row; a tag repeated within a step starts a new row."""
    logdir = tmp_path / "logs"
    points = [(t, s, float(s)) for s in range(20) for t in ("a", "b", "c")]
    points += [("a", 20, 1.0), ("a", 20, 2.0), ("b", 20, 3.0)]  # "a" twice in step 20
    write_points(logdir / "g", points)
    truth = truth_of("g", points)
    assert sync_once(logdir, wb, project).exit_code == 0
    (frag,) = data_fragments(wb, project, "g")
    metric_keys = [sorted(k for k in row if not k.startswith("_") and k != "global_step")
                   for _, row in frag.rows]
    assert metric_keys[:20] == [["a", "b", "c"]] * 20
    assert metric_keys[20:] == [["a"], ["a", "b"]]
    assert [row["global_step"] for _, row in frag.rows] == list(range(21)) + [20]
    assert_exactly_once(wb, truth, project_fn(project))


def test_histogram_over_512_bins_is_rebinned(wb, tmp_path, project):
    logdir = tmp_path / "logs"
    counts = np.arange(1000, dtype=np.float64) % 7
    limits = np.linspace(-1, 1, 1001)[1:]
    histo = summary_pb2.HistogramProto(min=-1.0, max=1.0, num=float(counts.sum()),
                                       sum=0.0, sum_squares=1.0, bucket_limit=limits.tolist(),
                                       bucket=counts.tolist())
    (logdir / "h").mkdir(parents=True)
    (logdir / "h" / "events.out.tfevents.1700000000.host.1.0").write_bytes(
        header_record() + event_record(3, T0, [summary_pb2.Summary.Value(tag="w", histo=histo)]))
    assert sync_once(logdir, wb, project).exit_code == 0
    (frag,) = data_fragments(wb, project, "h")
    (hist,) = [row["w"] for _, row in frag.rows if "w" in row]
    assert hist["_type"] == "histogram"
    assert len(hist["values"]) == 512 and len(hist["bins"]) == 513
    assert sum(hist["values"]) == counts.sum()
    assert hist["bins"][0] == -1.0 and hist["bins"][-1] == 1.0
    assert wb.read_back(project, "h").histograms == 1


def test_missing_sdk_names_the_extra(monkeypatch):
    from tracelet.destinations import create_destination
    from tracelet.errors import MissingExtraError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "wandb" else real(name, *a, **k))
    with pytest.raises(MissingExtraError, match=r"tracelet\[wandb\]"):
        create_destination("wandb", {"wandb_mode": "offline"})


def test_target_key_matches_the_destination(wb):
    from tracelet.destinations import create_destination, target_key

    dest = create_destination("wandb", wb.config)
    assert dest.target == f"offline:{wb.root}"
    assert target_key("wandb", wb.config) == \
        "wandb-" + hashlib.sha1(dest.target.encode()).hexdigest()[:10]


def test_identical_points_survive_a_crash_resend(wb, tmp_path, project):
    """A restart that logs the very same (tag, step, value) again: both copies are source points.
    Dedupe by source position, not by value, keeps both across a kill -9 + resync, even when the
    crashed batch ended inside a step and the file grew before the resync."""
    logdir = tmp_path / "logs"
    run = [(t, s, float(f32(math.sin(s) + i))) for s in range(40) for i, t in enumerate("xy")]
    again = run[40:]  # steps 20..39 logged again, identical values
    write_points(logdir / "d", run + again)
    crash_sync(wb, logdir, project, "after_send:3", batch_points=7)  # odd: batches split steps
    more = [(t, s, float(s)) for s in range(40, 45) for t in "xy"]
    write_points(logdir / "d", more, append=True)
    truth = truth_of("d", run + again + more)
    assert sync_once(logdir, wb, project).exit_code == 0
    assert_exactly_once(wb, truth, project_fn(project))
    assert_steps_only_grow(wb, project, "d")
    loss = Counter((s, canon(v)) for s, v in wb.read_back(project, "d").scalars["x"])
    assert loss[(25, canon(f32(math.sin(25))))] == 2


def test_killed_sync_leftovers_are_repaired(wb, tmp_path, project):
    """A sync killed while W&B wrote leaves a half record at the end of its file, or (killed in
    wandb.init) a file without a Run record; `wandb sync` would stop at either. The next sync
    cuts the half record and moves the empty file aside, and nothing is lost or doubled."""
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_simple_run(logdir / "k", "k", truth, ["loss"], list(range(30)), seed=3)
    assert sync_once(logdir, wb, project).exit_code == 0
    (frag,) = data_fragments(wb, project, "k")
    with open(frag.path, "r+b") as f:  # the end of the file never made it to disk
        f.truncate(os.path.getsize(frag.path) - 5)
    assert load_fragment(frag.path).torn
    junk = frag.path.parent.parent / (frag.path.parent.name + "-9")
    junk.mkdir()
    (junk / frag.path.name).write_bytes(frag.path.read_bytes()[:7])  # the file header only
    write_simple_run(logdir / "k", "k", truth, ["loss"], list(range(30, 40)), seed=4, append=True)
    assert sync_once(logdir, wb, project).exit_code == 0
    assert not load_fragment(frag.path).torn
    assert not (junk / frag.path.name).exists()
    assert_exactly_once(wb, truth, project_fn(project))
    assert_steps_only_grow(wb, project, "k")


def test_workers_share_one_service(wb, tmp_path, project):
    logdir = tmp_path / "logs"
    truth = build_conformance_logdir(logdir, project)
    report = sync_once(logdir, wb, project, workers=3)
    assert report.exit_code == 0, report.to_dict()
    assert_exactly_once(wb, truth, project_fn(project))
    for run in truth.runs():
        assert_steps_only_grow(wb, project, run)


def test_status_maps_to_the_exit_record(wb, tmp_path, project):
    import json

    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_simple_run(logdir / "s", "s", truth, ["loss"], list(range(5)), seed=5)
    manifest = {"schema_version": 1, "run_id": "rid-s", "project": project, "status": "running"}
    (logdir / "s" / "tracelet.json").write_text(json.dumps(manifest))
    assert sync_once(logdir, wb, project).exit_code == 0
    assert wb.read_back(project, "s").status == "preempted"  # resumed by the next sync
    manifest["status"] = "failed"
    (logdir / "s" / "tracelet.json").write_text(json.dumps(manifest))
    assert sync_once(logdir, wb, project).exit_code == 0
    assert wb.read_back(project, "s").status == "failed"
    manifest["status"] = "finished"
    (logdir / "s" / "tracelet.json").write_text(json.dumps(manifest))
    assert sync_once(logdir, wb, project).exit_code == 0
    rb = wb.read_back(project, "s")
    assert rb.status == "finished" and rb.runs_found == 1


def test_project_name_wandb_rejects_is_mapped(wb, tmp_path):
    """W&B rejects `/ \\ # ? % :` in project names: they become `_` (a logdir folder called
    `runs:2024` must not fail every sync); a resync finds the same run under the mapped name."""
    from tracelet.destinations.wandb import wandb_project

    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_simple_run(logdir / "r", "r", truth, ["loss"], list(range(20)))
    raw = "team/exp:1#a?b%c\\d"
    assert wandb_project(raw) == "team_exp_1_a_b_c_d"
    assert len(wandb_project("p" * 300)) == 128
    for _ in range(2):
        report = sync_once(logdir, wb, raw)
        assert report.exit_code == 0, report.to_dict()
    assert_exactly_once(wb, truth, project_fn("team_exp_1_a_b_c_d"))


@pytest.mark.parametrize("nth", [2, 5])
def test_kill_while_the_service_still_writes_then_resync_at_once(wb, tmp_path, project, nth):
    """kill -9 with rows handed to W&B's service (a separate process, alive ~1.5 s more and
    still writing) and an immediate resync: the resync waits for that writer before it reads
    or cuts the fragment, so every point lands exactly once."""
    from tracelet.testing.sources import build_kill_logdir

    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=2, steps=1500)
    env = dict(os.environ, **wb.env(), TRACELET_BATCH_POINTS="150",
               TRACELET_CRASH_AT=f"wandb_rows_handed:{nth}")
    proc = subprocess.run([sys.executable, "-m", "tracelet.cli", "sync", str(logdir), "--to",
                           "wandb", "--project", project], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    report = sync_once(logdir, wb, project)  # at once: the orphaned service may still write
    assert report.exit_code == 0, report.to_dict()
    assert_exactly_once(wb, truth, project_fn(project))
    for run in truth.runs():
        assert_steps_only_grow(wb, project, run)


def test_fragment_reads_wait_for_another_writer(tmp_path):
    """What the fix for a killed sync's orphaned W&B service rests on: a fragment another
    process holds open is not read (or cut) until that process lets go."""
    import time

    from tracelet.destinations.wandb import wait_for_writers
    from tracelet.errors import DestinationError

    frag = tmp_path / "run-x.wandb"
    frag.write_bytes(b"partial")
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys,time; f=open(sys.argv[1],'ab'); print('open',flush=True);"
                               " time.sleep(1.5); f.write(b'rest'); f.close()", str(frag)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "open"
    wandb_dest = sys.modules[wait_for_writers.__module__]  # the module that keeps the scan
    wandb_dest._OPEN_FILES = (0.0, None)  # a scan from an earlier test predates the holder
    with pytest.raises(DestinationError, match=f"still open in process {holder.pid}"):
        wait_for_writers([str(frag)], timeout_s=0.3)
    t = time.monotonic()
    wait_for_writers([str(frag)])
    assert time.monotonic() - t > 0.5 and holder.wait(10) == 0
    assert frag.read_bytes() == b"partialrest"  # read only once the writer had finished
    wait_for_writers([str(frag)])  # nobody holds it: returns at once
