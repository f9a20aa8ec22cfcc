"""Aim destination: a local Aim repo (default ``./.aim``, created as ``aim init`` would, but
crash-safely and one sync at a time: ``aim_repo.py``) or a remote Aim server
(``--aim-repo aim://host:53800``).

Identity (DESIGN §5): experiment = project; run name = run path;
``run["tracelet"] = {"run_id", "run_path"}`` (plus ``status`` and the manifest ``tags`` when
known). The Aim run hash is derived from (project, run_id) (:func:`aim_run_hash`), so the same
Aim run is found again in O(1) even with a lost state dir, and a sync killed between creating the
run and committing its checkpoint leaves no orphan run behind. Runs made some other way are found
by scanning Aim's index for ``run["tracelet"]["run_id"]``.

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
==================  =========================================================================

Tag names are kept unchanged (Aim accepts any string); only an empty tag becomes ``_-<hash>``
(:func:`aim_key`).

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
"already there". Slots filled or matched by this sync are remembered
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
server's repo.
"""
from __future__ import annotations

import bisect
import dataclasses
import datetime
import hashlib
import io
import math
import os
import re
import threading
import time
from array import array
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import pyarrow as pa

from ..._fs import _crash_point
from ...errors import DestinationError, TraceletError, TransientDestinationError
from ...params import flatten_params
from ...reader.points import (AUDIO, HISTOGRAM, IMAGE, SCALAR, TEXT, AudioPoint, Batch,
                             HistogramPoint, ImagePoint)
from ...media import image_problem
from ...redact import scrubbed_logger
from .repo import ensure_local_repo, repo_name
from ..base import (Capabilities, Destination, Rejected, RunHandle, RunRef, SystemRows, chain,
                   classify_error)
from ..keys import suffixed

log = scrubbed_logger("tracelet.aim")  # log lines never show a credential

REPEAT_CONTEXT_KEY = "tracelet_repeat"  # context key of the 2nd, 3rd... point at one step
# Run meta subtree (not params: Aim's UI does not show it): source file -> bytes of it in Aim,
# sidecar part digest -> 1. Written in the same write batch as the points it covers.
LANDED_KEY = "__tracelet_landed"
AIM_SYSTEM_PREFIX = "__system__"  # aim.ext.resource.configs.AIM_RESOURCE_METRIC_PREFIX
# DESIGN §2 sidecar name -> Aim resource-tracker name, where both mean the same thing.
AIM_SYSTEM_NAMES = {
    "process/cpu_percent": "cpu",  # Aim: the tracked process' cpu_percent (may exceed 100)
    "memory/utilization_percent": "memory_percent",  # Aim: system memory used, percent
}
AIM_GPU_NAMES = {  # gpu/<i>/<name> -> Aim name, context {"gpu": i}
    "utilization_percent": "gpu",
    "temperature_c": "gpu_temp",
    "power_watts": "gpu_power_watts",
}
_GPU_NAME = re.compile(r"gpu/(\d+)/(.+)")
MAX_HISTOGRAM_BINS = 512  # aim.Distribution's documented bin_count range is [1, 512]
# Aim's RPC client retries a vanished server forever; bound the wait for our writes to land.
REMOTE_WRITE_TIMEOUT_S = float(os.environ.get("TRACELET_AIM_REMOTE_TIMEOUT_S", "120"))
INDEX_LOCK_TRIES = 20  # `aim up` holds the index DB only while indexing one run: short waits
INDEX_LOCK_WAIT_S = 0.25

# Aim's Repo (and its sqlite "structured DB", its index) is one object per path per process and
# not thread-safe; worker threads serialise every call that touches it (sends excepted: each
# run has its own containers).
_AIM_LOCK = threading.RLock()


def aim_run_hash(project: str, run_id: str) -> str:
    """The Aim run hash of a source run: 24 hex digits like Aim's own, stable per identity."""
    return hashlib.sha1(f"tracelet\n{project}\n{run_id}".encode()).hexdigest()[:24]


