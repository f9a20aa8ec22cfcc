"""The facets of a run: params, events, sidecar, artifacts, status — one shape for all five.

A facet yields *units* read once from the source, whatever the number of destinations (the
params, one batch of an event file, one sidecar part, a chunk of artifacts, the status). For
each unit and each live destination (slot) it runs the same three steps:

* ``pending``  — what this slot still needs of the unit (from its checkpoint), or nothing;
* ``call``     — the destination call, under the retry policy, with quarantine
  (:class:`~.delivery.Delivery`); ``None`` means the slot failed (and is committed);
* ``acknowledge`` — record what landed in the slot's checkpoint and report; then commit.

Kinds a destination does not declare (:class:`~tracelet.destinations.base.Capabilities`) are
acknowledged as unsupported without a call. The protocol (:mod:`.protocol`) runs the facets in
order, :data:`FACETS`. Event files need more than the generic loop (a shared read split at each
lagging destination's offset, ``pending_end`` committed before the first send): their facet
drives the same three steps per batch itself.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..checkpoint import (FileState, check_file_identity, remember_identity,
                          track_incomplete_tail)
from ..destinations.base import SystemRows, params_outcome, send_outcome
from ..errors import FileReplacedError, NotRegularFileError, SourceError
from ..params import flatten_params, param_text
from ..quarantine import cause_text
from ..reader import EventFileReader
from ..reader.events import unreadable_message
from ..reader.points import Batch
from ..redact import scrubbed_logger
from ..rundir import SIDECAR_DIR
from ..runfiles import RunFiles
from ..storage import ObjectPath
from .behind import file_key
from .delivery import dedupe_retries
from .report import RunReport
from .slot import Slot

log = scrubbed_logger("tracelet.sync")

_PIN_CHUNK = 256  # artifacts opened at once (file descriptors) per upload call


class Facet:
    """The generic loop; subclasses define units, pending, call, acknowledge."""

    name = ""

    def units(self, ctx) -> Iterable[Any]:
        return ()

    def pending(self, ctx, slot: Slot, unit: Any) -> Any:
        return None

    def supported(self, slot: Slot) -> bool:
        return True

    def unsupported(self, ctx, slot: Slot, unit: Any, item: Any) -> None:
        """Count what the destination lacks (the caller acknowledges and commits)."""

    def dry(self, ctx, slot: Slot, unit: Any, item: Any) -> None:
        """``--dry-run``: count what would be sent (nothing is called or committed)."""

    def call(self, ctx, slot: Slot, unit: Any, item: Any) -> Any:
        raise NotImplementedError

    def acknowledge(self, ctx, slot: Slot, unit: Any, item: Any, outcome: Any) -> None:
        raise NotImplementedError

    def delivered(self, ctx, unit: Any) -> None:
        """``unit`` reached at least one destination (the progress observer counts it once)."""

    def run(self, ctx) -> None:
        for unit in self.units(ctx):
            if ctx.stop.is_set():
                return
            reached = False
            for slot in ctx.live():
                item = self.pending(ctx, slot, unit)
                if not item:
                    continue
                if slot.dest is None:
                    self.dry(ctx, slot, unit, item)
                    reached = True
                    continue
                if not self.supported(slot):
                    self.unsupported(ctx, slot, unit, item)
                    outcome = None
                else:
                    outcome = self.call(ctx, slot, unit, item)
                    if outcome is None:
                        continue  # the slot failed (committed); the others go on
                self.acknowledge(ctx, slot, unit, item, outcome)
                ctx.commit(slot)
                reached = True
            if reached:
                self.delivered(ctx, unit)


# -- params ---------------------------------------------------------------------------------------
class ParamsFacet(Facet):
    """Manifest params (and, through :meth:`deliver`, TensorBoard hparams met in a batch)."""

    name = "params"

    def __init__(self, params: dict[str, Any] | None = None):
        self.params = params  # None: the manifest's

    def units(self, ctx) -> Iterable[dict[str, Any]]:
        params = self.params
        if params is None:
            ctx.at(f"sending field 'params' of {ctx.run.manifest_path}")
            # hparams.yaml first: the manifest's value wins for a name both give
            params = {**ctx.file_params,
                      **flatten_params((ctx.manifest or {}).get("params") or {})}
        if params:
            yield ctx.redactor.params(params)

    def pending(self, ctx, slot: Slot, params: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in params.items() if slot.ck.params.get(k) != param_text(v)}

    def supported(self, slot: Slot) -> bool:
        return slot.dest.capabilities.params

    def unsupported(self, ctx, slot: Slot, unit, new: dict[str, Any]) -> None:
        slot.report.add("unsupported", {"params": len(new)})

    def dry(self, ctx, slot: Slot, unit, new: dict[str, Any]) -> None:
        slot.report.params_sent += len(new)

    def call(self, ctx, slot: Slot, unit, new: dict[str, Any]):
        d = ctx.delivery
        d.key_notes(slot, slot.ledger().note("p", list(new), slot.dest.param_key))
        return d.call_isolated(ctx.store, slot, slot.dest.log_params, list(new.items()),
                               lambda items: (slot.handle, dict(items)), what="log params")

    def acknowledge(self, ctx, slot: Slot, unit, new: dict[str, Any], outcomes) -> None:
        present: set[str] = set()
        if outcomes is not None:
            conflicts: list[str] = []
            refused = 0
            for status, items, result in outcomes:
                if status == "ok":
                    c, p = params_outcome(result)
                    conflicts.extend(c)
                    held = set(p) - set(c)
                    present.update(k for k, _ in items if k in held)
                    continue
                refused += 1
                ctx.delivery.quarantine(slot, None, f"param {items[0][0]!r} rejected by "
                                        f"{slot.name}: {cause_text(result)}; not retried until "
                                        "its value changes")
            for k in conflicts:
                slot.report.param_conflicts.append(
                    f"param '{k}': destination keeps its earlier value; new value "
                    f"{param_text(new[k])!r} not applied ({slot.name} params are write-once)")
            slot.report.params_sent += len(new) - len(conflicts) - refused
            slot.report.params_present += len(present)
            ctx.delivery.count_quarantined(slot, {"params": refused})
        slot.params_present.difference_update(new)  # what this send wrote or was refused
        slot.params_present.update(present)
        slot.ck.params.update({k: param_text(v) for k, v in new.items()})

    def deliver(self, ctx, slots: list[Slot]) -> None:
        """This facet's loop for some slots only (hparams of a batch, before its points)."""
        all_slots = ctx.slots
        ctx.slots = slots
        try:
            self.run(ctx)
        finally:
            ctx.slots = all_slots


