"""A dead destination fails fast (README: "When a destination is down").

A real ``mlflow server`` is started, then killed: its URL refuses connections, as when the
tracking server died overnight. The first run spends the retry policy on it; the target's
circuit breaker then opens and every other run of the pass skips MLflow without a call, while a
second, healthy destination (a real local Aim repo, read back with Aim's SDK; the memory
destination where the point is the engine) gets every run exactly once. The pass says so in one
line naming the cause, exits 1, and leaves the skipped runs' checkpoints as they were; with the
server back, the next sync lands everything exactly once. Calls are counted by wrapping the
real MLflow destination's contract methods (they still run), never by time.
"""
from __future__ import annotations

import errno
import http.server
import os
import re
import socket
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from tests.destinations.harness_aim import AimLocalHarness
from tests.destinations.harness_mlflow import MlflowServer, _MlflowHarness, free_port
from tracelet.destinations.base import _BOUNDARY
from tracelet.retry import cause_line, error_chain
from tracelet.testing.conformance import assert_exactly_once, project_fn
from tracelet.testing.sources import build_kill_logdir


RUNS = 20
ATTEMPTS = 3


class _Server(_MlflowHarness):
    label = "mlflow-server"

    def __init__(self, uri: str):
        self.uri = uri


@pytest.fixture
def short_retries(monkeypatch):
    # the policy's shape, not its patience: 3 tries 10 ms apart
    monkeypatch.setattr("tracelet.retry.RETRY_ATTEMPTS", ATTEMPTS)
    monkeypatch.setattr("tracelet.retry.RETRY_BASE_DELAY_S", 0.01)


@pytest.fixture
def mlflow_calls(monkeypatch):
    """Every call the engine makes into the real MLflow destination, as (method, run path of
    an ``open_run``; "" for the calls on an open run, which always come after one): each
    contract method is wrapped and still runs."""
    from tracelet.destinations.mlflow.client import MlflowDestination

    calls: list[tuple[str, str]] = []
    lock = threading.Lock()

    def spy(method, fn):
        def call(self, *args, **kw):
            with lock:
                calls.append((method, args[0].run_path if method == "open_run" else ""))
            return fn(self, *args, **kw)

        return call

    for method in _BOUNDARY:
        fn = MlflowDestination.__dict__.get(method)
        if fn is not None:
            monkeypatch.setattr(MlflowDestination, method, spy(method, fn))
    return calls


def runs_that_called(calls: list[tuple[str, str]]) -> Counter:
    return Counter(run for method, run in calls if method == "open_run")


def killed_server(tmp_path: Path) -> MlflowServer:
    server = MlflowServer(tmp_path / "server").start()
    server.stop()  # killed: the port now refuses connections
    return server


def mlflow_checkpoints(logdir: Path) -> list[Path]:
    return sorted((logdir / ".tracelet" / "checkpoints").glob("mlflow-*/*.json"))


@pytest.mark.slow
def test_a_killed_mlflow_server_is_tried_by_one_run_the_others_skip_it_aim_gets_every_run(
        tmp_path, monkeypatch, capfd, short_retries, mlflow_calls):
    import tracelet

    server = killed_server(tmp_path)
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=RUNS, steps=5)
    aim = AimLocalHarness()
    aim.config = aim.setup(tmp_path, monkeypatch)
    project = "down"
    config = {"mlflow_uri": server.uri, **aim.config}

    report = tracelet.sync(logdir, to="mlflow,aim", project=project, dest_config=config)

    assert report.exit_code == 1
    # the healthy destination: every run, each point exactly once, read back with Aim's SDK
    assert {r.destinations["aim"].state for r in report.runs} == {"synced"}
    assert_exactly_once(aim, truth, project_fn(project))
    # MLflow was tried by ONE run (its retry policy: ATTEMPTS calls), the others made no call
    tried = runs_that_called(mlflow_calls)
    assert tried == {"run0": ATTEMPTS} and len(mlflow_calls) == ATTEMPTS, mlflow_calls
    states = [r.destinations["mlflow"].state for r in report.runs]
    assert states == ["failed"] + ["skipped"] * (RUNS - 1), states
    first = report.runs[0].destinations["mlflow"]
    cause = f"connection refused at {server.uri}"
    assert first.error == (f"mlflow: open run: {cause} (still failing after {ATTEMPTS} tries; "
                           "it is retried at the next sync)")
    assert "ConnectionRefusedError" in first.error_detail  # the whole chain: --json and -v
    line = f"mlflow: down ({cause}), {RUNS - 1} runs skipped, retry next pass"
    [down] = report.destinations_down
    assert down["line"] == line and down["runs_skipped"] == RUNS - 1
    assert down["cause"] == cause and "ConnectionRefusedError" in down["error_detail"]
    assert report.to_dict()["destinations_down"][0]["line"] == line
    # printed once; no line per skipped run, and no exception chain on stderr
    err = capfd.readouterr().err
    assert err.count(line) == 1, err
    assert "skipped" not in err.replace(line, ""), err
    assert "HTTPConnectionPool" not in err and "Errno" not in err, err
    # nothing of the skipped runs was marked done: only the run that tried has a checkpoint
    assert [p.stem for p in mlflow_checkpoints(logdir)] == ["run0"]
    assert report.totals()["mlflow"]["runs_skipped"] == RUNS - 1

    server = MlflowServer(server.root, server.port).start()  # back: same port, same database
    try:
        mlflow_calls.clear()
        again = tracelet.sync(logdir, to="mlflow,aim", project=project, dest_config=config)
        assert again.exit_code == 0, again.to_dict()
        assert {r.destinations["mlflow"].state for r in again.runs} == {"synced"}
        assert {r.destinations["aim"].state for r in again.runs} == {"unchanged"}
        assert not again.destinations_down
        assert_exactly_once(_Server(server.uri), truth, project_fn(project))
        assert_exactly_once(aim, truth, project_fn(project))
    finally:
        server.stop()


