"""Planning a pass: which runs, under which names and ids, and whether a run changed at all.

Discovery (local walk or object-store listing), shards, run ids, the stat-only source signature
and the no-op fast path, ``linked_logdirs`` rules, state-dir rules. Nothing here sends or
commits: it decides what the protocol (:mod:`.protocol`) gets to do.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from ..checkpoint import CheckpointStore
from ..destinations import is_known
from ..errors import InvalidCheckpointError, SourceError, StateError, UsageError
from ..manifest import load_manifest
from ..reader import RunSource, discover_runs
from ..redact import scrubbed_logger
from ..retry import _short
from ..rundir import MANIFEST_NAME, SIDECAR_DIR, STATE_DIR_NAME
from ..runfiles import RunFiles, within
from ..storage import ObjectPath, is_object_url, open_location
from .behind import event_file_size, file_key, unread
from .options import SyncOptions
from .naming import display_name, fold_name
from .plain import hparams_signature, is_idle, newest_mtime
from .pool import TargetKeys
from .report import DestReport, RunReport

log = scrubbed_logger("tracelet.sync")


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
def source_signature(run: RunSource, event_files: list[Path], follow_links: bool = False,
                     idle_after_s: float | None = None, now: float | None = None) -> str:
    """Stat-only fingerprint of everything a sync would send (:func:`run_signature`)."""
    return run_signature(run, event_files, follow_links, idle_after_s, now)[0]


def run_signature(run: RunSource, event_files: list[Path], follow_links: bool = False,
                  idle_after_s: float | None = None, now: float | None = None
                  ) -> tuple[str, bool]:
    """Stat-only fingerprint of everything a sync would send, and whether the run is idle.

    Plain TensorBoard runs (no manifest) cost one stat per event file, plus one for a
    Lightning ``hparams.yaml`` and a listing each of ``sysmetrics/`` and ``artifacts/`` (sync
    sends those for a run without a manifest too; absent, they add nothing). Artifacts are
    those :meth:`RunFiles.artifacts` lists (no link out of the run). Runs in object storage:
    size + ETag of each object, from the pass's listing.

    Idle (``--finish-idle``, ``idle_after_s``; runs without a manifest only): the newest event
    file was last modified at least ``idle_after_s`` before ``now``. It is part of the
    fingerprint, so a run that becomes idle gets one pass (which finishes it on its
    destinations) and an idle run stays unchanged afterwards. A file absent and a run not idle
    add nothing: fingerprints of runs without either are what they were before both."""
    check_idle = idle_after_s is not None and not run.has_manifest
    now = time.time() if now is None and check_idle else now
    if run.location is not None:
        from ..storage.runs import signature

        base = signature(run, event_files)
        idle = check_idle and is_idle(newest_mtime(run, event_files), idle_after_s, now)
        extra = hparams_signature(run) + ("idle\n" if idle else "")
        return (hashlib.sha1(f"{base}\n{extra}".encode()).hexdigest() if extra else base), idle
    h = hashlib.sha1()
    newest: float | None = None
    for p in event_files:
        try:
            st = os.stat(p)
            h.update(f"e {p}:{st.st_size}:{st.st_mtime_ns}\n".encode())
            newest = st.st_mtime if newest is None else max(newest, st.st_mtime)
        except OSError:
            h.update(f"e {p}:missing\n".encode())
    h.update(hparams_signature(run).encode())
    base = os.fspath(run.path)
    if run.has_manifest:
        try:
            st = os.stat(os.path.join(base, MANIFEST_NAME))
            h.update(f"m {st.st_size}:{st.st_mtime_ns}\n".encode())
        except OSError:
            pass
    # sidecar parts and artifacts sync for a run without a manifest too: a part or an artifact
    # written after the last event must not wait for an event file to change
    try:
        h.update(("s " + ",".join(sorted(os.listdir(os.path.join(base, SIDECAR_DIR)))) + "\n").encode())
    except OSError:
        pass
    for rel, (size, mtime) in sorted(RunFiles(run.path, follow_links).artifacts().items()):
        h.update(f"a {rel}:{size}:{mtime}\n".encode())
    idle = not run.has_manifest and check_idle and is_idle(newest, idle_after_s, now)
    if idle:
        h.update(b"idle\n")
    return h.hexdigest(), idle


class Planner:
    """The planning half of a sync engine: one per :class:`~.runner.SyncEngine`."""

    def __init__(self, options: SyncOptions, target_keys: TargetKeys):
        self.o = options
        self._target_keys = target_keys
        self._stores: dict[Path, CheckpointStore] = {}  # per logdir: resolve() once, not per run
        self._locations: dict[str, Any] = {}  # object-store logdirs: one client each, kept
        self._roots: list[str] = []  # real paths of the LOGDIRs of this pass (linked_logdirs)
        self._logdir_names: dict[Any, str] = {}  # logdir -> its folder's name (project default)

    def project(self, logdir: Path, manifest: dict | None) -> str:
        """Manifest ``project``, else ``--project``, else the logdir folder's name (resolved
        once per logdir: the fast path asks for every run)."""
        given = (manifest or {}).get("project") or self.o.project
        if given:
            return str(given)
        name = self._logdir_names.get(logdir)
        if name is None:
            name = self._logdir_names[logdir] = logdir.resolve().name
        return name

    def store_for(self, logdir: Path) -> CheckpointStore:
        store = self._stores.get(logdir)
        if store is None:
            store = self._stores[logdir] = CheckpointStore(state_dir_for(logdir, self.o.state_dir))
        return store

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
            if not disc.runs:
                self._nothing_found(ld, disc.problems)
                problems.append(f"{ld}: no runs yet (no folder holds events.out.tfevents.* "
                                "files or a tracelet.json); waiting for them (--follow).")
            else:
                self._check_state_dir(root)
            found.append((root, disc.runs))
        linked: set[str] = set()  # real paths of folders synced as part of another run
        for root, runs in found:
            for run in runs:
                if not run.has_manifest:
                    continue
                try:
                    manifest = load_manifest(run.path, validate=False,
                                             follow_links=self.o.follow_artifact_links)
                    linked.update(self.accepted_links(root, run, manifest, None))
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

    def _nothing_found(self, ld: str, problems: list[str]) -> None:
        """A logdir without any run: a typo, or training writes elsewhere. Nothing would
        happen, so it is a usage error (exit 2), except with ``--follow``, which waits."""
        if self.o.follow:
            return
        detail = f" ({'; '.join(problems[:3])})" if problems else ""
        raise UsageError(f"{ld}: no runs found: no folder under it holds events.out.tfevents.* "
                         f"files or a tracelet.json{detail}. Give the logdir your training "
                         "writes to (a run is any folder holding event files).")

    def _check_state_dir(self, root: Path) -> None:
        """A read-only logdir without --state-dir: say so once (exit 2), before any run."""
        if self.o.state_dir or self.o.dry_run:
            return
        state = root / STATE_DIR_NAME
        # access(2) answers for a read-only file system too (EROFS), for root as well
        if not os.access(state if state.exists() else root, os.W_OK):
            raise UsageError(f"{root}: cannot keep checkpoints in {state}: the logdir is "
                             "read-only here. Give --state-dir DIR (or set TRACELET_STATE_DIR) "
                             "for them.")

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
        if not disc.runs:
            self._nothing_found(url, disc.problems)
        return [(loc.root, run) for run in disc.runs if in_shard(run.name, self.o.shard)
                and (self.o.run_filter is None or self.o.run_filter(run))]

    def storage_stats(self) -> dict[str, dict[str, int]]:
        """Requests made to each object-store logdir so far (listing pages, GETs, bytes)."""
        return {url: loc.stats_snapshot() for url, loc in self._locations.items()}

    def accepted_links(self, logdir: Path, run: RunSource, manifest: dict | None,
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

    def unchanged(self, logdir: Path, run: RunSource, store: CheckpointStore,
                                rr: RunReport) -> bool:
        """The cron fast path: stat + checkpoint reads only, no lock, no destination.

        Safe without the lock: checkpoints are replaced atomically and carry the signature only
        once a whole pass committed, so "unchanged" read here is true whatever a concurrent
        sync is doing; anything else takes the lock and rechecks. The manifest is read bounded
        and depth-checked, with a type check of the two fields used here (no schema). Only a
        ``.sig`` holding the state dir key's MAC counts: a missing or forged one sends the run
        down the slow path, which checks the checkpoint (and rewrites the ``.sig`` if the run
        is unchanged)."""
        if self.o.resync:
            return False
        try:
            manifest = self.manifest(run, store, validate=False, fetch=False) \
                if run.has_manifest else None
        except SourceError:
            return False
        names = self.dest_names(manifest)
        if not names:
            return False
        signature = fold_name(
            source_signature(run, list(run.event_files)
                             + self.linked_event_files(logdir, run, manifest, None),
                             self.o.follow_artifact_links, self.o.finish_idle_s),
            run.name, display_name(run.name, self.project(logdir, manifest), self.o.run_name,
                                   run.has_manifest))
        for name in names:
            if not store.signature_matches(self._target_keys[name], run.name, signature):
                return False
        for name in names:
            rr.destinations[name] = DestReport(name, target=self._target_keys.label(name),
                                               state="unchanged")
        return True

    def bytes_behind(self, work: list[tuple[Path, RunSource]]) -> int:
        """Bytes of event files the pass over ``work`` has to read: per file, its size past the
        lowest offset its destinations' checkpoints hold (:func:`~.behind.unread`); unchanged
        runs (the fast path) count nothing. Reads checkpoints: for a progress bar's total only."""
        total = 0
        for logdir, run in work:
            try:
                total += self._run_bytes_behind(logdir, run)
            except Exception:  # only the bar's total: the sync itself reports what is wrong
                log.debug("bytes behind of %s", run.name, exc_info=True)
        return total

    def _run_bytes_behind(self, logdir: Path, run: RunSource) -> int:
        store = self.store_for(logdir)
        if self.unchanged(logdir, run, store, RunReport(run=run.name, logdir=str(logdir))):
            return 0
        try:
            manifest = self.manifest(run, store, validate=False, fetch=False) \
                if run.has_manifest else None
        except SourceError:
            manifest = None
        checkpoints = []
        for name in self.dest_names(manifest):
            ck = None
            if not self.o.resync:
                try:
                    ck = store.load(name, self._target_keys[name], run.name, None)
                except (InvalidCheckpointError, StateError):
                    ck = None  # rebuilt by the sync: every byte is read again
            checkpoints.append(ck)
        if not checkpoints:
            return 0
        total = 0
        for path in list(run.event_files) + self.linked_event_files(logdir, run, manifest, None):
            try:
                size = event_file_size(run, path)
            except OSError:
                continue
            key = file_key(run, path)
            total += max(unread(ck.files.get(key) if ck else None, size) for ck in checkpoints)
        return total

    def manifest(self, run: RunSource, store: CheckpointStore, problems: list[str] | None = None,
                  validate: bool = True, fetch: bool = True) -> dict | None:
        """The run's manifest; in object storage through its local copy in the state dir (so
        an unchanged run reads no object: ``fetch=False`` gives up instead of reading)."""
        if run.location is None:
            return load_manifest(run.path, problems, validate=validate,
                                 follow_links=self.o.follow_artifact_links)
        from ..storage.runs import manifest

        return manifest(run, store, fetch, problems, validate)

    def dest_names(self, manifest: dict | None) -> list[str]:
        if self.o.destinations:
            return self.o.destinations
        return [w for w in _wanted(manifest) if is_known(w)]

    def no_destination(self, run: RunSource, manifest: dict | None) -> str:
        """Why a run has no destination, and what to do (exit 2)."""
        from ..destinations import known_destinations
        from ..destinations.registry import unknown_message

        unknown = [w for w in _wanted(manifest) if not is_known(w)]
        if unknown:
            return (f"run '{run.name}': its manifest ({run.manifest_path}) names "
                    + "; ".join(unknown_message(w, "backend") for w in unknown)
                    + ". Give --to, or fix 'backends' in the manifest.")
        return (f"run '{run.name}': no destination: give --to "
                f"{','.join(known_destinations()[:4])}..., or record the run with "
                "start_logging(..., backend=...) (its manifest names no backend)"
                if run.has_manifest else
                f"run '{run.name}': no destination: give --to (a plain TensorBoard run has "
                "no manifest naming its backends)")

    def linked_event_files(self, logdir: Path, run: RunSource, manifest: dict | None,
                            rr: RunReport | None) -> list[Path]:
        """Event files of the run's accepted ``linked_logdirs`` (:meth:`_accepted_links`)."""
        out: list[Path] = []
        if run.location is not None:  # local paths of the training machine: not followed
            return out
        for d in self.accepted_links(logdir, run, manifest, rr):
            disc = discover_runs(d) if os.path.isdir(d) else None
            for r in disc.runs if disc else []:
                out.extend(r.event_files)
        return out


def _wanted(manifest: dict | None) -> list[str]:
    wanted = (manifest or {}).get("backends") or []
    if isinstance(wanted, str):
        wanted = [wanted]
    return [w for w in wanted if isinstance(w, str)] if isinstance(wanted, list) else []
