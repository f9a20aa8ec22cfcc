"""Aim storage internals the client drives: how a send is written into a run's RocksDB
containers, and the run index.

* :class:`_AimRun` — one open Aim run and what this sync sent to it: the slot of each point
  (:meth:`_AimRun.put`: first free context at a step, or the one already holding it), the
  landed record (:data:`LANDED_KEY`), the claims of this sync (:class:`_Claims`).
* :class:`_BatchedWrites` — every write of one send in ONE RocksDB write batch per container
  (series, then meta), written with ``sync=True``: a kill -9 leaves a send landed or absent.
* :class:`_DirectMetric` — float metrics past a sequence's last step skip Aim's per-point
  Python: the four records Aim writes, encoded with Aim's own encoder, put in the send's batch.
* :class:`RunIndex` — Aim's ``RepoIndexManager.index`` for one run (what ``aim up`` does when a
  run changes), retried shortly while ``aim up`` holds the index DB.
* container lookups (:func:`_full_prefix`, :func:`_root_container`), Aim's cached run listing
  (:func:`forget_run_listing`), a remote repo's run listing (:class:`RemoteRunListing`), its
  write queue (:func:`_drain_remote_queue`).

Everything here reaches into Aim 3.x internals (``RunTracker``, ``sequence_infos``, container
pools); each use checks the shape it relies on and falls back to Aim's public path when it
differs (slower, not less correct).
"""
from __future__ import annotations

import bisect
import math
import os
import threading
import time
from array import array
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from ...errors import DestinationError, TraceletError, TransientDestinationError
from ...redact import scrubbed_logger
from ...retry import call_with_retry
from ..base import typed_error
from .mapping import landed_source_key, repeat_context

log = scrubbed_logger("tracelet.aim")  # log lines never show a credential

# Run meta subtree (not params: Aim's UI does not show it): source file -> bytes of it in Aim,
# sidecar part digest -> 1. Written in the same write batch as the points it covers.
LANDED_KEY = "__tracelet_landed"
# Run meta (not params either): a random token written when Tracelet first opens the run and
# kept in the checkpoint's identity. A run at the same hash with another token (or none) is
# another run than the one the checkpoint describes: deleted and made again (drift).
INCARNATION_KEY = "__tracelet_incarnation"
# Run meta: reproducibility file name -> SHA-1 of the bytes last uploaded as its artifact.
REPRO_KEY = "__tracelet_repro"
# Aim's RPC client retries a vanished server forever; bound the wait for our writes to land.
REMOTE_WRITE_TIMEOUT_S = float(os.environ.get("TRACELET_AIM_REMOTE_TIMEOUT_S", "120"))
INDEX_LOCK_TRIES = 20  # `aim up` holds the index DB only while indexing one run: short waits
INDEX_LOCK_WAIT_S = 0.25

# Aim's Repo (and its sqlite "structured DB", its index) is one object per path per process and
# not thread-safe; worker threads serialise every call that touches it (sends excepted: each
# run has its own containers).
_AIM_LOCK = threading.RLock()


_NOT_COMPARED = object()  # objects (images...) are matched on their time only


def _same_float(a: Any, b: float) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


class _Claims:
    """Which slots (sequence, step) hold a point sent by THIS sync, so an identical second
    source point is never mistaken for the first one "already landed". Increasing steps are
    kept in compact sorted arrays (8 bytes a point); others in sets. Changes of a send in flight
    are pending and dropped if it fails."""

    def __init__(self) -> None:
        self.fast: dict[tuple[int, str], array] = {}
        self.other: dict[tuple[int, str], set[int]] = {}
        self._fast_marks: dict[tuple[int, str], int] = {}
        self._pending_other: list[tuple[tuple[int, str], int]] = []

    def add_increasing(self, key: tuple[int, str], step: int) -> None:
        arr = self.fast.get(key)
        if arr is None:
            arr = self.fast[key] = array("q")
        if key not in self._fast_marks:
            self._fast_marks[key] = len(arr)
        if arr and arr[-1] >= step:  # not increasing after all (a rebuilt tracker): keep exact
            self._pending_other.append((key, step))
            self.other.setdefault(key, set()).add(step)
            return
        arr.append(step)

    def add(self, key: tuple[int, str], step: int) -> None:
        self._pending_other.append((key, step))
        self.other.setdefault(key, set()).add(step)

    def __contains__(self, item: tuple[tuple[int, str], int]) -> bool:
        key, step = item
        s = self.other.get(key)
        if s is not None and step in s:
            return True
        arr = self.fast.get(key)
        if arr:
            i = bisect.bisect_left(arr, step)
            return i < len(arr) and arr[i] == step
        return False

    def commit(self) -> None:
        self._fast_marks.clear()
        self._pending_other.clear()

    def rollback(self) -> None:
        for key, n in self._fast_marks.items():
            del self.fast[key][n:]
        for key, step in self._pending_other:
            s = self.other.get(key)
            if s is not None:
                s.discard(step)
        self.commit()


