#!/usr/bin/env python3
"""Sync benchmarks against MLflow, each ratio measured side by side in one run.

1. throughput: `tracelet sync` of N points into a local `mlflow server` (sqlite backend) vs a
   bare `MlflowClient.log_batch` loop (1000 metrics per call) sending the same points to the
   same server. Goal: tracelet >= 0.8x the bare loop's points/s.
2. no-op resync: `tracelet sync` (the CLI, as cron runs it) over 1000 unchanged runs vs 10.
   Goal: <= 1.5x.
3. memory: peak RSS of `tracelet sync` of a big file vs a 1M-point file (MLflow local store).
   Goal: <= 1.2x.

Usage: .venv/bin/python scripts/bench_sync_mlflow.py [--points 1000000] [--skip-memory] ...
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2

from _bench import WARM_NOTE, fill_cache, warm_env  # scripts/ (this script's folder)
from tracelet.reader import EventFileReader, frame_record

T0 = 1_700_000_000.0


def write_points(path: Path, points: int, tags: int = 10) -> None:
    """PyTorch layout: one value per event, `tags` tags per step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    vals = rng.standard_normal(points).astype(np.float32)
    with open(path, "wb") as f:
        f.write(frame_record(event_pb2.Event(wall_time=T0, file_version="brain.Event:2").SerializeToString()))
        buf = []
        for i in range(points):
            step, t = divmod(i, tags)
            ev = event_pb2.Event(step=step, wall_time=T0 + step * 0.01, summary=summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag=f"train/metric_{t}", simple_value=float(vals[i]))]))
            buf.append(frame_record(ev.SerializeToString()))
            if len(buf) >= 100_000:
                f.write(b"".join(buf))
                buf.clear()
        f.write(b"".join(buf))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2):
                return proc, uri
        except OSError:
            time.sleep(0.2)
    raise SystemExit("mlflow server did not start")


def bench_throughput(work: Path, points: int) -> dict:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from tracelet.engine import SyncOptions, run_sync

    logdir = work / "tp"
    write_points(logdir / "run" / "events.out.tfevents.1.bench", points)
    proc, uri = start_server(work / "server")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        # the bare loop gets the points already decoded, in memory: its best case
        cols = [b.scalars for b in EventFileReader(next((logdir / "run").iterdir())).batches()]
        client = MlflowClient(tracking_uri=uri)

        def bare_loop(experiment: str) -> float:
            run_id = client.create_run(client.create_experiment(experiment)).info.run_id
            t = time.perf_counter()
            for c in cols:
                metrics = [Metric(k, v, int(w * 1000), s)
                           for k, s, w, v in zip(c.tags, c.steps, c.wall_times, c.values)]
                for i in range(0, len(metrics), 1000):
                    client.log_batch(run_id, metrics=metrics[i : i + 1000], synchronous=True)
            return time.perf_counter() - t

        warm = client.create_run(client.create_experiment("warmup")).info.run_id
        client.log_batch(warm, metrics=[Metric("w", 1.0, 0, i) for i in range(1000)])
        # bare, tracelet, bare again: the server's state (db size, caches) drifts during a
        # run, so the bare loop brackets tracelet and its better time is used
        bare1 = bare_loop("bare1")
        t = time.perf_counter()
        report = run_sync([str(logdir)], SyncOptions(destinations=["mlflow"], project="tracelet",
                                                     progress=False))
        ours = time.perf_counter() - t
        assert report.exit_code == 0, report.to_dict()
        bare = min(bare1, bare_loop("bare2"))
    finally:
        proc.terminate()
        proc.wait(30)
    return {"points": points, "bare_s": bare, "tracelet_s": ours,
            "bare_pts_s": points / bare, "tracelet_pts_s": points / ours,
            "ratio": (points / ours) / (points / bare)}


def _cli_time(logdir: Path, env: dict, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tracelet.cli", "sync", str(logdir), "--to", "mlflow"],
                       env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t)
    return best


