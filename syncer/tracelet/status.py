"""``tracelet status``: runs x destinations — points synced, bytes behind, last sync, last error.

Reads only checkpoints and ``stat`` results: no destination is contacted, no event file read.
A logdir in object storage costs one listing (sizes from it) and needs the same ``--state-dir``
its syncs use.
"""
from __future__ import annotations

import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .checkpoint import CheckpointStore
from .engine import run_id_for, state_dir_for
from .errors import InvalidCheckpointError, SourceError, StateError, UsageError
from .manifest import load_manifest
from .redact import scrub
from .reader import discover_runs
from .retry import _short
from .runfiles import RunFiles
from .storage import is_object_url, open_location
from .storage.runs import sidecar_parts as object_parts


def _size(run, path) -> int:
    if run.location is None:
        return os.stat(path).st_size
    entry = run.location.entry(path)
    if entry is None:
        raise FileNotFoundError(str(path))
    return entry.size


@dataclass
class StatusRow:
    logdir: str
    run: str
    destination: str
    target_key: str
    points_synced: int = 0
    bytes_behind: int = 0
    files_behind: int = 0
    sidecar_parts_behind: int = 0
    last_sync: float | None = None
    status: str | None = None
    last_error: str | None = None
    state: str = "never synced"  # up to date | behind | failed | bad checkpoint | never synced
    problems: list[str] = field(default_factory=list)
    quarantined: dict[str, int] = field(default_factory=dict)  # refused for good, per kind


@dataclass
class StatusTable:
    rows: list[StatusRow]
    tracebacks: list[str] = field(default_factory=list)  # of unexpected errors, with verbose

    def to_dict(self) -> dict:
        return {"runs": [asdict(r) for r in self.rows]}

    def render(self, only_failed: bool = False) -> str:
        """The table; ``only_failed`` (``-q``): failed rows only, nothing when there are none."""
        rows = [r for r in self.rows if r.state == "failed"] if only_failed else self.rows
        if not rows:
            return "" if only_failed else "no runs found"
        head = ("RUN", "DEST", "STATE", "POINTS", "BEHIND", "LAST SYNC", "ERROR")
        lines = []
        for r in rows:
            behind = _human_bytes(r.bytes_behind) if r.bytes_behind else "-"
            if r.sidecar_parts_behind:
                behind += f" +{r.sidecar_parts_behind} parts"
            last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.last_sync)) \
                if r.last_sync else "-"
            err = (r.last_error or "; ".join(r.problems) or "")[:80]
            lines.append((r.run, r.destination, r.state, f"{r.points_synced:,}", behind, last, err))
        widths = [max(len(str(x[i])) for x in [head, *lines]) for i in range(len(head))]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        return "\n".join(fmt.format(*row).rstrip() for row in [head, *lines])


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def collect_status(logdirs: list[str], destinations: list[str] | None,
                   state_dir: str | None, verbose: bool = False) -> StatusTable:
    """Each logdir, and each run in it, inside its own error boundary: an unexpected error
    becomes a ``failed`` row naming the run (traceback kept with ``verbose``); the rest go on."""
    table = StatusTable([])
    for ld in logdirs:
        if is_object_url(ld):  # one listing; --state-dir is required (UsageError otherwise)
            loc = open_location(ld)
            root = loc.root
            store = CheckpointStore(state_dir_for(root, state_dir))
        else:
            root = Path(ld)
            if not root.is_dir():
                raise UsageError(f"{ld}: no such folder. Give the logdir you sync.")
            loc = root
        try:
            store = CheckpointStore(state_dir_for(root, state_dir))
            runs = discover_runs(loc).runs
            ck_dirs = sorted(p.name for p in (store.root / "checkpoints").glob("*")) \
                if (store.root / "checkpoints").is_dir() else []
        except Exception as e:
            table.rows.append(_crashed_row(table, str(root), ".", "", e, "finding its runs", verbose))
            continue
        for run in runs:
            try:
                table.rows.extend(_run_rows(root, run, store, ck_dirs, destinations))
            except Exception as e:  # this run's boundary: the next run still gets its rows
                table.rows.append(_crashed_row(table, str(root), run.name, "", e,
                                               "reading its state", verbose))
    return table


