"""Two syncs of the same TensorBoard files into the same ClearML offline folder at the same
moment (README "Concurrent syncs into one ClearML offline folder"): each its own process, the
real CLI, started together through a barrier, repeated.

* two LOGDIR levels (``tracelet sync sub`` names the run ``exp/r1``, ``tracelet sync sub/exp``
  names it ``r1``): their (run, target) locks differ, so only the destination can see they are
  the same run (its source id);
* the same level with two state dirs (``--state-dir``): two checkpoints, one run.

The offline folder is read back as ClearML's import reads it (a finished session's zip, else
its folder; ``metrics.jsonl`` lines, events of the session's own task id; the sessions of one
prefix are one task), WITHOUT the server's replace-by-event-id: every source point must be in
exactly one task and written exactly once, after both syncs and after one more of each. A
sync that finds the run busy says so and exits 75; no traceback either way.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from tests.destinations.harness_clearml import ClearmlOfflineHarness, fold_series
from tracelet.testing.harness import canon
from tracelet.testing.sources import SourceTruth, write_simple_run

TAGS = ["loss", "acc"]
RUNS = ("exp/r1", "exp/r2", "exp/r3")  # the same first record: one source id
ROUNDS = 4

# Imports first (the SDK import is most of a sync's start), then the barrier: both processes
# begin the sync itself together.
LAUNCH = r"""
import sys, time
from pathlib import Path
import tracelet.cli, clearml.config  # noqa: F401
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.0005)
sys.argv = ["tracelet", *sys.argv[3:]]
tracelet.cli.main()
"""


def _race(env: dict, gate: Path, commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
    gate.mkdir()
    procs = []
    for i, args in enumerate(commands):
        procs.append(subprocess.Popen(
            [sys.executable, "-c", LAUNCH, str(gate / f"ready-{i}"), str(gate / "go"), *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + 120  # a start that never comes is a failure, not a hang
    while not all((gate / f"ready-{i}").exists() for i in range(len(commands))):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [
            p.communicate() for p in procs if p.poll() is not None]
        time.sleep(0.005)
    (gate / "go").touch()
    out = []
    for p, args in zip(procs, commands):
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(args, p.returncode, stdout, stderr))
    return out


def _sessions(offline: Path) -> list[tuple[str, dict, list[bytes]]]:
    """(session name, task.json, metrics.jsonl lines) as ClearML's import reads each session:
    the zip of a finished one, else the folder (one without task.json holds nothing)."""
    stems = sorted({p.name[:-4] if p.name.endswith(".zip") else p.name
                    for p in offline.glob("offline-*") if not p.name.endswith(".imported")})
    out = []
    for stem in stems:
        zp, folder = offline / f"{stem}.zip", offline / stem
        if zp.is_file():
            with zipfile.ZipFile(zp) as zf:
                names = set(zf.namelist())
                doc = json.loads(zf.read("task.json"))
                data = zf.read("metrics.jsonl") if "metrics.jsonl" in names else b""
        elif (folder / "task.json").is_file():
            doc = json.loads((folder / "task.json").read_bytes())
            data = (folder / "metrics.jsonl").read_bytes() if (
                folder / "metrics.jsonl").is_file() else b""
        else:
            continue
        out.append((stem, doc, data.splitlines()))
    return out


def _source_run(run_path: str) -> str:
    [run] = [r for r in RUNS if r == run_path or r.endswith("/" + run_path)]
    return run


def assert_each_point_once(harness, truth: SourceTruth) -> None:
    """Every source scalar is in ONE task (session prefix) of its run and written once there:
    no point twice, none lost, no run split in two."""
    written: Counter = Counter()
    tasks: dict[str, set[str]] = {}
    for name, doc, lines in _sessions(harness.offline):
        run = _source_run(doc["hyperparams"]["tracelet"]["run_path"]["value"])
        tasks.setdefault(run, set()).add(name[:28])  # offline-<20 hex>: one task on import
        for i, line in enumerate(lines):
            try:
                events = json.loads(line)
            except ValueError:
                assert i, f"{name}: metrics.jsonl's first line is unreadable (the import stops)"
                continue  # skipped by the import: its points are lost, found missing below
            for e in events:
                if e.get("task") == doc["id"] and e.get("type") == "training_stats_scalar":
                    key, _ = fold_series(e["metric"], e["variant"])
                    written[(run, key, e["iter"], canon(e["value"]))] += 1
    want = Counter((run, harness.metric_key(tag), s, canon(v))
                   for (run, tag), pts in truth.scalars.items() for s, v, _ in pts)
    twice = {k: n for k, n in written.items() if n > 1}
    assert not twice, f"written more than once: {sorted(twice.items())[:5]} ({len(twice)})"
    assert not want - written, f"lost: {sorted(want - written)[:5]} ({len(want - written)})"
    assert not written - want, f"unexpected: {sorted(written - want)[:5]}"
    split = {run: sorted(t) for run, t in tasks.items() if len(t) > 1}
    assert not split, f"one run, several ClearML tasks: {split}"


def _check(results: list[subprocess.CompletedProcess]) -> None:
    for r in results:
        assert "Traceback" not in r.stderr, r.stderr
        assert r.returncode in (0, 75), (r.args, r.returncode, r.stderr)
        if r.returncode == 75:
            assert "busy" in r.stderr.lower(), r.stderr


def _logdir(tmp_path: Path, truth: SourceTruth) -> Path:
    sub = tmp_path / "sub"
    for seed, run in enumerate(RUNS, start=1):
        write_simple_run(sub / run, run, truth, TAGS, list(range(40)), seed=seed)
    return sub


def _env(harness, cache: Path) -> dict:
    return {**os.environ, **harness.env(), "CLEARML_CACHE_DIR": str(cache),
            "PYTHONPATH": os.pathsep.join(sys.path)}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["two-levels", "two-state-dirs"])
def test_concurrent_syncs_into_one_offline_folder_write_each_point_once(tmp_path, monkeypatch,
                                                                        case):
    harness = ClearmlOfflineHarness()
    harness.setup(tmp_path, monkeypatch)
    truth = SourceTruth()
    sub = _logdir(tmp_path, truth)
    upper = sub if case == "two-state-dirs" else sub / "exp"
    busy = 0
    for n in range(ROUNDS):  # a fresh offline folder and fresh state dirs each round
        harness.cache = tmp_path / f"cache-{n}"
        env = _env(harness, harness.cache)
        commands = [[
            "sync", str(logdir), "--to", "clearml", "--clearml-offline",
            "--state-dir", str(tmp_path / f"state-{n}-{i}")] for i, logdir in
            enumerate((sub, upper))]
        for step in ("first", "grown"):  # with no checkpoint, then each with its own
            if step == "grown":  # the files grow: both syncs have something new
                for seed, run in enumerate(RUNS, start=1):
                    write_simple_run(sub / run, run, truth, TAGS, [1000 + n], seed=seed,
                                     append=True)
            results = _race(env, tmp_path / f"gate-{n}-{step}", commands)
            _check(results)
            busy += sum(r.returncode == 75 for r in results)
            assert_each_point_once(harness, truth)
            again = [subprocess.run([sys.executable, "-m", "tracelet.cli", *c], env=env,
                                    capture_output=True, text=True, timeout=300)
                     for c in commands]
            for r in again:  # what a busy sync left, the next pass does
                assert r.returncode == 0 and "Traceback" not in r.stderr, (r.args, r.stderr)
            assert_each_point_once(harness, truth)
    print(f"{case}: {busy} busy sync(s) in {2 * ROUNDS} races")


# A sync holding a run open on ClearML: the destination's own open_run, in another process,
# until its stdin closes (then close_run: the session is zipped and the run released).
HOLD = r"""
import sys
from pathlib import Path
from tracelet.destinations.base import RunRef
from tracelet.destinations.clearml.client import ClearmlDestination
from tracelet.engine.plan import run_id_for
from tracelet.identity import source_id_for
from tracelet.reader import discover_runs
logdir, name = Path(sys.argv[1]), sys.argv[2]
[run] = [r for r in discover_runs(logdir).runs if r.name == name]
ref = RunRef(run_id=run_id_for(name, run, None), run_path=name, project=logdir.name,
             source_dir=run.path, source_id=source_id_for(run, None), source_anywhere=True)
