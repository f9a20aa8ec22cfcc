"""``tracelet status``: runs x destination targets — points synced, bytes behind, last sync,
last error.

The rows are those of the target asked for: ``--to`` and the destination options
(``--mlflow-uri``, ``--wandb-mode``, ``--aim-repo``, ``--clearml-offline``...) give target keys
exactly as ``tracelet sync`` computes them, so a target that was never synced (another MLflow
server, a new database) shows its runs as ``never synced`` with everything behind, never as "up
to date". Without them: every target the state dir has checkpoints for, each named in the
TARGET column (two MLflow servers are two rows), plus the backends a run's manifest names.

By default only checkpoints and ``stat`` results are read: no destination is contacted, no event
file read. ``--check`` also asks each destination whether the run its checkpoint names is still
there (:meth:`Destination.check_run`: one lookup, creates nothing); a lost run is ``drifted``.
Exit code 1 when any row is ``failed``, ``drifted`` or ``check failed``. A logdir in object
storage costs one listing (sizes from it) and needs the same ``--state-dir`` its syncs use.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import Checkpoint, CheckpointStore
from .engine import run_id_for, state_dir_for
from .engine.behind import event_file_size, file_key, unread
from .errors import InvalidCheckpointError, SourceError, StateError, TraceletError, UsageError
from .manifest import load_manifest
from .redact import scrub
from .reader import discover_runs
from .retry import _short
from .runfiles import RunFiles
from .storage import is_object_url, open_location
from .storage.runs import sidecar_parts as object_parts

ALERT_STATES = ("failed", "drifted", "check failed")  # exit 1: monitoring alerts on them


@dataclass
class StatusRow:
    logdir: str
    run: str
    destination: str
    target_key: str
    target: str = ""  # the destination's target as sync reports it, without credentials
    points_synced: int = 0
    bytes_behind: int = 0
    files_behind: int = 0
    sidecar_parts_behind: int = 0
    last_sync: float | None = None
    status: str | None = None
    last_error: str | None = None
    # up to date | behind | failed | bad checkpoint | never synced | drifted | check failed
    state: str = "never synced"
    checked: str | None = None  # --check: "present", "drifted", "not checked", "check failed"
    problems: list[str] = field(default_factory=list)
    quarantined: dict[str, int] = field(default_factory=dict)  # refused for good, per kind


@dataclass
class StatusTable:
    rows: list[StatusRow]
    tracebacks: list[str] = field(default_factory=list)  # of unexpected errors, with verbose

    @property
    def exit_code(self) -> int:
        return 1 if any(r.state in ALERT_STATES for r in self.rows) else 0

    def to_dict(self) -> dict:
        return {"exit_code": self.exit_code, "runs": [asdict(r) for r in self.rows]}

    def render(self, only_failed: bool = False) -> str:
        """The table; ``only_failed`` (``-q``): failed/drifted rows only, nothing when none."""
        rows = [r for r in self.rows if r.state in ALERT_STATES] if only_failed else self.rows
        if not rows:
            return "" if only_failed else "no runs found"
        head = ("RUN", "DEST", "TARGET", "STATE", "POINTS", "BEHIND", "LAST SYNC", "ERROR")
        lines = []
        for r in rows:
            behind = _human_bytes(r.bytes_behind) if r.bytes_behind else "-"
            if r.sidecar_parts_behind:
                behind += f" +{r.sidecar_parts_behind} parts"
            last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.last_sync)) \
                if r.last_sync else "-"
            err = (r.last_error or "; ".join(r.problems) or "")[:80]
            lines.append((r.run, r.destination, r.target or "-", r.state, f"{r.points_synced:,}",
                          behind, last, err))
        widths = [max(len(str(x[i])) for x in [head, *lines]) for i in range(len(head))]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        return "\n".join(fmt.format(*row).rstrip() for row in [head, *lines])


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class Targets:
    """The destination targets status looks at: keys and labels as ``tracelet sync`` computes
    them from the destination config, and (``--check``) one destination client per name."""

    def __init__(self, config: dict[str, Any], project: str | None, check: bool):
        from .engine.pool import TargetKeys

        self.config = {k: v for k, v in config.items() if v not in (None, "")}
        self.keys = TargetKeys(self.config)
        self.project = project
        self.check = check
        self.explicit = self._explicit()  # destinations whose options were given
        self.clients: dict[str, Any] = {}

    def _explicit(self) -> set[str]:
        if not self.config:
            return set()
        from .destinations import all_factories

        return {f.name for f in all_factories() if any(o.key in self.config for o in f.options)}

    def key(self, name: str) -> str | None:
        try:
            return self.keys[name]
        except UsageError:  # a checkpoint folder of a destination no longer installed
            return None

    def label(self, name: str, key: str, ck: Checkpoint | None) -> str:
        if ck is not None and ck.target:
            return scrub(ck.target)  # as the sync that wrote it saw it (no credentials)
        if key == self.key(name):
            return self.keys.label(name)
        return key

    def client(self, name: str):
        if name not in self.clients:
            from .destinations import create_destination
            from .destinations.base import CHECK_ONLY

            # a check creates nothing: no repo, database or folder for a store that is gone
            self.clients[name] = create_destination(name, {**self.config, CHECK_ONLY: True})
        return self.clients[name]

    def close(self) -> None:
        for client in self.clients.values():
            try:
                client.close()
            except Exception:  # closing must not hide the table
                pass


def collect_status(logdirs: list[str], destinations: list[str] | None,
                   state_dir: str | None, verbose: bool = False, *,
                   dest_config: dict[str, Any] | None = None, project: str | None = None,
                   check: bool = False) -> StatusTable:
    """Each logdir, and each run in it, inside its own error boundary: an unexpected error
    becomes a ``failed`` row naming the run (traceback kept with ``verbose``); the rest go on.
    ``destinations`` and ``dest_config`` pick the targets (module docstring); ``check`` asks
    each destination whether the run is still there."""
    table = StatusTable([])
    targets = Targets(dest_config or {}, project, check)
    try:
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
                table.rows.append(_crashed_row(table, str(root), ".", "", e, "finding its runs",
                                               verbose))
                continue
            for run in runs:
                try:
                    table.rows.extend(_run_rows(root, run, store, ck_dirs, destinations, targets))
                except Exception as e:  # this run's boundary: the next run still gets its rows
                    table.rows.append(_crashed_row(table, str(root), run.name, "", e,
                                                   "reading its state", verbose))
    finally:
        targets.close()
    return table


def _crashed_row(table: StatusTable, logdir: str, run: str, dest: str, e: Exception,
                 where: str, verbose: bool) -> StatusRow:
    if verbose:
        table.tracebacks.append(scrub(traceback.format_exc()))
    return StatusRow(logdir, run, dest, "", state="failed",
                     last_error=scrub(f"unexpected error while {where}: {type(e).__name__}: "
                                      f"{_short(e)} (run with -v for the traceback)"))


def _manifest(run, store: CheckpointStore) -> tuple[dict | None, bool]:
    """The run's manifest as sync reads it, and whether it could be read: False (the run id is
    not known, so not checked) for a run in object storage whose manifest has no current
    local copy."""
    try:
        if not run.has_manifest:
            return None, True
        if run.location is None:
            return load_manifest(run.path), True
        from .storage.runs import manifest as object_manifest

        return object_manifest(run, store, fetch=False), True
    except SourceError:
        return None, run.location is None


def _wanted_targets(run, manifest: dict | None, ck_dirs: list[str],
                    destinations: list[str] | None, targets: Targets) -> list[tuple[str, str]]:
    """(destination, target key) pairs of this run's rows (module docstring)."""
    from .destinations import is_known
    from .engine.plan import _wanted

    if destinations:
        return [(d, k) for d in destinations if (k := targets.key(d)) is not None]
    pairs: list[tuple[str, str]] = []
    for key in ck_dirs:
        name = key.rsplit("-", 1)[0]
        if name in targets.explicit and key != targets.key(name):
            continue  # another target of a destination whose target was given
        pairs.append((name, key))
    for name in [*sorted(targets.explicit), *_wanted(manifest)]:
        if is_known(name) and not any(n == name for n, _ in pairs):
            key = targets.key(name)
            if key is not None:
                pairs.append((name, key))
    return pairs


