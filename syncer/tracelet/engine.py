"""The sync engine: discover runs, plan reads, drive the checkpoint protocol per destination.

::

    discover_runs ─► per run (locked) ─► stat signature unchanged? ─► skip (no read, no call)
                                   └──► open_run on each destination (idempotent)
                                        params ─► event files ─► sidecar ─► artifacts ─► status
    per event file:  size at start = signpost
                     pending_end := signpost  (committed BEFORE the first send)
                     read [min offset, signpost) once ─► each batch to every destination
                     whose offset it starts at ─► on success commit that destination's offset

Each destination has its own checkpoint, so a destination that is down fails alone and catches
up later from its own offset; the source is still read once per batch (segments are split at
each lagging destination's offset so it joins exactly where it stopped).
"""
from __future__ import annotations

import copy
import hashlib
import os
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .checkpoint import (KEY_SCHEME, Checkpoint, CheckpointStore, FileState, add_counts,
                         check_file_identity, remember_identity, track_incomplete_tail)
from .destinations import create_destination, is_known, known_destinations, target_key
from .destinations.base import Destination, Rejected, RunHandle, RunRef, SystemRows
from .destinations.keys import KeyLedger
from .errors import (DestinationError, FileReplacedError, InvalidCheckpointError, LockedError,
                     NotRegularFileError, SourceError, StateError, TraceletError, UsageError)
from .manifest import load_manifest
from .runfiles import RunFiles, within
from .faults import crash_point
from .manifest import manifest_time as _as_unix
from .params import flatten_params, param_text
from .reader import EventFileReader, RunSource, discover_runs
from .reader.events import unreadable_message
from .reader.logdir import MANIFEST_NAME, SIDECAR_DIR
from .quarantine import (MAX_LINES as QUARANTINE_LINES, Isolation, Suspect, cause_text,
                         describe_points, destination_wide, locate, merge, point, point_counts,
                         record_batches, same_points, where)
from .reader.points import HPARAMS, MAX_ABS_WALL_TIME, SCALAR, Batch
from .redact import Redactor, scrub, scrubbed_logger
from .retry import _short, call_with_retry
from .storage import ObjectPath, is_object_url, open_location

log = scrubbed_logger("tracelet.sync")  # log lines never show a credential

# Large enough to amortise one checkpoint commit (an fsync) per batch; TRACELET_BATCH_POINTS
# lowers it for fault-injection tests that need many commits in a small logdir.
DEFAULT_BATCH_POINTS = int(os.environ.get("TRACELET_BATCH_POINTS", "20000"))
EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 75
MAX_PRINTED_LINES = 10  # per run, destination and kind of line on stderr; all are in --json


# ---------------------------------------------------------------------------------------------
# options and reports
# ---------------------------------------------------------------------------------------------
@dataclass
class SyncOptions:
    destinations: list[str] | None = None  # None: each run's manifest `backends`
    state_dir: str | None = None
    project: str | None = None
    dest_config: dict[str, Any] = field(default_factory=dict)
    shard: tuple[int, int] | None = None
    workers: int = 1
    dry_run: bool = False
    follow: bool = False
    interval_s: float = 30.0
    json_output: bool = False
    batch_points: int = DEFAULT_BATCH_POINTS
    progress: bool | None = None  # None: a progress line on a TTY, log lines otherwise
    run_filter: Any = None  # callable(RunSource) -> bool, for sync_run_dir
    stop: threading.Event | None = None  # set to drain: finish the batch in hand, commit, return
    # the one redaction rule (tracelet.redact) on params (manifest and TensorBoard hparams from
    # any writer) and manifest tags: True (default names) | False (as written) | list (these names)
    redact_secrets: bool | list[str] = True
    secret_patterns: list[str] = field(default_factory=list)
    verbose: bool = False  # an unexpected error in a run keeps its traceback (printed, in JSON)
    quiet: bool = False  # print only errors
    follow_artifact_links: bool = False  # read a run's files through links that leave the run


@dataclass
class DestReport:
    destination: str
    target: str = ""
    state: str = "synced"  # synced | unchanged | failed | locked | dry-run | interrupted
    points_sent: dict[str, int] = field(default_factory=dict)
    unsupported: dict[str, int] = field(default_factory=dict)
    other: dict[str, int] = field(default_factory=dict)  # non-point records seen (graph, ...)
    skipped_records: int = 0
    params_sent: int = 0
    param_conflicts: list[str] = field(default_factory=list)
    artifacts_sent: int = 0
    # refused for good by the destination, per kind (scalar ... params, artifact, system):
    # counted, named in `quarantine` (one line each), never retried (tracelet.quarantine)
    quarantined: dict[str, int] = field(default_factory=dict)
    quarantine: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # tags/params renamed or kept apart (keys.py)
    error: str | None = None

    def add(self, field_name: str, counts: dict[str, int]) -> None:
        add_counts(getattr(self, field_name), counts)

    @property
    def points(self) -> int:
        return sum(self.points_sent.values())


@dataclass
class RunReport:
    run: str
    logdir: str
    run_id: str = ""
    project: str = ""
    problems: list[str] = field(default_factory=list)  # warnings: the run synced what it could
    destinations: dict[str, DestReport] = field(default_factory=dict)
    locked: bool = False
    # Errors of the run itself (an unreadable artifact, an unexpected error before any
    # destination was known): exit 1, and the run is retried at the next sync.
    errors: list[str] = field(default_factory=list)
    traceback: str | None = None  # of an unexpected error; only with verbose

    @property
    def failed(self) -> bool:
        return bool(self.errors) or any(d.state == "failed" for d in self.destinations.values())

    def note(self, problem: str) -> None:
        """Add a problem once (several destinations of a run meet the same file)."""
        if problem not in self.problems:
            self.problems.append(problem)

    def error(self, problem: str) -> None:
        """Add an error once: something of this run was not synced and is retried next time."""
        if problem not in self.errors:
            self.errors.append(problem)


@dataclass
class SyncReport:
    runs: list[RunReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # a logdir that could not be planned at all
    failed_destinations: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False
    passes: int = 0
    elapsed_s: float = 0.0
    storage: dict[str, dict[str, int]] = field(default_factory=dict)  # object-store requests

    @property
    def exit_code(self) -> int:
        if self.errors or self.failed_destinations or any(r.failed for r in self.runs):
            return EXIT_PARTIAL
        if any(r.locked for r in self.runs):
            return EXIT_LOCKED
        return EXIT_OK

    def totals(self) -> dict[str, Any]:
        per_dest: dict[str, dict[str, int]] = {}
        for r in self.runs:
            for name, d in r.destinations.items():
                t = per_dest.setdefault(name, {"points": 0, "runs_synced": 0, "runs_failed": 0,
                                               "runs_unchanged": 0})
                t["points"] += d.points
                t["runs_synced"] += d.state == "synced"
                t["runs_failed"] += d.state == "failed"
                t["runs_unchanged"] += d.state == "unchanged"
        return per_dest

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return scrub({  # the last boundary before JSON: no credential in any string of it
            "exit_code": self.exit_code,
            "elapsed_s": round(self.elapsed_s, 3),
            "passes": self.passes,
            "interrupted": self.interrupted,
            "problems": self.problems,
            "errors": self.errors,
            "failed_destinations": self.failed_destinations,
            "totals": self.totals(),
            "storage": self.storage,
            "runs": [asdict(r) for r in self.runs],
        })


def parse_destinations(text: str | None, allow_empty: bool = False) -> list[str] | None:
    if text is None or not text.strip():
        return None
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if not is_known(n)]
    if unknown:
        import difflib

        names_known = known_destinations()
        close = difflib.get_close_matches(unknown[0], names_known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UsageError(f"--to: unknown destination(s) {', '.join(unknown)}; {hint}"
                         f"choose from {', '.join(names_known)}")
    return list(dict.fromkeys(names))


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r}: expected K/N, e.g. 0/4") from None
    if n < 1 or not 0 <= k < n:
        raise UsageError(f"--shard {text!r}: need 0 <= K < N")
    return k, n


def in_shard(run_path: str, shard: tuple[int, int] | None) -> bool:
    if shard is None:
        return True
    h = int(hashlib.sha1(run_path.encode()).hexdigest()[:8], 16)
    return h % shard[1] == shard[0]


def run_id_for(run_path: str, run: RunSource, manifest: dict | None) -> str:
    if manifest and manifest.get("run_id"):
        return str(manifest["run_id"])
    first = run.event_files[0].name if run.event_files else ""
    return hashlib.sha1(f"{run_path}\n{first}".encode()).hexdigest()[:32]


