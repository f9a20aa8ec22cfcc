"""The memory destination: an exact, dependency-free reference destination with fault knobs.

It exists for the engine's tests (``tests/engine/``) and for plugin authors as the smallest
complete example of the contract; it is not a tracker. What it stores is kept in a
:class:`MemoryStore`: in this process only (``memory_store`` unset: one store per name, see
:func:`store_named`), or durably in a folder (``memory_store=/path``: one append-only JSON-lines
journal per run, fsynced per call), which survives a kill -9 so the crash tests can use it.

Exactly once, without guessing: every point is identified by its position in its source, i.e.
(file, kind, ordinal among the points of that kind in that file). A batch's first ordinals are
known from the ordinals at its start offset, which the store records at the end of every batch
it received (the engine only ever starts a read at offset 0 or at a committed batch end). With
``dedupe=True`` a point whose position already landed is skipped; a batch whose start offset is
unknown (cannot happen with this engine) is compared point by point instead. Sidecar rows are
identified by (name, timestamp, value), params and status are set-if-different, artifacts are
overwritten by name.

Fault knobs (config keys, or the environment for subprocess tests: ``TRACELET_MEMORY_<KEY>``):

=====================  ======================================================================
``memory_down``        every call fails as "connection refused" (transient)
``memory_fail_sends``  ``"N"`` or ``"N,M"``: the N-th (M-th...) call of ``send`` in this
                       process fails transiently *after* writing half of the batch; suffix
                       ``!`` (``"3!"``) fails it permanently instead
``memory_slow_s``      seconds slept in every call
``memory_kinds``       comma-separated point kinds this destination declares (default all)
``memory_reject``      regex: scalar points whose tag matches are refused permanently (a
                       vendor rejecting a key)
=====================  ======================================================================
"""
from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from ...params import param_text
from ...errors import DestinationError, TransientDestinationError
from ...reader.points import AUDIO, HISTOGRAM, IMAGE, KINDS, SCALAR, TEXT, Batch
from ..base import (Capabilities, Destination, ParamsResult, RunHandle, RunRef, SendResult,
                    SystemRows)
from .factory import option

_POINT_KINDS = (SCALAR, HISTOGRAM, IMAGE, TEXT, AUDIO)  # hparams travel as params


def _value_key(v: float) -> Any:
    return "nan" if isinstance(v, float) and math.isnan(v) else v


@dataclass
class StoredRun:
    """One run as the memory destination holds it; tests read these fields directly."""

    run_uid: str
    run_id: str
    run_path: str
    project: str
    points: list[tuple] = field(default_factory=list)  # (kind, tag, step, wall, value|summary)
    sources: list = field(default_factory=list)  # per point: (file, kind, ordinal) or None
    system: list[tuple] = field(default_factory=list)  # (name, timestamp, value)
    params: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    status: str | None = None
    ended_at: float | None = None
    name: str = ""  # RunRef.name: the display name (set by open_run, renamed when it changes)
    started_at: float | None = None  # RunRef.started_at (set by open_run)
    # per source file: offset -> ordinals per kind at that offset; kind -> landed ordinals
    ends: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    landed: dict[str, dict[str, set[int]]] = field(default_factory=dict)

    def scalars(self) -> dict[str, list[tuple[int, float]]]:
        out: dict[str, list[tuple[int, float]]] = {}
        for kind, tag, step, _wall, value in self.points:
            if kind == SCALAR:
                out.setdefault(tag, []).append((step, math.nan if value == "nan" else value))
        return out

    def lose(self, indexes) -> None:
        """Forget some stored points, as a vendor losing data would (tests of reset/resync):
        they are gone, and so is the record that they landed."""
        for i in sorted(set(indexes), reverse=True):
            src = self.sources[i] if i < len(self.sources) else None
            if src is not None:
                path, kind, o = src
                self.landed.get(path, {}).get(kind, set()).discard(o)
            del self.points[i]
            if i < len(self.sources):
                del self.sources[i]

    def count(self, kind: str) -> int:
        return sum(1 for p in self.points if p[0] == kind)


