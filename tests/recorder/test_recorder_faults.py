"""How runs end, with real processes: SIGKILL, SIGTERM, SIGINT, exceptions, plain exit, and
``tracelet record`` (exit codes, signal forwarding, TRACELET_RUN_DIR)."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.recorder.recorder_helpers import child_env, read_run, run_dirs, wait_for_line
from tracelet.redact import REDACTED


def start_child(tmp_path: Path, body: str, preamble: str = "", **config) -> subprocess.Popen:
    """A Python child that starts a run in ``tmp_path/logs`` and then runs ``body``."""
    cfg = {"track_env": False, "track_git": False, "logdir": str(tmp_path / "logs"), **config}
    script = tmp_path / "child.py"
    script.write_text(f"import os, sys, time\n{textwrap.dedent(preamble)}\nimport tracelet\n"
                      f"exp = tracelet.start_logging('victim', 'faults', 'wandb', config={cfg!r})\n"
                      + textwrap.dedent(body))
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env(), cwd=tmp_path)


def only_run(tmp_path: Path):
    (run_dir,) = run_dirs(tmp_path / "logs")
    return read_run(run_dir)


def test_sigkill_of_torch_training_leaves_a_readable_running_run(tmp_path):
    """Also: torch is imported *after* start_logging, so SummaryWriter() is patched on import."""
    proc = start_child(tmp_path, """
        assert "torch" not in sys.modules  # starting a run imported no framework
        import torch
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter()
        assert writer.log_dir == str(exp.run_dir), writer.log_dir
        exp.log_params({"lr": 0.1, "api_token": "tok-123"})
        model = torch.nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.randn(64, 4); y = x.sum(1, keepdim=True)
        for step in range(30):
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
            writer.add_scalar("Loss/Train", loss.item(), step)
            exp.log_metric("loss", loss, step)
        print("logged 30", flush=True)
        step = 30
        while True:  # keeps writing until killed: the kill lands mid-write
            exp.log_metric("tail", step, step); step += 1
            time.sleep(0.001)
    """, metrics_interval=0.1, metrics_flush_interval=0.3, flush_interval=0.2)
    wait_for_line(proc, "logged 30", timeout_s=90)
    time.sleep(1.0)  # > 3 flush intervals of events, hparams and sysmetrics
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    run = only_run(tmp_path)
    assert run.manifest["status"] == "running" and run.manifest["ended_at"] is None
    assert run.manifest["params"]["api_token"] == REDACTED
    assert [s for s, _ in run.scalars["loss"]] == list(range(30))
    assert [s for s, _ in run.scalars["Loss/Train"]] == list(range(30))
    assert len(run.scalars["tail"]) > 10 and not run.corrupt  # a torn last record is "not yet"
    assert run.hparams and run.hparams[-1]["lr"] == 0.1
    assert run.parts and all(t.num_rows for t in run.parts)
    assert "process/rss_bytes" in run.sysmetric_names()
    # ... and it syncs: MLflow shows the run as RUNNING with everything flushed before the kill
    from mlflow import MlflowClient

    from tracelet.engine import SyncOptions, run_sync

    uri = f"sqlite:///{tmp_path / 'killed.db'}"
    logdir = run.path.parent.parent
    report = run_sync([str(logdir)], SyncOptions(destinations=["mlflow"], progress=False,
                                                 dest_config={"mlflow_uri": uri}))
    assert report.exit_code == 0, report.to_dict()
    c = MlflowClient(tracking_uri=uri)
    r = c.search_runs([c.get_experiment_by_name(run.manifest["project"]).experiment_id])[0]
    assert r.info.status == "RUNNING"
    assert sorted(m.step for m in c.get_metric_history(r.info.run_id, "loss")) == list(range(30))
    assert r.data.params["api_token"] == REDACTED
    assert any(k.startswith("system/") for k in r.data.metrics)


def test_sigterm_finalizes_then_dies_by_sigterm(tmp_path):
    proc = start_child(tmp_path, """
        for i in range(50):
            exp.log_metric("x", i, i)
        print("ready", flush=True)
        time.sleep(600)
    """, metrics_interval=0.1, metrics_flush_interval=3600, flush_interval=3600)
    wait_for_line(proc, "ready")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == -signal.SIGTERM  # chained to the default action: killed by SIGTERM
    run = only_run(tmp_path)
    assert run.manifest["status"] == "killed" and run.manifest["ended_at"]
    assert [s for s, _ in run.scalars["x"]] == list(range(50))
    assert run.parts  # the buffered samples were written by the finalizer, not a timer


def test_sigterm_chains_to_the_previous_python_handler(tmp_path):
    proc = start_child(tmp_path, """
        exp.log_metric("x", 1.0, 0)
        print("ready", flush=True)
        time.sleep(600)
    """, preamble="""
        import signal
        def graceful(signum, frame):
            print("user handler ran", flush=True)
            sys.exit(3)
        signal.signal(signal.SIGTERM, graceful)
    """)
    wait_for_line(proc, "ready")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 3
    assert "user handler ran" in proc.stdout.read()
    run = only_run(tmp_path)
    assert run.manifest["status"] == "killed" and run.scalars["x"] == [(0, 1.0)]


def test_sigint_raises_keyboardinterrupt_and_marks_killed(tmp_path):
    proc = start_child(tmp_path, """
        exp.log_metric("x", 1.0, 0)
        print("ready", flush=True)
        time.sleep(600)
    """)
    wait_for_line(proc, "ready")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == -signal.SIGINT  # Python's own exit for an uncaught Ctrl-C
    assert "KeyboardInterrupt" in proc.stderr.read()  # not swallowed
    assert only_run(tmp_path).manifest["status"] == "killed"


def test_uncaught_exception_marks_failed_and_still_prints(tmp_path):
    proc = start_child(tmp_path, """
        exp.log_metric("x", 1.0, 0)
        raise ValueError("boom")
    """)
    assert proc.wait(60) == 1
    assert "ValueError: boom" in proc.stderr.read()
    run = only_run(tmp_path)
    assert run.manifest["status"] == "failed" and run.scalars["x"] == [(0, 1.0)]


def test_plain_exit_without_stop_logging_is_finished(tmp_path):
    proc = start_child(tmp_path, """
        exp.log_metric("x", 1.0, 0)
        exp.log_params({"a": 1})
    """)
    assert proc.wait(60) == 0, proc.stderr.read()
    run = only_run(tmp_path)
    assert run.manifest["status"] == "finished" and run.hparams == [{"a": 1}]


# -- tracelet record ---------------------------------------------------------------------------
def record(tmp_path: Path, *command: str, name: str = "rec", **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tracelet.cli", "record", "--logdir", str(tmp_path / "logs"),
         "--project", "cli", "--name", name, "--", *command],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=tmp_path, **popen)


CHILD_WRITES_EVENTS = """
import os, sys
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter
run_dir = os.environ["TRACELET_RUN_DIR"]
assert os.environ["TRACELET_LOGDIR"] and run_dir.startswith(os.environ["TRACELET_LOGDIR"])
w = EventFileWriter(run_dir)  # any TensorBoard writer; this one needs no torch
value = summary_pb2.Summary.Value(tag="child/loss", simple_value=0.5)
w.add_event(event_pb2.Event(step=1, wall_time=1.0, summary=summary_pb2.Summary(value=[value])))
w.close()
print("run dir", run_dir, flush=True)
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.parametrize("exit_code, status", [(0, "finished"), (3, "failed")])
def test_record_status_from_exit_code(tmp_path, exit_code, status):
    proc = record(tmp_path, sys.executable, "-c", CHILD_WRITES_EVENTS, str(exit_code), "--api-key", "SECRET")
    assert proc.wait(60) == exit_code, proc.stderr.read()
    run = read_run(tmp_path / "logs" / "cli" / "rec")
    assert f"run dir {run.path.resolve()}" in proc.stdout.read()
    assert run.manifest["status"] == status and run.manifest["ended_at"]
    assert run.scalars["child/loss"] == [(1, 0.5)]  # the child's events, in the run
    assert run.manifest["command"][-2:] == ["--api-key", REDACTED]
    assert run.parts  # a last sample at exit, even for a command shorter than the interval
    assert run.manifest["system"]["hostname"] and run.manifest["git"] == {"is_repo": False}