def aim_system_metric(name: str) -> tuple[str, dict[str, Any]]:
    """(Aim metric name, context) of a sidecar metric (DESIGN §2 name)."""
    aim_name = AIM_SYSTEM_NAMES.get(name)
    if aim_name:
        return AIM_SYSTEM_PREFIX + aim_name, {}
    m = _GPU_NAME.fullmatch(name)
    if m and m.group(2) in AIM_GPU_NAMES:
        return AIM_SYSTEM_PREFIX + AIM_GPU_NAMES[m.group(2)], {"gpu": int(m.group(1))}
    return f"system/{name}", {}


def aim_key(tag: str) -> str:
    """A tag as an Aim metric name: unchanged (Aim takes any non-empty string); the empty tag
    is ``_-<hash>`` (:mod:`.keys`), apart from a tag that is literally ``_``."""
    return tag or suffixed("_", tag)


def aim_repo_root(config: Mapping[str, Any]) -> str:
    """The repo as Aim's ``--repo`` takes it: the folder that holds ``.aim``, or ``aim://``."""
    repo = str(config.get("aim_repo") or os.environ.get("AIM_REPO") or os.getcwd())
    if "://" in repo:
        return repo
    path = os.path.abspath(os.path.expanduser(repo))
    if os.path.basename(path) == repo_name() and os.path.isdir(os.path.join(path, "meta")):
        path = os.path.dirname(path)  # given the .aim folder itself
    return path


def nest_params(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"model/depth": 50}`` -> ``{"model": {"depth": 50}}``; a key that would clash with a
    leaf (``a`` and ``a/b``) stays flat."""
    out: dict[str, Any] = {}
    for key in sorted(flat):
        value = _aim_value(flat[key])
        parts = key.split("/")
        if len(parts) == 1 or any(not p for p in parts):
            if isinstance(out.get(key), dict):
                out[f"{key}/"] = value  # a subtree already took the name
            else:
                out[key] = value
            continue
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                node = None
                break
            node = nxt
        if node is None or isinstance(node.get(parts[-1]), dict):
            out[key] = value
        else:
            node[parts[-1]] = value
    return out


def _aim_value(v: Any) -> Any:
    """A param value Aim can store (its tree holds None/bool/int/float/str/list/dict)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_aim_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _aim_value(x) for k, x in v.items()}
    return str(v)


def distribution_bins(h: HistogramPoint) -> tuple[list[float], tuple[float, float]]:
    """Equal-width bins (weights, (low, high)) for ``aim.Distribution``, which stores only a
    range and a bin count. Equal-width sources are kept exactly; others are re-binned, assuming
    each source bucket's mass is spread evenly over it."""
    lefts, rights, counts = list(h.lefts), list(h.rights), [float(c) for c in h.counts]
    edges = [x for x in lefts + rights if math.isfinite(x)]
    if not counts or not edges:
        lo = h.min if h.min is not None and math.isfinite(h.min) else 0.0
        return [float(h.num or 0.0)], (lo, lo + 1.0)
    lo, hi = min(edges), max(edges)
    if hi <= lo:
        return [float(sum(counts))], (lo - 0.5, lo + 0.5)
    widths = [r - l for l, r in zip(lefts, rights)]
    contiguous = all(rights[i] == lefts[i + 1] for i in range(len(lefts) - 1))
    if (contiguous and all(math.isfinite(w) and w > 0 for w in widths)
            and max(widths) - min(widths) <= 1e-9 * max(abs(lo), abs(hi), max(widths))):
        return counts, (lefts[0], rights[-1])
    n = min(MAX_HISTOGRAM_BINS, max(len(counts), 1))
    step = (hi - lo) / n
    out = [0.0] * n
    for l, r, c in zip(lefts, rights, counts):
        if not c:
            continue
        l = lo if not math.isfinite(l) else l
        r = hi if not math.isfinite(r) else r
        if r <= l:  # a zero-width bucket: all of it at one point
            out[min(n - 1, max(0, int((l - lo) / step)))] += c
            continue
        first, last = max(0, int((l - lo) / step)), min(n - 1, int((r - lo) / step))
        for b in range(first, last + 1):
            b_lo, b_hi = lo + b * step, lo + (b + 1) * step
            overlap = min(r, b_hi) - max(l, b_lo)
            if overlap > 0:
                out[b] += c * overlap / (r - l)
    return out, (lo, hi)


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


