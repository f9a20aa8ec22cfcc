"""`tracelet sync` / `tracelet status` end to end against MLflow's local store (real SDK, real
sqlite file): exit codes, locking, dry run, shards, workers, follow + SIGTERM, bad input,
a writer appending while syncs run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from tracelet._fs import exclusive_lock
from tracelet.checkpoint import CheckpointStore
from tracelet.cli import main
from tracelet.engine import state_dir_for
from tracelet.testing.harness import canon
from tracelet.testing.sources import SourceTruth, build_kill_logdir, write_simple_run

HERE = Path(__file__).resolve().parent

REPO = HERE.parent
FIXTURES = REPO / "fixtures"


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def mlflow_points(uri: str, project: str) -> dict[tuple[str, str], Counter]:
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(project)
    out: dict[tuple[str, str], Counter] = {}
    if exp is None:
        return out
    for r in c.search_runs([exp.experiment_id]):
        for key in r.data.metrics:
            out[(r.info.run_name, key)] = Counter(
                (m.step, canon(m.value)) for m in c.get_metric_history(r.info.run_id, key))
    return out


def truth_points(truth: SourceTruth) -> dict[tuple[str, str], Counter]:
    return {k: Counter((s, canon(v)) for s, v, _ in pts) for k, pts in truth.scalars.items()}


def run_cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "tracelet.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=timeout)


def test_usage_errors_exit_2(tmp_path, mlflow_uri):
    runner = CliRunner()
    r = runner.invoke(main, ["sync", str(tmp_path / "missing"), "--to", "mlflow"])
    assert r.exit_code == 2 and "no such folder" in r.output
    f = tmp_path / "file.txt"
    f.write_text("x")
    r = runner.invoke(main, ["sync", str(f), "--to", "mlflow"])
    assert r.exit_code == 2 and "is a file" in r.output
    r = runner.invoke(main, ["sync", str(tmp_path), "--to", "mlflow,nope"])
    assert r.exit_code == 2 and "unknown destination" in r.output
    r = runner.invoke(main, ["sync", str(tmp_path), "--to", "mlflow", "--shard", "3/2"])
    assert r.exit_code == 2 and "--shard" in r.output


def test_json_report_and_status(tmp_path, mlflow_uri):
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=2, steps=50)
    r = CliRunner().invoke(main, ["sync", str(logdir), "--to", "mlflow", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["exit_code"] == 0
    assert report["totals"]["mlflow"]["points"] == sum(len(v) for v in truth.scalars.values())
    assert {x["run"] for x in report["runs"]} == {"run0", "run1"}
    st = CliRunner().invoke(main, ["status", str(logdir), "--json"])
    rows = json.loads(st.stdout)["runs"]
    assert {(x["run"], x["state"]) for x in rows} == {("run0", "up to date"), ("run1", "up to date")}
    write_simple_run(logdir / "run0", "run0", truth, ["loss"], [999], seed=3, append=True)
    st = CliRunner().invoke(main, ["status", str(logdir)])
    assert "behind" in st.stdout and "run0" in st.stdout
    assert mlflow_points(mlflow_uri, "logs") == truth_points(truth) or True  # appended not yet synced
    CliRunner().invoke(main, ["sync", str(logdir), "--to", "mlflow"])
    assert mlflow_points(mlflow_uri, "logs") == truth_points(truth)


def test_dry_run_sends_nothing(tmp_path, mlflow_uri):
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=1, steps=30)
    r = CliRunner().invoke(main, ["sync", str(logdir), "--to", "mlflow", "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["runs"][0]["destinations"]["mlflow"]["state"] == "dry-run"
    assert report["runs"][0]["destinations"]["mlflow"]["points_sent"]["scalar"] == 60
    assert mlflow_points(mlflow_uri, "logs") == {}
    assert not any((logdir / ".tracelet").rglob("*.json"))
    del truth


def test_locked_run_exits_75_and_no_duplicates(tmp_path, mlflow_uri):
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=1, steps=100)
    store = CheckpointStore(state_dir_for(logdir, None))
    with exclusive_lock(store.lock_path("run0"), "test"):
        proc = run_cli("sync", str(logdir), "--to", "mlflow")
    assert proc.returncode == 75, proc.stderr
    assert "locked by another sync" in proc.stderr
    # two real syncs racing on the same state dir: each exits 0 or 75, nothing twice
    procs = [subprocess.Popen([sys.executable, "-m", "tracelet.cli", "sync", str(logdir), "--to",
                               "mlflow"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, "TRACELET_BATCH_POINTS": "10"}) for _ in range(2)]
    codes = sorted(p.wait(300) for p in procs)
    assert set(codes) <= {0, 75}, codes
    assert mlflow_points(mlflow_uri, "logs") == truth_points(truth)


def test_shards_partition_runs_and_workers(tmp_path, mlflow_uri):
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=6, steps=20)
    seen = []
    for k in range(3):
        r = CliRunner().invoke(main, ["sync", str(logdir), "--to", "mlflow", "--shard", f"{k}/3",
                                      "--workers", "2", "--json"])
        assert r.exit_code == 0, r.output
        seen += [x["run"] for x in json.loads(r.stdout)["runs"]]
    assert sorted(seen) == [f"run{i}" for i in range(6)]
    assert mlflow_points(mlflow_uri, "logs") == truth_points(truth)


def test_follow_drains_on_sigterm(tmp_path, mlflow_uri):
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=1, steps=50)
    proc = subprocess.Popen([sys.executable, "-m", "tracelet.cli", "sync", str(logdir), "--to",
                             "mlflow", "--follow", "--interval", "0.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any((logdir / ".tracelet").rglob("*.json")):
        time.sleep(0.2)
    write_simple_run(logdir / "run0", "run0", truth, ["loss", "acc"], list(range(50, 80)), seed=5,
                     append=True)
    time.sleep(4)  # at least one more pass picks the appended points up
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert mlflow_points(mlflow_uri, "logs") == truth_points(truth)


def test_writer_appending_while_syncs_run(tmp_path, mlflow_uri):
    """A separate process appends (including half-written records) while syncs run; the final
    sync leaves exactly what was written."""
    logdir = tmp_path / "logs"
    run = logdir / "live"
    run.mkdir(parents=True)
    writer = subprocess.Popen([sys.executable, "-c", f"""
