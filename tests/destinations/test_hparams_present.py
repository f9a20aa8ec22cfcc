"""TensorBoard hparams on a resync, on every destination (#10 item 4).

hparams events count as points but travel as params: a resync (``sync --resync``, ``tracelet
reset`` + sync) counts them as ``points_present`` when the destination already held every one
of their params with the value sent (``log_params`` -> ``ParamsResult.present``), so the CLI
line of a run whose points all landed says ``confirmed N already present``, N with the hparams.
A changed value is written (or, on MLflow, refused as a conflict), never confirmed. Real
vendors (MLflow's sqlite store, W&B and ClearML offline, a local Aim repo, the memory journal),
through the CLI; the params read back with each vendor's own reader (harness ``read_back``).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.destinations.harness_aim import AimLocalHarness
from tests.destinations.harness_clearml import ClearmlOfflineHarness
from tests.destinations.harness_mlflow import MlflowLocalHarness
from tests.destinations.harness_wandb import WandbOfflineHarness
from tracelet.testing.events import T0, hparams_event, version_event, write_frames
from tracelet.testing.memory import MemoryHarness
from tracelet.testing.sources import SourceTruth, write_tf2_run

PROJECT = "p"
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
# The kinds each destination can confirm present (README "confirmed N already present"):
# MLflow its scalars (histograms, images, texts, audio are artifacts there); the others every
# kind. hparams everywhere.
PRESENT_KINDS = {"mlflow": {"scalar", "hparams"}}


@pytest.fixture(params=[MemoryHarness, MlflowLocalHarness, WandbOfflineHarness,
                        ClearmlOfflineHarness, AimLocalHarness],
                ids=lambda h: h.label)
def harness(request, tmp_path, monkeypatch):
    h = request.param()
    h.config = h.setup(tmp_path, monkeypatch)
    yield h
    h.teardown()


def cli(h, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "tracelet.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **h.env()}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def sync(h, logdir: Path, *extra: str) -> dict[str, list[str]]:
    """One CLI sync: the lines it printed for each run on this destination (state line
    first, then param conflicts and the like)."""
    proc = cli(h, "sync", str(logdir), "--to", h.name, "--project", PROJECT, *h.cli_args(),
               *extra)
    pattern = re.compile(STAMP + r" tracelet: (\S+) -> " + re.escape(h.name) +
                         r"(?: \([^)]*\))?: (.*)$")
    out: dict[str, list[str]] = {}
    for line in proc.stderr.splitlines():
        m = pattern.match(line)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def points_of(line: str) -> dict[str, int]:
    """The points per kind a ``synced kind n, ...`` line counts."""
    assert line.startswith("synced "), line
    return {k: int(n.replace(",", "")) for k, n in re.findall(
        r"(\w+) ([\d,]+)", line.split(" (")[0][len("synced "):])}


def hparams_only_run(folder: Path, lr: float) -> None:
    """An event file holding nothing but an hparams session_start_info (Lightning's
    ``log_hyperparams`` at the start of a fit), one secret-looking name among them."""
    write_frames(folder / "events.out.tfevents.1700000000.h.1.0", [
        version_event(T0),
        hparams_event({"lr": lr, "batch_size": 32, "optimizer": "sgd", "api_token": "s3cr3t"})])


def test_resync_and_reset_confirm_hparams_already_present(harness, tmp_path):
    logdir = tmp_path / "logs"
    write_tf2_run(logdir / "keras", "keras", SourceTruth())  # every kind + Keras' hparams
    hparams_only_run(logdir / "lit", 0.1)
    # Lightning also writes hparams.yaml (typed): its names are sent with the file's value by
    # the params facet, and count as present when that send found them
    (logdir / "lit" / "hparams.yaml").write_text("lr: 0.1\nbatch_size: 32\n")
    first = sync(harness, logdir)
    assert first["lit"] == ["synced hparams 1"], first
    counts = points_of(first["keras"][0])
    assert counts["hparams"] == 1 and counts["scalar"] == 80, first
    total = sum(counts.values())
    kinds = PRESENT_KINDS.get(harness.name)
    present = sum(n for k, n in counts.items() if kinds is None or k in kinds)
    want = (f"confirmed {total:,} already present" if present == total
            else f"{first['keras'][0]} ({present:,} of them already present)")

    for step in ("resync", "reset"):
        if step == "reset":
            cli(harness, "reset", str(logdir), "--to", harness.name, *harness.cli_args())
            lines = sync(harness, logdir)
        else:
            lines = sync(harness, logdir, "--resync")
        assert lines["lit"] == ["confirmed 1 already present"], (step, lines)
        assert lines["keras"][0] == want, (step, lines)
    params = harness.read_back(PROJECT, "lit").params
    assert params["lr"] == "0.1" and params["api_token"] == "***REDACTED***", params
    assert params["batch_size"] == "32", params
    assert harness.read_back(PROJECT, "keras").params["optimizer"] == "adam"


def test_a_changed_hparam_is_not_confirmed(harness, tmp_path):
    logdir = tmp_path / "logs"
    hparams_only_run(logdir / "lit", 0.1)
    assert sync(harness, logdir)["lit"] == ["synced hparams 1"]
    hparams_only_run(logdir / "lit", 0.2)  # same records, one value changed
    lines = sync(harness, logdir, "--resync")["lit"]
    assert lines[0] == "synced hparams 1", lines
    params = harness.read_back(PROJECT, "lit").params
    if harness.name == "mlflow":  # write-once: the conflict is reported, the old value stays
        assert lines[1:] == ["param 'lr': destination keeps its earlier value; new value '0.2' "
                             "not applied (mlflow params are write-once)"], lines
        assert params["lr"] == "0.1"
    else:  # the new value replaces the old one
        assert lines[1:] == [] and params["lr"] == "0.2", (lines, params)
    # what the destination now holds is confirmed by the next resync (MLflow: never, it keeps
    # its earlier value)
    again = sync(harness, logdir, "--resync")["lit"]
    assert again[0] == ("synced hparams 1" if harness.name == "mlflow"
                        else "confirmed 1 already present"), again