# -- events ---------------------------------------------------------------------------------------
class EventsFacet(Facet):
    """Event files, batch by batch. Per file: the size now is the signpost; ``pending_end``
    is committed for every slot before the first send; the file is read once in segments split
    at each lagging slot's offset; each batch goes to the slots whose offset it starts at."""

    name = "events"

    def run(self, ctx) -> None:
        for path in ctx.event_files:
            if ctx.stop.is_set():
                return
            ctx.at(f"reading event file {path}")
            self.sync_file(ctx, path)

    def sync_file(self, ctx, path) -> None:
        run, rr, slots = ctx.run, ctx.rr, ctx.slots
        rel = file_key(run, path)
        src = SourceFile.of(run, path)
        if src is None:
            rr.problems.append(f"{path}: no longer in the bucket; skipped this sync.")
            return
        try:
            st = src.stat()
            size = st.st_size  # the signpost: bytes appended later wait for next sync
        except OSError as e:
            rr.problems.append(f"{path}: cannot stat ({e.strerror}); skipped this sync.")
            return
        active: list[tuple[Slot, FileState, int]] = []  # slot, state, old pending end
        for slot in ctx.live():
            fs = slot.ck.files.setdefault(rel, FileState())
            try:
                check_file_identity(path, fs, size, src.read_head, src.etag)
                if not fs.replaced:
                    fs.etag = src.etag
            except FileReplacedError as e:
                fs.replaced = str(e)
            except (OSError, NotRegularFileError, SourceError) as e:
                source_unreadable(rr, slots, path, e, 0)
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
        # pending: durably note "up to `size` may be in flight" before the first send
        for slot, fs, _ in work:
            try:
                remember_identity(path, fs, size, src.read_head)
            except (OSError, NotRegularFileError, SourceError):
                pass  # the read below meets the same error and reports it
            fs.pending_end = max(size, fs.pending_end or 0)
            ctx.commit(slot)
        bounds = sorted({fs.offset for _, fs, _ in work} | {size})
        tag_plugins = min(work, key=lambda w: w[1].offset)[1].tag_plugins
        status = None
        readers: list[EventFileReader] = []
        progress = ctx.delivery.progress
        read_to = bounds[0]  # bytes read so far, for the progress bar (once per file)
        for a, b in zip(bounds, bounds[1:]):
            joined = [w for w in work if w[1].offset <= a and not w[0].failed]
            if not joined:
                continue
            reader = ctx.reader_class(path, a, tag_plugins, opener=src.opener)
            readers.append(reader)
            plugins = tag_plugins  # the map as of each batch's start (to re-read it)
            for batch in read_guarded(reader, b, ctx.options.batch_points, rr, slots):
                if batch.clamp_wall_times():
                    rr.note(f"{path}: points with an unusable wall time (NaN, Inf, negative or "
                            "beyond 1e12 s) were sent with wall time 0 (1970-01-01).")
                self.fan_out(ctx, batch, joined, plugins)
                plugins = batch.tag_plugins
                if batch.end_offset > read_to:
                    progress.bytes(batch.end_offset - read_to)
                    read_to = batch.end_offset
                if batch.points and not all(s.failed for s, _, _ in joined):
                    progress.points(batch.points)  # once, whatever the number of destinations
                if ctx.stop.is_set() or all(s.failed for s, _, _ in joined):
                    break
            tag_plugins = reader.tag_plugins
            status = reader.status
            if ctx.stop.is_set() or status.corrupt_offset is not None or status.offset < b:
                break
        if size > read_to and not ctx.stop.is_set():
            # the rest is not read this pass (a corrupt tail, an incomplete record, a failed
            # destination): the file is done as far as this pass's progress goes
            progress.bytes(size - read_to)
        skip_note = skipped_records_note(path, readers)
        if skip_note:
            rr.note(skip_note)
        if status is not None:
            if status.corrupt_offset is not None:
                rr.problems.append(
                    f"{path}: corrupt at byte {status.corrupt_offset} ({status.corrupt_reason}); "
                    "records before it were synced, the rest of the file "
                    f"({size - status.corrupt_offset:,} bytes) is skipped. Restore the file "
                    "or remove it.")
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
                rr.note(stuck_tail_note(path, stuck, pending, st.st_mtime))
            elif pending:
                slot.recheck = True  # next pass compares; the fast path would never look again
            fs.size_seen = size
            # Every batch sent to a healthy slot was committed, so nothing of *this* sync is in
            # flight; only an older in-flight range not yet re-read stays marked.
            fs.pending_end = old_pending if fs.offset < old_pending else None
            ctx.commit(slot)

    def fan_out(self, ctx, batch: Batch, joined, plugins: dict[str, str]) -> None:
        """One batch: pending = the slots whose offset it starts at; call + acknowledge =
        :meth:`Delivery.deliver` (send, quarantine, land, commit)."""
        d = ctx.delivery
        for slot, fs, old_pending in joined:
            if slot.failed or fs.offset != batch.start_offset:
                continue
            hparams_present = False
            if batch.hparams:
                # Params first: they commit on their own, and must never commit a destination
                # state (W&B's point ordinals) that is ahead of the committed offset.
                hparams_present = self.deliver_hparams(ctx, slot, batch)
                if slot.failed:
                    continue
            if slot.dest is not None:
                d.note_keys(slot, batch)
            if slot.dest is not None and batch.points:
                dedupe = batch.start_offset < old_pending
                landed = d.deliver(ctx.store, slot, fs, batch, dedupe, plugins, ctx.rr)
            else:
                d.land(slot, fs, batch, {})
                ctx.commit(slot)
                landed = True
            if landed and hparams_present:
                slot.report.points_present += len(batch.hparams)

    @staticmethod
    def deliver_hparams(ctx, slot: Slot, batch: Batch) -> bool:
        """Send the params of a batch's hparams; True when the destination already held every
        one of them with the value sent (this sync's sends said so, :attr:`Slot.params_present`):
        then the hparams points count as already present ("confirmed N already present")."""
        merged: dict[str, Any] = {}
        for hp in batch.hparams:
            merged.update(hp.hparams)
        # Lightning writes the same hparams into hparams.yaml (typed, nested) and into the
        # event file (flattened, numbers as floats): the file's value is the one sent (by the
        # params facet), so the two never conflict on a write-once destination
        ParamsFacet({k: v for k, v in merged.items() if k not in ctx.file_params}
                    ).deliver(ctx, [slot])
        return bool(merged) and all(k in slot.params_present for k in merged)


