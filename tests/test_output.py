"""What the operator sees of `tracelet sync` (#10 item 4), on a real pseudo-terminal and in cron
(stderr a pipe): warnings above the progress bar, ISO timestamps and the destination's target
on every cron line, one summary line per pass (also when nothing changed), an interrupted
sync saying so, param conflicts and kinds no destination takes in the log lines, `-q`, and a
resync that only confirmed what had landed saying so. MLflow is its real sqlite store; the
memory destination (its journal folder, read back with its own store) where a test needs it to
report points already present or to be slow."""
from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2

from tracelet.destinations.memory.client import MemoryStore
from tracelet.testing.events import T0, tensor, tensor_value, write_frames
from tracelet.testing.sources import SourceTruth, write_simple_run

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
SUMMARY = re.compile(r"^tracelet: (\d+) runs?: (.*) — \d+\.\d s$")


def cli(*args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracelet.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=timeout)


def pty_cli(*args, env: dict | None = None, timeout: float = 300) -> tuple[int, str]:
    """Run the CLI with stdin/stdout/stderr on a real pseudo-terminal (160 columns); return its
    exit code and everything it wrote to the terminal."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    child_env = {**os.environ, "TERM": "xterm-256color", **(env or {})}
    for k in ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR", "COLUMNS", "LINES"):
        child_env.pop(k, None)
    p = subprocess.Popen([sys.executable, "-m", "tracelet.cli", *args], stdin=slave,
                         stdout=slave, stderr=slave, env=child_env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if p.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        rc = p.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if p.poll() is None:
            p.kill()
        os.close(master)
    return rc, b"".join(chunks).decode("utf-8", "replace")


def screen_lines(raw: str) -> list[str]:
    """The terminal output as the frames and lines drawn, without colours or cursor moves."""
    return [ln.strip() for ln in re.split(r"[\r\n]+", ANSI.sub("", raw)) if ln.strip()]


def cron_lines(stderr: str) -> list[str]:
    """Tracelet's own lines of a non-TTY run (vendor SDKs log to stderr too)."""
    return [ln for ln in stderr.splitlines() if " tracelet: " in ln or ln.startswith("tracelet")]


