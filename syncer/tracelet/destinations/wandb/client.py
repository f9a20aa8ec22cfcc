"""Weights & Biases destination (``--to wandb``): the :class:`WandbDestination` and its SDK glue.

The package: ``mapping.py`` (names, ids, rows, source texts, histogram buckets, exit codes;
no SDK), ``landed.py`` (which source points W&B has), ``txlog.py`` (W&B's ``.wandb`` files:
reading, waiting for their writer, repairing what a killed sync left), ``factory.py`` (mode,
options, target; what the registry imports), this module (the Destination).

Target, decided by :func:`.factory.wandb_mode` (the factory's target and its checkpoints
follow the same rule):

- ``--wandb-mode offline`` / ``WANDB_MODE=offline`` (or ``dryrun``), or no mode and no
  credentials (``WANDB_API_KEY``, ``wandb login``): **offline**. Each sync writes ordinary W&B
  offline runs under ``$WANDB_DIR/wandb/offline-run-*`` (``WANDB_DIR`` defaults to the current
  folder). Upload them later from a connected machine with
  ``wandb sync $WANDB_DIR/wandb/offline-run-*`` (already-uploaded folders are skipped). One line
  on stderr per sync says so.
- ``WANDB_MODE=online`` (or credentials present): **online**, ``WANDB_BASE_URL`` as W&B reads
  it; the entity is ``--wandb-entity``, else ``WANDB_ENTITY``, else the account's default.
  ``WANDB_MODE=disabled`` is refused (it would drop everything).

Identity: project = the run's project (``WANDB_PROJECT`` is not consulted: tracelet's project
wins; :func:`.mapping.wandb_project`); W&B run id = the tracelet run id when it is 1-64
letters/digits, else ``tl`` + 30 hex digits of its SHA-1 (:func:`.mapping.wandb_run_id`);
display name = ``RunRef.name``; config ``tracelet = {run_id, run_path, source_id}`` (``source_id``:
plain runs, :mod:`tracelet.identity`); manifest tags become W&B tags ``key:value``. Every sync
opens the same id with ``resume="allow"``: one W&B run, one offline fragment
(``offline-run-<time>-<id>``) per sync, offline followed by one holding only its summary (the
run's Duration: :mod:`.runtime`), ``run.finish()`` in ``close_run``. When the run's own id
has no run yet, the run of the same files synced from another LOGDIR level is found by its
source id and continued under its id, project, name and config (:mod:`.source`).

Mapping:

==================  =========================================================================
TensorBoard kind    W&B form
==================  =========================================================================
scalar              history key = tag (see :func:`.mapping.wandb_key`); every row carries the
                    TensorBoard step as ``global_step`` (``define_metric("*",
                    step_metric="global_step")``), ``_timestamp`` = the event's wall time.
                    Consecutive points of one step share a row; a key seen twice in one step
                    starts a new row. NaN/±Inf kept (W&B stores them as NaN/Infinity).
histogram           ``wandb.Histogram(np_histogram=(counts, edges))``; more than 512 buckets are
                    merged into 512 (whole adjacent buckets, so counts stay exact)
image               ``wandb.Image`` from the writer's encoded bytes (PNG/JPEG/GIF copied
                    byte-for-byte; other encodings decoded with PIL); several images of one
                    tag and step become one image list. An image Pillow cannot decode
                    (truncated, a bad chunk CRC, a size over Pillow's pixel limit) is left
                    out and quarantined (``tracelet.media``, ``tracelet.quarantine``)
audio               ``wandb.Audio`` from the writer's clip file (WAV bytes unchanged), caption =
                    the TF2 label; several clips of one tag and step go to consecutive rows
                    (a list of clips would need the ``soundfile`` package)
text                ``wandb.Html`` holding the text verbatim in ``<pre>`` (HTML-escaped):
                    light (a file per point, no artifact per point as ``wandb.Table`` makes)
                    and the text is kept exactly; Markdown is shown as written, not rendered
hparams, params     run config (``config.update(..., allow_val_change=True)``): the latest
                    value wins, so ``log_params`` never reports conflicts; names the config
                    already held with the same value are reported present (the checkpoint's
                    copy; after a resync, reset or drift, offline, the earlier fragments'
                    config records; online only the copy)
system metrics      history keys ``system/<name>`` with their own step metric ``system_step``
                    (seconds since the run started; ``define_metric("system/*",
                    step_metric="system_step")``), ``_timestamp`` = sample time
artifacts/          run files ``artifacts/<relative path>`` (copied into the run folder, then
                    ``run.save(..., policy="now")``): what ``wandb sync`` uploads; a changed
                    file is saved again and overwrites
run page            the TRAINING's git commit/remote and host in the Run record (settings
                    ``git_commit``, ``git_remote_url``, ``host``); program, args, executable,
                    python, os, host, git, start time (``RunRef.started_at``, else the first
                    event's wall time) in W&B's environment record (``wandb-metadata.json``,
                    :func:`.mapping.environment`), the start time also as the run's (a Run
                    record update, :func:`_publish_start`: each fragment's first Run record
                    keeps its sync time, the order ``wandb sync`` uploads fragments in) and
                    the summary (each scalar's last value by wall time, kept in the identity)
                    at ``close_run``; ``RunRef.repro_files`` as run files at ``open_run``
                    (when changed), ``tracelet/requirements.txt`` also as ``requirements.txt``
                    and ``git_diff.patch`` also as ``diff.patch`` (W&B's own names)
status              exit record at ``close_run``: finished → exit 0 ("finished"); failed → 1
                    ("failed"); killed → 137 (W&B: failed, exit code 137); running → marked
                    preempting, exit 0 (W&B: "preempted"; the next sync resumes it). The
                    Duration (``_wandb.runtime``) is the training's end (else its newest
                    point delivered) − start: offline, one more fragment, of the summary
                    only (:mod:`.runtime`); online W&B's own count
==================  =========================================================================

Tag names are kept unchanged (W&B accepts any text). Only names that collide with keys W&B or
this destination reserve (``_step``, ``_runtime``, ``_timestamp``, ``_wandb``, ``_tracelet``,
``global_step``, ``system_step``, anything under ``system/``) and the empty tag are renamed
``tb/<tag>-<8 hex of its SHA-1>`` (:mod:`..keys`), params ``tracelet``/``_wandb*``
``params/<name>-<hash>``.

Steps and exactly-once
----------------------
W&B numbers history rows with ``_step`` and needs it to increase. This destination logs every
row with an explicit ``step=`` taken from ``handle.identity["next_step"]`` (committed with the
checkpoint), and at ``open_run`` raises it above the highest ``_step`` already written for this
run (offline: read back from the newest fragment; online: ``run.starting_step``), so the
fragments of one run continue each other. That is required: older W&B servers drop a resumed
row whose ``_step`` is not above the last one, and ``wandb sync`` of wandb 0.31 renumbers such a
row instead (so a re-sent row would be stored twice). Re-sending rows and trusting the uploader
to drop them is therefore NOT safe; instead nothing is ever written twice:

- Each row carries a hidden key ``_tracelet`` naming the exact source points in it (the format
  is in :mod:`.mapping`): the ordinal is the point's index among the points of its kind in its
  event file (or the row index in its sidecar part). Ordinals are deterministic:
  ``identity["ords"][file] = [offset, scalars, histograms, images, texts, audio]``
  (checkpoints from before audio hold five entries: audio starts at 0) is committed together
  with the engine's offset, so a batch re-read from the committed offset numbers its points
  exactly as before, however its end moved (the file grew, the batch size changed, the points
  were split differently into rows).
- ``send(..., dedupe=True)`` (a range that may have landed: kill -9 between send and commit, a
  failed send, a lost state dir) reads what landed (offline: every earlier fragment of this run
  id, read with the transaction-log framing; online: the API's history) and writes only the
  points whose ordinal is not there, as new rows above every existing ``_step``, and returns
  how many it left out (``SendResult.present``: "confirmed N already present"). A kill -9
  while the W&B service was writing leaves a prefix of the rows; a half-written last record is
  cut off at the next ``open_run`` (``wandb sync`` stops at it otherwise).
- ``send`` returns only after its last row is in the ``.wandb`` file (the service flushes it
  every ``FLUSH_INTERVAL_S``; we read the file until the row is there, then fsync it), so what
  the engine commits is on disk even if the sync and the W&B service die right after.
- A retry of a send that failed half-way skips the rows it already logged in this fragment.
- Leftovers of a killed sync are repaired at the next ``open_run`` of the run, because
  ``wandb sync`` stops at them: a record the service never finished writing is cut off the end
  of its file, and a fragment killed inside ``wandb.init`` (no Run record, so no data; it would
  fail ``wandb sync`` of the whole folder) is renamed ``*.wandb.tracelet-empty``.

Drift (:mod:`.drift`): offline, the identity names the last committed sync's ``.wandb`` file;
it gone (or holding another run) sets ``RunHandle.drift`` and the identity's counters are
dropped, so the engine re-sends the whole run deduped against the fragments still there.
Online: one API lookup of the run. ``check_run`` asks the same without touching anything.

Online, :func:`.online.reach` asks ``WANDB_BASE_URL`` once before each ``wandb.init``: no
answer is a transient error naming the cause (connection refused, unknown host, timeout),
instead of W&B's ``init_timeout`` wait followed by "run ID is in use" on the retry.

Errors (:func:`classify_wandb`): W&B's own exception types decide first, outermost first —
``AuthenticationError`` (credentials refused), ``RunNotFoundError`` (the run is gone), a lost
or unreachable W&B service (its mailbox closed, a request abandoned, an error response, no
connection) and any other ``wandb.Error`` (``UsageError`` such as a call on a finished run,
``UnsupportedError``, an error the service reported for ``wandb.init``) are the destination's.
A ``CommError`` (talking to W&B's servers) wraps what decides: an HTTP status (the one in
wandb-core's ``ApiErrorResponse`` or a ``requests`` response: 429/5xx transient, any other the
destination's — an API call holds no single point, so it is never the content's), a transport
error or timeout (transient); a ``CommError`` with nothing decisive inside is transient. Then
the common rules (``base.classify_error``): a ``TimeoutError`` (the service busy, or a row not
on disk within ``WRITE_TIMEOUT_S``) and connection errors are transient; a value W&B's media
types refuse (``ValueError``) is the content's.

Limits: offline, a lost state dir is reconciled against the offline folders still under
``WANDB_DIR``; if they were deleted after uploading, tracelet cannot see what the server has and
re-sends everything (keep the folders, or sync online, where the API is asked). Online mode
(not exercised by the test suite, which has no W&B account) dedupes against the API's history;
a sync killed online leaves what its service had not uploaded in that run's ``run-*.wandb``,
which the next sync re-sends: do not ``wandb sync`` the folders of killed online syncs.

Threads: ``wandb.setup()`` starts W&B's service once per process and every run of every worker
thread shares it (a service inherited from a parent process through ``WANDB_SERVICE`` is not
used: a kill -9 of the sync would leave our runs open in it); runs are created with
``reinit="create_new"``; ``wandb.init`` / ``run.finish`` are serialised by a module-level lock
(the SDK's global state is not thread-safe there); ``run.log`` of different runs runs
concurrently.
"""
from __future__ import annotations

