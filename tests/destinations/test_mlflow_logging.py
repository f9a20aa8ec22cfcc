"""MLflow's own log lines stay out of Tracelet's output (issue #10 item 9): a first sync to a
new sqlite store makes MLflow create and migrate its tables, which it announces at INFO
("Creating initial MLflow database tables...", "Updating database tables"). Tracelet sets
MLflow's loggers to WARNING unless the user chose a level with ``MLFLOW_LOGGING_LEVEL``."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from tracelet.testing.sources import build_kill_logdir

# MLflow's log format: "2026/01/01 12:00:00 INFO mlflow.store.db.utils: ..."
_VENDOR_INFO = re.compile(r"\b(INFO|DEBUG)\b.*\b(mlflow|alembic)[\w.]*:", re.IGNORECASE)


def _sync(tmp_path, **env):
    logdir = tmp_path / "logs"
    build_kill_logdir(logdir, runs=1, steps=3)
    environ = {k: v for k, v in os.environ.items() if k != "MLFLOW_LOGGING_LEVEL"}
    environ.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", **env)
    proc = subprocess.run([sys.executable, "-m", "tracelet.cli", "sync", str(logdir), "--to",
                           "mlflow", "--project", "quiet"], env=environ, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "mlflow.db").exists()  # the store was new: MLflow made its tables
    return proc


def test_a_sync_to_a_new_sqlite_store_shows_no_mlflow_info_lines(tmp_path):
    proc = _sync(tmp_path)
    lines = (proc.stdout + proc.stderr).splitlines()
    assert not [line for line in lines if _VENDOR_INFO.search(line)], proc.stderr
    assert "run0 -> mlflow (" in proc.stderr and "): synced" in proc.stderr


def test_an_explicit_mlflow_logging_level_is_respected(tmp_path):
    proc = _sync(tmp_path, MLFLOW_LOGGING_LEVEL="info")  # MLflow reads it in any case
    assert [line for line in proc.stderr.splitlines() if _VENDOR_INFO.search(line)], proc.stderr
