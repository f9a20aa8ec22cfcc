"""Hostile runs: each run is synced inside its own error boundary, manifests are validated against
a schema (an invalid field is ignored with a warning naming file and field), and nothing outside a
run is read or uploaded (artifact and sidecar links, linked_logdirs).

Against MLflow's real local sqlite store (read back with ``mlflow.MlflowClient``); the artifact
link test also against a local Aim repo and W&B offline (read back with their own formats). The
CLI runs as a subprocess wherever the assertion is "no traceback". Every bad input is a real
file: JSON written by the test, real symlinks, a real FIFO, real parquet.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tracelet.errors import OutsideRunError, SourceError
from tracelet.manifest import MAX_DEPTH, json_depth, load_manifest, validate_manifest
from tracelet.runfiles import RunFiles
from tracelet.testing.harness import canon
from tracelet.testing.sources import SourceTruth, write_simple_run

HERE = Path(__file__).resolve().parent

PROJECT = "hostile"
TAGS = ["Loss/train", "acc"]
SECRET = "root:x:0:0:SECRET-MARKER-7f3a:/root:/bin/bash"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def run_cli(*args, env=None, cwd=None, boot: str | None = None, timeout=300):
    """``python -m tracelet.cli ARGS`` (or ``boot``, a script that ends by calling the CLI)."""
    cmd = [sys.executable, "-c", boot, *args] if boot else [sys.executable, "-m", "tracelet.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, errors="backslashreplace", cwd=cwd,
                           env={**os.environ, **(env or {})}, timeout=timeout)


def log_lines(stderr: str) -> list[str]:
    """The cron log lines of a sync, without their ISO timestamp."""
    return [ln.split(" ", 1)[1] if ln[:4].isdigit() and ln[10:11] == "T" and " " in ln else ln
            for ln in stderr.splitlines()]


def no_traceback(r) -> None:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-4000:]


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlruns) stays in the test
    return uri


def good_manifest(run: str, **fields) -> dict:
    m = {"schema_version": 1, "run_id": f"rid-{run}", "name": run, "project": PROJECT,
         "backends": ["mlflow"], "status": "finished", "started_at": "2024-05-01T12:00:00+00:00",
         "ended_at": "2024-05-01T13:00:00+00:00", "params": {"lr": 0.1, "opt": {"name": "adam"}},
         "tags": {"team": "vision"}, "linked_logdirs": []}
    m.update(fields)
    return m


def write_run(logdir: Path, name: str, truth: SourceTruth, manifest: dict | None = None,
              raw: bytes | None = None, seed: int = 0) -> Path:
    """A run with 10 steps of two tags and a manifest (``raw``: the manifest's exact bytes)."""
    path = logdir / name
    write_simple_run(path, name, truth, TAGS, list(range(10)), seed=seed)
    if raw is not None:
        (path / "tracelet.json").write_bytes(raw)
    elif manifest is not None:
        (path / "tracelet.json").write_text(json.dumps(manifest))  # NaN/Infinity as Python writes
    return path


def mlflow_runs(uri: str, project: str = PROJECT) -> dict[str, object]:
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(project)
    if exp is None:
        return {}
    out: dict[str, object] = {}
    for r in c.search_runs([exp.experiment_id]):
        assert r.info.run_name not in out, f"run {r.info.run_name} exists twice"
        out[r.info.run_name] = r
    return out


def mlflow_points(uri: str, run) -> dict[str, Counter]:
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    return {key: Counter((m.step, canon(m.value)) for m in c.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics if not key.startswith("system/")}


def truth_points(truth: SourceTruth, run: str) -> dict[str, Counter]:
    return {tag: Counter((s, canon(v)) for s, v, _ in pts)
            for (r, tag), pts in truth.scalars.items() if r == run}


def mlflow_artifacts(uri: str, run) -> list[str]:
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    out = []

    def walk(path):
        for f in c.list_artifacts(run.info.run_id, path):
            if f.is_dir:
                walk(f.path)
            else:
                out.append(f.path)
    walk(None)
    # the run's artifacts/ (Tracelet's own tracelet/ files, the manifest and requirements, are
    # not from the run folder's artifacts and are left out here)
    return sorted(p for p in out if not p.startswith("tracelet/"))


def grep_tree(root: Path, needle: bytes) -> list[Path]:
    """Files under ``root`` (links not followed) whose bytes contain ``needle``."""
    hits = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath, f)
            if p.is_symlink() or not p.is_file():
                continue
            try:
                if needle in p.read_bytes():
                    hits.append(p)
            except OSError:
                pass
    return hits


def write_part(path: Path, rows: int, t0: float = 1_700_000_000.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"timestamp": [t0 + i for i in range(rows)],
                             "name": ["cpu/utilization_percent"] * rows,
                             "value": [float(i) for i in range(rows)]}), path)