import hashlib
import html
import importlib
import io
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ...errors import (DestinationError, PermanentDestinationError, TraceletError,
                       TransientDestinationError)
from ...faults import crash_point
from ..._fs import atomic_file
from ...media import image_problem
from ...reader.points import AUDIO, HISTOGRAM, IMAGE, SCALAR, TEXT, Batch
from ...redact import scrubbed_logger
from ..base import (Capabilities, Destination, ParamsResult, Rejected, RunHandle, RunRef,
                    SendResult, SystemRows, chain, classify_error, http_status, typed_error)
from .drift import fragment_name, offline_drift, online_drift
from .factory import wandb_mode, wandb_root
from .online import INIT_TIMEOUT_S, reach
from .runtime import duration, summary_record
from .source import (CONFIG_KEY, OfflineIndex, find_online, identity_config, named_run,
                     offline_owner, online_owner)
from .landed import Landed
from .mapping import (DIFF_ARTIFACT, DIFF_FILE, REPRO_ALIASES, STEP_METRIC, SYSTEM_CODE,
                      SYSTEM_STEP_METRIC, SOURCE_KEY, environment, exit_code, histogram_buckets,
                      json_value, landed_points, media_rows, param_key, scalar_rows, source_file,
                      source_hash, system_part_hash, system_rows, update_summary, upload_hint,
                      wandb_key, wandb_project, wandb_run_id)
