#!/usr/bin/env python
"""Benchmark the event-file reader: tracelet export vs tbparse vs a minimal raw loop, and memory.

Speed (one file of ``--points`` scalar events, one value per event, PyTorch layout)::

    tracelet export_logdir -> parquet   in this process
    tracelet export CLI -> parquet      subprocess, wall time incl. interpreter start + imports
    tbparse SummaryReader(dir).scalars  subprocess, time excl. import
    raw loop                            subprocess: read file, crc32c of length and payload,
                                        Event.FromString, build an Arrow table: the floor for a
                                        pure-Python reader

Memory: peak RSS of ``tracelet export`` (CLI, subprocess, ``os.wait4`` rusage) on a 1M-point file
vs a ``--memory-points`` file; flat memory means a ratio near 1.0. Writing 20M one-value events
takes about 5 minutes on 2 shared cores (reading them with the pure-Python reader about 7 more),
so by default the big file holds ``--memory-values-per-event`` 10 values per event: 2M events for
20M points. Pass ``--memory-values-per-event 1`` for the realistic (slow) layout.

Examples::

    .venv/bin/python scripts/bench_reader.py                      # 1M speed + 1M vs 20M memory
    .venv/bin/python scripts/bench_reader.py --points 100000 --memory-points 2000000
    .venv/bin/python scripts/bench_reader.py --dir .bench --skip-tbparse   # keeps files for reuse
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import warm_env  # noqa: E402 - scripts/ (this script's folder)

WALL0 = 1_700_000_000.0
_CHUNK_EVENTS = 100_000  # events framed per write(): bounds the writer's memory


NO_FASTSCAN_ENV = "TRACELET_NO_FASTSCAN"  # the reader's switch to its pure-Python path


def reader_kind() -> str:
    try:
        import tracelet.reader._fastscan  # noqa: F401
    except ImportError:
        return "pure-Python reader (tracelet.reader._fastscan not importable)"
    if os.environ.get(NO_FASTSCAN_ENV, "").strip() not in ("", "0"):
        return f"pure-Python reader ({NO_FASTSCAN_ENV}=1; the C extension is built but unused)"
    return "C reader (import tracelet.reader._fastscan succeeds)"


# -- writing ---------------------------------------------------------------------------------------

def write_logdir(logdir: Path, events: int, values_per_event: int) -> Path:
    """One run, one PyTorch-named event file; reused when a previous run wrote the same thing."""
    from tensorboard.compat.proto import event_pb2, summary_pb2

    from tracelet.reader import frame_record

    run = logdir / "run"
    path = run / "events.out.tfevents.1700000000.benchhost.1.0"
    stamp = logdir.parent / f"{logdir.name}.json"
    want = {"events": events, "values_per_event": values_per_event}
    if path.exists() and stamp.exists():
        have = json.loads(stamp.read_text())
        if {k: have.get(k) for k in want} == want and have.get("size") == path.stat().st_size:
            print(f"  reusing {path} ({have['size'] / 1e6:.1f} MB)", flush=True)
            return path
    shutil.rmtree(logdir, ignore_errors=True)
    run.mkdir(parents=True)
    t0 = time.perf_counter()
    tags = ["loss"] if values_per_event == 1 else [f"metric/{j}" for j in range(values_per_event)]
    # One Event mutated in place: building a fresh nested proto per event costs ~4x more.
    ev = event_pb2.Event(summary=summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=t, simple_value=0.0) for t in tags]))
    values = list(ev.summary.value)
    with open(path, "wb") as f:
        first = event_pb2.Event(wall_time=WALL0, file_version="brain.Event:2")
        f.write(frame_record(first.SerializeToString()))
        for start in range(0, events, _CHUNK_EVENTS):
            frames = []
            for i in range(start, min(events, start + _CHUNK_EVENTS)):
                ev.step = i
                ev.wall_time = WALL0 + i * 0.01
                for j, v in enumerate(values):
                    v.simple_value = 1.0 / (1 + i + j)
                frames.append(frame_record(ev.SerializeToString()))
            f.write(b"".join(frames))
    size = path.stat().st_size
    stamp.write_text(json.dumps({**want, "size": size}))
    print(f"  wrote {events:,} events x {values_per_event} value(s) = "
          f"{events * values_per_event:,} points, {size / 1e6:.1f} MB in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    return path


# -- contestants run in subprocesses ---------------------------------------------------------------

def worker(kind: str, logdir: str) -> None:
    """Run one contestant in this (child) process; print ``{"seconds", "rows"}`` as JSON."""
    if kind == "tbparse":
        import warnings

        from tbparse import SummaryReader

        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = len(SummaryReader(logdir).scalars)
    elif kind == "raw":
        import pyarrow as pa  # noqa: F401 - import outside the timed region, like tbparse

        from tensorboard.compat.proto import event_pb2  # noqa: F401

        t0 = time.perf_counter()
        rows = raw_loop(sorted(Path(logdir).rglob("events.out.tfevents.*"))).num_rows
    else:
        raise SystemExit(f"unknown worker {kind}")
    print(json.dumps({"seconds": time.perf_counter() - t0, "rows": rows}))


def raw_loop(paths):
    """The floor: whole file in memory, both CRCs, ``Event.FromString``, one Arrow table."""
    import pyarrow as pa
    from crc32c import crc32c
    from tensorboard.compat.proto import event_pb2

    parse = event_pb2.Event.FromString
    header, footer = struct.Struct("<QI").unpack_from, struct.Struct("<I").unpack_from
    tags, steps, walls, vals = [], [], [], []
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        pos, n = 0, len(data)
        while pos + 12 <= n:
            length, length_crc = header(data, pos)
            c = crc32c(data[pos:pos + 8])
            if ((((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF) != length_crc:
                raise ValueError(f"{path}: corrupt at {pos}")
            start = pos + 12
            end = start + length
            if end + 4 > n:
                break
            payload = data[start:end]
            c = crc32c(payload)
            pos = end + 4
            if ((((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF) != footer(data, end)[0]:
                continue
            ev = parse(payload)
            for v in ev.summary.value:
                tags.append(v.tag)
                steps.append(ev.step)
                walls.append(ev.wall_time)
                vals.append(v.simple_value)
    return pa.table({"tag": pa.array(tags, pa.string()), "step": pa.array(steps, pa.int64()),
                     "wall_time": pa.array(walls, pa.float64()),
                     "value": pa.array(vals, pa.float64())})


# Peak RSS must be measured from a small launcher: on exec, Linux folds the *parent's* high-water
# RSS (shared through fork/vfork) into the child's ru_maxrss, so a child spawned straight from this
# process (pyarrow, tensorboard and a finished export in memory) would report our RSS, not its own.
_LAUNCHER = """
import json, os, sys, time
t0 = time.perf_counter()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"wall_s": time.perf_counter() - t0, "exit": os.waitstatus_to_exitcode(status),
               "maxrss_kib": usage.ru_maxrss}, f)
