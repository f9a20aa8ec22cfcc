"""W&B online errors say what happened (#10 item 8): a real closed port, no mock."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.destinations.harness_mlflow import free_port
from tracelet.destinations.wandb.online import _cause
from tracelet.testing.sources import SourceTruth, write_simple_run


@pytest.mark.timeout(240)
def test_unreachable_server_is_one_line_naming_the_cause(tmp_path):
    logdir = tmp_path / "logs"
    write_simple_run(logdir / "r", "r", SourceTruth(), ["loss"], list(range(5)))
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = dict(os.environ, WANDB_MODE="online", WANDB_API_KEY="x" * 40, WANDB_BASE_URL=url,
               WANDB_DIR=str(tmp_path / "wandb-root"), WANDB_SILENT="true",
               TRACELET_RETRY_BASE_DELAY_S="0.01")
    env.pop("WANDB_SERVICE", None)
    proc = subprocess.run([sys.executable, "-m", "tracelet.cli", "sync", str(logdir), "--to",
                           "wandb", "--project", "p"], env=env, capture_output=True, text=True,
                          timeout=200)
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "r -> wandb" in ln]
    assert len(lines) == 1, proc.stderr
    assert f"connection refused at {url}" in lines[0], proc.stderr
    assert "in use" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_causes_are_named_from_the_exception_chain():
    import requests

    refused = requests.ConnectionError(ConnectionRefusedError(111, "Connection refused"))
    assert _cause(refused) == ("connection refused", True)
    assert _cause(requests.ConnectTimeout("x"))[0].startswith("no answer within")
    assert _cause(requests.exceptions.SSLError("bad cert"))[1] is False
    try:
        requests.head("http://no-such-host.invalid/", timeout=5)
    except requests.RequestException as e:
        assert _cause(e) == ("unknown host (name resolution failed)", True)