dest = ClearmlDestination({"clearml_offline": True})
handle = dest.open_run(ref, None)
print("held", flush=True)
sys.stdin.read()
dest.close_run(handle)
dest.close()
"""


def _hold(env: dict, logdir: Path, name: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(logdir), name], env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    line = p.stdout.readline()
    assert line == "held\n", (line, p.communicate())
    return p


def _let_go(p: subprocess.Popen) -> None:
    _, err = p.communicate("", timeout=120)
    assert p.returncode == 0, err


def test_a_run_another_process_writes_is_skipped_busy_and_its_other_destinations_go_on(
        tmp_path, monkeypatch):
    """`sync sub` while another process writes ClearML run `r1` of `sub/exp` (the same files):
    exit 75 with the "Busy" line, MLflow gets the run anyway, the other runs sync; the next
    sync adds what is missing to the ONE ClearML run."""
    import tracelet
    from tests.destinations.harness_mlflow import MlflowLocalHarness

    harness = ClearmlOfflineHarness()
    config = harness.setup(tmp_path, monkeypatch)
    mlflow = MlflowLocalHarness()
    config.update(mlflow.setup(tmp_path, monkeypatch))
    truth = SourceTruth()
    sub = _logdir(tmp_path, truth)
    env = {**os.environ, **harness.env(), "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = _hold(env, sub / "exp", "r1")
    try:
        report = tracelet.sync(sub, to="clearml,mlflow", dest_config=config)
    finally:
        _let_go(holder)
    assert report.exit_code == 75, report.to_dict()
    runs = {r.run: r for r in report.runs}
    busy = runs["exp/r1"].destinations["clearml"]
    assert busy.state == "locked" and busy.error.startswith(
        "clearml: the ClearML run of 'exp/r1' (offline sessions in "), busy.error
    assert "is locked by another sync (pid " in busy.error and "Busy: another sync" in busy.error
    assert "retried at the next sync (exit 75)" in busy.error
    assert runs["exp/r1"].destinations["mlflow"].state == "synced"
    assert all(runs[r].destinations["clearml"].state == "synced" for r in ("exp/r2", "exp/r3"))
    again = tracelet.sync(sub, to="clearml,mlflow", dest_config=config)
    assert again.exit_code == 0, again.to_dict()
    assert_each_point_once(harness, truth)
    from tracelet.testing.conformance import assert_exactly_once, project_fn

    assert_exactly_once(mlflow, truth, project_fn("sub"))


def test_a_busy_run_holds_none_of_its_locks_and_threads_of_one_sync_wait(tmp_path, monkeypatch):
    """All of a run's locks or none: a claim refused on one key leaves the others free for
    another process. In one process (worker threads) a claim waits for the thread holding it:
    it is granted only after that one released."""
    import threading

    from tracelet.destinations.clearml.claim import claim
    from tracelet.errors import LockedError

    folder = tmp_path / "cache" / "offline"
    folder.mkdir(parents=True)
    take = r"""