# -- sidecar --------------------------------------------------------------------------------------
@dataclass
class _Part:
    path: Any
    rows: SystemRows


class SidecarFacet(Facet):
    """System-metric parts, each read once; a part is one unit for quarantine (its rows are
    matched by the part's content on a resend)."""

    name = "sidecar"

    def units(self, ctx) -> Iterator[_Part]:
        from ..sidecar import read_part  # pyarrow: only when a run has work
        from ..storage import runs as objects

        run, rr = ctx.run, ctx.rr
        files = RunFiles(run.path, ctx.options.follow_artifact_links)
        ctx.at(f"listing sidecar parts in {run.sidecar_dir}")
        try:
            # links out of the run: reported, skipped; object storage: from the listing
            parts = files.sidecar_parts(rr.problems) if run.location is None \
                else objects.sidecar_parts(run)
        except SourceError as e:
            rr.problems.append(str(e))
            return
        for part in parts:
            need = [s for s in ctx.live() if part.name not in s.ck.sidecar_done]
            if not need:
                continue
            ctx.at(f"reading sidecar part {part}")
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
                    source_unreadable(rr, need, part, e, 0)
                    continue
                try:
                    with os.fdopen(fd, "rb") as f:  # read once, whatever the number of slots
                        table = read_part(part, notes, f)
                except SourceError as e:
                    rr.note(str(e))
                    continue
            for note in notes:
                rr.note(note)
            yield _Part(part, SystemRows.from_table(part.name, table))

    def pending(self, ctx, slot: Slot, part: _Part) -> bool:
        return part.path.name not in slot.ck.sidecar_done

    def supported(self, slot: Slot) -> bool:
        return slot.dest.capabilities.system_metrics

    def unsupported(self, ctx, slot: Slot, part: _Part, item) -> None:
        slot.report.add("unsupported", {"system": part.rows.num_rows})
        slot.ck.add_counts("unsupported", {"system": part.rows.num_rows})

    def dry(self, ctx, slot: Slot, part: _Part, item) -> None:
        slot.report.add("points_sent", {"system": part.rows.num_rows})

    def call(self, ctx, slot: Slot, part: _Part, item):
        name = part.path.name
        dedupe = slot.dedupe_all or slot.ck.sidecar_pending == name
        slot.ck.sidecar_pending = name  # pending: committed before the send
        ctx.commit(slot)
        return ctx.delivery.call_isolated(
            ctx.store, slot, dedupe_retries(slot.dest.send_system), [part.path],
            lambda _: (slot.handle, part.rows, ctx.ref), dedupe=dedupe,
            what=f"send system metrics {name}")

    def delivered(self, ctx, part: _Part) -> None:
        ctx.delivery.progress.points(part.rows.num_rows)

    def acknowledge(self, ctx, slot: Slot, part: _Part, item, outcomes) -> None:
        n = part.rows.num_rows
        if outcomes is not None:
            if outcomes[0][0] == "ok":
                slot.report.points_present += send_outcome(outcomes[0][2])[1]
                slot.report.add("points_sent", {"system": n})
                slot.ck.add_counts("points_sent", {"system": n})
            else:
                ctx.delivery.count_quarantined(slot, {"system": n})
                ctx.delivery.quarantine(slot, ctx.rr, f"{n} system points of {SIDECAR_DIR}/"
                                        f"{part.path.name} rejected by {slot.name}: "
                                        f"{cause_text(outcomes[0][2])}; not retried")
        slot.ck.sidecar_done.append(part.path.name)
        slot.ck.sidecar_pending = None


