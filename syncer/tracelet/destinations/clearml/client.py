"""ClearML destination: offline sessions (ClearML's own format) or a ClearML server.

Identity: project = project; task name = the run's name (``RunRef.name``; names padded to
ClearML's 3 characters, ``mapping.clearml_name``); hyperparameters ``tracelet/run_id``,
``tracelet/run_path`` and, for plain runs, ``tracelet/source_id``; the same task is reused on
resync. A run with no task (offline: no session) of its own continues the one with its source
id from another LOGDIR level, keeping that one's identity (:mod:`.sources`).

* **Online** (ClearML's config file, ``CLEARML_API_HOST`` ...): the task id is kept in the
  checkpoint and confirmed by one ``tasks.get_by_id`` at open (a deleted task is drift); with
  no checkpoint the task is looked up by project and its ``tracelet/run_id`` hyperparameter
  (any name), so a lost state dir never creates a second task.
* **Offline** (``--clearml-offline`` or ``CLEARML_OFFLINE_MODE=1``; ``factory.clearml_offline``
  decides): each sync that has something to write adds ONE offline session holding only what
  is new, in ClearML's own layout (:mod:`.offline`); :mod:`.importer` uploads them. A
  session the checkpoint counts as written that has neither folder, zip nor ``.imported``
  marker was removed: drift (``RunHandle.drift``), found by the listing open_run does anyway.

Reproducibility (:mod:`.repro`): the execution section (``script``), runtime properties, the
source's times and ``run.repro_files`` as artifacts, written at open where they differ from
what the task holds (the checkpoint keeps their digest: an unchanged run costs nothing).

Mapping (names, title/series, system metrics, repeated steps, NaN: :mod:`.mapping`):

==================  =========================================================================
TensorBoard kind    ClearML form
==================  =========================================================================
scalar              scalar event: title/series from the tag, iteration = TensorBoard
                    step (never shifted), event ``timestamp`` = the event's wall time (ms):
                    ClearML's "wall time" x-axis shows when the point was written
                    (``Logger.report_scalar`` cannot carry it: it stamps "now")
histogram           plot event per step (``create_2d_histogram_plot``: bars over the bucket
                    edges) under the same title/series; shown in PLOTS with an iteration slider
image               debug sample (``ImageEvent``) from the writer's encoded bytes, unchanged
                    (PNG/JPEG/GIF), file ``iter_<step>.<ext>``; image ``i`` of a TF2 image
                    tensor goes to series ``<series> [i]``. A truncated or corrupt PNG/JPEG/GIF
                    (checked without decoding, ``tracelet.media``) is quarantined
text                debug sample ``.txt`` (``MediaEvent``, as ClearML's TensorBoard binding
                    does), file ``iter_<step>.txt``
audio               debug sample (``MediaEvent``, as ``Logger.report_media`` of an audio file
                    does): the writer's clip bytes, file ``iter_<step>.<wav|...>``; clip ``i``
                    of a TF2 audio tensor goes to series ``<series> [i]``
hparams, params     hyperparameters, section ``General`` (``General/model/depth``); ClearML
                    params are not write-once: a changed value replaces the old one
system metrics      ClearML's resource-monitor titles (``mapping`` table), iteration = whole
                    seconds since the run started (as ClearML's own monitor does)
artifacts/          ``Task.upload_artifact(<relative path>, file)``; re-uploading a name
                    replaces it
status              task status: running → in_progress, finished → completed,
                    failed → failed, killed → stopped (offline: recorded in the session's
                    ``task.json`` and applied by ``importer.import_offline_sessions``)
==================  =========================================================================

Speed. Scalars — the bulk — are appended to ``metrics.jsonl`` as copies of the event dict
ClearML builds (:class:`.offline._Templates`). Measured on 2 shared cores
(``scripts/bench_clearml.py --points 200000 --naive-points 20000``): ``Logger.report_scalar``
with defaults 564 points/s; with ``report_use_subprocess: false`` and a 10000-event flush
threshold 6.9k/s; ClearML's ``ScalarEvent`` + ``Metrics.write_events`` 7.7k/s; this path, a
whole ``tracelet sync`` (read, write, fsync, checkpoints, zip) 45.5k/s (26.6k/s counting the
SDK import and config load).

Offline sessions, exactly once. Each batch is fsynced before ``send`` returns and is cut back
on error (no half batch stays). A batch sent again after a crash (``dedupe``) is compared with
what the run's sessions hold and only missing events are written; after a lost state dir the
sessions on disk are the truth (found by the run's id prefix) and the same comparison applies,
to params (merged hyperparameters), artifacts (key + sha256) and status too, so a resync with
nothing new writes no session. What a session holds is what ClearML's import of it would send
(:func:`.offline._read_session_events`: its zip, else its folder; events of its own task id; a
debug sample only with its file; a scalar only with the same value); the points found there
are returned as ``SendResult.present`` ("confirmed N already present"), and the params the
sessions hold with the same value as ``ParamsResult.present`` (so TensorBoard hparams count
too). Online, nothing is asked: a re-sent event carries the same id and replaces itself on the
server, and nothing is reported present (plain "synced").

Errors (:meth:`ClearmlDestination.classify`): a server reply's HTTP code and ClearML subcode
decide (``mapping.server_error_class``: 429/5xx transient; 401/403/404, and a 400 saying the
task or project is gone or in a status that refuses the write, the destination; any other 400,
a validation error, the content), read from ClearML's ``SendError`` (its ``CallResult``) or the
raw ``requests`` reply of ``events.add_batch``; then type and errno (``base.classify_error``:
offline writes fail with ``OSError``, whose errno decides). Decided at the call site: a 200
reply of ``events.add_batch`` counting refused events, and ``upload_artifact`` returning
False, are the content (``PermanentDestinationError``); a server that cannot be reached (or no
configuration) when the destination is created fails the destination (``DestinationError``).

Limits: after a lost state dir, occurrence numbers are recomputed by replaying the source from
its start; if two event files of one run grew during the same syncs AND repeat the same
(tag, step), the replay order differs from the original one and those points may trade their
``#n`` series (each is still there once). The online mode is written against clearml 2.1 but
has not run against a live server here (none is reachable); the session files, and ClearML's
own offline reader over them, are tested. A run's offline folder must not change between
syncs: the offline target's checkpoint key does not include it, so the destination refuses
such a resync.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import secrets
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from ...errors import DestinationError, PermanentDestinationError, StateError, TraceletError
from ...media import image_problem
from ...params import param_text
from ...reader.points import AUDIO, HISTOGRAM, IMAGE, SCALAR, TEXT, Batch
from ...redact import scrub, scrubbed_logger
from ..base import (Capabilities, Destination, ParamsResult, Rejected, RunHandle, RunRef,
                    SendResult, SystemRows, chain, classify_error, http_status)
from ...rundir import ARTIFACTS_DIR
from .claim import Claim, claim
from .factory import clearml_offline
from .mapping import (_SCALAR_TYPE, EVENTS_PER_LINE, PARAM_SECTION, SESSION_PREFIX, STATUS,
                      TRACELET_SECTION, _Copies, _media_id, _media_specs, _names, _row_id,
                      _scalar_rows, _system_rows, clearml_key, clearml_name, run_hash,
                      server_error_class, session_id)
from .offline import (IMPORTED_SUFFIX, REPRO_KEY, WRITER_KEY, _cut_unfinished_line,
                      _list_sessions, _read_session_doc, _read_session_events, _task_class,
                      _Templates, _zip_session, missing_sessions, offline_dir)
from .sources import (SOURCE_PARAM, SourceIndex, adopted_run, find_online_task,
                      last_session_info, matches, online_info, where)
from .repro import (DIFF_ARTIFACT, MAX_DIFF_BYTES, command_line, diff_text, digest, iso_utc,
                    runtime_properties, script_section)

log = scrubbed_logger("tracelet.clearml")  # log lines never show a credential


def _quiet_clearml() -> None:
    for name in ("clearml", "clearml.metrics", "clearml.Task", "clearml.storage"):
        logging.getLogger(name).setLevel(logging.ERROR)


class ClearmlDestination(Destination):
    name = "clearml"
    capabilities = Capabilities(
        kinds=frozenset({SCALAR, HISTOGRAM, IMAGE, TEXT, AUDIO}),
    )

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__(config)
        self.offline = clearml_offline(self.config)  # the same rule as the factory's target
        self._claims: set[Claim] = set()  # offline: the runs this destination has open
        _quiet_clearml()
        from clearml import Task

        if self.offline:
            Task.set_offline(True)
            self.folder = offline_dir()
            self._target = f"offline:{self.folder}"
        else:
            self.folder = None
            try:
                _bounded_default_session()
            except Exception as e:  # no config, bad credentials, server down: this sync's
                first = (str(e).strip().splitlines() or [""])[0][:300]  # ClearML target
                raise DestinationError(  # fails; the other destinations go on
                    f"clearml: cannot reach a ClearML server ({type(e).__name__}: "
                    f"{scrub(first)}). Configure clearml.conf or "
                    "CLEARML_API_HOST/ACCESS_KEY/SECRET_KEY, or write offline sessions with "
                    "--clearml-offline (CLEARML_OFFLINE_MODE=1).") from e
            self._target = "online:" + _api_host()

    @property
    def target(self) -> str:
        return self._target

    def _source_index(self) -> SourceIndex:
        index = getattr(self, "_sources", None)
        if index is None:
            assert self.folder is not None
            index = self._sources = SourceIndex(self.folder)
        return index

    def classify(self, exc: BaseException) -> type[DestinationError]:
        for e in chain(exc):
            if isinstance(e, TraceletError):
                break
            cls = server_error_class(*_server_codes(e))
            if cls is not None:
                return cls
        return classify_error(exc)  # types, errnos (offline writes), HTTP status

    def metric_key(self, tag: str) -> str:
        return clearml_key(tag)

    # -- identity ----------------------------------------------------------------------------
    def open_run(self, run: RunRef, identity: dict[str, Any] | None) -> RunHandle:
        if self.offline:
            return self._open_offline(run, identity)
        return self._open_online(run, identity)

    def check_run(self, run: RunRef, identity: dict[str, Any] | None) -> str | None:
        """Offline: one listing of the offline folder; online: one ``tasks.get_by_id`` (or,
        without a recorded task, one query by run id). Creates nothing."""
        if self.offline:
            assert self.folder is not None
            if not identity:
                return None if _list_sessions(self.folder, run_hash(run)) else (
                    f"run missing on clearml: no offline session of this run in {self.folder}")
            rhex = _offline_rhex(self.folder, run, identity)
            if rhex is None:
                return "the checkpoint's identity names another run's sessions (rebuilt at sync)"
            sessions = _list_sessions(self.folder, rhex)
            if identity.get("dir") and Path(identity["dir"]) != self.folder:
                return (f"offline folder changed: sessions were written to {identity['dir']}, "
                        f"ClearML's offline folder is now {self.folder}")
            return _offline_drift(self.folder, rhex, sessions, identity)
        host = self._target[len("online:"):]
        try:
            if not identity or not identity.get("task_id"):
                found = _find_online_task(_names(run)[0], run.run_id)
                return None if found is not None else (
                    f"run missing on clearml: no task with {TRACELET_SECTION}/run_id="
                    f"{run.run_id} in project '{_names(run)[0]}' on {host}")
            task = _get_task_or_none(str(identity["task_id"]))
        except Exception as e:  # a server that cannot be asked: said, never raised
            return scrub(f"cannot check: {type(e).__name__}: {str(e).strip()[:200]}")
        if task is None:
            return (f"run missing on clearml: task {identity['task_id']} no longer exists on "
                    f"{host}")
        if not _online_ours(task, run):
            return (f"task {identity['task_id']} on {host} belongs to another run (its "
                    f"{TRACELET_SECTION}/run_id differs; rebuilt at sync)")
        return None

    def _open_offline(self, run: RunRef, identity: dict[str, Any] | None) -> RunHandle:
        folder = self.folder
        assert folder is not None
        if identity and identity.get("dir") and Path(identity["dir"]) != folder:
            raise DestinationError(
                f"clearml: run '{run.run_path}' was synced to offline sessions in "
                f"{identity['dir']}, but ClearML's offline folder is now {folder} "
                "(CLEARML_CACHE_DIR / clearml.conf changed). Point it back, or use another "
                "--state-dir to start this target over.")
        folder.mkdir(parents=True, exist_ok=True)
        held = self._claim(folder, run, identity)  # before the sessions are listed (.claim)
        try:
            handle = self._open_offline_claimed(folder, run, identity)
        except BaseException:
            self._release(held)
            raise
        handle.extra["claim"] = held
        weakref.finalize(handle, held.release)  # a crashed sync that never calls close_run
        return handle

    def _claim(self, folder: Path, run: RunRef, identity: dict[str, Any] | None) -> Claim:
        """This run's lock in the offline folder (:mod:`.claim`): its session prefix, the one its
        checkpoint names, and its source id with the last part of its path (what every LOGDIR
        level of the same files shares: ``exp/r1`` and ``r1``)."""
        named = identity.get("run_hash") if identity else None
        leaf = run.run_path.rsplit("/", 1)[-1]
        keys = ["run:" + run_hash(run),
                f"source:{run.source_id}/{leaf}" if run.source_id else ""]
        if isinstance(named, str):
            keys.append("run:" + named)
        try:
            held = claim(folder, keys, f"clearml: the ClearML run of '{run.run_path}' (offline "
                                       f"sessions in {folder})")
        except StateError as e:  # a link or FIFO where a lock file belongs: never written
            raise DestinationError(f"clearml: {e}") from e
        self._claims.add(held)
        return held

    def _release(self, held: Claim | None) -> None:
        if held is not None:
            held.release()
            self._claims.discard(held)

    def _open_offline_claimed(self, folder: Path, run: RunRef,
                              identity: dict[str, Any] | None) -> RunHandle:
        ignored = False
        rhex = _offline_rhex(folder, run, identity) if identity else run_hash(run)
        if rhex is None:
            identity, ignored, rhex = None, True, run_hash(run)  # another run's: never used
        adopted = identity.get("source_run") if identity else None
        sessions = _list_sessions(folder, rhex)
        same_source = None
        if not identity and not sessions and run.source_id:
            found = self._source_index().find(run)  # the same files from another LOGDIR level
            if found is not None:
                rhex, adopted = found
                sessions, same_source = _list_sessions(folder, rhex), where(adopted)
            else:  # a run this pass starts: a later run of the pass with its source finds it
                self._source_index().add(rhex, {
                    "run_id": run.run_id, "run_path": run.run_path, "source_id": run.source_id,
                    "project": _names(run)[0], "name": _names(run)[1]})
        for stale in folder.glob(f".{SESSION_PREFIX}{rhex}*.zip.tmp-*"):
            stale.unlink(missing_ok=True)  # a zip cut by kill -9: the folder is still there
        drift = _offline_drift(folder, rhex, sessions, identity)
        shared = None if drift else _written_elsewhere(folder, sessions, identity)
        last_seq = max(sessions, default=0)  # markers count: a name is never used twice
        ident = dict(identity or {})
        if not isinstance(ident.get("writer"), str):  # this checkpoint's mark in its sessions
            ident["writer"] = secrets.token_hex(8)
        if drift:
            # the engine re-sends the run from its start: occurrence numbers start over too;
            # the sessions found missing are recorded, so they are drift once, not every sync
            ident["copies"] = {}
            ident.pop("repro", None)
            ident["gone"] = _merge_gone(ident, sessions)
        ident.update({"mode": "offline", "dir": str(folder), "run_hash": rhex,
                      "next_seq": max(_next_seq(ident) or 1, last_seq + 1)})
        ident.setdefault("copies", {})
        if adopted:  # kept: later opens confirm the sessions by it (_offline_rhex)
            ident["source_run"] = dict(adopted)
            run = adopted_run(run, adopted)  # sessions keep the identity the run was created with
        handle = RunHandle(identity=ident, existed=identity is not None or bool(sessions),
                           identity_ignored=ignored, drift=drift, same_source=same_source,
                           shared=shared)
        handle.extra.update(run=run, sessions=sessions, task=None, templates=None, landed=None)
        last = sessions.get(last_seq)
        if last and last["dir"] is not None and last["zip"] is None and not last.get("marker"):
            # A session a killed sync left unfinished: continue it (it was never zipped, so
            # never imported), after cutting a line the kill may have left half-written.
            if (last["dir"] / "task.json").exists():
                _cut_unfinished_line(last["dir"] / "metrics.jsonl")
                handle.extra["task"] = self._reopen_session(run, session_id(rhex, last_seq),
                                                            last_seq, self._repro(handle),
                                                            ident["writer"])
                handle.extra["seq"] = last_seq
        self._store_repro(handle)
        return handle

    def _new_session(self, handle: RunHandle) -> Any:
        run: RunRef = handle.extra["run"]
        ident = handle.identity
        seq = _take_session_number(self.folder, ident["run_hash"], int(ident["next_seq"]))
        sid = session_id(ident["run_hash"], seq)
        cls = _task_class()
        from clearml import Task

        task = cls(chosen_id=sid, project_name=_names(run)[0], task_name=_names(run)[1],
                   task_type=Task.TaskTypes.training)
        task.tracelet_extra[WRITER_KEY] = ident["writer"]  # in its first whole task.json
        _prepare_session_task(task, run, seq, self._repro(handle))
        handle.extra["sessions"][seq] = {"dir": Path(task.get_offline_mode_folder()), "zip": None,
                                         "marker": None}
        handle.extra["seq"] = seq
        ident["next_seq"] = seq + 1
        return task

    def _reopen_session(self, run: RunRef, sid: str, seq: int, repro: "_Repro",
                        writer: str) -> Any:
        task = _task_class()(task_id=sid)
        task.tracelet_extra[WRITER_KEY] = writer
        task._project_name = (None, _names(run)[0])  # offline: not restored by reload
        _prepare_session_task(task, run, seq, repro)  # again: the kill may have come before it
        return task

    def _open_online(self, run: RunRef, identity: dict[str, Any] | None) -> RunHandle:
        from clearml import Task

        task, ignored, drift = None, False, None
        if identity and identity.get("task_id"):
            # the one call that confirms the task the checkpoint names is still there
            task = _get_task_or_none(str(identity["task_id"]))
            if task is None:
                drift = (f"run missing on clearml: task {identity['task_id']} no longer exists on "
                         f"{self._target[len('online:'):]}")
            elif not _online_ours(task, run):
                task, ignored, identity = None, True, None  # another run's task: never used
        same = task is not None
        adopted = same_source = None
        if task is None:
            task = _find_online_task(_names(run)[0], run.run_id)
        if task is None:
            found = find_online_task(run)  # the same files synced from another LOGDIR level
            if found is not None:
                task, adopted = found
                same_source = where(adopted)
        elif str(task.get_parameter(f"{TRACELET_SECTION}/run_id") or "") != run.run_id:
            adopted = online_info(task)  # confirmed above: a task taken by source id before
        existed = task is not None
        if task is not None and adopted is None and run.source_id \
                and task.get_parameter(SOURCE_PARAM) != run.source_id:
            with _editable(task, False):  # a task synced before source ids: once
                task._set_parameters({SOURCE_PARAM: run.source_id}, __update=True)
        if adopted is not None:
            run = adopted_run(run, adopted)  # its name and identity stay as created
        if task is None:
            task = Task.create(project_name=_names(run)[0], task_name=_names(run)[1],
                               task_type=Task.TaskTypes.training)
            _prepare_session_task(task, run, None, None)
            task.mark_started(force=True)
        ident: dict[str, Any] = {"mode": "online", "task_id": task.id, "copies": {}}
        if same and identity:  # the same task: what the checkpoint knows of it still holds
            ident["copies"] = dict(identity.get("copies") or {})
            if identity.get("repro"):
                ident["repro"] = identity["repro"]
        handle = RunHandle(identity=ident, existed=existed, identity_ignored=ignored, drift=drift,
                           same_source=same_source)
        handle.extra.update(run=run, task=task, templates=None, landed=None)
        self._store_repro(handle)
        return handle

    # -- reproducibility: the execution section, runtime properties, name, files --------------
    def _repro(self, handle: RunHandle) -> "_Repro":
        repro = handle.extra.get("repro")
        if repro is None:
            repro = handle.extra["repro"] = _Repro(handle.extra["run"])
        return repro

    def _store_repro(self, handle: RunHandle) -> None:
        """Write the run's execution section, runtime properties, name and reproducibility
        files (``run.repro_files``) where they differ from what the task holds. The checkpoint
        keeps their digest, so an unchanged run costs no call and opens no session."""
        repro = self._repro(handle)
        if handle.identity.get("repro") == repro.digest:
            return
        if self.offline:
            known = self._known(handle)
            todo = [t for t in repro.files if known["artifacts"].get(t[1]) != t[2]]
            if known["repro"] != repro.digest or todo:
                task = self._task(handle)  # a new (or continued) session carries the fields
                self._upload(handle, task, todo)
        else:
            task = handle.extra["task"]
            have = {a.key: a.hash for a in (task.data.execution.artifacts or [])}
            todo = [t for t in repro.files if have.get(t[1]) != t[2]]
            _apply_repro_online(task, repro)
            if todo:
                self._upload(handle, task, todo)
        handle.identity["repro"] = repro.digest

    def _task(self, handle: RunHandle) -> Any:
        task = handle.extra.get("task")
        if task is None:
            task = handle.extra["task"] = self._new_session(handle)
        return task

    # -- points ------------------------------------------------------------------------------
    # Points become rows (title, series, iteration, value, timestamp_ms) first: the dedupe
    # check needs no session, so a re-send of what landed opens no new (empty) session.
    # ``present`` (offline, dedupe): the points the run's sessions already hold, as ClearML's
    # import would send them (``offline._read_session_events``); online 0: nothing is asked.
    def send(self, handle: RunHandle, batch: Batch, *, dedupe: bool) -> SendResult:
        # ClearML stores an image's bytes as they are and its UI cannot show a broken one: a
        # truncated or corrupt PNG/JPEG/GIF (checked without decoding) is quarantined instead
        rejected = [Rejected(IMAGE, j, why) for j, im in enumerate(batch.images)
                    if (why := image_problem(im.encoded))]
        copies = _Copies(handle.identity["copies"])
        rows = _scalar_rows(copies, batch)
        media = _media_specs(copies, batch, {r.index for r in rejected})
        present = self._write(handle, rows, media, dedupe)
        copies.commit()
        return SendResult(rejected=rejected, present=present)

    def send_system(self, handle: RunHandle, rows: SystemRows, run: RunRef, *,
                    dedupe: bool) -> SendResult:
        copies = _Copies(handle.identity["copies"])
        present = self._write(handle, _system_rows(copies, rows, run.started_at), [], dedupe)
        copies.commit()
        return SendResult(present=present)

    def _templates(self, handle: RunHandle, task: Any) -> _Templates:
        t = handle.extra.get("templates")
        if t is None or t.task_id != task.id:
            t = handle.extra["templates"] = _Templates(task.id)
        return t

    # -- writing -------------------------------------------------------------------------------
    def _write(self, handle: RunHandle, rows: list[tuple], media: list[tuple],
               dedupe: bool) -> int:
        """Write the rows and media specs; the number of them the sessions already held (left
        out: offline dedupe; a scalar counts only with the same value)."""
        present = 0
        if dedupe and self.offline:
            landed = self._landed(handle)
            given = len(rows) + len(media)
            rows = [r for r in rows if landed.get(_row_id(r), _MISSING) != r[3]]
            media = [m for m in media if _media_id(m) not in landed]
            present = given - len(rows) - len(media)
        if not rows and not media:
            return present
        task = self._task(handle)
        templates = self._templates(handle, task)
        events = []
        append = events.append
        get = templates.get
        for title, series, it, value, ts in rows:
            ev = dict(get(title, series))
            ev["iter"], ev["value"], ev["timestamp"] = it, value, ts
            append(ev)
        if not self.offline:
            # No dedupe query: an event's server id is (task, iter, metric, variant[, key]),
            # so a re-sent event replaces itself.
            self._write_online(task, events, media, handle.extra["run"])
            return 0
        path = Path(task.get_offline_mode_folder()) / "metrics.jsonl"
        size0 = path.stat().st_size if path.exists() else 0
        try:
            if events:
                with open(path, "ab") as f:
                    for i in range(0, len(events), EVENTS_PER_LINE):
                        f.write(json.dumps(events[i:i + EVENTS_PER_LINE]).encode() + b"\n")
            if media:
                self._write_media(task, media, handle.extra["run"])
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
        except BaseException:
            # Leave no half batch behind: the retry (or the next sync) writes it whole.
            if path.exists():
                with open(path, "rb+") as f:
                    f.truncate(size0)
            raise
        landed = handle.extra.get("landed")
        if landed is not None:
            for r in rows:
                landed[_row_id(r)] = r[3]
            for m in media:
                landed[_media_id(m)] = True
        return present

    def _landed(self, handle: RunHandle) -> dict[tuple, Any]:
        """What this run's offline sessions already hold, keyed as the server keys events."""
        landed = handle.extra.get("landed")
        if landed is None:
            landed = {}
            for seq in sorted(handle.extra["sessions"]):
                for ev in _read_session_events(handle.extra["sessions"][seq]):
                    key = (ev.get("type"), ev.get("iter"), ev.get("metric") or "",
                           ev.get("variant") or "")
                    landed[key] = ev.get("value") if ev.get("type") == _SCALAR_TYPE else True
            # kept only once complete: a read that failed half way (then retried, or resent in
            # halves) must not leave a partial record that lets landed events through again
            handle.extra["landed"] = landed
        return landed

    def _write_media(self, task: Any, media: list[tuple], run: RunRef | None = None) -> None:
        from clearml.backend_interface.metrics.events import ImageEvent, MediaEvent, PlotEvent

        events = []
        for kind, title, series, step, wall, p in media:
            ts = int(wall * 1000) or None
            if kind == "plot":
                events.append(PlotEvent(metric=title, variant=series, iter=step, timestamp=ts,
                                        plot_str=_histogram_plot(title, series, p)))
            elif kind == "image":
                events.append(ImageEvent(
                    metric=title, variant=series, iter=step, timestamp=ts,
                    image_data=io.BytesIO(p.encoded), file_history_size=-1,
                    override_filename=f"iter_{step}", override_filename_ext="." + p.format))
            elif kind == "audio":
                events.append(MediaEvent(
                    metric=title, variant=series, iter=step, timestamp=ts,
                    stream=io.BytesIO(p.encoded), file_history_size=-1,
                    override_filename=f"iter_{step}", override_filename_ext="." + p.format))
            else:
                events.append(MediaEvent(
                    metric=title, variant=series, iter=step, timestamp=ts,
                    stream=io.BytesIO(p.text.encode("utf-8")), file_history_size=-1,
                    override_filename=f"iter_{step}", override_filename_ext=".txt"))
        res = _metrics_manager(task, run).write_events(events, async_enable=False)
        failed = [e for e in events if e.upload_exception is not None]
        if failed:
            # untyped on purpose: its cause decides (classify walks the chain): one sample's
            # file may be what fails (a name too long for the file system: the content, which
            # the engine isolates); a folder it cannot write (EACCES, ENOSPC) or a server that
            # cannot be reached fails the destination or is retried
            raise RuntimeError(
                f"clearml: storing {len(failed)} debug sample(s) failed: "
                f"{failed[0].upload_exception}") from failed[0].upload_exception
        if res is not None and not res.ok():
            from clearml.backend_interface.session import SendError

            # ClearML's own error for a reply it refused: classify reads its code and subcode
            raise SendError(res, f"clearml: events.add_batch failed: {res.meta}")

    def _write_online(self, task: Any, events: list[dict], media: list[tuple],
                      run: RunRef | None = None) -> None:
        session = task.session
        for i in range(0, len(events), EVENTS_PER_LINE):
            responses = session.send_request_batch("events", "add_batch",
                                                   json=events[i:i + EVENTS_PER_LINE])
            for r in responses or []:
                if r is None:
                    continue
                if r.status_code != 200:
                    import requests

                    raise requests.HTTPError(  # classify reads its status code and subcode
                        f"clearml events.add_batch: HTTP {r.status_code}: {r.text[:300]}",
                        response=r)
                data = (r.json() or {}).get("data") or {}
                if data.get("errors"):  # some events refused: never silently dropped
                    # The server took the request and refused these events: the content
                    # (the engine isolates the records), whatever the count or text says.
                    raise PermanentDestinationError(scrub(
                        f"clearml events.add_batch refused {data['errors']} event(s): "
                        f"{str(data.get('errors_info'))[:300]}"))
        if media:
            self._write_media(task, media, run)

    # -- params, artifacts, status -------------------------------------------------------------
    # Offline, what earlier sessions recorded is read back first (hyperparams merge, artifacts
    # by key + sha256, the last status): after a lost state dir nothing already recorded is
    # written again, and a sync with nothing new opens no session.
    def _known(self, handle: RunHandle) -> dict[str, Any]:
        known = handle.extra.get("known")
        if known is None:
            known = {"params": {}, "artifacts": {}, "status": None, "repro": None}
            for seq in sorted(handle.extra.get("sessions") or {}):
                doc = _read_session_doc(handle.extra["sessions"][seq])
                for name, p in ((doc.get("hyperparams") or {}).get(PARAM_SECTION) or {}).items():
                    known["params"][name] = p.get("value")
                for a in ((doc.get("execution") or {}).get("artifacts") or []):
                    known["artifacts"][a.get("key")] = a.get("hash")
                known["status"] = doc.get("status") or known["status"]
                known["repro"] = doc.get(REPRO_KEY) or known["repro"]
            handle.extra["known"] = known  # only once complete, as _landed
        return known

    def log_params(self, handle: RunHandle, params: Mapping[str, Any]) -> ParamsResult:
        values = {str(k): param_text(v) for k, v in params.items()}
        present: list[str] = []
        if self.offline:
            # what the run's sessions hold (task.json hyperparams) with the same value is
            # present; online nothing is asked, so nothing is reported present
            have = self._known(handle)["params"]
            present = [k for k, v in values.items() if have.get(k) == v]
            values = {k: v for k, v in values.items() if have.get(k) != v}
            if not values:
                return ParamsResult(present=present)
        task = self._task(handle)
        with _editable(task, self.offline):
            task._set_parameters({f"{PARAM_SECTION}/{k}": v for k, v in values.items()},
                                 __update=True)
        if self.offline:
            self._known(handle)["params"].update(values)
        # ClearML params are not write-once: the new value replaces the old one (no conflicts)
        return ParamsResult(present=present)

    def log_artifacts(self, handle: RunHandle, files: list[tuple[Path, str]]) -> None:
        todo = [(Path(p), rel, _sha256(p)) for p, rel in files]
        if self.offline:
            have = self._known(handle)["artifacts"]
            todo = [t for t in todo if have.get(t[1]) != t[2]]
            if not todo:
                return
        self._upload(handle, self._task(handle), todo)

    def _upload(self, handle: RunHandle, task: Any, todo: list[tuple[Path, str, str]]) -> None:
        with _editable(task, self.offline):
            for path, rel, digest in todo:
                if not task.upload_artifact(rel, path, wait_on_upload=True):
                    # ClearML returns False (and logs why) for a file it cannot find or
                    # pack: this file is refused, the others go on (a server too old for
                    # artifacts refuses every file: the engine then fails the destination)
                    raise PermanentDestinationError(
                        f"clearml: upload_artifact('{rel}') returned False (a file ClearML "
                        "cannot find or pack, or a server without artifacts; its log says "
                        "which)")
                if self.offline:
                    self._known(handle)["artifacts"][rel] = digest

    def finish(self, handle: RunHandle, status: str, ended_at: float | None) -> None:
        cstatus = STATUS.get(status, "in_progress")
        if not self.offline:
            _set_online_status(self._task(handle), cstatus)
            return
        known = self._known(handle)
        if known["status"] == cstatus:
            return
        # Offline mark_*() calls are no-ops: the status is recorded in the session's task.json
        # and applied by import_offline_sessions (ClearML's importer marks tasks completed).
        self._task(handle)._edit(status=cstatus)
        known["status"] = cstatus

    def close_run(self, handle: RunHandle) -> None:
        try:
            self._close_session(handle)
        finally:  # the session is zipped (or the close failed): another sync may write the run
            self._release(handle.extra.pop("claim", None))

    def _close_session(self, handle: RunHandle) -> None:
        task = handle.extra.get("task")
        if task is None:
            return
        if self.offline:
            task._edit()  # the session's final task.json
            folder = Path(task.get_offline_mode_folder())
            target = _zip_session(folder)
            seq = handle.extra.get("seq")
            if seq is not None:
                handle.extra["sessions"].setdefault(seq, {})["zip"] = target
            log.info("clearml: offline session %s", target)
        else:
            task.flush(wait_for_uploads=True)
        handle.extra["task"] = None

    def close(self) -> None:
        for held in list(self._claims):  # a run whose close_run never came (a crashed sync)
            self._release(held)
        try:
            from clearml.backend_interface.metrics import Metrics

            Metrics.close_async_threads()
        except Exception:  # closing must not hide the sync's own result
            pass



