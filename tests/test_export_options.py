"""`tracelet export` options: --with-system (sidecar rows), hparams redacted as sync redacts
them, `-o -` (CSV on stdout, nothing else there), several LOGDIRs."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from tensorboard.compat.proto import event_pb2

from tracelet.cli import main
from tracelet.export import export_logdir
from tracelet.testing.events import T0, scalar_event, version_event, write_frames
from tracelet.testing.sources import SourceTruth, write_recorded_run

SECRETS = {"db_password": "hunter2", "api_key": "sk-abc", "lr": 0.1}


def scalar_run(folder: Path, steps: int = 3) -> None:
    write_frames(folder / "events.out.tfevents.1.h.1.0",
                 [version_event()] + [scalar_event("loss", s, float(s)) for s in range(steps)])


def hparams_run(folder: Path) -> None:
    from tensorboard.plugins.hparams import summary_v2

    ev = event_pb2.Event(wall_time=T0, step=0, summary=summary_v2.hparams_pb(SECRETS))
    write_frames(folder / "events.out.tfevents.1.h.1.0",
                 [version_event(), ev, scalar_event("loss", 0, 1.0)])


def cli(*args, env=None) -> subprocess.CompletedProcess:
    """The real process: `-o -` writes to file descriptor 1."""
    return subprocess.run([sys.executable, "-m", "tracelet.cli", *args], capture_output=True,
                          timeout=120, env={**os.environ, **(env or {})})


# -- --with-system ---------------------------------------------------------------------------------
def test_with_system_adds_sidecar_rows_counted_from_the_run_start(tmp_path):
    logdir = tmp_path / "logs"
    write_recorded_run(logdir / "p" / "rec", "p/rec", SourceTruth(), "p")
    plain = export_logdir(logdir, tmp_path / "plain.parquet")
    assert "system" not in plain.points
    assert "system" not in set(pq.read_table(tmp_path / "plain.parquet").column("kind").to_pylist())

    summary = export_logdir(logdir, tmp_path / "all.parquet", with_system=True)
    df = pq.read_table(tmp_path / "all.parquet").to_pandas()
    system = df[df.kind == "system"]
    assert summary.points["system"] == len(system) == 20
    assert set(system.run) == {"p/rec"} and system.summary.isna().all()
    assert set(system.tag) == {"cpu/utilization_percent", "memory/used_bytes"}
    truth = sorted((T0 + part * 100 + k, float(k)) for part in (1, 2) for k in range(10))
    assert sorted(zip(system.wall_time, system.value)) == truth
    # step = whole seconds since the manifest's started_at (T0), as sync's system/* metrics
    assert sorted(system.step) == sorted(int(w - T0) for w, _ in truth)
    assert len(df[df.kind == "scalar"]) == len(pq.read_table(tmp_path / "plain.parquet"))


def test_with_system_without_a_manifest_counts_from_the_first_sample(tmp_path):
    logdir = tmp_path / "logs"
    scalar_run(logdir / "a")
    (logdir / "a" / "sysmetrics").mkdir()
    pq.write_table(pa.table({"timestamp": [T0 + 5.0, T0 + 7.5], "name": ["gpu/0/power_watts"] * 2,
                             "value": [100.0, 120.0]}),
                   logdir / "a" / "sysmetrics" / "part-000001.parquet")
    export_logdir(logdir, tmp_path / "o.csv", with_system=True)
    t = pacsv.read_csv(tmp_path / "o.csv").to_pandas()
    system = t[t.kind == "system"]
    assert list(zip(system.step, system.value)) == [(0, 100.0), (2, 120.0)]


@pytest.mark.parametrize("damage", ["garbage", "no value column", "link out"])
def test_a_bad_sidecar_part_is_a_problem_and_the_rest_is_exported(tmp_path, damage):
    logdir = tmp_path / "logs"
    write_recorded_run(logdir / "p" / "rec", "p/rec", SourceTruth(), "p")
    bad = logdir / "p" / "rec" / "sysmetrics" / "part-000003.parquet"
    if damage == "garbage":
        bad.write_bytes(b"PAR1" + b"\x00" * 100)
    elif damage == "no value column":
        pq.write_table(pa.table({"timestamp": [T0], "name": ["x"]}), bad)
    else:
        outside = tmp_path / "outside.parquet"
        pq.write_table(pa.table({"timestamp": [T0], "name": ["x"], "value": [1.0]}), outside)
        bad.symlink_to(outside)
    summary = export_logdir(logdir, tmp_path / "o.parquet", with_system=True)
    assert summary.points["system"] == 20  # the two good parts
    assert any("part-000003.parquet" in p for p in summary.problems), summary.problems
    r = CliRunner().invoke(main, ["export", str(logdir), "-o", str(tmp_path / "c.csv"),
                                  "--with-system"])
    assert r.exit_code == 0, r.output
    assert "part-000003.parquet" in r.stderr


# -- redaction -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_hparams_are_redacted_in_the_export_as_sync_redacts_them(tmp_path, fmt):
    from tracelet.redact import DEFAULT

    logdir = tmp_path / "logs"
    hparams_run(logdir / "hp")
    out = tmp_path / f"o.{fmt}"
    r = CliRunner().invoke(main, ["export", str(logdir), "-o", str(out)])
    assert r.exit_code == 0, r.output
    if fmt == "csv":
        assert b"hunter2" not in out.read_bytes() and b"sk-abc" not in out.read_bytes()
        table = pacsv.read_csv(out)
    else:
        table = pq.read_table(out)
    [summary] = [s for s, k in zip(table.column("summary").to_pylist(),
                                   table.column("kind").to_pylist()) if k == "hparams"]
    assert json.loads(summary) == DEFAULT.params(SECRETS)  # the rule sync applies to params
    assert json.loads(summary) == {"db_password": "***REDACTED***", "api_key": "***REDACTED***",
                                   "lr": 0.1}
    r = CliRunner().invoke(main, ["export", str(logdir), "-o", str(tmp_path / f"n.{fmt}"),
                                  "--no-redact"])
    assert r.exit_code == 0
    raw = (pacsv.read_csv if fmt == "csv" else pq.read_table)(tmp_path / f"n.{fmt}")
    assert "hunter2" in "".join(s for s in raw.column("summary").to_pylist() if s)


def test_torch_add_hparams_secrets_are_redacted_in_csv(tmp_path):
    pytest.importorskip("torch")
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "logs" / "hp"))
    w.add_hparams({"lr": 0.01, "db_password": "hunter2"}, {"hparam/acc": 0.9})
    w.close()
    p = cli("export", str(tmp_path / "logs"), "-o", "-")
    assert p.returncode == 0, p.stderr
    assert b"hunter2" not in p.stdout and b"REDACTED" in p.stdout


# -- -o - ------------------------------------------------------------------------------------------
def test_dash_writes_csv_to_stdout_and_nothing_else(tmp_path):
    logdir = tmp_path / "logs"
    scalar_run(logdir / "a")
    hparams_run(logdir / "b")
    (logdir / "c").mkdir()
    (logdir / "c" / "events.out.tfevents.1.h.1.0").write_bytes(b"\x07" * 64)  # a warning
    p = cli("export", str(logdir), "-o", "-")
    assert p.returncode == 0, p.stderr
    table = pacsv.read_csv(io.BytesIO(p.stdout))  # stdout is the table, whole
    assert table.column_names == ["run", "tag", "kind", "step", "wall_time", "value", "summary"]
    export_logdir(logdir, tmp_path / "f.csv")
    assert table.equals(pacsv.read_csv(tmp_path / "f.csv"))  # the same table as -o file.csv
    err = p.stderr.decode()
    assert "to standard output" in err and "warning" in err and "c/events.out" in err
    assert not (tmp_path / "-").exists() and not list(Path.cwd().glob(".-.tmp*"))


def test_dash_into_a_closed_pipe_is_quiet(tmp_path):
    logdir = tmp_path / "logs"
    scalar_run(logdir / "a", steps=20000)
    p = subprocess.Popen([sys.executable, "-m", "tracelet.cli", "export", str(logdir), "-o", "-"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(p.stdout.read(100)) == 100
    p.stdout.close()  # the reader went away (`| head`)
    err = p.stderr.read()
    assert p.wait(timeout=120) == 0, err
    assert b"Traceback" not in err and b"Error" not in err, err


def test_dash_with_a_usage_error_writes_nothing_to_stdout(tmp_path):
    p = cli("export", str(tmp_path / "missing"), "-o", "-")
    assert p.returncode == 2 and p.stdout == b""
    assert b"missing" in p.stderr


# -- several logdirs -------------------------------------------------------------------------------
def test_several_logdirs_are_exported_into_one_table_told_apart_by_name(tmp_path):
    scalar_run(tmp_path / "exp1" / "a")
    scalar_run(tmp_path / "exp2" / "a")
    scalar_run(tmp_path / "exp3")  # the logdir itself is the run
    r = CliRunner().invoke(main, ["export", str(tmp_path / "exp1"), str(tmp_path / "exp2"),
                                  str(tmp_path / "exp3"), str(tmp_path / "exp1") + "/",
                                  "-o", str(tmp_path / "o.parquet")])
    assert r.exit_code == 0, r.output
    t = pq.read_table(tmp_path / "o.parquet").to_pandas()
    assert t.groupby("run").size().to_dict() == {"exp1/a": 3, "exp2/a": 3, "exp3": 3}  # once each
    assert "from 3 runs" in r.stdout


def test_logdirs_with_the_same_name_are_told_apart_by_their_path(tmp_path):
    scalar_run(tmp_path / "x" / "runs" / "a")
    scalar_run(tmp_path / "y" / "runs" / "a")
    summary = export_logdir([tmp_path / "x" / "runs", tmp_path / "y" / "runs"],
                            tmp_path / "o.csv")
    assert summary.runs == 2
    runs = set(pacsv.read_csv(tmp_path / "o.csv").column("run").to_pylist())
    assert runs == {f"{tmp_path}/x/runs/a", f"{tmp_path}/y/runs/a"}


def test_one_bad_logdir_among_several_is_exit_2_before_anything_is_written(tmp_path):
    scalar_run(tmp_path / "good" / "a")
    r = CliRunner().invoke(main, ["export", str(tmp_path / "good"), str(tmp_path / "nope"),
                                  "-o", str(tmp_path / "o.csv")])
    assert r.exit_code == 2 and "nope" in r.stderr
    assert not (tmp_path / "o.csv").exists() and not list(tmp_path.glob(".o.csv.tmp*"))
