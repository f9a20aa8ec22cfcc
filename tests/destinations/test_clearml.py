"""ClearML specifics: tag → title/series, monitor titles, one session per resync holding only new
points, the upload instructions against the files produced, repeats and non-finite values."""
from __future__ import annotations

import inspect
import json
import os
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.destinations.harness_clearml import ClearmlOfflineHarness, offline_sessions
from tracelet.destinations.clearml import (_Copies, clearml_key, plan_offline_import,
                                           series_name, split_tag, system_series)
from tracelet.testing.conformance import assert_exactly_once, project_fn, sync_once
from tracelet.testing.events import T0
from tracelet.testing.sources import (SourceTruth, build_conformance_logdir, write_points,
                                      write_simple_run)


@pytest.fixture
def cml(tmp_path, monkeypatch):
    h = ClearmlOfflineHarness()
    h.config = h.setup(tmp_path, monkeypatch)
    return h


def events_of(session) -> list[dict]:
    return [e for line in session.lines() for e in json.loads(line)]


def scalar_series(session) -> dict[tuple[str, str], list[tuple[int, float]]]:
    out: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for e in events_of(session):
        if e["type"] == "training_stats_scalar":
            out.setdefault((e["metric"], e["variant"]), []).append((e["iter"], e["value"]))
    return out


# -- names -------------------------------------------------------------------------------------
@pytest.mark.parametrize("tag, title, series", [
    ("Loss/Train/CrossEntropy", "Loss/Train", "CrossEntropy"),
    ("loss", "loss", "loss"),
    ("Accuracy/val", "Accuracy", "val"),
    ("a//b/./c", "a//b/.", "c"),
    ("trailing/", "trailing/", "trailing/"),
    ("/leading", "/leading", "/leading"),
    ("ünïcode/损失", "ünïcode", "损失"),
])
def test_tag_to_title_series(tag, title, series):
    assert split_tag(tag) == (title, series)
    assert clearml_key(tag) == (title if title == series else f"{title}/{series}")


def test_titles_and_series_in_the_session(cml, tmp_path):
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_simple_run(logdir / "r", "r", truth, ["Loss/Train/CrossEntropy", "loss", "lr/"],
                     list(range(5)))
    assert sync_once(logdir, cml, "p").exit_code == 0
    (session,) = cml.sessions("p", "r")
    got = scalar_series(session)
    assert set(got) == {("Loss/Train", "CrossEntropy"), ("loss", "loss"), ("lr/", "lr/")}
    assert all(len(v) == 5 for v in got.values())
    assert_exactly_once(cml, truth, project_fn("p"))


def test_wall_time_is_the_event_timestamp(cml, tmp_path):
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_simple_run(logdir / "r", "r", truth, ["x"], list(range(10)), seed=3)
    sync_once(logdir, cml, "p")
    (session,) = cml.sessions("p", "r")
    stamps = sorted((e["iter"], e["timestamp"]) for e in events_of(session))
    assert stamps == [(s, int(w * 1000)) for s, _, w in truth.scalars[("r", "x")]]


# -- repeats and values ClearML cannot hold ------------------------------------------------------
def test_repeated_steps_and_non_finite_values(cml, tmp_path):
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_points(logdir / "r", [("m/x", s, float(s), T0 + s) for s in range(5)],
                 file_name="events.out.tfevents.1.h.1.0", truth=truth, run="r")
    # a restart: steps 0..2 again, and values Elasticsearch's float field rejects
    write_points(logdir / "r",
                 [("m/x", 0, 10.0, T0 + 10), ("m/x", 1, float("nan"), T0 + 11),
                  ("m/x", 2, float("inf"), T0 + 12), ("m/x", 9, float("-inf"), T0 + 13)],
                 file_name="events.out.tfevents.2.h.1.0", truth=truth, run="r")
    assert sync_once(logdir, cml, "p").exit_code == 0
    (session,) = cml.sessions("p", "r")
    got = scalar_series(session)
    assert sorted(got[("m", "x")]) == [(s, float(s)) for s in range(5)]
    assert got[("m", "x #2")] == [(0, 10.0)]
    assert got[("m", "x (nan) #2")] == [(1, 0.0)]
    assert got[("m", "x (+inf) #2")] == [(2, 0.0)]
    assert got[("m", "x (-inf)")] == [(9, 0.0)]
    for e in events_of(session):
        assert np.isfinite(e["value"]) and abs(e["value"]) <= 3.4028234663852886e38
    assert_exactly_once(cml, truth, project_fn("p"))