# -- artifacts ------------------------------------------------------------------------------------
@dataclass
class _Chunk:
    files: dict[str, Any]  # rel -> signature listed
    views: dict[str, tuple[Any, Any]]  # rel -> (path to read, signature opened)


class ArtifactsFacet(Facet):
    """New or changed artifacts. Only files whose real path is inside the run are read (links
    out of it are reported; ``follow_artifact_links`` allows them), through descriptors
    checked when opened (:meth:`RunFiles.pinned`). An artifact that cannot be read fails
    alone: the others upload, it is reported and retried at the next sync."""

    name = "artifacts"

    def units(self, ctx) -> Iterator[_Chunk]:
        run, rr = ctx.run, ctx.rr
        ctx.at(f"listing artifacts in {run.artifacts_dir}")
        listed: list[str] = []
        if run.location is None:
            runfiles = RunFiles(run.path, ctx.options.follow_artifact_links)
            files = runfiles.artifacts(listed)
            pin = runfiles.pinned
        else:  # object storage: (size, ETag) from the listing; uploaded from local copies
            from ..storage import runs as objects

            files = objects.artifacts(run)
            pin = lambda items: objects.pinned(run, items)  # noqa: E731
        for p in listed:
            rr.note(p)
        todo = sorted(rel for rel, sig in files.items()
                      if any(s.ck.artifacts.get(rel) != list(sig) for s in ctx.live()))
        for i in range(0, len(todo), _PIN_CHUNK):  # bounded: each pinned file holds a descriptor
            chunk = todo[i: i + _PIN_CHUNK]
            ctx.at(f"uploading artifacts {chunk[0]} ... of {run.artifacts_dir}")
            with pin([(run.artifacts_dir / rel, rel) for rel in chunk]) as (views, bad):
                for rel in chunk:  # reported; fails the run's report, retried every sync
                    if rel in bad:
                        source_unreadable(rr, ctx.live(), run.artifacts_dir / rel,
                                          SourceError(bad[rel]), 0)
                yield _Chunk({rel: files[rel] for rel in chunk}, views)

    def pending(self, ctx, slot: Slot, chunk: _Chunk) -> list[tuple[Any, str]]:
        return [(chunk.views[rel][0], rel) for rel in chunk.files
                if rel in chunk.views and slot.ck.artifacts.get(rel) != list(chunk.files[rel])]

    def supported(self, slot: Slot) -> bool:
        return slot.dest.capabilities.artifacts

    def unsupported(self, ctx, slot: Slot, chunk, changed) -> None:
        slot.report.add("unsupported", {"artifact": len(changed)})

    def dry(self, ctx, slot: Slot, chunk, changed) -> None:
        slot.report.artifacts_sent += len(changed)

    def call(self, ctx, slot: Slot, chunk, changed):
        return ctx.delivery.call_isolated(ctx.store, slot, slot.dest.log_artifacts, changed,
                                          lambda items: (slot.handle, items),
                                          what=f"upload {len(changed)} artifact(s)")

    def acknowledge(self, ctx, slot: Slot, chunk: _Chunk, changed, outcomes) -> None:
        for status, items, result in outcomes or ():
            if status == "ok":
                slot.report.artifacts_sent += len(items)
                continue
            # recorded as sent below: retried only once the file changes
            ctx.delivery.count_quarantined(slot, {"artifact": 1})
            ctx.delivery.quarantine(slot, None, f"artifact {items[0][1]} rejected by "
                                    f"{slot.name}: {cause_text(result)}; not retried "
                                    "until the file changes")
        for _, rel in changed:  # what was opened and sent, not what was listed
            slot.ck.artifacts[rel] = list(chunk.views[rel][1])