def state_dir_for(logdir: Path | ObjectPath, explicit: str | None) -> Path:
    if isinstance(logdir, ObjectPath):
        return object_state_dir(logdir, explicit)
    if not explicit:
        return logdir / ".tracelet"
    # One explicit state dir may serve many logdirs: keep each logdir's checkpoints apart.
    resolved = logdir.resolve()
    return Path(explicit) / f"{resolved.name or 'root'}-{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"


def object_state_dir(url: ObjectPath, explicit: str | None) -> Path:
    """State of a logdir in object storage stays local (and so does its lock): under
    ``--state-dir``, which such a logdir requires, one folder per URL."""
    if not explicit:
        raise UsageError(f"{url}: a logdir in object storage needs --state-dir (or "
                         "TRACELET_STATE_DIR): checkpoints and locks stay on local disk. Give "
                         "the same one on every sync of this logdir.")
    return Path(explicit) / f"{url.name or 'root'}-{hashlib.sha1(url.url.encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------------------------------------
# source signature: the stat-only check that makes an unchanged run free
# ---------------------------------------------------------------------------------------------
def source_signature(run: RunSource, event_files: list[Path], follow_links: bool = False) -> str:
    """Stat-only fingerprint of everything a sync would send. Plain TensorBoard runs (no
    manifest) cost one stat per event file: they have no sidecar or artifacts to look at.
    Artifacts are those :meth:`RunFiles.artifacts` lists (no link out of the run).
    Runs in object storage: size + ETag of each object, from the pass's listing."""
    if run.location is not None:
        from .storage.runs import signature

        return signature(run, event_files)
    h = hashlib.sha1()
    for p in event_files:
        try:
            st = os.stat(p)
            h.update(f"e {p}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"e {p}:missing\n".encode())
    if not run.has_manifest:
        return h.hexdigest()
    base = os.fspath(run.path)
    try:
        st = os.stat(os.path.join(base, MANIFEST_NAME))
        h.update(f"m {st.st_size}:{st.st_mtime_ns}\n".encode())
    except OSError:
        pass
    try:
        h.update(("s " + ",".join(sorted(os.listdir(os.path.join(base, SIDECAR_DIR)))) + "\n").encode())
    except OSError:
        pass
    for rel, (size, mtime) in sorted(RunFiles(run.path, follow_links).artifacts().items()):
        h.update(f"a {rel}:{size}:{mtime}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# per-thread destination pool
# ---------------------------------------------------------------------------------------------
class _TargetKeys(dict):
    """name -> target key, computed on first use (only for the destinations a pass names)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = config

    def __missing__(self, name: str) -> str:
        key = self[name] = target_key(name, self.config)
        return key


class _DestinationPool:
    """Destinations are created lazily, once per worker thread (vendor clients are rarely
    thread-safe), and only when a run actually needs them: a no-op resync imports no SDK."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.local = threading.local()
        self.all: list[Destination] = []
        self.lock = threading.Lock()
        self.failed: dict[str, str] = {}

    def get(self, name: str) -> Destination:
        if name in self.failed:
            raise DestinationError(self.failed[name])
        cache = getattr(self.local, "dests", None)
        if cache is None:
            cache = self.local.dests = {}
        if name not in cache:
            try:
                dest = create_destination(name, self.config)
            except TraceletError as e:
                with self.lock:
                    self.failed[name] = scrub(str(e))
                raise
            except Exception as e:  # a vendor SDK failing at set-up fails only this destination
                msg = scrub(f"{name}: cannot start the destination: {type(e).__name__}: {e}")
                with self.lock:
                    self.failed[name] = msg
                raise DestinationError(msg) from e
            cache[name] = dest
            with self.lock:
                self.all.append(dest)
        return cache[name]

    def close(self) -> None:
        for d in self.all:
            try:
                d.close()
            except Exception as e:  # closing must not hide the sync's own result
                log.warning("closing %s failed: %s", d.name, scrub(str(e)))


@dataclass
class _Slot:
    """One destination's view of the run during a sync."""

    name: str
    dest: Destination
    ck: Checkpoint
    report: DestReport
    handle: RunHandle | None = None
    dedupe_all: bool = False  # lost state dir, run found on destination: dedupe everything
    failed: bool = False
    recheck: bool = False  # look again next pass (a new incomplete tail): no "unchanged" yet
    run_dir: str = ""  # report lines name files relative to it
    legacy_keys: bool = False  # synced before KEY_SCHEME: renamed tags had other keys then
    # where the checkpoint is committed: the engine's own target key and run path, never
    # values read from a checkpoint
    target_key: str = ""
    run_path: str = ""
    _ledger: KeyLedger | None = None

    def ledger(self) -> KeyLedger:
        if self._ledger is None:
            self._ledger = KeyLedger(self.ck.keys, self.name)
        return self._ledger

    def source_failed(self, message: str) -> None:
        """A source file of the run could not be read: this destination's report fails (exit 1)
        but the slot goes on with the run's other files. ``last_error`` keeps the run off the
        no-op fast path, so every sync retries the file until it can be read."""
        if self.report.state != "failed":
            self.report.state, self.report.error = "failed", message
        self.ck.last_error = message

    def fail(self, err: BaseException) -> None:
        self.failed = True
        self.report.state = "failed"
        # vendor error text may carry the target URI with its credentials
        self.report.error = self.ck.last_error = scrub(str(err))


# ---------------------------------------------------------------------------------------------
# the engine
# ---------------------------------------------------------------------------------------------
class SyncEngine:
    def __init__(self, options: SyncOptions):
        self.o = options
        self.stop = options.stop or threading.Event()
        self.pool = _DestinationPool(options.dest_config)
        self.out = _Output(options)
        self._stores: dict[Path, CheckpointStore] = {}  # per logdir: resolve() once, not per run
        self._locations: dict[str, Any] = {}  # object-store logdirs: one client each, kept
        self._target_keys = _TargetKeys(options.dest_config)  # computed per name on first use
        self._redactor = Redactor(options.redact_secrets, options.secret_patterns)
        self._roots: list[str] = []  # real paths of the LOGDIRs of this pass (linked_logdirs)
        self._ctx = threading.local()  # per worker: what the run is doing, its open slots
        # destinations that accepted a write in this sync: evidence, when a call is refused,
        # that the refused content is bad rather than the destination (tracelet.quarantine)
        self._wrote: set[str] = set()

    def store_for(self, logdir: Path) -> CheckpointStore:
        store = self._stores.get(logdir)
        if store is None:
            store = self._stores[logdir] = CheckpointStore(state_dir_for(logdir, self.o.state_dir))
        return store

    # -- planning ---------------------------------------------------------------------------
    def plan(self, logdirs: list[str], errors: list[str] | None = None
             ) -> tuple[list[tuple[Path, RunSource]], list[str]]:
        """The runs to sync and the warnings met. Each logdir, and each run in it, is planned
        inside its own error boundary: an unexpected error skips that logdir (``errors``: exit 1)
        or that run's part of the plan, never the others."""
        work: list[tuple[Path, RunSource]] = []
        problems: list[str] = []
        errors = errors if errors is not None else problems
        found: list[tuple[Path, list[RunSource]]] = []
        # linked_logdirs are accepted inside the logdir being synced or a LOGDIR given
        self._roots = [os.path.realpath(ld) for ld in logdirs]
        for ld in logdirs:
            if is_object_url(ld):
                work.extend(self._plan_objects(ld, problems, errors))
                continue
            root = Path(ld)
            if not root.exists():
                raise UsageError(f"{ld}: no such folder. Give the logdir that holds your runs.")
            if not root.is_dir():
                raise UsageError(f"{ld}: is a file, not a folder. Give the logdir that holds it "
                                 f"(e.g. {root.parent}).")
            try:
                disc = discover_runs(root)
            except Exception as e:  # the logdir's boundary: the other logdirs still sync
                errors.append(f"{ld}: unexpected error while finding its runs: "
                              f"{type(e).__name__}: {_short(e)}; none of its runs synced. "
                              "Run with -v for the traceback.")
                log.debug("discovering %s", ld, exc_info=True)
                continue
            problems.extend(disc.problems)
            found.append((root, disc.runs))
        linked: set[str] = set()  # real paths of folders synced as part of another run
        for root, runs in found:
            for run in runs:
                if not run.has_manifest:
                    continue
                try:
                    manifest = load_manifest(run.path, validate=False,
                                             follow_links=self.o.follow_artifact_links)
                    linked.update(self._accepted_links(root, run, manifest, None))
                except SourceError:
                    continue  # reported when the run itself syncs
                except Exception as e:  # this run's boundary: reported again when it syncs
                    problems.append(f"run '{run.name}': unexpected error while reading its "
                                    f"linked_logdirs: {type(e).__name__}: {_short(e)}")
        for root, runs in found:
            for run in runs:
                try:
                    # a plain TensorBoard folder linked by a recorded run is synced as part of
                    # it; a run with its own manifest is always its own run
                    if linked and not run.has_manifest and any(
                            within(os.path.realpath(run.path), d) for d in linked):
                        continue
                    if not in_shard(run.name, self.o.shard):
                        continue
                    if self.o.run_filter is not None and not self.o.run_filter(run):
                        continue
                except Exception as e:
                    problems.append(f"run '{run.name}': unexpected error while planning: "
                                    f"{type(e).__name__}: {_short(e)}; not synced this time.")
                    continue
                work.append((root, run))
        return work, problems

    def _plan_objects(self, url: str, problems: list[str], errors: list[str]
                      ) -> list[tuple[ObjectPath, RunSource]]:
        """Runs of a logdir in object storage: one listing per pass. Manifests' linked_logdirs
        (local paths of the training machine) are not followed there. A listing that fails
        (network, server) skips this logdir (``errors``: exit 1), never the others."""
        loc = self._locations.get(url)
        if loc is None:
            loc = self._locations[url] = open_location(url)
        self.store_for(loc.root)  # --state-dir is required: say so before listing
        try:
            disc = discover_runs(loc)
        except SourceError as e:
            errors.append(f"{url}: {e}; none of its runs synced this time.")
            return []
        problems.extend(disc.problems)
        return [(loc.root, run) for run in disc.runs if in_shard(run.name, self.o.shard)
                and (self.o.run_filter is None or self.o.run_filter(run))]

    def storage_stats(self) -> dict[str, dict[str, int]]:
        """Requests made to each object-store logdir so far (listing pages, GETs, bytes)."""
        return {url: loc.stats_snapshot() for url, loc in self._locations.items()}

    def _accepted_links(self, logdir: Path, run: RunSource, manifest: dict | None,
                        rr: RunReport | None) -> list[str]:
        """Real paths of the run's ``linked_logdirs`` that may be read: inside the logdir being
        synced, or inside a LOGDIR given on the command line, and not holding the run itself.
        Each other entry is skipped with a warning (in ``rr``) naming the manifest and path."""
        entries = (manifest or {}).get("linked_logdirs") or []
        if not entries:
            return []
        roots = [os.path.realpath(logdir), *self._roots]
        own = os.path.realpath(run.path)
        out = []
        for d in entries:
            real = os.path.realpath(os.path.join(run.path, d))  # relative: to the run folder
            if within(own, real):
                why = "it holds the run itself (its event files would be sent twice)"
            elif any(within(real, r) for r in roots):
                out.append(real)
                continue
            else:
                why = (f"it is outside the logdir {logdir}. To sync it as part of this run, give "
                       f"it (or a folder above it) as a LOGDIR too: tracelet sync {logdir} {d}")
            if rr is not None:
                rr.note(f"{run.manifest_path}: linked_logdirs entry '{d}' ({real}) skipped: {why}")
        return out

    # -- one pass over all runs ---------------------------------------------------------------
    def run_pass(self, logdirs: list[str], report: SyncReport) -> None:
        for store in self._stores.values():
            store.new_pass()
        errors: list[str] = []
        work, problems = self.plan(logdirs, errors)
        for p in dict.fromkeys(problems):
            if p not in report.problems:  # new this pass (--follow says each once)
                report.problems.append(p)
                self.out.problem(p)
        for e in dict.fromkeys(errors):
            if e not in report.errors:
                report.errors.append(e)
                self.out.error(e)
        self.out.begin(len(work))
        if self.o.workers > 1 and len(work) > 1:
            with ThreadPoolExecutor(self.o.workers, thread_name_prefix="tracelet-sync") as ex:
                results = list(ex.map(lambda w: self.sync_run(*w), work))
        else:
            results = [self.sync_run(root, run) for root, run in work]
        report.runs = _merge_runs(report.runs, results)
        for store in list(self._stores.values()):
            if store.problem and store.problem not in report.problems:
                report.problems.append(store.problem)
                self.out.problem(store.problem)
        report.failed_destinations.update(self.pool.failed)
        report.storage = self.storage_stats()
        self.out.end()

    def close(self) -> None:
        self.pool.close()

    # -- one run ----------------------------------------------------------------------------
    def sync_run(self, logdir: Path, run: RunSource) -> RunReport:
        """Sync one run inside its own error boundary: an unexpected error (a bug, an input no
        check foresaw) is reported for this run — what, while doing what with which file — its
        destinations are marked failed (exit 1, retried at the next sync), and the pass goes on
        with the next run. The traceback is kept only with ``verbose``."""
        rr = RunReport(run=run.name, logdir=str(logdir))
        self._ctx.where, self._ctx.slots = "checking whether it changed", []
        try:
            self._sync_run_guarded(logdir, run, rr)
        except Exception as e:
            self._report_crash(rr, e)
        self.out.run_done(rr)
        return rr

    def _sync_run_guarded(self, logdir: Path, run: RunSource, rr: RunReport) -> None:
        store = self.store_for(logdir)
        if not self.o.dry_run and self._unchanged_without_lock(logdir, run, store, rr):
            return
        try:
            with store.lock(run.name, f"run '{run.name}'"):
                try:
                    self._sync_run_locked(logdir, run, store, rr)
                except Exception as e:
                    self._fail_slots(store, e)  # under the lock: checkpoints say "failed"
                    raise
        except LockedError as e:
            rr.locked = True
            rr.problems.append(str(e))
        except (OSError, StateError) as e:
            # state dir not writable, disk full, a link where a lock or folder belongs: this run
            # fails, the others go on
            msg = str(e) if isinstance(e, StateError) else f"state dir {store.root}: {e}"
            rr.problems.append(f"run '{run.name}': {msg}")
            for name in self._dest_names(None):
                rr.destinations.setdefault(name, DestReport(name, state="failed", error=msg))

    def _at(self, where: str) -> None:
        """What the run is doing now, for the report of an unexpected error."""
        self._ctx.where = where

    def _crash_text(self, e: BaseException) -> str:
        return (f"unexpected error while {self._ctx.where}: {type(e).__name__}: {_short(e)}. "
                "Its destinations are marked failed and the run is retried at the next sync; "
                "the other runs are not affected. Run with -v for the traceback.")

    def _fail_slots(self, store: CheckpointStore, e: BaseException) -> None:
        """Record the unexpected error in each open destination's checkpoint (best effort)."""
        text = self._crash_text(e)
        for slot in self._ctx.slots:
            slot.fail(RuntimeError(text))
            try:
                self._commit(store, slot)
            except Exception:  # the report still says it; the next sync retries anyway
                log.debug("committing the failure of %s", slot.name, exc_info=True)

    def _report_crash(self, rr: RunReport, e: BaseException) -> None:
        text = self._crash_text(e)
        log.debug("run %s", rr.run, exc_info=True)
        if self.o.verbose:
            rr.traceback = traceback.format_exc()
        if not rr.destinations:
            rr.error(text)
        for d in rr.destinations.values():
            d.state, d.error = "failed", text

    def _unchanged_without_lock(self, logdir: Path, run: RunSource, store: CheckpointStore,
                                rr: RunReport) -> bool:
        """The cron fast path: stat + checkpoint reads only, no lock, no destination.

        Safe without the lock: checkpoints are replaced atomically and carry the signature only
        once a whole pass committed, so "unchanged" read here is true whatever a concurrent
        sync is doing; anything else takes the lock and rechecks. The manifest is read bounded
        and depth-checked, with a type check of the two fields used here (no schema). Only a
        ``.sig`` holding the state dir key's MAC counts: a missing or forged one sends the run
        down the slow path, which checks the checkpoint (and rewrites the ``.sig`` if the run
        is unchanged)."""
        try:
            manifest = self._manifest(run, store, validate=False, fetch=False) \
                if run.has_manifest else None
        except SourceError:
            return False
        names = self._dest_names(manifest)
        if not names:
            return False
        signature = source_signature(run, list(run.event_files)
                                     + self._linked_event_files(logdir, run, manifest, None),
                                     self.o.follow_artifact_links)
        for name in names:
            if not store.signature_matches(self._target_keys[name], run.name, signature):
                return False
        for name in names:
            rr.destinations[name] = DestReport(name, target=self._target_keys[name],
                                               state="unchanged")
        return True

    def _manifest(self, run: RunSource, store: CheckpointStore, problems: list[str] | None = None,
                  validate: bool = True, fetch: bool = True) -> dict | None:
        """The run's manifest; in object storage through its local copy in the state dir (so
        an unchanged run reads no object: ``fetch=False`` gives up instead of reading)."""
        if run.location is None:
            return load_manifest(run.path, problems, validate=validate,
                                 follow_links=self.o.follow_artifact_links)
        from .storage.runs import manifest

        return manifest(run, store, fetch, problems, validate)

    def _dest_names(self, manifest: dict | None) -> list[str]:
        if self.o.destinations:
            return self.o.destinations
        wanted = (manifest or {}).get("backends") or []
        if isinstance(wanted, str):
            wanted = [wanted]
        return [w for w in wanted if isinstance(w, str) and is_known(w)]

    def _sync_run_locked(self, logdir: Path, run: RunSource, store: CheckpointStore,
                         rr: RunReport) -> None:
        manifest = None
        if run.has_manifest:
            self._at(f"reading the manifest {run.manifest_path}")
            try:
                manifest = self._manifest(run, store, rr.problems)
            except SourceError as e:
                rr.problems.append(str(e))
        names = self._dest_names(manifest)
        if not names:
            rr.problems.append(f"run '{run.name}': no destination (give --to, or record the run "
                               "with a backend)")
            return
        self._at(f"reading linked_logdirs of {run.manifest_path}")
        event_files = list(run.event_files) + self._linked_event_files(logdir, run, manifest, rr)
        project = str((manifest or {}).get("project") or self.o.project or logdir.resolve().name)
        m = manifest or {}
        ref = RunRef(run_id=run_id_for(run.name, run, manifest), run_path=run.name,
                     project=project, source_dir=run.path, manifest=self._redact_tags(manifest),
                     started_at=_as_unix(m.get("started_at")), ended_at=_as_unix(m.get("ended_at")),
                     status=m.get("status") if isinstance(m.get("status"), str) else None)
        rr.run_id, rr.project = ref.run_id, project
        signature = source_signature(run, event_files, self.o.follow_artifact_links)

        slots: list[_Slot] = self._ctx.slots
        for name in names:
            self._at(f"opening the run on {name}")
            tk = self._target_keys[name]
            dr = DestReport(name, target=tk)
            rr.destinations[name] = dr
            try:
                ck = store.load(name, tk, run.name, ref.run_id)
            except InvalidCheckpointError as e:
                ck = None  # rebuilt like a lost state dir: the destination says what it has
                if self.o.dry_run:
                    rr.note(f"{e} — a sync moves it aside and rebuilds it by asking the "
                            "destination what it already has (dry run: left in place).")
                else:
                    self._set_aside(store, tk, run.name, e, rr)
            except StateError as e:  # a link where a state folder belongs: never followed
                dr.state, dr.error = "failed", str(e)
                continue
            if ck is not None and ck.source_signature == signature and not ck.last_error:
                dr.state = "unchanged"
                if not self.o.dry_run:  # .sig missing, forged or older: fast path next time
                    self._write_signature(store, tk, run.name, ck, rr)
                continue
            if self.o.dry_run:
                dr.state = "dry-run"
                slots.append(_Slot(name, None, ck or Checkpoint(name, tk, run.name), dr))  # type: ignore[arg-type]
                continue
            try:
                dest = self.pool.get(name)
            except TraceletError as e:
                dr.state, dr.error = "failed", scrub(str(e))
                continue
            dr.target = scrub(dest.target)
            fresh = ck is None
            ck = ck or Checkpoint(name, tk, run.name, run_id=ref.run_id)
            slot = _Slot(name, dest, ck, dr, run_dir=str(run.path),
                         legacy_keys=ck.key_scheme < KEY_SCHEME and ck.total_points > 0,
                         target_key=tk, run_path=run.name)
            ck.key_scheme = KEY_SCHEME
            ok, slot.handle = self._call(store, slot, dest.open_run, ref, ck.identity, what="open run")
            if not ok:
                continue
            if slot.handle.identity_ignored and not fresh:
                # The checkpoint named a destination run that is not this run's: nothing in it
                # can be trusted. Start over as after a lost state dir (dedupe everything).
                self._set_aside(store, tk, run.name, InvalidCheckpointError(
                    str(store.path(tk, run.name)), f"its {name} identity names a run that does "
                    f"not belong to '{run.name}' (tracelet run id {ref.run_id})"), rr)
                ck = slot.ck = Checkpoint(name, tk, run.name, run_id=ref.run_id)
                fresh, slot.legacy_keys = True, False
            ck.identity = slot.handle.identity
            ck.last_error = None
            # Lost state dir but the run exists on the destination: everything we are about to
            # send may be there already. The destination is the truth: dedupe all of it.
            if fresh and slot.handle.existed:
                ck.reconcile = True
            slot.dedupe_all = ck.reconcile
            slots.append(slot)
        if not slots:
            return

        self._at(f"sending field 'params' of {run.manifest_path}")
        params = flatten_params((manifest or {}).get("params") or {})
        self._sync_params(store, slots, params)
        for path in event_files:
            if self.stop.is_set():
                break
            self._at(f"reading event file {path}")
            self._sync_event_file(store, run, path, slots, rr)
        if not self.stop.is_set():
            self._sync_sidecar(store, run, ref, slots, rr)
            self._sync_artifacts(store, run, slots, rr)
            self._at(f"sending fields 'status'/'ended_at' of {run.manifest_path}")
            self._sync_status(store, slots, manifest)
        for slot in slots:
            if slot.dest is None:
                continue
            self._at(f"closing the run on {slot.name}")
            # Close BEFORE committing the signature: a kill between the two must leave the run
            # "changed", so the next sync runs close_run (end time, index refresh) again.
            closed = True
            try:
                if slot.handle is not None:
                    slot.dest.close_run(slot.handle)
            except Exception as e:
                closed = False
                log.warning("%s: closing run %s: %s", slot.name, run.name, scrub(str(e)))
                rr.problems.append(scrub(f"{slot.name}: closing run failed ({e}); retried next sync"))
            complete = closed and not slot.failed and not self.stop.is_set() and not slot.recheck
            if complete:
                slot.ck.source_signature = signature
                slot.ck.reconcile = False  # a whole pass re-checked everything: caught up
            if self.stop.is_set() and not slot.failed:
                slot.report.state = "interrupted"
            self._commit(store, slot)
            if complete and not self.o.dry_run:  # only after the checkpoint carrying it
                self._write_signature(store, slot.target_key, run.name, slot.ck, rr)

    @staticmethod
    def _set_aside(store: CheckpointStore, tk: str, run_path: str, err: InvalidCheckpointError,
                   rr: RunReport) -> None:
        try:
            where = f"moved aside to {store.set_aside(tk, run_path)}"
        except OSError as e:
            where = f"could not be moved aside ({e.strerror}); it is replaced"
        rr.note(f"{err} — {where}; the run is rebuilt by asking the destination what it "
                "already has (nothing is sent twice).")

    @staticmethod
    def _write_signature(store: CheckpointStore, tk: str, run_path: str, ck: Checkpoint,
                         rr: RunReport) -> None:
        try:
            store.write_signature(tk, run_path, ck)
        except (OSError, StateError) as e:  # costs only the fast path: the sync itself is done
            rr.note(f"{store.path(tk, run_path).with_suffix('.sig')}: not written ({e}); this "
                    "run is re-checked under its lock at every sync until it can be.")

    def _redact_tags(self, manifest: dict | None) -> dict | None:
        """The manifest as destinations see it: its tags under the redaction rule (params are
        redacted in ``_sync_params``, together with the hparams of the event files)."""
        tags = (manifest or {}).get("tags")
        if not isinstance(tags, dict) or not tags:
            return manifest
        return {**manifest, "tags": self._redactor.params(tags)}  # type: ignore[dict-item]

    def _linked_event_files(self, logdir: Path, run: RunSource, manifest: dict | None,
                            rr: RunReport | None) -> list[Path]:
        """Event files of the run's accepted ``linked_logdirs`` (:meth:`_accepted_links`)."""
        out: list[Path] = []
        if run.location is not None:  # local paths of the training machine: not followed
            return out
        for d in self._accepted_links(logdir, run, manifest, rr):
            disc = discover_runs(d) if os.path.isdir(d) else None
            for r in disc.runs if disc else []:
                out.extend(r.event_files)
        return out

    # -- helpers ------------------------------------------------------------------------------
    def _retry(self, slot: _Slot, fn, *args, what: str, **kw):
        return call_with_retry(fn, *args, what=f"{slot.name}: {what}", stop=self.stop, **kw)

    def _call(self, store: CheckpointStore, slot: _Slot, fn, *args, what: str, **kw) -> tuple[bool, Any]:
        """A destination call under the retry policy. On final failure the slot fails (only
        this destination; the others go on), its checkpoint is committed, and (False, None)."""
        try:
            return True, self._retry(slot, fn, *args, what=what, **kw)
        except DestinationError as e:
            slot.fail(e)
            self._commit(store, slot)
            return False, None

    def _commit(self, store: CheckpointStore, slot: _Slot) -> None:
        if self.o.dry_run or slot.dest is None:
            return
        store.commit(slot.target_key, slot.run_path, slot.ck)

    @staticmethod
    def _live(slots: Iterable[_Slot]) -> list[_Slot]:
        return [s for s in slots if not s.failed]

    def _sync_params(self, store: CheckpointStore, slots: list[_Slot], params: dict[str, Any]) -> None:
        if not params:
            return
        params = self._redactor.params(params)
        for slot in self._live(slots):
            new = {k: v for k, v in params.items() if slot.ck.params.get(k) != param_text(v)}
            if not new:
                continue
            if slot.dest is None:
                slot.report.params_sent += len(new)
                continue
            if not slot.dest.capabilities.params:
                slot.report.add("unsupported", {"params": len(new)})
            else:
                self._key_notes(slot, slot.ledger().note("p", list(new), slot.dest.param_key))
                outcomes = self._call_isolated(
                    store, slot, slot.dest.log_params, list(new.items()),
                    lambda items: (slot.handle, dict(items)), what="log params")
                if outcomes is None:
                    continue
                conflicts: list[str] = []
                refused = 0
                for status, items, result in outcomes:
                    if status == "ok":
                        conflicts.extend(result or [])
                        continue
                    refused += 1
                    self._quarantine(slot, None, f"param {items[0][0]!r} rejected by {slot.name}: "
                                     f"{cause_text(result)}; not retried until its value changes")
                for k in conflicts:
                    slot.report.param_conflicts.append(
                        f"param '{k}': destination keeps its earlier value; new value "
                        f"{param_text(new[k])!r} not applied ({slot.name} params are write-once)")
                slot.report.params_sent += len(new) - len(conflicts) - refused
                self._count_quarantined(slot, {"params": refused})
            slot.ck.params.update({k: param_text(v) for k, v in new.items()})
            self._commit(store, slot)

    def _call_isolated(self, store: CheckpointStore, slot: _Slot, fn, items: list,
                       args, what: str, **kw: Any) -> list[tuple[str, list, Any]] | None:
        """``fn(*args(items), **kw)`` under the retry policy; a permanent refusal is split down
        to the items that fail alone (:class:`Isolation`). Returns the outcomes in order, or
        None when the destination failed (the slot is failed and committed)."""
        try:
            result = self._retry(slot, fn, *args(items), what=what, **kw)
            self._wrote.add(slot.name)
            return [("ok", items, result)]
        except DestinationError as e:
            if destination_wide(e):
                slot.fail(e)
                self._commit(store, slot)
                return None
            error = e
        iso = Isolation(lambda part: self._retry(slot, fn, *args(part), what=what, **kw),
                        wrote_before=slot.name in self._wrote)
        try:
            outcomes = iso.run(items, error)
        except (Suspect, DestinationError) as e:
            slot.fail(DestinationError(f"{slot.name}: {what}: {e}") if isinstance(e, Suspect) else e)
            self._commit(store, slot)
            return None
        if iso.landed:
            self._wrote.add(slot.name)
        return outcomes

    def _sync_event_file(self, store: CheckpointStore, run: RunSource, path: Path,
                         slots: list[_Slot], rr: RunReport) -> None:
        try:
            rel = path.relative_to(run.path).as_posix()
        except ValueError:
            rel = "linked:" + str(path)
        src = _SourceFile.of(run, path)
        if src is None:
            rr.problems.append(f"{path}: no longer in the bucket; skipped this sync.")
            return
        try:
            st = src.stat()
            size = st.st_size  # the signpost: bytes appended later wait for next sync
        except OSError as e:
            rr.problems.append(f"{path}: cannot stat ({e.strerror}); skipped this sync.")
            return
        active: list[tuple[_Slot, FileState, int]] = []  # slot, state, old pending end
        for slot in self._live(slots):
            fs = slot.ck.files.setdefault(rel, FileState())
            try:
                check_file_identity(path, fs, size, src.read_head, src.etag)
                if not fs.replaced:
                    fs.etag = src.etag
            except FileReplacedError as e:
                fs.replaced = str(e)
            except (OSError, NotRegularFileError, SourceError) as e:
                _source_unreadable(rr, slots, path, e, 0)
                return
            if fs.replaced:
                rr.note(fs.replaced)
                continue
            old_pending = fs.pending_end if fs.pending_end and fs.pending_end > fs.offset else fs.offset
            if slot.dedupe_all:
                old_pending = size
            active.append((slot, fs, old_pending))
        work = [(s, fs, p) for s, fs, p in active if fs.offset < size and fs.corrupt_offset is None]
        for s, fs, _ in active:
            if fs.corrupt_offset is not None:
                rr.note(f"{path}: corrupt at byte {fs.corrupt_offset} ({fs.corrupt_reason}); "
                        "records before it were synced, the rest of the file is skipped.")
        if not work:
            return
        # Durably note "up to `size` may be in flight" before the first send of this file.
        for slot, fs, _ in work:
            try:
                remember_identity(path, fs, size, src.read_head)
            except (OSError, NotRegularFileError, SourceError):
                pass  # the read below meets the same error and reports it
            fs.pending_end = max(size, fs.pending_end or 0)
            self._commit(store, slot)
        bounds = sorted({fs.offset for _, fs, _ in work} | {size})
        tag_plugins = min(work, key=lambda w: w[1].offset)[1].tag_plugins
        status = None
        readers: list[EventFileReader] = []
        for a, b in zip(bounds, bounds[1:]):
            joined = [w for w in work if w[1].offset <= a and not w[0].failed]
            if not joined:
                continue
            reader = EventFileReader(path, a, tag_plugins, opener=src.opener)
            readers.append(reader)
            plugins = tag_plugins  # the map as of each batch's start (to re-read it)
            for batch in _read_guarded(reader, b, self.o.batch_points, rr, slots):
                if batch.clamp_wall_times():
                    rr.note(f"{path}: points with an unusable wall time (NaN, Inf, negative or "
                            "beyond 1e12 s) were sent with wall time 0 (1970-01-01).")
                self._fan_out(store, batch, joined, rr, plugins)
                plugins = batch.tag_plugins
                if self.stop.is_set() or all(s.failed for s, _, _ in joined):
                    break
            tag_plugins = reader.tag_plugins
            status = reader.status
            if self.stop.is_set() or status.corrupt_offset is not None or status.offset < b:
                break
        skip_note = _skipped_records_note(path, readers)
        if skip_note:
            rr.note(skip_note)
        if status is not None:
            if status.corrupt_offset is not None:
                note = (f"{path}: corrupt at byte {status.corrupt_offset} ({status.corrupt_reason}); "
                        "records before it were synced, the rest of the file "
                        f"({size - status.corrupt_offset:,} bytes) is skipped. Restore the file "
                        "or remove it.")
                rr.problems.append(note)
            if status.bad_data_crc:
                where = ", ".join(str(o) for o in status.bad_data_offsets[:10])
                rr.problems.append(f"{path}: {status.bad_data_crc} record(s) with a bad data CRC "
                                   f"skipped at byte(s) {where} (counted in skipped_records); "
                                   "the records around them were synced.")
        for slot, fs, old_pending in work:
            if slot.failed:
                continue  # its last send may have landed: keep pending_end for the next sync
            if status is not None and status.corrupt_offset is not None and fs.offset == status.offset:
                fs.corrupt_offset, fs.corrupt_reason = status.corrupt_offset, status.corrupt_reason
            pending = status.pending_bytes if status is not None and fs.offset == status.offset else 0
            stuck = track_incomplete_tail(fs, pending, st.st_size, st.st_mtime_ns)
            if stuck is not None:
                rr.note(_stuck_tail_note(path, stuck, pending, st.st_mtime))
            elif pending:
                slot.recheck = True  # next pass compares; the fast path would never look again
            fs.size_seen = size
            # Every batch sent to a healthy slot was committed, so nothing of *this* sync is in
            # flight; only an older in-flight range not yet re-read stays marked.
            fs.pending_end = old_pending if fs.offset < old_pending else None
            self._commit(store, slot)

    def _fan_out(self, store: CheckpointStore, batch: Batch, joined, rr: RunReport,
                 plugins: dict[str, str]) -> None:
        for slot, fs, old_pending in joined:
            if slot.failed or fs.offset != batch.start_offset:
                continue
            if batch.hparams:
                # Params first: they commit on their own, and must never commit a destination
                # state (W&B's point ordinals) that is ahead of the committed offset.
                merged: dict[str, Any] = {}
                for hp in batch.hparams:
                    merged.update(hp.hparams)
                self._sync_params(store, [slot], merged)
                if slot.failed:
                    continue
            if slot.dest is not None:
                self._note_keys(slot, batch)
            if slot.dest is not None and batch.points:
                dedupe = batch.start_offset < old_pending
                self._deliver(store, slot, fs, batch, dedupe, plugins, rr)
            else:
                self._land(slot, fs, batch, {})
                self._commit(store, slot)

    # -- delivery with quarantine (tracelet.quarantine) ---------------------------------------
    def _deliver(self, store: CheckpointStore, slot: _Slot, fs: FileState, batch: Batch,
                 dedupe: bool, plugins: dict[str, str], rr: RunReport) -> bool:
        """Send one batch and commit it. A permanent refusal is isolated record by record
        (:meth:`_isolate`); what fails alone is quarantined, the rest lands."""
        what = f"send {batch.points} points of {batch.path}"
        try:
            rejected = self._retry(slot, _dedupe_retries(slot.dest.send), slot.handle, batch,
                                   dedupe=dedupe, what=what)
        except DestinationError as e:
            if destination_wide(e):
                slot.fail(e)
                self._commit(store, slot)
                return False
            return self._isolate(store, slot, fs, batch, plugins, rr, e)
        self._wrote.add(slot.name)
        crash_point("after_send")
        records = (record_batches(batch, plugins) or [batch]) if rejected else [batch]
        self._land(slot, fs, batch, self._rejected(slot, rr, batch, records, rejected))
        self._commit(store, slot)
        return True

    def _isolate(self, store: CheckpointStore, slot: _Slot, fs: FileState, batch: Batch,
                 plugins: dict[str, str], rr: RunReport, error: DestinationError) -> bool:
        records = record_batches(batch, plugins)
        if not records or not same_points(merge(records), batch):  # the file changed under us
            slot.fail(error)
            self._commit(store, slot)
            return False
        # Sub-batches move the destination's own state (W&B point ordinals, ClearML copy
        # numbers); if the destination is found guilty, that state goes back to what the
        # checkpoint holds, and the next sync resends the range with dedupe.
        saved = copy.deepcopy(slot.handle.identity)

        def send(items: list[Batch]) -> Any:
            sub = merge(items)
            result = self._retry(
                slot, slot.dest.send, slot.handle, sub, dedupe=True,
                what=f"send {sub.points} points of {batch.path} (bytes {sub.start_offset}-"
                     f"{sub.end_offset}, isolating a refused record)")
            crash_point("after_send")
            return result

        iso = Isolation(send, wrote_before=slot.name in self._wrote)
        try:
            outcomes = iso.run(records, error)
        except (Suspect, DestinationError) as e:
            slot.handle.identity.clear()
            slot.handle.identity.update(saved)
            slot.fail(DestinationError(f"{slot.name}: {e}") if isinstance(e, Suspect) else e)
            self._commit(store, slot)
            return False
        if iso.landed:
            self._wrote.add(slot.name)
        for status, items, result in outcomes:
            sub = merge(items)
            if status == "ok":
                quarantined = self._rejected(slot, rr, sub, items, result)
            else:
                quarantined = point_counts(sub)
                self._quarantine(slot, rr, f"{describe_points(sub)} rejected by {slot.name}: "
                                 f"{cause_text(result)} ({self._where(slot, sub)}); not retried")
            self._land(slot, fs, sub, quarantined)
        self._commit(store, slot)  # once: offsets and the destination's state move together
        return True

    def _rejected(self, slot: _Slot, rr: RunReport, batch: Batch, records: list[Batch],
                  rejected: list[Rejected] | None) -> dict[str, int]:
        """Quarantine the points ``send`` left out (layer 1: the mapping): one line each,
        naming the record that holds the point (``records``: ``batch`` record by record)."""
        counts: dict[str, int] = {}
        for r in rejected or ():
            counts[r.kind] = counts.get(r.kind, 0) + 1
            rec = locate(records, r.kind, r.index) or batch
            p = point(batch, r.kind, r.index)
            tag, step = p if r.kind == SCALAR else (p.tag, p.step)
            self._quarantine(slot, rr, f"1 {r.kind} {tag!r} step {step} rejected by {slot.name}: "
                             f"{r.reason} ({self._where(slot, rec)}); not retried")
        return counts

    @staticmethod
    def _where(slot: _Slot, b: Batch) -> str:
        return where(b.path, b.start_offset, b.end_offset, slot.run_dir)

    def _quarantine(self, slot: _Slot, rr: RunReport | None, line: str) -> None:
        line = scrub(line)  # vendor error text: never a credential in a report or checkpoint
        log.info("%s: %s", slot.ck.run_path, line)
        for lines in (slot.report.quarantine, slot.ck.quarantine):
            lines.append(line)
            del lines[:-QUARANTINE_LINES]

    @staticmethod
    def _count_quarantined(slot: _Slot, counts: dict[str, int]) -> None:
        slot.ck.add_counts("quarantined", counts)
        slot.report.add("quarantined", counts)

    def _land(self, slot: _Slot, fs: FileState, batch: Batch,
              quarantined: dict[str, int]) -> None:
        """Account a delivered batch: offset, counts (the caller commits)."""
        caps_kinds = slot.dest.capabilities.kinds if slot.dest is not None else None
        sent, unsupported = {}, {}
        for k, n in batch.point_counts().items():
            if not n or k == HPARAMS:
                continue
            if caps_kinds is not None and k not in caps_kinds:
                unsupported[k] = n
            elif n - quarantined.get(k, 0):
                sent[k] = n - quarantined.get(k, 0)
        if batch.hparams:
            sent[HPARAMS] = len(batch.hparams)
        fs.offset = batch.end_offset
        fs.records += batch.records
        fs.points += batch.points
        fs.skipped_records += batch.skipped_records
        fs.tag_plugins = batch.tag_plugins
        for name, counts in (("points_sent", sent), ("unsupported", unsupported),
                             ("other", batch.other), ("quarantined", quarantined)):
            slot.ck.add_counts(name, counts)
            slot.report.add(name, counts)
        slot.report.skipped_records += batch.skipped_records
        self.out.points(sum(sent.values()))

    def _note_keys(self, slot: _Slot, batch: Batch) -> None:
        """Report each tag the destination renames, and tags that would meet (``keys.py``)."""
        tags = set(batch.scalars.tags)
        for name in ("histograms", "images", "texts", "audio"):
            tags.update(p.tag for p in getattr(batch, name))
        if tags:
            self._key_notes(slot, slot.ledger().note("m", sorted(tags), slot.dest.metric_key))

    def _key_notes(self, slot: _Slot, lines: list[str]) -> None:
        if not lines:
            return
        if slot.legacy_keys:
            slot.legacy_keys = False
            lines.append(f"this run was synced to {slot.name} before tracelet's key scheme "
                         f"{KEY_SCHEME}: the points a renamed tag sent then stay under its old "
                         "key (README: Key mapping)")
        slot.report.keys.extend(lines)

    def _sync_sidecar(self, store: CheckpointStore, run: RunSource, ref: RunRef,
                      slots: list[_Slot], rr: RunReport) -> None:
        from .sidecar import read_part  # pyarrow: only when a run has work
        from .storage import runs as objects

        files = RunFiles(run.path, self.o.follow_artifact_links)
        self._at(f"listing sidecar parts in {run.sidecar_dir}")
        try:
            # links out of the run: reported, skipped; object storage: from the listing
            parts = files.sidecar_parts(rr.problems) if run.location is None \
                else objects.sidecar_parts(run)
        except SourceError as e:
            rr.problems.append(str(e))
            return
        for part in parts:
            if self.stop.is_set():
                return
            need = [s for s in self._live(slots) if part.name not in s.ck.sidecar_done]
            if not need:
                continue
            self._at(f"reading sidecar part {part}")
            notes: list[str] = []
            if run.location is not None:  # read whole (bounded), checked by the same reader
                try:
                    table = objects.read_part(run, part, notes)
                except SourceError as e:
                    rr.note(str(e))
                    continue
            else:
                try:
                    fd = files.open(part)  # checked at read time too: a link swapped in is refused
                except FileNotFoundError:
                    continue  # removed since listing: nothing to send
                except SourceError as e:  # unreadable, a FIFO, a folder: retried every sync
                    _source_unreadable(rr, need, part, e, 0)
                    continue
                try:
                    with os.fdopen(fd, "rb") as f:  # read once, whatever the number of destinations
                        table = read_part(part, notes, f)
                except SourceError as e:
                    rr.note(str(e))
                    continue
            for note in notes:
                rr.note(note)
            rows = SystemRows.from_table(part.name, table)
            for slot in need:
                if slot.dest is None:
                    slot.report.add("points_sent", {"system": table.num_rows})
                    continue
                if not slot.dest.capabilities.system_metrics:
                    slot.report.add("unsupported", {"system": table.num_rows})
                    slot.ck.add_counts("unsupported", {"system": table.num_rows})
                else:
                    dedupe = slot.dedupe_all or slot.ck.sidecar_pending == part.name
                    slot.ck.sidecar_pending = part.name
                    self._commit(store, slot)
                    # One unit: a part's rows are matched by the part's content on resend.
                    outcomes = self._call_isolated(
                        store, slot, _dedupe_retries(slot.dest.send_system), [part],
                        lambda _: (slot.handle, rows, ref), dedupe=dedupe,
                        what=f"send system metrics {part.name}")
                    if outcomes is None:
                        continue
                    if outcomes[0][0] == "ok":
                        slot.report.add("points_sent", {"system": table.num_rows})
                        slot.ck.add_counts("points_sent", {"system": table.num_rows})
                    else:
                        self._count_quarantined(slot, {"system": table.num_rows})
                        self._quarantine(slot, rr, f"{table.num_rows} system points of {SIDECAR_DIR}/{part.name} "
                                         f"rejected by {slot.name}: {cause_text(outcomes[0][2])}; "
                                         "not retried")
                slot.ck.sidecar_done.append(part.name)
                slot.ck.sidecar_pending = None
                self._commit(store, slot)

    def _sync_artifacts(self, store: CheckpointStore, run: RunSource, slots: list[_Slot],
                        rr: RunReport) -> None:
        """Upload new or changed artifacts. Only files whose real path is inside the run are
        read (links out of it are reported; ``follow_artifact_links`` allows them), through
        descriptors checked when opened (:meth:`RunFiles.pinned`). An artifact that cannot be
        read fails alone: the others upload, it is reported and retried at the next sync."""
        self._at(f"listing artifacts in {run.artifacts_dir}")
        listed: list[str] = []
        if run.location is None:
            runfiles = RunFiles(run.path, self.o.follow_artifact_links)
            files = runfiles.artifacts(listed)
            pin = runfiles.pinned
        else:  # object storage: (size, ETag) from the listing; uploaded from local copies
            from .storage import runs as objects

            files = objects.artifacts(run)
            pin = lambda items: objects.pinned(run, items)  # noqa: E731
        for p in listed:
            rr.note(p)
        todo = sorted(rel for rel, sig in files.items()
                      if any(s.ck.artifacts.get(rel) != list(sig) for s in self._live(slots)))
        for i in range(0, len(todo), _PIN_CHUNK):  # bounded: each pinned file holds a descriptor
            chunk = todo[i: i + _PIN_CHUNK]
            self._at(f"uploading artifacts {chunk[0]} ... of {run.artifacts_dir}")
            with pin([(run.artifacts_dir / rel, rel) for rel in chunk]) as (views, bad):
                for rel in chunk:  # reported; fails the run's report, retried every sync
                    if rel in bad:
                        _source_unreadable(rr, self._live(slots), run.artifacts_dir / rel,
                                           SourceError(bad[rel]), 0)
                for slot in self._live(slots):
                    changed = [(views[rel][0], rel) for rel in chunk
                               if rel in views and slot.ck.artifacts.get(rel) != list(files[rel])]
                    if not changed:
                        continue
                    if slot.dest is None:
                        slot.report.artifacts_sent += len(changed)
                        continue
                    if not slot.dest.capabilities.artifacts:
                        slot.report.add("unsupported", {"artifact": len(changed)})
                    else:
                        outcomes = self._call_isolated(
                            store, slot, slot.dest.log_artifacts, changed,
                            lambda items: (slot.handle, items),
                            what=f"upload {len(changed)} artifact(s)")
                        if outcomes is None:
                            continue
                        for status, items, result in outcomes:
                            if status == "ok":
                                slot.report.artifacts_sent += len(items)
                                continue
                            # recorded as sent below: retried only once the file changes
                            self._count_quarantined(slot, {"artifact": 1})
                            self._quarantine(slot, None, f"artifact {items[0][1]} rejected by "
                                             f"{slot.name}: {cause_text(result)}; not retried "
                                             "until the file changes")
                    for _, rel in changed:  # what was opened and sent, not what was listed
                        slot.ck.artifacts[rel] = list(views[rel][1])
                    self._commit(store, slot)

    def _sync_status(self, store: CheckpointStore, slots: list[_Slot], manifest: dict | None) -> None:
        status = (manifest or {}).get("status")
        if not status:
            return
        ended_at = (manifest or {}).get("ended_at")
        ended = _as_unix(ended_at)
        for slot in self._live(slots):
            if slot.ck.status == status and slot.ck.ended_at == ended:
                continue
            if slot.dest is not None and slot.dest.capabilities.status:
                ok, _ = self._call(store, slot, slot.dest.finish, slot.handle, status, ended,
                                   what=f"set status {status}")
                if not ok:
                    continue
            slot.ck.status, slot.ck.ended_at = status, ended
            self._commit(store, slot)


def _dedupe_retries(send):
    """A send that failed may have landed in part (a vendor call cut mid-batch): every attempt
    after the first is made with ``dedupe=True``, so a retry never stores a point twice."""
    attempts = 0

    def call(*args, dedupe: bool, **kw):
        nonlocal attempts
        attempts += 1
        return send(*args, dedupe=dedupe or attempts > 1, **kw)

    return call


class _SourceFile:
    """One event file as ``_sync_event_file`` reads it: its size now (the signpost), how to
    read its head and its bytes. Local files: ``os.stat`` and ``open``. Objects: the size and
    ETag of the pass's listing, ranged GETs pinned to that version."""

    __slots__ = ("path", "loc", "entry", "etag")

    def __init__(self, path, loc=None, entry=None):
        self.path, self.loc, self.entry = path, loc, entry
        self.etag = entry.etag if entry is not None else ""

    @classmethod
    def of(cls, run: RunSource, path) -> "_SourceFile | None":
        if run.location is None or not isinstance(path, ObjectPath):
            return cls(path)
        entry = run.location.entry(path)
        return cls(path, run.location, entry) if entry is not None else None

    def stat(self):
        """``os.stat`` of a local file; for an object, its size and its ETag in place of the
        mtime (what tells a stuck incomplete tail from a growing one)."""
        if self.entry is None:
            return os.stat(self.path)
        return _ObjectStat(self.entry.size, self.etag, self.entry.mtime or 0.0)

    @property
    def read_head(self):
        if self.loc is None:
            return None
        return lambda path, n: self.loc.head_bytes(path, n, self.etag)

    @property
    def opener(self):
        if self.loc is None:
            return None
        return lambda path: self.loc.open(self.path, self.entry.size, self.etag)

    @staticmethod
    def changed(exc: BaseException) -> bool:
        from .storage.objects import ObjectChangedError

        return isinstance(exc, ObjectChangedError)


@dataclass(frozen=True)
class _ObjectStat:
    st_size: int
    st_mtime_ns: str  # the ETag: compared for equality only (track_incomplete_tail)
    st_mtime: float


def _read_guarded(reader: EventFileReader, end: int, max_points: int, rr: RunReport,
                  slots: list[_Slot]):
    """``reader.batches(end)``, but a file that cannot be opened or read (permissions, I/O
    error, a FIFO put in its place) ends the read with a report instead of an exception. Only
    the reader's own errors are caught here: a failing checkpoint commit still fails the run."""
    it = reader.batches(end=end, max_points=max_points)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except (OSError, NotRegularFileError, SourceError) as e:
            if _SourceFile.changed(e):  # an object re-uploaded by its writer during the read:
                log.info("%s", e)  # what was sent is committed; the rest is read next sync
                return
            _source_unreadable(rr, slots, reader.path, e, reader.status.offset)
            return
        yield batch


def _source_unreadable(rr: RunReport, slots: list[_Slot], path: Path, err: Exception,
                       offset: int) -> None:
    """Report an event file that cannot be read and fail the run's report for it (not the
    slots: the run's other files still sync)."""
    if isinstance(err, OSError):
        rr.note(unreadable_message(path, err, offset, "not synced this time (retried every sync)"))
        short = f"{path}: cannot read ({err.strerror or err})"
    else:
        rr.note(str(err))
        short = str(err).partition(";")[0]
    for slot in slots:
        if not slot.failed:
            slot.source_failed(f"not synced: {short} (see problems)")


def _skipped_records_note(path: Path, readers: list[EventFileReader]) -> str | None:
    """One problem line for the records of a file skipped as not an Event or malformed."""
    n = sum(r.unparsable + r.refused for r in readers)
    if not n:
        return None
    details = "; ".join(d for d in (r.skip_details() for r in readers) if d)
    return (f"{path}: {n:,} record(s) skipped as undecodable (counted in skipped_records): "
            f"{details}. The records around them were synced.")


def _stuck_tail_note(path: Path, tail: dict, pending: int, mtime: float) -> str:
    """The warning for an incomplete tail that a pass found exactly as the previous one did."""
    from .inspect import iso_utc

    return (f"{path}: incomplete record at byte {tail['offset']} ({pending:,} bytes pending) "
            f"unchanged since {iso_utc(tail['since'])} (file last modified {iso_utc(mtime)}): "
            "the file no longer grows. The writer may have died mid-record; if it will not "
            "resume, the last record is lost (the records before it were synced). Nothing to do "
            "if the writer is still running (it completes the record when it next flushes).")


_PIN_CHUNK = 256  # artifacts opened at once (file descriptors) per upload call
def _merge_runs(old: list[RunReport], new: list[RunReport]) -> list[RunReport]:
    """Across --follow passes keep one report per run, accumulating counts."""
    by_key = {(r.logdir, r.run): r for r in old}
    for r in new:
        prev = by_key.get((r.logdir, r.run))
        if prev is None:
            by_key[(r.logdir, r.run)] = r
            continue
        prev.problems = r.problems
        prev.errors, prev.traceback = r.errors, r.traceback
        prev.locked = r.locked
        for name, d in r.destinations.items():
            p = prev.destinations.get(name)
            if p is None or d.state in ("synced", "failed", "interrupted"):
                if p is not None:
                    d.add("points_sent", p.points_sent)
                    d.add("unsupported", p.unsupported)
                    d.add("quarantined", p.quarantined)
                    d.quarantine[:0] = p.quarantine
                    d.keys[:0] = p.keys
                    d.skipped_records += p.skipped_records
                prev.destinations[name] = d
    return list(by_key.values())


# ---------------------------------------------------------------------------------------------
# output: progress bar on a TTY, log lines in cron
# ---------------------------------------------------------------------------------------------
class _Output:
    """stderr lines. ``quiet`` (``-q``): errors only; ``verbose`` (``-v``): with tracebacks;
    ``--json`` off a TTY: nothing (the report says it all)."""

    def __init__(self, options: SyncOptions):
        self.tty = options.progress if options.progress is not None else sys.stderr.isatty()
        self.silent = options.json_output and not self.tty
        self.quiet = options.quiet
        self.verbose = options.verbose
        self.lock = threading.Lock()
        self.total = 0
        self.done = 0
        self.npoints = 0
        self.t0 = time.monotonic()

    def begin(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.monotonic()

    def points(self, n: int) -> None:
        with self.lock:
            self.npoints += n
            if self.tty:
                self._bar()

    def _bar(self) -> None:
        width = 30
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(frac * width)
        rate = self.npoints / max(time.monotonic() - self.t0, 1e-6)
        sys.stderr.write(f"\r[{bar:<{width}}] {self.done}/{self.total} runs  "
                         f"{self.npoints:,} points  {rate:,.0f} pts/s ")
        sys.stderr.flush()

    def run_done(self, rr: RunReport) -> None:
        with self.lock:
            self.done += 1
            if self.tty:
                self._bar()
                for d in rr.destinations.values():
                    if d.state == "failed":
                        sys.stderr.write(scrub(f"\n{rr.run} -> {d.destination}: FAILED: {d.error}\n"))
                for p in rr.errors:
                    sys.stderr.write(scrub(f"\n{rr.run}: ERROR: {p}\n"))
                if self.verbose and rr.traceback:
                    sys.stderr.write(scrub(rr.traceback))
                return
            if self.silent:  # --json: the report says it all; -v still shows tracebacks
                if self.verbose and rr.traceback:
                    print(scrub(rr.traceback), file=sys.stderr, end="", flush=True)
                return
            for d in rr.destinations.values():
                if d.state == "unchanged" or (self.quiet and d.state != "failed"):
                    continue
                line = f"tracelet: {rr.run} -> {d.destination}: {d.state}"
                if d.points_sent:
                    line += " " + ", ".join(f"{k} {n}" for k, n in sorted(d.points_sent.items()))
                if d.unsupported:
                    line += " (unsupported: " + ", ".join(
                        f"{k} {n}" for k, n in sorted(d.unsupported.items())) + ")"
                if d.quarantined:
                    line += " (quarantined: " + ", ".join(
                        f"{k} {n}" for k, n in sorted(d.quarantined.items())) + ")"
                if d.error:
                    line += f": {d.error}"
                print(scrub(line), file=sys.stderr, flush=True)
                for label, lines in (("quarantined", d.quarantine), ("key", d.keys)):
                    for text in lines[:MAX_PRINTED_LINES]:
                        print(scrub(f"tracelet: {rr.run} -> {d.destination}: {label}: {text}"),
                              file=sys.stderr, flush=True)
                    if len(lines) > MAX_PRINTED_LINES:
                        print(f"tracelet: {rr.run} -> {d.destination}: {len(lines) - MAX_PRINTED_LINES} "
                              f"more {label} line(s) in the --json report", file=sys.stderr, flush=True)
            for p in rr.errors:
                print(scrub(f"tracelet: {rr.run}: error: {p}"), file=sys.stderr, flush=True)
            if not self.quiet:
                for p in rr.problems:
                    print(scrub(f"tracelet: {rr.run}: {p}"), file=sys.stderr, flush=True)
            if self.verbose and rr.traceback:
                print(scrub(rr.traceback), file=sys.stderr, end="", flush=True)

    def problem(self, line: str) -> None:
        """A warning outside any run (unreadable folder, FIFO named like an event file)."""
        if self.silent or self.quiet:
            return
        with self.lock:
            print(scrub(f"{chr(10) if self.tty else ''}tracelet: {line}"), file=sys.stderr,
                  flush=True)

    def error(self, line: str) -> None:
        """An error outside any run (a logdir whose runs could not be found): even with -q."""
        if self.silent:
            return
        with self.lock:
            print(scrub(f"{chr(10) if self.tty else ''}tracelet: error: {line}"), file=sys.stderr,
                  flush=True)

    def end(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


# ---------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------
def run_sync(logdirs: list[str], options: SyncOptions) -> SyncReport:
    """Sync ``logdirs`` once, or until stopped with ``options.follow``. Library entry point."""
    if not logdirs:
        raise UsageError("give at least one LOGDIR")
    report = SyncReport()
    engine = SyncEngine(options)
    restore = _install_signal_handlers(engine.stop)
    t0 = time.monotonic()
    try:
        while True:
            engine.run_pass(logdirs, report)
            report.passes += 1
            if not options.follow or engine.stop.is_set():
                break
            if engine.stop.wait(options.interval_s):
                break
    finally:
        restore()
        engine.close()
        report.elapsed_s = time.monotonic() - t0
    if engine.stop.is_set():
        report.interrupted = True
        if not options.follow:
            report.problems.append("interrupted: what was sent is committed; run sync again to "
                                   "continue")
            for r in report.runs:
                for d in r.destinations.values():
                    if d.state == "interrupted":
                        d.state = "failed"
                        d.error = d.error or "interrupted"
    return report


def sync(logdir: str | os.PathLike, to: str | list[str], **kw: Any) -> SyncReport:
    """Python API: ``tracelet.sync("runs", to="mlflow")``."""
    dests = parse_destinations(to if isinstance(to, str) else ",".join(to))
    return run_sync([os.fspath(logdir)], SyncOptions(destinations=dests, progress=False, **kw))


def sync_run_dir(run_dir: str | os.PathLike, backends: list[str] | str | None = None,
                 logdir: str | os.PathLike | None = None, **kw: Any) -> SyncReport:
    """Sync one run directory (the recorder's live mode). Its name on destinations is its path
    relative to ``logdir`` (default: two levels up, ``<logdir>/<project>/<name>``), the same as
    a later ``tracelet sync <logdir>`` would use, so both share checkpoints."""
    run_dir = Path(run_dir).resolve()
    root = Path(logdir).resolve() if logdir else run_dir.parent.parent
    dests = None
    if backends:
        dests = parse_destinations(backends if isinstance(backends, str) else ",".join(backends))
    kw.setdefault("progress", False)
    opts = SyncOptions(destinations=dests, run_filter=lambda r: r.path.resolve() == run_dir, **kw)
    return run_sync([str(root)], opts)


def _install_signal_handlers(stop: threading.Event):
    """SIGTERM/SIGINT: drain (finish the batch in hand, commit) and stop. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {}

    def handler(signum, frame):
        if stop.is_set():  # second signal: the user really wants out
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):
            pass

    def restore():
        for sig, h in previous.items():
            try:
                signal.signal(sig, h)
            except (ValueError, OSError):
                pass

    return restore