def test_copy_numbers_are_unique_and_a_function_of_the_source_order():
    rng = random.Random(7)
    for trial in range(200):
        steps = [rng.choice([rng.randrange(50), rng.randrange(10), 10**12]) for _ in range(60)]
        state: dict = {}
        c = _Copies(state)
        first = []
        for s in steps:
            first.append(c.take("k", s))
        c.commit()
        assert len({(s, k) for s, k in zip(steps, first)}) == len(steps)
        # the same source replayed in batches, committing in between: same copy numbers
        state2: dict = {}
        again, i = [], 0
        while i < len(steps):
            n = rng.randrange(1, 9)
            c2 = _Copies(state2)
            got = [c2.take("k", s) for s in steps[i:i + n]]
            if rng.random() < 0.3:  # a failed send: nothing committed, the batch comes again
                continue
            c2.commit()
            again += got
            i += n
        assert again == first
    assert series_name("x", 1) == "x" and series_name("x", 3, "nan") == "x (nan) #3"


# -- system metrics -----------------------------------------------------------------------------
def test_system_metrics_use_clearmls_monitor_titles(cml, tmp_path):
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    run = logdir / "p" / "rec"
    write_simple_run(run, "p/rec", truth, ["loss"], [0, 1])
    (run / "tracelet.json").write_text(json.dumps({
        "schema_version": 1, "run_id": "rid-rec", "project": "p", "status": "running",
        "started_at": T0}))
    (run / "sysmetrics").mkdir()
    names = ["cpu/utilization_percent", "memory/used_bytes", "gpu/0/utilization_percent",
             "gpu/0/memory_used_bytes", "gpu/0/power_watts", "process/rss_bytes"]
    values = [50.0, 2.0 * 2**30, 90.0, 3.0 * 2**30, 250.0, 1024.0]
    pq.write_table(pa.table({"timestamp": [T0 + 12.5] * 6, "name": names, "value": values}),
                   run / "sysmetrics" / "part-000001.parquet")
    assert sync_once(logdir, cml, "p").exit_code == 0
    (session,) = cml.sessions("p", "p/rec")
    got = {(e["metric"], e["variant"]): (e["iter"], e["value"]) for e in events_of(session)
           if e["metric"].startswith(":monitor:")}
    assert got == {
        (":monitor:machine", "cpu_usage"): (12, 50.0),
        (":monitor:machine", "memory_used_gb"): (12, 2.0),
        (":monitor:gpu", "gpu_0_utilization"): (12, 90.0),
        (":monitor:gpu", "gpu_0_mem_used_gb"): (12, 3.0),
        (":monitor:gpu", "gpu_0_power_draw"): (12, 250.0),
        (":monitor:machine", "process_rss_bytes"): (12, 1024.0),
    }
    assert system_series("network/sent_bytes") == (":monitor:machine", "network_tx_mb_total",
                                                   1 / 2**20)
    assert cml.read_back("p", "p/rec").status == "running"


# -- sessions per resync ------------------------------------------------------------------------
def test_each_resync_adds_a_session_holding_only_new_points(cml, tmp_path):
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_simple_run(logdir / "r", "r", truth, ["a/b"], list(range(20)))
    (logdir / "r" / "tracelet.json").write_text(json.dumps({
        "schema_version": 1, "run_id": "rid-r", "project": "p", "status": "running",
        "params": {"lr": 0.1}}))
    sync_once(logdir, cml, "p")
    assert cml.read_back("p", "r").params == {"lr": "0.1"}
    write_simple_run(logdir / "r", "r", truth, ["a/b"], list(range(20, 30)), seed=1, append=True)
    sync_once(logdir, cml, "p")
    s1, s2 = cml.sessions("p", "r")
    assert [it for it, _ in scalar_series(s1)[("a", "b")]] == list(range(20))
    assert [it for it, _ in scalar_series(s2)[("a", "b")]] == list(range(20, 30))
    assert s1.doc["id"] < s2.doc["id"] and s1.doc["id"][:28] == s2.doc["id"][:28]

    # nothing new: no session; a lost state dir with nothing new: no session either
    sync_once(logdir, cml, "p")
    shutil.rmtree(logdir / ".tracelet")
    assert sync_once(logdir, cml, "p").exit_code == 0
    assert len(cml.sessions("p", "r")) == 2
    # lost state dir and new points: the new session holds exactly the new points
    shutil.rmtree(logdir / ".tracelet")
    write_simple_run(logdir / "r", "r", truth, ["a/b"], list(range(30, 35)), seed=2, append=True)
    assert sync_once(logdir, cml, "p").exit_code == 0
    s3 = cml.sessions("p", "r")[2]
    assert [it for it, _ in scalar_series(s3)[("a", "b")]] == list(range(30, 35))
    # params and status already recorded are not recorded again
    assert set(s3.doc.get("hyperparams", {})) == {"tracelet"} and not s3.doc.get("status")
    assert cml.read_back("p", "r").status == "running"
    assert_exactly_once(cml, truth, project_fn("p"))


