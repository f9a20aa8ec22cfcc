"""Suite-wide fixtures. Destination and server fixtures live beside the tests that use them."""
from __future__ import annotations

from pathlib import Path

import pytest

# The conformance suite lives in the package (tracelet.testing, for plugin authors too): its
# asserts get pytest's detailed messages only if registered before anything imports it.
pytest.register_assert_rewrite("tracelet.testing")

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"


@pytest.fixture(autouse=True)
def _isolate_vendor_state(tmp_path, monkeypatch):
    """Keep every test's vendor SDK state (W&B, ClearML, MLflow, Aim) inside its tmp dir."""
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB__DISABLE_STATS", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TRACELET_STATE_DIR", raising=False)
    monkeypatch.delenv("TRACELET_LOGDIR", raising=False)
    yield


@pytest.fixture(autouse=True, scope="session")
def _no_server_left_behind():
    """The `mlflow server`s tests start (tests/destinations/harness_mlflow.py) end with the
    session, whatever a test did with them."""
    yield
    from tests.destinations.harness_mlflow import MlflowServer

    MlflowServer.stop_all()


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