class MemoryStore:
    """Runs by uid; optionally journaled to ``folder`` (one ``<uid>.jsonl`` per run)."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder else None
        self.runs: dict[str, StoredRun] = {}
        self.lock = threading.RLock()
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            for p in sorted(self.folder.glob("*.jsonl")):
                self._replay(p)

    # -- journal ------------------------------------------------------------------------------
    def _replay(self, path: Path) -> None:
        with open(path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # a kill -9 mid-write: that call never returned, so it never happened
                self._apply(json.loads(line), journal=False)

    def _journal(self, entry: dict) -> None:
        if self.folder is None:
            return
        path = self.folder / f"{entry['uid']}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(entry, default=_jsonable) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def apply(self, entry: dict) -> None:
        with self.lock:
            self._journal(entry)
            self._apply(entry, journal=True)

    def _apply(self, e: dict, journal: bool) -> None:
        op, uid = e["op"], e["uid"]
        if op == "create":
            self.runs[uid] = StoredRun(uid, e["run_id"], e["run_path"], e["project"],
                                       name=e.get("name", ""), started_at=e.get("started_at"))
            return
        if op == "drop":
            self.runs.pop(uid, None)
            return
        run = self.runs.get(uid)
        if run is None:
            return  # a run dropped (drift) while a journal entry was in flight
        if op == "points":
            points = [_hashable(p) for p in e["points"]]
            ords = [tuple(o) for o in e["ords"]]
            run.points.extend(points)
            run.sources.extend([(e["path"], k, o) for k, o in ords] if len(ords) == len(points)
                               else [None] * len(points))
            landed = run.landed.setdefault(e["path"], {})
            for kind, o in ords:
                landed.setdefault(kind, set()).add(o)
            if "end" in e:  # a whole batch: its end is where the next read may start
                run.ends.setdefault(e["path"], {})[int(e["end"])] = list(e["end_ords"])
        elif op == "system":
            run.system.extend(_hashable(r) for r in e["rows"])
        elif op == "params":
            run.params.update(e["params"])
        elif op == "artifact":
            run.artifacts[e["name"]] = bytes.fromhex(e["data"])
        elif op == "finish":
            run.status, run.ended_at = e["status"], e["ended_at"]
        elif op == "meta":
            run.name, run.started_at = e["name"], e["started_at"]

    # -- queries ------------------------------------------------------------------------------
    def find(self, project: str, run_id: str) -> list[StoredRun]:
        with self.lock:
            return [r for r in self.runs.values() if r.project == project and r.run_id == run_id]

    def drop(self, uid: str) -> None:
        """Delete a run, as a user deleting it in the tracker's UI would (drift tests)."""
        self.apply({"op": "drop", "uid": uid})


def _jsonable(o: Any) -> Any:
    if isinstance(o, bytes):
        return o.hex()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


_STORES: dict[str, MemoryStore] = {}
_STORES_LOCK = threading.Lock()


def store_named(name: str) -> MemoryStore:
    """The store for ``memory_store`` = ``name``: ``mem:<label>`` is one store per process;
    anything else is a journal folder, replayed afresh for every destination instance (other
    processes may have appended to it since: the crash tests sync in subprocesses)."""
    if not name.startswith("mem:"):
        return MemoryStore(name)
    with _STORES_LOCK:
        store = _STORES.get(name)
        if store is None:
            store = _STORES[name] = MemoryStore()
        return store


def reset_stores() -> None:
    """Forget every in-process store (test isolation)."""
    with _STORES_LOCK:
        _STORES.clear()