# -- status ---------------------------------------------------------------------------------------
class StatusFacet(Facet):
    """The run's status and end time: a manifest's ``status``/``ended_at``; for a run without
    a manifest, with ``--finish-idle`` (``ctx.idle`` not None): ``finished`` once idle, at the
    latest wall time delivered to that destination (its checkpoint's ``last_wall_time``; the
    newest event file's mtime for a checkpoint written before it was kept), and back to
    ``running`` if a run finished that way grows again."""

    name = "status"

    def units(self, ctx) -> Iterable[str]:
        ctx.at(f"sending fields 'status'/'ended_at' of {ctx.run.manifest_path}")
        if ctx.ref.status or ctx.idle is not None:
            yield "status"

    def pending(self, ctx, slot: Slot, unit) -> tuple[str, float | None] | None:
        if ctx.ref.status:
            want = (ctx.ref.status, ctx.ref.ended_at)
        elif ctx.idle:
            end = slot.ck.last_wall_time if slot.ck.last_wall_time is not None \
                else ctx.newest_mtime
            want = ("finished", end)
        elif slot.ck.status == "finished":  # finished when idle; its files changed since
            want = ("running", None)
        else:
            return None  # a plain run never finished: the destination's default (running)
        return None if (slot.ck.status, slot.ck.ended_at) == want else want

    def supported(self, slot: Slot) -> bool:
        return slot.dest.capabilities.status

    def call(self, ctx, slot: Slot, unit, item):
        status, ended = item
        ok, _ = ctx.delivery.call(ctx.store, slot, slot.dest.finish, slot.handle, status, ended,
                                  what=f"set status {status}")
        return True if ok else None

    def acknowledge(self, ctx, slot: Slot, unit, item, outcome) -> None:
        slot.ck.status, slot.ck.ended_at = item


