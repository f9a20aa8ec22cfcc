"""ClearML offline: a resync that only confirmed what the sessions hold says so.

After ``tracelet reset``, ``sync --resync`` or a drift, every batch is sent with dedupe and
compared with what the run's offline sessions would import (ClearML's own rules:
``Task.import_offline_session`` → ``Metrics.report_offline_session``); the points found there
are counted as ``points_present`` and the run's line says ``confirmed N already present``
(``(K of them already present)`` when only some were). What the import would not send — a
debug sample without its file, an event of another task id, every event of a session whose
first metrics line ClearML cannot read — is never counted present: it is written again. Read
back with ClearML's import rules over the files (harness_clearml)."""
from __future__ import annotations

import json
import shutil
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.destinations.harness_clearml import ClearmlOfflineHarness
from tests.destinations.test_clearml_drift import assert_each_point_once, cli, remove
from tracelet.testing.conformance import assert_exactly_once, project_fn, sync_once
from tracelet.testing.events import T0
from tracelet.testing.sources import SourceTruth, build_conformance_logdir, write_simple_run


@pytest.fixture
def cml(tmp_path, monkeypatch):
    h = ClearmlOfflineHarness()
    h.config = h.setup(tmp_path, monkeypatch)
    return h


def dests(report) -> dict:
    return {r.run: r.destinations["clearml"] for r in report.runs}


def run_lines(proc, run: str) -> list[str]:
    """The CLI's line(s) for ``run`` on clearml (cron format: stamp, then the text)."""
    return [ln.split(" ", 1)[1] for ln in proc.stderr.splitlines()
            if f" tracelet: {run} -> clearml (" in ln]


def listing(h) -> list[str]:
    return sorted(p.name for p in h.offline.iterdir())