class MemoryDestination(Destination):
    name = "memory"

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__(config)
        self.store_name = option(self.config, "memory_store") or "mem:default"
        self.store = store_named(self.store_name)
        kinds = option(self.config, "memory_kinds")
        chosen = frozenset(k.strip() for k in kinds.split(",") if k.strip()) if kinds else \
            frozenset(_POINT_KINDS)
        self.capabilities = Capabilities(kinds=chosen)
        self.down = bool(option(self.config, "memory_down"))
        self.slow_s = float(option(self.config, "memory_slow_s") or 0)
        self.fail_sends = _parse_failures(option(self.config, "memory_fail_sends") or "")
        reject = option(self.config, "memory_reject")
        self.reject = re.compile(reject) if reject else None
        self.sends = 0
        self.calls: list[str] = []  # every call made, in order (engine tests assert on it)

    @property
    def target(self) -> str:
        return f"memory:{self.store_name}"

    def _enter(self, what: str) -> None:
        self.calls.append(what)
        if self.slow_s:
            time.sleep(self.slow_s)
        if self.down:
            raise TransientDestinationError(f"connection refused at {self.target}")

    # -- the contract -------------------------------------------------------------------------
    def open_run(self, run: RunRef, identity: dict[str, Any] | None) -> RunHandle:
        self._enter("open_run")
        uid = (identity or {}).get("uid")
        mine = self.store.runs.get(uid) if isinstance(uid, str) else None
        if mine is not None and mine.run_id == run.run_id:
            self._meta(mine, run)
            return RunHandle(identity={"uid": uid}, existed=True)
        ignored = mine is not None or (uid is not None and not isinstance(uid, str))  # another run's
        # the run the checkpoint names is gone (dropped: a user deleted it): drift
        drift = self.check_run(run, identity) if isinstance(uid, str) and mine is None else None
        found = self.store.find(run.project, run.run_id)
        if found:
            self._meta(found[0], run)
            return RunHandle(identity={"uid": found[0].run_uid}, existed=True,
                             identity_ignored=ignored, drift=drift)
        uid = f"{run.run_id}-{time.time_ns():x}"
        self.store.apply({"op": "create", "uid": uid, "run_id": run.run_id,
                          "run_path": run.run_path, "project": run.project,
                          "name": run.name, "started_at": run.started_at})
        return RunHandle(identity={"uid": uid}, existed=False, identity_ignored=ignored,
                         drift=drift)

    def _meta(self, stored: StoredRun, run: RunRef) -> None:
        """Name and start time follow the RunRef (a changed ``--run-name`` renames the run)."""
        if (stored.name, stored.started_at) != (run.name, run.started_at):
            self.store.apply({"op": "meta", "uid": stored.run_uid, "name": run.name,
                              "started_at": run.started_at})

    def check_run(self, run: RunRef, identity: dict[str, Any] | None) -> str | None:
        uid = (identity or {}).get("uid")
        if isinstance(uid, str) and uid in self.store.runs:
            return None
        return f"run missing: {uid} is no longer in {self.target}"

    def _run(self, handle: RunHandle) -> StoredRun:
        run = self.store.runs.get(handle.identity["uid"])
        if run is None:
            raise DestinationError(f"memory: run {handle.identity['uid']} no longer exists")
        return run

    def send(self, handle: RunHandle, batch: Batch, *, dedupe: bool) -> SendResult:
        self._enter("send")
        self.sends += 1
        run = self._run(handle)
        if self.reject is not None:
            bad = sorted({t for t in batch.scalars.tags if self.reject.search(t)})
            if bad:
                raise DestinationError(f"memory: key {bad[0]!r} rejected (memory_reject)")
        base = run.ends.get(batch.path, {}).get(batch.start_offset)
        if base is None and batch.start_offset == 0:
            base = [0] * len(_POINT_KINDS)
        landed = run.landed.get(batch.path, {})
        points: list[tuple] = []
        ords: list[tuple[str, int]] = []  # (kind, ordinal) of each kept point, when known
        end_ords = list(base or [0] * len(_POINT_KINDS))
        by_value = _multiset(run.points) if dedupe and base is None else None
        present = 0  # skipped by dedupe: already stored (reported as "confirmed present")
        for k, (kind, items) in enumerate(_points_of(batch)):
            end_ords[k] += len(items)
            if items and kind not in self.capabilities.kinds:  # the engine filters these out
                raise DestinationError(f"memory: sent {len(items)} {kind} point(s), a kind "
                                       "this destination does not declare")
            for i, p in enumerate(items):
                if base is not None:
                    o = base[k] + i
                    if dedupe and o in landed.get(kind, ()):
                        present += 1
                        continue
                    ords.append((kind, o))
                elif by_value is not None and by_value.get(_hashable(p), 0) > 0:
                    by_value[_hashable(p)] -= 1
                    present += 1
                    continue
                points.append(p)
        uid = handle.identity["uid"]
        failing = self.fail_sends.get(self.sends)
        if failing is not None:
            half = len(points) // 2  # what a vendor had stored when the connection broke
            self.store.apply({"op": "points", "uid": uid, "path": batch.path,
                              "points": points[:half], "ords": ords[:half]})
            cls = DestinationError if failing else TransientDestinationError
            raise cls(f"memory: send #{self.sends} failed after {half} of {len(points)} points "
                      "(memory_fail_sends)")
        self.store.apply({"op": "points", "uid": uid, "path": batch.path, "points": points,
                          "ords": ords, "end": batch.end_offset, "end_ords": end_ords})
        return SendResult(present=present)

    def send_system(self, handle: RunHandle, rows: SystemRows, run: RunRef, *,
                    dedupe: bool) -> SendResult:
        self._enter("send_system")
        stored = self._run(handle)
        rows = list(zip(rows.names, rows.timestamps,
                        [_value_key(v) for v in rows.values]))
        given = len(rows)
        if dedupe:
            have = _multiset(stored.system)
            kept = []
            for r in rows:
                if have.get(r, 0) > 0:
                    have[r] -= 1
                else:
                    kept.append(r)
            rows = kept
        self.store.apply({"op": "system", "uid": handle.identity["uid"], "rows": rows})
        return SendResult(present=given - len(rows))

    def log_params(self, handle: RunHandle, params: Mapping[str, Any]) -> ParamsResult:
        self._enter("log_params")
        run = self._run(handle)
        values = {k: param_text(v) for k, v in params.items()}
        with self.store.lock:
            present = [k for k, v in values.items() if run.params.get(k) == v]
        changed = {k: v for k, v in values.items() if k not in present}
        if changed:
            self.store.apply({"op": "params", "uid": handle.identity["uid"], "params": changed})
        # set-if-different: nothing refused; what it held with the same value is present
        return ParamsResult(present=present)

    def log_artifacts(self, handle: RunHandle, files: list[tuple[Path, str]]) -> None:
        self._enter("log_artifacts")
        self._run(handle)
        for path, rel in files:
            self.store.apply({"op": "artifact", "uid": handle.identity["uid"], "name": rel,
                              "data": Path(path).read_bytes().hex()})

    def finish(self, handle: RunHandle, status: str, ended_at: float | None) -> None:
        self._enter("finish")
        self._run(handle)
        self.store.apply({"op": "finish", "uid": handle.identity["uid"], "status": status,
                          "ended_at": ended_at})