FACETS = (ParamsFacet, EventsFacet, SidecarFacet, ArtifactsFacet, StatusFacet)


# -- reading event files: local files and objects ---------------------------------------------------
class SourceFile:
    """One event file as the events facet reads it: its size now (the signpost), how to read
    its head and its bytes. Local files: ``os.stat`` and ``open``. Objects: the size and ETag of
    the pass's listing, ranged GETs pinned to that version."""

    __slots__ = ("path", "loc", "entry", "etag")

    def __init__(self, path, loc=None, entry=None):
        self.path, self.loc, self.entry = path, loc, entry
        self.etag = entry.etag if entry is not None else ""

    @classmethod
    def of(cls, run, path) -> "SourceFile | None":
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
        from ..storage.objects import ObjectChangedError

        return isinstance(exc, ObjectChangedError)


@dataclass(frozen=True)
class _ObjectStat:
    st_size: int
    st_mtime_ns: str  # the ETag: compared for equality only (track_incomplete_tail)
    st_mtime: float


def read_guarded(reader: EventFileReader, end: int, max_points: int, rr: RunReport,
                 slots: list[Slot]):
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
            if SourceFile.changed(e):  # an object re-uploaded by its writer during the read:
                log.info("%s", e)  # what was sent is committed; the rest is read next sync
                return
            source_unreadable(rr, slots, reader.path, e, reader.status.offset)
            return
        yield batch


def source_unreadable(rr: RunReport, slots: list[Slot], path: Path, err: Exception,
                      offset: int) -> None:
    """Report a source file that cannot be read and fail the run's report for it (not the
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


def skipped_records_note(path: Path, readers: list[EventFileReader]) -> str | None:
    """One problem line for the records of a file skipped as not an Event or malformed."""
    n = sum(r.unparsable + r.refused for r in readers)
    if not n:
        return None
    details = "; ".join(d for d in (r.skip_details() for r in readers) if d)
    return (f"{path}: {n:,} record(s) skipped as undecodable (counted in skipped_records): "
            f"{details}. The records around them were synced.")


def stuck_tail_note(path: Path, tail: dict, pending: int, mtime: float) -> str:
    """The warning for an incomplete tail that a pass found exactly as the previous one did."""
    from ..inspect import iso_utc

    return (f"{path}: incomplete record at byte {tail['offset']} ({pending:,} bytes pending) "
            f"unchanged since {iso_utc(tail['since'])} (file last modified {iso_utc(mtime)}): "
            "the file no longer grows. The writer may have died mid-record; if it will not "
            "resume, the last record is lost (the records before it were synced). Nothing to do "
            "if the writer is still running (it completes the record when it next flushes).")
