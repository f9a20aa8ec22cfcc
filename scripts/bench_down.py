#!/usr/bin/env python3
"""A dead destination must not hold up the others: the circuit breaker, measured side by side.

The same pass over N changed plain TensorBoard runs (default 1,000, a few points each) is timed
twice, in one run of this script, each time on a fresh copy of the logdir (every run changed):

1. healthy: ``tracelet sync LOGDIR --to memory`` (the memory destination journaled in a
   folder: a real write per run, no server to time);
2. down: ``tracelet sync LOGDIR --to memory,mlflow --mlflow-uri http://127.0.0.1:<port>``
   where nothing listens on the port (connection refused, as when an ``mlflow server`` was
   killed). The first run spends the retry policy's full patience (default: 6 tries, ~15.5 s),
   the breaker opens, and MLflow is skipped for every other run of the pass.

Both go through the CLI as cron runs it, with the default retry policy. Goal: down / healthy
< 2.0. The script also checks what the breaker promises: exit 1, one ``mlflow: down (...)``
line, every run in the memory journal, MLflow tried by one run only.

Usage: .venv/bin/python scripts/bench_down.py [--runs 1000] [--workers 1] [--dir D]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2

from _bench import WARM_NOTE, fill_cache, warm_env  # scripts/ (this script's folder)
from tracelet.reader import frame_record

T0 = 1_700_000_000.0


def write_runs(logdir: Path, runs: int, points: int = 10) -> None:
    for r in range(runs):
        run = logdir / f"run{r:04d}"
        run.mkdir(parents=True)
        recs = [frame_record(event_pb2.Event(wall_time=T0 + r, file_version="brain.Event:2")
                             .SerializeToString())]
        for s in range(points):
            ev = event_pb2.Event(step=s, wall_time=T0 + r + s * 0.01, summary=summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag="loss", simple_value=1.0 / (s + 1))]))
            recs.append(frame_record(ev.SerializeToString()))
        (run / f"events.out.tfevents.{int(T0) + r}.bench.{r}.0").write_bytes(b"".join(recs))


def dead_port() -> int:
    """A port nothing listens on (bound, then released: connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed_sync(logdir: Path, to: str, extra: list[str], env: dict,
               cwd: Path) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "tracelet.cli", "sync", str(logdir), "--to", to, "--json", *extra]
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd)
    elapsed = time.perf_counter() - t
    try:
        report = json.loads(p.stdout)
    except ValueError:
        raise SystemExit(f"no JSON report (exit {p.returncode}):\n{p.stdout[-2000:]}\n"
                         f"{p.stderr[-2000:]}") from None
    return elapsed, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--dir", default=None, help="work folder (default: a temp dir, removed)")
    a = ap.parse_args()
    work = Path(a.dir or tempfile.mkdtemp(prefix="tracelet-bench-down-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        source = work / "source"
        if not source.exists():
            write_runs(source, a.runs)
        env = warm_env(work / "pycache",
                       {k: v for k, v in os.environ.items() if not k.startswith("TRACELET_RETRY")})
        fill_cache(env, "tracelet.cli", "tracelet.destinations.memory.client",
                   "tracelet.destinations.mlflow.client", "mlflow")
        workers = ["--workers", str(a.workers)] if a.workers > 1 else []
        port = dead_port()
        results = {}
        for label, to, extra in (
                ("healthy", "memory", []),
                ("down", "memory,mlflow", ["--mlflow-uri", f"http://127.0.0.1:{port}"])):
            logdir = work / label
            shutil.rmtree(logdir, ignore_errors=True)
            shutil.copytree(source, logdir)  # fresh: every run changed, no state dir
            journal = work / f"journal-{label}"
            shutil.rmtree(journal, ignore_errors=True)
            elapsed, report = timed_sync(logdir, to, ["--memory-store", str(journal), *extra,
                                                      *workers], env, cwd=work)
            results[label] = (elapsed, report)
        healthy_s, healthy = results["healthy"]
        down_s, down = results["down"]
        assert healthy["exit_code"] == 0, healthy["exit_code"]
        assert down["exit_code"] == 1, down["exit_code"]
        tried = sum(r["destinations"]["mlflow"]["state"] == "failed" for r in down["runs"])
        skipped = sum(r["destinations"]["mlflow"]["state"] == "skipped" for r in down["runs"])
        synced = sum(r["destinations"]["memory"]["state"] == "synced" for r in down["runs"])
        print(f"{a.runs} changed plain runs, workers {a.workers}, cores {os.cpu_count()}, "
              f"load avg {os.getloadavg()[0]:.1f}; {WARM_NOTE}")
        print(f"  healthy  --to memory                     {healthy_s:7.1f} s")
        print(f"  down     --to memory,mlflow (refused)    {down_s:7.1f} s  "
              f"(memory synced {synced}, mlflow tried by {tried} run(s), skipped {skipped})")
        for line in down.get("destinations_down", []):
            print(f"           {line['line']}")
        print(f"  ratio down/healthy {down_s / healthy_s:.2f}x (goal < 2.0)")
        # what the breaker promises (a figure measured without it would mean nothing)
        assert synced == a.runs, f"memory synced {synced} of {a.runs} runs"
        assert 1 <= tried <= a.workers and tried + skipped == a.runs, (tried, skipped)
        assert len(down.get("destinations_down", [])) == 1, down.get("destinations_down")
    finally:
        if not a.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