def _points_of(batch: Batch) -> Iterator[tuple[str, list[tuple]]]:
    c = batch.scalars
    yield SCALAR, [(SCALAR, t, s, w, _value_key(v))
                   for t, s, w, v in zip(c.tags, c.steps, c.wall_times, c.values)]
    yield HISTOGRAM, [(HISTOGRAM, h.tag, h.step, h.wall_time, [list(h.counts), list(h.lefts)])
                      for h in batch.histograms]
    yield IMAGE, [(IMAGE, im.tag, im.step, im.wall_time, [im.index, len(im.encoded)])
                  for im in batch.images]
    yield TEXT, [(TEXT, t.tag, t.step, t.wall_time, t.text) for t in batch.texts]
    yield AUDIO, [(AUDIO, a.tag, a.step, a.wall_time, [a.index, len(a.encoded)])
                  for a in batch.audio]


def _multiset(rows) -> dict:
    out: dict = {}
    for r in rows:
        key = _hashable(r)
        out[key] = out.get(key, 0) + 1
    return out


def _hashable(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return tuple(_hashable(i) for i in x)
    return x


def _parse_failures(text: str) -> dict[int, bool]:
    """``"3,5!"`` -> {3: False (transient), 5: True (permanent)}."""
    out: dict[int, bool] = {}
    for part in text.split(","):
        part = part.strip()
        if part:
            out[int(part.rstrip("!"))] = part.endswith("!")
    return out


assert set(_POINT_KINDS) < set(KINDS)