# ---------------------------------------------------------------------------------------------
# 1 + 2: manifest classes, each in a run of its own beside good runs
# ---------------------------------------------------------------------------------------------
# run name -> (fields overriding a good manifest, the fields that must be reported as invalid)
BAD_FIELDS: dict[str, tuple[dict, list[str]]] = {
    "params_list": ({"params": [1, 2, 3]}, ["params"]),
    "params_string": ({"params": "lr=0.1"}, ["params"]),
    "backends_number": ({"backends": 5}, ["backends"]),
    "backends_list_of_numbers": ({"backends": [1, 2]}, ["backends"]),
    "linked_number": ({"linked_logdirs": 7}, ["linked_logdirs"]),
    "linked_list_of_objects": ({"linked_logdirs": [{"path": "/x"}]}, ["linked_logdirs"]),
    "status_list": ({"status": ["finished"]}, ["status"]),
    "status_unknown": ({"status": "exploded"}, ["status"]),
    "tags_string": ({"tags": "team"}, ["tags"]),
    "tags_nested": ({"tags": {"team": {"name": "vision"}}}, ["tags"]),
    "times_nan_huge": ({"started_at": float("nan"), "ended_at": 1e300}, ["started_at", "ended_at"]),
    "times_inf_negative": ({"started_at": float("inf"), "ended_at": -5}, ["started_at", "ended_at"]),
    "times_unparsable": ({"started_at": "yesterday", "ended_at": "2024-13-45T99:00"},
                         ["started_at", "ended_at"]),
    "times_bool_list": ({"started_at": True, "ended_at": [2024]}, ["started_at", "ended_at"]),
    "run_id_dict": ({"run_id": {"uuid": "abc"}}, ["run_id"]),
    "run_id_empty_and_huge_version": ({"run_id": "", "schema_version": 10**30},
                                      ["run_id", "schema_version"]),
    "name_project_long": ({"name": "n" * 100_000, "project": "p" * 5_000}, ["name", "project"]),
    "name_project_control": ({"name": "run\x1b[31mred", "project": "vision\n\x00"},
                             ["name", "project"]),
    "pid_command": ({"pid": -1, "command": "python train.py"}, ["pid", "command"]),
    "env_git_system_lists": ({"env": [], "git": "abc", "system": 3}, ["env", "git", "system"]),
}

# run name -> (exact manifest bytes, words the warning must contain): the whole file is unusable
BAD_FILES: dict[str, tuple[bytes, str]] = {
    "deep_nesting": (b'{"params": {"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}}",
                     f"more than {MAX_DEPTH} levels deep"),
    "deep_objects": (b'{"params": ' + b'{"a": ' * 5_000 + b"1" + b"}" * 5_000 + b"}",
                     f"more than {MAX_DEPTH} levels deep"),
    "not_json": (b'{"params": {"lr": 0.1', "not valid JSON"),
    "array_root": (b"[1, 2, 3]", "must be a JSON object"),
    "huge_integer": (b'{"pid": ' + b"9" * 5_000 + b"}", "not valid JSON"),
}


def _build_hostile_logdir(logdir: Path, truth: SourceTruth) -> None:
    for i in range(3):
        write_run(logdir, f"good_{i}", truth, good_manifest(f"good_{i}"), seed=i)
    for k, (name, (fields, _)) in enumerate(sorted(BAD_FIELDS.items())):
        write_run(logdir, name, truth, good_manifest(name, **fields), seed=10 + k)
    for k, (name, (raw, _)) in enumerate(sorted(BAD_FILES.items())):
        write_run(logdir, name, truth, raw=raw, seed=50 + k)
    # a 2 GB manifest (sparse: no disk used): never read, its run's events still sync
    path = write_run(logdir, "huge_manifest", truth, raw=b'{"params": {"a": "', seed=90)
    with open(path / "tracelet.json", "r+b") as f:
        f.truncate(2 * 1024 ** 3)


