"""The state dir cannot be turned against its owner, and a malformed checkpoint never breaks a
sync: links, FIFOs, folders and hard links where state files or folders belong; ``../`` in any
checkpoint field; a checkpoint naming another run's destination run; forged ``.sig`` files;
every class of malformed checkpoint; permission bits. Real MLflow (local sqlite store), read
back with ``mlflow.MlflowClient``; syncs through the real CLI (in-process, so a traceback would
show up as an exception of the runner)."""
from __future__ import annotations

import hashlib
import json
import os
import stat
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from tracelet.checkpoint import CheckpointStore
from tracelet.cli import main
from tracelet.engine import source_signature, state_dir_for
from tracelet.reader import discover_runs
from tracelet.testing.harness import canon
from tracelet.testing.sources import (SourceTruth, build_kill_logdir, write_recorded_run,
                                      write_simple_run)

HERE = Path(__file__).resolve().parent

EVIL = "../../evil"  # from any state folder: lands inside tmp_path, where the snapshot sees it


@pytest.fixture
def mlflow_uri(request, tmp_path, monkeypatch):
    """MLflow's local sqlite store; ``file``: its file store, which (unlike the SQL stores)
    keeps a re-sent point twice, so the tests that prove "each point once" also run on it."""
    if getattr(request, "param", "sqlite") == "file":
        uri = f"file:{tmp_path / 'mlflow.db' / 'mlruns'}"  # named so snapshots skip it too
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    else:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    work = tmp_path / "cwd"  # MLflow's default artifact root (./mlruns) lands here
    work.mkdir()
    monkeypatch.chdir(work)
    return uri


def sync(logdir: Path, *extra: str) -> tuple[int, dict]:
    r = CliRunner().invoke(main, ["sync", str(logdir), "--to", "mlflow", "--json", *extra])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    assert "Traceback" not in r.output, r.output
    return r.exit_code, json.loads(r.stdout)


def status(logdir: Path) -> list[dict]:
    r = CliRunner().invoke(main, ["status", str(logdir), "--to", "mlflow", "--json"])
    assert "Traceback" not in r.output, r.output
    rows = json.loads(r.stdout)["runs"]
    # exit 1 exactly when a row is failed (monitoring alerts on it)
    assert r.exit_code == (1 if any(x["state"] == "failed" for x in rows) else 0), r.output
    table = CliRunner().invoke(main, ["status", str(logdir), "--to", "mlflow"])
    assert table.exit_code == r.exit_code and "Traceback" not in table.output, table.output
    return rows


def problems_of(report: dict, run: str) -> str:
    r = next(x for x in report["runs"] if x["run"] == run)
    errors = [d.get("error") or "" for d in r["destinations"].values()]
    return "\n".join(r["problems"] + errors)


def mlflow_points(uri: str, project: str) -> dict[tuple[str, str], Counter]:
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(project)
    out: dict[tuple[str, str], Counter] = {}
    if exp is None:
        return out
    for r in c.search_runs([exp.experiment_id]):
        for key in r.data.metrics:
            if key.startswith("system/"):
                continue
            out[(r.info.run_name, key)] = Counter(
                (m.step, canon(m.value)) for m in c.get_metric_history(r.info.run_id, key))
    return out


def truth_points(truth: SourceTruth, runs=None) -> dict[tuple[str, str], Counter]:
    return {k: Counter((s, canon(v)) for s, v, _ in pts) for k, pts in truth.scalars.items()
            if runs is None or k[0] in runs}


def mlflow_run_ids(uri: str, project: str) -> dict[str, str]:
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(project)
    return {r.info.run_name: r.info.run_id for r in c.search_runs([exp.experiment_id])}


def state_of(logdir: Path) -> Path:
    return state_dir_for(logdir, None)


def ck_path(logdir: Path, run: str) -> Path:
    (p,) = (state_of(logdir) / "checkpoints").glob(f"mlflow-*/{run}.json")
    return p


