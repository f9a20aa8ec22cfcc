"""Aim destination: a local Aim repo (default ``./.aim``, created as ``aim init`` would, but
crash-safely and one sync at a time: ``repo.py``) or a remote Aim server
(``--aim-repo aim://host:53800``).

Modules: ``client.py`` (this: the :class:`AimDestination` and Aim SDK glue), ``mapping.py``
(names, hashes, bins: no Aim import), ``storage.py`` (the write batches, the landed record, the
index), ``repo.py`` (the repo folder).

Identity: experiment = project; run name = the run's name (``RunRef.name``);
``run["tracelet"] = {"run_id", "run_path"}`` (plus ``status`` and the manifest ``tags`` when
known). The Aim run hash is derived from (project, run_id) (:func:`.mapping.aim_run_hash`), so the same
Aim run is found again in O(1) even with a lost state dir, and a sync killed between creating the
run and committing its checkpoint leaves no orphan run behind. Runs made some other way are found
by scanning Aim's index for ``run["tracelet"]["run_id"]``. A plain run also carries its source id
(``run["tracelet"]["source_id"]``, :mod:`tracelet.identity`): on its first sync under a name no
run has, the same files synced before from another LOGDIR level are found by it in that index
scan (:meth:`AimDestination._find_by_source`) and continued, keeping their identity, name and
experiment.

Mapping:

==================  =========================================================================
TensorBoard kind    Aim form
==================  =========================================================================
scalar              metric sequence ``<tag>`` (context ``{}``), step as written, the event's
                    wall time as the point's time (Aim's ``time`` column: ``Run.track`` stamps
                    "now", so tracelet calls ``RunTracker._track(value, wall_time, ...)``, the
                    method ``Run.track`` ends in); NaN/±Inf kept
  ... same step     Aim keeps ONE value per (name, context, step): a second, different point
  seen again        at a step already taken (a restarted training) goes to context
                    ``{"tracelet_repeat": 1}`` (then 2, ...) of the same metric name, so every
                    source point stays visible in Aim (the UI draws it as a second line)
histogram           ``aim.Distribution`` sequence ``<tag>``: equal-width buckets are kept
                    exactly; other bucketings (TF1/PyTorch exponential buckets) are re-binned
                    onto at most 512 equal-width bins over [min, max] (mass kept)
image               ``aim.Image`` list sequence ``<tag>``: the writer's encoded bytes unchanged
                    (PNG/JPEG/GIF), all images of one event in one step; an image Pillow
                    cannot decode (truncated, bad CRC, over Pillow's pixel limit) is left out
                    and quarantined (``tracelet.media``)
text                ``aim.Text`` sequence ``<tag>``
audio               ``aim.Audio`` list sequence ``<tag>``: the writer's clip bytes unchanged
                    (format from the bytes: wav/mp3/flac), caption = the TF2 label or the tag
hparams, params     ``run["hparams"]``, nested on ``/`` (``model/depth`` → hparams.model.depth);
                    Aim params are mutable: a changed value replaces the old one
system metrics      Aim's own system metrics where one has the same meaning, so Aim's UI shows
                    them in the run's System tab: ``process/cpu_percent`` → ``__system__cpu``,
                    ``memory/utilization_percent`` → ``__system__memory_percent``,
                    ``gpu/<i>/utilization_percent|temperature_c|power_watts`` →
                    ``__system__gpu|gpu_temp|gpu_power_watts`` with context ``{"gpu": i}``;
                    every other sidecar name as metric ``system/<name>``. Step = sample index
                    (as Aim's resource tracker counts), time = sample time
artifacts/          ``run.log_artifact`` into ``<artifacts uri>/<run hash>/<relative path>``;
                    uri = config ``aim_artifacts_uri`` / ``TRACELET_AIM_ARTIFACTS_URI``, default
                    ``file://<repo>/.aim/artifacts`` (a remote repo needs the option, else
                    artifacts are counted unsupported)
status              Aim only knows active/finished: ``running`` → active (no end time);
                    ``finished|failed|killed`` → end time = the manifest's ``ended_at``; the
                    exact status in ``run["tracelet"]["status"]``. No manifest status: the run
                    is closed like any Aim run (end time = end of the sync)
manifest git, env,  ``run["__system_params"]`` in Aim's own shape (``Run(log_system_params=
system, command,    True)``: ``git_info``, ``packages``, ``executable``, ``arguments``; no
user                ``env_variables``), plus ``hostname``, ``user``, ``python``, ``platform``
                    (:func:`.mapping.system_params`); creation time = ``started_at``
repro files         ``tracelet/tracelet.json``, ``tracelet/requirements.txt`` as run artifacts,
                    uploaded at close when their bytes changed (SHA-1 in meta
                    ``__tracelet_repro``); without artifact storage the manifest goes to
                    ``run["tracelet"]["manifest"]`` (:func:`.mapping.manifest_record`)
==================  =========================================================================

Drift (``RunHandle.drift``, :meth:`AimDestination.check_run`): the checkpoint's identity holds
the run hash, the repo's token (:func:`.repo.repo_token`, local only), the run's token
(meta ``__tracelet_incarnation``) and the landed record's total after the last send
(``landed``). A run hash the repo lacks is "run missing on aim" (repo removed: the repo token
differs; else run deleted); a run there with another token is "run replaced on aim"; a landed
record below the checkpoint's total is "run missing on aim: points gone" (restored from a copy).
Either way the run is found again or created at the same hash and the engine re-sends it whole
with dedupe.

Tag names are kept unchanged (Aim accepts any string); only an empty tag becomes ``_-<hash>``
(:func:`.mapping.aim_key`).

Configuration: ``--aim-repo`` (config ``aim_repo``), else ``AIM_REPO``, else the working folder;
``aim_artifacts_uri`` / ``TRACELET_AIM_ARTIFACTS_URI``; ``aim_index`` / ``TRACELET_AIM_INDEX``;
``TRACELET_AIM_REMOTE_TIMEOUT_S``. Viewing: ``aim up --repo <repo>``; a remote target is served
by ``aim server --repo <repo>`` and viewed with ``aim up`` on that repo.

Exactly once: a local send is ONE RocksDB write batch per Aim container (series first, then
meta), written with ``sync=True``: a kill -9 leaves a send fully landed or absent in each. Each
batch also records, in both containers, how far into its source file (or which sidecar part) Aim
now holds (``meta/chunks/<run>/__tracelet_landed``, not a param). That record, not the
checkpoint, decides: a re-sent range the meta record covers is skipped whole (after a kill, after
a lost state dir); a range past the series record never landed and is written plainly; only a
range between the two (a kill between the two containers' writes), a file with no record yet
that the checkpoint marks as maybe sent, or a remote/unbatched send that broke off is matched
point by point against what Aim holds at (name, context, step): the same value and time means
"already there". What is skipped either way is returned as ``SendResult.present`` (the report's
"confirmed N already present"). Slots filled or matched by this sync are remembered
(claims), so two identical source points of one sync never collapse into one slot; in the
point-by-point case only, a copy sent by an earlier sync that is identical in tag, step, value
and wall time can be taken for the one being re-sent.

Speed: float metrics past a sequence's last step (the usual case) skip Aim's per-point Python
(``RunTracker._track``): the same four records Aim would write are encoded with Aim's own
encoder into the send's write batch, and the sequence's meta (last, max, min) once per send.
Anything else (new sequences, repeated steps, objects, remote repos) goes through ``_track``.

Visibility: Aim 3.x lists runs (``Repo.iter_runs``, queries) from its index
(``.aim/meta/index``), which ``aim up`` refreshes by itself (outdated runs on start, changed ones
while it runs); Aim's own ``Run.close()`` does not. Tracelet indexes its run with Aim's
``RepoIndexManager.index`` when it creates it, after a call that adds sequences/params/artifacts
/status, and when it closes it, so SDK queries see synced runs without ``aim up``, also after a
kill -9. ``aim_index: false`` / ``TRACELET_AIM_INDEX=0`` leaves indexing to ``aim up`` alone:
worth it when ``aim up`` runs during syncs, since a collision on the index DB's lock makes
``aim up``'s indexing thread exit (an Aim bug: ``index()`` opens the DB outside its try).

Locks: Aim's soft lock of a run left by a killed sync on this host is released by Aim itself; one
left on another host needs ``aim runs --repo R close --force <hash>`` (the error says so).

Remote (``aim://``): the same calls go through Aim's RPC client; a send waits until Aim's client
queue has delivered its writes (``TRACELET_AIM_REMOTE_TIMEOUT_S``, default 120 s). Aim's client
retries a vanished server forever; the wait turns that into a transient error. Sends are not
atomic there (the landed record follows the points). Indexing is left to ``aim up`` on the
server's repo. Whether the server has a run is asked of its run listing, which it answers from
a copy kept 0.5 s (:class:`.storage.RemoteRunListing`: "no" is asked again once that copy is
newer than this destination).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import io
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

from ...errors import DestinationError, TraceletError, TransientDestinationError
from ...faults import crash_point
from ...identity import same_source_names
from ...media import image_problem
from ...params import flatten_params, param_text
from ...reader.points import AUDIO, HISTOGRAM, IMAGE, SCALAR, TEXT, AudioPoint, Batch, ImagePoint
from ...redact import scrubbed_logger
from ..base import (CHECK_ONLY, Capabilities, Destination, ParamsResult, Rejected, RunHandle, RunRef,
                    SendResult, SystemRows, chain, classify_error, http_status)
from .mapping import (aim_end_time, aim_key, aim_run_hash, creation_time, distribution_bins,
                      manifest_record, media_groups, nest_params, system_params,
                      system_part_key, system_samples, tracelet_record)
from .repo import aim_repo_root, ensure_local_repo, open_local_repo, repo_name, repo_token
from .storage import (_AIM_LOCK, INCARNATION_KEY, REPRO_KEY, RemoteRunListing, RunIndex,
                      _AimRun, forget_run_listing, landed_total, read_landed)

log = scrubbed_logger("tracelet.aim")  # log lines never show a credential
AIM_HASH = re.compile(r"[0-9a-f]{24}")  # aim.sdk.base_run.generate_run_hash: uuid4().hex[:24]
SYSTEM_PARAMS = "__system_params"  # Aim's own key (aim.sdk.run.Run, log_system_params=True)


class AimDestination(Destination):
    name = "aim"
    capabilities = Capabilities(
        kinds=frozenset({SCALAR, HISTOGRAM, IMAGE, TEXT, AUDIO}),
    )

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__(config)
        from aim import Repo

        self.root = aim_repo_root(self.config)
        self.remote = self.root.startswith("aim://")
        self.repo = None
        if self.config.get(CHECK_ONLY) and not self.remote and not os.path.isdir(self._where()):
            return  # status --check of a removed repo: check_run says so, nothing is made
        try:
            with _AIM_LOCK:
                if self.remote:
                    self.repo = Repo.from_path(self.root)
                else:
                    # what `aim init` makes, crash-safe and one sync at a time (repo.py)
                    ensure_local_repo(self.root)
                    self.repo = open_local_repo(self.root)
        except TraceletError:
            raise  # says what is wrong and what to do already
        except Exception as e:
            hint = ("is `aim server` running there?" if self.remote else
                    "is it writable, and an Aim repo of a compatible version?")
            raise DestinationError(f"aim: cannot open repo {self.root}: {type(e).__name__}: {e} "
                                   f"({hint}; set it with --aim-repo)") from e
        uri = self.config.get("aim_artifacts_uri") or os.environ.get("TRACELET_AIM_ARTIFACTS_URI")
        if not uri and not self.remote:
            uri = Path(self.repo.path, "artifacts").as_uri()
        self.artifacts_uri = uri or None
        if self.artifacts_uri is None:
            self.capabilities = dataclasses.replace(self.capabilities, artifacts=False)
        self._index_ids: dict[str, list[str]] | None = None
        self._index_sources: dict[str, list[tuple[str, str]]] = {}
        index = self.config.get("aim_index", os.environ.get("TRACELET_AIM_INDEX", "1"))
        self.index_runs = not self.remote and str(index).lower() not in ("0", "false", "no", "off")
        self._indexer: RunIndex | None = RunIndex(self.repo, self.classify) if self.index_runs else None
        self.repo_token = None if self.remote else repo_token(self.repo.path)
        self._remote_runs = RemoteRunListing(self.repo) if self.remote else None

    @property
    def target(self) -> str:
        return self.root

    def metric_key(self, tag: str) -> str:
        return aim_key(tag)

    def classify(self, exc: BaseException) -> type[DestinationError]:
        """Aim's own failures by their classes (the rest: :func:`classify_error`, which also
        finds the ``requests.ConnectionError`` behind Aim's "Failed to connect to Aim Server"
        ``RuntimeError``, raised inside its ``except``)."""
        LockTimeout, RocksIOError, Corruption, ConnectionClosed, WebSocketException = _error_types()
        for e in chain(exc):
            if isinstance(e, LockTimeout) or _relayed_lock_timeout(e):
                return TransientDestinationError  # another process holds the run; it may finish
            if isinstance(e, RocksIOError):
                # aimrocks gives every RocksDB IOError status this one class, without its
                # subcode: a DB lock held by another process (`aim up` indexing, a writer that
                # ignores Aim's run lock) as well as a full disk. Retried: a lock is released
                # in seconds; anything else still fails after the retries, as the destination.
                return TransientDestinationError
            if isinstance(e, Corruption):
                return DestinationError  # the repo's storage is damaged, not this content
            if isinstance(e, ConnectionClosed):
                return TransientDestinationError  # the server went away mid-write
            if isinstance(e, WebSocketException) and http_status(e) is None:
                return TransientDestinationError  # handshake/transport failure, no HTTP reply
        return classify_error(exc)

    # -- identity ----------------------------------------------------------------------------
    def _run_exists(self, run_hash: str) -> bool:
        if not self.remote:
            return os.path.isdir(os.path.join(self.repo.path, "meta", "chunks", run_hash))
        return run_hash in self._remote_runs

    def _scan_index(self) -> dict[str, list[str]]:
        """Run id -> hashes of the runs in Aim's index, and (``self._index_sources``) source id
        -> (hash, run path) of plain runs: one read of the index per sync, only for a run's
        first sync or a lost state dir (never on the no-op path). Local and remote alike
        (``Repo.request_tree``: a proxy tree over RPC)."""
        if self._index_ids is None:
            self._index_ids, self._index_sources = {}, {}
            try:
                chunks = self.repo.request_tree("meta", read_only=True,
                                                skip_read_optimization=True).subtree(("meta", "chunks"))
                for h in chunks.keys():
                    rec = chunks.get((h, "attrs", "tracelet"))
                    if not isinstance(rec, dict):
                        continue
                    rid, sid, path = rec.get("run_id"), rec.get("source_id"), rec.get("run_path")
                    if isinstance(rid, str):
                        self._index_ids.setdefault(rid, []).append(h)
                    if isinstance(sid, str) and sid and isinstance(path, str):
                        self._index_sources.setdefault(sid, []).append((h, path))
            except Exception as e:  # an empty repo has no index yet
                log.debug("aim: index scan: %s", e)
        return self._index_ids

    def _find_by_run_id(self, run: RunRef) -> str | None:
        """A run carrying ``run["tracelet"]["run_id"]`` made without our hash (older syncs,
        another tool): looked up in Aim's index once per sync, matched on the experiment."""
        for h in sorted(self._scan_index().get(run.run_id, [])):
            if not self._run_exists(h):
                continue
            try:
                props = self.repo.request_props(h, read_only=True)
                if props.experiment == run.project:
                    return h
            except Exception as e:
                log.debug("aim: run %s props: %s", h, e)
        return None

    # -- the same files synced from another LOGDIR level (tracelet.identity) --------------------
    def _find_by_source(self, run: RunRef) -> tuple[str, str] | None:
        """The run created for the same plain-run files under another run path or experiment
        (``tracelet sync sub`` then ``sub/exp``), and where it is: found by
        ``run["tracelet"]["source_id"]`` in Aim's index, in every experiment
        (``run.source_anywhere``: the project was not given) or in this run's, taken only if its
        run path and this one are two levels of one path. Asked only when no run has this run's
        hash or run id (a run's first sync or a lost state dir)."""
        if not run.source_id:
            return None
        self._scan_index()
        for h, path in sorted(self._index_sources.get(run.source_id, [])):
            if not same_source_names(path, run.run_path) or not self._run_exists(h):
                continue
            try:
                exp = self.repo.request_props(h, read_only=True).experiment
            except Exception as e:
                log.debug("aim: run %s props: %s", h, e)
                continue
            if run.source_anywhere or exp == run.project:
                return h, f"'{path}' in experiment '{exp}'"
        return None

    def _same_source(self, run_hash: str, run: RunRef) -> bool:
        """Whether the run at ``run_hash`` (one the checkpoint names) is this plain run reached
        under another name: its own ``run["tracelet"]`` has this source id and a run path that is
        another level of this one. One read of that run's meta (local or over RPC)."""
        if not run.source_id or not self._run_exists(run_hash):  # a read would create it
            return False
        try:
            tree = self.repo.request_tree("meta", run_hash, read_only=True,
                                          skip_read_optimization=True)
            rec = tree.subtree(("meta", "chunks", run_hash, "attrs")).get("tracelet")
        except Exception as e:  # a run the repo lacks, or cannot read: not ours by source
            log.debug("aim: run %s tracelet record: %s", run_hash, e)
            return False
        return isinstance(rec, dict) and rec.get("source_id") == run.source_id \
            and isinstance(rec.get("run_path"), str) \
            and same_source_names(rec["run_path"], run.run_path)

    def open_run(self, run: RunRef, identity: dict[str, Any] | None) -> RunHandle:
        with _AIM_LOCK:
            run_hash, ignored, drift = (identity or {}).get("run_hash"), False, None
            same_source = None  # where the run was found by source id (tracelet.identity)
            if run_hash and run_hash != aim_run_hash(run.project, run.run_id) \
                    and not (isinstance(run_hash, str) and AIM_HASH.fullmatch(run_hash)
                             and self._same_source(run_hash, run)) \
                    and run_hash != self._find_by_run_id(run):
                # a hash not derived from this run, not this plain run's under another name and
                # no run carrying its run id there: a run of this one deleted since (drift,
                # below), or another run's (a crafted checkpoint: ignored)
                if not (isinstance(run_hash, str) and AIM_HASH.fullmatch(run_hash)) \
                        or self._run_exists(run_hash):
                    run_hash, ignored = None, True
            if run_hash and self._run_exists(run_hash):
                existed = True
            else:
                if run_hash:  # the checkpoint's run is gone: deleted, or the repo removed
                    drift = self._lost(run, run_hash, self._repo_replaced(identity))
                run_hash = aim_run_hash(run.project, run.run_id)
                existed = self._run_exists(run_hash)
                if not existed:
                    found = self._find_by_run_id(run)
                    if found:
                        run_hash, existed = found, True
                    elif (same := self._find_by_source(run)) is not None:
                        (run_hash, same_source), existed = same, True
            aim_run, changed = self._open(run, run_hash, existed)
            incarnation = self._incarnation(aim_run)
        known = (identity or {}).get("incarnation") if not (ignored or drift) else None
        if isinstance(known, str) and known != incarnation:
            drift = self._replaced(run, aim_run.hash)
        st = _AimRun(aim_run, run.source_dir)
        if not (ignored or drift):
            drift = self._points_gone(run, aim_run.hash, st.landed_total(),
                                      (identity or {}).get("landed"))
        # status/end time describe the run the checkpoint knew: not a run made anew
        keep = {k: v for k, v in (identity or {}).items() if k in ("status", "end_time")
                and not (ignored or drift)}
        self._index_if(st, changed or not existed)  # listed at once, even if killed later
        crash_point("aim_run_open")  # 4: indexed
        ident = {"run_hash": aim_run.hash, "incarnation": incarnation, **keep,
                 "landed": st.landed_total()}
        if self.repo_token:
            ident["repo"] = self.repo_token
        handle = RunHandle(identity=ident, existed=existed, client=st, identity_ignored=ignored,
                           drift=drift, same_source=same_source)
        handle.extra["repro_files"] = dict(run.repro_files)
        return handle

    # -- drift ----------------------------------------------------------------------------------
    def _where(self) -> str:
        return self.root if self.remote else os.path.join(self.root, repo_name())

    def _repo_replaced(self, identity: dict[str, Any] | None) -> bool:
        """The checkpoint was written to another repo at this path (one removed since)."""
        known = (identity or {}).get("repo")
        return isinstance(known, str) and bool(self.repo_token) and known != self.repo_token

    def _lost(self, run: RunRef, run_hash: str, repo_made_anew: bool = False) -> str:
        """The drift line for a run the checkpoint names that the repo no longer has."""
        if not self.remote and not os.path.isdir(self._where()):
            return (f"run missing on aim: repo removed: {self._where()} does not exist; the next sync "
                    f"makes it anew and sends run '{run.run_path}' again")
        if repo_made_anew:
            return (f"run missing on aim: repo removed: {self._where()} is not the repo of the last "
                    f"sync (removed and made anew); run {run_hash} ('{run.run_path}') is not in "
                    "it")
        return (f"run missing on aim: run deleted: run {run_hash} ('{run.run_path}') is no longer in "
                f"the Aim repo {self._where()} (removed with `aim runs rm`, in Aim's UI or with "
                "Repo.delete_run; or the repo was removed)")

    def _points_gone(self, run: RunRef, run_hash: str, have: int, known: Any) -> str | None:
        """Drift when the run's landed record covers less than the checkpoint saw after its
        last send (``identity["landed"]``: the record's total of source bytes and sidecar
        parts, which only grows): a repo restored from an older copy keeps the run and its
        token but not what was sent since; its points would never be sent again."""
        if not (isinstance(known, int) and not isinstance(known, bool)) or have >= known:
            return None
        return (f"run missing on aim: points gone: run {run_hash} ('{run.run_path}') in the Aim "
                f"repo {self._where()} holds less than the last sync sent ({have} of {known} "
                "source bytes and parts recorded; the repo restored from an older copy?)")

    def _replaced(self, run: RunRef, run_hash: str) -> str:
        return (f"run replaced on aim: run {run_hash} ('{run.run_path}') in the Aim repo {self._where()} "
                "is not the run this checkpoint wrote to (deleted and made again, e.g. by a "
                "sync with another state dir)")

    @staticmethod
    def _incarnation(aim_run: Any) -> str:
        """The run's token (:data:`.storage.INCARNATION_KEY`); written when it has none (a run
        made now, or by an older Tracelet or another tool)."""
        tree = aim_run.meta_run_tree
        token = tree.get(INCARNATION_KEY)
        if not isinstance(token, str) or not token:
            token = uuid.uuid4().hex[:16]
            tree[INCARNATION_KEY] = token
        return token

    def check_run(self, run: RunRef, identity: dict[str, Any] | None) -> str | None:
        """None if the run ``identity`` names is in the repo as the checkpoint knew it, else the
        drift line :meth:`open_run` would give. Local: a ``stat`` of the run's folder and one
        read of its meta DB; remote: Aim's run listing and one read. Creates nothing."""
        run_hash = (identity or {}).get("run_hash")
        if not isinstance(run_hash, str) or not run_hash:
            run_hash = aim_run_hash(run.project, run.run_id)
        if self.repo is None:  # made for a check, the repo is gone (__init__)
            return self._lost(run, run_hash)
        try:
            with _AIM_LOCK:
                if not self._run_exists(run_hash):
                    return self._lost(run, run_hash, self._repo_replaced(identity))
                known = (identity or {}).get("incarnation")
                if not isinstance(known, str):
                    return None  # a checkpoint from before the token: nothing to compare
                tree = self.repo.request_tree("meta", run_hash, read_only=True,
                                              skip_read_optimization=True)
                meta = tree.subtree(("meta", "chunks", run_hash))
                if meta.get(INCARNATION_KEY) != known:
                    return self._replaced(run, run_hash)
                landed = read_landed(meta)
        except Exception as e:  # the repo itself cannot be read: say so, never raise here
            return f"cannot check: {self._where()}: {type(e).__name__}: {e}"
        return self._points_gone(run, run_hash, landed_total(landed),
                                 (identity or {}).get("landed"))

    def _open(self, run: RunRef, run_hash: str, existed: bool) -> tuple[Any, bool]:
        """The Aim run, and whether what Aim's index holds about it changed."""
        from aim import Run

        kw = dict(repo=self.repo, experiment=run.project, system_tracking_interval=None,
                  log_system_params=False, capture_terminal_logs=False)
        try:
            if existed:
                forget_run_listing()  # Aim checks the run exists in a listing cached 0.5 s
                # no experiment given: Aim would move the run into it, and a run adopted by
                # source id stays in the experiment it was created in (set below otherwise)
                aim_run = Run(run_hash, **{**kw, "experiment": None})
            else:
                self._create_props(run_hash, run)
                crash_point("aim_run_open")  # 1: Aim's run record (sqlite) only
                aim_run = _create_run_with_hash(Run, run_hash, kw)
                crash_point("aim_run_open")  # 2: the run's containers, no identity yet
        except Exception as e:
            from filelock import Timeout as LockTimeout

            if isinstance(e, LockTimeout):  # the run's lock is held
                raise TransientDestinationError(
                    f"aim: run {run_hash} of '{run.run_path}' is locked by another process "
                    f"({self.repo.path}/locks). If none is using it (a sync killed on another "
                    f"host), release it: aim runs --repo {self.root} close --force {run_hash}"
                ) from e
            raise
        changed = False
        tracelet = aim_run.get("tracelet") or {}
        run_id, run_path = run.run_id, run.run_path
        if _adopted(tracelet, run):
            # the same files under another name (found by source id): the run keeps the
            # identity, name and experiment it was created with, so that it is found again the
            # same way from either LOGDIR level
            run_id, run_path = tracelet["run_id"], tracelet["run_path"]
        else:
            if existed and aim_run.experiment != run.project:
                aim_run.experiment = run.project
            if aim_run.name != run.name:
                aim_run.name = run.name
                changed = True
        # no artifact storage: the manifest goes into the run's dict instead (README)
        manifest = None if self.artifacts_uri else _manifest_of(run)
        want = tracelet_record(tracelet, run_id, run_path, run.tags, manifest, run.source_id)
        if want != tracelet:
            aim_run["tracelet"] = want
            changed = True
        params = system_params(run.git, run.env, run.system, run.command, run.user)
        if params and aim_run.get(SYSTEM_PARAMS) != params:
            aim_run[SYSTEM_PARAMS] = params  # Aim's run page: packages, git, CLI arguments
            changed = True
        if self.artifacts_uri and aim_run.artifacts_uri is None:
            aim_run.set_artifacts_uri(self.artifacts_uri)
        crash_point("aim_run_open")  # 3: identity set, not indexed yet
        return aim_run, changed

    def _create_props(self, run_hash: str, run: RunRef) -> None:
        """Aim's run record (sqlite) with the creation time = the manifest's ``started_at``."""
        created = creation_time(run.started_at)
        if created is None:
            return  # unknown (or past year 9999): Aim uses the sync time
        try:
            if self.remote:
                self.repo.request_props(run_hash, False, created)
            else:
                with self.repo._sdb_lock:
                    if not self.repo.structured_db.find_run(run_hash):
                        self.repo.structured_db.create_run(run_hash, created)
        except Exception as e:  # a cosmetic: Aim then uses the sync time
            log.debug("aim: creation time of %s: %s", run_hash, e)

    # -- points ------------------------------------------------------------------------------
    def send(self, handle: RunHandle, batch: Batch, *, dedupe: bool) -> SendResult:
        """Store the batch's points; ``present``: those the run already held (skipped)."""
        st: _AimRun = handle.client
        source = st.source_key(batch.path)
        # aim.Image is built from a Pillow decode: an image Pillow cannot take (truncated, bad
        # CRC, a header declaring 2^30 x 2^30 pixels) is left out and quarantined by the engine
        rejected = [Rejected(IMAGE, j, why) for j, im in enumerate(batch.images)
                    if (why := image_problem(im.encoded, decode=True))]
        if batch.end_offset <= st.landed_meta.get(source, 0):
            # Aim's own record: this range landed (a kill after the send, a lost state dir)
            return SendResult(rejected, present=len(batch.scalars) + len(batch.histograms)
                              + len(batch.images) - len(rejected) + len(batch.texts)
                              + len(batch.audio))
        if st.atomic and source in st.landed_series:
            # Aim's record is the truth, whatever the checkpoint says: points past the series
            # record never landed; points before it landed, their meta maybe not (a kill between
            # the two containers' writes): matched one by one, which also rewrites that meta.
            dedupe = batch.start_offset < st.landed_series[source]
        elif st.atomic:
            dedupe = dedupe or st.dirty  # no record of this file: the checkpoint's word
        else:
            dedupe = dedupe or st.dirty or batch.start_offset < st.landed_meta.get(source, 0)
        refused = {r.index for r in rejected}
        sequences = len(st.tracker.sequence_infos)
        present = 0  # points matched to what the run holds: not stored again
        with st.writes():
            st.mark_landed(source, batch.end_offset)
            cols = batch.scalars
            if len(cols):
                names: dict[str, str] = {}
                put = st.put
                for tag, step, wall, value in zip(cols.tags, cols.steps, cols.wall_times, cols.values):
                    name = names.get(tag)
                    if name is None:
                        name = names[tag] = self.metric_key(tag)
                    present += put(name, step, wall, value, dedupe)
            if batch.histograms:
                from aim import Distribution

                for h in batch.histograms:
                    weights, bin_range = distribution_bins(h)
                    present += st.put(self.metric_key(h.tag), h.step, h.wall_time,
                                      Distribution(hist=weights, bin_range=bin_range), dedupe)
            # images / audio clips of one event: one list-valued point, in tensor order
            for media, make, skip in ((batch.images, _aim_image, refused),
                                      (batch.audio, _aim_audio, ())):
                for (tag, step, wall), points in media_groups(media, skip):
                    if st.put(self.metric_key(tag), step, wall, [make(p) for p in points], dedupe):
                        present += len(points)
            if batch.texts:
                from aim import Text

                for t in batch.texts:
                    present += st.put(self.metric_key(t.tag), t.step, t.wall_time, Text(t.text),
                                      dedupe)
        st.dirty = False
        handle.identity["landed"] = st.landed_total()  # committed with this batch (drift)
        self._index_if(st, len(st.tracker.sequence_infos) != sequences)
        return SendResult(rejected, present=present)

    def send_system(self, handle: RunHandle, rows: SystemRows, run: RunRef, *,
                    dedupe: bool) -> SendResult:
        """Store a sidecar part's samples; ``present``: those the run already held."""
        st: _AimRun = handle.client
        part = system_part_key(rows)
        if st.landed_meta.get(part):
            # this part landed (Aim's own record): every sample it stores is there
            return SendResult(present=sum(1 for _ in system_samples(rows)))
        dedupe = bool(st.landed_series.get(part)) if st.atomic else (dedupe or st.dirty)
        sequences = len(st.tracker.sequence_infos)
        present = 0
        with st.writes():
            st.mark_landed(part, 1)
            for name, context, ts, value in system_samples(rows):
                present += st.put_system(name, context, ts, value, dedupe=dedupe)
        st.dirty = False
        handle.identity["landed"] = st.landed_total()
        self._index_if(st, len(st.tracker.sequence_infos) != sequences)
        return SendResult(present=present)

    # -- params, artifacts, status -------------------------------------------------------------
    def log_params(self, handle: RunHandle, params: Mapping[str, Any]) -> ParamsResult:
        aim_run = handle.client.run
        current = aim_run.get("hparams") or {}
        flat = flatten_params(current) if isinstance(current, dict) else {}
        # the run's params (run["hparams"]) that already hold the same value are present
        present = [k for k, v in params.items()
                   if k in flat and param_text(flat[k]) == param_text(v)]
        flat.update(params)
        nested = nest_params(flat)
        if nested != current:
            aim_run["hparams"] = nested
            self._index_if(handle.client, True)
        return ParamsResult(present=present)  # Aim params are mutable: nothing is refused

    def log_artifacts(self, handle: RunHandle, files: list[tuple[Path, str]]) -> None:
        aim_run = handle.client.run
        for path, rel in files:
            aim_run.log_artifact(str(path), name=rel, block=True)
        self._index_if(handle.client, bool(files))

    def finish(self, handle: RunHandle, status: str, ended_at: float | None) -> None:
        aim_run = handle.client.run
        end = aim_end_time(status, ended_at, time.time())
        aim_run.meta_run_tree["end_time"] = end
        tracelet = dict(aim_run.get("tracelet") or {})
        if tracelet.get("status") != status:
            tracelet["status"] = status
            aim_run["tracelet"] = tracelet
        handle.identity["status"] = status
        handle.identity["end_time"] = end
        self._index_if(handle.client, True)

    def close_run(self, handle: RunHandle) -> None:
        st: _AimRun | None = handle.client
        if st is None:
            return
        aim_run = st.run
        handle.client = None
        try:
            if self.artifacts_uri:
                self._store_repro_files(aim_run, handle.extra.get("repro_files") or {})
        finally:  # the run is closed (its lock released) whatever the upload did
            self._close_aim_run(handle, st)

    @staticmethod
    def _store_repro_files(aim_run: Any, files: Mapping[str, Path]) -> None:
        """``tracelet/tracelet.json`` and ``tracelet/requirements.txt`` as run artifacts (Aim's
        Artifacts tab), uploaded again only when their bytes changed (their SHA-1 is kept in
        the run's meta, :data:`.storage.REPRO_KEY`)."""
        tree = aim_run.meta_run_tree
        done = tree.get(REPRO_KEY) or {}
        for name, path in sorted(files.items()):
            digest = hashlib.sha1(Path(path).read_bytes()).hexdigest()
            if isinstance(done, dict) and done.get(name) == digest:
                continue
            aim_run.log_artifact(str(path), name=name, block=True)
            tree[REPRO_KEY, name] = digest

    def _close_aim_run(self, handle: RunHandle, st: _AimRun) -> None:
        aim_run = st.run
        with _AIM_LOCK:
            if "end_time" in handle.identity:
                # Aim's close stamps "now" as the end; keep the run's own end (or none: active).
                end = handle.identity["end_time"]
                res = getattr(aim_run, "_resources", None)
                if res is not None and hasattr(res, "set_run_end_time"):
                    res.set_run_end_time = lambda: res.meta_run_tree.__setitem__("end_time", end)
            run_hash = aim_run.hash
            aim_run.close()
            st.close_containers()
            if self.index_runs:
                self._index(run_hash)

    def _index_if(self, st: "_AimRun", changed: bool) -> None:
        """Index after a call that changed what Aim's index holds about the run (the run itself,
        its sequences, params, artifacts, status), not after every batch of points: points are
        read from the run's own storage. So a run is listed with all its sequences by
        ``Repo.iter_runs`` even if the sync is killed before it closes the run."""
        if changed and self.index_runs:
            self._index(st.run.hash)

    def _index(self, run_hash: str) -> None:
        """Refresh Aim's index for this run, as ``aim up`` does when a run changes."""
        if self._indexer is not None:
            self._indexer.index(run_hash)

    def close(self) -> None:
        # Drop Aim objects now: a remote repo's client releases its server-side resources when
        # collected, which must happen while the server is still reachable (else Aim's exit
        # handler retries the release forever). Aim's cached run listing holds the Repo too.
        self._index_ids = self._indexer = self._remote_runs = None
        if self.remote:
            forget_run_listing()
        self.repo = None