def test_invalid_manifest_fields_are_ignored_and_everything_else_syncs(tmp_path, mlflow_uri):
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    _build_hostile_logdir(logdir, truth)
    r = run_cli("sync", str(logdir), "--to", "mlflow", "--project", PROJECT)
    no_traceback(r)
    # an ignored field is a warning: every point and every valid field synced -> exit 0
    assert r.returncode == 0, r.stderr[-4000:]
    lines = r.stderr.splitlines()
    for name, (_, fields) in BAD_FIELDS.items():
        for fld in fields:
            assert any(f"{name}/tracelet.json: field '{fld}' must be" in ln and "; ignored" in ln
                       for ln in lines), (name, fld, r.stderr[-3000:])
    for name, (_, words) in BAD_FILES.items():
        assert any(f"{name}/tracelet.json" in ln and words in ln for ln in lines), (name, words)
    assert any("huge_manifest/tracelet.json" in ln and "2,147,483,648 bytes" in ln
               and "not read" in ln for ln in lines)
    assert not any("good_" in ln and "tracelet.json" in ln for ln in lines)  # no false alarms

    runs = mlflow_runs(mlflow_uri)
    expected = sorted({r for r, _ in truth.scalars})
    assert sorted(runs) == expected  # every run once, bad ones under --project
    for name in expected:  # every point of every run exactly once
        assert mlflow_points(mlflow_uri, runs[name]) == truth_points(truth, name), name
    # the valid fields of a run with invalid ones still synced
    for name, (_, fields) in BAD_FIELDS.items():
        run = runs[name]
        if "params" not in fields:
            assert run.data.params.get("lr") == "0.1" and run.data.params.get("opt/name") == "adam", name
        else:
            assert "lr" not in run.data.params, name
        want = "RUNNING" if "status" in fields else "FINISHED"
        assert run.info.status == want, (name, run.info.status)
        if "run_id" not in fields:
            assert run.data.tags.get("tracelet.run_id") == f"rid-{name}", name
    for name in BAD_FILES:
        assert runs[name].data.params == {} and runs[name].info.status == "RUNNING", name

    # exactly once across syncs: the second pass sends nothing and stays quiet
    r2 = run_cli("sync", str(logdir), "--to", "mlflow", "--project", PROJECT, "--json")
    no_traceback(r2)
    assert r2.returncode == 0
    report = json.loads(r2.stdout)
    assert report["totals"]["mlflow"]["points"] == 0, report["totals"]
    runs = mlflow_runs(mlflow_uri)
    for name in expected:
        assert mlflow_points(mlflow_uri, runs[name]) == truth_points(truth, name), name

    # status reads the same logdir without a traceback
    st = run_cli("status", str(logdir), "--to", "mlflow")
    no_traceback(st)
    assert st.returncode == 0 and "good_0" in st.stdout


def test_backends_and_linked_logdirs_of_wrong_type_without_to(tmp_path, mlflow_uri):
    """Without --to the manifest's backends decide; on the no-op fast path too (cheap type check,
    no schema), a wrong type is absent: that run has no destination (exit 2: a configuration
    error), the others sync."""
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_run(logdir, "good", truth, good_manifest("good"))
    write_run(logdir, "backends_number", truth, good_manifest("backends_number", backends=5))
    write_run(logdir, "backends_object", truth, good_manifest("backends_object", backends={"a": 1}))
    write_run(logdir, "linked_number", truth, good_manifest("linked_number", linked_logdirs=7))
    for attempt in range(2):  # first: locked path; second: the fast path reads the manifests
        r = run_cli("sync", str(logdir))
        no_traceback(r)
        assert r.returncode == 2, r.stderr  # nothing can happen for those runs: configuration
        assert "backends_number/tracelet.json: field 'backends' must be" in r.stderr
        assert "run 'backends_number': no destination" in r.stderr
        runs = mlflow_runs(mlflow_uri)
        assert sorted(runs) == ["good", "linked_number"]
        for name in runs:
            assert mlflow_points(mlflow_uri, runs[name]) == truth_points(truth, name)


def test_no_op_fast_path_does_not_load_jsonschema(tmp_path, mlflow_uri):
    logdir = tmp_path / "logs"
    write_run(logdir, "good", SourceTruth(), good_manifest("good"))
    assert run_cli("sync", str(logdir)).returncode == 0
    boot = ("import atexit, sys\n"
            "atexit.register(lambda: print('MODULES', 'jsonschema' in sys.modules, "
            "'mlflow' in sys.modules, file=sys.stderr))\n"
            "from tracelet.cli import main\nsys.argv = ['tracelet', *sys.argv[1:]]\nmain()\n")
    r = run_cli("sync", str(logdir), boot=boot)
    assert r.returncode == 0, r.stderr
    assert "MODULES False False" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------
# 1: an unexpected error in one run: reported for that run, the pass goes on
# ---------------------------------------------------------------------------------------------
# A fault no input check foresaw, injected into the real reader of one run's event files (the
# destination stays MLflow's real store): stands in for any bug met while reading a run.
FAULT_BOOT = """
import os, sys
import tracelet.engine as engine
_Reader = engine.EventFileReader
class FaultyReader(_Reader):
    def batches(self, *a, **kw):
        if os.environ.get("FAULT_RUN") and os.environ["FAULT_RUN"] in self.path:
            raise ZeroDivisionError("injected fault")
        yield from _Reader.batches(self, *a, **kw)
engine.EventFileReader = FaultyReader
from tracelet.cli import main
sys.argv = ["tracelet", *sys.argv[1:]]
main()
"""


