"""`tracelet sync` of logdirs in object storage (S3 on moto, Azure Blob on Azurite, GCS on its
emulator) into MLflow's real sqlite store, read back with MlflowClient: every point exactly once,
an object re-uploaded longer sends only its new points, a replaced object is reported, and an
unchanged logdir costs one listing and nothing else."""
from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import pytest

from tracelet.engine import SyncOptions, run_sync
from tracelet.testing.conformance import assert_exactly_once, project_fn
from tracelet.testing.harness import canon
from tracelet.testing.sources import SourceTruth, build_conformance_logdir, write_simple_run

EV = "events.out.tfevents.1700000000.host.1.0"


def sync(url, tmp_path, project, **kw):
    opts = SyncOptions(destinations=["mlflow"], state_dir=str(tmp_path / "state"),
                       project=project, dest_config={"mlflow_uri": os.environ["MLFLOW_TRACKING_URI"]},
                       progress=False, **kw)
    return run_sync([url], opts)


def stats(report, url):
    return report.storage[url.rstrip("/")]


def points_sent(report) -> int:
    return sum(d.points for r in report.runs for d in r.destinations.values())


def test_sync_every_point_exactly_once_then_noop_costs_one_listing(store, mlflow, tmp_path,
                                                                   project):
    local = tmp_path / "logs"
    truth = build_conformance_logdir(local, project)
    store.upload_dir(local, "runs")
    url = store.url("runs")
    r1 = sync(url, tmp_path, project)
    assert r1.exit_code == 0, r1.to_dict()
    assert sorted(r.run for r in r1.runs) == sorted(truth.runs())
    assert_exactly_once(mlflow, truth, project_fn(project))
    rec = f"{project}/recorded"
    rb = mlflow.read_back(project, rec)
    assert rb.artifacts == truth.artifacts[rec]  # downloaded from the bucket, then uploaded
    assert rb.system_points == truth.system[rec]  # sidecar parts read from the bucket
    assert rb.params["learning_rate"] == "0.001" and rb.status == "FINISHED"  # manifest
    rb = mlflow.read_back(project, "keras/train")
    assert (rb.histograms, rb.images, rb.texts, rb.audio) == (3, 3, 3, 4)

    r2 = sync(url, tmp_path, project)
    assert r2.exit_code == 0
    assert {d.state for r in r2.runs for d in r.destinations.values()} == {"unchanged"}
    s = stats(r2, url)
    assert s["list_calls"] == 1 and s["get_calls"] == 0 and s["head_calls"] == 0, s
    assert_exactly_once(mlflow, truth, project_fn(project))


def _grow(store, local: Path, key: str, truth, run: str, steps) -> int:
    """Append events to the local file and re-upload it WHOLE, as TF's and tensorboardX's S3
    writers do on flush; returns the number of bytes added."""
    f = local / EV
    before = f.stat().st_size
    write_simple_run(local, run, truth, ["loss", "acc"], list(steps), seed=len(steps) + 3,
                     file_name=EV, append=True)
    store.put(key, f.read_bytes())
    return f.stat().st_size - before


def test_object_reuploaded_longer_sends_only_new_points(store, mlflow, tmp_path, project,
                                                        monkeypatch):
    monkeypatch.setenv("TRACELET_READ_BLOCK_BYTES", str(64 << 10))
    local = tmp_path / "r"
    truth = SourceTruth()
    write_simple_run(local, "exp", truth, ["loss", "acc"], list(range(3000)), file_name=EV)
    key = "runs/exp/" + EV
    store.put(key, (local / EV).read_bytes())
    url = store.url("runs")
    assert sync(url, tmp_path, project).exit_code == 0
    added = _grow(store, local, key, truth, "exp", range(3000, 3300))
    r = sync(url, tmp_path, project)
    assert r.exit_code == 0, r.to_dict()
    assert points_sent(r) == 600
    s = stats(r, url)
    # the new bytes, plus the 4 KiB head that proves the object is the same file grown
    assert added <= s["bytes_read"] <= added + 4096, (s, added)
    assert_exactly_once(mlflow, truth, project_fn(project))


def test_replaced_or_shrunk_object_is_reported_never_replayed(store, mlflow, tmp_path, project):
    local = tmp_path / "r"
    truth = SourceTruth()
    write_simple_run(local, "exp", truth, ["loss"], list(range(200)), file_name=EV)
    key = "runs/exp/" + EV
    store.put(key, (local / EV).read_bytes())
    url = store.url("runs")
    assert sync(url, tmp_path, project).exit_code == 0
    # replaced: a different (longer) file under the same name; its head differs
    other = tmp_path / "other"
    write_simple_run(other, "exp", SourceTruth(), ["loss"], list(range(400)), seed=9,
                     file_name=EV)
    data = bytearray((other / EV).read_bytes())
    data[200] ^= 0xFF  # inside the first 4 KiB: not the same file
    store.put(key, bytes(data))
    r = sync(url, tmp_path, project)
    assert points_sent(r) == 0
    problems = " ".join(r.runs[0].problems)
    assert "replaced" in problems and "ETag" in problems, r.runs[0].problems
    assert_exactly_once(mlflow, truth, project_fn(project))
    # shrunk: shorter than what was synced
    store.put(key, (local / EV).read_bytes()[:1000])
    r = sync(url, tmp_path, project)
    assert points_sent(r) == 0 and r.runs[0].problems  # still reported (never replayed)
    assert_exactly_once(mlflow, truth, project_fn(project))


