#!/usr/bin/env python
"""Benchmark ``tracelet sync --to aim`` (local repo) against Aim's own fastest bare loop.

Both sides store the same ``--points`` scalar points (``--tags`` tags, PyTorch layout: one value
per event) into a fresh local Aim repo each, in this one process, one after the other:

    tracelet   run_sync(logdir, to aim): read the event file, open/create the run, send every
               point (with its step and wall time), close the run, refresh Aim's index
    aim loop   points already decoded in memory; ``Run(...)``, ``run.track(...)`` for every
               point, ``run.close()``. Two variants, the faster one is the baseline:
               per point  run.track(value, name=tag, step=step)
               per step   run.track({tag: value, ...}, step=step)   (fewer calls)

Ratio = aim loop time / tracelet time (>= 1.0: tracelet is at least as fast). Goal: >= 0.8.
Afterwards (untimed) the tracelet repo is read back with Aim's SDK: every point exactly once,
with its step, value and wall time.
Aim writes ~6 RocksDB records per point; a bare loop does each as its own write, tracelet puts
one send in one write batch (see ``tracelet.destinations.aim``).

Examples::

    .venv/bin/python scripts/bench_aim.py                    # 200k points
    .venv/bin/python scripts/bench_aim.py --points 50000 --json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

WALL0 = 1_700_000_000.0


def write_logdir(logdir: Path, points: int, tags: int) -> list[tuple[str, int, float, float]]:
    """One run with one event file; returns the points as (tag, step, wall, value)."""
    import numpy as np
    from tensorboard.compat.proto import event_pb2, summary_pb2

    from tracelet.reader import frame_record

    run = logdir / "bench" / "run"
    run.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    values = rng.standard_normal(points).astype(np.float32).tolist()
    names = [f"metric/{i}" for i in range(tags)]
    out = []
    chunks = [frame_record(event_pb2.Event(wall_time=WALL0, file_version="brain.Event:2")
                           .SerializeToString())]
    for i, v in enumerate(values):
        tag, step, wall = names[i % tags], i // tags, WALL0 + i * 0.001
        ev = event_pb2.Event(step=step, wall_time=wall, summary=summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=tag, simple_value=v)]))
        chunks.append(frame_record(ev.SerializeToString()))
        out.append((tag, step, wall, v))
    (run / "events.out.tfevents.1700000000.bench.1.0").write_bytes(b"".join(chunks))
    return out


def bench_tracelet(logdir: Path, repo: Path) -> tuple[float, int]:
    from tracelet.engine import SyncOptions, run_sync

    t0 = time.perf_counter()
    report = run_sync([str(logdir)], SyncOptions(destinations=["aim"], project="bench",
                                                 dest_config={"aim_repo": str(repo)},
                                                 progress=False, json_output=True))
    elapsed = time.perf_counter() - t0
    if report.exit_code != 0:
        raise SystemExit(f"sync failed: {json.dumps(report.to_dict())[:2000]}")
    return elapsed, report.totals()["aim"]["points"]


def verify(points, repo: Path) -> int:
    """Read the synced run back with Aim's SDK: every (tag, step, value, wall time) once."""
    from aim import Repo

    runs = list(Repo(str(repo)).iter_runs())
    assert len(runs) == 1, f"{len(runs)} runs in the tracelet repo"
    got = set()
    n = 0
    for m in runs[0].metrics():
        steps, (values, times) = m.data.view(["val", "time"]).items_list()
        n += len(steps)
        got.update((m.name, s, v, t) for s, v, t in zip(steps, values, times))
    want = {(tag, step, v, wall) for tag, step, wall, v in points}
    if n != len(points) or got != want:
        raise SystemExit(f"read back {n} points, {len(want - got)} missing, {len(got - want)} unexpected")
    return n


def bench_aim_loop(points, repo: Path, per_step: bool) -> float:
    from aim import Repo, Run

    aim_repo = Repo.from_path(str(repo), init=True)
    t0 = time.perf_counter()
    run = Run(repo=aim_repo, experiment="bench", system_tracking_interval=None,
              capture_terminal_logs=False, log_system_params=False)
    if per_step:
        by_step: dict[int, dict[str, float]] = {}
        for tag, step, _, v in points:
            by_step.setdefault(step, {})[tag] = v
        for step, values in by_step.items():
            run.track(values, step=step)
    else:
        for tag, step, _, v in points:
            run.track(v, name=tag, step=step)
    run.close()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=200_000)
    ap.add_argument("--tags", type=int, default=10)
    ap.add_argument("--dir", default=None, help="work folder (default: a temp dir, removed)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    work = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="tracelet-bench-aim-"))
    try:
        shutil.rmtree(work / "logs", ignore_errors=True)
        points = write_logdir(work / "logs", a.points, a.tags)
        repos = {k: work / f"repo-{k}" for k in ("tracelet", "per_point", "per_step")}
        for r in repos.values():
            shutil.rmtree(r, ignore_errors=True)
            r.mkdir(parents=True)
        from aim import Repo

        for k in ("per_point", "per_step"):
            Repo.from_path(str(repos[k]), init=True)  # `aim init` outside the timings
        tracelet_s, sent = bench_tracelet(work / "logs", repos["tracelet"])
        per_point_s = bench_aim_loop(points, repos["per_point"], per_step=False)
        per_step_s = bench_aim_loop(points, repos["per_step"], per_step=True)
        best = min(per_point_s, per_step_s)
        verified = verify(points, repos["tracelet"])
        result = {
            "points": a.points, "points_sent": sent, "points_read_back": verified, "tags": a.tags,
            "tracelet_s": round(tracelet_s, 2),
            "tracelet_points_per_s": round(a.points / tracelet_s),
            "aim_track_per_point_s": round(per_point_s, 2),
            "aim_track_per_step_s": round(per_step_s, 2),
            "aim_best_points_per_s": round(a.points / best),
            "ratio_vs_best_aim_loop": round(best / tracelet_s, 2),
            "goal": 0.8,
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}",
            "aim": __import__("aim.__version__", fromlist=["__version__"]).__version__,
        }
        if a.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"{a.points:,} points, {a.tags} tags  ({result['machine']}, aim {result['aim']})")
            print(f"  tracelet sync --to aim      {tracelet_s:8.2f} s  {a.points / tracelet_s:10,.0f} pts/s")
            print(f"  aim run.track per point     {per_point_s:8.2f} s  {a.points / per_point_s:10,.0f} pts/s")
            print(f"  aim run.track dict per step {per_step_s:8.2f} s  {a.points / per_step_s:10,.0f} pts/s")
            print(f"  ratio (best aim loop / tracelet) = {best / tracelet_s:.2f}  (goal >= 0.8)")
            print(f"  read back with Aim's SDK: {verified:,} points, each (tag, step, value, time) once")
        if sent != a.points:
            sys.exit(f"tracelet sent {sent} of {a.points} points")
    finally:
        if not a.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
