"""Helpers shared by the recorder tests (imported by name: tests/recorder has no __init__)."""
from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

FAST = {"track_env": False, "track_git": False}  # captures covered by their own tests


@dataclass
class RunContents:
    """A run as the reader sees it."""

    path: Path
    manifest: dict | None
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    hparams: list[dict] = field(default_factory=list)
    images: list = field(default_factory=list)
    histograms: list = field(default_factory=list)
    texts: list = field(default_factory=list)
    corrupt: list = field(default_factory=list)
    parts: list = field(default_factory=list)  # Arrow tables

    def sysmetric_names(self) -> set[str]:
        return {n for t in self.parts for n in t.column("name").to_pylist()}


def read_run(run_dir: Path) -> RunContents:
    from tracelet.manifest import load_manifest
    from tracelet.reader import EventFileReader, discover_runs
    from tracelet.sidecar import list_parts, read_part

    run_dir = Path(run_dir)
    runs = {r.path: r for r in discover_runs(run_dir.parent).runs}
    assert run_dir in runs, f"{run_dir} is not discovered as a run: {list(runs)}"
    problems: list[str] = []
    out = RunContents(run_dir, load_manifest(run_dir, problems))
    assert not problems, f"the recorder wrote a manifest that does not validate: {problems}"
    for f in runs[run_dir].event_files:
        reader = EventFileReader(f)
        for b in reader.batches():
            for tag, step, value in zip(b.scalars.tags, b.scalars.steps, b.scalars.values):
                out.scalars.setdefault(tag, []).append((step, value))
            out.hparams += [h.hparams for h in b.hparams]
            out.images += b.images
            out.histograms += b.histograms
            out.texts += b.texts
        if reader.status.corrupt_offset is not None:
            out.corrupt.append((f, reader.status.corrupt_reason))
    out.parts = [read_part(p) for p in list_parts(run_dir)]
    return out


def run_dirs(logdir: Path) -> list[Path]:
    return sorted(p.parent for p in Path(logdir).rglob("tracelet.json"))


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env.pop("TRACELET_CRASH_AT", None)
    return env


def wait_for_line(proc: subprocess.Popen, needle: str, timeout_s: float = 30.0) -> list[str]:
    """Read the child's stdout until a line containing ``needle``; return the lines read."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if needle in line:
            return lines
    proc.kill()
    raise AssertionError(f"child never printed {needle!r}; got {lines}; stderr: {proc.stderr.read()}")


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