def _adopted(tracelet: Any, run: RunRef) -> bool:
    """Whether a run's ``run["tracelet"]`` names another tracelet run of the same source (this
    plain run synced before from another LOGDIR level, :mod:`tracelet.identity`)."""
    return isinstance(tracelet, dict) and bool(run.source_id) \
        and isinstance(tracelet.get("run_id"), str) and tracelet["run_id"] != run.run_id \
        and tracelet.get("source_id") == run.source_id \
        and isinstance(tracelet.get("run_path"), str) \
        and same_source_names(tracelet["run_path"], run.run_path)


def _manifest_of(run: RunRef) -> dict[str, Any] | None:
    """The redacted manifest the engine prepared (``tracelet/tracelet.json``), as kept in
    ``run["tracelet"]["manifest"]`` (:func:`.mapping.manifest_record`); None without one."""
    path = run.repro_files.get("tracelet/tracelet.json")
    if path is None:
        return None
    try:
        return manifest_record(json.loads(Path(path).read_bytes()))
    except (OSError, ValueError) as e:  # the engine's own file: not expected
        log.warning("aim: %s: %s; the manifest is not stored in run['tracelet']", path, e)
        return None


def _create_run_with_hash(run_cls: Any, run_hash: str, kw: dict) -> Any:
    """``aim.Run`` with a hash of our choosing: Aim draws a new hash from
    ``aim.sdk.base_run.generate_run_hash`` and offers no parameter for it."""
    try:
        import aim.sdk.base_run as base_run
    except ImportError:
        base_run = None
    if base_run is None or not hasattr(base_run, "generate_run_hash"):
        return run_cls(**kw)  # found again later through the index scan
    with _AIM_LOCK:
        original = base_run.generate_run_hash
        base_run.generate_run_hash = lambda *a, **k: run_hash
        try:
            aim_run = run_cls(**kw)
        finally:
            base_run.generate_run_hash = original
    if aim_run.hash != run_hash:
        log.warning("aim: run created as %s instead of %s", aim_run.hash, run_hash)
    return aim_run


