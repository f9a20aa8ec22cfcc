"""Nothing-happened is never exit 0: each case where a sync could do nothing exits 2 with a
message that says what to fix (the CLI as cron runs it, as a subprocess)."""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tracelet.reader import frame_record

HERE = Path(__file__).resolve().parent


def _event_file(folder: Path) -> Path:
    from tensorboard.compat.proto import event_pb2, summary_pb2

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "events.out.tfevents.1700000000.host.1.0"
    ev = event_pb2.Event(step=1, wall_time=1.7e9, summary=summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag="loss", simple_value=0.5)]))
    path.write_bytes(frame_record(event_pb2.Event(wall_time=1.7e9, file_version="brain.Event:2")
                                  .SerializeToString()) + frame_record(ev.SerializeToString()))
    return path


def _manifest(folder: Path, **fields) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"schema_version": 1, "run_id": folder.name + "0" * 8, "name": folder.name,
           "project": "p", "status": "finished", **fields}
    (folder / "tracelet.json").write_text(json.dumps(doc))


def _drop_dac() -> None:
    """Root meets file permissions like anyone after exec (bounding set without DAC caps)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def cli(*args: str, env: dict | None = None, drop_dac: bool = False, cwd=None):
    full = {**os.environ, "TRACELET_MEMORY_STORE": "", **(env or {})}
    p = subprocess.run([sys.executable, "-m", "tracelet.cli", *args], capture_output=True,
                       text=True, env=full, timeout=120, cwd=cwd,
                       preexec_fn=_drop_dac if drop_dac else None)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def test_a_logdir_without_runs_is_exit_2(tmp_path):
    (tmp_path / "logs" / "not_a_run").mkdir(parents=True)
    (tmp_path / "logs" / "notes.txt").write_text("x")
    p = cli("sync", str(tmp_path / "logs"), "--to", "memory")
    assert p.returncode == 2, p.stderr
    assert "no runs found" in p.stderr and "events.out.tfevents" in p.stderr


def test_no_destination_anywhere_is_exit_2(tmp_path):
    _event_file(tmp_path / "logs" / "plain")  # no manifest, no --to
    p = cli("sync", str(tmp_path / "logs"))
    assert p.returncode == 2, p.stderr
    assert "run 'plain': no destination: give --to" in p.stderr


def test_a_run_without_destination_is_exit_2_while_the_others_sync(tmp_path):
    store = tmp_path / "store"
    _event_file(tmp_path / "logs" / "good")
    _manifest(tmp_path / "logs" / "good", backends=["memory"])
    _manifest(tmp_path / "logs" / "none", backends=[])
    _event_file(tmp_path / "logs" / "none")
    p = cli("sync", str(tmp_path / "logs"), "--json", env={"TRACELET_MEMORY_STORE": str(store)})
    assert p.returncode == 2, p.stderr
    report = json.loads(p.stdout)
    runs = {r["run"]: r for r in report["runs"]}
    assert runs["good"]["destinations"]["memory"]["state"] == "synced"
    assert "no destination" in runs["none"]["usage"][0]


def test_an_unknown_backend_in_a_manifest_is_exit_2_with_the_closest_name(tmp_path):
    _event_file(tmp_path / "logs" / "typo")
    _manifest(tmp_path / "logs" / "typo", backends=["mlfow"])
    p = cli("sync", str(tmp_path / "logs"))
    assert p.returncode == 2, p.stderr
    assert "unknown backend 'mlfow'; did you mean mlflow?" in p.stderr


def test_an_unknown_to_is_exit_2_with_the_closest_name(tmp_path):
    _event_file(tmp_path / "logs" / "r")
    p = cli("sync", str(tmp_path / "logs"), "--to", "wandbb")
    assert p.returncode == 2
    assert "unknown destination(s) wandbb; did you mean wandb?" in p.stderr


def test_start_logging_refuses_an_unknown_backend(tmp_path, monkeypatch):
    import tracelet
    from tracelet.errors import UsageError

    monkeypatch.setenv("TRACELET_LOGDIR", str(tmp_path / "runs"))
    with pytest.raises(UsageError, match="did you mean mlflow"):
        tracelet.start_logging("x", backend="mlfow")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("tracelet.json"))


def test_a_read_only_logdir_without_state_dir_is_exit_2_once(tmp_path):
    logdir = tmp_path / "logs"
    for name in ("a", "b", "c"):
        _event_file(logdir / name)
    for p in [logdir, *logdir.iterdir()]:
        p.chmod(0o555)
    try:
        probe = subprocess.run([sys.executable, "-c", "import os,sys; print(os.access(sys.argv[1], os.W_OK))",
                                str(logdir)], capture_output=True, text=True, preexec_fn=_drop_dac)
    except OSError as e:
        pytest.skip(f"cannot drop CAP_DAC_OVERRIDE here ({e}): root would write anyway")
    if probe.stdout.strip() != "False":
        pytest.skip("this process writes into a 0555 folder anyway (capabilities kept)")
    try:
        p = cli("sync", str(logdir), "--to", "memory", drop_dac=True, cwd=tmp_path)
        assert p.returncode == 2, p.stderr
        assert p.stderr.count("read-only here. Give --state-dir") == 1, p.stderr
        state = tmp_path / "state"
        state.mkdir()
        ok = cli("sync", str(logdir), "--to", "memory", "--state-dir", str(state),
                 drop_dac=True, cwd=tmp_path)
        assert ok.returncode == 0, ok.stderr
    finally:
        for p in [logdir, *logdir.iterdir()]:
            p.chmod(0o755)