def test_unexpected_error_fails_only_that_run(tmp_path, mlflow_uri):
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    for name in ("a_first", "crashing", "z_last"):
        write_run(logdir, name, truth, good_manifest(name))
    write_run(logdir, "warned", truth, good_manifest("warned", tags="x"))
    fault = {"FAULT_RUN": "/crashing/"}

    r = run_cli("sync", str(logdir), boot=FAULT_BOOT, env=fault)
    no_traceback(r)
    assert r.returncode == 1, r.stderr
    line = next(ln for ln in log_lines(r.stderr) if ln.startswith("tracelet: crashing -> mlflow"))
    assert "failed" in line and "unexpected error while reading event file" in line
    assert str(logdir / "crashing" / "events.out.tfevents") in line and "ZeroDivisionError" in line
    assert "-v" in line and "retried at the next sync" in line
    runs = mlflow_runs(mlflow_uri)
    for name in ("a_first", "z_last", "warned"):  # the runs after it synced too
        assert mlflow_points(mlflow_uri, runs[name]) == truth_points(truth, name)
    assert runs["crashing"].data.params.get("lr") == "0.1"  # what came before the fault landed

    # status: the failure is recorded in the run's checkpoint
    st = run_cli("status", str(logdir), "--to", "mlflow")
    no_traceback(st)
    row = next(ln for ln in st.stdout.splitlines() if ln.startswith("crashing"))
    assert "failed" in row and "unexpected error" in row

    # -v shows the traceback (stderr and the JSON report); -q only the error
    rv = run_cli("sync", str(logdir), "-v", "--json", boot=FAULT_BOOT, env=fault)
    assert rv.returncode == 1 and "Traceback (most recent call last)" in rv.stderr
    assert "ZeroDivisionError: injected fault" in rv.stderr
    crashed = next(x for x in json.loads(rv.stdout)["runs"] if x["run"] == "crashing")
    assert crashed["destinations"]["mlflow"]["state"] == "failed"
    assert "ZeroDivisionError: injected fault" in crashed["traceback"]
    # -q: new points in "warned" (synced again, its manifest warning again) print nothing
    write_simple_run(logdir / "warned", "warned", truth, TAGS, [10, 11], append=True)
    rq = run_cli("sync", str(logdir), "-q", boot=FAULT_BOOT, env=fault)
    no_traceback(rq)
    assert rq.returncode == 1
    assert "tags" not in rq.stderr and "warned" not in rq.stderr
    assert [ln for ln in log_lines(rq.stderr) if ln.startswith("tracelet:")] == \
        [ln for ln in log_lines(rq.stderr)
         if ln.startswith("tracelet: crashing -> mlflow (") and "): failed" in ln]

    # the fault gone: the run catches up, every point exactly once (its offsets were kept)
    r2 = run_cli("sync", str(logdir))
    no_traceback(r2)
    assert r2.returncode == 0, r2.stderr
    runs = mlflow_runs(mlflow_uri)
    for name in ("a_first", "crashing", "z_last", "warned"):
        assert mlflow_points(mlflow_uri, runs[name]) == truth_points(truth, name), name


def test_run_named_with_undecodable_bytes_does_not_stop_the_others(tmp_path, mlflow_uri):
    """A real input that today raises deep inside the engine (a folder name that is not UTF-8:
    Python sees lone surrogates, which cannot be encoded): whatever the engine does with it, no
    traceback, the other runs sync exactly once, and exit 1 only while that run really fails."""
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    for name in ("a_first", "z_last"):
        write_run(logdir, name, truth, good_manifest(name))
    bad = Path(os.fsdecode(bytes(logdir) + b"/bad\xff\xfename"))
    write_simple_run(bad, "bad", SourceTruth(), TAGS, [0, 1])
    r = run_cli("sync", str(logdir), "--to", "mlflow")
    no_traceback(r)
    runs = mlflow_runs(mlflow_uri)
    for name in ("a_first", "z_last"):
        assert mlflow_points(mlflow_uri, runs[name]) == truth_points(truth, name)
    if r.returncode == 1:
        assert any(ln.startswith("tracelet: bad") and ("error" in ln or "failed" in ln)
                   for ln in log_lines(r.stderr)), r.stderr
    else:
        assert r.returncode == 0 and len(runs) == 3, r.stderr
    st = run_cli("status", str(logdir), "--to", "mlflow")
    no_traceback(st)
    # exit 1 exactly when a row is failed (status alerts on it)
    assert st.returncode == (1 if " failed " in st.stdout else 0), st.stdout


STATUS_FAULT_BOOT = """
import sys
import tracelet.runfiles as runfiles
_parts = runfiles.RunFiles.sidecar_parts
def faulty(self, problems=None):
    if self.dir.endswith("crashing"):
        raise KeyError("injected fault")
    return _parts(self, problems)
runfiles.RunFiles.sidecar_parts = faulty
from tracelet.cli import main
sys.argv = ["tracelet", *sys.argv[1:]]
main()
"""


def test_status_reports_an_unexpected_error_per_run(tmp_path, mlflow_uri):
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    for name in ("a_first", "crashing", "z_last"):
        write_run(logdir, name, truth, good_manifest(name))
    assert run_cli("sync", str(logdir)).returncode == 0
    st = run_cli("status", str(logdir), boot=STATUS_FAULT_BOOT)
    no_traceback(st)
    assert st.returncode == 1, st.stderr  # a failed row: status exits 1 for monitoring
    rows = {ln.split()[0]: ln for ln in st.stdout.splitlines()[1:]}
    assert "up to date" in rows["a_first"] and "up to date" in rows["z_last"]
    assert "failed" in rows["crashing"] and "unexpected error" in rows["crashing"]
    stq = run_cli("status", str(logdir), "-q", boot=STATUS_FAULT_BOOT)
    assert [ln.split()[0] for ln in stq.stdout.splitlines()[1:]] == ["crashing"]
    stv = run_cli("status", str(logdir), "-v", boot=STATUS_FAULT_BOOT)
    assert "Traceback (most recent call last)" in stv.stderr and "KeyError" in stv.stderr


