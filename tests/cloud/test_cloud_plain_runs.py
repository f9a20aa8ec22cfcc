"""A plain TensorBoard run (no manifest) in object storage (S3 on moto), synced to the memory
destination: its start from the first event, Lightning's hparams.yaml as params (a bad one a
warning), --finish-idle from the listing's modification times, and an unchanged finished run
costing one listing and no GET."""
from __future__ import annotations

import time

from tracelet.destinations.memory import reset_stores, store_named
from tracelet.engine import SyncOptions, run_sync
from tracelet.testing.events import T0, framed, scalar_event, version_event

EV = "events.out.tfevents.1700000000.host.1.0"


def sync(url, tmp_path, **kw):
    return run_sync([url], SyncOptions(destinations=["memory"], state_dir=str(tmp_path / "state"),
                                       dest_config={"memory_store": "mem:cloud"},
                                       progress=False, **kw))


def test_plain_run_in_a_bucket_starts_has_params_and_finishes_when_idle(s3, tmp_path):
    reset_stores()
    events = framed(version_event(T0 - 30)) + b"".join(
        framed(scalar_event("loss", s, float(s), wall=T0 + s)) for s in range(5))
    s3.put(f"runs/lit/version_0/{EV}", events)
    s3.put("runs/lit/version_0/hparams.yaml", b"lr: 0.1\ndb_password: x\noptim:\n  name: sgd\n")
    s3.put(f"runs/bad/{EV}", events)
    s3.put("runs/bad/hparams.yaml", b"lr: [0.1\n")
    url = s3.url("runs")
    r = sync(url, tmp_path)
    assert r.exit_code == 0, r.to_dict()
    runs = {run.run_path: run for run in store_named("mem:cloud").runs.values()}
    lit, bad = runs["lit/version_0"], runs["bad"]
    assert lit.started_at == T0 - 30 and bad.started_at == T0 - 30
    assert lit.params == {"lr": "0.1", "db_password": "***REDACTED***", "optim/name": "sgd"}
    assert bad.params == {} and len(bad.scalars()["loss"]) == 5
    [rr] = [x for x in r.runs if x.run == "bad"]
    assert any("hparams.yaml" in p and "not valid YAML" in p for p in rr.problems), rr.problems
    assert lit.status is None

    time.sleep(1.1)  # the objects' modification times (whole seconds) are now over 1 s old
    r = sync(url, tmp_path, finish_idle_s=1)
    assert {x.destinations["memory"].state for x in r.runs} == {"synced"}
    assert (lit.status, lit.ended_at) == ("finished", T0 + 4)
    r = sync(url, tmp_path, finish_idle_s=1)
    assert {x.destinations["memory"].state for x in r.runs} == {"unchanged"}
    s = r.storage[url.rstrip("/")]
    assert s["list_calls"] == 1 and s["get_calls"] == 0 and s["head_calls"] == 0, s


def test_export_with_system_from_a_bucket(s3, tmp_path):
    import pyarrow.parquet as pq

    from tracelet.export import export_logdir
    from tracelet.testing.sources import SourceTruth, write_recorded_run

    local = tmp_path / "logs"
    write_recorded_run(local / "p" / "rec", "p/rec", SourceTruth(), "p")
    s3.upload_dir(local, "runs")
    summary = export_logdir(s3.url("runs"), tmp_path / "o.parquet", with_system=True)
    assert summary.points["system"] == 20, summary.problems
    df = pq.read_table(tmp_path / "o.parquet").to_pandas()
    system = df[df.kind == "system"]
    assert sorted(system.step) == sorted(part * 100 + k for part in (1, 2) for k in range(10))


def test_a_sidecar_part_added_to_a_plain_run_in_a_bucket_is_not_unchanged(s3, tmp_path):
    """The listing twin of the local no-op check: a part (or artifact) added to a run without
    a manifest syncs at the next pass, without an event object changing."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    def part(ts: list[float]) -> bytes:
        out = io.BytesIO()
        pq.write_table(pa.table({"timestamp": ts, "name": ["cpu/percent"] * len(ts),
                                 "value": [1.0] * len(ts)}), out)
        return out.getvalue()

    reset_stores()
    events = framed(version_event(T0)) + framed(scalar_event("loss", 0, 1.0, wall=T0 + 1))
    s3.put(f"runs/plain/{EV}", events)
    s3.put("runs/plain/sysmetrics/part-000001.parquet", part([T0 + 1, T0 + 2]))
    url = s3.url("runs")
    assert sync(url, tmp_path).runs[0].destinations["memory"].points_sent == {
        "scalar": 1, "system": 2}
    assert sync(url, tmp_path).runs[0].destinations["memory"].state == "unchanged"
    s3.put("runs/plain/sysmetrics/part-000002.parquet", part([T0 + 3]))
    d = sync(url, tmp_path).runs[0].destinations["memory"]
    assert d.state == "synced" and d.points_sent == {"system": 1}
    [run] = store_named("mem:cloud").runs.values()
    assert len(run.system) == 3
