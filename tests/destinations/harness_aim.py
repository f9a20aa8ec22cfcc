"""Aim harness: a local Aim repo in the test's tmp dir, read back with Aim's own SDK; a real
``aim server`` on a free port (the ``aim_server`` fixture) and ``index_repo`` (what ``aim up``
does to a repo)."""
from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.destinations.harness_mlflow import free_port
from tracelet.testing.harness import Harness, ReadBack

SYSTEM_PREFIXES = ("__system__", "system/")
REPEAT_CONTEXT_KEY = "tracelet_repeat"


def param_str(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (list, dict)):
        return json.dumps(v, default=str, sort_keys=True)
    return str(v)


def flat_params(tree: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (tree or {}).items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flat_params(v, key))
        else:
            out[key] = param_str(v)
    return out


def find_aim_runs(repo, project: str, run_path: str) -> list[str]:
    """Every run in the repo's folder of runs (what ``aim runs ls`` lists, indexed or not) that
    carries this run path in this experiment, read from each run's own storage."""
    from aim import Repo

    Repo._all_run_hashes.cache_clear()  # Aim caches the listing 0.5 s; list as a fresh process
    found = []
    for h in sorted(repo.list_all_runs()):
        tree = repo.request_tree("meta", h, read_only=True, skip_read_optimization=True)
        tracelet = tree.subtree(("meta", "chunks", h, "attrs")).get("tracelet") or {}
        if tracelet.get("run_path") != run_path:
            continue
        props = repo.structured_db.find_run(h)
        if props is not None and props.experiment == project:
            found.append(h)
    return found


def read_aim_run(repo, run_hash: str) -> ReadBack:
    """A run as Aim's SDK shows it (``Repo.iter_runs`` view: the index)."""
    from aim.sdk.run import Run
    from aim.sdk.sequences.distribution_sequence import Distributions
    from aim.sdk.sequences.audio_sequence import Audios
    from aim.sdk.sequences.image_sequence import Images
    from aim.sdk.sequences.text_sequence import Texts

    indexed = {r.hash for r in repo.iter_runs()}
    assert run_hash in indexed, f"aim run {run_hash} is not in Aim's index (Repo.iter_runs)"
    run = Run(run_hash, repo=repo, read_only=True)
    rb = ReadBack(runs_found=1)
    for metric in run.metrics():
        ctx = metric.context.to_dict()
        steps, (values,) = metric.data.view(["val"]).items_list()
        if metric.name.startswith(SYSTEM_PREFIXES):
            rb.system_points += len(steps)
            continue
        key = metric.name
        if ctx and set(ctx) != {REPEAT_CONTEXT_KEY}:
            key = f"{metric.name} {json.dumps(ctx, sort_keys=True)}"  # unexpected: shows up
        rb.scalars.setdefault(key, []).extend(
            (int(s), float(v)) for s, v in zip(steps, values))
    for name, ctx, _ in run.iter_sequence_info_by_type(Distributions.allowed_dtypes()):
        rb.histograms += len(run.get_distribution_sequence(name, ctx).data.indices_list())
    for name, ctx, _ in run.iter_sequence_info_by_type(Images.allowed_dtypes()):
        _, (values,) = run.get_image_sequence(name, ctx).data.view(["val"]).items_list()
        rb.images += sum(len(v) if isinstance(v, list) else 1 for v in values)
    for name, ctx, _ in run.iter_sequence_info_by_type(Audios.allowed_dtypes()):
        _, (values,) = run.get_audio_sequence(name, ctx).data.view(["val"]).items_list()
        rb.audio += sum(len(v) if isinstance(v, list) else 1 for v in values)
    for name, ctx, _ in run.iter_sequence_info_by_type(Texts.allowed_dtypes()):
        rb.texts += len(run.get_text_sequence(name, ctx).data.indices_list())
    rb.params = flat_params(run.get("hparams") or {})
    rb.artifacts = sorted(run.artifacts)
    tracelet = run.get("tracelet") or {}
    rb.status = "running" if run.active else (tracelet.get("status") or "finished")
    rb.aim_run = run  # type: ignore[attr-defined]  # for Aim-specific tests
    rb.name = run.name  # type: ignore[attr-defined]
    return rb