def test_workers_share_the_breaker_and_the_cli_says_it_in_one_line(tmp_path, short_retries):
    import json
    import subprocess

    port = free_port()  # nothing listens there
    logdir = tmp_path / "logs"
    build_kill_logdir(logdir, runs=RUNS, steps=3)
    env = {**os.environ, "TRACELET_RETRY_ATTEMPTS": str(ATTEMPTS),
           "TRACELET_RETRY_BASE_DELAY_S": "0.05", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "tracelet.cli", "sync", str(logdir), "--to", "memory,mlflow",
           "--mlflow-uri", f"http://user:hunter2@127.0.0.1:{port}", "--memory-store",
           str(tmp_path / "journal"), "--workers", "4"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr
    cause = f"connection refused at http://127.0.0.1:{port}"
    # cron lines: "<ISO time> tracelet: <run> -> <dest> (<target>): <state>…" (README)
    lines = [re.sub(r"^\d{4}-\d\d-\d\dT\S+Z ", "", ln) for ln in p.stderr.splitlines()]
    lines = [re.sub(r" -> (\w+) \([^)]*\):", r" -> \1:", ln) for ln in lines]
    down = [ln for ln in lines if " down (" in ln]
    assert len(down) == 1 and down[0].startswith(f"tracelet: error: mlflow: down ({cause}), "), \
        p.stderr
    assert "hunter2" not in p.stderr
    failed = [ln for ln in lines if "-> mlflow: failed" in ln]
    # at most one run per worker was already trying when the breaker opened: it failed, saying
    # that it ran out of retries or that it stopped because the destination was found down
    assert 1 <= len(failed) <= 4, p.stderr
    assert all(ln.endswith(f"{cause} (still failing after {ATTEMPTS} tries; it is retried at "
                           "the next sync)")
               or f"{cause} (gave up: the destination is down, " in ln for ln in failed), p.stderr
    assert sum("-> memory: synced" in ln for ln in lines) == RUNS, p.stderr
    skipped = int(down[0].split("), ")[1].split(" ")[0])
    assert skipped + len(failed) == RUNS, p.stderr

    p = subprocess.run(cmd + ["--json"], env=env, capture_output=True, text=True, timeout=300)
    report = json.loads(p.stdout)
    assert report["exit_code"] == 1
    [entry] = report["destinations_down"]
    assert entry["cause"] == cause and "hunter2" not in p.stdout
    assert "ConnectionRefusedError" in entry["error_detail"]
    states = Counter(r["destinations"]["mlflow"]["state"] for r in report["runs"])
    assert states["skipped"] == entry["runs_skipped"] >= RUNS - 4, states
    assert {r["destinations"]["memory"]["state"] for r in report["runs"]} == {"unchanged"}

    # -v: the whole chain of the run that tried, on its own line (the error line stays one line)
    p = subprocess.run(cmd + ["-v"], env=env, capture_output=True, text=True, timeout=300)
    chains = [ln for ln in p.stderr.splitlines() if "-> mlflow (" in ln and "): cause chain: " in ln]
    assert chains and all("ConnectionRefusedError" in ln for ln in chains), p.stderr
    assert "hunter2" not in p.stderr


def test_nothing_listening_costs_one_run_a_few_tries_not_the_whole_policy(tmp_path, monkeypatch,
                                                                            mlflow_calls):
    """The default policy (6 tries, ~15 s) with --workers 1: a target that refuses connections
    is tried NOTHING_THERE_TRIES times by the first run, then skipped for the pass (a pass of
    1,000 quick runs takes seconds: waiting out 15 s would make it cost several passes' time;
    scripts/bench_down.py). Counted by calls, never by time; the waits are shortened only in
    scale (base delay), not in number of tries."""
    import tracelet
    from tracelet.engine.breaker import NOTHING_THERE_TRIES
    from tracelet.retry import RETRY_ATTEMPTS

    assert NOTHING_THERE_TRIES < RETRY_ATTEMPTS
    monkeypatch.setattr("tracelet.retry.RETRY_BASE_DELAY_S", 0.01)
    port = free_port()  # nothing listens there
    logdir = tmp_path / "logs"
    build_kill_logdir(logdir, runs=5, steps=3)
    report = tracelet.sync(logdir, to="memory,mlflow",
                           dest_config={"mlflow_uri": f"http://127.0.0.1:{port}",
                                        "memory_store": str(tmp_path / "journal")})
    assert report.exit_code == 1
    tried = runs_that_called(mlflow_calls)
    assert len(tried) == 1 and list(tried.values()) == [NOTHING_THERE_TRIES], mlflow_calls
    states = Counter(r.destinations["mlflow"].state for r in report.runs)
    assert states == {"failed": 1, "skipped": 4}, states
    [failed] = [r.destinations["mlflow"] for r in report.runs
                if r.destinations["mlflow"].state == "failed"]
    assert (f"connection refused at http://127.0.0.1:{port} (gave up: the destination is down, "
            f"{NOTHING_THERE_TRIES} tries in a row found nothing there") in failed.error
    assert {r.destinations["memory"].state for r in report.runs} == {"synced"}


@pytest.mark.slow
def test_next_pass_probes_with_one_run_then_syncs_all_once_the_server_is_back(
        tmp_path, short_retries, mlflow_calls):
    """--follow's next pass: half-open. Still down: one run probes, the others skip again.
    Back: the probe closes the breaker and every run syncs."""
    from tracelet.engine import SyncOptions
    from tracelet.engine.report import SyncReport
    from tracelet.engine.runner import SyncEngine

    server = killed_server(tmp_path)
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=6, steps=4)
    engine = SyncEngine(SyncOptions(destinations=["mlflow"], project="follow",
                                    dest_config={"mlflow_uri": server.uri}, progress=False,
                                    workers=3))
    report = SyncReport()
    try:
        for _ in range(2):  # down for two passes
            mlflow_calls.clear()
            engine.run_pass([str(logdir)], report)
            tried = runs_that_called(mlflow_calls)
            assert len(tried) <= 3, mlflow_calls  # pass 1: workers racing; pass 2: one probe
            assert report.destinations_down and report.exit_code == 1
        assert len(tried) == 1 and len(mlflow_calls) == ATTEMPTS, mlflow_calls
        server = MlflowServer(server.root, server.port).start()  # stopped by the finally
        engine.run_pass([str(logdir)], report)
        assert not report.destinations_down
        assert {r.destinations["mlflow"].state for r in report.runs} == {"synced"}
        assert report.exit_code == 0
        assert_exactly_once(_Server(server.uri), truth, project_fn("follow"))
    finally:
        engine.close()
        server.stop()


