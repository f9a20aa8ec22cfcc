#!/usr/bin/env python
"""Benchmark the system-metrics sampler: its CPU overhead, and the samples a SIGKILL loses.

CPU overhead: a ``SystemSampler`` at ``--interval`` (1 s) runs for ``--seconds`` (30) while the
main thread sleeps. Reported: the sampler thread's own CPU time (``time.thread_time`` inside the
thread, so nothing else is counted) over the wall time, as % of one core, split into the one-off
setup (imports, NVML init) and the steady state; and the whole process's CPU over the same
window as a cross-check.

Samples lost on SIGKILL: a real child process records a run (``tracelet.start_logging``) and
prints the sampler's sample count each time it grows; it is killed with SIGKILL at a random
moment in ``[--kill-after, --kill-after + flush interval)`` (where in the flush cycle the kill
lands decides the loss, so trials sample that cycle). Lost = samples taken (the last count
printed) - samples found in the written parts (distinct timestamps), next to the documented
bound ``min(part_samples - 1, ceil(flush_interval / interval))``. ``--flush-interval`` defaults
to 10 s here (the recorder's default is 60 s) so a trial sees several flushes.

Examples::

    .venv/bin/python scripts/bench_sampler.py
    .venv/bin/python scripts/bench_sampler.py --seconds 60 --interval 1 --kill-after 20 --trials 5
    .venv/bin/python scripts/bench_sampler.py --flush-interval 60 --part-samples 60   # defaults
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CHILD = r"""
import sys, time, tracelet
interval, flush_s, part_samples, logdir = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
exp = tracelet.start_logging("victim", "bench", config={
    "logdir": logdir, "track_env": False, "track_git": False, "metrics_interval": interval,
    "metrics_flush_interval": flush_s, "metrics_part_samples": part_samples})
print("run", exp.run_dir, flush=True)
seen = -1
while True:  # the training loop: poll the sample count and report it
    n = exp._sampler.samples_taken
    if n != seen:
        print("taken", n, flush=True)
        seen = n
    time.sleep(0.02)
"""


def measure_cpu(seconds: float, interval: float) -> dict:
    from tracelet.recorder.sysmetrics import SystemSampler

    with tempfile.TemporaryDirectory() as tmp:
        sampler = SystemSampler(tmp, interval_s=interval)
        ru0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        sampler.start()
        time.sleep(seconds)
        sampler.stop()
        wall = time.monotonic() - w0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
    process_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    steady = sampler.cpu_time_s - sampler.setup_cpu_s
    return {
        "wall_s": wall, "samples": sampler.samples_taken, "parts": sampler.parts_written,
        "thread_cpu_s": sampler.cpu_time_s, "setup_cpu_s": sampler.setup_cpu_s,
        "steady_cpu_s": steady, "thread_pct_core": 100 * sampler.cpu_time_s / wall,
        "steady_pct_core": 100 * steady / wall,
        "ms_per_sample": 1000 * steady / max(1, sampler.samples_taken),
        "process_pct_core": 100 * process_cpu / wall,
    }


def measure_kill(interval: float, flush_s: float, part_samples: int, kill_after: float) -> dict:
    kill_after += random.uniform(0, min(flush_s, part_samples * interval))
    from tracelet.sidecar import list_parts, read_part

    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(interval), str(flush_s), str(part_samples), tmp],
                                stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        run_dir = Path(proc.stdout.readline().split(" ", 1)[1].strip())
        taken = [0]

        def follow() -> None:  # the last count the child printed before it died
            for line in proc.stdout:
                if line.startswith("taken "):
                    taken[0] = int(line.split()[1])

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join(5)
        taken = taken[0]
        parts = list_parts(run_dir)
        persisted = len({t for p in parts for t in read_part(p).column("timestamp").to_pylist()})
    return {"taken": taken, "persisted": persisted, "parts": len(parts), "lost": max(0, taken - persisted),
            "killed_at_s": kill_after}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="CPU measurement window (s)")
    ap.add_argument("--interval", type=float, default=1.0, help="sampling interval (s)")
    ap.add_argument("--kill-after", type=float, default=15.0,
                    help="SIGKILL the child after this many s plus a random part of a flush interval")
    ap.add_argument("--flush-interval", type=float, default=10.0, help="metrics_flush_interval (s)")
    ap.add_argument("--part-samples", type=int, default=60, help="metrics_part_samples")
    ap.add_argument("--trials", type=int, default=3, help="SIGKILL trials")
    ap.add_argument("--skip-cpu", action="store_true")
    args = ap.parse_args()
    from tracelet.recorder.sysmetrics import loss_bound_samples

    print(f"# {platform.node()} {platform.processor() or platform.machine()} cpus={os.cpu_count()} "
          f"python {platform.python_version()} load={os.getloadavg()[0]:.2f}")
    if not args.skip_cpu:
        c = measure_cpu(args.seconds, args.interval)
        print(f"CPU overhead, interval {args.interval:g} s, {c['wall_s']:.1f} s wall, {c['samples']} samples, "
              f"{c['parts']} part(s):")
        print(f"  sampler thread       {c['thread_cpu_s']:.3f} CPU s = {c['thread_pct_core']:.3f} % of one core")
        print(f"    setup (one-off)    {c['setup_cpu_s']:.3f} CPU s")
        print(f"    steady state       {c['steady_cpu_s']:.3f} CPU s = {c['steady_pct_core']:.3f} % of one core, "
              f"{c['ms_per_sample']:.2f} ms CPU per sample")
        print(f"  whole process        {c['process_pct_core']:.3f} % of one core (main thread asleep)")
    bound = loss_bound_samples(args.interval, args.flush_interval, args.part_samples)
    print(f"SIGKILL after {args.kill_after:g} s, interval {args.interval:g} s, flush every "
          f"{args.flush_interval:g} s or {args.part_samples} samples (documented bound: {bound} lost, "
          f"+1 in progress):")
    lost: list[int] = []
    for i in range(args.trials):
        k = measure_kill(args.interval, args.flush_interval, args.part_samples, args.kill_after)
        lost.append(k["lost"])
        print(f"  trial {i + 1}: killed at {k['killed_at_s']:.1f} s: taken {k['taken']}, persisted "
              f"{k['persisted']} in {k['parts']} part(s), lost {k['lost']}")
    print(f"  lost: max {max(lost)}, mean {sum(lost) / len(lost):.1f} over {len(lost)} trial(s) (bound {bound})")


if __name__ == "__main__":
    main()