def _run_rows(root: Path, run, store: CheckpointStore, ck_dirs: list[str],
              destinations: list[str] | None, targets: Targets) -> list[StatusRow]:
    """One row per destination target of ``run``: checkpoints and ``stat`` s (and, with
    ``--check``, one lookup per destination)."""
    manifest, known = _manifest(run, store)
    run_id = run_id_for(run.name, run, manifest) if known else None
    pairs = _wanted_targets(run, manifest, ck_dirs, destinations, targets)
    if not pairs:  # no destination known for it yet: what a first sync would read
        row = StatusRow(str(root), run.name, "-", "")
        _behind(row, run, None)
        return [row]
    rows: list[StatusRow] = []
    for dest, key in pairs:
        row = StatusRow(str(root), run.name, dest, key)
        rows.append(row)
        try:
            ck = store.load(dest, key, run.name, run_id)
        except InvalidCheckpointError as e:
            row.target = targets.label(dest, key, None)
            row.state = "bad checkpoint"
            row.last_error = scrub(f"{e}. The next sync moves it aside and rebuilds it by asking "
                                   f"{dest} what it has (nothing is sent twice).")
            continue
        except StateError as e:
            row.target = targets.label(dest, key, None)
            row.state, row.last_error = "failed", scrub(str(e))
            continue
        row.target = targets.label(dest, key, ck)
        _behind(row, run, ck)
        if ck is None:
            continue  # never synced to this target: everything is behind
        row.points_synced = ck.total_points
        # scrubbed again: a checkpoint written by an older Tracelet may hold a credential
        row.last_sync, row.status = ck.last_sync, ck.status
        row.last_error = scrub(ck.last_error)
        row.quarantined = dict(ck.quarantined)
        if ck.quarantined:  # the checkpoint keeps the last report lines naming them
            row.problems.append("quarantined: " + ", ".join(
                f"{k} {n}" for k, n in sorted(ck.quarantined.items())))
        if ck.last_error:
            row.state = "failed"
        elif row.bytes_behind or row.sidecar_parts_behind:
            row.state = "behind"
        else:
            row.state = "up to date"
        if targets.check:
            _check(row, root, run, manifest, known, ck, targets)
    return rows