def append(logdir: Path, run: str, truth: SourceTruth, steps: list[int], seed: int = 9,
           tags=("loss", "acc")) -> None:
    write_simple_run(logdir / run, run, truth, list(tags), steps, seed=seed, append=True)


def snapshot(root: Path, skip: list[Path]) -> dict[str, tuple]:
    """Every path under ``root`` (outside ``skip``) with its type, size, mtime and content hash."""
    out = {}
    for p in sorted(root.rglob("*")):
        if any(p == s or s in p.parents for s in skip) or p.name.startswith("mlflow.db"):
            continue
        st = p.lstat()
        digest = hashlib.sha1(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
        out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, digest)
    return out


# ---------------------------------------------------------------------------------------------
# 1. a lock file that is not a plain file: refused, what it points to never touched
# ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["symlink", "dangling-symlink", "hardlink", "fifo", "folder"])
def test_lock_that_is_not_a_plain_file_is_refused_and_its_target_untouched(tmp_path, mlflow_uri,
                                                                           kind):
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=2, steps=20)
    assert sync(logdir)[0] == 0
    lock = state_of(logdir) / "locks" / "run0.lock"
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    os.utime(victim, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    lock.unlink()
    if kind == "symlink":
        lock.symlink_to(victim)
    elif kind == "dangling-symlink":
        lock.symlink_to(tmp_path / "made-through-the-link")
    elif kind == "hardlink":
        os.link(victim, lock)
    elif kind == "fifo":
        os.mkfifo(lock)
    else:
        lock.mkdir()
    before = (victim.read_bytes(), victim.stat().st_mtime_ns)
    append(logdir, "run0", truth, [100, 101])
    append(logdir, "run1", truth, [100, 101])

    code, report = sync(logdir)
    assert code == 1
    msg = problems_of(report, "run0")
    assert str(lock) in msg and "not a plain file" in msg, msg
    assert (victim.read_bytes(), victim.stat().st_mtime_ns) == before
    assert not (tmp_path / "made-through-the-link").exists()
    got = mlflow_points(mlflow_uri, "logs")
    assert {k: v for k, v in got.items() if k[0] == "run1"} == truth_points(truth, {"run1"})
    # the user removes the entry: the run catches up, each point once
    lock.rmdir() if kind == "folder" else lock.unlink()
    assert sync(logdir)[0] == 0
    assert mlflow_points(mlflow_uri, "logs") == truth_points(truth)
    assert (victim.read_bytes(), victim.stat().st_mtime_ns) == before


# ---------------------------------------------------------------------------------------------
# 2. a symlinked folder inside the state dir is never written through
# ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
@pytest.mark.parametrize("which", ["checkpoints/KEY", "checkpoints", "locks", "STATE"])
def test_symlinked_state_folder_is_never_written_through(tmp_path, mlflow_uri, which):
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=2, steps=20)
    assert sync(logdir)[0] == 0
    state = state_of(logdir)
    key = ck_path(logdir, "run0").parent.name
    folder = {"checkpoints/KEY": state / "checkpoints" / key, "checkpoints": state / "checkpoints",
              "locks": state / "locks", "STATE": state}[which]
    elsewhere = tmp_path / "elsewhere"
    folder.rename(elsewhere)  # what a link there would make us write into
    folder.symlink_to(elsewhere, target_is_directory=True)
    append(logdir, "run0", truth, [100, 101])
    append(logdir, "run1", truth, [100, 101])
    before = snapshot(elsewhere, [])

    code, report = sync(logdir)
    assert code == 1
    assert snapshot(elsewhere, []) == before
    assert str(folder) in problems_of(report, "run0") + "\n".join(report["problems"]), report
    assert "symlink" in problems_of(report, "run0") + "\n".join(report["problems"])
    rows = status(logdir)  # status says so too, without a traceback (it reads no lock)
    want = "behind" if which == "locks" else "failed"
    assert all(r["state"] == want for r in rows if r["target_key"]), rows

    # the link removed (its state with it): rebuilt by asking MLflow, nothing twice
    folder.unlink()
    assert sync(logdir)[0] == 0
    assert mlflow_points(mlflow_uri, "logs") == truth_points(truth)
    assert snapshot(elsewhere, []) == before


