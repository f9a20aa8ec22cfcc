"""Aim-specific behaviour of ``--to aim``, read back with Aim's own SDK (``aim.Repo``, ``Run``).

The contract tests (test_conformance, test_kill9) run against ``harness_aim.AimLocalHarness``;
these check what is particular to Aim: wall times in Aim's ``time`` column, system metrics under
Aim's own names, how a repeated step is kept, the index (``Repo.iter_runs``) after a kill -9,
status/creation time, params nesting, the original image bytes, artifacts, a real ``aim server``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tensorboard.compat.proto import summary_pb2

from tests.destinations.harness_aim import (AIM_CLI, find_aim_runs, index_repo,
                                            read_aim_run)
from tests.destinations.harness_mlflow import free_port
from tracelet.testing.conformance import assert_exactly_once, project_fn, sync_once
from tracelet.testing.events import T0, event_record, header_record
from tracelet.testing.sources import (SourceTruth, build_conformance_logdir, build_kill_logdir,
                                      write_simple_run)


def _cli(h, logdir, project, **env):
    e = dict(os.environ, TRACELET_BATCH_POINTS="150", **env)
    return subprocess.run([sys.executable, "-m", "tracelet.cli", "sync", str(logdir), "--to", "aim",
                           "--project", project, *h.cli_args()], env=e, capture_output=True,
                          text=True, timeout=300)


def _aim_run(h, project, run_path):
    repo = h.repo()
    found = find_aim_runs(repo, project, run_path)
    assert len(found) == 1, found
    return read_aim_run(repo, found[0]).aim_run


def _series(run, name, context=None):
    from aim.storage.context import Context

    m = run.get_metric(name, Context(context or {}))
    assert m is not None, (name, context)
    steps, (values, times) = m.data.view(["val", "time"]).items_list()
    return list(zip(steps, values, times))


def _write_run(path: Path, manifest: dict | None = None, sidecar: list | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if manifest is not None:
        (path / "tracelet.json").write_text(json.dumps(manifest))
    if sidecar:
        (path / "sysmetrics").mkdir(exist_ok=True)
        for i, rows in enumerate(sidecar, 1):
            ts, names, values = zip(*rows)
            pq.write_table(pa.table({"timestamp": list(ts), "name": list(names),
                                     "value": list(values)}),
                           path / "sysmetrics" / f"part-{i:06d}.parquet")


def test_wall_time_and_step_kept(aim_h, tmp_path, project):
    truth = SourceTruth()
    write_simple_run(tmp_path / "logs" / "r", "r", truth, ["loss"], list(range(0, 50, 5)), seed=3)
    assert sync_once(tmp_path / "logs", aim_h, project).exit_code == 0
    run = _aim_run(aim_h, project, "r")
    want = sorted(truth.scalars[("r", "loss")])
    got = _series(run, "loss")
    assert [(s, round(v, 6), w) for s, v, w in got] == [(s, round(v, 6), w) for s, v, w in want]


def test_system_metrics_under_aims_names(aim_h, tmp_path, project):
    rows1 = [(T0 + k, n, float(k)) for k in range(3) for n in (
        "process/cpu_percent", "memory/utilization_percent", "gpu/0/utilization_percent",
        "gpu/1/temperature_c", "gpu/0/power_watts", "gpu/0/memory_used_bytes", "process/rss_bytes",
        "cpu/utilization_percent")]
    rows2 = [(T0 + 10 + k, "process/cpu_percent", 100.0 + k) for k in range(2)]
    run_dir = tmp_path / "logs" / "rec"
    write_simple_run(run_dir, "rec", SourceTruth(), ["x"], [0, 1])
    _write_run(run_dir, {"schema_version": 1, "run_id": "rid-sys", "project": project},
               [rows1, rows2])
    assert sync_once(tmp_path / "logs", aim_h, project).exit_code == 0

    def check():
        run = _aim_run(aim_h, project, "rec")
        names = {(m.name, json.dumps(m.context.to_dict())) for m in run.metrics()}
        assert names >= {("__system__cpu", "{}"), ("__system__memory_percent", "{}"),
                         ('__system__gpu', '{"gpu": 0}'), ('__system__gpu_temp', '{"gpu": 1}'),
                         ('__system__gpu_power_watts', '{"gpu": 0}'),
                         ("system/gpu/0/memory_used_bytes", "{}"), ("system/process/rss_bytes", "{}"),
                         ("system/cpu/utilization_percent", "{}")}, names
        # Aim's resource tracker steps: 0, 1, 2... in time order, across sidecar parts
        assert _series(run, "__system__cpu") == [(0, 0.0, T0), (1, 1.0, T0 + 1), (2, 2.0, T0 + 2),
                                                 (3, 100.0, T0 + 10), (4, 101.0, T0 + 11)]
        assert _series(run, "__system__gpu_temp", {"gpu": 1}) == [(k, float(k), T0 + k) for k in range(3)]
        assert aim_h.read_back(project, "rec").system_points == len(rows1) + len(rows2)

    check()
    shutil.rmtree(tmp_path / "logs" / ".tracelet")  # lost state: every part re-sent, deduped
    assert sync_once(tmp_path / "logs", aim_h, project).exit_code == 0
    check()


def _restarted_run(path: Path, truth: SourceTruth, copies: int) -> None:
    """Training restarted ``copies`` times from step 0: the same steps, new values and times."""
    path.mkdir(parents=True, exist_ok=True)
    for c in range(copies):
        chunks = [header_record(T0 + 1000 * c)]
        for step in range(10):
            v, wall = float(100 * c + step), T0 + 1000 * c + step
            chunks.append(event_record(step, wall, [summary_pb2.Summary.Value(tag="loss", simple_value=v)]))
            truth.add("restarts", "loss", step, v, wall)
        (path / f"events.out.tfevents.{1700000000 + c}.host.1.0").write_bytes(b"".join(chunks))


def test_repeated_steps_go_to_repeat_contexts(aim_h, tmp_path, project):
    truth = build_conformance_logdir(tmp_path / "logs", project)
    _restarted_run(tmp_path / "logs" / "restarts", truth, copies=3)
    assert sync_once(tmp_path / "logs", aim_h, project).exit_code == 0
    run = _aim_run(aim_h, project, "restarts")
    for c in range(3):  # first run in context {}, 1st restart in {"tracelet_repeat": 1}, ...
        assert _series(run, "loss", {"tracelet_repeat": c} if c else None) == [
            (s, float(100 * c + s), T0 + 1000 * c + s) for s in range(10)]
    resnet = _aim_run(aim_h, project, "torch/resnet")
    assert [(s, v) for s, v, _ in _series(resnet, "Loss/train", {"tracelet_repeat": 1})] == [
        (0, float("inf")), (7, 3.5), (9, 0.5)]  # steps the first file (0, 3, 6, 9...) took
    shutil.rmtree(tmp_path / "logs" / ".tracelet")
    assert sync_once(tmp_path / "logs", aim_h, project).exit_code == 0
    assert_exactly_once(aim_h, truth, project_fn(project))


def test_identical_duplicate_points_kept_twice_through_crash_and_lost_state(aim_h, tmp_path, project):
    """A copied event file holds every point twice (same step, value and wall time): Aim must
    show both copies, also after a kill -9 mid-sync and after losing the state dir, where each
    re-sent point is matched against what landed."""
    truth = SourceTruth()
    f = write_simple_run(tmp_path / "logs" / "dup", "dup", truth, ["loss"], list(range(300)), seed=5)
    shutil.copy(f, f.with_name(f.name.replace(".0", ".1")))
    truth.scalars[("dup", "loss")] *= 2
    assert _cli(aim_h, tmp_path / "logs", project, TRACELET_CRASH_AT="after_send:3").returncode == -9
    assert _cli(aim_h, tmp_path / "logs", project).returncode == 0
    assert_exactly_once(aim_h, truth, project_fn(project))
    shutil.rmtree(tmp_path / "logs" / ".tracelet")
    assert sync_once(tmp_path / "logs", aim_h, project, batch_points=90).exit_code == 0
    assert_exactly_once(aim_h, truth, project_fn(project))


def test_run_killed_mid_sync_is_listed_by_iter_runs_after_resync(aim_h, tmp_path, project):
    from aim import Repo

    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=2, steps=400)
    assert _cli(aim_h, logdir, project, TRACELET_CRASH_AT="after_send:2").returncode == -9
    root = Path(aim_h.root)
    assert list((root / ".aim" / "locks").glob("*.softlock")), "the killed sync held a run lock"
    assert _cli(aim_h, logdir, project).returncode == 0
    repo = Repo(str(root))
    runs = {r.name: r for r in repo.iter_runs()}  # Aim's index, no `aim up` involved
    assert set(runs) == {"run0", "run1"}
    for name, r in runs.items():
        assert r.experiment == project and not r.active  # closed: end time set
        assert r.get("tracelet")["run_path"] == name
    assert not list((root / ".aim" / "locks").glob("*.softlock"))  # stale lock released
    q = list(repo.query_runs('run.tracelet.run_path == "run1"', report_mode=0).iter_runs())
    assert len(q) == 1
    ls = subprocess.run([AIM_CLI, "runs", "--repo", str(root), "ls"],
                        capture_output=True, text=True)
    assert "Total 2 runs" in ls.stdout, ls.stdout + ls.stderr
    assert_exactly_once(aim_h, truth, project_fn(project))


def test_status_creation_time_and_params(aim_h, tmp_path, project):
    run_dir = tmp_path / "logs" / "job"
    write_simple_run(run_dir, "job", SourceTruth(), ["x"], [0, 1])
    manifest = {"schema_version": 1, "run_id": "rid-job", "project": project, "status": "running",
                "started_at": T0, "params": {"lr": 0.1, "model": {"depth": 50, "act": "relu"}},
                "tags": {"team": "vision"}}
    _write_run(run_dir, manifest)
    assert sync_once(tmp_path / "logs", aim_h, project).exit_code == 0
    run = _aim_run(aim_h, project, "job")
    assert run.active and run.creation_time == T0
    assert run.get("hparams") == {"lr": 0.1, "model": {"act": "relu", "depth": 50}}
    assert run.get("tracelet") == {"run_id": "rid-job", "run_path": "job", "status": "running",
                                   "tags": {"team": "vision"}}
    # the job failed; a param was changed: Aim params are mutable, the new value replaces it
    manifest.update(status="failed", ended_at=T0 + 60, params={"lr": 0.2, "model": {"depth": 50}})
    _write_run(run_dir, manifest)
    report = sync_once(tmp_path / "logs", aim_h, project)
    assert report.exit_code == 0 and not report.runs[0].destinations["aim"].param_conflicts
    run = _aim_run(aim_h, project, "job")
    assert not run.active and run.end_time == T0 + 60
    assert run.get("tracelet")["status"] == "failed"
    assert run.get("hparams") == {"lr": 0.2, "model": {"act": "relu", "depth": 50}}
    assert aim_h.read_back(project, "job").status == "failed"


def test_images_histograms_text_and_artifacts_in_native_form(aim_h, tmp_path, project):
    from aim.storage.context import Context

    from tracelet.reader import EventFileReader

    logdir = tmp_path / "logs"
    build_conformance_logdir(logdir, project)
    assert sync_once(logdir, aim_h, project).exit_code == 0
    run = _aim_run(aim_h, project, "keras/train")
    ev = next((logdir / "keras" / "train").glob("events.*"))
    source = [b for b in EventFileReader(ev, 0, {}).batches(end=ev.stat().st_size, max_points=10**6)]
    pngs = [im.encoded for b in source for im in b.images]
    _, (images,) = run.get_image_sequence("samples", Context({})).data.view(["val"]).items_list()
    assert [bytes(i[0].storage["data"].load()) for i in images] == pngs  # the writer's bytes
    assert images[0][0].to_pil_image().size == (8, 6)
    _, (dists,) = run.get_distribution_sequence("dense/kernel", Context({})).data.view(["val"]).items_list()
    for i, d in enumerate(dists):  # equal-width source buckets: kept exactly
        assert d.weights.tolist() == [float(k + i) for k in range(5)] and d.range == [-1.0, 1.0]
    _, (texts,) = run.get_text_sequence("notes", Context({})).data.view(["val"]).items_list()
    assert [t.data for t in texts] == ["note 0", "note 1", "note 2"]
    rec = _aim_run(aim_h, project, f"{project}/recorded")
    art = rec.artifacts["configs/model.py"]
    got = art.download(str(tmp_path / "dl"))
    assert Path(got).read_text() == "class Net: pass\n"


def test_non_uniform_histogram_rebinned_keeping_mass():
    from tracelet.destinations.aim import distribution_bins
    from tracelet.reader.points import HistogramPoint

    lefts = (-10.0, -1.0, -0.1, 0.0, 0.1, 1.0)
    rights = (-1.0, -0.1, 0.0, 0.1, 1.0, 10.0)
    counts = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    weights, (lo, hi) = distribution_bins(HistogramPoint("h", 0, T0, lefts, rights, counts))
    assert (lo, hi) == (-10.0, 10.0) and abs(sum(weights) - 21.0) < 1e-9
    assert weights[-1] > 0 and weights[0] > 0
    one, rng = distribution_bins(HistogramPoint("h", 0, T0, (2.0,), (2.0,), (7.0,)))
    assert one == [7.0] and rng == (1.5, 2.5)


def test_lost_state_finds_a_run_made_with_another_hash(aim_h, tmp_path, project):
    """A run carrying run["tracelet"]["run_id"] but not our hash (another tool, an older sync)
    is found through Aim's index instead of creating a second one."""
    from aim import Repo, Run

    truth = SourceTruth()
    write_simple_run(tmp_path / "logs" / "r", "r", truth, ["loss"], list(range(20)))
    _write_run(tmp_path / "logs" / "r", {"schema_version": 1, "run_id": "rid-other", "project": project})
    repo = Repo.from_path(aim_h.root, init=True)
    other = Run(repo=repo, experiment=project, system_tracking_interval=None,
                capture_terminal_logs=False)
    other.name = "r"
    other["tracelet"] = {"run_id": "rid-other", "run_path": "r"}
    other_hash = other.hash
    other.close()
    from aim.sdk.index_manager import RepoIndexManager

    RepoIndexManager.get_index_manager(repo).index(other_hash)
    assert sync_once(tmp_path / "logs", aim_h, project).exit_code == 0
    assert find_aim_runs(aim_h.repo(), project, "r") == [other_hash]
    assert_exactly_once(aim_h, truth, project_fn(project))


