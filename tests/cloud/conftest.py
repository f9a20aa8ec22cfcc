"""Real object-storage servers on 127.0.0.1, started once per session and stopped at its end:

* S3: ``moto`` in server mode (``python -m moto.server``), reached through boto3 with
  ``AWS_ENDPOINT_URL`` as a MinIO/Ceph user would.
* Azure Blob: Azurite, Microsoft's emulator, from the npm registry (installed into
  ``.venv/azurite`` by ``scripts/_env.sh``, or here on first use); skipped, with the reason
  printed, only where npm is absent.
* GCS: ``gcp-storage-emulator`` (PyPI) through gcsfs with ``STORAGE_EMULATOR_HOST``.

The ``store`` fixture is parametrized over the three; each test gets its own bucket.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.destinations.harness_mlflow import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
AZURITE_VERSION = "3.37.0"  # keep in step with scripts/_env.sh
AZURITE_DIR = REPO / ".venv" / "azurite"
AZURITE_BIN = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"
# Azurite's documented development account (public, the same in every Azurite install)
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
               "K1SZFPTOtr/KBHBeksoGMGw==")
# gcsfs' experimental zonal/HNS probe talks gRPC to the real service: off against an emulator.
# Read when gcsfs is first imported, so it is set before any test imports it.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


class _Server:
    def __init__(self, cmd: list[str], port: int, what: str, log: Path):
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        _wait_port(port, self.proc, what)
        self.port = port

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Store:
    """One backend: its URL scheme, the environment that reaches it, and raw upload helpers
    (the SDK directly, as a writer would: no Tracelet code)."""

    scheme = ""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.bucket = ""

    def new_bucket(self) -> None:
        raise NotImplementedError

    def url(self, prefix: str = "") -> str:
        return f"{self.scheme}://{self.bucket}" + (f"/{prefix.strip('/')}" if prefix else "")

    def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def upload_dir(self, local: Path, prefix: str) -> None:
        for p in sorted(local.rglob("*")):
            if p.is_file():
                self.put(f"{prefix.strip('/')}/{p.relative_to(local).as_posix()}", p.read_bytes())


class S3Store(Store):
    scheme = "s3"

    def __init__(self, endpoint: str):
        super().__init__({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                          "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                          "S3_ENDPOINT": endpoint})  # S3_ENDPOINT: tensorboardX's S3 writer
        import boto3

        self.client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                                   aws_secret_access_key="testing", region_name="us-east-1")

    def new_bucket(self) -> None:
        self.bucket = f"tl-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)


class AzureStore(Store):
    scheme = "az"

    def __init__(self, port: int):
        cs = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
              f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
        super().__init__({"AZURE_STORAGE_CONNECTION_STRING": cs})
        from azure.storage.blob import BlobServiceClient

        self.service = BlobServiceClient.from_connection_string(cs)

    def new_bucket(self) -> None:
        self.bucket = f"tl-{uuid.uuid4().hex[:12]}"
        self.service.create_container(self.bucket)

    def put(self, key: str, data: bytes) -> None:
        self.service.get_blob_client(self.bucket, key).upload_blob(data, overwrite=True)

    def delete(self, key: str) -> None:
        self.service.get_blob_client(self.bucket, key).delete_blob()


class GCSStore(Store):
    scheme = "gs"

    def __init__(self, port: int):
        host = f"http://127.0.0.1:{port}"
        super().__init__({"STORAGE_EMULATOR_HOST": host,
                          "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"})
        import requests

        self.http, self.host = requests.Session(), host

    def new_bucket(self) -> None:
        self.bucket = f"tl-{uuid.uuid4().hex[:12]}"
        r = self.http.post(f"{self.host}/storage/v1/b", params={"project": "test"},
                           json={"name": self.bucket})
        r.raise_for_status()

    def put(self, key: str, data: bytes) -> None:
        r = self.http.post(f"{self.host}/upload/storage/v1/b/{self.bucket}/o",
                           params={"uploadType": "media", "name": key}, data=data)
        r.raise_for_status()

    def delete(self, key: str) -> None:
        import urllib.parse

        self.http.delete(f"{self.host}/storage/v1/b/{self.bucket}/o/"
                         f"{urllib.parse.quote(key, safe='')}").raise_for_status()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    pytest.importorskip("moto", reason="moto[server] (the test extra) is not installed")
    port = free_port()
    server = _Server([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                     port, "moto server", tmp_path_factory.mktemp("moto") / "log")
    yield S3Store(f"http://127.0.0.1:{port}")
    server.stop()


def _azurite_bin() -> Path | None:
    if AZURITE_BIN.exists():
        return AZURITE_BIN
    npm = shutil.which("npm")
    if npm is None:
        return None
    subprocess.run([npm, "install", "--prefix", str(AZURITE_DIR), "--no-audit", "--no-fund",
                    "--loglevel=error", f"azurite@{AZURITE_VERSION}"], check=True,
                   stdout=subprocess.DEVNULL, timeout=600)
    return AZURITE_BIN


@pytest.fixture(scope="session")
def azure_server(tmp_path_factory):
    pytest.importorskip("adlfs", reason="adlfs (the azure extra) is not installed")
    binary = _azurite_bin()
    if binary is None:
        pytest.skip("Azurite needs npm, which is not on this machine: Azure tests not run")
    port = free_port()
    data = tmp_path_factory.mktemp("azurite")
    server = _Server([str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port),
                      "--location", str(data), "--silent", "--skipApiVersionCheck", "--loose"],
                     port, "Azurite", data / "log")
    yield AzureStore(port)
    server.stop()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    pytest.importorskip("gcsfs", reason="gcsfs (the gcs extra) is not installed")
    exe = Path(sys.executable).parent / "gcp-storage-emulator"
    if not exe.exists():
        pytest.skip("gcp-storage-emulator (the test extra) is not installed")
    port = free_port()
    server = _Server([str(exe), "start", "--host", "127.0.0.1", "--port", str(port),
                      "--in-memory"], port, "gcp-storage-emulator",
                     tmp_path_factory.mktemp("gcs") / "log")
    yield GCSStore(port)
    server.stop()


_SERVERS = {"s3": "s3_server", "azure": "azure_server", "gcs": "gcs_server"}


def _store(request, monkeypatch, name: str) -> Store:
    store = request.getfixturevalue(_SERVERS[name])
    for k, v in store.env.items():
        monkeypatch.setenv(k, v)
    store.new_bucket()
    return store


@pytest.fixture(params=["s3", "azure", "gcs"])
def store(request, monkeypatch) -> Store:
    """Each backend in turn, with a fresh bucket and its environment set."""
    return _store(request, monkeypatch, request.param)


@pytest.fixture(params=["s3", "azure"])
def pinned_store(request, monkeypatch) -> Store:
    """Backends whose emulator honours a read pinned to a version (If-Match). The GCS
    emulator ignores ``generation=`` on reads (real GCS honours it)."""
    return _store(request, monkeypatch, request.param)


@pytest.fixture
def s3(request, monkeypatch) -> Store:
    return _store(request, monkeypatch, "s3")


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """One real MLflow sqlite store for the session (each test uses its own experiment)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def project() -> str:
    return f"p{uuid.uuid4().hex[:10]}"


@pytest.fixture
def mlflow(mlflow_uri, tmp_path, monkeypatch):
    """MLflow's harness (read back with MlflowClient) on the session's store."""
    from tests.destinations.harness_mlflow import MlflowLocalHarness

    monkeypatch.chdir(tmp_path)  # MLflow's artifact root for a sqlite store: ./mlruns
    h = MlflowLocalHarness()
    h.uri = mlflow_uri
    h.config = {"mlflow_uri": mlflow_uri}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    return h
