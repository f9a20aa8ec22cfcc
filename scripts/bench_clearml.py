#!/usr/bin/env python
"""Benchmark ClearML offline writing: ClearML's own reporting paths vs ``tracelet sync``.

All variants write the SAME points (``--points`` scalars over ``--tags`` tags, PyTorch layout)
into ClearML offline sessions, each in its own subprocess with its own ``CLEARML_CACHE_DIR``:

    naive     Task.init(...) offline; logger.report_scalar(title, series, v, step) per point;
              task.close() (flushes ClearML's reporter, zips the session). Defaults.
    tuned     the same loop with the reporter tuned in clearml.conf:
              sdk.development.report_use_subprocess: false (no reporter subprocess) and
              sdk.development.worker.report_event_flush_threshold: 10000 (bigger batches).
    events    ClearML's lower-level writer: ScalarEvent objects written with
              Metrics.write_events(..., async_enable=False) in batches of 2000 (the schema-
              validated event objects ClearML builds per point; what tracelet avoids).
    tracelet  run_sync(--to clearml --clearml-offline) over the event file: reads the
              TensorBoard file, creates the session, writes it, fsyncs every batch, commits
              checkpoints, zips. Importing clearml/tracelet and loading ClearML's config are
              timed apart (``startup_s``), as the other variants' Task.init is not timed.

The naive/tuned/events figures time the reporting only (first call to the end of close).
``--naive-points`` limits the (slow) naive loop; the other variants write all points.
Every session is then checked to hold each point exactly once.

Examples::

    .venv/bin/python scripts/bench_clearml.py                     # 50k points, all variants
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

EVENTS = textwrap.dedent("""
    import json, sys, time
    from clearml import Task
    from clearml.backend_interface.metrics.events import ScalarEvent
    Task.set_offline(True)
    points = json.load(open(sys.argv[1]))
    task = Task.init(project_name="bench", task_name="events", auto_connect_frameworks=False,
                     auto_resource_monitoring=False, auto_connect_arg_parser=False)
    metrics = task._get_metrics_manager(storage_uri=task._get_default_report_storage_uri())
    t0 = time.perf_counter()
    for i in range(0, len(points), 2000):
        metrics.write_events([ScalarEvent(metric=t, variant=s, value=v, iter=it)
                              for t, s, it, v in points[i:i + 2000]], async_enable=False)
    t1 = time.perf_counter()
    task.close()
    t2 = time.perf_counter()
    print(json.dumps({"loop_s": t1 - t0, "close_s": t2 - t1, "total_s": t2 - t0}))
""")

TUNED_CONF = """sdk.development.report_use_subprocess: false
sdk.development.worker.report_event_flush_threshold: 10000
"""

TRACELET = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    import clearml.config
    clearml.config.get_offline_dir()  # SDK import + config load: excluded like naive's Task.init
    from tracelet.engine import SyncOptions, run_sync
    t1 = time.perf_counter()
    report = run_sync([sys.argv[1]], SyncOptions(destinations=["clearml"], project="bench",
                      dest_config={"clearml_offline": True}, progress=False))
    t2 = time.perf_counter()
    assert report.exit_code == 0, report.to_dict()
    print(json.dumps({"startup_s": t1 - t0, "total_s": t2 - t1,
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


def run_child(code: str, arg: str, cache: Path, conf: str = "") -> dict:
    env = dict(os.environ, CLEARML_OFFLINE_MODE="1", CLEARML_CACHE_DIR=str(cache),
               CLEARML_CONFIG_FILE=str(cache / "clearml.conf"), PYTHONWARNINGS="ignore")
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "clearml.conf").write_text(conf)
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

    all_file = work / "points-all.json"
    all_file.write_text(json.dumps(points))
    variants = {"naive": (len(naive_points), run_child(NAIVE, str(pts_file), work / "cache-naive")),
                "tuned": (len(points), run_child(NAIVE, str(all_file), work / "cache-tuned",
                                                 TUNED_CONF)),
                "events": (len(points), run_child(EVENTS, str(all_file), work / "cache-events"))}
    trl = run_child(TRACELET, str(logdir), work / "cache-tracelet")
    result = {"clearml": __import__("clearml").__version__, "cpus": os.cpu_count()}
    for name, (n, timing) in variants.items():
        seen = count_events(work / f"cache-{name}")
        result[name] = {"points": n, "events_in_session": sum(seen.values()),
                        **{k: round(v, 3) for k, v in timing.items()},
                        "points_per_s": round(n / timing["total_s"])}
    seen = count_events(work / "cache-tracelet")
    result["tracelet"] = {"points": len(points), "events_in_session": sum(seen.values()),
                          "duplicates": sum(n - 1 for n in seen.values() if n > 1),
                          **{k: round(v, 3) if isinstance(v, float) else v for k, v in trl.items()},
                          "points_per_s": round(len(points) / trl["total_s"]),
                          "points_per_s_incl_startup": round(
                              len(points) / (trl["total_s"] + trl["startup_s"]))}
    result["speedup_vs_naive"] = round(result["tracelet"]["points_per_s"]
                                       / result["naive"]["points_per_s"], 1)
    print(json.dumps(result, indent=1))
    if not args.dir:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