def _aim_image(im: ImagePoint) -> Any:
    """``aim.Image`` holding the writer's encoded bytes unchanged (Aim would re-encode)."""
    from aim import Image
    from aim.storage.types import BLOB
    from PIL import Image as PILImage

    caption = im.tag if not im.index else f"{im.tag} #{im.index}"
    pil = PILImage.open(io.BytesIO(im.encoded))  # send() checked it decodes (media.py)
    pil.load()
    image = Image(pil, format="png", caption=caption)
    image.storage["data"] = BLOB(data=im.encoded)
    image.storage["format"] = im.format  # png | jpeg | gif | bin
    return image


def _aim_audio(a: AudioPoint) -> Any:
    """``aim.Audio`` holding the writer's clip bytes unchanged."""
    from aim import Audio

    caption = a.label or (a.tag if not a.index else f"{a.tag} #{a.index}")
    fmt = a.format if a.format in Audio.audio_formats else "wav"
    audio = Audio(a.encoded, format=fmt, caption=caption)
    audio.storage["format"] = a.format  # ogg/bin kept as what they are (Aim validates 3 names)
    return audio


@functools.lru_cache(maxsize=None)
def _error_types() -> tuple[Any, ...]:
    """The classes of Aim's dependencies that :meth:`AimDestination.classify` decides on
    (filelock, aimrocks, websockets: all required by Aim); one that is missing matches
    nothing."""
    def load(module: str, name: str) -> Any:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            return ()  # isinstance(e, ()) is False

    return (load("filelock", "Timeout"), load("aimrocks.errors", "RocksIOError"),
            load("aimrocks.errors", "Corruption"), load("websockets.exceptions", "ConnectionClosed"),
            load("websockets.exceptions", "WebSocketException"))


def _relayed_lock_timeout(e: BaseException) -> bool:
    """A bare ``Exception`` re-raised by Aim's RPC client for the server (its
    ``message_utils.raise_exception``): that is how a server-side ``filelock.Timeout`` (the run
    is locked there) comes back, as it cannot be rebuilt without its lock object. The only
    other bare ``Exception`` Aim's server side raises is aimrocks' "Unknown error" for a
    RocksDB status it has no class for (busy, timed out, try again): transient as well."""
    if type(e) is not Exception or e.__traceback__ is None:
        return False
    try:
        from aim.ext.transport.message_utils import raise_exception
    except ImportError:
        return False
    tb = e.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code is raise_exception.__code__


__all__ = ["AimDestination"]
