#!/usr/bin/env python
"""Benchmark: `tracelet sync --to wandb` (offline) against the best bare W&B SDK loop.

Both write W&B offline runs into their own temporary WANDB_DIR, in this one process, side by
side (alternating when --repeats > 1):

- bare: the rows already in memory, one ``run.log({all tags of the step}, step=step)`` per
  TensorBoard step, between ``wandb.init`` and ``run.finish`` (what a hand-written exporter does
  at best, with no reading, no checkpoints and no exactly-once bookkeeping);
- tracelet: ``tracelet.sync`` of a PyTorch-style logdir holding the same points (one
  ``simple_value`` per event), end to end: reading, batching, checkpoints, W&B rows.

    python scripts/bench_wandb.py                     # 10 tags x 20,000 steps = 200k points
    python scripts/bench_wandb.py --tags 10 --steps 2000 --repeats 2
    python scripts/bench_wandb.py --runs 50 --tags 2 --steps 100   # per-run costs: 50 runs

With ``--runs N`` the logdir holds N runs of that size and the bare loop makes N runs
(``wandb.init`` ... ``run.finish()`` each): what a sync pays per run (opening, checkpoints, the
summary fragment that carries the run's Duration) against what the SDK itself pays per run.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def write_logdir(root: Path, tags: int, steps: int, runs: int = 1) -> int:
    import numpy as np
    from tensorboard.compat.proto import event_pb2, summary_pb2

    from tracelet.reader import frame_record

    first = root / "bench" / "run"
    first.mkdir(parents=True)
    rng = np.random.default_rng(0)
    values = rng.standard_normal((steps, tags)).astype(np.float32)
    names = [f"group{t % 3}/metric{t}" for t in range(tags)]
    chunks = [frame_record(event_pb2.Event(wall_time=1.7e9, file_version="brain.Event:2")
                           .SerializeToString())]
    for s in range(steps):
        for t in range(tags):
            ev = event_pb2.Event(step=s, wall_time=1.7e9 + s * 0.1, summary=summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag=names[t], simple_value=float(values[s, t]))]))
            chunks.append(frame_record(ev.SerializeToString()))
    data = b"".join(chunks)
    for k in range(runs):
        run = first if k == 0 else root / "bench" / f"run{k}"
        run.mkdir(parents=True, exist_ok=True)
        (run / "events.out.tfevents.1700000000.bench.1.0").write_bytes(data)
    return tags * steps * runs


def rows_in_memory(tags: int, steps: int) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(0)
    values = rng.standard_normal((steps, tags)).astype(np.float32)
    names = [f"group{t % 3}/metric{t}" for t in range(tags)]
    return [{names[t]: float(values[s, t]) for t in range(tags)} for s in range(steps)]


def bench_bare(rows: list[dict], wandb_dir: Path, runs: int = 1) -> float:
    import wandb

    t0 = time.perf_counter()
    for k in range(runs):
        run = wandb.init(project="bench", id=f"bare{int(t0 * 1000) % 10**9}x{k}",
                         dir=str(wandb_dir), reinit="create_new", settings=wandb.Settings(
                             mode="offline", silent=True, console="off", x_disable_stats=True,
                             x_disable_meta=True, x_save_requirements=False,
                             disable_git=True))
        for step, row in enumerate(rows):
            run.log(row, step=step)
        run.finish()
    return time.perf_counter() - t0


def bench_tracelet(logdir: Path, wandb_dir: Path) -> float:
    import tracelet

    os.environ["WANDB_DIR"] = str(wandb_dir)
    t0 = time.perf_counter()
    report = tracelet.sync(logdir, to="wandb", dest_config={"wandb_mode": "offline"},
                           state_dir=str(wandb_dir / "state"))
    elapsed = time.perf_counter() - t0
    if report.exit_code != 0:
        raise SystemExit(f"tracelet sync failed: {report.to_dict()}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tags", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=1, help="runs of --tags x --steps each")
    ap.add_argument("--repeats", type=int, default=3,
                    help="alternate bare/tracelet this many times; best of each is compared "
                         "(shared machines are noisy)")
    args = ap.parse_args()
    os.environ.setdefault("WANDB_SILENT", "true")
    work = Path(tempfile.mkdtemp(prefix="tracelet-bench-wandb-"))
    try:
        points = write_logdir(work / "logs", args.tags, args.steps, args.runs)
        rows = rows_in_memory(args.tags, args.steps)
        import wandb

        wandb.setup()  # start W&B's service before timing: both sides share it
        bare, ours = [], []
        for k in range(args.repeats):
            for name, fn in (("bare", lambda d: bench_bare(rows, d, args.runs)),
                             ("tracelet", lambda d: bench_tracelet(work / "logs", d))):
                d = work / f"{name}-{k}"
                d.mkdir()
                (bare if name == "bare" else ours).append(fn(d))
                shutil.rmtree(d / "wandb", ignore_errors=True)  # fresh run dirs next repeat
        b, t = min(bare), min(ours)
        print(f"wandb {wandb.__version__}, {points:,} points ({args.runs} run(s) x "
              f"{args.tags} tags x {args.steps:,} steps), best of {args.repeats} "
              f"(all runs: bare {', '.join(f'{x:.1f}' for x in bare)} s; "
              f"tracelet {', '.join(f'{x:.1f}' for x in ours)} s):")
        print(f"  bare SDK loop  : {b:7.2f} s  {points / b:10,.0f} points/s")
        print(f"  tracelet sync  : {t:7.2f} s  {points / t:10,.0f} points/s")
        print(f"  tracelet / bare throughput: {b / t:.2f}x"
              + (" (goal >= 0.8x)" if args.runs == 1 else ""))
        if args.runs > 1:
            print(f"  per run: bare {1000 * b / args.runs:.0f} ms, "
                  f"tracelet {1000 * t / args.runs:.0f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