class _BatchedWrites:
    """All writes to a run's Aim containers go into one RocksDB write batch per container,
    written at ``commit`` with ``sync=True``: one fsync'ed write per container and send instead
    of ~6 unsynced writes per point, and a kill -9 never leaves half a send. Aim's containers
    already take a ``store_batch`` on every write and call ``batch()``/``commit()`` around dict
    writes; the patch only makes our batch the default for the time of one send."""

    def __init__(self, containers: list[Any]):
        self.containers = containers  # series first: see commit
        self.batches: list[Any] = []

    def __enter__(self) -> "_BatchedWrites":
        for c in self.containers:
            b = c.batch()
            self.batches.append(b)
            self._patch(c, b, type(c))
        return self

    @staticmethod
    def _patch(c: Any, b: Any, cls: Any) -> None:
        # A caller's own store_batch (Aim's dict writes pass one) still wins.
        def set(key, value, store_batch=None):
            return cls.set(c, key, value, store_batch=b if store_batch is None else store_batch)

        def delete(key, store_batch=None):
            return cls.delete(c, key, store_batch=b if store_batch is None else store_batch)

        def delete_range(begin, end, store_batch=None):
            return cls.delete_range(c, begin, end, store_batch=b if store_batch is None else store_batch)

        c.set, c.delete, c.delete_range = set, delete, delete_range
        c.batch = lambda: b
        c.commit = lambda batch: None if batch is b else cls.commit(c, batch)

    def commit(self) -> None:
        # Series before meta: a kill between the two leaves series data that meta does not list
        # yet (invisible; re-sent after the crash and overwritten with the same values), never
        # meta listing series that are not there.
        for c, b in zip(self.containers, self.batches):
            c.db.write(b, sync=True)

    def __exit__(self, *exc) -> None:
        for c in self.containers:
            for attr in ("set", "delete", "delete_range", "batch", "commit"):
                c.__dict__.pop(attr, None)


def read_landed(tree: Any) -> dict[str, int]:
    """The landed record (:data:`LANDED_KEY`) under an Aim tree: {} when there is none yet or
    it is not a mapping."""
    try:
        got = tree.get(LANDED_KEY) or {}
    except Exception:  # nothing recorded yet
        got = {}
    return dict(got) if isinstance(got, dict) else {}


def landed_total(landed: Any) -> int:
    """The landed record's source bytes plus sidecar parts: it only grows as sends land (a
    drift check compares it with the checkpoint's copy). Anything else in it counts 0."""
    if not isinstance(landed, dict):
        return 0
    return sum(v for v in landed.values() if isinstance(v, int) and not isinstance(v, bool)
               and v > 0)