# ---------------------------------------------------------------------------------------------
# 3. `../` in ANY string of a checkpoint: nothing is written outside the state dir
# ---------------------------------------------------------------------------------------------
def _string_slots(d, path=()):
    """Every string value and every object key of a JSON document, as (path, is_key)."""
    if isinstance(d, dict):
        for k, v in d.items():
            yield path + (k,), True
            yield from _string_slots(v, path + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _string_slots(v, path + (i,))
    elif isinstance(d, str):
        yield path, False


def _poison(d, path, is_key):
    *parents, last = path
    for p in parents:
        d = d[p]
    if is_key:
        d[EVIL + "/" + str(last)] = d.pop(last)
    else:
        d[last] = EVIL + "/" + d[last]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dotdot_in_any_checkpoint_string_writes_nothing_outside_the_state_dir(tmp_path, mlflow_uri):
    logdir = tmp_path / "logs"
    truth = SourceTruth()
    write_recorded_run(logdir / "p" / "r0", "p/r0", truth, "proj")
    assert sync(logdir)[0] == 0
    template = json.loads(ck_path(logdir, "p%2Fr0").read_text())
    slots = [s for s in _string_slots(template) if s[0] != ("version",)]
    assert len(slots) > 20, slots  # identity, files, params, sidecar, artifacts, status ...
    # one recorded run per string slot, each with that one string poisoned
    for i in range(len(slots)):
        write_recorded_run(logdir / "p" / f"v{i}", f"p/v{i}", truth, "proj")
    assert sync(logdir)[0] == 0
    for i, (path, is_key) in enumerate(slots):
        p = ck_path(logdir, f"p%2Fv{i}")
        d = json.loads(p.read_text())
        _poison(d, path, is_key)
        p.write_text(json.dumps(d))
        append(logdir, f"p/v{i}", truth, [500, 501], tags=["Loss/Train/CrossEntropy"])
    state = state_of(logdir)
    skip = [state, tmp_path / "cwd"]  # and MLflow's sqlite files
    before = snapshot(tmp_path, skip)

    code, report = sync(logdir)
    after = snapshot(tmp_path, skip)
    assert [k for k in after if k not in before] == [] and after == before
    assert not list(tmp_path.parent.glob("evil*")) and not list(tmp_path.rglob("*evil*"))
    assert code == 0, report
    for p in state.rglob("*"):  # inside the state dir: only the names Tracelet makes
        assert p.resolve().is_relative_to(state.resolve()) and "evil" not in p.name, p
    got, want = mlflow_points(mlflow_uri, "proj"), truth_points(truth)
    for i, (path, is_key) in enumerate(slots):
        run = f"p/v{i}"
        mine = {k: v for k, v in got.items() if k[0] == run}
        if not is_key and len(path) == 3 and path[0] == "files" and path[2] == "replaced":
            # a non-empty "replaced" note means "file replaced: not replayed" (reported)
            assert "../../evil" in problems_of(report, run)
            assert all(n == 1 for c in mine.values() for n in c.values()), (path, mine)
            continue
        assert mine == {k: v for k, v in want.items() if k[0] == run}, (path, is_key)
    assert sync(logdir)[0] == 0
    assert snapshot(tmp_path, skip) == before


# ---------------------------------------------------------------------------------------------
# 4. a checkpoint pointing at another run's MLflow run
# ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
@pytest.mark.parametrize("mlflow_uri", ["sqlite", "file"], indirect=True)
@pytest.mark.parametrize("how", ["identity", "copied-file"])
def test_checkpoint_pointing_at_another_runs_destination_run(tmp_path, mlflow_uri, how):
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=2, steps=30)
    assert sync(logdir)[0] == 0
    ids = mlflow_run_ids(mlflow_uri, "logs")
    a, b = ck_path(logdir, "run0"), ck_path(logdir, "run1")
    if how == "identity":
        d = json.loads(a.read_text())
        d["identity"]["run_id"] = ids["run1"]
        a.write_text(json.dumps(d))
    else:  # run1's whole checkpoint put in run0's place (all its fields consistent with run1)
        a.write_bytes(b.read_bytes())
    append(logdir, "run0", truth, [100, 101, 102], seed=4)
    b_before = mlflow_points(mlflow_uri, "logs")
    b_before = {k: v for k, v in b_before.items() if k[0] == "run1"}

    code, report = sync(logdir)
    assert code == 0, report
    msg = problems_of(report, "run0")
    assert str(a) in msg and "moved aside" in msg, msg
    got = mlflow_points(mlflow_uri, "logs")
    assert {k: v for k, v in got.items() if k[0] == "run1"} == b_before  # received nothing
    assert got == truth_points(truth)  # run0's points in run0, each once
    assert mlflow_run_ids(mlflow_uri, "logs") == ids  # no second run either
    assert list(a.parent.glob("run0.json.bad-*"))
    assert sync(logdir)[1]["runs"][0]["problems"] == []