_MISSING = object()


def _server_codes(e: BaseException) -> tuple[int | None, int | None]:
    """(HTTP code, ClearML subcode) of a server reply an exception carries: ClearML's
    ``SendError`` (its ``CallResult.meta``) or a ``requests`` error with the raw reply, whose
    JSON ``meta`` has the subcode."""
    meta = getattr(getattr(e, "result", None), "meta", None)
    code = getattr(meta, "result_code", None)
    if isinstance(code, int):
        sub = getattr(meta, "result_subcode", None)
        return code, sub if isinstance(sub, int) else None
    response = getattr(e, "response", None)
    code = http_status(e) if response is not None else None
    if code is None:
        return None, None
    try:
        sub = ((response.json() or {}).get("meta") or {}).get("result_subcode")
    except Exception:  # not JSON (a proxy's error page): the status alone decides
        sub = None
    return code, sub if isinstance(sub, int) else None


def _sha256(path: str | os.PathLike) -> str:
    """The content hash ClearML records for a file artifact (``Artifact.hash``)."""
    from clearml.storage.hashing import sha256sum

    return sha256sum(os.fspath(path), block_size=1 << 20)[0]


def _prepare_session_task(task: Any, run: RunRef, seq: int | None, repro: "_Repro | None") -> None:
    """Identity hyperparameters, tags and the data folder of a new task/session; offline, the
    run's execution section, runtime properties, name and times (``repro``), in every session:
    each one's task.json is merged into the task on import, so each carries the latest."""
    if task.is_offline():
        from clearml.backend_api.services import tasks

        Path(task._get_default_report_storage_uri()).mkdir(parents=True, exist_ok=True)
        if not task.data.type:
            task._edit(type=tasks.TaskTypeEnum.training)
    values = {f"{TRACELET_SECTION}/run_id": run.run_id,
              f"{TRACELET_SECTION}/run_path": run.run_path}
    if run.source_id:  # the same files from another LOGDIR level find this task (.sources)
        values[SOURCE_PARAM] = run.source_id
    if seq is not None:
        values[f"{TRACELET_SECTION}/session"] = str(seq)
    if repro is not None and repro.command:
        values[f"{TRACELET_SECTION}/command"] = repro.command
    task._set_parameters(values, __update=True)
    tags = [f"{k}:{v}" for k, v in sorted(run.tags.items())]
    if tags:
        task.set_tags(tags)
    if repro is not None and task.is_offline():
        task.tracelet_extra.update(repro.offline_extra())
        task._edit(name=repro.name, script=dict(repro.script))