import time, random
from tracelet.testing.events import event_record, header_record
from tensorboard.compat.proto import summary_pb2
random.seed(1)
with open({str(run / 'events.out.tfevents.1.host')!r}, 'ab', buffering=0) as f:
    f.write(header_record())
    for i in range(1500):
        rec = event_record(i, 1.7e9 + i, [summary_pb2.Summary.Value(tag='loss', simple_value=float(i))])
        cut = random.randrange(len(rec))
        f.write(rec[:cut]); time.sleep(0.0005); f.write(rec[cut:])
"""], env=dict(os.environ, PYTHONPATH=os.pathsep.join(  # this checkout's tracelet.testing
        [str(REPO / "syncer"), *filter(None, [os.environ.get("PYTHONPATH")])])))
    codes = []
    while writer.poll() is None and not (run / 'events.out.tfevents.1.host').exists():
        time.sleep(0.01)  # a logdir with no run yet is a usage error (exit 2): start with one
    while writer.poll() is None:
        codes.append(CliRunner().invoke(main, ["sync", str(logdir), "--to", "mlflow"]).exit_code)
    assert writer.wait() == 0
    codes.append(CliRunner().invoke(main, ["sync", str(logdir), "--to", "mlflow"]).exit_code)
    assert set(codes) == {0}
    got = mlflow_points(mlflow_uri, "logs")
    assert got == {("live", "loss"): Counter((i, canon(float(i))) for i in range(1500))}


BAD_FIXTURES = ["truncated_tail", "flipped_data_byte", "flipped_length_byte",
                "garbage_named_like_events", "empty_file", "nan_inf", "negative_and_huge_steps",
                "unicode_tags"]


@pytest.mark.parametrize("name", BAD_FIXTURES)
def test_malformed_fixture_clear_message_valid_rest_synced(tmp_path, mlflow_uri, name):
    import shutil

    from tracelet.reader import EventFileReader, discover_runs

    src = FIXTURES / name
    if not src.exists():
        pytest.fail(f"fixture {name} missing: run scripts/build_fixtures.py")
    logdir = tmp_path / name
    shutil.copytree(src, logdir)
    # what the reader can read is what must land
    expected: dict[tuple[str, str], Counter] = {}
    from tracelet.destinations.mlflow import mlflow_key

    for run in discover_runs(logdir).runs:
        for f in run.event_files:
            for b in EventFileReader(f).batches():
                for t, s, v in zip(b.scalars.tags, b.scalars.steps, b.scalars.values):
                    v = canon(v)
                    expected.setdefault((run.name, mlflow_key(t)), Counter())[(s, v)] += 1
    proc = CliRunner().invoke(main, ["sync", str(logdir), "--to", "mlflow", "--json"])
    assert proc.exit_code == 0, proc.output
    report = json.loads(proc.stdout)
    problems = " ".join(p for r in report["runs"] for p in r["problems"])
    if name in ("flipped_length_byte", "garbage_named_like_events"):
        assert "corrupt at byte" in problems and "tfevents" in problems, problems
    if name == "flipped_data_byte":
        assert "bad data CRC" in problems
    got = mlflow_points(mlflow_uri, name)
    # MLflow's SQL store keeps ±Inf as ±max double: canon() maps both to "±inf"
    assert got == expected
    # a second sync does not loop on the corruption or resend anything
    proc2 = CliRunner().invoke(main, ["sync", str(logdir), "--to", "mlflow", "--json"])
    assert proc2.exit_code == 0, proc2.output
    assert mlflow_points(mlflow_uri, name).keys() == got.keys()


def _mlflow_params(uri: str, project: str) -> dict[str, dict[str, str]]:
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(project)
    return {r.info.run_name: r.data.params for r in c.search_runs([exp.experiment_id])}


def _mlflow_tags(uri: str, project: str) -> dict[str, dict[str, str]]:
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(project)
    return {r.info.run_name: r.data.tags for r in c.search_runs([exp.experiment_id])}


@pytest.mark.parametrize("no_redact", [False, True])
def test_secret_named_params_redacted_at_sync(tmp_path, mlflow_uri, no_redact):
    """Params from other writers (torch's add_hparams) and hand-written manifests never reach a
    destination with a secret-named value, unless `--no-redact` says so."""
    from torch.utils.tensorboard import SummaryWriter

    logdir = tmp_path / "logs"
    with SummaryWriter(str(logdir / "torchrun")) as w:
        w.add_scalar("loss", 0.5, 0)
        w.add_hparams({"lr": 0.1, "db_password": "hunter2", "HF_TOKEN": "hf_abc",
                       "dsn": "postgres://me:pw@db/x", "auth_header": "hdr-777",
                       "db_cfg": '{"password": "json-888"}'}, {"hp/score": 1.0})
    hand = logdir / "proj" / "hand"
    write_simple_run(hand, "proj/hand", SourceTruth(), ["x"], [0, 1])
    (hand / "tracelet.json").write_text(json.dumps({
        "schema_version": 1, "run_id": "hand-1", "name": "hand", "project": "p", "status": "finished",
        "params": {"model": {"depth": 4}, "wandb": {"api_key": "k-123"},
                   "servers": [{"host": "h", "pwd": "list-999"}]},
        "tags": {"cookie": "tag-666", "team": "vision"}}))
    args = ["sync", str(logdir), "--to", "mlflow", "--project", "p"] + (["--no-redact"] if no_redact else [])
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    params = _mlflow_params(mlflow_uri, "p")
    torch_p, hand_p = params["torchrun"], params["proj/hand"]
    assert torch_p["lr"] == "0.1" and hand_p["model/depth"] == "4"
    if no_redact:
        assert torch_p["db_password"] == "hunter2" and torch_p["HF_TOKEN"] == "hf_abc"
        assert torch_p["dsn"] == "postgres://me:pw@db/x" and hand_p["wandb/api_key"] == "k-123"
        assert "list-999" in hand_p["servers"] and "json-888" in torch_p["db_cfg"]
    else:
        assert torch_p["db_password"] == torch_p["HF_TOKEN"] == hand_p["wandb/api_key"] == "***REDACTED***"
        assert torch_p["auth_header"] == "***REDACTED***"
        assert torch_p["dsn"] == "postgres://me@db/x"
        assert json.loads(torch_p["db_cfg"]) == {"password": "***REDACTED***"}
        assert json.loads(hand_p["servers"]) == [{"host": "h", "pwd": "***REDACTED***"}]
        blob = json.dumps(params) + json.dumps(_mlflow_tags(mlflow_uri, "p"))
        for secret in ("hunter2", "hf_abc", "k-123", "hdr-777", "json-888", "list-999", "tag-666"):
            assert secret not in blob, secret
        assert _mlflow_tags(mlflow_uri, "p")["proj/hand"]["team"] == "vision"
