"""``tracelet inspect``: what is in a logdir (or one event file), without sending anything.

Per run: tags by kind with point counts, step and wall-time ranges and the last scalar value;
per file: size, records, points; and every truncated tail, corrupt record and skipped record
with its file and byte offset. Reads every record once, streaming (memory stays flat).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .export import FileScan, HPARAMS_TAG, resolve_logdir
from .reader import AUDIO, HISTOGRAM, HPARAMS, IMAGE, KINDS, SCALAR, TEXT, Batch, root_run_name


def iso_utc(unix_s: float | None) -> str | None:
    """``2024-05-01T12:00:03Z`` for a unix time; None stays None."""
    if unix_s is None or not math.isfinite(unix_s):
        return None
    try:
        when = datetime.fromtimestamp(unix_s, timezone.utc)
    except (OverflowError, OSError, ValueError):  # a writer's broken clock (1e300 s): no date
        return None
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class TagStats:
    """One (kind, tag) of a run: how many points, over which steps and times."""

    tag: str
    kind: str
    points: int = 0
    step_min: int | None = None
    step_max: int | None = None
    wall_min: float | None = None
    wall_max: float | None = None
    last_value: float | None = None  # scalars: value of the last point read

    def add(self, points: int, step_min: int, step_max: int, wall_min: float, wall_max: float,
            last_value: float | None = None) -> None:
        self.points += points
        self.step_min = step_min if self.step_min is None else min(self.step_min, step_min)
        self.step_max = step_max if self.step_max is None else max(self.step_max, step_max)
        self.wall_min = wall_min if self.wall_min is None else min(self.wall_min, wall_min)
        self.wall_max = wall_max if self.wall_max is None else max(self.wall_max, wall_max)
        if last_value is not None:
            self.last_value = last_value

    def to_dict(self) -> dict:
        return {"tag": self.tag, "kind": self.kind, "points": self.points,
                "step_min": self.step_min, "step_max": self.step_max,
                "wall_time_first": iso_utc(self.wall_min), "wall_time_last": iso_utc(self.wall_max),
                "last_value": self.last_value}


@dataclass
class FileStats:
    path: Path
    size_bytes: int = 0
    records: int = 0
    points: int = 0
    state: str = "ok"  # short label: ok | corrupt at byte N | incomplete tail at byte N | …
    notes: list[str] = field(default_factory=list)  # truncated / corrupt / skipped, with offsets

    def to_dict(self) -> dict:
        return {"path": str(self.path), "size_bytes": self.size_bytes, "records": self.records,
                "points": self.points, "state": self.state, "notes": list(self.notes)}


@dataclass
class RunStats:
    name: str
    path: Path
    files: list[FileStats] = field(default_factory=list)
    tags: dict[tuple[str, str], TagStats] = field(default_factory=dict)  # (kind, tag) -> stats
    other: dict[str, int] = field(default_factory=dict)  # values read but of no point kind

    def _tag(self, kind: str, tag: str) -> TagStats:
        key = (kind, tag)
        st = self.tags.get(key)
        if st is None:
            st = self.tags[key] = TagStats(tag, kind)
        return st

    def add_batch(self, batch: Batch) -> None:
        if len(batch.scalars):
            grouped = batch.scalars.to_arrow().group_by("tag", use_threads=False).aggregate([
                ("step", "min"), ("step", "max"), ("wall_time", "min"), ("wall_time", "max"),
                ("value", "count"), ("value", "last")])
            for row in grouped.to_pylist():
                self._tag(SCALAR, row["tag"]).add(
                    row["value_count"], row["step_min"], row["step_max"], row["wall_time_min"],
                    row["wall_time_max"], row["value_last"])
        for kind, points in ((HISTOGRAM, batch.histograms), (IMAGE, batch.images),
                             (TEXT, batch.texts), (AUDIO, batch.audio)):
            for p in points:
                self._tag(kind, p.tag).add(1, p.step, p.step, p.wall_time, p.wall_time)
        for hp in batch.hparams:
            self._tag(HPARAMS, HPARAMS_TAG).add(1, hp.step, hp.step, hp.wall_time, hp.wall_time)
        for name, n in batch.other.items():
            self.other[name] = self.other.get(name, 0) + n

    @property
    def points(self) -> dict[str, int]:
        out = {k: 0 for k in KINDS}
        for st in self.tags.values():
            out[st.kind] += st.points
        return out

    def _range(self, lo: str, hi: str):
        lows = [getattr(t, lo) for t in self.tags.values() if getattr(t, lo) is not None]
        highs = [getattr(t, hi) for t in self.tags.values() if getattr(t, hi) is not None]
        return (min(lows) if lows else None), (max(highs) if highs else None)

    @property
    def step_range(self) -> tuple[int | None, int | None]:
        return self._range("step_min", "step_max")

    @property
    def wall_range(self) -> tuple[float | None, float | None]:
        return self._range("wall_min", "wall_max")

    @property
    def notes(self) -> list[str]:
        return [n for f in self.files for n in f.notes]

    def to_dict(self) -> dict:
        steps, walls = self.step_range, self.wall_range
        tags_by_kind: dict[str, list[str]] = {}
        for kind, tag in sorted(self.tags, key=lambda kt: (KINDS.index(kt[0]), kt[1])):
            tags_by_kind.setdefault(kind, []).append(tag)
        return {
            "name": self.name, "path": str(self.path),
            "points": self.points, "tags": tags_by_kind,
            "step_min": steps[0], "step_max": steps[1],
            "wall_time_first": iso_utc(walls[0]), "wall_time_last": iso_utc(walls[1]),
            "wall_time_first_unix": walls[0], "wall_time_last_unix": walls[1],
            "tag_stats": [t.to_dict() for t in self._sorted_tags()],
            "files": [f.to_dict() for f in self.files],
            "other": dict(self.other), "notes": self.notes,
        }

    def _sorted_tags(self) -> list[TagStats]:
        return sorted(self.tags.values(), key=lambda t: (KINDS.index(t.kind), t.tag))


@dataclass
class InspectReport:
    """What :func:`inspect_path` found: runs, their tags and files, and every problem."""

    path: Path
    runs: list[RunStats] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # folder-level: unreadable, symlink loops

    @property
    def all_problems(self) -> list[str]:
        return self.problems + [n for r in self.runs for n in r.notes]

    def to_dict(self) -> dict:
        totals = {k: 0 for k in KINDS}
        for r in self.runs:
            for k, n in r.points.items():
                totals[k] += n
        return {"path": str(self.path), "runs": [r.to_dict() for r in self.runs],
                "points": totals, "files": sum(len(r.files) for r in self.runs),
                "problems": self.all_problems}

    def render(self) -> str:
        lines: list[str] = []
        nfiles = sum(len(r.files) for r in self.runs)
        size = sum(f.size_bytes for r in self.runs for f in r.files)
        lines.append(f"{self.path}: {len(self.runs)} run{'' if len(self.runs) == 1 else 's'}, "
                     f"{nfiles} event file{'' if nfiles == 1 else 's'}, {_size(size)}")
        for run in self.runs:
            lines.append("")
            lines.extend(_render_run(run))
        problems = self.all_problems
        if problems:
            lines.append("")
            lines.append(f"problems ({len(problems)}):")
            lines.extend(f"  ! {p}" for p in problems)
        return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _num(x) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:.6g}"
    return f"{x:,}"


def _steps(lo, hi) -> str:
    if lo is None:
        return ""
    return f"{lo}" if lo == hi else f"{lo}..{hi}"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [fmt(header)] + [fmt(r) for r in rows]


def _render_run(run: RunStats) -> list[str]:
    counts = ", ".join(f"{n:,} {k}" for k, n in run.points.items() if n) or "no points"
    walls = run.wall_range
    head = f"run {run.name}  ({counts}; steps {_steps(*run.step_range) or '-'}"
    if walls[0] is not None:
        head += f"; {iso_utc(walls[0])} .. {iso_utc(walls[1])}"
    lines = [head + ")"]
    rows = [[t.kind, t.tag, _num(t.points), _steps(t.step_min, t.step_max),
             iso_utc(t.wall_min) or "", iso_utc(t.wall_max) or "", _num(t.last_value)]
            for t in run._sorted_tags()]
    if rows:
        lines += ["  " + ln for ln in _table(
            ["kind", "tag", "points", "steps", "first", "last", "last value"], rows, {2, 6})]
    if run.other:
        lines.append("  not points: "
                     + ", ".join(f"{k} {n:,}" for k, n in sorted(run.other.items())))
    file_rows = [[_rel(f.path, run.path), _size(f.size_bytes), _num(f.records), _num(f.points),
                  f.state] for f in run.files]
    lines += ["  " + ln for ln in _table(["file", "size", "records", "points", "state"],
                                         file_rows, {1, 2, 3})]
    return lines


def _rel(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def inspect_path(path) -> InspectReport:
    """Summarise the runs under ``path`` (a logdir, or a single event file).

    Raises :class:`UsageError` for a missing path or a folder without event files. Damaged
    files are read up to the damage; each problem becomes a note with file and byte offset.
    """
    discovery, single = resolve_logdir(path, allow_file=True)
    shown = discovery.logdir if discovery is not None else single  # Path, or ObjectPath (URL)
    if single is not None:
        report = InspectReport(shown if shown is not None else Path(path))
        sources = [(root_run_name(single.parent), single.parent, [single], None)]
    else:
        report = InspectReport(shown, problems=list(discovery.problems))
        sources = [(r.name, r.path, r.event_files, r.location) for r in discovery.runs
                   if r.event_files]
    for name, run_path, files, location in sources:
        run = RunStats(name, run_path)
        for fpath in files:
            scan = FileScan(fpath, location)
            for batch in scan.batches():
                run.add_batch(batch)
            run.files.append(FileStats(scan.path, scan.size_bytes, scan.records, scan.points,
                                       scan.state(), scan.problems()))
        report.runs.append(run)
    return report
