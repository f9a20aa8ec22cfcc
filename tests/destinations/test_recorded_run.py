"""A run recorded with the training-side API, synced to each destination, read back with the
vendor's own client: params (secrets redacted), `Loss/...` metrics with their steps, system
metrics, artifacts and the final status all arrive. Also the recorder's live mode driving the
real engine."""
from __future__ import annotations

import pytest

import tracelet
from tests.destinations.harnesses import HARNESS_CLASSES
from tracelet.engine import SyncOptions, run_sync

FAST = {"metrics_interval": 0.05, "metrics_flush_interval": 0.2, "metrics_part_samples": 3,
        "flush_interval": 0.1, "track_git": False}
ONE_PER_DESTINATION = {}
for _cls in HARNESS_CLASSES:
    if _cls.name not in ONE_PER_DESTINATION and "server" not in _cls.label:
        ONE_PER_DESTINATION[_cls.name] = _cls


@pytest.fixture(params=sorted(ONE_PER_DESTINATION), ids=lambda n: ONE_PER_DESTINATION[n].label)
def dest_harness(request, tmp_path, monkeypatch):
    h = ONE_PER_DESTINATION[request.param]()
    h.config = h.setup(tmp_path, monkeypatch)
    yield h
    h.teardown()


def _record(logdir, project, backend, config=None):
    import time

    cfg = {**FAST, "logdir": str(logdir), **(config or {})}
    with tracelet.start_logging("baseline", project=project, backend=backend, config=cfg) as exp:
        exp.log_params({"learning_rate": 0.01, "optimizer": {"name": "adamw"},
                        "wandb_api_key": "sk-live-123"})
        for step in range(20):
            exp.writer.add_scalar("Loss/Train/CrossEntropy", 1.0 / (step + 1), step)
            exp.log_metric("Metrics/Accuracy/Validation", step / 20, step)
        art = logdir.parent / "config.yaml"
        art.write_text("lr: 0.01\n")
        exp.log_artifact(str(art))
        time.sleep(0.4)  # a few system-metric samples
        run_dir = exp.run_dir
    return run_dir


def test_recorded_run_reaches_the_destination(dest_harness, tmp_path, project):
    h = dest_harness
    logdir = tmp_path / "runs"
    run_dir = _record(logdir, project, backend=[h.name])
    run_path = run_dir.relative_to(logdir).as_posix()
    # no --to: the backends recorded in the manifest decide
    report = run_sync([str(logdir)], SyncOptions(destinations=None, dest_config=dict(h.config),
                                                 progress=False))
    assert report.exit_code == 0, report.to_dict()
    rb = h.read_back(project, run_path)
    assert rb.runs_found == 1
    loss = rb.scalars[h.metric_key("Loss/Train/CrossEntropy")]
    assert sorted(s for s, _ in loss) == list(range(20))
    acc = rb.scalars[h.metric_key("Metrics/Accuracy/Validation")]
    assert sorted(s for s, _ in acc) == list(range(20))
    params = {k.split("/")[-1] if k.startswith("General/") else k: v for k, v in rb.params.items()}
    assert params.get(h.metric_key("learning_rate"), params.get("learning_rate")) == "0.01"
    assert "sk-live-123" not in repr(rb.params)
    assert any("REDACTED" in str(v) for v in rb.params.values()), rb.params
    assert rb.system_points > 0
    assert any(a.endswith("config.yaml") for a in rb.artifacts), rb.artifacts
    assert (rb.status or "").lower() == "finished"


def test_live_mode_syncs_through_the_real_engine(tmp_path, monkeypatch, project):
    uri = f"sqlite:///{tmp_path / 'live.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    logdir = tmp_path / "runs"
    run_dir = _record(logdir, project, backend="mlflow",
                      config={"sync": "live", "sync_interval": 0.5, "track_system": False})
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    runs = c.search_runs([c.get_experiment_by_name(project).experiment_id])
    # a recorded run shows its run path less "<project>/" (README "Run names")
    assert [r.info.run_name for r in runs] == [run_dir.name]
    assert [r.data.tags["tracelet.run_path"] for r in runs] == [run_dir.relative_to(logdir).as_posix()]
    hist = c.get_metric_history(runs[0].info.run_id, "Loss/Train/CrossEntropy")
    assert sorted(m.step for m in hist) == list(range(20))  # exactly once: the final sync at stop
    assert runs[0].info.status == "FINISHED"