def test_import_tracelet_does_not_import_aim():
    code = "import sys, tracelet, tracelet.destinations, tracelet.engine; print('aim' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.slow
@pytest.mark.server
def test_remote_aim_server(aim_server, tmp_path, project):
    """``--aim-repo aim://127.0.0.1:PORT``: a real ``aim server``; read back from its repo with
    Aim's SDK after indexing it as ``aim up`` on that repo would."""
    h = aim_server.harness()
    logdir = tmp_path / "logs"
    truth = build_conformance_logdir(logdir, project)
    report = sync_once(logdir, h, project)
    assert report.exit_code == 0, report.to_dict()
    shutil.rmtree(logdir / ".tracelet")  # lost state: the same runs are found over RPC
    assert sync_once(logdir, h, project).exit_code == 0
    index_repo(aim_server.repo)
    assert_exactly_once(h, truth, project_fn(project))
    rb = h.read_back(project, f"{project}/recorded")
    assert rb.system_points == truth.system[f"{project}/recorded"] and rb.status == "finished"
    unsupported = {r.run: r.destinations["aim"].unsupported for r in report.runs}
    assert unsupported[f"{project}/recorded"] == {"artifact": 2}  # no artifacts uri given


# -- typed errors and the index lock ------------------------------------------------------------
_HOLD_DB = ("import sys, aimrocks\n"  # a writable RocksDB handle, as `aim up` opens the index
            "db = aimrocks.DB(sys.argv[1], aimrocks.Options(create_if_missing=True), read_only=False)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.readline()\n")