class _AimRun:
    """One open Aim run and what this sync sent to it."""

    def __init__(self, run: Any, source_dir: Path):
        self.run = run
        self.source_dir = os.path.abspath(source_dir)
        self.claims = _Claims()
        self.dirty = False  # a send failed midway: treat the next one as a re-send
        self._contexts: dict[int, Any] = {}
        self._sys_landed: dict[tuple[int, str], dict[float, int]] = {}
        self._containers = self._find_containers()
        self._series_batch: Any = None  # the series write batch of the send in progress
        self._direct_seqs: dict[tuple[int, str], _DirectMetric | None] = {}
        self._touched: dict[tuple[int, str], _DirectMetric] = {}
        self._landed_pending: dict[str, int] = {}
        self.landed_meta: dict[str, int] = {}  # source -> bytes whose points AND meta are in Aim
        self.landed_series: dict[str, int] = {}  # source -> bytes whose points are in Aim
        self._read_landed()

    # -- containers ---------------------------------------------------------------------------
    def _find_containers(self) -> list[Any] | None:
        """The run's series and meta RocksDB containers, or None (remote repo, or an Aim whose
        storage no longer looks like 3.x: then every write goes through Aim unbatched)."""
        repo = self.run.repo
        if repo.is_remote_repo:
            return None
        try:
            seqs = repo.request_container("seqs", self.run.hash, read_only=False)
            meta = repo.request_container("meta", self.run.hash, read_only=False)
            ours = {id(_root_container(self.run.meta_run_tree)),
                    id(_root_container(self.run.series_run_trees[2]))}
            if ours != {id(seqs), id(meta)}:
                raise LookupError("run trees are not on the pooled containers")
            for c in (seqs, meta):
                for attr in ("set", "delete", "delete_range", "batch", "commit", "db"):
                    getattr(c, attr)
        except Exception as e:  # an Aim we do not know: correct but slower
            log.info("aim: writing unbatched (%s: %s)", type(e).__name__, e)
            return None
        return [seqs, meta]

    @property
    def tracker(self) -> Any:
        return self.run._tracker

    def close_containers(self) -> None:
        """Close the run's RocksDB containers now, after ``Run.close()`` (which leaves them to
        the garbage collector: Aim objects sit in reference cycles). A handle kept open past
        the sync holds the run's RocksDB lock, and, if the run is deleted and made again at the
        same path meanwhile (drift, in a long-lived process: live mode, the Python API), its
        late flush and cleanup would write into and delete files of the new run's DB."""
        for c in self._containers or ():
            try:
                c.close()
            except Exception as e:  # the run is closed; its data was flushed with each send
                log.debug("aim: closing a container of run %s: %s", self.run.hash, e)

    @contextmanager
    def writes(self) -> Iterator[None]:
        """One send: batched and synced (local), or drained from Aim's RPC queue (remote).
        On failure nothing of the send is claimed and the tracker reloads Aim's committed state
        (its in-memory step counters would otherwise count writes that never landed)."""
        try:
            if self._containers is not None:
                with _BatchedWrites(self._containers) as bw:
                    self._series_batch = bw.batches[0]
                    try:
                        yield
                        self._flush_direct_meta()
                        bw.commit()
                    finally:
                        self._series_batch = None
                        self._touched.clear()
            else:
                yield
                remote = self.run.repo.is_remote_repo
                if remote:
                    _drain_remote_queue(self.run.repo)
                # unbatched: the record is written only once the points it covers are there
                for key, value in self._landed_pending.items():
                    self.run.meta_run_tree[LANDED_KEY, key] = value
                if remote:
                    _drain_remote_queue(self.run.repo)
        except BaseException:
            self.claims.rollback()
            self._sys_landed.clear()
            self._landed_pending.clear()
            self.dirty = True
            self._rebuild_tracker()
            self._read_landed()  # a commit may have failed between the two containers
            raise
        self.claims.commit()
        self.landed_meta.update(self._landed_pending)
        self.landed_series.update(self._landed_pending)
        self._landed_pending.clear()

    def _rebuild_tracker(self) -> None:
        self._direct_seqs.clear()
        try:
            from aim.sdk.tracker import RunTracker

            self.run._tracker = RunTracker(self.run)
        except Exception as e:  # the next send fails the same way and is retried
            log.warning("aim: reloading run %s after a failed send: %s", self.run.hash, e)

    # -- what landed ----------------------------------------------------------------------------
    @property
    def atomic(self) -> bool:
        """Sends land whole or not at all (one write batch per container)."""
        return self._containers is not None

    def _read_landed(self) -> None:
        self.landed_meta = read_landed(self.run.meta_run_tree)
        if self.atomic:
            self.landed_series = read_landed(self._series_tree())
        else:
            self.landed_series = dict(self.landed_meta)

    def landed_total(self) -> int:
        """What the run's landed record covers, as one number (:func:`landed_total`)."""
        return landed_total(self.landed_meta)

    def _series_tree(self) -> Any:
        return self.run.repo.request_tree("seqs", self.run.hash, read_only=False)

    def source_key(self, path: str) -> str:
        """A source file's name in the landed record (:func:`.mapping.landed_source_key`)."""
        return landed_source_key(path, self.source_dir)

    def mark_landed(self, key: str, value: int) -> None:
        """Record how much of a source is in Aim: in both write batches of the send (series,
        then meta: each record lands atomically with what it covers in that container), or,
        unbatched, after the points; kept in memory once the send committed."""
        if self.atomic:
            self._series_tree()[LANDED_KEY, key] = value
            self.run.meta_run_tree[LANDED_KEY, key] = value
        self._landed_pending[key] = value

    # -- slots ---------------------------------------------------------------------------------
    def context(self, repeat: int) -> Any:
        ctx = self._contexts.get(repeat)
        if ctx is None:
            from aim.storage.context import Context

            ctx = self._contexts[repeat] = Context(repeat_context(repeat))
        return ctx

    def put(self, name: str, step: int, wall: float, value: Any, dedupe: bool) -> bool:
        """Store one source point at ``step`` in the first free slot (context ``{}``, then
        ``{"tracelet_repeat": 1}``...: :func:`.mapping.repeat_context`), or nowhere if
        ``dedupe`` and a slot not claimed by this sync already holds it: same time, and for
        metrics the same value. True if it was there already (not stored again)."""
        tracker = self.tracker
        base = self.context(0)
        seq = tracker.sequence_infos.get((base.idx, name))
        if seq is None or not seq.initialized or step >= seq.count:
            # Beyond the sequence's last step: nothing can be there yet.
            key = (base.idx, name)
            direct = self._direct(key, seq) if self._series_batch is not None else None
            if direct is not None and isinstance(value, float):
                direct.append(self._series_batch, step, wall, value)
                self._touched[key] = direct
            else:
                tracker._track(value, wall, name, step, None, context=base.to_dict())
            self.claims.add_increasing(key, step)
            return False
        repeat = 0
        while True:
            ctx = self.context(repeat)
            key = (ctx.idx, name)
            if (key, step) not in self.claims:
                stored = self._stored(key, step)
                if stored is None:
                    tracker._track(value, wall, name, step, None, context=ctx.to_dict())
                    self.claims.add(key, step)
                    return False
                if dedupe and stored[1] == wall and (
                        stored[0] is _NOT_COMPARED or _same_float(stored[0], value)):
                    self.claims.add(key, step)
                    return True
            repeat += 1

    def _direct(self, key: tuple[int, str], seq: Any) -> "_DirectMetric | None":
        if key in self._direct_seqs:
            return self._direct_seqs[key]
        if seq is None or not seq.initialized:
            return None  # Aim's _track creates the sequence (meta, arrays) with its 1st point
        direct = _DirectMetric.of(seq, self._containers[0])
        self._direct_seqs[key] = direct
        return direct

    def _flush_direct_meta(self) -> None:
        """The per-sequence meta Aim's tracker writes on every point, once per send."""
        meta = self.run.meta_run_tree
        for (ctx_idx, name), d in self._touched.items():
            d.flush_meta(meta, ctx_idx, name)

    def _stored(self, key: tuple[int, str], step: int) -> tuple[Any, Any] | None:
        """(value, time) Aim holds at (context, name, step), from committed data only: every
        slot written by this sync is claimed, so it is never looked up."""
        seq = self.tracker.sequence_infos.get(key)
        if seq is None or not seq.initialized:
            return None
        h = seq.step_hash_fn(step)
        try:
            t = seq.time_view[h]
        except KeyError:
            return None
        if seq.version == 2:  # metrics: the value is cheap to compare
            try:
                return seq.val_view[h], t
            except KeyError:
                return None
        return _NOT_COMPARED, t

    # -- system metrics ------------------------------------------------------------------------
    def put_system(self, name: str, context: dict, ts: float, value: float, *,
                   dedupe: bool) -> bool:
        """Append a sample like Aim's resource tracker (step = next index). With ``dedupe``, a
        sample whose time is already in the sequence (and not matched yet) has landed: True,
        nothing is stored."""
        from aim.storage.context import Context

        ctx = Context(context)
        key = (ctx.idx, name)
        if dedupe:
            landed = self._sys_landed.get(key)
            if landed is None:
                landed = self._sys_landed[key] = self._landed_times(key)
            n = landed.get(ts, 0)
            if n:
                landed[ts] = n - 1
                return True
        self.tracker._track(value, ts, name, None, None, context=context)
        return False

    def _landed_times(self, key: tuple[int, str]) -> dict[float, int]:
        seq = self.tracker.sequence_infos.get(key)
        out: dict[float, int] = {}
        if seq is None or not seq.initialized:
            return out
        for _, t in seq.time_view.items():
            out[t] = out.get(t, 0) + 1
        return out


