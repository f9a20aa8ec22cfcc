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
ROUNDS = 6

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
        results = _race(env, tmp_path / f"gate-{n}", commands)
        _check(results)
        busy += sum(r.returncode == 75 for r in results)
        assert_each_point_once(harness, truth)
        again = [subprocess.run([sys.executable, "-m", "tracelet.cli", *c], env=env,
                                capture_output=True, text=True, timeout=300) for c in commands]
        for r in again:  # what a busy sync left, the next pass does
            assert r.returncode == 0 and "Traceback" not in r.stderr, (r.args, r.stderr)
        assert_each_point_once(harness, truth)
    print(f"{case}: {busy} busy sync(s) in {ROUNDS} rounds")