class _HeldDB:
    """Another process holding a RocksDB's lock (``aim up`` indexing), until ``release()``."""

    def __init__(self, path: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLD_DB, str(path)], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            self.proc.wait(30)


def _unindexed_run(dest, project: str) -> str:
    from aim import Run

    run = Run(repo=dest.repo, experiment=project, system_tracking_interval=None,
              capture_terminal_logs=False)
    run.track(1.0, name="loss", step=0)
    run_hash = run.hash
    run.close()  # Aim's own close does not index
    return run_hash


def _indexed(root: str) -> set[str]:
    from aim import Repo

    return {r.hash for r in Repo(root).iter_runs()}


def test_index_waits_out_aim_ups_lock_on_the_index_db(aim_h, project):
    """``aim up`` holds the index DB while it indexes a run: the sync's index call waits in short
    steps (the retry policy with the index's budget) and lists the run once the lock is free."""
    from tracelet.destinations.aim import AimDestination
    from tracelet.destinations.aim.storage import INDEX_LOCK_WAIT_S

    dest = AimDestination(aim_h.config)
    run_hash = _unindexed_run(dest, project)
    held = _HeldDB(Path(aim_h.root) / ".aim" / "meta" / "index")
    waits = []

    def wait(seconds):  # the lock is let go during the first wait
        waits.append(seconds)
        held.release()

    try:
        dest._indexer.wait = wait
        dest._index(run_hash)
    finally:
        held.release()
    assert waits == [INDEX_LOCK_WAIT_S]  # one try met the lock, the next one indexed
    assert run_hash in _indexed(aim_h.root)
    dest.close()