def test_object_rewritten_during_the_read_is_not_mixed_in(pinned_store, mlflow, tmp_path, project,
                                                          monkeypatch):
    """The writer re-uploads the object while the sync reads it block by block: reads are
    pinned to the listed version, so the sync stops that file (what it sent is committed) and
    the next sync reads the rest from the new version."""
    store = pinned_store
    monkeypatch.setenv("TRACELET_READ_BLOCK_BYTES", str(64 << 10))
    local = tmp_path / "r"
    truth = SourceTruth()
    write_simple_run(local, "exp", truth, ["loss", "acc"], list(range(4000)), file_name=EV)
    key = "runs/exp/" + EV
    store.put(key, (local / EV).read_bytes())
    from tracelet.storage.objects import ObjectLocation

    real = ObjectLocation.read_range
    calls = {"n": 0}

    def rewrite_after_first_block(self, path, start, end, etag=""):
        calls["n"] += 1
        if calls["n"] == 3:  # head, first block, then the writer flushes a longer object
            _grow(store, local, key, truth, "exp", range(4000, 4100))
        return real(self, path, start, end, etag)

    monkeypatch.setattr(ObjectLocation, "read_range", rewrite_after_first_block)
    url = store.url("runs")
    r1 = sync(url, tmp_path, project, batch_points=500)
    assert r1.exit_code == 0, r1.to_dict()
    assert 0 < points_sent(r1) < 8000  # cut at the rewrite, not mixed, not an error
    assert not r1.runs[0].problems
    monkeypatch.setattr(ObjectLocation, "read_range", real)
    r2 = sync(url, tmp_path, project, batch_points=500)
    assert r2.exit_code == 0
    assert points_sent(r1) + points_sent(r2) == 8200
    assert_exactly_once(mlflow, truth, project_fn(project))


def test_tensorboardx_s3_writer_synced_then_appended(s3, mlflow, tmp_path, project):
    """tensorboardX's own S3 writer (it re-uploads the whole object on every flush)."""
    from tensorboardX import SummaryWriter

    w = SummaryWriter(f"s3://{s3.bucket}/tbx/run1", flush_secs=3600)

    def flush():  # tensorboardX writes from a queue in a thread: let it drain, then upload
        q = w._get_file_writer().event_writer._event_queue
        while not q.empty():
            time.sleep(0.01)
        time.sleep(0.2)
        w.flush()

    for step in range(100):
        w.add_scalar("loss", 1.0 / (step + 1), step)
    flush()
    url = s3.url("tbx")
    r1 = sync(url, tmp_path, project)
    assert r1.exit_code == 0 and points_sent(r1) == 100, r1.to_dict()
    for step in range(100, 150):
        w.add_scalar("loss", 1.0 / (step + 1), step)
    flush()
    r2 = sync(url, tmp_path, project)
    assert r2.exit_code == 0 and points_sent(r2) == 50, r2.to_dict()
    w.close()  # before the interpreter exits: its last flush needs boto3's thread pool
    rb = mlflow.read_back(project, "run1")
    assert rb.runs_found == 1
    got = Counter((s, canon(v)) for s, v in rb.scalars["loss"])
    assert got == Counter((s, canon(float(__import__("numpy").float32(1.0 / (s + 1)))))
                          for s in range(150))


def test_discovery_from_the_listing_matches_the_local_walk(s3, tmp_path):
    """The listing applies the local rules: hparams child folded into its parent, hidden
    folders and a manifest run's artifacts/ (with a copied event file) are not runs."""
    from tracelet.reader import discover_runs
    from tracelet.storage import open_location

    local = tmp_path / "logs"
    t = SourceTruth()
    write_simple_run(local / "a", "a", t, ["x"], [0, 1])
    write_simple_run(local / "a" / "1700000000.123", "a", t, ["hp"], [0])  # add_hparams child
    write_simple_run(local / ".hidden" / "b", "b", t, ["x"], [0])
    write_simple_run(local / "rec", "rec", t, ["x"], [0])
    (local / "rec" / "tracelet.json").write_text("{}")
    write_simple_run(local / "rec" / "artifacts", "rec", t, ["x"], [0])
    write_simple_run(local / "deep" / "er" / "c", "c", t, ["x"], [0])
    s3.upload_dir(local, "logs")
    s3.put("logs/weird/../x/" + EV, b"")  # unsafe key: reported, skipped
    cloud = discover_runs(open_location(s3.url("logs")))
    here = discover_runs(local)
    assert [(r.name, [p.name for p in r.event_files], r.has_manifest) for r in cloud.runs] == \
        [(r.name, [p.name for p in r.event_files], r.has_manifest) for r in here.runs]
    assert len(cloud.problems) == 1 and "'..'" in cloud.problems[0]
    assert str(cloud.runs[0].event_files[0]).startswith(f"s3://{s3.bucket}/logs/a/")