class _DirectMetric:
    """Aim's metric hot path without its per-point Python: the same four records
    (val, epoch, time, step under the step's hash) Aim's ``RunTracker._add_value`` writes, encoded
    with Aim's own ``encode_path``/``encode`` and put straight into the send's write batch; the
    sequence's meta (last, last_step, max, min) once per send. Used only for float metric
    sequences Aim itself created (format v2), in a local repo."""

    __slots__ = ("seq", "prefixes", "hash_step", "encode", "encode_key", "last", "max0", "min0")

    @classmethod
    def of(cls, seq: Any, series_container: Any) -> "_DirectMetric | None":
        try:
            from aim.storage import encoding
            from aim.storage.hashing import hash_auto

            if seq.version != 2 or seq.dtype not in ("float", "number") or seq.step_view is None:
                return None
            prefixes = []
            for view in (seq.val_view, seq.epoch_view, seq.time_view, seq.step_view):
                root, prefix = _full_prefix(view.tree)
                if root is not series_container:
                    return None
                prefixes.append(prefix)
        except Exception as e:  # not the storage layout this writer knows: use Aim's _track
            log.info("aim: metric hot path off (%s: %s)", type(e).__name__, e)
            return None
        d = cls()
        d.seq, d.prefixes, d.hash_step = seq, prefixes, hash_auto
        d.encode, d.encode_key = encoding.encode, encoding.encode_path
        d.last = None
        d.max0, d.min0 = seq.max, seq.min
        return d

    def append(self, batch: Any, step: int, wall: float, value: float) -> None:
        seq, enc = self.seq, self.encode
        suffix = self.encode_key((self.hash_step(step),))
        p_val, p_epoch, p_time, p_step = self.prefixes
        batch.put(p_val + suffix, enc(value))
        batch.put(p_epoch + suffix, enc(None))
        batch.put(p_time + suffix, enc(wall))
        batch.put(p_step + suffix, enc(step))
        seq.count = step + 1  # step >= count: this is the new last point
        self.last = (value, step)
        if value > seq.max:
            seq.max = value
        if value < seq.min:
            seq.min = value

    def flush_meta(self, meta: Any, ctx_idx: int, name: str) -> None:
        seq = self.seq
        if self.last is not None and seq.count == self.last[1] + 1:  # nothing later via _track
            meta["traces", ctx_idx, name, "last"] = self.last[0]
            meta["traces", ctx_idx, name, "last_step"] = self.last[1]
        if seq.max != self.max0:
            meta["traces", ctx_idx, name, "max"] = seq.max
            self.max0 = seq.max
        if seq.min != self.min0:
            meta["traces", ctx_idx, name, "min"] = seq.min
            self.min0 = seq.min
        self.last = None