def test_a_destination_that_answers_with_errors_is_up_its_breaker_stays_closed(tmp_path):
    """Only a transient failure that outlasts the retries opens the breaker: a permanent
    refusal (here the memory destination refusing every send) fails each run on its own."""
    import tracelet

    logdir = tmp_path / "logs"
    build_kill_logdir(logdir, runs=4, steps=3)
    report = tracelet.sync(logdir, to="memory", dest_config={"memory_fail_sends": "1!,2!,3!,4!"})
    assert not report.destinations_down
    assert "skipped" not in {r.destinations["memory"].state for r in report.runs}


# -- the one-line cause, from real exception chains -------------------------------------------
def _refused_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_cause_of_a_refused_request_names_errno_and_endpoint_never_credentials():
    import requests

    port = _refused_port()
    try:
        requests.get(f"http://alice:s3cret@127.0.0.1:{port}/api/2.0/x?token=abc", timeout=5)
    except requests.RequestException as e:
        assert cause_line(e) == f"connection refused at http://127.0.0.1:{port}"
        chain = error_chain(e)
        assert "s3cret" not in chain and "ConnectionRefusedError" in chain
    else:
        pytest.fail("the request did not fail")
    with socket.socket() as s:  # a bare socket: the errno alone
        try:
            s.connect(("127.0.0.1", port))
        except OSError as e:
            assert e.errno == errno.ECONNREFUSED
            assert cause_line(e) == "connection refused"