def _crashed_row(table: StatusTable, logdir: str, run: str, dest: str, e: Exception,
                 where: str, verbose: bool) -> StatusRow:
    if verbose:
        table.tracebacks.append(scrub(traceback.format_exc()))
    return StatusRow(logdir, run, dest, "", state="failed",
                     last_error=scrub(f"unexpected error while {where}: {type(e).__name__}: "
                                      f"{_short(e)} (run with -v for the traceback)"))


def _run_id(run, store: CheckpointStore) -> str | None:
    """The run id a sync would use (a checkpoint of another run id is not this run's); None
    (not checked) for a run in object storage whose manifest has no current local copy."""
    try:
        if not run.has_manifest:
            manifest = None
        elif run.location is None:
            manifest = load_manifest(run.path)  # as sync reads it
        else:
            from .storage.runs import manifest as object_manifest

            manifest = object_manifest(run, store, fetch=False)
    except SourceError:
        if run.location is not None:
            return None
        manifest = None
    return run_id_for(run.name, run, manifest)


def _run_rows(root: Path, run, store: CheckpointStore, ck_dirs: list[str],
              destinations: list[str] | None) -> list[StatusRow]:
    """One row per destination of ``run``: checkpoints and ``stat`` s only."""
    rows: list[StatusRow] = []
    keys = [k for k in ck_dirs if destinations is None or k.split("-")[0] in destinations]
    if destinations:
        for d in destinations:
            if not any(k.split("-")[0] == d for k in keys):
                rows.append(StatusRow(str(root), run.name, d, "", state="never synced"))
    run_id = _run_id(run, store)
    for key in keys:
        dest = key.split("-")[0]
        row = StatusRow(str(root), run.name, dest, key)
        try:
            ck = store.load(dest, key, run.name, run_id)
        except InvalidCheckpointError as e:
            row.state = "bad checkpoint"
            row.last_error = scrub(f"{e}. The next sync moves it aside and rebuilds it by asking "
                                   f"{dest} what it has (nothing is sent twice).")
            rows.append(row)
            continue
        except StateError as e:
            row.state, row.last_error = "failed", scrub(str(e))
            rows.append(row)
            continue
        if ck is None:
            rows.append(row)
            continue
        row.points_synced = ck.total_points
        # scrubbed again: a checkpoint written by an older Tracelet may hold a credential
        row.last_sync, row.status = ck.last_sync, ck.status
        row.last_error = scrub(ck.last_error)
        row.quarantined = dict(ck.quarantined)
        if ck.quarantined:  # the checkpoint keeps the last report lines naming them
            row.problems.append("quarantined: " + ", ".join(
                f"{k} {n}" for k, n in sorted(ck.quarantined.items())))
        for f in run.event_files:
            rel = f.relative_to(run.path).as_posix()
            fs = ck.files.get(rel)
            try:
                size = _size(run, f)
            except OSError:
                continue
            done = (fs.offset if fs else 0)
            if fs and fs.corrupt_offset is not None:
                row.problems.append(f"{rel}: corrupt at byte {fs.corrupt_offset}")
                continue
            if fs and fs.replaced:
                row.problems.append(fs.replaced)
                continue
            if size > done:
                row.bytes_behind += size - done
                row.files_behind += 1
        try:  # the parts sync reads: links out of the run are not "behind"
            parts = RunFiles(run.path).sidecar_parts() if run.location is None \
                else object_parts(run)
            row.sidecar_parts_behind = sum(p.name not in ck.sidecar_done for p in parts)
        except SourceError as e:
            row.problems.append(str(e))
        if ck.last_error:
            row.state = "failed"
        elif row.bytes_behind or row.sidecar_parts_behind:
            row.state = "behind"
        else:
            row.state = "up to date"
        rows.append(row)
    return rows
