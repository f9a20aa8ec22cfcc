"""`tracelet status` tells the truth about the target asked for (#10 item 5): the destination
options pick the target as `sync` does (a database never synced is not "up to date"), a TARGET
column tells two servers apart, `--check` asks the destination whether the run is still there,
a never-synced logdir lists its runs, and exit 1 when a row is failed or drifted.

MLflow is its real sqlite store (runs deleted with MlflowClient.delete_run); the memory
destination is driven through the CLI with its journal folder (runs dropped through its own
store) where the test needs a failing or a checkable destination."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tracelet.destinations.base import Destination
from tracelet.destinations.memory.client import MemoryStore
from tracelet.testing.sources import SourceTruth, write_simple_run


def cli(*args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracelet.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=timeout)


def rows(stdout: str) -> list[dict[str, str]]:
    """The status table as dicts (columns split where the header's columns start)."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    head = lines[0]
    names = head.split()
    starts = [head.index(n) for n in names]
    out = []
    for ln in lines[1:]:
        cells = [ln[a:b].strip() for a, b in zip(starts, starts[1:] + [len(ln) + 1])]
        out.append(dict(zip(names, cells)))
    return out


def logdir_with_runs(root: Path, n: int = 2, steps: int = 20) -> Path:
    logdir = root / "logs"
    for k in range(n):
        write_simple_run(logdir / f"r{k}", f"r{k}", SourceTruth(), ["loss"], list(range(steps)),
                         seed=k)
    return logdir


def event_bytes(run: Path) -> int:
    return sum(p.stat().st_size for p in run.glob("events.out.tfevents*"))


def status_json(*args, env=None) -> tuple[int, list[dict]]:
    r = cli("status", *args, "--json", env=env)
    doc = json.loads(r.stdout)
    assert doc["exit_code"] == r.returncode, r.stderr
    return r.returncode, doc["runs"]


def test_destination_options_pick_the_target(tmp_path):
    logdir = logdir_with_runs(tmp_path)
    synced = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert cli("sync", str(logdir), "--to", "mlflow", "--mlflow-uri", synced).returncode == 0
    r = cli("status", str(logdir), "--to", "mlflow", "--mlflow-uri", synced)
    assert r.returncode == 0, r.stderr
    assert [x["STATE"] for x in rows(r.stdout)] == ["up to date"] * 2, r.stdout

    # a database that does not exist was never synced to: everything is behind
    missing = tmp_path / "nowhere" / "other.db"
    for how in (("--mlflow-uri", f"sqlite:///{missing}"), ()):
        env = {} if how else {"MLFLOW_TRACKING_URI": f"sqlite:///{missing}"}
        r = cli("status", str(logdir), "--to", "mlflow", *how, env=env)
        assert r.returncode == 0, r.stderr  # nothing failed: there is just work to do
        table = rows(r.stdout)
        assert [x["STATE"] for x in table] == ["never synced"] * 2, r.stdout
        assert all(x["TARGET"] == f"sqlite:///{missing}" for x in table), r.stdout
        _, js = status_json(str(logdir), "--to", "mlflow", *how, env=env)
        assert {x["run"]: x["bytes_behind"] for x in js} == \
            {f"r{k}": event_bytes(logdir / f"r{k}") for k in range(2)}
        assert all(x["points_synced"] == 0 for x in js)
    assert not missing.parent.exists()  # status created nothing

    # the other destinations' options too: targets never synced are not "up to date"
    for args in (("--to", "aim", "--aim-repo", str(tmp_path / "aim")),
                 ("--to", "wandb", "--wandb-mode", "offline"),
                 ("--to", "clearml", "--clearml-offline")):
        code, js = status_json(str(logdir), *args)
        assert code == 0 and [x["state"] for x in js] == ["never synced"] * 2, (args, js)


def test_target_column_tells_two_servers_apart(tmp_path):
    logdir = logdir_with_runs(tmp_path, n=1)
    a, b = (f"sqlite:///{tmp_path / n}" for n in ("a.db", "b.db"))
    assert cli("sync", str(logdir), "--to", "mlflow", "--mlflow-uri", a).returncode == 0
    assert cli("sync", str(logdir), "--to", "mlflow", "--mlflow-uri", b).returncode == 0
    write_simple_run(logdir / "r0", "r0", SourceTruth(), ["loss"], [20, 21], append=True)
    assert cli("sync", str(logdir), "--to", "mlflow", "--mlflow-uri", a).returncode == 0

    r = cli("status", str(logdir))
    assert r.returncode == 0, r.stderr
    table = rows(r.stdout)
    assert "TARGET" in r.stdout.splitlines()[0]
    assert sorted((x["RUN"], x["DEST"], x["TARGET"], x["STATE"]) for x in table) == [
        ("r0", "mlflow", a, "up to date"), ("r0", "mlflow", b, "behind")], r.stdout
    # the options of one server: its rows only
    r = cli("status", str(logdir), "--mlflow-uri", b)
    assert [(x["TARGET"], x["STATE"]) for x in rows(r.stdout)] == [(b, "behind")], r.stdout


def test_never_synced_logdir_lists_its_runs(tmp_path):
    logdir = logdir_with_runs(tmp_path)
    (logdir / "r1" / "tracelet.json").write_text(json.dumps({
        "schema_version": 1, "run_id": "r1-0001", "name": "r1", "project": "p",
        "status": "finished", "backends": ["mlflow"]}))
    r = cli("status", str(logdir))
    assert r.returncode == 0, r.stderr
    assert "no runs found" not in r.stdout
    table = {x["RUN"]: x for x in rows(r.stdout)}
    assert set(table) == {"r0", "r1"}, r.stdout
    assert table["r0"]["DEST"] == "-" and table["r0"]["STATE"] == "never synced"
    assert table["r1"]["DEST"] == "mlflow" and table["r1"]["STATE"] == "never synced"
    _, js = status_json(str(logdir))
    assert {x["run"]: x["bytes_behind"] for x in js} == \
        {f"r{k}": event_bytes(logdir / f"r{k}") for k in range(2)}
    code, js = status_json(str(logdir), "--to", "mlflow")
    assert code == 0 and [x["state"] for x in js] == ["never synced"] * 2


def test_failed_row_exits_1(tmp_path):
    logdir = logdir_with_runs(tmp_path, n=2)
    mem = ("--to", "memory", "--memory-store", str(tmp_path / "mem"))
    assert cli("sync", str(logdir), *mem).returncode == 0
    assert cli("status", str(logdir), *mem).returncode == 0
    write_simple_run(logdir / "r0", "r0", SourceTruth(), ["loss"], [20, 21], append=True)
    down = {"TRACELET_MEMORY_DOWN": "1", "TRACELET_RETRY_ATTEMPTS": "1"}
    assert cli("sync", str(logdir), *mem, env=down).returncode == 1
    r = cli("status", str(logdir), *mem)
    assert r.returncode == 1, r.stdout
    table = {x["RUN"]: x for x in rows(r.stdout)}
    assert table["r0"]["STATE"] == "failed" and "connection refused" in table["r0"]["ERROR"]
    assert table["r1"]["STATE"] == "up to date"
    rq = cli("status", str(logdir), *mem, "-q")  # -q: the failed rows only, still exit 1
    assert rq.returncode == 1 and [x["RUN"] for x in rows(rq.stdout)] == ["r0"], rq.stdout
    assert cli("sync", str(logdir), *mem).returncode == 0
    assert cli("status", str(logdir), *mem).returncode == 0  # caught up: exit 0 again


def test_check_finds_a_run_dropped_on_the_memory_destination(tmp_path):
    logdir = logdir_with_runs(tmp_path, n=2)
    folder = tmp_path / "mem"
    mem = ("--to", "memory", "--memory-store", str(folder))
    assert cli("sync", str(logdir), *mem).returncode == 0
    r = cli("status", str(logdir), *mem, "--check")
    assert r.returncode == 0 and [x["STATE"] for x in rows(r.stdout)] == ["up to date"] * 2
    store = MemoryStore(folder)
    (lost,) = [u for u, run in store.runs.items() if run.run_path == "r0"]
    store.drop(lost)  # the run is gone on the destination; the checkpoints do not know
    r = cli("status", str(logdir), *mem)
    assert r.returncode == 0 and [x["STATE"] for x in rows(r.stdout)] == ["up to date"] * 2
    r = cli("status", str(logdir), *mem, "--check")
    assert r.returncode == 1, r.stdout
    table = {x["RUN"]: x for x in rows(r.stdout)}
    assert table["r0"]["STATE"] == "drifted" and "run missing" in table["r0"]["ERROR"]
    assert table["r1"]["STATE"] == "up to date"
    code, js = status_json(str(logdir), *mem, "--check")
    assert code == 1 and {x["run"]: x["checked"] for x in js} == {"r0": "drifted",
                                                                  "r1": "present"}
    assert "sync --resync" in next(x["last_error"] for x in js if x["run"] == "r0")
    # --resync re-sends the lost run (the source is unchanged: a plain sync takes the no-op
    # path); then --check finds it again
    assert cli("sync", str(logdir), *mem, "--resync").returncode == 0
    assert cli("status", str(logdir), *mem, "--check").returncode == 0


def _mlflow_checks() -> bool:
    from tracelet.destinations.mlflow.client import MlflowDestination

    return MlflowDestination.check_run is not Destination.check_run


@pytest.mark.skipif(not _mlflow_checks(), reason="MLflow's check_run is not on this branch")
def test_check_finds_a_run_deleted_in_mlflow(tmp_path):
    from mlflow import MlflowClient

    logdir = logdir_with_runs(tmp_path, n=2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ("--to", "mlflow", "--mlflow-uri", uri)
    assert cli("sync", str(logdir), *args).returncode == 0
    r = cli("status", str(logdir), *args, "--check")
    assert r.returncode == 0 and [x["STATE"] for x in rows(r.stdout)] == ["up to date"] * 2
    client = MlflowClient(tracking_uri=uri)
    (exp,) = [e for e in client.search_experiments() if e.name == "logs"]
    (lost,) = [x for x in client.search_runs([exp.experiment_id])
               if x.data.tags.get("tracelet.run_path") == "r0" or x.info.run_name == "r0"]
    client.delete_run(lost.info.run_id)
    r = cli("status", str(logdir), *args, "--check")
    assert r.returncode == 1, r.stdout
    table = {x["RUN"]: x for x in rows(r.stdout)}
    assert table["r0"]["STATE"] == "drifted" and table["r1"]["STATE"] == "up to date", r.stdout


@pytest.mark.timeout(600)
def test_check_finds_wandb_offline_runs_removed(tmp_path):
    """W&B offline (files read back by its own check_run): the run folders removed are
    `drifted` with --check (exit 1); without --check status reads only checkpoints."""
    import shutil

    logdir = logdir_with_runs(tmp_path, n=2, steps=5)
    args = ("--to", "wandb", "--wandb-mode", "offline", "--project", "p")
    r = cli("sync", str(logdir), *args)
    assert r.returncode == 0, r.stderr
    r = cli("status", str(logdir), *args, "--check")
    assert r.returncode == 0 and [x["STATE"] for x in rows(r.stdout)] == ["up to date"] * 2, \
        r.stdout + r.stderr
    folders = list((Path(os.environ["WANDB_DIR"]) / "wandb").glob("offline-run-*"))
    assert folders
    for f in folders:
        shutil.rmtree(f)
    r = cli("status", str(logdir), *args)
    assert r.returncode == 0 and [x["STATE"] for x in rows(r.stdout)] == ["up to date"] * 2
    r = cli("status", str(logdir), *args, "--check")
    assert r.returncode == 1, r.stdout + r.stderr
    assert [x["STATE"] for x in rows(r.stdout)] == ["drifted"] * 2, r.stdout
    assert "run missing on wandb" in r.stdout, r.stdout


@pytest.mark.parametrize("dest", ["mlflow", "aim", "wandb", "clearml"])
def test_check_of_a_removed_store_creates_nothing(tmp_path, dest):
    """`status --check` after the store was removed: the run is drifted (exit 1) and the check
    made nothing in its place (Aim's repo, MLflow's sqlite file, W&B's and ClearML's offline
    folders): a monitoring probe must not create the store the next sync should find missing."""
    logdir = logdir_with_runs(tmp_path, n=1, steps=5)
    store = tmp_path / "store"
    opts, env = {
        "mlflow": (["--mlflow-uri", f"sqlite:///{store / 'm.db'}"], {}),
        "aim": (["--aim-repo", str(store)], {}),
        "wandb": ([], {"WANDB_DIR": str(store), "WANDB_MODE": "offline"}),
        "clearml": (["--clearml-offline"], {"CLEARML_CACHE_DIR": str(store)}),
    }[dest]
    store.mkdir()
    r = cli("sync", str(logdir), "--to", dest, *opts, "-q", env=env)
    assert r.returncode == 0, r.stderr
    assert any(store.iterdir())
    import shutil

    shutil.rmtree(store)
    code, runs = status_json(str(logdir), "--to", dest, *opts, "--check", env=env)
    assert code == 1
    assert [row["state"] for row in runs] == ["drifted"], runs
    assert not store.exists(), sorted(p.name for p in store.rglob("*"))