def test_killed_sync_leaves_a_session_the_next_sync_continues(cml, tmp_path):
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_simple_run(logdir / "r", "r", truth, ["loss"], list(range(600)))
    env = dict(os.environ, **cml.env(), TRACELET_BATCH_POINTS="100",
               TRACELET_CRASH_AT="after_send:3")
    proc = subprocess.run([sys.executable, "-m", "tracelet.cli", "sync", str(logdir), "--to",
                           "clearml", "--project", "p", "--clearml-offline"], env=env,
                          capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    (folder,) = [p for p in cml.offline.iterdir() if p.is_dir()]
    assert not folder.with_name(folder.name + ".zip").exists()  # unfinished
    (run,) = plan_offline_import(cml.offline)  # the helper imports it as a folder, unmarked
    assert run["sessions"] == [{"path": str(folder), "seq": 1, "task_name": "r__",
                                "finished": False, "status": None, "imported_as": None}]
    # a kill in the middle of a line: ClearML's importer would fail on it (and re-send)
    with open(folder / "metrics.jsonl", "ab") as f:
        f.write(b'[{"timestamp": 1, "type": "training_stats_scal')
    assert sync_once(logdir, cml, "p").exit_code == 0
    (session,) = cml.sessions("p", "r")
    assert session.folder == folder and folder.with_name(folder.name + ".zip").exists()
    assert all(line.endswith(b"]") for line in session.lines())
    assert len(events_of(session)) == 600  # the re-sent batch was not written twice
    assert_exactly_once(cml, truth, project_fn("p"))


def test_changed_offline_folder_is_another_target(cml, tmp_path, monkeypatch):
    """The offline folder is part of the target key: pointing CLEARML_CACHE_DIR elsewhere starts
    an independent checkpoint there, so the new folder gets the whole run, the old one is left
    as it was."""
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_simple_run(logdir / "r", "r", truth, ["x"], list(range(3)))
    sync_once(logdir, cml, "p")
    before = sorted(p.name for p in cml.offline.iterdir())
    write_simple_run(logdir / "r", "r", truth, ["x"], [3], append=True)
    monkeypatch.setenv("CLEARML_CACHE_DIR", str(tmp_path / "elsewhere"))
    report = sync_once(logdir, cml, "p")
    assert report.exit_code == 0, report.to_dict()
    assert report.runs[0].destinations["clearml"].points_sent == {"scalar": 4}
    assert sorted(p.name for p in cml.offline.iterdir()) == before


# -- the upload instructions against the files ---------------------------------------------------
def test_upload_instructions_match_the_files(cml, tmp_path):
    logdir = tmp_path / "logs"
    truth = build_conformance_logdir(logdir, "p")
    sync_once(logdir, cml, "p")
    write_simple_run(logdir / "torch" / "resnet", "torch/resnet", truth, ["Loss/train"], [400],
                     seed=5, append=True)
    sync_once(logdir, cml, "p")

    plan = plan_offline_import(cml.offline)
    # task names are display names: a recorded run's run path less "<project>/" (Run names)
    from tracelet.engine.naming import display_name

    assert sorted(r["task_name"] for r in plan) == sorted(display_name(r, "p") for r in truth.runs())
    for run in plan:
        assert all(s["finished"] for s in run["sessions"])
        zips = [Path(s["path"]) for s in run["sessions"]]
        # the documented loop: sorted(glob("offline-<20 hex of the run>*.zip"))
        assert zips == sorted(cml.offline.glob(f"offline-{run['run_hash']}*.zip"))
        assert [s["seq"] for s in run["sessions"]] == list(range(1, len(zips) + 1))
        for z in zips:
            folder = z.with_suffix("")
            with zipfile.ZipFile(z) as zf:
                names = set(zf.namelist())
                # the zip is the finished folder, file for file
                assert names == {p.relative_to(folder).as_posix()
                                 for p in folder.rglob("*") if p.is_file()}
                doc = json.loads(zf.read("task.json"))
                assert doc["id"] == folder.name and doc["name"] == run["task_name"]
                assert doc["project_name"] == "p__" and doc["offline_folder"] == str(folder)
                lines = zf.read("metrics.jsonl").splitlines() if "metrics.jsonl" in names else []
                for line in lines:
                    for ev in json.loads(line):
                        assert ev["task"] == doc["id"]  # kept by only_with_id=export_data["id"]
                        if ev.get("key"):  # debug sample: uploaded from data/<key>
                            assert "data/" + ev["key"] in names
                for a in (doc.get("execution") or {}).get("artifacts") or []:
                    rel = a["uri"].replace(doc["offline_folder"] + "/data/", "", 1)
                    assert "data/" + rel in names  # import_offline_session's artifact fix
    assert {len(r["sessions"]) for r in plan if r["task_name"] == "torch/resnet"} == {2}

    # ClearML's importer still takes what the instructions use
    from clearml import Task

    params = inspect.signature(Task.import_offline_session).parameters
    assert {"session_folder_zip", "previous_task_id"} <= set(params)

    # the helper's dry run prints the same plan
    env = dict(os.environ, **cml.env())
    out = subprocess.run([sys.executable, "-m", "tracelet.destinations.clearml", "import",
                          "--dry-run", str(cml.offline)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == json.loads(json.dumps(plan))
    assert_exactly_once(cml, truth, project_fn("p"))


def test_import_tracelet_does_not_import_clearml():
    code = ("import sys, tracelet, tracelet.destinations.clearml, tracelet.engine; "
            "print('clearml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


class _RecordingSession:
    """Stands in for the HTTP session ONLY, to run ClearML's own offline-import reader
    (``Metrics.report_offline_session``) over our files and see what it would send."""

    def __init__(self):
        self.sent: list[dict] = []

    def send(self, req):
        self.sent.extend(req.requests)


def test_clearmls_own_import_reader_sends_every_event(cml, tmp_path):
    from types import SimpleNamespace

    from clearml.backend_api.services import events as api_events
    from clearml.backend_interface.metrics import Metrics

    logdir = tmp_path / "logs"
    build_conformance_logdir(logdir, "p")
    sync_once(logdir, cml, "p")
    remote = tmp_path / "files-server"
    models = {"training_stats_scalar": api_events.MetricsScalarEvent,
              "training_debug_image": api_events.MetricsImageEvent,
              "plot": api_events.MetricsPlotEvent}
    for s in offline_sessions(cml.offline):
        rec = _RecordingSession()
        task = SimpleNamespace(id="a" * 32, session=rec,
                               _get_default_report_storage_uri=lambda: remote.as_uri())
        assert Metrics.report_offline_session(task, str(s.folder), only_with_id=s.doc["id"],
                                              session=rec, remote_url=str(remote))
        ours = events_of(s)
        assert len(rec.sent) == len(ours) > 0
        for r in rec.sent:
            assert r["task"] == "a" * 32
            fields = {k: v for k, v in r.items() if k not in ("type", "method")}
            models[r["type"]](**fields)  # ClearML's own event model accepts it
            if r.get("key"):  # the debug sample was uploaded where the event points
                assert f".{'a' * 32}/" in r["key"] and Path(r["url"]).is_file()


def test_names_shorter_than_clearml_accepts_are_padded(cml, tmp_path):
    """ClearML wants project and task names of 3+ characters (each part of a nested project):
    run `r` in project `ab/x` lands as task `r__` in project `ab_/x__`, twice synced once."""
    from tracelet.destinations.clearml import clearml_name

    assert clearml_name("ab/x", nested=True) == "ab_/x__"
    assert clearml_name("resnet") == "resnet" and clearml_name("a/b") == "a/b"
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_simple_run(logdir / "r", "r", truth, ["loss"], list(range(15)))
    for _ in range(2):
        assert sync_once(logdir, cml, "ab/x").exit_code == 0
    rb = cml.read_back("ab_/x__", "r__")
    assert rb.runs_found == 1
    assert sorted(s for s, _ in rb.scalars[cml.metric_key("loss")]) == list(range(15))


# -- errors at the vendor boundary ---------------------------------------------------------------
def _reply(status: int, body: dict | None = None, text: str | None = None):
    """A real ``requests.Response`` as the server's raw reply to ``events.add_batch``."""
    import requests

    r = requests.Response()
    r.status_code = status
    r._content = (text if text is not None else json.dumps(body or {})).encode()
    r.headers["Content-Type"] = "application/json"
    return r


def _send_error(code: int, subcode: int):
    """ClearML's own ``SendError`` carrying the server's ``CallResult`` (code + subcode)."""
    from clearml.backend_api.session.callresult import CallResult
    from clearml.backend_api.session.response import ResponseMeta
    from clearml.backend_interface.session import SendError

    meta = ResponseMeta(is_valid=True, id="x", trx="x", endpoint={"name": "events.add_batch"},
                        result_code=code, result_subcode=subcode, result_msg="refused")
    return SendError(CallResult(meta=meta), f"Action failed {meta}")


def _raised(exc, cause):
    try:
        try:
            raise cause
        except BaseException as c:
            raise exc from c
    except BaseException as e:
        return e


def test_classify_by_server_code_subcode_and_errno(cml):
    import errno

    import requests
    from tracelet.destinations.clearml.client import ClearmlDestination
    from tracelet.errors import (DestinationError, PermanentDestinationError,
                                 TransientDestinationError)

    dest = ClearmlDestination(cml.config)
    T, P, D = TransientDestinationError, PermanentDestinationError, DestinationError
    cases = [
        # ClearML's SendError: the reply's code and subcode decide, never its text
        (_send_error(400, 101), D), (_send_error(400, 130), D), (_send_error(400, 112), D),
        (_send_error(400, 121), T), (_send_error(400, 12), P), (_send_error(400, 131), P),
        (_send_error(401, 0), D), (_send_error(403, 0), D), (_send_error(429, 0), T),
        (_send_error(500, 0), T),
        # the raw add_batch reply: its status, and the subcode of its JSON meta
        (requests.HTTPError(response=_reply(400, {"meta": {"result_subcode": 101}})), D),
        (requests.HTTPError(response=_reply(400, {"meta": {"result_subcode": 12}})), P),
        (requests.HTTPError(response=_reply(400, text="<html>bad request</html>")), P),
        (requests.HTTPError(response=_reply(502, text="<html>Bad Gateway</html>")), T),
        (requests.HTTPError(response=_reply(403, {})), D),
        # offline writes: the errno decides; a wrapped cause is found through the chain
        (OSError(errno.ENOSPC, "No space left on device"), D),
        (OSError(errno.EACCES, "Permission denied"), D),
        (OSError(errno.ENAMETOOLONG, "File name too long"), P),
        (_raised(RuntimeError("clearml: storing 1 debug sample(s) failed"),
                 OSError(errno.EROFS, "Read-only file system")), D),
        (_raised(RuntimeError("clearml: storing 1 debug sample(s) failed"),
                 OSError(errno.ENAMETOOLONG, "File name too long")), P),
        (_raised(RuntimeError("x"), requests.ConnectionError("refused")), T),
        # text that used to look transient to a regex is not read at all
        (RuntimeError("HTTP 500 timed out: connection refused"), P),
        (TypeError("a bug"), D),
    ]
    for exc, want in cases:
        assert dest.classify(exc) is want, (exc, dest.classify(exc), want)
    dest.close()


class _StandInSession:
    """Stands in for the HTTP session ONLY: returns the server's raw replies given."""

    def __init__(self, replies):
        self.replies = list(replies)

    def send_request_batch(self, service, action, json):
        assert (service, action) == ("events", "add_batch")
        return [self.replies.pop(0)]


def test_online_add_batch_refusals_are_typed_at_the_call_site(cml):
    """A 200 reply counting refused events is the content (quarantined by the engine), whatever
    its count: "refused 500 event(s)" once read as a transient HTTP 500 by a message regex."""
    from types import SimpleNamespace

    import requests
    from tracelet.destinations.clearml.client import ClearmlDestination
    from tracelet.errors import (DestinationError, PermanentDestinationError,
                                 TransientDestinationError)

    dest = ClearmlDestination(cml.config)
    events = [{"type": "training_stats_scalar", "iter": 1, "value": 1.0}]
    refused = _reply(200, {"meta": {"result_code": 200},
                           "data": {"added": 0, "errors": 500,
                                    "errors_info": {"Invalid value": 500}}})
    task = SimpleNamespace(session=_StandInSession([refused]))
    with pytest.raises(PermanentDestinationError, match="refused 500 event"):
        dest._write_online(task, events, [])
    ok = _reply(200, {"meta": {"result_code": 200}, "data": {"added": 1, "errors": 0}})
    dest._write_online(SimpleNamespace(session=_StandInSession([ok])), events, [])
    for reply, want in ((_reply(400, {"meta": {"result_code": 400, "result_subcode": 101}}),
                         DestinationError),
                        (_reply(503, text="Service Unavailable"), TransientDestinationError)):
        with pytest.raises(requests.HTTPError) as info:
            dest._write_online(SimpleNamespace(session=_StandInSession([reply])), events, [])
        assert dest.classify(info.value) is want
    dest.close()


def test_unreadable_session_zip_fails_the_destination_not_the_points(cml, tmp_path):
    """After a lost state dir every batch is compared with the run's sessions; a session left
    only as a damaged zip cannot be compared: the destination fails (named, retried next sync),
    nothing is quarantined, and moving the zip away lets the run sync again."""
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_simple_run(logdir / "r", "r", truth, ["loss"], list(range(30)))
    assert sync_once(logdir, cml, "p").exit_code == 0
    (session,) = cml.sessions("p", "r")
    shutil.rmtree(session.folder)  # only the zip is kept (as when the folders were cleaned up)
    zpath = session.zip_path
    good = zpath.read_bytes()
    shutil.rmtree(logdir / ".tracelet")
    for damaged in (good[: len(good) // 2], good[:30] + bytes(len(good) - 30), b"not a zip"):
        zpath.write_bytes(damaged)
        report = sync_once(logdir, cml, "p")
        d = report.runs[0].destinations["clearml"]
        assert report.exit_code != 0 and d.state == "failed", report.to_dict()
        assert "not a readable zip" in (d.error or "") and zpath.name in d.error, d.error
        assert not d.quarantined, d
    zpath.rename(tmp_path / zpath.name)
    assert sync_once(logdir, cml, "p").exit_code == 0
    assert_exactly_once(cml, truth, project_fn("p"))


def test_a_session_read_failing_half_way_lets_no_landed_point_through(cml, tmp_path):
    """After a lost state dir, what the sessions hold is read once per run; a read that fails
    part way (here session 2's metrics.jsonl cannot be read from its zip, what ClearML imports)
    must not leave a partial record that the engine's resend of the halves then trusts: nothing
    is written again."""
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_simple_run(logdir / "r", "r", truth, ["loss"], list(range(30)))
    assert sync_once(logdir, cml, "p").exit_code == 0
    write_simple_run(logdir / "r", "r", truth, ["loss"], list(range(30, 40)), seed=1, append=True)
    assert sync_once(logdir, cml, "p").exit_code == 0
    s1, s2 = cml.sessions("p", "r")
    shutil.rmtree(logdir / ".tracelet")
    good = s2.zip_path.read_bytes()
    with zipfile.ZipFile(s2.zip_path) as zf:  # one byte of metrics.jsonl's data flipped
        info = zf.getinfo("metrics.jsonl")
    h = info.header_offset  # local header: 30 bytes, then name and extra (lengths at 26, 28)
    at = h + 30 + int.from_bytes(good[h + 26:h + 28], "little") \
        + int.from_bytes(good[h + 28:h + 30], "little") + info.compress_size // 2
    s2.zip_path.write_bytes(good[:at] + bytes([good[at] ^ 0xFF]) + good[at + 1:])
    report = sync_once(logdir, cml, "p")
    d = report.runs[0].destinations["clearml"]
    assert report.exit_code != 0 and d.state == "failed" and not d.quarantined, report.to_dict()
    assert "not a readable zip" in (d.error or ""), d.error
    assert [s.name for s in cml.sessions("p", "r")] == [s1.name, s2.name]  # nothing re-sent
    s2.zip_path.write_bytes(good)
    assert sync_once(logdir, cml, "p").exit_code == 0
    assert [s.name for s in cml.sessions("p", "r")] == [s1.name, s2.name]
    assert_exactly_once(cml, truth, project_fn("p"))
