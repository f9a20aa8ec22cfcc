"""Hostile and broken input on the READER side, end to end: `tracelet inspect`, `tracelet export`
and `tracelet sync` (to MLflow's real local sqlite store, read back with ``MlflowClient``), run as
subprocesses on both read paths (pure Python and the C fast path).

Every test checks the same four things: no Python traceback on stderr; the bad item is named
(file and byte offset, or sidecar part and column); every other run and every valid point of the
same file before the damage landed; the exit code is 1 only while something is really failing
(a skipped record, a corrupt file, a stuck tail or a bad sidecar part are reported, the sync
itself succeeded: 0; an unreadable file is a failure until its permissions are fixed: 1).

Subprocesses run under a 8 GiB address-space limit: a regression that trusts a shape fails
with MemoryError (a traceback: the test fails) instead of exhausting the machine.
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.reader.helpers import fastscan_available
from tests.reader.hostile import HOSTILE_VALUES, hostile_event_file
from tests.test_sync_cli import mlflow_points
from tracelet.reader import masked_crc32c
from tracelet.reader.records import MAX_RECORD_BYTES
from tracelet.testing.events import EVENT_NAME, event_bytes, framed, scalar_event
from tracelet.testing.harness import canon

HERE = Path(__file__).resolve().parent

MEMORY_LIMIT = 8 << 30


# -- helpers ---------------------------------------------------------------------------------
@pytest.fixture(params=["python", "fastscan"])
def read_path(request):
    if request.param == "fastscan" and not fastscan_available():
        pytest.skip("tracelet.reader._fastscan is not built here")
    return request.param


def _drop_dac() -> None:
    """Drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set (in the child,
    before exec): root then meets file permissions like anyone. Used instead of switching to
    `nobody` because the interpreter may live where only root can read (/root/.pyenv)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def cli(*args, read_path: str = "python", env: dict | None = None, drop_dac: bool = False,
        timeout: int = 240, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m tracelet.cli ARGS` with bounded memory; asserts no traceback came out. Runs in
    ``cwd`` (default: the first path argument's folder): MLflow's sqlite store puts artifacts
    under ./mlruns."""
    def child():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
        if drop_dac:
            _drop_dac()

    full_env = {**os.environ, **(env or {})}
    if read_path == "python":
        full_env["TRACELET_NO_FASTSCAN"] = "1"
    else:
        full_env.pop("TRACELET_NO_FASTSCAN", None)
    cwd = cwd or Path(args[1]).parent
    p = subprocess.run([sys.executable, "-m", "tracelet.cli", *args], capture_output=True,
                       text=True, env=full_env, timeout=timeout, preexec_fn=child, cwd=cwd)
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, p.stderr[-4000:]
    return p


def sync(logdir: Path, uri: str, read_path: str, **kw) -> tuple[subprocess.CompletedProcess, dict]:
    p = cli("sync", str(logdir), "--to", "mlflow", "--json", read_path=read_path,
            env={"MLFLOW_TRACKING_URI": uri}, **kw)
    return p, json.loads(p.stdout)


def runs_of(report: dict) -> dict[str, dict]:
    return {r["run"]: r for r in report["runs"]}


def good_run(folder: Path, steps=range(20), tag: str = "acc") -> Counter:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / EVENT_NAME).write_bytes(event_bytes(steps, tag, 0.25))
    return Counter((k, canon(0.25 * k)) for k in steps)


def export_points(p: Path) -> Counter:
    return Counter((r["run"], r["tag"], r["step"]) for r in pq.read_table(p).to_pylist()
                   if r["kind"] == "scalar")


def named(lines, *parts) -> bool:
    """Some line names every one of ``parts`` (a path, a byte offset ...)."""
    return any(all(str(x) in line for x in parts) for line in lines)


# -- 1. values that promise more than the record holds --------------------------------------
def test_hostile_values_are_bounded_skipped_and_named(tmp_path, read_path):
    logdir = tmp_path / "hostile"
    good = good_run(logdir / "good")
    where = {}
    for name in sorted(HOSTILE_VALUES):
        f = logdir / "bad" / name / EVENT_NAME
        f.parent.mkdir(parents=True)
        where[f"bad/{name}"] = (f, hostile_event_file(f, HOSTILE_VALUES[name]()))
    valid = [0, 1, 2, 3, 4, 6, 7, 8, 9]  # step 5 is the hostile record

    p = cli("inspect", str(logdir), "--json", read_path=read_path)
    assert p.returncode == 0, p.stderr
    runs = {r["name"]: r for r in json.loads(p.stdout)["runs"]}
    for run, (f, at) in where.items():
        assert runs[run]["points"]["scalar"] == len(valid) and runs[run]["points"]["text"] == 1
        (fs,) = runs[run]["files"]
        assert fs["state"] == "1 record skipped", fs
        assert named(fs["notes"], f, f"byte {at}: "), fs["notes"]
    assert runs["good"]["points"]["scalar"] == 20 and runs["good"]["notes"] == []

    out = tmp_path / "points.parquet"
    p = cli("export", str(logdir), "-o", str(out), read_path=read_path)
    assert p.returncode == 0, p.stderr
    for run, (f, at) in where.items():
        assert named(p.stderr.splitlines(), f, "1 record skipped", f"byte {at}: "), run
    want = Counter({("good", "acc", k): 1 for k in range(20)})
    want.update({(run, "loss", k): 1 for run in where for k in valid})
    assert export_points(out) == want

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    p, report = sync(logdir, uri, read_path)
    assert p.returncode == 0 and report["exit_code"] == 0, p.stderr
    runs = runs_of(report)
    for run, (f, at) in where.items():
        d = runs[run]["destinations"]["mlflow"]
        assert d["state"] == "synced" and d["skipped_records"] == 1, d
        assert named(runs[run]["problems"], f, f"byte {at}: ", "skipped"), runs[run]["problems"]
    expected = {("good", "acc"): good}
    expected.update({(run, "loss"): Counter((k, canon(0.5 * k)) for k in valid) for run in where})
    assert mlflow_points(uri, "hostile") == expected
    p, report = sync(logdir, uri, read_path)  # nothing loops, nothing is sent twice
    assert p.returncode == 0
    assert {r["destinations"]["mlflow"]["state"] for r in report["runs"]} == {"unchanged"}
    assert mlflow_points(uri, "hostile") == expected


# -- 2. a length no record can have, with a valid length CRC ----------------------------------
HUGE_LENGTHS = {"max_plus_1": MAX_RECORD_BYTES + 1, "2^32": 1 << 32, "2^60": 1 << 60,
                "2^64-1": (1 << 64) - 1}


def test_impossible_record_length_is_corruption_reported_with_offset(tmp_path, read_path):
    logdir = tmp_path / "lengths"
    good = good_run(logdir / "good")
    where = {}
    for name, length in HUGE_LENGTHS.items():
        f = logdir / name / EVENT_NAME
        f.parent.mkdir(parents=True)
        before = event_bytes(range(30), "loss")
        header = struct.pack("<Q", length)
        after = b"".join(framed(scalar_event("loss", 100 + k, 1.0))
                         for k in range(150))  # stay unread, by design, after a corruption
        f.write_bytes(before + header + struct.pack("<I", masked_crc32c(header)) + b"xx" + after)
        where[name] = (f, len(before), length)

    p = cli("inspect", str(logdir), "--json", read_path=read_path)
    assert p.returncode == 0, p.stderr
    runs = {r["name"]: r for r in json.loads(p.stdout)["runs"]}
    for run, (f, at, length) in where.items():
        (fs,) = runs[run]["files"]
        assert fs["state"] == f"corrupt at byte {at}" and fs["points"] == 30, fs
        assert named(fs["notes"], f, f"corrupt at byte {at}", f"{length:,} bytes"), fs["notes"]

    out = tmp_path / "points.parquet"
    p = cli("export", str(logdir), "-o", str(out), read_path=read_path)
    assert p.returncode == 0, p.stderr
    for run, (f, at, _) in where.items():
        assert named(p.stderr.splitlines(), f, f"corrupt at byte {at}"), run
    want = Counter({("good", "acc", k): 1 for k in range(20)})
    want.update({(run, "loss", k): 1 for run in where for k in range(30)})
    assert export_points(out) == want

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    p, report = sync(logdir, uri, read_path)
    assert p.returncode == 0, p.stderr  # a corrupt file is reported; the sync succeeded
    runs = runs_of(report)
    for run, (f, at, length) in where.items():
        assert runs[run]["destinations"]["mlflow"]["state"] == "synced"
        assert named(runs[run]["problems"], f, f"corrupt at byte {at}", f"{length:,} bytes",
                     "is skipped"), runs[run]["problems"]
    expected = {("good", "acc"): good}
    expected.update({(run, "loss"): Counter((k, canon(0.5 * k)) for k in range(30))
                     for run in where})
    assert mlflow_points(uri, "lengths") == expected
    p, _ = sync(logdir, uri, read_path)  # the checkpoint keeps the corrupt offset: no loop
    assert p.returncode == 0 and mlflow_points(uri, "lengths") == expected


def test_incomplete_tail_at_the_largest_length_stays_not_yet(tmp_path, read_path):
    """At the bound itself the record may be real and still being written: no corruption."""
    logdir = tmp_path / "bound"
    f = logdir / "run" / EVENT_NAME
    f.parent.mkdir(parents=True)
    header = struct.pack("<Q", MAX_RECORD_BYTES)
    body = event_bytes(range(10), "loss")
    f.write_bytes(body + header + struct.pack("<I", masked_crc32c(header)) + b"partial")
    p = cli("inspect", str(logdir), "--json", read_path=read_path)
    (fs,) = json.loads(p.stdout)["runs"][0]["files"]
    assert fs["state"] == f"incomplete tail at byte {len(body)}" and fs["points"] == 10


# -- 3. an incomplete tail that stays the same across passes -----------------------------------
@pytest.mark.slow
def test_stuck_incomplete_tail_is_a_warning_on_the_next_pass(tmp_path, read_path):
    logdir = tmp_path / "tails"
    good = good_run(logdir / "good")
    f = logdir / "stuck" / EVENT_NAME
    f.parent.mkdir(parents=True)
    body = event_bytes(range(20), "loss")
    last = framed(scalar_event("loss", 20, 10.0))
    f.write_bytes(body + last[:15])  # the writer died 15 bytes into its last record
    growing = logdir / "growing" / EVENT_NAME
    growing.parent.mkdir(parents=True)
    growing.write_bytes(body + last[:5])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri}
    stuck_words = ("no longer grows", "may have died mid-record", "the last record is lost")

    p, report = sync(logdir, uri, read_path)
    assert p.returncode == 0
    assert not any(w in x for r in report["runs"] for x in r["problems"] for w in stuck_words)
    growing.write_bytes(body + last[:9])  # grows between passes, still incomplete: not stuck

    # second pass, no --json: the cron log line says it too
    p = cli("sync", str(logdir), "--to", "mlflow", read_path=read_path, env=env)
    assert p.returncode == 0, p.stderr  # a warning, not a failure
    lines = p.stderr.splitlines()
    assert named(lines, "tracelet: stuck:", f, f"incomplete record at byte {len(body)}",
                 "(15 bytes pending)", "unchanged since 20", *stuck_words), p.stderr
    assert not named(lines, growing, "no longer grows")
    expected = {("good", "acc"): good,
                ("stuck", "loss"): Counter((k, canon(0.5 * k)) for k in range(20)),
                ("growing", "loss"): Counter((k, canon(0.5 * k)) for k in range(20))}
    assert mlflow_points(uri, "tails") == expected

    p, report = sync(logdir, uri, read_path)  # warned once; then an unchanged run is free
    assert p.returncode == 0 and runs_of(report)["stuck"]["destinations"]["mlflow"]["state"] \
        == "unchanged"
    f.write_bytes(body + last)  # the writer came back and finished the record
    p, report = sync(logdir, uri, read_path)
    assert p.returncode == 0 and runs_of(report)["stuck"]["problems"] == []
    expected[("stuck", "loss")][(20, canon(10.0))] = 1
    assert mlflow_points(uri, "tails") == expected


def test_checkpoint_without_the_tail_field_still_loads():
    from tracelet.checkpoint import Checkpoint, FileState

    # a checkpoint as an earlier version wrote it: every field it had, but no incomplete_tail
    old = Checkpoint("mlflow", "mlflow-x", "r", run_id="abc").to_json()
    fs = FileState(offset=10, size_seen=20, head_len=10, head_sha1="ab" * 20)
    old["files"] = {"events.out.tfevents.1": {k: v for k, v in fs.__dict__.items()
                                              if k != "incomplete_tail"}}
    fs = Checkpoint.from_json(old).files["events.out.tfevents.1"]
    assert fs.offset == 10 and fs.incomplete_tail is None


# -- 4. FIFOs (and links to them) named like event files --------------------------------------
@pytest.mark.timeout(600)
def test_fifo_named_like_an_event_file_is_skipped_not_waited_on(tmp_path, read_path):
    logdir = tmp_path / "fifos"
    good = good_run(logdir / "good")
    mixed = good_run(logdir / "mixed")
    fifo = logdir / "mixed" / "events.out.tfevents.1700000001.host.2.0"
    os.mkfifo(fifo)
    (logdir / "only_fifo").mkdir()
    os.mkfifo(logdir / "only_fifo" / EVENT_NAME)
    (logdir / "linked").mkdir()
    link = logdir / "linked" / EVENT_NAME
    link.symlink_to(fifo)
    odd = [fifo, logdir / "only_fifo" / EVENT_NAME, link]

    p = cli("inspect", str(logdir), "--json", read_path=read_path, timeout=120)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    for path in odd:
        assert named(report["problems"], path, "FIFO", "skipped"), report["problems"]
    assert {r["name"]: r["points"]["scalar"] for r in report["runs"]} == {"good": 20, "mixed": 20}

    out = tmp_path / "points.parquet"
    p = cli("export", str(logdir), "-o", str(out), read_path=read_path, timeout=120)
    assert p.returncode == 0, p.stderr
    for path in odd:
        assert named(p.stderr.splitlines(), path, "FIFO"), p.stderr
    assert export_points(out) == Counter({(run, "acc", k): 1 for run in ("good", "mixed")
                                          for k in range(20)})

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    p, report = sync(logdir, uri, read_path, timeout=240)
    assert p.returncode == 0, p.stderr
    for path in odd:
        assert named(report["problems"], path, "FIFO"), report["problems"]
    assert mlflow_points(uri, "fifos") == {("good", "acc"): good, ("mixed", "acc"): mixed}
    p = cli("sync", str(logdir), "--to", "mlflow", read_path=read_path, timeout=240,
            env={"MLFLOW_TRACKING_URI": uri})  # no --json: the cron log names them too
    assert p.returncode == 0, p.stderr
    for path in odd:
        assert named(p.stderr.splitlines(), "tracelet: ", path, "FIFO"), p.stderr


# -- 5. an event file that cannot be read --------------------------------------------------
@pytest.fixture
def no_dac_override():
    """Whether file permissions bind the CLI subprocess: as root they only do once its
    CAP_DAC_OVERRIDE is dropped (see _drop_dac)."""
    if os.geteuid() != 0:
        return False
    try:
        subprocess.run(["true"], preexec_fn=_drop_dac, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot drop CAP_DAC_OVERRIDE here ({e}): root would read a chmod 000 file")
    return True


@pytest.mark.slow
def test_unreadable_event_file_fails_only_itself_until_fixed(tmp_path, read_path,
                                                            no_dac_override):
    logdir = tmp_path / "perms"
    good = good_run(logdir / "good")
    run = logdir / "locked"
    a = run / "events.out.tfevents.1700000000.host.1.0"
    b = run / "events.out.tfevents.1700000001.host.1.0"
    c = run / "events.out.tfevents.1700000002.host.1.0"
    run.mkdir()
    a.write_bytes(event_bytes(range(10), "a"))
    b.write_bytes(event_bytes(range(10), "b"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    kw = {"read_path": read_path, "drop_dac": no_dac_override}
    p, _ = sync(logdir, uri, **kw)  # b is synced once: its identity (head hash) is recorded
    assert p.returncode == 0, p.stderr
    with open(b, "ab") as fh:  # then it grows and loses its permissions
        fh.write(event_bytes(range(10, 15), "b")[len(event_bytes([], "b")):])
    os.chmod(b, 0)
    c.write_bytes(event_bytes(range(12), "c"))  # a file never seen before, unreadable from birth
    os.chmod(c, 0)
    try:
        for cmd in (["inspect", str(logdir)], ["export", str(logdir), "-o",
                                               str(tmp_path / "x.csv")]):
            p = cli(*cmd, **kw)
            assert p.returncode == 0, p.stderr
            for path in (b, c):
                assert named((p.stdout + p.stderr).splitlines(), path, "Permission denied",
                             "Fix its permissions"), p.stdout + p.stderr
        p, report = sync(logdir, uri, **kw)
        assert p.returncode == 1 and report["exit_code"] == 1, p.stderr  # really failing
        runs = runs_of(report)
        d = runs["locked"]["destinations"]["mlflow"]
        assert d["state"] == "failed" and named([d["error"]], "cannot read"), d
        for path in (b, c):
            assert named(runs["locked"]["problems"], path, "Permission denied",
                         "Fix its permissions"), runs["locked"]["problems"]
        assert not named(runs["locked"]["problems"], "state dir")
        assert runs["good"]["destinations"]["mlflow"]["state"] in ("synced", "unchanged")
        p = cli("sync", str(logdir), "--to", "mlflow", env={"MLFLOW_TRACKING_URI": uri}, **kw)
        assert p.returncode == 1, p.stderr  # still failing: retried, not "unchanged"
        lines = p.stderr.splitlines()  # the cron log lines
        assert named(lines, "tracelet: locked -> mlflow (", "): failed", b, "Permission denied")
        assert named(lines, "tracelet: locked:", c, "Fix its permissions")
    finally:
        os.chmod(b, 0o644)
        os.chmod(c, 0o644)
    first_ten = Counter((k, canon(0.5 * k)) for k in range(10))
    got = mlflow_points(uri, "perms")
    assert got[("good", "acc")] == good and got[("locked", "a")] == first_ten
    assert got[("locked", "b")] == first_ten, "b's new records wait for its permissions"
    assert ("locked", "c") not in got
    p, report = sync(logdir, uri, **kw)  # fixed: retried (not "unchanged"), everything lands
    assert p.returncode == 0, p.stderr
    assert runs_of(report)["locked"]["destinations"]["mlflow"]["state"] == "synced"
    got = mlflow_points(uri, "perms")
    assert got[("locked", "b")] == Counter((k, canon(0.5 * k)) for k in range(15))
    assert got[("locked", "c")] == Counter((k, canon(0.5 * k)) for k in range(12))


# -- 6. sidecar parts -----------------------------------------------------------------------
def _part(folder: Path, index: int, table: pa.Table | None = None, raw: bytes | None = None):
    p = folder / f"part-{index:06d}.parquet"
    if raw is not None:
        p.write_bytes(raw)
    else:
        pq.write_table(table, p)
    return p


def test_bad_sidecar_parts_are_skipped_or_cleaned_and_named(tmp_path):
    logdir = tmp_path / "side"
    good = good_run(logdir / "good")
    run = logdir / "rec"
    events = good_run(run, tag="loss")
    (run / "tracelet.json").write_text(json.dumps({
        "schema_version": 1, "run_id": "rid-rec", "name": "rec", "project": "side",
        "backends": ["mlflow"], "status": "finished", "started_at": 1000.0,
        "ended_at": 2000.0}))
    side = run / "sysmetrics"
    side.mkdir()
    ok = pa.table({"timestamp": [1001.0, 1002.0], "name": ["cpu/util_percent"] * 2,
                   "value": [1.0, 2.0]})
    _part(side, 1, ok)
    skipped = {  # part -> what the message must name
        _part(side, 2, pa.table({"timestamp": [1003.0], "name": ["cpu/util_percent"],
                                 "value": ["high"]})): "column 'value' is string",
        _part(side, 3, pa.table({"timestamp": [1003.0], "name": [7], "value": [1.0]})):
            "column 'name' is int64",
        _part(side, 4, pa.table({"timestamp": pa.array([1], pa.timestamp("s")),
                                 "name": ["x"], "value": [1.0]})): "column 'timestamp' is",
        _part(side, 5, pa.table({"timestamp": [1003.0], "value": [1.0]})): "lacks columns",
        _part(side, 6, raw=b"PAR1 not parquet at all PAR1"): "unreadable sidecar part",
        _part(side, 8, pa.table({"timestamp": pa.nulls(2_000_000, pa.float64()),
                                 "name": pa.nulls(2_000_000, pa.string()),
                                 "value": pa.nulls(2_000_000, pa.float64())})):
            "claims 2,000,000 rows",
    }
    valid_bytes = (side / "part-000001.parquet").read_bytes()
    skipped[_part(side, 7, raw=valid_bytes[: len(valid_bytes) // 2])] = "unreadable sidecar part"
    cleaned = _part(side, 9, pa.table({  # rows that cannot be a point are dropped, the rest kept
        "timestamp": [1004.0, None, float("nan"), float("inf"), 5e12, 1005.0, 1006.0, 1007.0],
        "name": ["mem/used_bytes", "a", "b", "c", "d", None, "", "mem/used_bytes"],
        "value": [4.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, None]}))
    _part(side, 10, pa.table({"timestamp": pa.array([1008, 1009], pa.int64()),  # cast: fine
                              "name": ["mem/used_bytes"] * 2,
                              "value": pa.array([8, 9], pa.int32())}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    p, report = sync(logdir, uri, "python")
    assert p.returncode == 0, p.stderr
    problems = runs_of(report)["rec"]["problems"]
    for part, what in skipped.items():
        assert named(problems, part, what, "skipped"), (part, problems)
    assert named(problems, cleaned, "7 of 8 sidecar rows dropped", "timestamp 4", "name 2",
                 "null value 1"), problems
    d = runs_of(report)["rec"]["destinations"]["mlflow"]
    assert d["state"] == "synced" and d["points_sent"]["system"] == 2 + 1 + 2, d
    got = mlflow_points(uri, "side")
    assert got[("good", "acc")] == good and got[("rec", "loss")] == events
    assert sorted(v for _, v in got[("rec", "system/cpu/util_percent")].elements()) == [1.0, 2.0]
    assert sorted(v for _, v in got[("rec", "system/mem/used_bytes")].elements()) == [4.0, 8.0,
                                                                                      9.0]