# ---------------------------------------------------------------------------------------------
# 5. a forged .sig never makes a changed run skip
# ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
@pytest.mark.parametrize("forgery", ["plain-signature", "mac-with-another-key", "symlink"])
def test_forged_sig_does_not_make_a_changed_run_skip(tmp_path, mlflow_uri, forgery):
    import hmac

    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=1, steps=20)
    assert sync(logdir)[0] == 0
    code, report = sync(logdir)  # the real .sig: unchanged, skipped
    assert report["runs"][0]["destinations"]["mlflow"]["state"] == "unchanged"
    append(logdir, "run0", truth, [100, 101])
    (run,) = discover_runs(logdir).runs
    sig = source_signature(run, list(run.event_files))  # what the changed run now signs as
    sig_file = ck_path(logdir, "run0").with_suffix(".sig")
    key = ck_path(logdir, "run0").parent.name
    sig_file.unlink()
    if forgery == "plain-signature":
        sig_file.write_text(sig)
    elif forgery == "mac-with-another-key":
        msg = f"{key}\0run0\0{sig}".encode()
        sig_file.write_bytes(hmac.new(os.urandom(32), msg, hashlib.sha256).hexdigest().encode())
    else:
        (tmp_path / "forged").write_text(sig)
        sig_file.symlink_to(tmp_path / "forged")

    code, report = sync(logdir)
    assert code == 0
    assert report["runs"][0]["destinations"]["mlflow"]["state"] == "synced"
    assert mlflow_points(mlflow_uri, "logs") == truth_points(truth)
    assert sync(logdir)[1]["runs"][0]["destinations"]["mlflow"]["state"] == "unchanged"
    assert not sig_file.is_symlink()  # replaced by a real .sig: the link's target untouched
    if forgery == "symlink":
        assert (tmp_path / "forged").read_text() == sig


@pytest.mark.timeout(300)
@pytest.mark.parametrize("damage", ["symlink", "group-readable", "garbage", "folder"])
def test_unusable_signature_key_turns_the_fast_path_off_loudly(tmp_path, mlflow_uri, damage):
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=1, steps=20)
    assert sync(logdir)[0] == 0
    key = state_of(logdir) / "sig.key"
    text = key.read_text()
    key.unlink()
    if damage == "symlink":
        (tmp_path / "attacker.key").write_text(text)
        key.symlink_to(tmp_path / "attacker.key")
    elif damage == "group-readable":
        key.write_text(text)
        key.chmod(0o640)
    elif damage == "garbage":
        key.write_text("not a key")
        key.chmod(0o600)
    else:
        key.mkdir()
    append(logdir, "run0", truth, [100])
    code, report = sync(logdir)
    assert code == 0
    assert any(str(key) in p and "fast path is off" in p for p in report["problems"]), report
    assert mlflow_points(mlflow_uri, "logs") == truth_points(truth)
    code, report = sync(logdir)  # unchanged is still found, under the lock
    assert code == 0 and report["runs"][0]["destinations"]["mlflow"]["state"] == "unchanged"
    if damage == "symlink":
        assert (tmp_path / "attacker.key").read_text() == text