class _AimRun:
    """One open Aim run and what this sync sent to it."""

    def __init__(self, dest: "AimDestination", run: Any, source_dir: Path):
        self.dest = dest
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
        def read(tree: Any) -> dict[str, int]:
            try:
                got = tree.get(LANDED_KEY) or {}
            except Exception:  # nothing recorded yet
                got = {}
            return dict(got) if isinstance(got, dict) else {}

        self.landed_meta = read(self.run.meta_run_tree)
        if self.atomic:
            self.landed_series = read(self._series_tree())
        else:
            self.landed_series = dict(self.landed_meta)

    def _series_tree(self) -> Any:
        return self.run.repo.request_tree("seqs", self.run.hash, read_only=False)

    def source_key(self, path: str) -> str:
        """A source file's name in the landed record: its path in the run dir; for a file of a
        linked logdir its file name (event file names carry time, host and pid), so moving the
        logdir does not lose the record."""
        rel = os.path.relpath(os.path.abspath(path), self.source_dir)
        if rel.startswith(".."):
            return "linked:" + os.path.basename(path)
        return rel.replace(os.sep, "/")

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

            ctx = self._contexts[repeat] = Context({REPEAT_CONTEXT_KEY: repeat} if repeat else {})
        return ctx

    def put(self, name: str, step: int, wall: float, value: Any, dedupe: bool) -> None:
        """Store one source point at ``step`` in the first free slot (context ``{}``, then
        ``{"tracelet_repeat": 1}``...), or nowhere if ``dedupe`` and a slot not claimed by this
        sync already holds it: same time, and for metrics the same value."""
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
            return
        repeat = 0
        while True:
            ctx = self.context(repeat)
            key = (ctx.idx, name)
            if (key, step) not in self.claims:
                stored = self._stored(key, step)
                if stored is None:
                    tracker._track(value, wall, name, step, None, context=ctx.to_dict())
                    self.claims.add(key, step)
                    return
                if dedupe and stored[1] == wall and (
                        stored[0] is _NOT_COMPARED or _same_float(stored[0], value)):
                    self.claims.add(key, step)
                    return
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
                   dedupe: bool) -> None:
        """Append a sample like Aim's resource tracker (step = next index). With ``dedupe``, a
        sample whose time is already in the sequence (and not matched yet) has landed."""
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
                return
        self.tracker._track(value, ts, name, None, None, context=context)

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


def _root_container(tree: Any) -> Any:
    c = tree.container
    while hasattr(c, "parent"):
        c = c.parent
    return c