def test_ranged_reads_in_blocks_never_past_the_listed_size(s3, tmp_path, monkeypatch):
    from tracelet.reader import EventFileReader
    from tracelet.storage import open_location

    monkeypatch.setenv("TRACELET_READ_BLOCK_BYTES", str(64 << 10))
    local = tmp_path / "r"
    write_simple_run(local, "exp", SourceTruth(), ["loss"], list(range(12000)), file_name=EV)
    data = (local / EV).read_bytes()
    s3.put("x/" + EV, data)
    loc = open_location(s3.url("x"))
    path = loc.root / EV
    entry = loc.entry(path)
    reader = EventFileReader(path, opener=lambda p: loc.open(path, entry.size, entry.etag))
    n = sum(b.points for b in reader.batches(end=entry.size))
    assert n == 12000 and reader.status.offset == len(data)
    s = loc.stats_snapshot()
    # one GET per 64 KiB block, exactly the file's bytes, nothing twice
    assert s["get_calls"] == -(-len(data) // (64 << 10)) and s["bytes_read"] == len(data)
    f = loc.open(path, 100_000, entry.etag)  # a signpost below the object's size
    f.seek(99_990)
    assert f.read(1000) == data[99_990:100_000]
    f.seek(10)
    assert f.read(5) == data[10:15]  # small reads: one block, from the position
    assert loc.stats_snapshot()["bytes_read"] - s["bytes_read"] == 10 + (64 << 10)


def test_cloud_logdir_usage_errors(s3, tmp_path):
    from tracelet.cli import main
    from click.testing import CliRunner

    runner = CliRunner()
    r = runner.invoke(main, ["sync", s3.url("runs"), "--to", "mlflow"])
    assert r.exit_code == 2 and "--state-dir" in r.output
    r = runner.invoke(main, ["sync", f"s3://nope-{s3.bucket}/runs", "--to", "mlflow",
                             "--state-dir", str(tmp_path)])
    assert r.exit_code == 2 and "no such bucket" in r.output, r.output
    r = runner.invoke(main, ["sync", "ftp://host/runs", "--to", "mlflow",
                             "--state-dir", str(tmp_path)])
    assert r.exit_code == 2 and "unknown storage scheme" in r.output
    r = runner.invoke(main, ["inspect", s3.url("empty")])
    assert r.exit_code == 2 and "no event files" in r.output


def test_recorder_refuses_a_cloud_logdir(tmp_path, monkeypatch):
    import tracelet
    from tracelet.errors import UsageError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="object storage"):
        tracelet.start_logging("r", config={"logdir": "s3://bucket/runs"})
    assert not any(tmp_path.iterdir())  # no local folder named "s3:" was made


def test_status_export_inspect_on_a_cloud_logdir(store, mlflow, tmp_path, project):
    import json

    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from tracelet.cli import main

    local = tmp_path / "logs"
    truth = SourceTruth()
    build_conformance_logdir(local, project)
    write_simple_run(local / "plain", "plain", truth, ["loss"], list(range(500)), file_name=EV)
    store.upload_dir(local, "runs")
    url = store.url("runs")
    state = str(tmp_path / "state")
    cli = CliRunner()

    def status():
        r = cli.invoke(main, ["status", url, "--to", "mlflow", "--state-dir", state, "--json"])
        assert r.exit_code == 0, r.output
        return {row["run"]: row for row in json.loads(r.output)["runs"]}

    assert {row["state"] for row in status().values()} == {"never synced"}
    assert sync(url, tmp_path, project).exit_code == 0
    assert {row["state"] for row in status().values()} == {"up to date"}
    added = _grow(store, local / "plain", "runs/plain/" + EV, truth, "plain", range(500, 520))
    row = status()["plain"]
    assert row["state"] == "behind" and row["bytes_behind"] == added

    for args, name in (([url], "cloud"), ([str(local)], "local")):
        r = cli.invoke(main, ["export", *args, "-o", str(tmp_path / f"{name}.parquet")])
        assert r.exit_code == 0, r.output
    cloud, here = (pq.read_table(tmp_path / f"{n}.parquet") for n in ("cloud", "local"))
    assert cloud.num_rows == here.num_rows > 0
    assert cloud.to_pandas().equals(here.to_pandas())  # NaN-aware, same order

    r = cli.invoke(main, ["inspect", url, "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    want = json.loads(cli.invoke(main, ["inspect", str(local), "--json"]).output)
    assert got["points"] == want["points"] and len(got["runs"]) == len(want["runs"])
    assert got["path"] == url and got["runs"][0]["files"][0]["path"].startswith(url + "/")
    one = cli.invoke(main, ["inspect", f"{url}/plain/{EV}", "--json"])  # one object
    assert one.exit_code == 0, one.output
    assert json.loads(one.output)["points"]["scalar"] == 500 + 20 * 2