class AimLocalHarness(Harness):
    """A local Aim repo (``--aim-repo <tmp>``), the embedded default of ``--to aim``."""

    name = "aim"
    label = "aim-local"
    kill_trials = 10
    supports = Harness.supports | {"audio"}

    def setup(self, tmp_path: Path, monkeypatch) -> dict[str, Any]:
        self.root = str(tmp_path / "aim-repo")
        monkeypatch.delenv("AIM_REPO", raising=False)
        return {"aim_repo": self.root}

    def cli_args(self) -> list[str]:
        return ["--aim-repo", self.root]

    def repo(self):
        from aim import Repo

        return Repo(self.root)  # not Repo.from_path: a fresh view of the index, not a pooled one

    def read_back(self, project: str, run_path: str) -> ReadBack:
        from aim import Repo

        if not Repo.exists(self.root):
            return ReadBack()
        repo = self.repo()
        found = find_aim_runs(repo, project, run_path)
        if not found:
            return ReadBack()
        rb = read_aim_run(repo, found[0])
        rb.runs_found = len(found)
        # the display name: the run path, less "<project>/" for a recorded run (Run names)
        shown = (run_path, run_path.removeprefix(f"{project}/"))
        assert rb.name in shown, (rb.name, run_path)  # type: ignore[attr-defined]
        return rb


AIM_CLI = str(Path(sys.executable).with_name("aim"))  # Aim's console script, beside python
SERVER_START_S = 60


def index_repo(path: str | Path) -> None:
    """Index every run of a local repo in Aim's index (``Repo.iter_runs``, queries), as ``aim
    up`` on it does: Tracelet leaves a remote repo's index to the server's side."""
    from aim import Repo
    from aim.sdk.index_manager import RepoIndexManager

    repo = Repo(str(path))
    manager = RepoIndexManager.get_index_manager(repo)
    for run_hash in repo.list_all_runs():
        manager.index(run_hash)


@dataclass
class AimServer:
    """A running ``aim server`` over the local repo at ``repo``."""

    repo: Path
    url: str  # aim://127.0.0.1:PORT
    log: Path

    def harness(self) -> AimLocalHarness:
        """Syncs go to the server (``--aim-repo aim://``), read back from its repo folder."""
        h = AimLocalHarness()
        h.root = str(self.repo)
        h.config = {"aim_repo": self.url}
        return h


@pytest.fixture
def aim_h(tmp_path, monkeypatch) -> Iterator[AimLocalHarness]:
    """A local Aim repo harness, its config set up in ``tmp_path``, torn down after the test."""
    h = AimLocalHarness()
    h.config = h.setup(tmp_path, monkeypatch)
    yield h
    h.teardown()


@pytest.fixture
def aim_server(tmp_path) -> Iterator[AimServer]:
    """A real ``aim server`` on a free port over a new repo ``tmp_path/server``, stopped at the
    end of the test."""
    from aim import Repo

    repo = tmp_path / "server"
    repo.mkdir()
    Repo.from_path(str(repo), init=True)
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([AIM_CLI, "server", "--repo", str(repo), "--host", "127.0.0.1",
                                 "--port", str(port), "-y"], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    why = (f"exited with {proc.returncode}" if proc.poll() is not None
                           else f"not listening after {SERVER_START_S} s")
                    pytest.fail(f"aim server on port {port} {why}; its log:\n"
                                f"{log.read_text(errors='replace')[-2000:]}")
                time.sleep(0.3)
        yield AimServer(repo, f"aim://127.0.0.1:{port}", log)
    finally:
        # Aim's remote objects release their server resources while it is up (else Aim's exit
        # handler retries forever); its cached run listing holds a remote Repo as well
        Repo._all_run_hashes.cache_clear()
        gc.collect()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


HARNESSES = [AimLocalHarness]