def _full_prefix(tree: Any) -> tuple[Any, bytes]:
    """(root container, key prefix) of a TreeView: Aim's views are nested PrefixViews."""
    c, parts = tree.container, []
    while hasattr(c, "prefix") and hasattr(c, "parent"):
        parts.append(c.prefix)
        c = c.parent
    return c, b"".join(reversed(parts))


def forget_run_listing() -> None:
    """Drop Aim's 0.5 s cache of a repo's run hashes (``Repo._all_run_hashes``, keyed by repo
    path, shared by every Repo object of that path): right after a run is created it does not
    list it, and ``Run(hash)`` of an existing run would raise MissingRunError."""
    from aim import Repo

    clear = getattr(getattr(Repo, "_all_run_hashes", None), "cache_clear", None)
    if clear is not None:
        clear()


# Aim's server answers ``list_all_runs`` from ITS Repo's listing, cached 0.5 s
# (aim/sdk/repo.py: ``Repo._all_run_hashes``, ``@ttl_cache(ttl=0.5)``), which a client cannot
# clear (:func:`forget_run_listing` clears this process's only): Aim's 0.5 s and a margin.
SERVER_LISTING_TTL_S = 0.6


class RemoteRunListing:
    """Whether a remote repo has a run, as of this destination's start at the latest.

    A run made by a sync that ended less than 0.5 s before this one started (the tests' two
    syncs in a row; a retry) may be missing from the server's cached listing: "not there" is
    asked again once that listing has expired (at most :data:`SERVER_LISTING_TTL_S` after the
    start, once per destination), else the run would be made again or taken as deleted."""

    def __init__(self, repo: Any):
        self.repo = repo
        self.fresh_from = time.monotonic() + SERVER_LISTING_TTL_S

    def __contains__(self, run_hash: str) -> bool:
        forget_run_listing()
        if run_hash in self.repo.list_all_runs():
            return True
        wait = self.fresh_from - time.monotonic()
        if wait <= 0:
            return False
        time.sleep(wait)  # computed after this destination started: what earlier syncs made
        forget_run_listing()
        return run_hash in self.repo.list_all_runs()