def _behind(row: StatusRow, run, ck: Checkpoint | None) -> None:
    """Bytes, files and sidecar parts a sync to this row's target still has to read (all of
    them without a checkpoint), and the files it will not read again (corrupt, replaced)."""
    for f in run.event_files:
        fs = ck.files.get(file_key(run, f)) if ck is not None else None
        try:
            size = event_file_size(run, f)
        except OSError:
            continue
        if fs is not None and fs.corrupt_offset is not None:
            row.problems.append(f"{file_key(run, f)}: corrupt at byte {fs.corrupt_offset}")
        elif fs is not None and fs.replaced:
            row.problems.append(fs.replaced)
        left = unread(fs, size)
        if left:
            row.bytes_behind += left
            row.files_behind += 1
    try:  # the parts sync reads: links out of the run are not "behind"
        parts = RunFiles(run.path).sidecar_parts() if run.location is None \
            else object_parts(run)
        done = ck.sidecar_done if ck is not None else ()
        row.sidecar_parts_behind = sum(p.name not in done for p in parts)
    except SourceError as e:
        row.problems.append(str(e))


def _check(row: StatusRow, root, run, manifest: dict | None, known: bool, ck: Checkpoint,
           targets: Targets) -> None:
    """``--check``: ask the destination whether the run this checkpoint names is still there."""
    if ck.identity is None or not known:
        row.checked = "not checked"
        row.problems.append("not checked: " + ("the checkpoint names no destination run yet"
                                               if ck.identity is None else
                                               "the run's manifest has no local copy"))
        return
    if row.target_key != targets.key(row.destination):
        row.checked = "not checked"
        row.problems.append(f"not checked: another {row.destination} target than the one "
                            "configured; give its options to check it")
        return
    try:
        ref = _check_ref(root, run, manifest, targets.project)
        drift = targets.client(row.destination).check_run(ref, ck.identity)
    except TraceletError as e:
        row.state, row.checked = "check failed", "check failed"
        row.last_error = scrub(f"check failed: {e}")
        return
    except Exception as e:  # a vendor SDK failing at set-up: this row, not the table
        row.state, row.checked = "check failed", "check failed"
        row.last_error = scrub(f"check failed: {type(e).__name__}: {_short(e)}")
        return
    if drift is None:
        row.checked = "present"
    elif drift == "cannot check":
        row.checked = "not checked"
        row.problems.append(f"not checked: {row.destination} cannot tell")
    else:
        row.state, row.checked = "drifted", "drifted"
        # an unchanged run takes the no-op fast path (no call to the destination): say how
        # to re-send it now rather than promise the next sync does
        row.last_error = scrub(f"{drift}; `tracelet sync --resync` re-sends the whole run "
                               "(dedupe: nothing lands twice), as does the next sync that finds "
                               "new data in it")


def _check_ref(root, run, manifest: dict | None, project: str | None):
    """The run as ``check_run`` needs it: its id, path and project, found as ``sync`` finds
    them (manifest ``project``, else ``--project``, else the logdir's name), and a plain run's
    source id (a run taken by it from another LOGDIR level is this run's). Lookups only: no
    params, tags or reproducibility fields."""
    from .destinations.base import RunRef
    from .identity import source_id_for

    m = manifest or {}
    return RunRef(run_id=run_id_for(run.name, run, manifest), run_path=run.name,
                  project=str(m.get("project") or project or Path(root).resolve().name),
                  source_dir=run.path, source_id=source_id_for(run, manifest),
                  source_anywhere=not (m.get("project") or project),
                  # no tags: check_run only looks up, and they are not redacted here
                  manifest={k: v for k, v in m.items() if k != "tags"} if manifest else None)