"""


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, int, str]:
    """Run ``cmd``; return (wall seconds, peak RSS bytes of that process alone, stdout)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "rusage.json"
        proc = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, str(result), *cmd],
                              capture_output=True, text=True, env=env)
        info = json.loads(result.read_text()) if result.exists() else {"exit": proc.returncode}
    if info["exit"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({info['exit']}):\n{proc.stderr[-2000:]}")
    return info["wall_s"], info["maxrss_kib"] * 1024, proc.stdout  # ru_maxrss: KiB on Linux


def tracelet_cli() -> list[str]:
    script = Path(sys.executable).with_name("tracelet")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tracelet.cli"]


def count_rows(parquet: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(parquet).metadata.num_rows


# -- the two modes ---------------------------------------------------------------------------------

def bench_speed(root: Path, points: int, with_tbparse: bool) -> dict:
    import pandas  # noqa: F401 - pyarrow imports it on first pa.array(list): keep it out of timings
    import pyarrow.parquet  # noqa: F401

    from tracelet.export import export_logdir

    print(f"speed: {points:,} scalar events, one value each", flush=True)
    logdir = root / f"speed-{points}"
    write_logdir(logdir, points, 1)
    out = root / "out"
    out.mkdir(exist_ok=True)
    rows: list[tuple[str, float, int | None, int, str]] = []

    t0 = time.perf_counter()
    summary = export_logdir(logdir, out / "inproc.parquet")
    rows.append(("tracelet export_logdir (in-process)", time.perf_counter() - t0, None,
                 count_rows(out / "inproc.parquet"), "parquet; excl. imports"))
    assert not summary.problems, summary.problems
    (out / "inproc.parquet").unlink()

    # The CLI against a floor process (interpreter start, read the file, crc32c of its bytes),
    # both with a warm byte-code cache: the machine sets PYTHONDONTWRITEBYTECODE=1, which
    # would make every run recompile what it imports.
    warm = warm_env(root / "pycache")
    event_file = next((logdir / "run").iterdir())
    floor_cmd = [sys.executable, "-c", "import sys, crc32c; crc32c.crc32c(open(sys.argv[1], "
                 "'rb').read())", str(event_file)]
    cli_cmd = tracelet_cli() + ["export", str(logdir), "-o", str(out / "cli.parquet")]
    run_measured(cli_cmd, env=warm)  # fills the cache
    run_measured(floor_cmd, env=warm)
    cli_s, floor_s, cli_rss = [], [], 0
    for _ in range(3):  # alternated, best of each
        wall, rss, _ = run_measured(cli_cmd, env=warm)
        cli_s.append(wall)
        cli_rss = max(cli_rss, rss)
        floor_s.append(run_measured(floor_cmd, env=warm)[0])
    rows.append(("tracelet export (CLI subprocess)", min(cli_s), cli_rss,
                 count_rows(out / "cli.parquet"),
                 "parquet; incl. interpreter start + imports; warm byte-code cache"))
    rows.append(("floor: start + read + crc32c (subprocess)", min(floor_s), None, points,
                 "warm byte-code cache"))
    (out / "cli.parquet").unlink()

    me = [sys.executable, os.path.abspath(__file__), "--worker"]
    if with_tbparse:
        wall, rss, stdout = run_measured(me + ["tbparse", str(logdir)])
        res = json.loads(stdout.strip().splitlines()[-1])
        rows.append(("tbparse SummaryReader(dir).scalars", res["seconds"], rss, res["rows"],
                     "DataFrame; excl. import"))
    wall, rss, stdout = run_measured(me + ["raw", str(logdir)])
    res = json.loads(stdout.strip().splitlines()[-1])
    rows.append(("raw loop (crc32c x2 + FromString + Arrow)", res["seconds"], rss, res["rows"],
                 "Arrow table; excl. import"))

    print(f"\n{'':44}{'seconds':>9}{'points/s':>12}{'peak RSS':>11}{'rows':>12}  note")
    for name, sec, rss, n, note in rows:
        rss_s = f"{rss / 2**20:.0f} MiB" if rss else "-"
        print(f"{name:44}{sec:9.2f}{points / sec:12,.0f}{rss_s:>11}{n:12,}  {note}")
    tracelet_s = rows[0][1]
    raw_s = rows[-1][1]
    ratios = {"tracelet/raw": tracelet_s / raw_s, "cli/floor": rows[1][1] / rows[2][1]}
    print()
    if with_tbparse:
        ratios["tbparse/tracelet"] = rows[3][1] / tracelet_s
        print(f"tbparse / tracelet (in-process) = {ratios['tbparse/tracelet']:.1f}x")
    print(f"tracelet (in-process) / raw loop = {ratios['tracelet/raw']:.2f}x")
    print(f"tracelet export CLI / floor process = {ratios['cli/floor']:.1f}x (goal <= 5x; both "
          "with a warm byte-code cache)")
    bad = [r for r in rows if r[3] != points]
    if bad:
        print(f"WARNING: row counts differ from {points:,}: {bad}")
    return {"rows": rows, "ratios": ratios}


def bench_memory(root: Path, small_points: int, big_points: int, per_event: int) -> dict:
    print(f"\nmemory: tracelet export (CLI) peak RSS, {small_points:,} vs {big_points:,} points "
          f"(big file: {big_points // per_event:,} events x {per_event} values)", flush=True)
    small = root / f"speed-{small_points}"
    write_logdir(small, small_points, 1)
    big = root / f"memory-{big_points}x{per_event}"
    write_logdir(big, big_points // per_event, per_event)
    out = root / "out"
    out.mkdir(exist_ok=True)
    res = {}
    for label, logdir, n in (("small", small, small_points),
                             ("big", big, big_points // per_event * per_event)):
        wall, rss, _ = run_measured(tracelet_cli() + ["export", str(logdir), "-o",
                                                      str(out / "mem.parquet")])
        rows = count_rows(out / "mem.parquet")
        (out / "mem.parquet").unlink()
        res[label] = (wall, rss, rows)
        print(f"  {n:>12,} points: peak RSS {rss / 2**20:7.0f} MiB, {wall:7.1f} s, "
              f"{rows:,} rows written", flush=True)
    ratio = res["big"][1] / res["small"][1]
    print(f"  peak RSS ratio big/small = {ratio:.2f}x for "
          f"{res['big'][2] / res['small'][2]:.0f}x the points")
    return {"ratio": ratio, **res}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=1_000_000, help="events in the speed file")
    ap.add_argument("--memory-points", type=int, default=20_000_000,
                    help="points in the big file of the memory mode")
    ap.add_argument("--memory-values-per-event", type=int, default=10,
                    help="scalar values per event in the big memory file (1 = realistic, slow)")
    ap.add_argument("--dir", type=Path, default=None,
                    help="where to write the event files (kept, and reused by the next run)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-tbparse", action="store_true", help="tbparse takes ~50 us/event")
    ap.add_argument("--python-reader", action="store_true",
                    help=f"set {NO_FASTSCAN_ENV}=1: measure the pure-Python reader even where the "
                         "C extension is built")
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "LOGDIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return

    if args.python_reader:
        os.environ[NO_FASTSCAN_ENV] = "1"  # read per call by the reader; inherited by children
    import pyarrow

    print(f"reader: {reader_kind()}")
    print(f"python {platform.python_version()}, pyarrow {pyarrow.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    root = args.dir.resolve() if args.dir else Path(tempfile.mkdtemp(prefix="tracelet-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        if not args.skip_speed:
            bench_speed(root, args.points, not args.skip_tbparse)
        if not args.skip_memory:
            bench_memory(root, args.points, args.memory_points, args.memory_values_per_event)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