def sync_cli(h, logdir, *extra):
    proc = cli(h, "sync", str(logdir), "--to", "clearml", "--project", "p", "--clearml-offline",
               *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_reset_and_resync_confirm_every_point_already_present(cml, tmp_path):
    logdir = tmp_path / "logs"
    truth = build_conformance_logdir(logdir, "p")
    first = dests(sync_once(logdir, cml, "p"))
    points = {run: d.points for run, d in first.items()}
    assert all(d.points_present == 0 for d in first.values()), first
    before = listing(cml)

    # reset: the checkpoints are gone, the sessions are the truth
    assert cli(cml, "reset", str(logdir), "--to", "clearml").returncode == 0
    d = dests(sync_once(logdir, cml, "p"))
    # scalars, audio, NaN markers, system metrics; keras/train's images, texts, histograms,
    # audio and its hparams (params its session's task.json holds with the same values)
    for run in ("torch/resnet", "p/recorded", "keras/train"):
        assert d[run].state == "synced" and d[run].points_present == d[run].points, d[run]
        assert d[run].points == points[run] > 0
    assert d["keras/train"].points_sent["hparams"] == 1
    assert listing(cml) == before  # nothing written: no new session

    # --resync: the same, and the line says so
    proc = sync_cli(cml, logdir, "--resync")
    for run in ("torch/resnet", "p/recorded", "keras/train"):
        (line,) = run_lines(proc, run)
        assert line.endswith(f"): confirmed {points[run]:,} already present"), line
    assert listing(cml) == before
    assert_each_point_once(cml, truth)


def test_points_appended_before_the_resync_are_synced_the_rest_confirmed(cml, tmp_path):
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    run = logdir / "r"
    write_simple_run(run, "r", truth, ["loss", "acc/val"], list(range(30)))
    (run / "tracelet.json").write_text(json.dumps({
        "schema_version": 1, "run_id": "rid-r", "project": "p", "status": "running",
        "started_at": T0}))
    (run / "sysmetrics").mkdir()

    def part(n: int) -> None:
        pq.write_table(pa.table({"timestamp": [T0 + 10 * n + k for k in range(4)],
                                 "name": ["cpu/utilization_percent"] * 4,
                                 "value": [float(k) for k in range(4)]}),
                       run / "sysmetrics" / f"part-{n:06d}.parquet")

    part(1)
    assert dests(sync_once(logdir, cml, "p"))["r"].points == 64
    write_simple_run(run, "r", truth, ["loss", "acc/val"], list(range(30, 35)), seed=1,
                     append=True)
    part(2)
    proc = sync_cli(cml, logdir, "--resync")
    (line,) = run_lines(proc, "r")
    assert line.endswith("): synced scalar 70, system 8 (64 of them already present)"), line
    # the new points went into a second session, exactly once; nothing old was written again
    s1, s2 = cml.sessions("p", "r")
    new = [(e["metric"], e["iter"]) for ln in s2.lines() for e in json.loads(ln)
           if e.get("type") == "training_stats_scalar"]
    assert len(new) == 14 and sorted({i for m, i in new if m != ":monitor:machine"}) == list(
        range(30, 35)), new
    # reset after that: all 78 confirmed
    assert cli(cml, "reset", str(logdir), "--to", "clearml").returncode == 0
    d = dests(sync_once(logdir, cml, "p"))["r"]
    assert d.points == d.points_present == 78, d
    assert_each_point_once(cml, truth)


def test_drift_counts_only_what_the_remaining_sessions_hold(cml, tmp_path):
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    for k in range(3):  # three syncs, three sessions of 20 points each
        write_simple_run(logdir / "r", "r", truth, ["loss", "acc/val"],
                         list(range(10 * k, 10 * k + 10)), seed=k, append=k > 0)
        assert sync_once(logdir, cml, "p").exit_code == 0
    write_simple_run(logdir / "s", "s", truth, ["loss"], list(range(12)))
    assert sync_once(logdir, cml, "p").exit_code == 0
    s1, s2, s3 = cml.sessions("p", "r")
    remove([s2])  # one of three removed: the other two still hold 40 points
    remove(cml.sessions("p", "s"))  # all removed: nothing is there
    # drift is found when a changed run is opened: one new point each
    write_simple_run(logdir / "r", "r", truth, ["loss"], [30], seed=9, append=True)
    write_simple_run(logdir / "s", "s", truth, ["loss"], [12], seed=9, append=True)
    proc = sync_cli(cml, logdir)
    (line,) = run_lines(proc, "r")  # the whole run re-sent: what s1 and s3 hold is confirmed
    assert line.endswith("): synced scalar 61 (40 of them already present)"), line
    (line,) = run_lines(proc, "s")
    assert line.endswith("): synced scalar 13"), line
    assert_each_point_once(cml, truth)


def rewrite_session(session, fn) -> None:
    """Change a session's files in its folder AND its zip (what the import reads): ``fn(name,
    data)`` returns the new bytes, or None to leave the file out."""
    files = {p.relative_to(session.folder).as_posix(): p.read_bytes()
             for p in sorted(session.folder.rglob("*")) if p.is_file()}
    shutil.rmtree(session.folder)
    with zipfile.ZipFile(session.zip_path, "w") as zf:
        for name, data in files.items():
            data = fn(name, data)
            if data is None:
                continue
            zf.writestr(name, data)
            (session.folder / name).parent.mkdir(parents=True, exist_ok=True)
            (session.folder / name).write_bytes(data)


def test_what_the_import_would_not_send_is_never_counted_present(cml, tmp_path):
    logdir = tmp_path / "logs"
    truth = build_conformance_logdir(logdir, "p")
    first = dests(sync_once(logdir, cml, "p"))
    (keras,) = cml.sessions("p", "keras/train")
    (torch,) = cml.sessions("p", "torch/resnet")
    (rec,) = cml.sessions("p", "p/recorded")

    # keras: one image's file gone; torch: two scalar events carry another task's id
    image = sorted(n for n in keras.folder.rglob("*") if n.suffix == ".png")[0]
    image_key = image.relative_to(keras.folder).as_posix()
    rewrite_session(keras, lambda name, data: None if name == image_key else data)

    def foreign(name, data):
        if name != "metrics.jsonl":
            return data
        lines = data.splitlines()
        events = json.loads(lines[0])
        for e in events[:2]:
            e["task"] = "another-task"
        return b"\n".join([json.dumps(events).encode(), *lines[1:]]) + b"\n"

    rewrite_session(torch, foreign)
    # p/recorded: a first metrics line ClearML cannot read: its import crashes, nothing lands
    rewrite_session(rec, lambda name, data: b"[{" + data if name == "metrics.jsonl" else data)

    assert cli(cml, "reset", str(logdir), "--to", "clearml").returncode == 0
    d = dests(sync_once(logdir, cml, "p"))
    # keras: the image without its file is not there (its hparams are: task.json holds them)
    assert d["keras/train"].points_present == first["keras/train"].points - 1, d["keras/train"]
    assert d["torch/resnet"].points_present == first["torch/resnet"].points - 2, d["torch/resnet"]
    assert d["p/recorded"].points_present == 0 and d["p/recorded"].points == 70, d["p/recorded"]
    # what was not there was written again, into a new session of each run
    assert [len(cml.sessions("p", r)) for r in ("keras/train", "torch/resnet", "p/recorded")] \
        == [2, 2, 2]
    remove([rec])  # the session ClearML cannot import (a user would move it away)
    # as ClearML would show it (the events the import skips are in the files twice, not on
    # the server)
    assert_exactly_once(cml, truth, project_fn("p"))
    for run in truth.runs():
        rb = cml.read_back("p", run)
        for kind in ("audio", "images", "texts", "histograms"):
            assert getattr(rb, kind) == getattr(truth, kind).get(run, 0), (run, kind)
