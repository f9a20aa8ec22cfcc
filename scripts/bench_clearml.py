#!/usr/bin/env python
"""Benchmark ClearML offline writing: a bare ``Logger.report_scalar`` loop vs ``tracelet sync``.

Both write the SAME points (``--points`` scalars over ``--tags`` tags, PyTorch layout) into
ClearML offline sessions, each in its own subprocess and its own ``CLEARML_CACHE_DIR``:

    naive     Task.init(...) offline; for each point logger.report_scalar(title, series, v, step);
              task.close() (ClearML flushes its reporter and zips the session). Timed from the
              first report_scalar to the end of close(): the cost of the reporting path itself.
    tracelet  run_sync(--to clearml --clearml-offline) over the event files: reads the
              TensorBoard file, writes the session, fsyncs, zips. Timed from the first
              destination call to the end (sync elapsed minus SDK import/session setup is NOT
              subtracted: the figure includes reading, checkpoints and the zip).

Both sessions are then checked to hold every point once (events per (title, series, iter)).

Examples::

    .venv/bin/python scripts/bench_clearml.py                    # 50k points
    .venv/bin/python scripts/bench_clearml.py --points 200000 --naive-points 20000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

WALL0 = 1_700_000_000.0

NAIVE = textwrap.dedent("""
    import json, sys, time
    from clearml import Task
    Task.set_offline(True)
    points = json.load(open(sys.argv[1]))
    task = Task.init(project_name="bench", task_name="naive", auto_connect_frameworks=False,
                     auto_resource_monitoring=False, auto_connect_arg_parser=False)
    logger = task.get_logger()
    t0 = time.perf_counter()
    for title, series, step, value in points:
        logger.report_scalar(title, series, value, iteration=step)
    t1 = time.perf_counter()
    task.close()
    t2 = time.perf_counter()
    print(json.dumps({"loop_s": t1 - t0, "close_s": t2 - t1, "total_s": t2 - t0}))
""")

TRACELET = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    from tracelet.engine import SyncOptions, run_sync
    report = run_sync([sys.argv[1]], SyncOptions(destinations=["clearml"], project="bench",
                      dest_config={"clearml_offline": True}, progress=False))
    t1 = time.perf_counter()
    assert report.exit_code == 0, report.to_dict()
    print(json.dumps({"total_s": t1 - t0, "sync_elapsed_s": report.elapsed_s,
                      "points": report.totals()["clearml"]["points"]}))
""")


def write_logdir(root: Path, points: int, tags: int) -> list[tuple[str, str, int, float]]:
    """One run, one event file, one simple_value per event; returns (title, series, step, v)."""
    from tensorboard.compat.proto import event_pb2, summary_pb2

    from tracelet.destinations.clearml import split_tag
    from tracelet.reader import frame_record

    run = root / "run"
    run.mkdir(parents=True)
    names = [f"Loss/train/part{i}" if i % 2 else f"metric{i}" for i in range(tags)]
    out, chunks = [], [frame_record(event_pb2.Event(wall_time=WALL0, file_version="brain.Event:2")
                                    .SerializeToString())]
    steps = points // tags
    for step in range(steps):
        for k, tag in enumerate(names):
            v = float((step * 7 + k) % 1000) / 8.0  # exact in float32
            chunks.append(frame_record(event_pb2.Event(
                step=step, wall_time=WALL0 + step * 0.01,
                summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(
                    tag=tag, simple_value=v)])).SerializeToString()))
            title, series = split_tag(tag)
            out.append((title, series, step, v))
    (run / "events.out.tfevents.1700000000.bench.1.0").write_bytes(b"".join(chunks))
    return out


def count_events(cache: Path) -> dict[tuple, int]:
    seen: dict[tuple, int] = {}
    for f in (cache / "offline").glob("*/metrics.jsonl"):
        for line in f.read_bytes().splitlines():
            for e in json.loads(line):
                if e.get("type") == "training_stats_scalar":
                    k = (e["metric"], e["variant"], e["iter"])
                    seen[k] = seen.get(k, 0) + 1
    return seen


def run_child(code: str, arg: str, cache: Path) -> dict:
    env = dict(os.environ, CLEARML_OFFLINE_MODE="1", CLEARML_CACHE_DIR=str(cache),
               CLEARML_CONFIG_FILE=str(cache / "clearml.conf"), PYTHONWARNINGS="ignore")
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "clearml.conf").write_text("")
    p = subprocess.run([sys.executable, "-c", code, arg], env=env, capture_output=True,
                       text=True, timeout=3600)
    if p.returncode != 0:
        raise SystemExit(f"child failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=50_000, help="points tracelet syncs")
    ap.add_argument("--naive-points", type=int, default=None,
                    help="points the naive loop reports (default: the same as --points)")
    ap.add_argument("--tags", type=int, default=10)
    ap.add_argument("--dir", default=None, help="work folder (default: a temp folder, removed)")
    args = ap.parse_args()
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-clearml-"))
    logdir = work / "logs"
    points = write_logdir(logdir, args.points, args.tags)
    naive_points = points[: args.naive_points] if args.naive_points else points
    pts_file = work / "points.json"
    pts_file.write_text(json.dumps(naive_points))

    naive = run_child(NAIVE, str(pts_file), work / "cache-naive")
    trl = run_child(TRACELET, str(logdir), work / "cache-tracelet")

    naive_seen = count_events(work / "cache-naive")
    trl_seen = count_events(work / "cache-tracelet")
    n_rate = len(naive_points) / naive["total_s"]
    t_rate = len(points) / trl["total_s"]
    result = {
        "clearml": __import__("clearml").__version__,
        "naive": {"points": len(naive_points), "events_in_session": sum(naive_seen.values()),
                  **{k: round(v, 3) for k, v in naive.items()}, "points_per_s": round(n_rate)},
        "tracelet": {"points": len(points), "events_in_session": sum(trl_seen.values()),
                     "duplicates": sum(n - 1 for n in trl_seen.values() if n > 1),
                     **{k: round(v, 3) if isinstance(v, float) else v for k, v in trl.items()},
                     "points_per_s": round(t_rate)},
        "speedup": round(t_rate / n_rate, 1),
        "note": "tracelet total includes interpreter start, imports, reading the event file, "
                "checkpoints and the zip; naive total is the report loop + task.close()",
    }
    print(json.dumps(result, indent=1))
    if not args.dir:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