def test_cause_of_an_http_503_and_of_a_timeout():
    import requests

    class Busy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/slow":
                threading.Event().wait(1.0)
            self.send_response(503)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        r = requests.get(base + "/busy", timeout=5)
        try:
            r.raise_for_status()
        except requests.HTTPError as e:
            assert cause_line(e) == f"HTTP 503 (service unavailable) at {base}"
        try:
            requests.get(base + "/slow", timeout=0.1)
        except requests.RequestException as e:
            assert cause_line(e) == f"timed out at {base}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_cause_without_a_transport_reason_is_the_vendors_message_shortened():
    e = ValueError("INVALID_PARAMETER_VALUE: " + "x" * 1000)
    line = cause_line(e)
    assert line.startswith("ValueError: INVALID_PARAMETER_VALUE: ") and len(line) < 250


# -- several runs failing at once open the breaker without waiting out the policy -------------
class _Workers:
    """Long-lived threads, as a sync's workers are (a thread is one run at a time)."""

    def __init__(self, n: int):
        import queue

        self.queues = [queue.Queue() for _ in range(n)]
        self.threads = [threading.Thread(target=self._loop, args=(q,), daemon=True)
                        for q in self.queues]
        for t in self.threads:
            t.start()

    @staticmethod
    def _loop(q) -> None:
        while True:
            fn, done = q.get()
            if fn is None:
                return
            fn()
            done.set()

    def run(self, i: int, fn) -> None:
        done = threading.Event()
        self.queues[i].put((fn, done))
        done.wait(10)

    def close(self) -> None:
        for q in self.queues:
            q.put((None, None))


def test_runs_failing_at_once_open_the_breaker_one_run_alone_does_not():
    from tracelet.engine.breaker import NOTHING_THERE_TRIES, OPEN, RUNS_FAILING_AT_ONCE, Breaker

    err = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    busy = TimeoutError("timed out")  # a server that is there: slow, busy, restarting workers
    workers = _Workers(RUNS_FAILING_AT_ONCE)
    try:
        alone = Breaker("mlflow", "k")
        for _ in range(10):  # one run's own retries: it waits out the policy for a busy server
            workers.run(0, lambda: alone.failed_try(busy))
        assert alone.down() is None
        # ... and, refused with an answer or a busy failure in between, nothing there in a row
        for _ in range(3):
            for _ in range(NOTHING_THERE_TRIES - 1):
                workers.run(0, lambda: alone.failed_try(err))
            workers.run(0, lambda: alone.failed_try(busy))
        workers.run(0, lambda: alone.failed_try(err))
        workers.run(0, alone.answered)
        for _ in range(NOTHING_THERE_TRIES - 1):
            workers.run(0, lambda: alone.failed_try(err))
        assert alone.down() is None
        workers.run(0, lambda: alone.failed_try(err))  # nothing listens: no use waiting 15 s
        assert alone.state == OPEN and alone.cause == "connection refused"
        assert alone.why == f"{NOTHING_THERE_TRIES} tries in a row found nothing there"
        b = Breaker("mlflow", "k")
        for i in range(RUNS_FAILING_AT_ONCE - 1):
            workers.run(i, lambda: b.failed_try(err))
        workers.run(0, b.answered)  # it answered a call: the failures before do not count
        for i in range(1, RUNS_FAILING_AT_ONCE):
            workers.run(i, lambda: b.failed_try(err))
        assert b.down() is None
        workers.run(0, lambda: b.failed_try(err))
        assert b.state == OPEN and b.cause == "connection refused"
        assert b.why == f"{RUNS_FAILING_AT_ONCE} runs failing at once"
        assert "ConnectionRefusedError" in b.down().detail
        b.new_pass()  # half-open: the probe's retries decide, failures of others do not count
        for i in range(RUNS_FAILING_AT_ONCE):
            workers.run(i, lambda: b.failed_try(err))
        assert b.down() is None
    finally:
        workers.close()