class _Repro:
    """What reproduces the run, as ClearML fields (:mod:`.repro`), computed once per open."""

    def __init__(self, run: RunRef):
        self.name = _names(run)[1]
        self.script = script_section(run, _read_diff(run))
        self.runtime = runtime_properties(run)
        self.command = command_line(run)
        self.started = iso_utc(run.started_at)
        self.completed = iso_utc(run.ended_at)
        # (local path, artifact name, sha256): tracelet/tracelet.json, tracelet/requirements.txt
        self.files = [(Path(p), rel, _sha256(p)) for rel, p in sorted(run.repro_files.items())]
        self.digest = digest(self.name, self.script, self.runtime, self.command, self.started,
                             self.completed, [(rel, h) for _, rel, h in self.files])

    def offline_extra(self) -> dict[str, Any]:
        """task.json keys beyond the offline data model: the runtime properties (the import
        applies them), the source's times (ClearML's ``started``/``completed``; the server
        sets its own on import) and the digest a later sync compares with."""
        extra: dict[str, Any] = {"runtime": dict(self.runtime), REPRO_KEY: self.digest}
        if self.started:
            extra["started"] = self.started
        if self.completed:
            extra["completed"] = self.completed
        return extra


def _read_diff(run: RunRef) -> str:
    """``script.diff`` from the run's ``artifacts/git_diff.patch`` (:func:`.repro.diff_text`):
    a regular file inside the run, read up to ClearML's limit; "" when absent, unreadable, a
    link out of the run, or the run is in object storage (the artifact still uploads)."""
    if not isinstance(run.source_dir, Path):
        return ""
    from ...runfiles import RunFiles

    try:
        fd = RunFiles(run.source_dir).open(run.source_dir / ARTIFACTS_DIR / DIFF_ARTIFACT)
    except (OSError, TraceletError):
        return ""
    try:
        if os.fstat(fd).st_size > MAX_DIFF_BYTES:
            return diff_text(None, over_limit=True)
        chunks, total = [], 0
        while total <= MAX_DIFF_BYTES:
            chunk = os.read(fd, MAX_DIFF_BYTES + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return diff_text(b"".join(chunks))
    except OSError:
        return ""
    finally:
        os.close(fd)


def _apply_repro_online(task: Any, repro: _Repro) -> None:
    """Online: name, execution section, runtime properties and ``tracelet/command``, each only
    where the task holds something else (the task was loaded by open_run: no extra call)."""
    if task.name != repro.name:
        task.set_name(repro.name)  # ClearML allows a rename in any status
    current = task.data.script
    current = current.to_dict() if hasattr(current, "to_dict") else dict(current or {})
    if any(current.get(k) != v for k, v in repro.script.items() if v or current.get(k)):
        with _editable(task, False):
            task._update_script(dict(repro.script))
    runtime = task._get_runtime_properties()
    if any(runtime.get(k) != v for k, v in repro.runtime.items()):
        task._set_runtime_properties(runtime_properties=dict(repro.runtime))
    if repro.command and task.get_parameter(f"{TRACELET_SECTION}/command") != repro.command:
        with _editable(task, False):
            task._set_parameters({f"{TRACELET_SECTION}/command": repro.command}, __update=True)


def _storage_suffix(task: Any, run: RunRef | None) -> str:
    """The folder debug samples are stored under (``<project>/<name>.<task id>/metrics``), as
    ClearML's ``Task._get_output_destination_suffix("metrics")`` builds it, but named by the
    run PATH: a sample's key is part of its server event id, so a renamed run (``run.name``)
    must keep its keys for a re-sent sample to replace itself."""
    from urllib.parse import quote

    def limit(name: str, uuid: str, max_length: int, always_add_uuid: bool) -> str:
        if always_add_uuid or len(name) >= max_length:
            return f"{name[: max(2, max_length - len(uuid) - 1)]}.{uuid}"
        return name

    project = task.get_project_name() or "unknown"
    return "/".join(quote(x, safe="'[]{}()$^,.; -_+-=/") for x in (
        limit(project, str(task.project), 256, False),
        limit(clearml_name(run.run_path) if run else task.name, str(task.data.id), 128, True),
        "metrics"))


def _metrics_manager(task: Any, run: RunRef | None) -> Any:
    """ClearML's ``Metrics`` writer of this task, with :func:`_storage_suffix` (what
    ``task._get_metrics_manager`` makes, named by the task's current name)."""
    metrics = getattr(task, "_tracelet_metrics", None)
    if metrics is None:
        from clearml.backend_interface.metrics import Metrics

        metrics = task._tracelet_metrics = Metrics(
            session=task.session, task=task, storage_uri=task._get_default_report_storage_uri(),
            storage_uri_suffix=_storage_suffix(task, run), iteration_offset=0)
    return metrics


@contextmanager
def _editable(task: Any, offline: bool) -> Iterator[None]:
    """Online, a completed/failed/stopped task refuses edits: reopen it, then restore."""
    status = None if offline else str(task.get_status())
    if status in (None, "created", "in_progress"):
        yield
        return
    task.mark_started(force=True)
    try:
        yield
    finally:
        _set_online_status(task, status)


def _set_online_status(task: Any, status: str) -> None:
    if status == "completed":
        if str(task.get_status()) != "in_progress":
            task.mark_started(force=True)
        task.mark_completed(force=True)
    elif status == "failed":
        task.mark_failed(force=True)
    elif status == "stopped":
        task.mark_stopped(force=True)
    else:
        task.mark_started(force=True)


def _histogram_plot(title: str, series: str, h: Any) -> str:
    import numpy as np
    from clearml.utilities.plotly_reporter import create_2d_histogram_plot

    lefts = [float(x) for x in h.lefts]
    widths = [float(r) - float(l) for l, r in zip(h.lefts, h.rights)]
    plot = create_2d_histogram_plot(
        np_row_wise=np.array([list(h.counts)], dtype=float), labels=[series], title=title,
        series=series, xlabels=lefts, xtitle="value", ytitle="count",
        data_args={"width": widths, "offset": 0},
        comment=", ".join(f"{k} {v:g}" for k, v in (("min", h.min), ("max", h.max),
                                                       ("num", h.num), ("sum", h.sum))
                          if v is not None) or None)
    return json.dumps(plot, default=_json_default)


def _json_default(o: Any) -> Any:
    try:
        return o.tolist()
    except AttributeError:
        return str(o)


# ClearML's own HTTP retries (api.http.retries: 240 tries) would hold a cron pass for many
# minutes against a server that is down; tracelet.retry is the one retry policy.
_HTTP_RETRIES = {"total": 2, "connect": 2, "read": 2, "redirect": 2, "status": 2,
                 "backoff_factor": 0.5}


def _bounded_default_session() -> None:
    from clearml.backend_api import Session
    from clearml.backend_api.session.defs import ENV_ACCESS_KEY, ENV_SECRET_KEY
    from clearml.backend_interface.base import InterfaceBase
    from clearml.config import config_obj

    if InterfaceBase._default_session is None:
        InterfaceBase._default_session = Session(
            initialize_logging=False, config=config_obj, api_key=ENV_ACCESS_KEY.get(),
            secret_key=ENV_SECRET_KEY.get(), http_retries_config=dict(_HTTP_RETRIES))


def _api_host() -> str:
    host = os.environ.get("CLEARML_API_HOST")
    if host:
        return host
    try:
        from clearml.backend_api import Session

        return str(Session.get_api_server_host())
    except Exception:
        return "config"


def _find_online_task(project: str, run_id: str) -> Any:
    """The task of this run on the server: the one in the project whose ``tracelet/run_id``
    hyperparameter is the run id (one query, filtered by the server; any name: a run's task
    keeps its identity when its display name changes)."""
    from clearml import Task

    found = Task.get_tasks(project_name=project, allow_archived=True, task_filter={
        "_allow_extra_fields_": True, f"hyperparams.{TRACELET_SECTION}.run_id.value": [run_id]})
    for t in found or []:
        if str(t.get_parameter(f"{TRACELET_SECTION}/run_id") or "") == run_id:
            return t
    return None


def _online_ours(task: Any, run: RunRef) -> bool:
    """Whether a server task is this run's: its ``tracelet/run_id``, or its source id under a
    run path that is another level of this one (:mod:`.sources`)."""
    if str(task.get_parameter(f"{TRACELET_SECTION}/run_id") or "") == run.run_id:
        return True
    info = online_info(task)
    return info is not None and matches(info, run)


def _get_task_or_none(task_id: str) -> Any:
    """The task with this id, or None when the server says it does not exist (deleted):
    ``tasks.get_by_id`` answers 400 with subcode 101 (invalid task id) or 130 (not found)."""
    from clearml import Task

    try:
        return Task.get_task(task_id=task_id)
    except Exception as e:
        if _task_gone(e):
            return None
        raise


def _task_gone(e: BaseException) -> bool:
    """The server's (or ClearML's own) answer that a task id names no task."""
    for c in chain(e):
        if isinstance(c, ValueError) and "could not be found" in str(c):
            return True  # clearml's Task(): 'Task ID "..." could not be found'
        if _server_codes(c) in ((400, 101), (400, 130)):  # InvalidTaskId, TaskNotFound
            return True
    return False


def _written_elsewhere(folder: Path, sessions: Mapping[int, Any],
                       identity: Mapping[str, Any] | None) -> str | None:
    """One line naming the sessions of this run that another sync wrote since this checkpoint's
    last one (another ``--state-dir``, the same files from another LOGDIR level), else None.
    They are the sessions from the identity's ``next_seq`` on whose ``task.json`` does not
    carry this checkpoint's ``writer`` (one unfinished folder of this checkpoint's own killed
    sync carries it). Costs nothing in the common case: no session from ``next_seq`` on."""
    if not identity:
        return None  # a first sync (or a lost state dir): the engine dedupes all of it anyway
    writer, next_seq = identity.get("writer"), _next_seq(identity) or 1
    others = [seq for seq in sorted(sessions) if seq >= next_seq and (
        not isinstance(writer, str) or _read_session_doc(sessions[seq]).get(WRITER_KEY) != writer)]
    if not others:
        return None
    rhex = identity.get("run_hash")
    names = ", ".join(session_id(str(rhex), seq) for seq in others[:3]) + (
        f" and {len(others) - 3} more" if len(others) > 3 else "")
    return (f"offline session(s) {names} in {folder} were written by another sync since this "
            "checkpoint's last one (another --state-dir, or the same files from another LOGDIR "
            "level): this sync compares what it sends with the sessions, each point once")


def _take_session_number(folder: Path | None, rhex: str, seq: int) -> int:
    """The first session number from ``seq`` whose folder this call creates (``mkdir`` fails
    on one that exists): a session is never shared, even with a writer that took no claim
    (:mod:`.claim`; an older Tracelet). Its folder exists before the number is recorded."""
    assert folder is not None
    while True:
        try:
            os.mkdir(folder / session_id(rhex, seq))
            return seq
        except FileExistsError:
            seq += 1


_RUN_HEX_RE = re.compile(r"[0-9a-f]{20}")  # mapping.run_hash


def _offline_rhex(folder: Path, run: RunRef, identity: Mapping[str, Any]) -> str | None:
    """The session prefix of the run the checkpoint's identity names, if it is this run's, else
    None: this run's own prefix, or that of a run taken by source id (``source_run``: the same
    source id, run paths two levels of one path, and its last session, when one is readable,
    still saying so)."""
    if _next_seq(identity) is None:
        return None
    rhex = identity.get("run_hash")
    adopted = identity.get("source_run")
    if adopted is None:
        return rhex if rhex == run_hash(run) else None
    if not (isinstance(rhex, str) and _RUN_HEX_RE.fullmatch(rhex) and matches(adopted, run)):
        return None
    on_disk = last_session_info(folder, rhex)
    if on_disk is not None and any(on_disk[k] != adopted[k]
                                   for k in ("run_id", "run_path", "source_id")):
        return None  # the sessions are another run's now
    return rhex


def _next_seq(identity: Mapping[str, Any]) -> int | None:
    """The identity's next session number, None when it is not one (a damaged checkpoint)."""
    v = identity.get("next_seq", 1)
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v < 16 ** 12:
        return None
    return v


def _offline_drift(folder: Path, rhex: str, sessions: Mapping[int, Any],
                   identity: Mapping[str, Any] | None) -> str | None:
    """One line naming the sessions the identity says this target wrote that are gone from
    the offline folder (no folder, zip or ``.imported`` marker), else None. Gaps already
    found (and re-sent) earlier, ``identity["gone"]``, are not drift again."""
    if not identity:
        return None
    next_seq = _next_seq(identity) or 1
    gaps = _minus(missing_sessions(sessions, next_seq), _gone(identity))
    if not gaps:
        return None
    count = sum(b - a + 1 for a, b in gaps)
    paths = ", ".join(str(folder / session_id(rhex, a)) if a == b else
                      f"{folder / session_id(rhex, a)} to {session_id(rhex, b)[-12:]}"
                      for a, b in gaps[:3])
    more = f" and {len(gaps) - 3} more range(s)" if len(gaps) > 3 else ""
    what = "offline session removed" if count == 1 else "offline sessions removed"
    return (f"run missing on clearml: {what}: {paths}{more} ({count} of the {next_seq - 1} "
            f"session(s) written for this run: no folder, zip or {IMPORTED_SUFFIX} marker)")


_MAX_GONE = 64  # ranges kept in the identity; more are merged (a merged span is not re-checked)


def _gone(identity: Mapping[str, Any]) -> list[tuple[int, int]]:
    """The identity's ranges of sessions found missing before; [] when absent or malformed
    (then they are drift again: the re-send is deduplicated, never doubled)."""
    out = []
    for r in identity.get("gone") or []:
        if (isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) and
                                                       not isinstance(x, bool) for x in r)
                and 1 <= r[0] <= r[1]):
            out.append((r[0], r[1]))
    return sorted(out)


def _minus(gaps: list[tuple[int, int]], known: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``gaps`` outside every range of ``known`` (both sorted)."""
    out = []
    for a, b in gaps:
        for ka, kb in known:
            if kb < a or ka > b:
                continue
            if ka > a:
                out.append((a, ka - 1))
            a = max(a, kb + 1)
            if a > b:
                break
        if a <= b:
            out.append((a, b))
    return out


def _merge_gone(identity: Mapping[str, Any], sessions: Mapping[int, Any]) -> list[list[int]]:
    """``gone`` after a drift: every range now missing (the ones just found included)."""
    gaps = missing_sessions(sessions, _next_seq(identity) or 1)
    while len(gaps) > _MAX_GONE:  # join the two closest neighbours
        i = min(range(len(gaps) - 1), key=lambda j: gaps[j + 1][0] - gaps[j][1])
        gaps[i:i + 2] = [(gaps[i][0], gaps[i + 1][1])]
    return [[a, b] for a, b in gaps]