# ---------------------------------------------------------------------------------------------
# 3: nothing outside the run is uploaded
# ---------------------------------------------------------------------------------------------
def _build_link_run(tmp_path: Path, logdir: Path, truth: SourceTruth, name: str = "linky") -> Path:
    """A run whose artifacts/ and sysmetrics/ hold links out of the run of every shape, and
    links that stay inside it."""
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_text(SECRET)
    (outside / "dir" / "a.txt").write_text(SECRET)
    write_part(outside / "part.parquet", 7)
    write_run(logdir, "neighbour", truth, good_manifest("neighbour"))
    (logdir / "neighbour" / "artifacts").mkdir()
    (logdir / "neighbour" / "artifacts" / "key.txt").write_text("the neighbour's own artifact")
    run = write_run(logdir, name, truth, good_manifest(name), seed=3)
    art = run / "artifacts"
    (art / "sub").mkdir(parents=True)
    (art / "config.yaml").write_text("lr: 0.1\n")
    (art / "sub" / "real.txt").write_text("inside\n")
    os.symlink(outside / "secret.txt", art / "passwd")  # absolute, to a file
    os.symlink(outside / "dir", art / "outdir")  # to a folder
    os.symlink("chain2", art / "chain1")  # a chain: inside link -> link out
    os.symlink("../../../outside/secret.txt", art / "chain2")  # `..` out of the run
    os.symlink("sub/../../../../outside/dir/a.txt", art / "dotdot")  # `..` through a folder
    os.symlink("../../neighbour/artifacts/key.txt", art / "neighbour_key")  # another run
    os.symlink("config.yaml", art / "alias.yaml")  # inside: uploaded
    os.symlink("sub", art / "subalias")  # inside folder: uploaded
    os.symlink(".", art / "sub" / "loop")  # a loop inside: walked once
    write_part(run / "sysmetrics" / "part-000001.parquet", 5)
    os.symlink(outside / "part.parquet", run / "sysmetrics" / "part-000002.parquet")
    return run


INSIDE = ["alias.yaml", "config.yaml", "sub/real.txt", "subalias/real.txt"]
OUT_LINKS = ["passwd", "outdir", "chain1", "chain2", "dotdot", "neighbour_key"]


def _assert_links_reported(stderr: str, run: Path) -> None:
    for link in OUT_LINKS:
        assert any(f"{run / 'artifacts' / link}: a link to " in ln and "outside the run folder" in ln
                   and "--follow-artifact-links" in ln for ln in stderr.splitlines()), link
    assert f"{run / 'sysmetrics' / 'part-000002.parquet'}: a link to" in stderr


def test_artifact_and_sidecar_links_out_of_the_run_are_not_uploaded_mlflow(tmp_path, mlflow_uri):
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    run = _build_link_run(tmp_path, logdir, truth)
    r = run_cli("sync", str(logdir), "--to", "mlflow")
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    _assert_links_reported(r.stderr, run)
    runs = mlflow_runs(mlflow_uri)
    assert mlflow_artifacts(mlflow_uri, runs["linky"]) == INSIDE
    assert mlflow_points(mlflow_uri, runs["linky"]) == truth_points(truth, "linky")
    from mlflow import MlflowClient

    system = MlflowClient(mlflow_uri).get_metric_history(runs["linky"].info.run_id,
                                                         "system/cpu/utilization_percent")
    assert len(system) == 5  # part 1 only; the linked part is outside
    assert grep_tree(tmp_path / "mlruns", SECRET.encode()) == []
    assert SECRET not in (tmp_path / "mlflow.db").read_bytes().decode("latin-1")

    # opting in uploads what the links point to (a fresh destination)
    uri2 = f"sqlite:///{tmp_path / 'mlflow2.db'}"
    r2 = run_cli("sync", str(logdir), "--to", "mlflow", "--follow-artifact-links",
                 "--state-dir", str(tmp_path / "state2"), env={"MLFLOW_TRACKING_URI": uri2})
    no_traceback(r2)
    assert r2.returncode == 0, r2.stderr
    arts = mlflow_artifacts(uri2, mlflow_runs(uri2)["linky"])
    assert {"passwd", "outdir/a.txt", "chain1", "dotdot", "neighbour_key", *INSIDE} <= set(arts)