import sys
from pathlib import Path
from tracelet.destinations.clearml.claim import claim
held = claim(Path(sys.argv[1]), sys.argv[2:], "test")
print("held", flush=True)
sys.stdin.read()
held.release()
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def other(*keys: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", take, str(folder), *keys], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        assert p.stdout.readline() == "held\n", p.communicate()
        return p

    b = other("run:b")
    try:
        with pytest.raises(LockedError, match="Busy: another sync"):
            claim(folder, ["run:a", "run:b"], "run x")
        _let_go(other("run:a"))  # "a" was not kept by the refused claim
    finally:
        _let_go(b)

    order: list[str] = []
    first = claim(folder, ["run:a", "source:s/r1"], "run x")
    got = threading.Event()

    def second() -> None:
        held = claim(folder, ["source:s/r1"], "run y")
        order.append("second granted")
        got.set()
        held.release()

    t = threading.Thread(target=second)
    t.start()
    got.wait(0.5)  # a window for a claim that does not wait to be granted too early
    order.append("first released")
    first.release()
    t.join(60)
    assert order == ["first released", "second granted"]

    # the wait is bounded: a claim this process never released makes the run busy, no hang
    import tracelet.destinations.clearml.claim as claim_mod

    monkeypatch.setattr(claim_mod, "_THREAD_WAIT_S", 0.0)
    kept = claim(folder, ["run:a"], "run x")
    with pytest.raises(LockedError, match="another worker thread of this sync"):
        claim(folder, ["run:a"], "run z")
    kept.release()
    claim(folder, ["run:a"], "run z").release()


def test_a_session_number_whose_folder_exists_is_never_reused(tmp_path):
    """A session folder made by a writer that took no lock (between the listing and the new
    session) is passed over: the next number is taken."""
    from tracelet.destinations.clearml.client import _take_session_number
    from tracelet.destinations.clearml.mapping import session_id

    rhex = "ab" * 10
    (tmp_path / session_id(rhex, 3)).mkdir()
    (tmp_path / session_id(rhex, 4)).mkdir()
    assert _take_session_number(tmp_path, rhex, 3) == 5
    assert (tmp_path / session_id(rhex, 5)).is_dir()
    assert _take_session_number(tmp_path, rhex, 1) == 1


def test_syncs_taking_turns_from_two_state_dirs_and_levels_write_each_point_once(tmp_path,
                                                                                 monkeypatch):
    """One after the other, each with its own checkpoint: a sync that finds sessions of its run
    it did not write (another state dir, the other LOGDIR level) says so and compares what it
    sends with them; before, each re-wrote what the other had written since its last pass."""
    import tracelet

    harness = ClearmlOfflineHarness()
    config = harness.setup(tmp_path, monkeypatch)
    truth = SourceTruth()
    sub = _logdir(tmp_path, truth)
    syncs = [(sub, tmp_path / "state-a"), (sub, tmp_path / "state-b"),
             (sub / "exp", tmp_path / "state-c")]
    for k in range(3):
        if k:
            for seed, run in enumerate(RUNS, start=1):
                write_simple_run(sub / run, run, truth, TAGS, [100 + 2 * k, 101 + 2 * k],
                                 seed=seed, append=True)
        for i, (logdir, state) in enumerate(syncs):
            report = tracelet.sync(logdir, to="clearml", dest_config=config, state_dir=str(state))
            assert report.exit_code == 0, report.to_dict()
            assert_each_point_once(harness, truth)
            notes = [p for r in report.runs for p in r.problems if "written by another sync" in p]
            if k and i:  # the first of each turn wrote; the others find its new session
                assert len(notes) == len(RUNS), report.to_dict()
                dests = [r.destinations["clearml"] for r in report.runs]
                assert all(d.points == d.points_present == len(TAGS) * 2 for d in dests)
            else:
                assert not notes, notes
    # the line names the sessions it found
    assert "offline session(s) offline-" in notes[0] and "(another --state-dir, or the same " \
        "files from another LOGDIR level): this sync compares what it sends with the " \
        "sessions, each point once" in notes[0]