def _drain_remote_queue(repo: Any) -> None:
    queue = repo._client.get_queue()
    inner = getattr(queue, "_queue", None)
    if inner is None:
        queue.wait_for_finish()
        return
    deadline = time.monotonic() + REMOTE_WRITE_TIMEOUT_S
    while inner.unfinished_tasks:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"aim server {repo.root_path} did not confirm writes within "
                f"{REMOTE_WRITE_TIMEOUT_S:.0f} s (TRACELET_AIM_REMOTE_TIMEOUT_S); is it up?")
        time.sleep(0.005)


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
        try:
            with _AIM_LOCK:
                if self.remote:
                    self.repo = Repo.from_path(self.root)
                else:
                    # what `aim init` makes, crash-safe and one sync at a time (aim_repo.py)
                    ensure_local_repo(self.root)
                    self.repo = Repo.from_path(self.root)
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
        self._indexer: Any = None
        index = self.config.get("aim_index", os.environ.get("TRACELET_AIM_INDEX", "1"))
        self.index_runs = not self.remote and str(index).lower() not in ("0", "false", "no", "off")

    @property
    def target(self) -> str:
        return self.root

    def metric_key(self, tag: str) -> str:
        return aim_key(tag)

    def classify(self, exc: BaseException) -> type[DestinationError]:
        for e in chain(exc):
            kind = type(e).__module__ + "." + type(e).__name__
            if kind in ("filelock._error.Timeout", "filelock.Timeout"):
                return TransientDestinationError  # another process holds the run; it may finish
            if "ConnectionClosed" in kind or "websockets" in kind:
                return TransientDestinationError
            if "Failed to connect to Aim Server" in str(e):  # aim.ext.transport's RuntimeError
                return TransientDestinationError
            if "Rocks" in kind and re.search(r"lock|temporarily unavailable|busy", str(e), re.I):
                return TransientDestinationError
        return classify_error(exc)

    # -- identity ----------------------------------------------------------------------------
    def _run_exists(self, run_hash: str) -> bool:
        if not self.remote:
            return os.path.isdir(os.path.join(self.repo.path, "meta", "chunks", run_hash))
        forget_run_listing()
        return run_hash in self.repo.list_all_runs()

    def _find_by_run_id(self, run: RunRef) -> str | None:
        """A run carrying ``run["tracelet"]["run_id"]`` made without our hash (older syncs,
        another tool): looked up in Aim's index once per sync, matched on the experiment."""
        if self._index_ids is None:
            self._index_ids = {}
            try:
                chunks = self.repo.request_tree("meta", read_only=True,
                                                skip_read_optimization=True).subtree(("meta", "chunks"))
                for h in chunks.keys():
                    rid = chunks.get((h, "attrs", "tracelet", "run_id"))
                    if isinstance(rid, str):
                        self._index_ids.setdefault(rid, []).append(h)
            except Exception as e:  # an empty repo has no index yet
                log.debug("aim: index scan: %s", e)
        for h in sorted(self._index_ids.get(run.run_id, [])):
            if not self._run_exists(h):
                continue
            try:
                props = self.repo.request_props(h, read_only=True)
                if props.experiment == run.project:
                    return h
            except Exception as e:
                log.debug("aim: run %s props: %s", h, e)
        return None

    def open_run(self, run: RunRef, identity: dict[str, Any] | None) -> RunHandle:
        with _AIM_LOCK:
            run_hash, ignored = (identity or {}).get("run_hash"), False
            if run_hash and run_hash != aim_run_hash(run.project, run.run_id) \
                    and run_hash != self._find_by_run_id(run):
                run_hash, ignored = None, True  # not this run's (a crafted checkpoint)
            if run_hash and self._run_exists(run_hash):
                existed = True
            else:
                run_hash = aim_run_hash(run.project, run.run_id)
                existed = self._run_exists(run_hash)
                if not existed:
                    found = self._find_by_run_id(run)
                    if found:
                        run_hash, existed = found, True
            aim_run = self._open(run, run_hash, existed)
        keep = {k: v for k, v in (identity or {}).items() if k in ("status", "end_time")
                and not ignored}
        st = _AimRun(self, aim_run, run.source_dir)
        self._index_if(st, not existed)  # listed at once, even if this sync is killed later
        _crash_point("aim_run_open")  # 4: indexed
        return RunHandle(identity={"run_hash": aim_run.hash, **keep}, existed=existed, client=st,
                         identity_ignored=ignored)

    def _open(self, run: RunRef, run_hash: str, existed: bool) -> Any:
        from aim import Run

        kw = dict(repo=self.repo, experiment=run.project, system_tracking_interval=None,
                  log_system_params=False, capture_terminal_logs=False)
        try:
            if existed:
                forget_run_listing()  # Aim checks the run exists in a listing cached 0.5 s
                aim_run = Run(run_hash, **kw)
            else:
                self._create_props(run_hash, run)
                _crash_point("aim_run_open")  # 1: Aim's run record (sqlite) only
                aim_run = _create_run_with_hash(Run, run_hash, kw)
                _crash_point("aim_run_open")  # 2: the run's containers, no identity yet
        except Exception as e:
            if type(e).__name__ == "Timeout":  # filelock: the run's lock is held
                raise TimeoutError(
                    f"aim run {run_hash} of '{run.run_path}' is locked by another process "
                    f"({self.repo.path}/locks). If none is using it (a sync killed on another "
                    f"host), release it: aim runs --repo {self.root} close --force {run_hash}"
                ) from e
            raise
        if aim_run.name != run.run_path:
            aim_run.name = run.run_path
        tracelet = aim_run.get("tracelet") or {}
        want = {**(tracelet if isinstance(tracelet, dict) else {}),
                "run_id": run.run_id, "run_path": run.run_path}
        if run.tags:
            want["tags"] = run.tags
        if want != tracelet:
            aim_run["tracelet"] = want
        if self.artifacts_uri and aim_run.artifacts_uri is None:
            aim_run.set_artifacts_uri(self.artifacts_uri)
        _crash_point("aim_run_open")  # 3: identity set, not indexed yet
        return aim_run

    def _create_props(self, run_hash: str, run: RunRef) -> None:
        """Aim's run record (sqlite) with the creation time = the manifest's ``started_at``."""
        started = run.started_at
        if not started:
            return
        try:  # fromtimestamp refuses years past 9999 (a usable but far-future start time)
            created = datetime.datetime.fromtimestamp(started, tz=datetime.timezone.utc).replace(tzinfo=None)
            if self.remote:
                self.repo.request_props(run_hash, False, created)
            else:
                with self.repo._sdb_lock:
                    if not self.repo.structured_db.find_run(run_hash):
                        self.repo.structured_db.create_run(run_hash, created)
        except Exception as e:  # a cosmetic: Aim then uses the sync time
            log.debug("aim: creation time of %s: %s", run_hash, e)

    # -- points ------------------------------------------------------------------------------
    def send(self, handle: RunHandle, batch: Batch, *, dedupe: bool) -> list[Rejected]:
        st: _AimRun = handle.client
        source = st.source_key(batch.path)
        if batch.end_offset <= st.landed_meta.get(source, 0):
            return []  # Aim's own record: this range landed (a kill after the send, a lost state dir)
        if st.atomic and source in st.landed_series:
            # Aim's record is the truth, whatever the checkpoint says: points past the series
            # record never landed; points before it landed, their meta maybe not (a kill between
            # the two containers' writes): matched one by one, which also rewrites that meta.
            dedupe = batch.start_offset < st.landed_series[source]
        elif st.atomic:
            dedupe = dedupe or st.dirty  # no record of this file: the checkpoint's word
        else:
            dedupe = dedupe or st.dirty or batch.start_offset < st.landed_meta.get(source, 0)
        # aim.Image is built from a Pillow decode: an image Pillow cannot take (truncated, bad
        # CRC, a header declaring 2^30 x 2^30 pixels) is left out and quarantined by the engine
        rejected = [Rejected(IMAGE, j, why) for j, im in enumerate(batch.images)
                    if (why := image_problem(im.encoded, decode=True))]
        refused = {r.index for r in rejected}
        sequences = len(st.tracker.sequence_infos)
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
                    put(name, step, wall, value, dedupe)
            if batch.histograms:
                from aim import Distribution

                for h in batch.histograms:
                    weights, bin_range = distribution_bins(h)
                    st.put(self.metric_key(h.tag), h.step, h.wall_time,
                           Distribution(hist=weights, bin_range=bin_range), dedupe)
            # images / audio clips of one event: one list-valued point, in tensor order
            for media, make in ((batch.images, _aim_image), (batch.audio, _aim_audio)):
                groups: dict[tuple[str, int, float], list[ImagePoint | AudioPoint]] = {}
                for j, p in enumerate(media):
                    if media is batch.images and j in refused:
                        continue
                    groups.setdefault((p.tag, p.step, p.wall_time), []).append(p)
                for (tag, step, wall), points in groups.items():
                    value = [make(p) for p in sorted(points, key=lambda p: p.index)]
                    st.put(self.metric_key(tag), step, wall, value, dedupe)
            if batch.texts:
                from aim import Text

                for t in batch.texts:
                    st.put(self.metric_key(t.tag), t.step, t.wall_time, Text(t.text), dedupe)
        st.dirty = False
        self._index_if(st, len(st.tracker.sequence_infos) != sequences)
        return rejected

    def send_system(self, handle: RunHandle, rows: SystemRows, run: RunRef, *,
                    dedupe: bool) -> None:
        st: _AimRun = handle.client
        ts = rows.timestamps
        names = rows.names
        values = rows.values
        digest = "sysmetrics:" + hashlib.sha1(repr((ts, names, values)).encode()).hexdigest()[:16]
        if st.landed_meta.get(digest):
            return  # this part landed (Aim's own record)
        dedupe = bool(st.landed_series.get(digest)) if st.atomic else (dedupe or st.dirty)
        order = sorted(range(len(ts)), key=lambda i: ts[i])  # Aim's step = sample index
        mapped: dict[str, tuple[str, dict]] = {}
        sequences = len(st.tracker.sequence_infos)
        with st.writes():
            st.mark_landed(digest, 1)
            for i in order:
                v = values[i]
                if v is None:
                    continue
                m = mapped.get(names[i])
                if m is None:
                    m = mapped[names[i]] = aim_system_metric(names[i])
                st.put_system(m[0], m[1], float(ts[i]), float(v), dedupe=dedupe)
        st.dirty = False
        self._index_if(st, len(st.tracker.sequence_infos) != sequences)

    # -- params, artifacts, status -------------------------------------------------------------
    def log_params(self, handle: RunHandle, params: Mapping[str, Any]) -> list[str]:
        aim_run = handle.client.run
        current = aim_run.get("hparams") or {}
        flat = flatten_params(current) if isinstance(current, dict) else {}
        flat.update(params)
        nested = nest_params(flat)
        if nested != current:
            aim_run["hparams"] = nested
            self._index_if(handle.client, True)
        return []  # Aim params are mutable: nothing is refused

    def log_artifacts(self, handle: RunHandle, files: list[tuple[Path, str]]) -> None:
        aim_run = handle.client.run
        for path, rel in files:
            aim_run.log_artifact(str(path), name=rel, block=True)
        self._index_if(handle.client, bool(files))

    def finish(self, handle: RunHandle, status: str, ended_at: float | None) -> None:
        aim_run = handle.client.run
        end = None if status == "running" else float(ended_at or time.time())
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
        with _AIM_LOCK:
            if "end_time" in handle.identity:
                # Aim's close stamps "now" as the end; keep the run's own end (or none: active).
                end = handle.identity["end_time"]
                res = getattr(aim_run, "_resources", None)
                if res is not None and hasattr(res, "set_run_end_time"):
                    res.set_run_end_time = lambda: res.meta_run_tree.__setitem__("end_time", end)
            run_hash = aim_run.hash
            aim_run.close()
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
        with _AIM_LOCK:  # one writer of the index DB per process
            try:
                manager = self._index_manager()
            except Exception as e:
                log.warning("aim: cannot index run %s (%s); `aim up` indexes it", run_hash, e)
                return
            for attempt in range(INDEX_LOCK_TRIES):
                try:
                    manager.index(run_hash)
                    return
                except Exception as e:  # `aim up` is indexing right now (RocksDB LOCK held)
                    if attempt == INDEX_LOCK_TRIES - 1:
                        log.warning("aim: cannot index run %s (%s: %s); `aim up` indexes it",
                                    run_hash, type(e).__name__, e)
                        return
                    time.sleep(INDEX_LOCK_WAIT_S)

    def _index_manager(self) -> Any:
        """Aim's ``RepoIndexManager`` without its file watchers: its constructor starts inotify
        threads (one set per repo, never stopped) that ``index()`` does not need."""
        if self._indexer is None:
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
            self._indexer = manager
        return self._indexer

    def close(self) -> None:
        # Drop Aim objects now: a remote repo's client releases its server-side resources when
        # collected, which must happen while the server is still reachable.
        self._index_ids = self._indexer = None
        self.repo = None


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


__all__ = ["AimDestination", "aim_run_hash", "aim_system_metric", "distribution_bins"]