def _link_test_other(harness_cls, tmp_path, monkeypatch, store: Path):
    h = harness_cls()
    h.setup(tmp_path, monkeypatch)
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    run = _build_link_run(tmp_path, logdir, truth)
    r = run_cli("sync", str(logdir), "--to", h.name, *h.cli_args(), env=h.env())
    no_traceback(r)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_links_reported(r.stderr, run)
    rb = h.read_back(PROJECT, "linky")
    assert rb.runs_found == 1
    return rb, grep_tree(store, SECRET.encode())


def test_artifact_links_out_of_the_run_are_not_uploaded_aim(tmp_path, monkeypatch):
    from tests.destinations.harness_aim import AimLocalHarness

    rb, leaked = _link_test_other(AimLocalHarness, tmp_path, monkeypatch, tmp_path / "aim-repo")
    # the run's artifacts/ (Tracelet's own tracelet/ files are the manifest and requirements)
    assert sorted(a for a in rb.artifacts if not a.startswith("tracelet/")) == INSIDE
    assert leaked == []


def test_artifact_links_out_of_the_run_are_not_uploaded_wandb(tmp_path, monkeypatch):
    from tests.destinations.harness_wandb import WandbOfflineHarness

    rb, leaked = _link_test_other(WandbOfflineHarness, tmp_path, monkeypatch, tmp_path / "wandb-root")
    assert sorted(a for a in rb.artifacts if a.startswith("artifacts/")) == \
        [f"artifacts/{a}" for a in INSIDE]
    assert leaked == []


def test_link_swapped_after_listing_is_refused_at_read_time(tmp_path):
    """The listing saw regular files; by upload time a file and a folder on the way are links
    out of the run. The descriptor's real path is checked when opened: both refused."""
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "secret.txt").write_text(SECRET)
    (outside / "sub" / "x.txt").write_text(SECRET)
    run = tmp_path / "run"
    (run / "artifacts" / "sub").mkdir(parents=True)
    (run / "artifacts" / "a.txt").write_text("a")
    (run / "artifacts" / "sub" / "x.txt").write_text("x")
    (run / "artifacts" / "keep.txt").write_text("keep")
    files = RunFiles(run)
    assert sorted(files.artifacts()) == ["a.txt", "keep.txt", "sub/x.txt"]
    os.unlink(run / "artifacts" / "a.txt")
    os.symlink(outside / "secret.txt", run / "artifacts" / "a.txt")
    os.rename(run / "artifacts" / "sub", run / "artifacts" / "sub.old")
    os.symlink(outside / "sub", run / "artifacts" / "sub")
    items = [(run / "artifacts" / rel, rel) for rel in ("a.txt", "keep.txt", "sub/x.txt")]
    with files.pinned(items) as (views, errors):
        assert sorted(views) == ["keep.txt"]
        assert views["keep.txt"][0].read_text() == "keep"
        assert sorted(errors) == ["a.txt", "sub/x.txt"]
        assert all("outside the run folder" in e for e in errors.values())
        assert str(outside / "secret.txt") in errors["a.txt"]
    with pytest.raises(OutsideRunError):
        os.close(files.open(run / "artifacts" / "sub" / "x.txt"))


def test_pinned_view_is_the_file_that_was_checked(tmp_path):
    """Once opened, what a destination reads is that file, whatever replaces its path."""
    outside = tmp_path / "secret.txt"
    outside.write_text(SECRET)
    run = tmp_path / "run"
    (run / "artifacts").mkdir(parents=True)
    (run / "artifacts" / "model.txt").write_text("checked content")
    files = RunFiles(run)
    with files.pinned([(run / "artifacts" / "model.txt", "model.txt")]) as (views, errors):
        assert errors == {}
        os.unlink(run / "artifacts" / "model.txt")
        os.symlink(outside, run / "artifacts" / "model.txt")
        view = views["model.txt"][0]
        assert view.name == "model.txt"
        assert view.read_text() == "checked content"


def test_artifacts_or_sysmetrics_folder_linked_out_of_the_run(tmp_path):
    outside = tmp_path / "outside"
    write_part(outside / "part-000001.parquet", 3)
    (outside / "secret.txt").write_text(SECRET)
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(outside, run / "artifacts")
    os.symlink(outside, run / "sysmetrics")
    problems: list[str] = []
    files = RunFiles(run)
    assert files.artifacts(problems) == {} and files.sidecar_parts(problems) == []
    assert problems == [
        f"{run / 'artifacts'}: a link to {outside}, outside the run folder; nothing in it is "
        "uploaded. Give --follow-artifact-links to allow it.",
        f"{run / 'sysmetrics'}: a link to {outside}, outside the run folder; nothing in it is "
        "read. Give --follow-artifact-links to allow it.",
    ]
    follow = RunFiles(run, follow_links=True)
    assert sorted(follow.artifacts()) == ["part-000001.parquet", "secret.txt"]
    assert [p.name for p in follow.sidecar_parts()] == ["part-000001.parquet"]


