"""MLflow harnesses: the default local store (sqlite file) and a real `mlflow server`."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tracelet.engine.naming import display_name
from tracelet.testing.harness import Harness, ReadBack


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with a sqlite backend, started and stopped here.
    Every server still running when the test session ends is stopped then (:meth:`stop_all`,
    from tests/conftest.py): a test that loses track of one must not leave it behind."""

    _live: set["MlflowServer"] = set()

    def __init__(self, root: Path, port: int | None = None):
        self.root = root
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120) -> "MlflowServer":
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts")]
        self.log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=self.root)
        MlflowServer._live.add(self)
        deadline = time.monotonic() + timeout_s
        import urllib.request

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("mlflow server did not become healthy in time")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
        MlflowServer._live.discard(self)

    @classmethod
    def stop_all(cls) -> None:
        for server in list(cls._live):
            server.stop()


class _MlflowHarness(Harness):
    supports = Harness.supports | {"audio"}
    name = "mlflow"
    uri = ""

    def env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.uri}

    def _client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def read_back(self, project: str, run_path: str) -> ReadBack:
        c = self._client()
        rb = ReadBack()
        exp = c.get_experiment_by_name(project)
        if exp is None:
            return rb
        runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`tracelet.run_path` = '{run_path}'")
        rb.runs_found = len(runs)
        if not runs:
            return rb
        r = runs[0]
        # the display name: the run path, or (a recorded run) the run path less its project
        assert r.info.run_name in {run_path, display_name(run_path, project)}, r.info.run_name
        for key in r.data.metrics:
            hist = c.get_metric_history(r.info.run_id, key)
            if key.startswith("system/"):
                rb.system_points += len(hist)
                continue
            rb.scalars[key] = [(m.step, m.value) for m in hist]
        rb.params = dict(r.data.params)
        rb.status = r.info.status

        def walk(path):
            for a in c.list_artifacts(r.info.run_id, path):
                if a.is_dir:
                    yield from walk(a.path)
                else:
                    yield a.path

        paths = list(walk(None))
        rb.histograms = sum(p.startswith("tensorboard/histograms/") for p in paths)
        rb.images = sum(p.startswith("tensorboard/images/") for p in paths)
        rb.texts = sum(p.startswith("tensorboard/text/") for p in paths)
        rb.audio = sum(p.startswith("tensorboard/audio/") and p.endswith(".wav") for p in paths)
        # the run's own artifacts/: not the points' files (tensorboard/) nor Tracelet's
        # reproducibility files (tracelet/: the manifest, requirements.txt)
        rb.artifacts = sorted(p for p in paths if not p.startswith(("tensorboard/", "tracelet/")))
        return rb


class MlflowLocalHarness(_MlflowHarness):
    """MLflow's default local store, as `tracelet sync --to mlflow` uses it with no URI."""

    label = "mlflow-local"

    def setup(self, tmp_path, monkeypatch):
        self.uri = f"sqlite:///{tmp_path / 'mlflow-local.db'}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", self.uri)
        return {"mlflow_uri": self.uri}


class MlflowServerHarness(_MlflowHarness):
    """A real `mlflow server` on 127.0.0.1 (one per test session, shared)."""

    label = "mlflow-server"
    # Random kills of the MLflow destination run on mlflow-local and mlflow-filestore (20 trials,
    # same client code); the server gets the protocol-step kills and the server-killed test.
    kill_trials = 0
    server: MlflowServer | None = None

    def setup(self, tmp_path, monkeypatch):
        cls = type(self)
        if cls.server is None:
            cls.server = MlflowServer(Path(os.environ.get("TRACELET_TEST_TMP", "/tmp")) /
                                      f"tracelet-mlflow-server-{os.getpid()}").start()
        self.uri = cls.server.uri
        monkeypatch.setenv("MLFLOW_TRACKING_URI", self.uri)
        return {"mlflow_uri": self.uri}


class MlflowFileStoreHarness(_MlflowHarness):
    """MLflow's file store (``./mlruns``, still behind many servers): unlike the SQL stores it
    appends a resent metric again, so this harness is the one that proves dedupe works."""

    label = "mlflow-filestore"

    def setup(self, tmp_path, monkeypatch):
        self.uri = f"file:{tmp_path / 'mlruns'}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", self.uri)
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        return {"mlflow_uri": self.uri}

    def env(self):
        return {"MLFLOW_TRACKING_URI": self.uri, "MLFLOW_ALLOW_FILE_STORE": "true"}


HARNESSES = [MlflowLocalHarness, MlflowServerHarness, MlflowFileStoreHarness]