def corrupt_middle_record(path: Path) -> None:
    """Flip a byte inside a record's data: one record fails its data CRC (skipped, warned)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def two_runs(logdir: Path) -> tuple[SourceTruth, int]:
    """Runs `a` (50 points) and `b` (50 points, one of them in a corrupt record): 99 points are
    delivered. Returns the truth and the bytes of event files."""
    truth = SourceTruth()
    write_simple_run(logdir / "a", "a", truth, ["loss"], list(range(50)))
    fb = write_simple_run(logdir / "b", "b", truth, ["loss"], list(range(50)), seed=1)
    corrupt_middle_record(fb)
    return truth, sum(p.stat().st_size for p in logdir.rglob("events.out.tfevents*"))


def manifest(folder: Path, **fields) -> None:
    doc = {"schema_version": 1, "run_id": folder.name + "-0001", "name": folder.name,
           "project": "p", "status": "finished", **fields}
    (folder / "tracelet.json").write_text(json.dumps(doc))


# -- on a TTY ------------------------------------------------------------------------------------
def test_tty_warning_above_the_bar_points_once_and_summary(tmp_path):
    logdir = tmp_path / "logs"
    _, total = two_runs(logdir)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ("sync", str(logdir), "--to", "mlflow,memory", "--mlflow-uri", uri,
            "--memory-store", str(tmp_path / "mem"))
    rc, raw = pty_cli(*args)
    assert rc == 0, raw
    lines = screen_lines(raw)
    bars = [i for i, ln in enumerate(lines) if " runs " in ln and "ETA" in ln]
    warn = [i for i, ln in enumerate(lines) if "bad data CRC skipped" in ln]
    assert bars and len(warn) == 1, lines
    # printed above the bar: the bar was drawn before the warning and is drawn again below it
    assert bars[0] < warn[0] < bars[-1], lines
    assert lines[warn[0]].startswith("tracelet: b: "), lines[warn[0]]  # no timestamp on a TTY
    # the bar advanced by the bytes read, to the bytes behind at the start, with an ETA; the
    # points went to two destinations and count once
    kb = f"{total / 1000:.1f}"
    last_bar = lines[bars[-1]]
    assert "2/2 runs" in last_bar and f"{kb}/{kb} kB" in last_bar, last_bar
    assert "99 points" in last_bar and "198" not in last_bar, last_bar
    assert any(f"0.0/{kb} kB" in lines[i] for i in bars), lines  # it started from zero
    # no per-destination lines on a TTY without -v; one summary line, last
    assert not any("-> mlflow" in ln for ln in lines), lines
    m = SUMMARY.match(lines[-1])
    assert m, lines[-1]
    assert m.group(2) == "2 synced (99 points), 0 unchanged, 0 failed, 1 warning", lines[-1]
    assert sum(bool(SUMMARY.match(ln)) for ln in lines) == 1

    # everything unchanged: still the summary line, and nothing else but the bar
    rc, raw = pty_cli(*args)
    assert rc == 0, raw
    lines = screen_lines(raw)
    m = SUMMARY.match(lines[-1])
    assert m and m.group(2) == "0 synced (0 points), 2 unchanged, 0 failed, 0 warnings", lines
    assert not any("tracelet:" in ln for ln in lines[:-1]), lines

    # -v on a TTY adds the per-destination lines (above the bar)
    write_simple_run(logdir / "a", "a", SourceTruth(), ["loss"], [50, 51], append=True)
    rc, raw = pty_cli(*args, "-v")
    lines = screen_lines(raw)
    assert rc == 0 and any(ln.startswith(f"tracelet: a -> mlflow ({uri}): synced scalar 2")
                           for ln in lines), lines


# -- in cron -------------------------------------------------------------------------------------
def test_cron_lines_have_time_and_target_and_each_pass_one_summary(tmp_path):
    logdir = tmp_path / "logs"
    two_runs(logdir)
    manifest(logdir / "a", params={"lr": 0.1})
    # kinds no destination takes: a graph and pr_curves records (counted by plugin)
    write_frames(logdir / "b" / "events.out.tfevents.1700000999.host.1.9", [
        event_pb2.Event(wall_time=T0, file_version="brain.Event:2"),
        event_pb2.Event(wall_time=T0, step=0, graph_def=b"\x0a\x00"),
        *[event_pb2.Event(wall_time=T0 + k, step=k, summary=summary_pb2.Summary(value=[
            tensor_value("pr/curve", tensor(1, [2, 2], float_val=[0.5] * 4), "pr_curves")]))
          for k in range(3)]])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ("sync", str(logdir), "--to", "mlflow", "--mlflow-uri", uri)
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    lines = cron_lines(r.stderr)
    assert lines and all(re.match(STAMP + " tracelet: ", ln) for ln in lines), lines
    body = [ln.split(" ", 1)[1] for ln in lines]
    assert f"tracelet: a -> mlflow ({uri}): synced params 1, scalar 50" in body \
        or any(ln.startswith(f"tracelet: a -> mlflow ({uri}): synced") and "scalar 50" in ln
               for ln in body), body
    assert any(ln.startswith("tracelet: b: ") and "bad data CRC skipped" in ln for ln in body)
    other = [ln for ln in body if "records of kinds no destination takes" in ln]
    assert len(other) == 1 and "graph 1" in other[0] and "pr_curves 3" in other[0], body
    assert "mlflow.db" not in " ".join(ln for ln in body if ln.startswith("tracelet: b:"))
    m = SUMMARY.match(body[-1])
    assert m and m.group(2) == "2 synced (99 points), 0 unchanged, 0 failed, 2 warnings", body
    assert sum(bool(SUMMARY.match(ln)) for ln in body) == 1

    # unchanged: exactly one line, the summary
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    lines = cron_lines(r.stderr)
    assert len(lines) == 1 and re.match(STAMP + " ", lines[0]), lines
    m = SUMMARY.match(lines[0].split(" ", 1)[1])
    assert m and m.group(2) == "0 synced (0 points), 2 unchanged, 0 failed, 0 warnings", lines
    # -q: errors only, no summary
    r = cli(*args, "-q")
    assert r.returncode == 0 and cron_lines(r.stderr) == [], r.stderr

    # a param changed on a write-once destination: a log line, not only in --json
    manifest(logdir / "a", params={"lr": 0.2})
    write_simple_run(logdir / "a", "a", SourceTruth(), ["loss"], [50, 51], append=True)
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    body = [ln.split(" ", 1)[1] for ln in cron_lines(r.stderr)]
    conflict = [ln for ln in body if ln.startswith(f"tracelet: a -> mlflow ({uri}): ")
                and "lr" in ln and "0.2" in ln]
    assert conflict, body
    m = SUMMARY.match(body[-1])
    assert m and m.group(2).startswith("1 synced (2 points), 1 unchanged, 0 failed, "), body


def test_resync_that_only_confirmed_says_so(tmp_path):
    logdir = tmp_path / "logs"
    two_runs(logdir)
    store = tmp_path / "mem"
    args = ("sync", str(logdir), "--to", "memory", "--memory-store", str(store))
    assert cli(*args).returncode == 0
    before = {u: len(r.points) for u, r in MemoryStore(store).runs.items()}
    r = cli(*args, "--resync")
    assert r.returncode == 0, r.stderr
    body = [ln.split(" ", 1)[1] for ln in cron_lines(r.stderr)]
    assert f"tracelet: a -> memory (memory:{store}): confirmed 50 already present" in body, body
    assert f"tracelet: b -> memory (memory:{store}): confirmed 49 already present" in body, body
    assert not any(": synced" in ln for ln in body), body
    m = SUMMARY.match(body[-1])
    assert m and m.group(2).startswith("2 synced (0 points, 99 confirmed present)"), body
    assert {u: len(r.points) for u, r in MemoryStore(store).runs.items()} == before


def test_interrupted_sync_says_run_again_and_exits_1(tmp_path):
    logdir = tmp_path / "logs"
    for k in range(4):
        write_simple_run(logdir / f"r{k}", f"r{k}", SourceTruth(), ["loss"], list(range(30)))
    store = tmp_path / "mem"
    p = subprocess.Popen([sys.executable, "-m", "tracelet.cli", "sync", str(logdir), "--to",
                          "memory", "--memory-store", str(store)], stderr=subprocess.PIPE,
                         text=True, env={**os.environ, "TRACELET_MEMORY_SLOW_S": "0.5"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (store.is_dir() and any(store.iterdir())):
        time.sleep(0.1)  # the first run exists on the destination: the sync is under way
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1, err
    body = [ln.split(" ", 1)[1] for ln in cron_lines(err)]
    assert body[-1] == ("tracelet: interrupted — run sync again: what was sent is committed, "
                        "the next sync continues from there"), body
    m = SUMMARY.match(body[-2])
    assert m and "interrupted" in m.group(2), body
    assert "Traceback" not in err
    r = cli("sync", str(logdir), "--to", "memory", "--memory-store", str(store))
    assert r.returncode == 0, r.stderr  # the next sync finishes the job
    assert sorted(len(x.points) for x in MemoryStore(store).runs.values()) == [30] * 4