from .txlog import (F_HISTORY, Fragment, LogScanner, config_values, find_fragments,
                    is_config_with, is_exit, is_files_with, is_history_step, next_free_step,
                    record_field, source_texts)

log = scrubbed_logger("tracelet.wandb")  # log lines never show a credential

FLUSH_INTERVAL_S = 0.01  # the service writes its buffer to the .wandb file this often (a confirm
#                          waits for it: 0.05 made a 50-run sync 23 ms a run slower, bench_wandb)
WRITE_TIMEOUT_S = 120.0  # a row not on disk after this: the service is stuck (transient)
MAX_CONFIG_COPY_BYTES = 256_000  # params re-applied to every fragment up to this size
API_TIMEOUT_S = 20.0  # online: one API call (is the run still there?) waits at most this

# One service, one lock, one announcement per process (see the module docstring).
_LOCK = threading.RLock()
_SETUP_DONE = False
_ANNOUNCED: set[str] = set()


class WandbDestination(Destination):
    name = "wandb"
    capabilities = Capabilities(kinds=frozenset({SCALAR, HISTOGRAM, IMAGE, TEXT, AUDIO}))

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__(config)
        import wandb

        self.mode = wandb_mode(self.config)
        self.root = wandb_root()
        self.entity = self.config.get("wandb_entity") or os.environ.get("WANDB_ENTITY") or None
        fields = getattr(wandb.Settings, "model_fields", {})
        if "x_transaction_log_flush_interval" not in fields:
            raise DestinationError(
                f"wandb {wandb.__version__} cannot flush its run file on a timer, which tracelet "
                "needs to confirm each write; install a newer wandb: pip install -U wandb")
        self._open: dict[int, Any] = {}
        self._sources = OfflineIndex(self.root)  # runs by source id, read at the first lookup
        _ensure_setup()

    @property
    def target(self) -> str:
        if self.mode == "offline":
            return f"offline:{self.root}"
        return "online:" + self._base_url()

    @staticmethod
    def _base_url() -> str:
        return os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"

    def check_run(self, run: RunRef, identity: dict[str, Any] | None) -> str | None:
        """``status --check``: the drift line :meth:`open_run` would give, or None. Offline:
        reads the head of one ``.wandb`` file (or globs the run's folders); online: one API
        lookup. Creates, moves and waits for nothing."""
        wid = wandb_run_id(run.run_id)
        ident = dict(identity or {})
        try:  # not one of the boundary's calls: typed here
            if identity and identity.get("run_id") != wid:
                wid = self._adopted_id(run, identity)  # a run adopted by source id, still its?
                if not wid:
                    return ("run missing on wandb: the checkpoint names run "
                            f"{identity.get('run_id')!r}")
            if self.mode == "offline":
                if not identity:
                    ident = {"next_step": 1}  # no checkpoint: is any folder of the run there?
                return offline_drift(self.root, ident, wid)
            ident.setdefault("project", wandb_project(run.project))
            return online_drift(ident, wid, self._base_url(), API_TIMEOUT_S)
        except TraceletError:
            raise
        except Exception as e:
            raise typed_error(classify_wandb(e), e) from e

    def _adopted_id(self, run: RunRef, identity: Mapping[str, Any]) -> str:
        """``check_run``: the W&B id of a run adopted by source id that the checkpoint names,
        if that run holds this source ("" if not). Offline: the head of the fragment the
        checkpoint names (nothing moved or waited for); online: one API lookup."""
        named = named_run(identity) if run.source_id else None
        if named is None:
            return ""
        if self.mode == "offline":
            frag = identity.get("fragment")
            real_root = os.path.realpath(self.root)
            path = os.path.normpath(os.path.join(real_root, frag)) if isinstance(frag, str) else ""
            if not (frag and path.startswith(os.path.join(real_root, ""))):
                return ""
            found = offline_owner([path], run)
        else:
            import wandb

            found = online_owner(wandb.Api(timeout=API_TIMEOUT_S),
                                 identity.get("entity") or self.entity, *named, run)
        return named[0] if found is not None and found.run_id == named[0] else ""

    def metric_key(self, tag: str) -> str:
        return wandb_key(tag)

    def param_key(self, name: str) -> str:
        return param_key(name)

    def classify(self, exc: BaseException) -> type[DestinationError]:
        return classify_wandb(exc)

    # -- identity ----------------------------------------------------------------------------
    def _settings(self, run: RunRef | None = None, *, summary_only: bool = False):
        import wandb

        fields = getattr(wandb.Settings, "model_fields", {})
        git, system = dict(run.git or {}) if run else {}, dict(run.system or {}) if run else {}
        wanted = dict(
            # the TRAINING's host and git (the Run record: W&B's run page), not ours; git is
            # not probed here (disable_git), so these are what W&B records
            host=system.get("hostname") or None, git_commit=git.get("commit") or None,
            git_remote_url=git.get("remote") or None,
            mode=self.mode, silent=True, console="off", x_disable_stats=True,
            x_disable_meta=True, x_disable_machine_info=True, x_save_requirements=False,
            disable_git=True, save_code=False, disable_code=True, disable_job_creation=True,
            symlink=False, allow_media_symlink=False,
            x_transaction_log_flush_interval=FLUSH_INTERVAL_S,
            init_timeout=INIT_TIMEOUT_S,
            # a fragment of a summary only (runtime.py): wandb-core leaves the summary to us
            x_server_side_derived_summary=summary_only,
        )
        return wandb.Settings(**{k: v for k, v in wanted.items() if k in fields})

    def fragments(self, wid: str, project: str, exclude: str | None = None) -> list[Fragment]:
        """This run's earlier offline fragments under WANDB_DIR (:func:`.txlog.find_fragments`)."""
        return find_fragments(self.root, wid, project, exclude)

    # -- the same files synced from another LOGDIR level (source.py) ---------------------------
    def _whose(self, run: RunRef, identity: dict[str, Any] | None):
        """Whose run the checkpoint names: (W&B id, project, the run adopted by source id or
        None, the identity to use or None, whether the identity given was ignored, offline: the
        run's fragments). An identity naming another W&B id than this run's own is used only
        when that run holds this run's source (adopted at an earlier sync); else it is never
        used, nor its paths."""
        wid, project = wandb_run_id(run.run_id), wandb_project(run.project)
        adopted, ignored = None, False
        if identity and identity.get("run_id") != wid:
            named = named_run(identity) if run.source_id else None
            if named is not None:
                if self.mode == "offline":
                    frags = self.fragments(*named)
                    adopted = offline_owner([f.path for f in frags], run)
                    if adopted is not None:
                        return (named[0], named[1], adopted, identity, False, frags)
                else:
                    import wandb

                    adopted = online_owner(wandb.Api(timeout=API_TIMEOUT_S),
                                           identity.get("entity") or self.entity, *named, run)
            if adopted is None:
                identity, ignored = None, True
            else:
                wid, project = named  # type: ignore[misc]
        previous = self.fragments(wid, project) if self.mode == "offline" else []
        return wid, project, adopted, identity, ignored, previous

    def _find_by_source(self, run: RunRef, wid: str, previous: list[Fragment]):
        """(The run created for the same files under another run path or project, or None;
        offline: its fragments). Asked only when the run's own W&B id has no run yet."""
        if not run.source_id:
            return None, previous
        if self.mode == "offline":
            if previous:  # the run's own id has fragments: it continues as always
                return None, previous
            found = self._sources.find(run)
            if found is None:
                return None, previous
            return found, self.fragments(found.run_id, found.project)
        import wandb

        return find_online(wandb.Api(timeout=API_TIMEOUT_S), self.entity, run, wid), []

    def open_run(self, run: RunRef, identity: dict[str, Any] | None) -> RunHandle:
        if self.mode == "offline":
            _announce(self.root)
        else:
            reach(self._base_url())  # unreachable: one line naming the cause, not a 90 s wait
        wid, project, adopted, identity, ignored, previous = self._whose(run, identity)
        same_source = None
        if not identity and adopted is None:  # first sync of this path, or a lost state dir
            adopted, previous = self._find_by_source(run, wid, previous)
            if adopted is not None:
                wid, project, same_source = adopted.run_id, adopted.project, adopted.where()
        ident = dict(identity or {})
        next_step = int(ident.get("next_step") or 0)
        existed = bool(identity) or adopted is not None
        drift = None
        if self.mode == "offline":
            if identity:
                drift = offline_drift(self.root, ident, wid, [f.path for f in previous])
        elif identity:
            drift = online_drift(ident, wid, self._base_url(), API_TIMEOUT_S)
        if drift:
            # What the checkpoint says was sent is not there: nothing of it is used; the
            # engine re-sends the whole run, deduped against what is still there.
            ident = {"next_step": next_step}
            existed = False
        if self.mode == "offline":
            # only fragments no earlier open has checked are read whole (normally the last sync's)
            checked = tuple(ident.get("checked_through") or (0, 0))
            next_step = max(next_step, next_free_step(previous, checked))
            existed = existed or bool(previous)
        # a run found by source id keeps the identity (and display name) it was created with
        config = {CONFIG_KEY: dict(adopted.config) if adopted else identity_config(run)}
        config.update(ident.get("config") or {})
        name = (adopted.display_name or run.name) if adopted else run.name
        tags = [f"{k}:{v}"[:64] for k, v in sorted(run.tags.items())] or None
        os.makedirs(self.root, exist_ok=True)
        opened_at = time.time()
        init = {"project": project, "id": wid, "name": name, "tags": tags,
                CONFIG_KEY: config[CONFIG_KEY]}  # the same run again: _close_fragment
        try:
            r = self._init(run, init, dict(config))
        except Exception:
            if self.mode == "online":
                reach(self._base_url())  # the server went away meanwhile: say so
            raise
        try:
            if self.mode == "online":
                existed = existed or bool(getattr(r, "resumed", False))
                next_step = max(next_step, int(getattr(r, "starting_step", 0) or 0))
            r.define_metric(STEP_METRIC)
            r.define_metric(SYSTEM_STEP_METRIC, hidden=True)
            r.define_metric("*", step_metric=STEP_METRIC)
            r.define_metric("system/*", step_metric=SYSTEM_STEP_METRIC)
        except BaseException:
            self._finish(r, 1)
            raise
        new_identity = {
            "run_id": wid, "project": project, "entity": getattr(r, "entity", None) or None,
            "mode": self.mode, "next_step": next_step, "ords": dict(ident.get("ords") or {}),
            "status": ident.get("status"), "config": dict(ident.get("config") or {}),
            # each scalar's latest [wall time, value] (the run summary) and the first event's
            # wall time (the start time of a run without a manifest), across syncs
            "summary": dict(ident.get("summary") or {}), "first_wall": ident.get("first_wall"),
            "repro": dict(ident.get("repro") or {}),  # run files saved: name -> SHA-1
            # fragments that started before this one were checked for torn tails by now
            "checked_through": [int(opened_at) - 1, 0],
        }
        if self.mode == "offline":  # the folder whose removal is drift (drift.py)
            new_identity["fragment"] = fragment_name(self.root, r.settings.sync_file)
        handle = RunHandle(identity=new_identity, existed=existed, identity_ignored=ignored,
                           drift=drift, same_source=same_source, client=r, extra={
            "source_dir": str(run.source_dir), "live_step": next_step,
            "run_started_at": run.started_at, "sync_file": r.settings.sync_file, "run": run,
            # no checkpoint's copy of the config to trust (first sync, resync, reset, drift):
            # log_params asks the earlier fragments what the config holds (_held_config)
            "config_unknown": not identity or bool(drift),
            "init": init,
        })
        try:
            self._save_repro(handle, run)
        except BaseException:
            self._finish(r, 1)
            raise
        return handle

    def _save_repro(self, handle: RunHandle, run: RunRef) -> None:
        """The run's reproducibility files (``RunRef.repro_files``) as run files, under their
        names and W&B's own (``requirements.txt``); only those changed since the last save."""
        saved = handle.identity["repro"]
        files = []
        for name, path in sorted(run.repro_files.items()):
            try:
                digest = hashlib.sha1(Path(path).read_bytes()).hexdigest()
            except OSError as e:  # prepared by the engine for this sync: gone is a bug
                raise DestinationError(f"wandb: reproducibility file {path}: {e}") from e
            if saved.get(name) == digest:
                continue
            files.append((Path(path), name, digest))
        names = self._save_files(handle, [(p, n) for p, n, _ in files] + [
            (p, REPRO_ALIASES[n]) for p, n, _ in files if n in REPRO_ALIASES])
        if names:
            self._wait_written(handle, is_files_with(names[-1]), f"file record {names[-1]}")
        for _, name, digest in files:
            saved[name] = digest

    # -- points ------------------------------------------------------------------------------
    def send(self, handle: RunHandle, batch: Batch, *, dedupe: bool) -> SendResult:
        rel = source_file(handle.extra["source_dir"], batch.path)
        fk = source_hash(rel)
        ords = handle.identity["ords"].get(rel)
        base = [0, 0, 0, 0, 0]
        if ords:
            if ords[0] > batch.start_offset:
                raise DestinationError(
                    f"wandb: state of {batch.path} says byte {ords[0]} was sent but the sync "
                    f"resumes at byte {batch.start_offset}; the checkpoint was edited or restored. "
                    "Delete the state dir (tracelet then checks what W&B already has).")
            base = (list(ords[1:6]) + [0])[:5]  # [s, h, i, t, a]; older checkpoints lack `a`
        attempt_key = ("events", rel, batch.start_offset, batch.end_offset)
        _retire_attempt(handle, attempt_key)
        landed = self._landed(handle) if dedupe else None
        rows = scalar_rows(batch, fk, base[0], landed)
        self._note_points(handle, batch)
        # wandb.Image decodes with Pillow: an image it cannot take is left out here (its ordinal
        # is still used) and quarantined by the engine, instead of failing the batch forever
        rejected = [Rejected(IMAGE, j, why) for j, im in enumerate(batch.images)
                    if (why := image_problem(im.encoded, decode=True))]
        with tempfile.TemporaryDirectory(prefix="tracelet-wandb-") as tmp:
            if batch.histograms or batch.images or batch.texts or batch.audio:
                folder = Path(tmp)
                make = {HISTOGRAM: lambda p, o: _histogram(p), TEXT: lambda p, o: _html(p),
                        AUDIO: lambda p, o: _audio(p, folder, str(o)),
                        IMAGE: lambda p, o: _image(p, folder, str(o))}
                rows.extend(media_rows(batch, fk, base, landed, make,
                                       {r.index for r in rejected}))
            self._log_rows(handle, rows, attempt_key)
        handle.identity["ords"][rel] = [batch.end_offset, base[0] + len(batch.scalars),
                                        base[1] + len(batch.histograms),
                                        base[2] + len(batch.images), base[3] + len(batch.texts),
                                        base[4] + len(batch.audio)]
        # the points left out because W&B holds them: "confirmed N already present"
        return SendResult(rejected, landed_points(batch, fk, base, landed,
                                                  {r.index for r in rejected}))

    @staticmethod
    def _note_points(handle: RunHandle, batch: Batch) -> None:
        """Every scalar of the batch (landed before or not) into the summary; the first wall
        time seen (the start of a run without a manifest)."""
        cols, ident = batch.scalars, handle.identity
        walls = [p.wall_time for kind in (batch.histograms, batch.images, batch.texts,
                                          batch.audio) for p in kind[:1]]
        if len(cols):
            keys: dict[str, str] = {}
            update_summary(ident.setdefault("summary", {}),
                           [keys.get(t) or keys.setdefault(t, wandb_key(t)) for t in cols.tags],
                           cols.wall_times, cols.values)
            walls.append(cols.wall_times[0])
        walls = [w for w in walls if w == w and w > 0]
        if walls and (ident.get("first_wall") is None or min(walls) < ident["first_wall"]):
            ident["first_wall"] = min(walls)

    def send_system(self, handle: RunHandle, rows: SystemRows, run: RunRef, *,
                    dedupe: bool) -> SendResult:
        if not rows.num_rows:
            return SendResult()
        # A part has no name here; its content identifies it (parts are immutable).
        fk = system_part_hash(rows.timestamps, rows.names)
        attempt_key = ("system", fk, 0, rows.num_rows)
        _retire_attempt(handle, attempt_key)
        skip = self._landed(handle).covered(fk, SYSTEM_CODE, 0, rows.num_rows) if dedupe else ()
        self._log_rows(handle, system_rows(rows, fk, handle.extra.get("run_started_at"), skip),
                       attempt_key)
        return SendResult(present=len(skip))  # the part's rows W&B holds were left out

    def _log_rows(self, handle: RunHandle, rows: list, attempt_key: tuple) -> None:
        """Log rows with consecutive explicit ``_step`` values; return once they are on disk."""
        r = handle.client
        attempt = handle.extra.get("attempt")
        if attempt and attempt["key"] == attempt_key:  # a retry: skip what the failed try logged
            first, done = attempt["first_step"], attempt["done"]
        else:
            _retire_attempt(handle, attempt_key)
            first, done = handle.extra["live_step"], 0
            attempt = handle.extra["attempt"] = {"key": attempt_key, "first_step": first,
                                                 "done": 0, "srcs": []}
        last = len(rows) - 1
        for k in range(done, len(rows)):
            row, src = rows[k]
            row[SOURCE_KEY] = src
            r.log(row, step=first + k, commit=True if k == last else None)
            attempt["done"] = k + 1
            attempt["srcs"].append(src)
            handle.extra["live_step"] = first + k + 1
        if rows:
            crash_point("wandb_rows_handed")  # kill -9 tests: rows in the service, not on disk
            self._wait_written(handle, is_history_step(first + last),
                               f"history row _step={first + last}", last_of=F_HISTORY)
        handle.extra["attempt"] = None
        handle.identity["next_step"] = max(handle.identity["next_step"], first + len(rows))
        handle.extra["live_step"] = max(handle.extra["live_step"], handle.identity["next_step"])

    # -- what already landed -------------------------------------------------------------------
    def _landed(self, handle: RunHandle) -> Landed:
        cached = handle.extra.get("landed")
        if cached is not None:
            logged = handle.extra.pop("logged", None)
            if logged:
                for text in logged:
                    cached.add_source(text)
                cached.finish()
            return cached
        landed = Landed()
        ident = handle.identity
        if self.mode == "offline":
            current = os.path.abspath(handle.extra["sync_file"])
            for frag in self.fragments(ident["run_id"], ident["project"], exclude=current):
                for text in source_texts(frag.path):
                    landed.add_source(text)
        else:
            for text in _api_source_texts(ident):
                landed.add_source(text)
        for text in handle.extra.pop("logged", None) or ():
            landed.add_source(text)
        handle.extra["landed"] = landed.finish()
        return landed

    def _wait_written(self, handle: RunHandle, predicate: Callable[[bytes], bool], what: str,
                      last_of: int | None = None) -> None:
        """Read the run's own ``.wandb`` file until a record matching ``predicate`` is there.
        With ``last_of``, only the newest record of that field is tested (history rows: their
        steps only grow, and parsing every row would cost as much as logging it)."""
        scanner: LogScanner = handle.extra.get("scanner") or LogScanner(handle.extra["sync_file"])
        handle.extra["scanner"] = scanner
        deadline = time.monotonic() + WRITE_TIMEOUT_S
        delay = 0.005
        while True:
            newest = None
            for _, raw in scanner.poll():
                if last_of is not None:
                    if record_field(raw) == last_of:
                        newest = raw
                elif predicate(raw):
                    newest = raw
                    break
            if newest is not None and predicate(newest):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"wandb: the W&B service did not write the {what} to "
                                   f"{handle.extra['sync_file']} within {WRITE_TIMEOUT_S:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, FLUSH_INTERVAL_S)
        # The checkpoint is fsynced after this returns; the run file must be on disk before it.
        fd = os.open(handle.extra["sync_file"], os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- params, artifacts, status -------------------------------------------------------------
    def log_params(self, handle: RunHandle, params: Mapping[str, Any]) -> ParamsResult:
        values = {param_key(k): json_value(v) for k, v in params.items()}
        if not values:
            return ParamsResult()
        held = self._held_config(handle)
        present = [k for k in params
                   if param_key(k) in held and _same_json(held[param_key(k)], values[param_key(k)])]
        handle.client.config.update(values, allow_val_change=True)
        keys = set(values)
        self._wait_written(handle, is_config_with(keys), "config update")
        copy = dict(handle.identity.get("config") or {})
        copy.update(values)
        if len(json.dumps(copy, default=str)) <= MAX_CONFIG_COPY_BYTES:
            handle.identity["config"] = copy
        return ParamsResult(present=present)  # W&B config takes the latest value: no conflicts

    def _held_config(self, handle: RunHandle) -> Mapping[str, Any]:
        """The run config W&B held before this call: the checkpoint's copy (what earlier syncs
        sent, which every fragment's init repeats) or, when there is none to trust (resync,
        reset, drift), offline, what the run's earlier fragments leave (read once per open).
        Online nothing more is asked (an API call per params send): only the copy counts."""
        held: dict[str, Any] = {}
        if handle.extra.get("config_unknown") and self.mode == "offline":
            cached = handle.extra.get("fragment_config")
            if cached is None:
                ident = handle.identity
                current = os.path.abspath(handle.extra["sync_file"])
                cached = {}
                for frag in self.fragments(ident["run_id"], ident["project"], exclude=current):
                    cached.update(config_values(frag.path))  # upload order: the latest wins
                handle.extra["fragment_config"] = cached
            held.update(cached)
        held.update(handle.identity.get("config") or {})
        return held

    def log_artifacts(self, handle: RunHandle, files: list[tuple[Path, str]]) -> None:
        named = [(path, "artifacts/" + rel.replace(os.sep, "/")) for path, rel in files]
        # the dirty tree's diff also under W&B's own name for it (the run page links diff.patch)
        named += [(path, DIFF_FILE) for path, rel in files if rel == DIFF_ARTIFACT]
        names = self._save_files(handle, named)
        if names:
            self._wait_written(handle, is_files_with(names[-1]), f"file record {names[-1]}")

    def _save_files(self, handle: RunHandle, files: list[tuple[Path, str]]) -> list[str]:
        """Copy each file into the run's files folder as ``name`` and ``run.save`` it."""
        r = handle.client
        files_dir = Path(r.settings.files_dir)
        names = []
        for path, name in files:
            dest = files_dir / name
            # a copy, not a link: the upload is what we saw now. Not fsynced: the source is the
            # durable copy, and a lost one is copied again (the engine commits after this call)
            with atomic_file(dest, fsync=False) as out, open(path, "rb") as src:
                shutil.copyfileobj(src, out)
            r.save(str(dest), base_path=str(files_dir), policy="now", glob=False)
            names.append(name)
        return names

    def finish(self, handle: RunHandle, status: str, ended_at: float | None) -> None:
        # Applied by close_run (W&B writes the state with the exit record; the end gives the
        # Duration, runtime.py). Kept in the identity so every later fragment of this run ends
        # with the same state and Duration.
        handle.identity["status"], handle.identity["ended_at"] = status, ended_at

    def close_run(self, handle: RunHandle) -> None:
        r = handle.client
        if r is None:
            return
        code, preempting = exit_code(handle.identity.get("status"))
        try:
            self._describe(handle)
        except Exception as e:  # the run is finished whatever its description holds
            log.warning("wandb: the run's summary/environment record was not written: %s", e)
        if preempting:
            try:
                r.mark_preempting()  # still running: W&B shows "preempted" until the next sync
            except Exception as e:
                log.warning("wandb: mark_preempting failed: %s", e)
        self._finish(r, code)
        handle.client = None
        try:  # finish() returns before the service flushes the exit record: wait for it
            self._wait_written(handle, is_exit, "exit record")
        except TimeoutError as e:  # the next sync's fragment ends with the same state anyway
            log.warning("%s", e)
            return
        seconds = duration(handle.extra["run"], handle.identity)
        if seconds is not None and self.mode == "offline":  # online: runtime.py, "Online"
            try:  # the run's Duration: the training's (runtime.py)
                self._close_fragment(handle, seconds, code, preempting)
            except Exception as e:  # cosmetic: every point and the state are written
                log.warning("wandb: the run's Duration was not set to %d s: %s", seconds, e)

    def _init(self, run: RunRef, init: Mapping[str, Any], config: dict[str, Any], *,
              summary_only: bool = False):
        """``wandb.init`` of this run (one more fragment of it). ``summary_only``: wandb-core
        derives no summary and no timing in it (:mod:`.runtime`)."""
        import wandb

        with _LOCK:
            r = wandb.init(project=init["project"], entity=self.entity,
                           id=init["id"], name=init["name"], resume="allow", dir=self.root,
                           config=config, tags=init["tags"], reinit="create_new",
                           settings=self._settings(run, summary_only=summary_only))
        self._open[id(r)] = r
        return r

    def _close_fragment(self, handle: RunHandle, seconds: int, code: int,
                        preempting: bool) -> None:
        """The run's last fragment of this sync: its summary with ``_wandb.runtime`` = the
        training's ``seconds``, the environment record, the state (``preempting``: still
        running) and the exit record; no history."""
        import wandb

        if "x_server_side_derived_summary" not in getattr(wandb.Settings, "model_fields", {}):
            return  # another wandb: its own timer decides (the sync's seconds)
        init, ident = handle.extra["init"], handle.identity
        config = {CONFIG_KEY: init[CONFIG_KEY], **(ident.get("config") or {})}
        r = self._init(handle.extra["run"], init, config, summary_only=True)
        handle.client, handle.extra["sync_file"] = r, r.settings.sync_file
        handle.extra.pop("scanner", None)
        try:
            self._describe(handle)
            r._interface._publish_summary(summary_record(seconds))
            if preempting:
                r.mark_preempting()
            crash_point("wandb_summary_fragment")  # kill -9 tests: a run's last fragment
        finally:
            self._finish(r, code)
            handle.client = None
        self._wait_written(handle, is_exit, "exit record")

    def _describe(self, handle: RunHandle) -> None:
        """Before the exit record: the run summary (each scalar's last value) and W&B's
        environment record (program, args, python, host, git, start time: ``wandb-metadata.json``
        and the run's Overview) of the training, not of this sync (W&B's own probe is off)."""
        r, ident = handle.client, handle.identity
        summary = {k: float(v[1]) for k, v in (ident.get("summary") or {}).items()}
        if summary:
            r.summary.update(summary)
        run = handle.extra.get("run")
        interface = getattr(r, "_interface", None)
        if run is None or not hasattr(interface, "publish_environment"):
            return  # a wandb without it: the manifest is still in tracelet/tracelet.json
        from google.protobuf import json_format
        from wandb.proto import wandb_internal_pb2 as pb

        fields = environment(run, run.started_at if run.started_at is not None
                             else ident.get("first_wall"))
        if not fields:
            return
        started = fields.pop("started_at", None)
        rec = json_format.ParseDict(fields, pb.EnvironmentRecord(), ignore_unknown_fields=True)
        if started is not None:
            rec.started_at.FromMicroseconds(int(started * 1e6))
            _publish_start(r, started)
        rec.writer_id = "tracelet"
        interface.publish_environment(rec)

    def _finish(self, r, code: int) -> None:
        with _LOCK:
            try:
                r.finish(exit_code=code)
            finally:
                self._open.pop(id(r), None)

    def close(self) -> None:
        with _LOCK:  # the end of a sync: the next one says where its runs went again
            _ANNOUNCED.discard(self.root)
        for r in list(self._open.values()):
            try:
                self._finish(r, 1)
            except Exception as e:
                log.warning("wandb: closing a run left open failed: %s", e)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
# wandb's exception classes by what they mean; looked up by name when first needed (a class a
# wandb version lacks is left out rather than failing the classification).
_SDK_ERRORS = {
    "auth": ("wandb.errors.AuthenticationError",),
    "comm": ("wandb.errors.CommError",),
    "api": ("wandb.sdk.lib.service.service_connection.WandbApiFailedError",),
    "gone": ("wandb.apis.public.runs.RunNotFoundError",),
    # this process lost (or never got) its connection to the W&B service: no retry in this
    # process can reach it again, the next sync starts a new one
    "service": ("wandb.sdk.mailbox.mailbox.MailboxClosedError",
                "wandb.sdk.mailbox.mailbox_handle.HandleAbandonedError",
                "wandb.sdk.mailbox.mailbox_handle.ServerResponseError",
                "wandb.sdk.lib.service.service_token.WandbServiceConnectionError"),
    "sdk": ("wandb.errors.Error",),
}
_SDK_TYPES: dict[str, tuple[type, ...]] = {}


def _sdk_types(group: str) -> tuple[type, ...]:
    found = _SDK_TYPES.get(group)
    if found is None:
        out = []
        for qual in _SDK_ERRORS[group]:
            module, _, name = qual.rpartition(".")
            try:
                cls = getattr(importlib.import_module(module), name, None)
            except Exception:  # moved or gone in this wandb version: not one of its errors
                cls = None
            if isinstance(cls, type) and issubclass(cls, BaseException):
                out.append(cls)
        found = _SDK_TYPES[group] = tuple(out)
    return found


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``'s chain (:func:`base.chain`), then the chains of what a ``CommError`` wraps in
    its ``exc`` attribute, each exception once."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        for e in chain(todo.pop(0)):
            if id(e) in seen:
                break
            seen.add(id(e))
            yield e
            inner = getattr(e, "exc", None)
            if isinstance(inner, BaseException):
                todo.append(inner)


def _status(e: BaseException) -> int | None:
    """The HTTP status ``e`` carries: wandb-core's ``ApiErrorResponse.http_status`` (0: none),
    else what :func:`base.http_status` finds."""
    value = getattr(getattr(e, "response", None), "http_status", None)
    if isinstance(value, int) and 100 <= value < 600:
        return value
    return http_status(e)


def _api_status(status: int) -> type[DestinationError]:
    # a W&B API call (reading what landed) holds no single point: a refusal is never content
    return TransientDestinationError if status == 429 or status >= 500 else DestinationError


def classify_wandb(exc: BaseException) -> type[DestinationError]:
    """The typed error a W&B exception stands for (module docstring, "Errors")."""
    comm = False
    for e in _causes(exc):
        if isinstance(e, TraceletError):
            break  # ours: the common rules
        if isinstance(e, _sdk_types("auth") + _sdk_types("gone") + _sdk_types("service")):
            return DestinationError
        if isinstance(e, _sdk_types("api")):
            status = _status(e)
            if status is not None:
                return _api_status(status)
            continue  # without a status, what it wraps decides (a timeout, a closed mailbox)
        if isinstance(e, _sdk_types("comm")):
            comm = True  # a wrapper: what it wraps decides
            continue
        if isinstance(e, _sdk_types("sdk")):
            return DestinationError
        if comm and (status := _status(e)) is not None:
            return _api_status(status)
    cls = classify_error(exc)
    if comm and cls is PermanentDestinationError:
        return TransientDestinationError  # a communication error with nothing decisive in it
    return cls


def _not_on_server(exc: BaseException) -> bool:
    """The API says the run (or its project) does not exist: nothing has landed yet."""
    return any(isinstance(e, _sdk_types("gone")) or _status(e) == 404 for e in _causes(exc))


def _same_json(a: Any, b: Any) -> bool:
    """Two config values have the same JSON text (keys sorted): ``1`` is not ``true``."""
    try:
        return json.dumps(a, sort_keys=True, allow_nan=True) == \
            json.dumps(b, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError):
        return False


def _api_source_texts(ident: Mapping[str, Any]) -> Iterator[str]:
    """Online: the ``_tracelet`` texts of the run's history on the server."""
    import wandb

    api = wandb.Api(timeout=60)
    entity = ident.get("entity") or api.default_entity
    try:
        api_run = api.run(f"{entity}/{ident['project']}/{ident['run_id']}")
    except Exception as e:
        if not _not_on_server(e):
            raise
        return
    for row in api_run.scan_history(keys=[SOURCE_KEY], page_size=1000):
        text = row.get(SOURCE_KEY)
        if isinstance(text, str):
            yield text


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _ensure_setup() -> None:
    global _SETUP_DONE
    with _LOCK:
        if not _SETUP_DONE:
            import wandb
            from wandb.sdk import wandb_setup

            if getattr(wandb_setup, "_singleton", None) is None and os.environ.get("WANDB_SERVICE"):
                # Inherited from a parent process that uses W&B: sharing its service means a
                # kill -9 of this sync leaves our runs open in the parent's service, and the
                # next sync of them fails there with "run ID is in use". Use our own.
                os.environ.pop("WANDB_SERVICE", None)
            wandb.setup()  # one service process for every run of this sync
            _SETUP_DONE = True


def _publish_start(r, started: float) -> None:
    """The training's start as the run's start time: a Run record update (what W&B's own
    ``run.name = ...`` writes) whose ``start_time`` is ``started``.

    wandb 0.31 has no setting for it (``wandb.init`` overwrites ``Settings.x_start_time`` and
    stamps the first Run record with the time of the call). The first Run record of each
    fragment keeps that sync time on purpose: ``wandb sync`` uploads the fragments of one run in
    the order of their FIRST Run record's start time (wandb-core ``runsync``; tracelet's own
    :func:`.txlog.find_fragments` reads the same), and a later Run record is an update of the
    run. So every fragment says the same start, and the upload order is untouched."""
    interface = getattr(r, "_interface", None)
    if not hasattr(r, "_start_time") or not hasattr(interface, "publish_run"):
        return  # another wandb: the start stays in the environment record (wandb-metadata.json)
    r._start_time = started
    interface.publish_run(r)


def _announce(root: str) -> None:
    with _LOCK:
        if root in _ANNOUNCED:
            return
        _ANNOUNCED.add(root)
    print(upload_hint(root), file=sys.stderr, flush=True)


def _retire_attempt(handle: RunHandle, key: tuple) -> None:
    """Before a send other than a retry of the last one: if the last one failed part-way (the
    engine then resends parts of it to isolate a refused record), the rows it logged are in
    this sync's fragment, which ``_landed`` does not read: remember them for the dedupe."""
    attempt = handle.extra.get("attempt")
    if attempt and attempt["key"] != key:
        handle.extra.setdefault("logged", []).extend(attempt["srcs"])
        handle.extra["attempt"] = None


def _histogram(h) -> Any:
    import wandb

    return wandb.Histogram(np_histogram=histogram_buckets(h))


def _image(im, tmp: Path, name: str) -> Any:
    """``wandb.Image`` of an image :func:`tracelet.media.image_problem` passed: PNG/JPEG/GIF
    from the writer's bytes unchanged, other formats decoded with Pillow."""
    import wandb

    fmt = im.format
    if fmt in ("png", "jpeg", "gif"):
        path = tmp / f"{name}.{'jpg' if fmt == 'jpeg' else fmt}"
        path.write_bytes(im.encoded)  # the writer's bytes, unchanged
        return wandb.Image(str(path))
    from PIL import Image

    return wandb.Image(Image.open(io.BytesIO(im.encoded)))


def _audio(a, tmp: Path, name: str) -> Any:
    import wandb

    path = tmp / f"{name}.{a.format if a.format != 'bin' else 'wav'}"
    path.write_bytes(a.encoded)  # the writer's clip, unchanged
    return wandb.Audio(str(path), sample_rate=int(a.sample_rate) or None, caption=a.label or None)


def _html(t) -> Any:
    import wandb

    return wandb.Html(f"<pre>{html.escape(t.text)}</pre>", inject=False, data_is_not_path=True)