def bench_noop(work: Path, many: int = 1000, few: int = 10) -> dict:
    env = warm_env(work / "pycache", {**os.environ,
                                      "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'noop.db'}"})
    fill_cache(env, "tracelet.cli", "tracelet.destinations.mlflow.client", "mlflow")
    times = {}
    for n in (few, many):
        logdir = work / f"noop{n}"
        for r in range(n):
            write_points(logdir / f"run{r:04d}" / "events.out.tfevents.1.bench", 20, tags=2)
        subprocess.run([sys.executable, "-m", "tracelet.cli", "sync", str(logdir), "--to", "mlflow"],
                       env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times[n] = _cli_time(logdir, env)
    return {"few": few, "many": many, "few_s": times[few], "many_s": times[many],
            "ratio": times[many] / times[few]}


def _peak_rss_mib(cmd: list[str], env: dict) -> tuple[float, float]:
    """Peak RSS of cmd alone (a launcher process isolates it from this process's own RSS)."""
    launcher = ("import resource,subprocess,sys,time;t=time.perf_counter();"
                "subprocess.run(sys.argv[1:],check=True,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL);"
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024, time.perf_counter()-t)")
    out = subprocess.run([sys.executable, "-c", launcher, *cmd], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def bench_memory(work: Path, small: int, big: int) -> dict:
    res = {}
    for n in (small, big):
        logdir = work / f"mem{n}"
        write_points(logdir / "run" / "events.out.tfevents.1.bench", n)
        env = warm_env(work / "pycache", {**os.environ,
                                          "MLFLOW_TRACKING_URI": f"sqlite:///{work / f'mem{n}.db'}"})
        res[n] = _peak_rss_mib([sys.executable, "-m", "tracelet.cli", "sync", str(logdir), "--to",
                                "mlflow"], env)
    return {"small": small, "big": big, "small_mib": res[small][0], "big_mib": res[big][0],
            "small_s": res[small][1], "big_s": res[big][1], "ratio": res[big][0] / res[small][0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--noop-runs", type=int, default=1000)
    ap.add_argument("--memory-small", type=int, default=1_000_000)
    ap.add_argument("--memory-big", type=int, default=20_000_000)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-noop", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--dir", default=None, help="work folder (default: a temp dir, removed)")
    a = ap.parse_args()
    work = Path(a.dir or tempfile.mkdtemp(prefix="tracelet-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        from tracelet.reader import events

        print(f"reader: {'C fast path' if events._fastscan is not None else 'pure Python'}; "
              f"cores: {os.cpu_count()}; load avg: {os.getloadavg()[0]:.1f}")
        if not a.skip_throughput:
            r = bench_throughput(work, a.points)
            print(f"throughput, {r['points']:,} points -> local mlflow server (sqlite):")
            print(f"  bare log_batch loop  {r['bare_s']:8.1f} s  {r['bare_pts_s']:10,.0f} pts/s")
            print(f"  tracelet sync        {r['tracelet_s']:8.1f} s  {r['tracelet_pts_s']:10,.0f} pts/s")
            print(f"  ratio tracelet/bare  {r['ratio']:.2f}x  (goal >= 0.8)")
        if not a.skip_noop:
            r = bench_noop(work, a.noop_runs)
            print(f"no-op resync (CLI, unchanged runs): {r['few']} runs {r['few_s']:.2f} s, "
                  f"{r['many']} runs {r['many_s']:.2f} s, ratio {r['ratio']:.2f}x (goal <= 1.5; "
                  f"{WARM_NOTE})")
        if not a.skip_memory:
            r = bench_memory(work, a.memory_small, a.memory_big)
            print(f"peak RSS syncing to MLflow local store: {r['small']:,} points {r['small_mib']:.0f} MiB "
                  f"({r['small_s']:.0f} s), {r['big']:,} points {r['big_mib']:.0f} MiB ({r['big_s']:.0f} s), "
                  f"ratio {r['ratio']:.2f}x (goal <= 1.2)")
    finally:
        if not a.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