def test_index_lock_held_throughout_leaves_the_run_to_aim_up(aim_h, project, caplog):
    from tracelet.destinations.aim import AimDestination
    from tracelet.destinations.aim.storage import INDEX_LOCK_TRIES, INDEX_LOCK_WAIT_S

    dest = AimDestination(aim_h.config)
    run_hash = _unindexed_run(dest, project)
    held = _HeldDB(Path(aim_h.root) / ".aim" / "meta" / "index")
    waits = []
    try:
        dest._indexer.wait = waits.append
        dest._index(run_hash)  # never raises: indexing is left to `aim up`
    finally:
        held.release()
    assert waits == [INDEX_LOCK_WAIT_S] * (INDEX_LOCK_TRIES - 1)  # short waits, not backoff
    assert run_hash not in _indexed(aim_h.root)
    warned = [r.getMessage() for r in caplog.records if r.name == "tracelet.aim"]
    assert any(run_hash in m and "`aim up` indexes it" in m and "RocksIOError" in m
               for m in warned), warned
    dest._indexer.wait = None
    dest._index(run_hash)  # the lock is free again
    assert run_hash in _indexed(aim_h.root)
    dest.close()


def _raised(fn, *args):
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 (the exception is the result)
        return e
    raise AssertionError(f"{fn} raised nothing")


