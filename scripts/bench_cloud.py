#!/usr/bin/env python3
"""Object-storage benchmarks on a local S3 server (moto in server mode on 127.0.0.1).

1. export: `tracelet export s3://…` of a 1M-point event file vs downloading the object and
   running `tracelet export` on the local copy vs tbparse on the downloaded copy.
2. append resync: after a full sync, the writer re-uploads the object 10% longer; bytes the
   resync reads from the bucket (from `tracelet sync --json`, `storage.bytes_read`) vs the
   bytes added and vs the object's size. Goal: ≈ the new bytes.
3. no-op resync: `tracelet sync` (the CLI, as cron runs it) over 1000 unchanged runs vs 10:
   listing requests (the measure that counts against a real bucket), GETs, and wall time.
   Goal: ratio <= 1.5 in listing calls, no GET at all.

The destination is Tracelet's journaled `memory` destination: what is measured is the reading
side, and a tracker's write speed would only blur it.

Usage: .venv/bin/python scripts/bench_cloud.py [--points 1000000] [--runs 1000]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import WARM_NOTE, fill_cache, warm_env  # noqa: E402
from bench_sync_mlflow import write_points  # noqa: E402

EV = "events.out.tfevents.1700000000.bench.1.0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto server did not start")


def cli(*args, env, json_out=False) -> tuple[float, dict | None]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "tracelet.cli", *args], env=env,
                       capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"tracelet {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return dt, (json.loads(p.stdout) if json_out else None)


def bench_export(s3, bucket: str, work: Path, env: dict, points: int) -> dict:
    from tbparse import SummaryReader

    local = work / "big" / EV
    write_points(local, points)
    size = local.stat().st_size
    s3.upload_file(str(local), bucket, f"big/run/{EV}")
    t_cloud, _ = cli("export", f"s3://{bucket}/big", "-o", str(work / "cloud.parquet"), env=env)

    def download() -> Path:
        d = work / "dl" / "run"
        shutil.rmtree(work / "dl", ignore_errors=True)
        d.mkdir(parents=True)
        s3.download_file(bucket, f"big/run/{EV}", str(d / EV))
        return work / "dl"

    t0 = time.perf_counter()
    dl = download()
    t_dl = time.perf_counter() - t0
    t_local, _ = cli("export", str(dl), "-o", str(work / "local.parquet"), env=env)
    t0 = time.perf_counter()
    dl = download()
    rows = len(SummaryReader(str(dl)).scalars)
    t_tbparse = time.perf_counter() - t0
    assert rows == points, (rows, points)
    return {"points": points, "bytes": size, "cloud_s": t_cloud, "download_s": t_dl,
            "download_export_s": t_dl + t_local, "download_tbparse_s": t_tbparse}


def bench_append(s3, bucket: str, work: Path, env: dict, points: int) -> dict:
    local = work / "grow" / EV
    write_points(local, points)
    s3.upload_file(str(local), bucket, f"grow/run/{EV}")
    state = work / "state-grow"
    args = ("sync", f"s3://{bucket}/grow", "--to", "memory", "--state-dir", str(state), "--json")
    _, first = cli(*args, env=env, json_out=True)
    before = local.stat().st_size
    extra = work / "extra" / EV
    write_points(extra, points // 10)
    with open(local, "ab") as f:  # the same stream, 10% longer (header record left out)
        data = extra.read_bytes()
        from tracelet.reader.records import HEADER_BYTES, FOOTER_BYTES
        import struct

        n = struct.unpack("<Q", data[:8])[0]
        f.write(data[HEADER_BYTES + n + FOOTER_BYTES:])
    added = local.stat().st_size - before
    s3.upload_file(str(local), bucket, f"grow/run/{EV}")  # re-uploaded whole, as S3 writers do
    t, second = cli(*args, env=env, json_out=True)
    st = next(iter(second["storage"].values()))
    return {"object_bytes": local.stat().st_size, "added_bytes": added,
            "first_read_bytes": next(iter(first["storage"].values()))["bytes_read"],
            "resync_read_bytes": st["bytes_read"], "resync_gets": st["get_calls"],
            "resync_points": second["totals"]["memory"]["points"], "resync_s": t}


def bench_noop(s3, bucket: str, work: Path, env: dict, many: int, few: int) -> dict:
    from tracelet.reader import frame_record
    from tensorboard.compat.proto import event_pb2, summary_pb2

    body = b"".join(frame_record(event_pb2.Event(
        step=s, wall_time=1.7e9 + s, summary=summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(tag="loss", simple_value=1.0 / (s + 1))])).SerializeToString())
        for s in range(20))
    out = {}
    for n in (few, many):
        prefix = f"noop{n}"
        for i in range(n):
            s3.put_object(Bucket=bucket, Key=f"{prefix}/run{i:05d}/{EV}", Body=body)
        args = ("sync", f"s3://{bucket}/{prefix}", "--to", "memory", "--state-dir",
                str(work / f"state-{n}"), "--json")
        cli(*args, env=env, json_out=True)  # the first sync sends everything
        times, last = [], None
        for _ in range(3):
            t, last = cli(*args, env=env, json_out=True)
            times.append(t)
        st = next(iter(last["storage"].values()))
        assert last["totals"]["memory"]["runs_unchanged"] == n, last["totals"]
        out[n] = {"s": min(times), "list_calls": st["list_calls"], "get_calls": st["get_calls"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--few", type=int, default=10)
    a = ap.parse_args()
    import boto3

    work = Path(tempfile.mkdtemp(prefix="tracelet-bench-cloud-"))
    proc, endpoint = start_moto(work / "moto.log")
    creds = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench",
             "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    env = warm_env(work / "pycache", {**os.environ, **creds,
                                      "TRACELET_MEMORY_STORE": str(work / "memory.journal")})
    fill_cache(env, "tracelet.cli", "tracelet.storage", "tracelet.destinations.memory.client",
               "s3fs")
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench",
                      aws_secret_access_key="bench", region_name="us-east-1")
    bucket = "tracelet-bench"
    s3.create_bucket(Bucket=bucket)
    print(f"moto server {endpoint}; cores: {os.cpu_count()}; load avg: {os.getloadavg()[0]:.1f}; "
          f"{WARM_NOTE}")
    try:
        e = bench_export(s3, bucket, work, env, a.points)
        print(f"export of {e['points']:,} points ({e['bytes'] / 2**20:.1f} MiB object): "
              f"tracelet export s3:// {e['cloud_s']:.2f} s; download + tracelet export "
              f"{e['download_export_s']:.2f} s (download {e['download_s']:.2f} s); download + "
              f"tbparse {e['download_tbparse_s']:.2f} s")
        g = bench_append(s3, bucket, work, env, a.points)
        print(f"10% append resync: object {g['object_bytes']:,} B, added {g['added_bytes']:,} B; "
              f"resync read {g['resync_read_bytes']:,} B in {g['resync_gets']} GETs "
              f"({g['resync_read_bytes'] / g['added_bytes']:.3f}x the new bytes, "
              f"{g['resync_read_bytes'] / g['object_bytes']:.3f}x the object), "
              f"{g['resync_points']:,} points, {g['resync_s']:.2f} s "
              f"(first sync read {g['first_read_bytes']:,} B)")
        n = bench_noop(s3, bucket, work, env, a.runs, a.few)
        few, many = n[a.few], n[a.runs]
        print(f"no-op resync (CLI): {a.few} runs {few['s']:.2f} s, {few['list_calls']} listing "
              f"call(s), {few['get_calls']} GETs; {a.runs} runs {many['s']:.2f} s, "
              f"{many['list_calls']} listing call(s), {many['get_calls']} GETs; ratio "
              f"{many['list_calls'] / few['list_calls']:.2f}x in listing calls (goal <= 1.5), "
              f"{many['s'] / few['s']:.2f}x in time")
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