def test_unreadable_things_named_like_files_fail_alone(tmp_path):
    run = tmp_path / "run"
    (run / "artifacts").mkdir(parents=True)
    os.mkfifo(run / "artifacts" / "pipe")
    (run / "artifacts" / "model.bin").write_text("m")
    files = RunFiles(run)
    assert sorted(files.artifacts()) == ["model.bin", "pipe"]
    os.unlink(run / "artifacts" / "model.bin")
    (run / "artifacts" / "model.bin").mkdir()  # a folder where the listing saw a file
    items = [(run / "artifacts" / rel, rel) for rel in ("model.bin", "pipe")]
    with files.pinned(items) as (views, errors):  # a FIFO must not block the sync
        assert views == {}
        assert "is a FIFO" in errors["pipe"] and "is a folder" in errors["model.bin"]


def test_unreadable_artifacts_and_parts_fail_alone_and_are_retried(tmp_path, mlflow_uri):
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    run = write_run(logdir, "r", truth, good_manifest("r"))
    art = run / "artifacts"
    art.mkdir()
    (art / "good.txt").write_text("good")
    os.mkfifo(art / "pipe")
    locked = art / "locked.bin"
    locked.write_text("locked")
    locked.chmod(0)
    write_part(run / "sysmetrics" / "part-000001.parquet", 4)
    (run / "sysmetrics" / "part-000002.parquet").mkdir()  # a folder named like a part
    as_root = os.geteuid() == 0  # root reads a chmod 000 file: that case needs a user
    for attempt in range(2):  # reported, and retried (not marked done) at the next sync
        r = run_cli("sync", str(logdir), "--json")
        no_traceback(r)
        assert r.returncode == 1, r.stderr
        rep = next(x for x in json.loads(r.stdout)["runs"] if x["run"] == "r")
        problems = "\n".join(rep["problems"])
        assert f"{art / 'pipe'}: is a FIFO" in problems
        assert f"{run / 'sysmetrics' / 'part-000002.parquet'}: is a folder" in problems
        if not as_root:
            assert f"{locked}: cannot open (Permission denied)" in problems
        dest = rep["destinations"]["mlflow"]
        assert dest["state"] == "failed" and "not synced" in dest["error"], dest
        assert dest["artifacts_sent"] == ((2 if as_root else 1) if attempt == 0 else 0)
    runs = mlflow_runs(mlflow_uri)
    assert mlflow_artifacts(mlflow_uri, runs["r"]) == (["good.txt", "locked.bin"] if as_root
                                                       else ["good.txt"])
    assert mlflow_points(mlflow_uri, runs["r"]) == truth_points(truth, "r")
    # repaired: uploaded at the next sync, exit 0
    os.unlink(art / "pipe")
    (art / "pipe").write_text("now a file")
    locked.chmod(0o644)
    (run / "sysmetrics" / "part-000002.parquet").rmdir()
    write_part(run / "sysmetrics" / "part-000002.parquet", 3, t0=1_700_000_100.0)
    r = run_cli("sync", str(logdir))
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    runs = mlflow_runs(mlflow_uri)
    assert mlflow_artifacts(mlflow_uri, runs["r"]) == ["good.txt", "locked.bin", "pipe"]
    from mlflow import MlflowClient

    system = MlflowClient(mlflow_uri).get_metric_history(runs["r"].info.run_id,
                                                         "system/cpu/utilization_percent")
    assert len(system) == 7  # both parts, each once


def test_manifest_link_out_of_the_run_is_not_read(tmp_path, mlflow_uri):
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    run = write_run(logdir, "r", truth)
    shared = tmp_path / "elsewhere.json"
    shared.write_text(json.dumps(good_manifest("r", params={"password_like": SECRET})))
    os.symlink(shared, run / "tracelet.json")
    r = run_cli("sync", str(logdir), "--to", "mlflow", "--project", PROJECT)
    no_traceback(r)
    assert r.returncode == 0
    assert f"{run / 'tracelet.json'}: a link to {shared}, outside the run folder" in r.stderr
    runs = mlflow_runs(mlflow_uri)
    assert runs["r"].data.params == {}
    assert mlflow_points(mlflow_uri, runs["r"]) == truth_points(truth, "r")
    with pytest.raises(OutsideRunError):
        load_manifest(run)
    assert load_manifest(run, follow_links=True)["params"]["password_like"] == SECRET