# ---------------------------------------------------------------------------------------------
# 6. every class of malformed checkpoint: warned, moved aside, rebuilt, synced once
# ---------------------------------------------------------------------------------------------
def _files_entry(d):
    return next(iter(d["files"].values()))


MALFORMED = {
    "offset-a-string": lambda d: _files_entry(d).update(offset=str(_files_entry(d)["offset"])),
    "offset-a-float": lambda d: _files_entry(d).update(offset=float(_files_entry(d)["offset"])),
    "offset-a-bool": lambda d: _files_entry(d).update(offset=True),
    "offset-negative": lambda d: _files_entry(d).update(offset=-5),
    "offset-huge": lambda d: _files_entry(d).update(offset=10**30),
    "records-a-dict": lambda d: _files_entry(d).update(records={"a": 1}),
    "head-len-huge": lambda d: _files_entry(d).update(head_len=2**40),
    "pending-end-below-offset": lambda d: _files_entry(d).update(pending_end=1),
    "files-a-list": lambda d: d.update(files=[1, 2]),
    "identity-a-string": lambda d: d.update(identity="x"),
    "points-sent-negative": lambda d: d.update(points_sent={"scalar": -1}),
    "params-not-strings": lambda d: d.update(params={"lr": 0.1}),
    "missing-run-path": lambda d: d.pop("run_path"),
    "other-version": lambda d: d.update(version=99),
    "whole-file-a-list": lambda d: [d],
}
RAW = {
    "not-utf8": b'{"destination": "mlflow\xff\xfe"}',
    "not-json": b'{"destination": "mlflow", "files": {',
    "nan-literal": b'{"version": 1, "last_sync": NaN}',
    "float-overflow": b'{"version": 1, "last_sync": 1e400}',
    "int-of-5000-digits": b'{"version": 1, "last_sync": ' + b"9" * 5000 + b"}",
    "nested-too-deep": b"[" * 100_000 + b"]" * 100_000,
    "empty": b"",
}
ENTRIES = ["symlink", "fifo", "folder", "one-gigabyte"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mlflow_uri", ["sqlite", "file"], indirect=True)
def test_each_class_of_malformed_checkpoint_is_set_aside_and_rebuilt(tmp_path, mlflow_uri):
    logdir = tmp_path / "logs"
    cases = [*MALFORMED, *RAW, *ENTRIES]
    truth = SourceTruth()
    for i, name in enumerate(cases):
        write_simple_run(logdir / name, name, truth, ["loss", "acc"], list(range(30)), seed=i)
    assert sync(logdir)[0] == 0
    victim = tmp_path / "victim.json"
    victim.write_text('{"precious": true}')
    for i, name in enumerate(cases):
        p = ck_path(logdir, name)
        if name in MALFORMED:
            d = json.loads(p.read_text())
            out = MALFORMED[name](d)
            p.write_text(json.dumps(out if out is not None and name == "whole-file-a-list" else d))
        elif name in RAW:
            p.write_bytes(RAW[name])
        else:
            p.unlink()
            if name == "symlink":
                p.symlink_to(victim)
            elif name == "fifo":
                os.mkfifo(p)
            elif name == "folder":
                p.mkdir()
            else:  # sparse: a 1 GB file that costs no disk
                with open(p, "wb") as f:
                    f.truncate(1 << 30)
        append(logdir, name, truth, [100, 101], seed=50 + i)

    rows = {r["run"]: r for r in status(logdir)}
    for name in cases:
        assert rows[name]["state"] == "bad checkpoint", (name, rows[name])
        assert str(ck_path_glob(logdir, name)) in rows[name]["last_error"], rows[name]

    code, report = sync(logdir)
    assert code == 0, report
    for name in cases:
        msg = problems_of(report, name)
        assert f"{name}.json" in msg and "moved aside" in msg, (name, msg)
        assert list((ck_path_glob(logdir, name)).parent.glob(f"{name}.json.bad-*")), name
    field_named = {"offset-a-string": "offset", "records-a-dict": "records",
                   "pending-end-below-offset": "pending_end", "files-a-list": "files",
                   "identity-a-string": "identity", "head-len-huge": "head_len",
                   "missing-run-path": "run_path", "other-version": "version",
                   "not-utf8": "UTF-8", "one-gigabyte": "MiB", "symlink": "symlink",
                   "fifo": "FIFO", "folder": "folder"}
    for name, word in field_named.items():
        assert word in problems_of(report, name), (name, problems_of(report, name))
    assert mlflow_points(mlflow_uri, "logs") == truth_points(truth)  # each point once
    assert victim.read_text() == '{"precious": true}'
    code, report = sync(logdir)  # repaired for good: unchanged, no warning
    assert code == 0 and not any(r["problems"] for r in report["runs"]), report
    assert all(r["state"] == "up to date" for r in status(logdir))


def ck_path_glob(logdir: Path, run: str) -> Path:
    (folder,) = (state_of(logdir) / "checkpoints").glob("mlflow-*")
    return folder / f"{run}.json"


# ---------------------------------------------------------------------------------------------
# 7. permissions: folders 0750, files 0640, the key 0600, whatever the umask
# ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_state_permissions_do_not_depend_on_the_umask(tmp_path, mlflow_uri, umask):
    logdir = tmp_path / "logs"
    build_kill_logdir(logdir, runs=1, steps=10)
    old = os.umask(umask)
    try:
        assert sync(logdir)[0] == 0
        assert sync(logdir)[0] == 0
        state_alt = tmp_path / "explicit" / "deep"
        assert sync(logdir, "--state-dir", str(state_alt))[0] == 0
    finally:
        os.umask(old)
    for state in (state_of(logdir), state_dir_for(logdir, str(state_alt))):
        seen = set()
        for p in [state, *state.rglob("*")]:
            mode = stat.S_IMODE(p.lstat().st_mode)
            if p.is_dir():
                assert mode == 0o750, (p, oct(mode))
            elif p.name == "sig.key":
                assert mode == 0o600, (p, oct(mode))
            else:
                assert mode == 0o640, (p, oct(mode))
            seen.add(p.suffix)
        assert {".json", ".sig", ".lock", ".key"} <= seen, seen
    for folder in (tmp_path / "explicit", state_alt):  # folders made for --state-dir too
        assert stat.S_IMODE(folder.stat().st_mode) == 0o750


def test_store_never_builds_a_path_from_checkpoint_fields(tmp_path):
    """The store's API takes the target and run from the caller: a checkpoint object whose
    fields say otherwise is still written where the caller says."""
    from tracelet.checkpoint import Checkpoint

    store = CheckpointStore(tmp_path / "state")
    ck = Checkpoint("mlflow", EVIL, EVIL, run_id=EVIL)
    store.commit("mlflow-0123456789", "run0", ck)
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()] == \
        ["state/checkpoints/mlflow-0123456789/run0.json"]


def test_every_checkpoint_field_is_validated():
    """A field added to Checkpoint/FileState must get a schema entry (and, if older checkpoints
    lack it, a place in _ADDED_LATER), or it would be trusted unchecked."""
    from dataclasses import fields

    from tracelet.checkpoint import CHECKPOINT_SCHEMA, FILE_STATE_SCHEMA, Checkpoint, FileState

    assert {f.name for f in fields(Checkpoint)} == set(CHECKPOINT_SCHEMA["properties"])
    assert {f.name for f in fields(FileState)} == set(FILE_STATE_SCHEMA["properties"])
