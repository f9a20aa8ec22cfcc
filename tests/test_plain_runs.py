"""Plain TensorBoard runs (no manifest) on MLflow's real local sqlite store, read back with
MlflowClient: start/end times from the events, `--finish-idle`, the no-op fast path once
finished, TensorBoard hparams metrics and Lightning's hparams.yaml / hp_metric."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tracelet.cli import main
from tracelet.testing.events import framed, scalar_event, version_event

T0 = 1_600_000_000.0  # the writer opened its file here (its file_version event)


def event(wall: float, step: int = 0, tag: str | None = None, value: float = 0.0,
          version: bool = False) -> bytes:
    return framed(version_event(wall) if version else scalar_event(tag, step, value, wall=wall))


def write_plain_run(folder: Path, start: float = T0, steps: int = 10, first_step: int = 0,
                    append: bool = False, name: str = "events.out.tfevents.1600000000.h.1.0"
                    ) -> float:
    """A PyTorch-style run: file_version at ``start``, then one scalar per step at start+10+s.
    Returns the last point's wall time."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = [] if append else [event(start, version=True)]
    for s in range(first_step, first_step + steps):
        frames.append(event(start + 10 + s, s, "loss", 1.0 / (s + 1)))
    with open(folder / name, "ab" if append else "wb") as f:
        f.write(b"".join(frames))
    return start + 10 + first_step + steps - 1