def test_record_measures_the_child_process_tree(tmp_path, monkeypatch):
    from tracelet.recorder.record import run_recorded

    monkeypatch.chdir(tmp_path)
    child = "import time; time.sleep(0.5); x = bytearray(256 << 20); time.sleep(0.6)"
    code = run_recorded([sys.executable, "-c", child],
                        logdir=str(tmp_path / "logs"), name="tree",
                        config={"metrics_interval": 0.1, "track_env": False})
    assert code == 0
    run = read_run(tmp_path / "logs" / "default" / "tree")
    rss = [v for t in run.parts for n, v in zip(t.column("name").to_pylist(), t.column("value").to_pylist())
           if n == "process/rss_bytes"]
    # the child's memory, not the recorder's: small at first, then its 256 MB
    assert min(rss) < 100 << 20 < 256 << 20 < max(rss)
    assert run.manifest["status"] == "finished" and run.manifest["command"][0] == sys.executable


def test_record_child_killed_by_signal(tmp_path):
    proc = record(tmp_path, sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    assert proc.wait(60) == 128 + signal.SIGTERM
    assert read_run(tmp_path / "logs" / "cli" / "rec").manifest["status"] == "killed"


def test_record_forwards_sigterm_to_the_child(tmp_path):
    proc = record(tmp_path, sys.executable, "-c",
                  "import time; print('child ready', flush=True); time.sleep(600)")
    wait_for_line(proc, "child ready")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM
    assert read_run(tmp_path / "logs" / "cli" / "rec").manifest["status"] == "killed"


def test_record_missing_command(tmp_path):
    proc = record(tmp_path, "no-such-command-xyz")
    assert proc.wait(60) == 127
    assert "cannot run" in proc.stderr.read()
    assert read_run(tmp_path / "logs" / "cli" / "rec").manifest["status"] == "failed"