def _root_container(tree: Any) -> Any:
    c = tree.container
    while hasattr(c, "parent"):
        c = c.parent
    return c


def _drain_remote_queue(repo: Any) -> None:
    """Wait until Aim's client queue has delivered this send's writes to the server. Aim's
    queue retries a vanished server forever (it reconnects and re-sends): past
    :data:`REMOTE_WRITE_TIMEOUT_S` the server is taken as gone for now, a transient error."""
    queue = repo._client.get_queue()
    inner = getattr(queue, "_queue", None)
    if inner is None:
        queue.wait_for_finish()
        return
    deadline = time.monotonic() + REMOTE_WRITE_TIMEOUT_S
    while inner.unfinished_tasks:
        if time.monotonic() > deadline:
            raise TransientDestinationError(
                f"aim: server {repo.root_path} did not confirm writes within "
                f"{REMOTE_WRITE_TIMEOUT_S:.0f} s (TRACELET_AIM_REMOTE_TIMEOUT_S); is it up?")
        time.sleep(0.005)


class RunIndex:
    """Aim's index of a local repo (``.aim/meta/index``, what ``Repo.iter_runs`` and queries
    read), refreshed for one run as ``aim up`` does when a run changes.

    ``aim up`` holds the index DB's RocksDB lock only while it indexes one run: a collision is
    waited out in short steps (:data:`INDEX_LOCK_TRIES` x :data:`INDEX_LOCK_WAIT_S`, through the
    one retry policy). Indexing never fails a sync: what still fails is logged and left to
    ``aim up``, which indexes outdated runs when it starts."""

    def __init__(self, repo: Any, classify: Callable[[BaseException], type[DestinationError]]):
        self.repo = repo
        self.classify = classify
        self.wait: Callable[[float], Any] | None = None  # the retry's wait (default: sleep)
        self._manager: Any = None

    def index(self, run_hash: str) -> None:
        with _AIM_LOCK:  # one writer of the index DB per process
            try:
                manager = self.manager()
            except Exception as e:
                log.warning("aim: cannot index run %s (%s); `aim up` indexes it", run_hash, e)
                return
            try:
                call_with_retry(self._index_once, manager, run_hash,
                                what=f"aim: index of run {run_hash}", sleep=self.wait,
                                attempts=INDEX_LOCK_TRIES, base_delay_s=INDEX_LOCK_WAIT_S,
                                max_delay_s=INDEX_LOCK_WAIT_S)
            except TraceletError as e:
                log.warning("aim: cannot index run %s (%s); `aim up` indexes it", run_hash, e)

    def _index_once(self, manager: Any, run_hash: str) -> None:
        try:
            manager.index(run_hash)
        except TraceletError:
            raise
        except Exception as e:  # `aim up` holds the index DB: a RocksDB IO error, transient
            raise typed_error(self.classify(e), e) from e

    def manager(self) -> Any:
        """Aim's ``RepoIndexManager`` without its file watchers: its constructor starts inotify
        threads (one set per repo, never stopped) that ``index()`` does not need."""
        if self._manager is None:
            from aim.sdk.index_manager import RepoIndexManager

            try:
                manager = RepoIndexManager.__new__(RepoIndexManager)
                manager.repo_path, manager.repo = self.repo.path, self.repo
                manager.chunks_dir = Path(self.repo.path) / "meta" / "chunks"
                manager._corrupted_runs, manager._watches = set(), {}
                manager.lock = threading.Lock()
                manager._get_run_checksum, manager._stop_monitoring_chunk  # noqa: B018 (present?)
            except Exception:
                manager = RepoIndexManager.get_index_manager(self.repo)
            self._manager = manager
        return self._manager