def age(folder: Path, seconds: float = 7200) -> None:
    """The run's files stopped growing `seconds` ago (their mtime set back)."""
    t = time.time() - seconds
    for p in folder.rglob("events.out.tfevents.*"):
        os.utime(p, (t, t))


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def sync(logdir, *args):
    r = CliRunner().invoke(main, ["sync", str(logdir), "--to", "mlflow", "--json", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def mlflow_runs(uri: str, project: str) -> dict:
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(project)
    return {r.data.tags["tracelet.run_path"]: r for r in c.search_runs([exp.experiment_id])}


def test_plain_run_times_come_from_its_events_and_finish_idle_finishes_it(tmp_path, mlflow_uri):
    logdir = tmp_path / "logs"
    last = write_plain_run(logdir / "a")
    age(logdir / "a")
    sync(logdir)  # no --finish-idle: stays running, however old
    run = mlflow_runs(mlflow_uri, "logs")["a"]
    assert run.info.start_time == int(T0 * 1000)  # the file_version event, not "now"
    assert run.info.status == "RUNNING" and run.info.end_time is None
    sync(logdir)
    assert mlflow_runs(mlflow_uri, "logs")["a"].info.status == "RUNNING"

    report = sync(logdir, "--finish-idle", "1s")
    assert report["runs"][0]["destinations"]["mlflow"]["state"] == "synced"
    run = mlflow_runs(mlflow_uri, "logs")["a"]
    assert run.info.status == "FINISHED"
    assert run.info.end_time == int(last * 1000)  # the last event, not the sync's clock
    assert run.info.start_time == int(T0 * 1000)

    # it grows again: running again, then finished at the new last event once idle
    last = write_plain_run(logdir / "a", first_step=10, steps=5, append=True)
    sync(logdir, "--finish-idle", "1h")
    run = mlflow_runs(mlflow_uri, "logs")["a"]
    assert run.info.status == "RUNNING"
    assert run.data.metrics["loss"] == pytest.approx(1.0 / 15)
    age(logdir / "a")
    sync(logdir, "--finish-idle", "1h")
    run = mlflow_runs(mlflow_uri, "logs")["a"]
    assert run.info.status == "FINISHED" and run.info.end_time == int(last * 1000)


def test_a_run_that_becomes_idle_without_any_file_change_gets_one_pass(tmp_path, mlflow_uri):
    """Idle is folded into the source signature: same files, same mtimes, only the idle
    condition changed -> not the no-op fast path."""
    from tracelet.engine import SyncOptions, run_sync

    logdir = tmp_path / "logs"
    last = write_plain_run(logdir / "a")
    age(logdir / "a", 600)

    def once(idle_s):
        return run_sync([str(logdir)], SyncOptions(destinations=["mlflow"], progress=False,
                                                   finish_idle_s=idle_s))

    assert once(10 ** 6).runs[0].destinations["mlflow"].state == "synced"  # not idle yet
    assert mlflow_runs(mlflow_uri, "logs")["a"].info.status == "RUNNING"
    assert once(10 ** 6).runs[0].destinations["mlflow"].state == "unchanged"
    report = once(60)  # idle now
    assert report.runs[0].destinations["mlflow"].state == "synced"
    run = mlflow_runs(mlflow_uri, "logs")["a"]
    assert run.info.status == "FINISHED" and run.info.end_time == int(last * 1000)
    assert once(60).runs[0].destinations["mlflow"].state == "unchanged"


def test_a_finished_idle_run_stays_on_the_fast_path_without_importing_mlflow(tmp_path, mlflow_uri):
    logdir = tmp_path / "logs"
    write_plain_run(logdir / "a")
    write_plain_run(logdir / "b", start=T0 + 5000)
    age(logdir)
    sync(logdir, "--finish-idle", "30m")
    assert {p: r.info.status for p, r in mlflow_runs(mlflow_uri, "logs").items()} == \
        {"a": "FINISHED", "b": "FINISHED"}
    # the next cron pass: nothing changed, nothing is called (MLflow is not even imported)
    code = ("import sys\nfrom tracelet.cli import main\n"
            f"sys.argv = ['tracelet', 'sync', {str(logdir)!r}, '--to', 'mlflow', '--json', "
            "'--finish-idle', '30m']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
            "print('RESULT', code, 'mlflow' in sys.modules, file=sys.stderr)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri}, timeout=120)
    assert "RESULT 0 False" in p.stderr, p.stderr
    report = json.loads(p.stdout)
    assert {r["run"]: r["destinations"]["mlflow"]["state"] for r in report["runs"]} == \
        {"a": "unchanged", "b": "unchanged"}


def test_a_run_with_a_manifest_is_never_finished_by_idleness(tmp_path, mlflow_uri):
    logdir = tmp_path / "logs"
    write_plain_run(logdir / "p" / "rec")
    (logdir / "p" / "rec" / "tracelet.json").write_text(json.dumps({
        "schema_version": 1, "run_id": "r" * 32, "name": "rec", "project": "p",
        "status": "running", "started_at": T0 - 50}))
    age(logdir)
    sync(logdir, "--finish-idle", "1s")
    run = mlflow_runs(mlflow_uri, "p")["p/rec"]
    assert run.info.status == "RUNNING"  # the manifest says so: it is the truth for status
    assert run.info.start_time == int((T0 - 50) * 1000)  # manifest started_at wins


@pytest.mark.parametrize("text", ["24", "1x", "-5m", "0s", "1h30m", "h", "", " 5 m", "1e3s",
                                  "nan", "inf"])
def test_finish_idle_is_parsed_strictly(tmp_path, mlflow_uri, text):
    logdir = tmp_path / "logs"
    write_plain_run(logdir / "a")
    r = CliRunner().invoke(main, ["sync", str(logdir), "--to", "mlflow", "--finish-idle", text])
    assert r.exit_code == 2, r.output
    assert "--finish-idle" in r.output and "24h" in r.output
    assert not (tmp_path / "mlflow.db").exists()  # nothing happened


@pytest.mark.parametrize("text,seconds", [("24h", 86400), ("90m", 5400), ("3600s", 3600),
                                          ("2d", 172800), ("1.5h", 5400)])
def test_finish_idle_durations(text, seconds):
    from tracelet.engine import parse_duration

    assert parse_duration(text) == seconds


def test_start_time_skips_unusable_wall_times_and_survives_garbage(tmp_path, mlflow_uri):
    logdir = tmp_path / "logs"
    # a file_version with NaN / 0 / negative wall times, then a usable one
    (logdir / "bad_first").mkdir(parents=True)
    (logdir / "bad_first" / "events.out.tfevents.1.h.1.0").write_bytes(
        event(float("nan"), version=True) + event(0.0, 0, "loss", 1.0)
        + event(-5.0, 1, "loss", 1.0) + event(T0 + 7, 2, "loss", 1.0))
    # the first file is garbage; the next event file of the run has the start
    (logdir / "garbage_first").mkdir()
    (logdir / "garbage_first" / "events.out.tfevents.1.h.1.0").write_bytes(b"\x07" * 300)
    write_plain_run(logdir / "garbage_first", start=T0 + 99,
                    name="events.out.tfevents.2.h.1.0")
    before = time.time()
    report = sync(logdir)
    runs = mlflow_runs(mlflow_uri, "logs")
    assert runs["bad_first"].info.start_time == int((T0 + 7) * 1000)
    assert runs["garbage_first"].info.start_time == int((T0 + 99) * 1000)
    # a run whose files hold no usable wall time at all: MLflow's own start (now)
    (logdir / "none").mkdir()
    (logdir / "none" / "events.out.tfevents.1.h.1.0").write_bytes(event(math.inf, version=True))
    sync(logdir)
    assert mlflow_runs(mlflow_uri, "logs")["none"].info.start_time >= int(before * 1000) - 1000
    assert report["exit_code"] == 0


def test_torch_add_hparams_metrics_land_as_metrics_and_params(tmp_path, mlflow_uri):
    pytest.importorskip("torch")
    from torch.utils.tensorboard import SummaryWriter

    logdir = tmp_path / "logs"
    w = SummaryWriter(str(logdir / "hp"))
    w.add_scalar("loss", 0.5, 1)
    w.add_hparams({"lr": 0.01, "layers": 3, "db_password": "hunter2"},
                  {"hparam/accuracy": 0.9, "hparam/loss": 0.1})
    w.close()
    sync(logdir)
    runs = mlflow_runs(mlflow_uri, "logs")
    assert list(runs) == ["hp"]  # add_hparams' child folder is part of its parent run
    run = runs["hp"]
    assert run.data.metrics["hparam/accuracy"] == pytest.approx(0.9)
    assert run.data.metrics["hparam/loss"] == pytest.approx(0.1)
    assert run.data.params["lr"] == "0.01" and run.data.params["layers"] == "3"
    assert run.data.params["db_password"] == "***REDACTED***"


@pytest.fixture(scope="module")
def lightning_logdir(tmp_path_factory) -> Path:
    """A real tiny Lightning fit (CPU, 2 steps) with TensorBoardLogger."""
    pytest.importorskip("lightning")
    script = r'''
import sys, torch, lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

class M(L.LightningModule):
    def __init__(self, lr=1.0, db_password="s3cret", optim={"name": "sgd", "betas": (0.9, 0.99)}):
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(2, 1)
    def training_step(self, batch, i):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train_loss", loss)
        return loss
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 2)), batch_size=2)
trainer = L.Trainer(max_steps=2, accelerator="cpu", devices=1, log_every_n_steps=1,
                    logger=TensorBoardLogger(sys.argv[1], name="lit"), enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
trainer.fit(M(), data)
'''
    logdir = tmp_path_factory.mktemp("lightning") / "logs"
    p = subprocess.run([sys.executable, "-c", script, str(logdir)], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return logdir


@pytest.mark.slow  # a real Lightning fit in a subprocess (~20 s)
def test_lightning_hparams_yaml_and_hp_metric_arrive(lightning_logdir, tmp_path, mlflow_uri):
    run_dir = lightning_logdir / "lit" / "version_0"
    assert (run_dir / "hparams.yaml").is_file()
    report = sync(lightning_logdir)
    dest = report["runs"][0]["destinations"]["mlflow"]
    assert dest["param_conflicts"] == []  # the yaml's 1.0 and the event file's 1 never meet
    run = mlflow_runs(mlflow_uri, "logs")["lit/version_0"]
    params = run.data.params
    assert params["lr"] == "1.0"  # as hparams.yaml holds it (typed), not the event file's 1
    assert params["db_password"] == "***REDACTED***"  # the same rule as manifest params
    assert params["optim/name"] == "sgd"  # flattened like manifest params
    assert json.loads(params["optim/betas"]) == [0.9, 0.99]  # a !!python/tuple: a list
    assert "hp_metric" in run.data.metrics  # Lightning's hparams metric is a scalar
    assert "train_loss" in run.data.metrics
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    first_file = sorted(run_dir.glob("events.out.tfevents.*"))[0]
    first = next(iter(EventFileLoader(str(first_file)).Load()))
    assert run.info.start_time == int(first.wall_time * 1000)  # the writer's file_version