def test_classify_aims_errors_by_their_classes(aim_h, tmp_path):
    """Each failure is produced by Aim's own code (or its dependencies') and decided by its
    class or cause, never its text."""
    import aimrocks
    from aim.ext.transport.client import Client
    from aim.ext.transport.message_utils import build_exception, raise_exception
    from filelock import Timeout
    from websockets.datastructures import Headers
    from websockets.exceptions import ConnectionClosedError, InvalidStatus
    from websockets.http11 import Response

    from tracelet.destinations.aim import AimDestination
    from tracelet.errors import DestinationError, PermanentDestinationError, TransientDestinationError

    def open_db(path):
        return aimrocks.DB(str(path), aimrocks.Options(create_if_missing=True), read_only=False)

    dest = AimDestination(aim_h.config)
    classify = dest.classify
    # a RocksDB held by another process (`aim up` on the index, a writer ignoring Aim's lock)
    held = _HeldDB(tmp_path / "rocks")
    try:
        e = _raised(open_db, tmp_path / "rocks")
    finally:
        held.release()
    assert isinstance(e, aimrocks.errors.RocksIOError) and classify(e) is TransientDestinationError
    # a damaged RocksDB: the destination, not this content
    db = open_db(tmp_path / "broken")
    db.put(b"k", b"v")
    del db  # closed
    for manifest in (tmp_path / "broken").glob("MANIFEST-*"):
        manifest.write_bytes(b"\0garbage" * 64)
    e = _raised(open_db, tmp_path / "broken")
    assert isinstance(e, aimrocks.errors.Corruption) and classify(e) is DestinationError
    # a run locked here, and one locked on an `aim server` (its client re-raises it bare)
    assert classify(Timeout(str(tmp_path / "lock"))) is TransientDestinationError
    e = _raised(raise_exception, build_exception(Timeout(str(tmp_path / "lock"))))
    assert type(e) is Exception and classify(e) is TransientDestinationError
    assert classify(_raised(_raise, Exception("aim server lock timed out"))) is PermanentDestinationError
    # no `aim server` at that address: Aim's RuntimeError, raised inside its except
    e = _raised(Client, f"127.0.0.1:{free_port()}")
    assert type(e) is RuntimeError and classify(e) is TransientDestinationError
    assert classify(RuntimeError("Failed to connect to Aim Server.")) is PermanentDestinationError
    # the write socket: closed mid-write is transient, a refused handshake is its HTTP status
    assert classify(ConnectionClosedError(None, None)) is TransientDestinationError
    assert classify(InvalidStatus(Response(403, "Forbidden", Headers()))) is DestinationError
    assert classify(InvalidStatus(Response(503, "Unavailable", Headers()))) is TransientDestinationError
    dest.close()


def _raise(e: BaseException) -> None:
    raise e


def test_unreachable_aim_server_is_named(tmp_path, monkeypatch):
    from tracelet.destinations.aim import AimDestination
    from tracelet.errors import DestinationError

    monkeypatch.delenv("AIM_REPO", raising=False)
    url = f"aim://127.0.0.1:{free_port()}"
    with pytest.raises(DestinationError, match=r"cannot open repo aim://127\.0\.0\.1:\d+.*aim server"):
        AimDestination({"aim_repo": url})
