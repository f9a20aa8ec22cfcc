"""The per-run protocol: one run, inside its own error boundary, to each of its destinations.

::

    unchanged (stat-only, no lock)? ─► done
    lock (run) ─► manifest ─► for each destination: load or rebuild its checkpoint, open the run
              ─► facets: params ─► events ─► sidecar ─► artifacts ─► status  (facets.py)
              ─► close each run ─► commit ─► .sig (the fast path's cache) last

An unexpected error (a bug, an input no check foresaw) is reported for this run — what, while
doing what with which file — its destinations are marked failed (exit 1, retried at the next
sync), and the pass goes on with the next run. The traceback is kept only with ``verbose``.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import KEY_SCHEME, Checkpoint, CheckpointStore
from ..destinations.base import RunRef
from ..errors import DestinationDownError, InvalidCheckpointError, LockedError, SourceError, StateError, TraceletError
from ..identity import same_source_line, source_id_for
from ..manifest import manifest_time
from ..reader import RunSource
from ..redact import scrub, scrubbed_logger, strip_url_credentials
from ..retry import _short
from .facets import FACETS
from .naming import display_name, fold_name
from .plain import first_wall_time, hparams_file_params, newest_mtime
from .plan import run_id_for, run_signature
from .report import DestReport, RunReport
from .slot import Slot

log = scrubbed_logger("tracelet.sync")


@dataclass
class RunContext:
    """One run during one sync, as the facets see it."""

    engine: Any  # the SyncEngine: options, delivery, redactor, stop
    store: CheckpointStore
    run: RunSource
    rr: RunReport
    ref: RunRef | None = None
    manifest: dict | None = None
    event_files: list = field(default_factory=list)
    slots: list[Slot] = field(default_factory=list)
    where: str = "checking whether it changed"
    # --finish-idle on a run without a manifest: None (not asked, or a manifest run), else
    # whether its event files stopped changing long enough (the status facet finishes it)
    idle: bool | None = None
    newest_mtime: float | None = None  # of its event files: the end time if none was recorded
    # params of the run folder's hparams.yaml (Lightning), flattened, not yet redacted
    file_params: dict[str, Any] = field(default_factory=dict)

    @property
    def options(self):
        return self.engine.o

    @property
    def delivery(self):
        return self.engine.delivery

    @property
    def redactor(self):
        return self.engine.redactor

    @property
    def stop(self):
        return self.engine.stop

    @property
    def reader_class(self):
        from .. import engine  # looked up per run: tests substitute tracelet.engine.EventFileReader

        return engine.EventFileReader

    def at(self, where: str) -> None:
        """What the run is doing now, for the report of an unexpected error."""
        self.where = where

    def live(self) -> list[Slot]:
        return [s for s in self.slots if not s.failed]

    def commit(self, slot: Slot) -> None:
        self.delivery.commit(self.store, slot)


class RunSync:
    """Sync one run: :meth:`run` never raises (the run's error boundary)."""

    def __init__(self, engine, logdir: Path, run: RunSource):
        self.engine = engine
        self.o = engine.o
        self.logdir = logdir
        self.run_source = run
        store = engine.planner.store_for(logdir)
        self.ctx = RunContext(engine, store, run, RunReport(run=run.name, logdir=str(logdir)))
        self.scratch: Path | None = None

    def run(self) -> RunReport:
        try:
            self._guarded()
        except Exception as e:
            self._report_crash(e)
        finally:
            if self.scratch is not None:  # files written for this run (reproducibility)
                shutil.rmtree(self.scratch, ignore_errors=True)
        return self.ctx.rr

    # -- the boundary ---------------------------------------------------------------------------
    def _guarded(self) -> None:
        ctx, run, store = self.ctx, self.run_source, self.ctx.store
        planner = self.engine.planner
        if not self.o.dry_run and planner.unchanged(self.logdir, run, store, ctx.rr):
            return
        try:
            # shared: syncs of the same run to other targets go on side by side; each
            # (run, target) is locked exclusively in _open
            with store.lock(run.name, f"run '{run.name}'", shared=True), ExitStack() as locks:
                self.locks = locks
                try:
                    self._locked()
                except Exception as e:
                    self._fail_slots(e)  # under the lock: checkpoints say "failed"
                    raise
        except LockedError as e:
            ctx.rr.locked = True
            ctx.rr.problems.append(str(e))
        except (OSError, StateError) as e:
            # state dir not writable, disk full, a link where a lock or folder belongs: this run
            # fails, the others go on
            msg = str(e) if isinstance(e, StateError) else f"state dir {store.root}: {e}"
            ctx.rr.problems.append(f"run '{run.name}': {msg}")
            for name in planner.dest_names(None):
                ctx.rr.destinations.setdefault(name, DestReport(name, state="failed", error=msg))

    def _crash_text(self, e: BaseException) -> str:
        return (f"unexpected error while {self.ctx.where}: {type(e).__name__}: {_short(e)}. "
                "Its destinations are marked failed and the run is retried at the next sync; "
                "the other runs are not affected. Run with -v for the traceback.")

    def _fail_slots(self, e: BaseException) -> None:
        """Record the unexpected error in each open destination's checkpoint (best effort)."""
        text = self._crash_text(e)
        for slot in self.ctx.slots:
            slot.fail(RuntimeError(text))
            try:
                self.ctx.commit(slot)
            except Exception:  # the report still says it; the next sync retries anyway
                log.debug("committing the failure of %s", slot.name, exc_info=True)

    def _report_crash(self, e: BaseException) -> None:
        rr = self.ctx.rr
        text = self._crash_text(e)
        log.debug("run %s", rr.run, exc_info=True)
        if self.o.verbose:
            rr.traceback = traceback.format_exc()
        if not rr.destinations:
            rr.error(text)
        for d in rr.destinations.values():
            d.state, d.error = "failed", text

    # -- under the lock ---------------------------------------------------------------------------
    def _locked(self) -> None:
        ctx, run, store, planner = self.ctx, self.run_source, self.ctx.store, self.engine.planner
        rr = ctx.rr
        manifest = None
        if run.has_manifest:
            ctx.at(f"reading the manifest {run.manifest_path}")
            try:
                manifest = planner.manifest(run, store, rr.problems)
            except SourceError as e:
                rr.problems.append(str(e))
        names = planner.dest_names(manifest)
        if not names:  # nothing can happen for this run: a configuration error (exit 2)
            rr.usage.append(planner.no_destination(run, manifest))
            return
        ctx.at(f"reading linked_logdirs of {run.manifest_path}")
        ctx.manifest = manifest
        ctx.event_files = list(run.event_files) + planner.linked_event_files(self.logdir, run,
                                                                              manifest, rr)
        m = manifest or {}
        project = planner.project(self.logdir, manifest)
        shown = display_name(run.name, project, self.o.run_name, run.has_manifest)
        signature, idle = run_signature(run, ctx.event_files, self.o.follow_artifact_links,
                                        self.o.finish_idle_s, time.time())
        signature = fold_name(signature, run.name, shown)
        if self.o.finish_idle_s is not None and not run.has_manifest:
            ctx.idle, ctx.newest_mtime = idle, newest_mtime(run, ctx.event_files)
        started = manifest_time(m.get("started_at"))
        if started is None:  # plain runs (and a manifest without it): the first event's
            ctx.at(f"reading the first records of {run.name}'s first event file")
            started = first_wall_time(run, ctx.event_files)
        ctx.ref = RunRef(run_id=run_id_for(run.name, run, manifest), run_path=run.name,
                         project=project, source_dir=run.path,
                         manifest=self._redact_tags(manifest),
                         started_at=started,
                         ended_at=manifest_time(m.get("ended_at")),
                         status=m.get("status") if isinstance(m.get("status"), str) else None,
                         source_id=source_id_for(run, manifest),
                         source_anywhere=not (m.get("project") or self.o.project),
                         display_name=shown,
                         **self._reproducibility(m))
        rr.run_id, rr.project = ctx.ref.run_id, project
        ctx.at(f"reading {run.path / 'hparams.yaml'}")
        problems: list[str] = []
        ctx.file_params = hparams_file_params(run, self.o.follow_artifact_links, problems)
        for p in problems:
            rr.note(p)
        for name in names:
            self._open(name, signature)
        if not ctx.slots:
            return
        for facet in FACETS:  # params ─► events ─► sidecar ─► artifacts ─► status
            if ctx.stop.is_set():
                break
            facet().run(ctx)
        for slot in ctx.slots:
            self._close(slot, signature)

    def _open(self, name: str, signature: str) -> None:
        """Load (or rebuild) this destination's checkpoint and open the run on it."""
        ctx, run, store, rr = self.ctx, self.run_source, self.ctx.store, self.ctx.rr
        engine, ref = self.engine, ctx.ref
        ctx.at(f"opening the run on {name}")
        tk = engine.target_keys[name]
        dr = DestReport(name, target=engine.target_keys.label(name))
        rr.destinations[name] = dr
        try:  # this (run, target): another sync of it is running, the others go on
            self.locks.enter_context(store.lock(run.name, f"run '{run.name}' on {name}",
                                                target_key=tk))
        except LockedError as e:
            _locked_out(dr, rr, e)
            return
        try:
            ck = store.load(name, tk, run.name, ref.run_id)
        except InvalidCheckpointError as e:
            ck = None  # rebuilt like a lost state dir: the destination says what it has
            if self.o.dry_run:
                rr.note(f"{e} — a sync moves it aside and rebuilds it by asking the "
                        "destination what it already has (dry run: left in place).")
            else:
                self._set_aside(tk, e)
        except StateError as e:  # a link where a state folder belongs: never followed
            dr.state, dr.error = "failed", str(e)
            return
        if ck is not None and self.o.resync:
            ck = None  # --resync: as after a lost state dir (the destination says what it has)
        if ck is not None and ck.source_signature == signature and not ck.last_error:
            dr.state = "unchanged"
            if not self.o.dry_run:  # .sig missing, forged or older: fast path next time
                self._write_signature(tk, ck)
            return
        if self.o.dry_run:
            dr.state = "dry-run"
            ctx.slots.append(Slot(name, None, ck or Checkpoint(name, tk, run.name), dr))  # type: ignore[arg-type]
            return
        try:  # its circuit breaker: a target found down this pass is not tried again
            engine.delivery.breakers.get(name, tk).admit(ctx.stop, probe=False)
        except DestinationDownError as e:
            dr.state, dr.error = "skipped", scrub(str(e))  # the checkpoint stays as it is
            return
        try:
            dest = engine.pool.get(name)
        except TraceletError as e:
            dr.state, dr.error = "failed", scrub(str(e))
            return
        dr.target = scrub(dest.target)
        fresh = ck is None
        ck = ck or Checkpoint(name, tk, run.name, run_id=ref.run_id)
        ck.target = strip_url_credentials(dr.target)  # tracelet status names the target
        slot = Slot(name, dest, ck, dr, run_dir=str(run.path),
                    legacy_keys=ck.key_scheme < KEY_SCHEME and ck.total_points > 0,
                    target_key=tk, run_path=run.name)
        ck.key_scheme = KEY_SCHEME
        try:
            ok, slot.handle = engine.delivery.call(store, slot, dest.open_run, ref, ck.identity,
                                                   what="open run")
        except LockedError as e:  # the destination's own lock of its run (another sync holds
            _locked_out(dr, rr, e)  # it under another run name or state dir): as above
            return
        if not ok:
            return
        if slot.handle.identity_ignored and not fresh:
            # The checkpoint named a destination run that is not this run's: nothing in it
            # can be trusted. Start over as after a lost state dir (dedupe everything).
            self._set_aside(tk, InvalidCheckpointError(
                str(store.path(tk, run.name)), f"its {name} identity names a run that does "
                f"not belong to '{run.name}' (tracelet run id {ref.run_id})"))
            ck = slot.ck = Checkpoint(name, tk, run.name, run_id=ref.run_id)
            fresh, slot.legacy_keys = True, False
        if slot.handle.drift and not fresh:
            # The destination lost the run the checkpoint names (deleted, store wiped, files
            # removed): what the checkpoint says was sent is not there. Send it all again;
            # dedupe keeps whatever is still there from landing twice.
            dr.drift = slot.handle.drift
            rr.note(f"drift: {name}: {slot.handle.drift}; the whole run is re-sent "
                    "(dedupe: nothing lands twice)")
            ck = slot.ck = Checkpoint(name, tk, run.name, run_id=ref.run_id)
            ck.reconcile = True
            fresh = False  # reconcile stays on whatever `existed` says
        if slot.handle.same_source:  # the same files, synced before from another LOGDIR level
            rr.note(same_source_line(name, run.name, ref.project, slot.handle.same_source))
        ck.identity = slot.handle.identity
        ck.last_error = None
        # Lost state dir but the run exists on the destination: everything we are about to
        # send may be there already. The destination is the truth: dedupe all of it.
        if fresh and slot.handle.existed:
            ck.reconcile = True
        if slot.handle.shared:  # another sync wrote to it meanwhile: the same, from here on
            rr.note(f"{name}: {slot.handle.shared}")
            ck.reconcile = True
        slot.dedupe_all = ck.reconcile
        ctx.slots.append(slot)

    def _close(self, slot: Slot, signature: str) -> None:
        ctx = self.ctx
        if slot.dest is None:
            return
        ctx.at(f"closing the run on {slot.name}")
        # Close BEFORE committing the signature: a kill between the two must leave the run
        # "changed", so the next sync runs close_run (end time, index refresh) again.
        closed = True
        try:
            if slot.handle is not None:
                slot.dest.close_run(slot.handle)
        except Exception as e:
            closed = False
            log.warning("%s: closing run %s: %s", slot.name, ctx.run.name, scrub(str(e)))
            ctx.rr.problems.append(scrub(f"{slot.name}: closing run failed ({e}); retried next sync"))
        stopped = ctx.stop.is_set()
        complete = closed and not slot.failed and not stopped and not slot.recheck
        if complete:
            slot.ck.source_signature = signature
            slot.ck.reconcile = False  # a whole pass re-checked everything: caught up
        if stopped and not slot.failed:
            slot.report.state = "interrupted"
        ctx.commit(slot)
        if complete and not self.o.dry_run:  # only after the checkpoint carrying it
            self._write_signature(slot.target_key, slot.ck)

    # -- helpers ----------------------------------------------------------------------------------
    def _set_aside(self, tk: str, err: InvalidCheckpointError) -> None:
        store, run_path = self.ctx.store, self.run_source.name
        try:
            where = f"moved aside to {store.set_aside(tk, run_path)}"
        except OSError as e:
            where = f"could not be moved aside ({e.strerror}); it is replaced"
        self.ctx.rr.note(f"{err} — {where}; the run is rebuilt by asking the destination what "
                         "it already has (nothing is sent twice).")

    def _write_signature(self, tk: str, ck: Checkpoint) -> None:
        store, run_path = self.ctx.store, self.run_source.name
        try:
            store.write_signature(tk, run_path, ck)
        except (OSError, StateError) as e:  # costs only the fast path: the sync itself is done
            self.ctx.rr.note(f"{store.path(tk, run_path).with_suffix('.sig')}: not written "
                             f"({e}); this run is re-checked under its lock at every sync "
                             "until it can be.")

    def _reproducibility(self, m: dict) -> dict[str, Any]:
        """RunRef fields from the manifest's git/env/system/command/user (redacted; the remote
        without credentials) and the files that carry them: ``tracelet/tracelet.json`` (the
        manifest, redacted) and ``tracelet/requirements.txt`` (the installed packages)."""
        if not m:
            return {}
        red = self.engine.redactor

        def section(key: str) -> dict:
            v = m.get(key)
            return red.value(dict(v)) if isinstance(v, dict) else {}

        git = section("git")
        if isinstance(git.get("remote"), str):
            git["remote"] = strip_url_credentials(git["remote"])
        cmd = m.get("command")
        command = tuple(red.argv([str(a) for a in cmd])) if isinstance(cmd, list) else ()
        env = section("env")
        raw_env = m.get("env") if isinstance(m.get("env"), dict) else {}
        if isinstance(raw_env.get("packages"), dict):
            # package names are not secret names ("tokenizers", "google-auth"): kept as written
            env["packages"] = {str(k): str(v) for k, v in raw_env["packages"].items()}
        files: dict[str, Path] = {}
        if self.run_source.has_manifest:
            folder = self._scratch()
            doc = {**m, "params": red.value(m.get("params") or {}),
                   "tags": red.value(m.get("tags") or {}), "git": git, "env": env,
                   "command": list(command) or m.get("command")}
            files["tracelet/tracelet.json"] = _write(folder / "tracelet.json", json.dumps(
                doc, indent=1, sort_keys=True, default=str).encode())
            packages = env.get("packages")
            if isinstance(packages, dict) and packages:
                files["tracelet/requirements.txt"] = _write(folder / "requirements.txt", "".join(
                    f"{name}=={version}\n" if version else f"{name}\n"
                    for name, version in sorted(packages.items(), key=lambda kv: str(kv[0]).lower())
                ).encode())
        user = m.get("user")
        return {"git": git, "env": env, "system": section("system"), "command": command,
                "user": user if isinstance(user, str) else "", "repro_files": files}

    def _scratch(self) -> Path:
        if self.scratch is None:
            self.scratch = Path(tempfile.mkdtemp(prefix="tracelet-run-"))
        return self.scratch

    def _redact_tags(self, manifest: dict | None) -> dict | None:
        """The manifest as destinations see it: its tags under the redaction rule (params are
        redacted by the params facet, together with the hparams of the event files)."""
        tags = (manifest or {}).get("tags")
        if not isinstance(tags, dict) or not tags:
            return manifest
        return {**manifest, "tags": self.engine.redactor.params(tags)}  # type: ignore[dict-item]


def _locked_out(dr: DestReport, rr: RunReport, e: LockedError) -> None:
    """This (run, destination) is being synced by another sync: skipped, exit 75, retried at the
    next sync; the checkpoint stays as it is."""
    dr.state, dr.error = "locked", str(e)
    rr.locked = True
    rr.note(str(e))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