# ---------------------------------------------------------------------------------------------
# 4: linked_logdirs only inside the logdir or a LOGDIR given
# ---------------------------------------------------------------------------------------------
def test_linked_logdirs_only_inside_a_logdir_given(tmp_path, mlflow_uri):
    logdir = tmp_path / "logs"
    elsewhere = tmp_path / "elsewhere"
    truth = SourceTruth()
    rec = logdir / "rec"
    inside, relative = logdir / "plain_inside", logdir / "plain_rel"
    write_simple_run(inside, "rec", truth, ["inside/x"], list(range(4)), seed=1)
    write_simple_run(relative, "rec", truth, ["relative/x"], list(range(4)), seed=2)
    other = SourceTruth()
    write_simple_run(elsewhere, "rec", other, ["outside/x"], list(range(4)), seed=3)
    write_run(logdir, "rec", truth, good_manifest(
        "rec", linked_logdirs=[str(inside), "../plain_rel", str(elsewhere), str(logdir)]))

    r = run_cli("sync", str(logdir), "--to", "mlflow")
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    manifest = rec / "tracelet.json"
    assert any(f"{manifest}: linked_logdirs entry '{elsewhere}'" in ln and "skipped" in ln
               and f"tracelet sync {logdir} {elsewhere}" in ln for ln in r.stderr.splitlines())
    assert any(f"{manifest}: linked_logdirs entry '{logdir}'" in ln and "holds the run itself" in ln
               for ln in r.stderr.splitlines())
    runs = mlflow_runs(mlflow_uri)
    assert sorted(runs) == ["rec"]  # the linked plain folders are part of it, not runs
    assert mlflow_points(mlflow_uri, runs["rec"]) == truth_points(truth, "rec")

    # the outside folder allowed by giving it as a LOGDIR: part of the run, not a run of its own
    r = run_cli("sync", str(logdir), str(elsewhere), "--to", "mlflow")
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    runs = mlflow_runs(mlflow_uri)
    assert sorted(runs) == ["rec"]
    both = truth_points(truth, "rec")
    both.update(truth_points(other, "rec"))
    assert mlflow_points(mlflow_uri, runs["rec"]) == both


# ---------------------------------------------------------------------------------------------
# the loader and the recorder
# ---------------------------------------------------------------------------------------------
def test_depth_check_never_recurses():
    assert json_depth(b"[" * 1_000_000) > MAX_DEPTH
    assert json_depth(b'{"a": "' + b"[" * 1000 + b'"}') == 1  # brackets inside a string
    assert json_depth(b'{"a": "\\"[[[[", "b": [[1]]}') == 3
    assert json_depth(json.dumps({"a": [[[[1]]]]}).encode()) == 5


def test_loader_messages_name_file_and_field(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "tracelet.json").write_text(json.dumps(good_manifest(
        "r", params=[1], ended_at=float("nan"), tags={"a": 1})))
    problems: list[str] = []
    m = load_manifest(run, problems)
    path = run / "tracelet.json"
    assert problems == [
        f"{path}: field 'ended_at' must be an ISO 8601 time or unix seconds between 1970 and "
        "9999 (or null), found NaN; ignored",
        f"{path}: field 'params' must be an object, found list; ignored",
        f"{path}: field 'tags' must be an object of string -> string, found number at ['a']; ignored",
    ]
    assert "params" not in m and "tags" not in m and m["status"] == "finished"
    (run / "tracelet.json").write_bytes(b"[" * 100_000)
    with pytest.raises(SourceError, match="levels deep"):
        load_manifest(run)


def _assert_valid_manifest(run_dir: Path) -> dict:
    raw = (run_dir / "tracelet.json").read_bytes()
    data = json.loads(raw)
    assert json_depth(raw) <= MAX_DEPTH
    assert validate_manifest(data) == [], validate_manifest(data)
    return data


def test_recorder_writes_manifests_that_validate(tmp_path, monkeypatch):
    import numpy as np

    import tracelet

    cfg = {"logdir": str(tmp_path / "runs"), "track_env": True, "track_git": True,
           "tags": {"team": "vision", "n": 3}, "metrics_interval": 0.05}
    deep: list = [1]
    for _ in range(100):
        deep = [deep]
    with tracelet.start_logging("name\x7fwith\x1bcontrol" + "n" * 200, project="p\x00roj",
                                backend=["mlflow", "wandb"], config=cfg) as exp:
        _assert_valid_manifest(exp.run_dir)  # while running
        exp.log_params({"lr": np.float32(0.1), "opt": {"betas": [0.9, 0.99], "deep": deep},
                        "nan": float("nan"), "api_token": "s3cr3t", "obj": object()})
        exp.link_logdir(str(tmp_path / "tb"))
        exp.log_metric("loss", 1.0, 0)
        run_dir = exp.run_dir
        _assert_valid_manifest(run_dir)
    data = _assert_valid_manifest(run_dir)
    assert data["status"] == "finished" and data["linked_logdirs"] == [str(tmp_path / "tb")]
    with pytest.raises(ValueError, match="over the"):  # refused where written, not found later
        tracelet.start_logging("big", config={"logdir": str(tmp_path / "runs")}).log_params(
            {"blob": "x" * (17 * 1024 * 1024)})
    tracelet.stop_logging()

    rec = subprocess.run([sys.executable, "-m", "tracelet.cli", "record", "--logdir",
                          str(tmp_path / "rec"), "--tag", "k=v", "--", sys.executable, "-c",
                          "print('hi')"], capture_output=True, text=True, timeout=120)
    assert rec.returncode == 0, rec.stderr
    (rec_dir,) = [p.parent for p in (tmp_path / "rec").rglob("tracelet.json")]
    data = _assert_valid_manifest(rec_dir)
    assert data["status"] == "finished" and data["command"][0] == sys.executable
