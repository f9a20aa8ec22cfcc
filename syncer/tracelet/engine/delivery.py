"""Delivering to one destination: the retry policy, quarantine, and the acknowledgement.

Every destination call of the protocol goes through :class:`Delivery`:

* :meth:`Delivery.call` — one call under the retry policy; on final failure the slot (this
  destination, for this run) fails, its checkpoint is committed, the others go on;
* :meth:`Delivery.call_isolated` — the same, but a permanent refusal of the content is split
  down to the items that fail alone, which are quarantined (``tracelet.quarantine``);
* :meth:`Delivery.deliver` — one batch of event points: the capability filter (a destination
  is never sent a kind it does not declare), send, isolate on refusal, then
  :meth:`Delivery.land` the batch (offset, counts) and commit.

Every call passes the destination target's circuit breaker (:mod:`.breaker`): once a call ran
out of retries, the target's other calls of the pass are not made (``DestinationDownError``).

A send is retried with ``dedupe=True`` after its first attempt (a failed send may have landed in
part), and every send after a crash point ``after_send`` is where a kill -9 test lands.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable

from ..checkpoint import KEY_SCHEME, CheckpointStore, FileState
from ..destinations.base import send_outcome
from ..errors import DestinationDownError, DestinationError, RetriesExhaustedError
from ..faults import crash_point
from ..quarantine import (MAX_LINES as QUARANTINE_LINES, Isolation, Suspect, cause_text,
                          describe_points, destination_wide, locate, merge, point, point_counts,
                          record_batches, same_points, where)
from ..reader.points import HPARAMS, SCALAR, Batch, ScalarColumns
from ..redact import scrub, scrubbed_logger
from ..retry import call_with_retry
from .breaker import Breakers
from .plain import note_wall_time
from .report import RunReport
from .slot import Slot

log = scrubbed_logger("tracelet.sync")


def supported_view(batch: Batch, kinds: frozenset[str]) -> Batch:
    """``batch`` with only the point kinds a destination declares (hparams never: they travel
    as params). The lists kept are the batch's own, so indexes into them (``Rejected``) hold."""
    drop = {"hparams"}
    if SCALAR not in kinds and len(batch.scalars):
        drop.add("scalars")
    for kind, name in (("histogram", "histograms"), ("image", "images"), ("text", "texts"),
                       ("audio", "audio")):
        if kind not in kinds and getattr(batch, name):
            drop.add(name)
    if drop == {"hparams"} and not batch.hparams:
        return batch
    changes: dict[str, Any] = {name: [] for name in drop}
    if "scalars" in drop:
        changes["scalars"] = ScalarColumns()
    return dataclasses.replace(batch, **changes)


def dedupe_retries(send: Callable) -> Callable:
    """A send that failed may have landed in part (a vendor call cut mid-batch): every attempt
    after the first is made with ``dedupe=True``, so a retry never stores a point twice."""
    attempts = 0

    def call(*args: Any, dedupe: bool, **kw: Any) -> Any:
        nonlocal attempts
        attempts += 1
        return send(*args, dedupe=dedupe or attempts > 1, **kw)

    return call


class Delivery:
    """Calls into destinations for one sync (shared by its worker threads)."""

    def __init__(self, stop, dry_run: bool, progress, sleep=None):
        self.stop = stop
        self.dry_run = dry_run
        self.progress = progress
        self.sleep = sleep
        self.breakers = Breakers()  # per destination target, shared by the worker threads
        # destinations that accepted a write in this sync: evidence, when a call is refused,
        # that the refused content is bad rather than the destination (tracelet.quarantine)
        self.wrote: set[str] = set()

    # -- calls ----------------------------------------------------------------------------------
    def retry(self, slot: Slot, fn: Callable, *args: Any, what: str, **kw: Any) -> Any:
        """One call under the retry policy and the target's circuit breaker: raises
        ``DestinationDownError`` without calling when the breaker is open, and opens it when
        the call runs out of retries (or several runs' calls fail at once: ``breaker``)."""
        breaker = self.breakers.get(slot.name, slot.target_key)
        breaker.admit(self.stop)
        what = f"{slot.name}: {what}"
        try:
            result = call_with_retry(
                fn, *args, what=what, stop=self.stop, abort=breaker.down,
                on_retry=breaker.failed_try,
                sleep=self.sleep or (lambda s: breaker.wait(s, self.stop)), **kw)
        except RetriesExhaustedError as e:
            breaker.trip(e, what)
            raise
        except DestinationDownError as e:
            # opened (by this run's failure or another's) while this call waited to try again:
            # it did try, so it failed (not skipped), and says why it stopped trying
            err = RetriesExhaustedError(
                f"{what}: {breaker.cause} (gave up: the destination is down, {breaker.why}; it "
                "is retried at the next sync)")
            err.cause, err.detail = breaker.cause, breaker.detail
            raise err from e
        except DestinationError:
            breaker.answered()  # it answered, with a refusal: the destination is up
            raise
        except BaseException:
            breaker.release()
            raise
        breaker.answered()
        return result

    def call(self, store: CheckpointStore, slot: Slot, fn: Callable, *args: Any, what: str,
             **kw: Any) -> tuple[bool, Any]:
        """A destination call under the retry policy. On final failure the slot fails (only
        this destination; the others go on), its checkpoint is committed, and (False, None)."""
        try:
            return True, self.retry(slot, fn, *args, what=what, **kw)
        except DestinationError as e:
            slot.fail(e)
            self.commit(store, slot)
            return False, None

    def commit(self, store: CheckpointStore, slot: Slot) -> None:
        if self.dry_run or slot.dest is None:
            return
        if slot.handle is None and slot.report.state == "skipped":
            return  # its breaker was open before the run was opened: the checkpoint stays as is
        store.commit(slot.target_key, slot.run_path, slot.ck)

    def call_isolated(self, store: CheckpointStore, slot: Slot, fn: Callable, items: list,
                      args: Callable[[list], tuple], what: str,
                      **kw: Any) -> list[tuple[str, list, Any]] | None:
        """``fn(*args(items), **kw)`` under the retry policy; a permanent refusal is split down
        to the items that fail alone (:class:`Isolation`). Returns the outcomes in order, or
        None when the destination failed (the slot is failed and committed)."""
        try:
            result = self.retry(slot, fn, *args(items), what=what, **kw)
            self.wrote.add(slot.name)
            return [("ok", items, result)]
        except DestinationError as e:
            if destination_wide(e):
                slot.fail(e)
                self.commit(store, slot)
                return None
            error = e
        iso = Isolation(lambda part: self.retry(slot, fn, *args(part), what=what, **kw),
                        wrote_before=slot.name in self.wrote)
        try:
            outcomes = iso.run(items, error)
        except (Suspect, DestinationError) as e:
            slot.fail(DestinationError(f"{slot.name}: {what}: {e}") if isinstance(e, Suspect) else e)
            self.commit(store, slot)
            return None
        if iso.landed:
            self.wrote.add(slot.name)
        return outcomes

    # -- event batches ------------------------------------------------------------------------
    def deliver(self, store: CheckpointStore, slot: Slot, fs: FileState, batch: Batch,
                dedupe: bool, plugins: dict[str, str], rr: RunReport) -> bool:
        """Send one batch and commit it. A permanent refusal is isolated record by record
        (:meth:`isolate`); what fails alone is quarantined, the rest lands."""
        view = supported_view(batch, slot.dest.capabilities.kinds)
        if not view.points:  # nothing this destination takes: acknowledged as unsupported
            self.land(slot, fs, batch, {})
            self.commit(store, slot)
            return True
        what = f"send {view.points} points of {batch.path}"
        try:
            result = self.retry(slot, dedupe_retries(slot.dest.send), slot.handle, view,
                                dedupe=dedupe, what=what)
        except DestinationError as e:
            if destination_wide(e):
                slot.fail(e)
                self.commit(store, slot)
                return False
            return self.isolate(store, slot, fs, batch, plugins, rr, e)
        self.wrote.add(slot.name)
        crash_point("after_send")
        rejected, _ = send_outcome(result)
        records = (record_batches(batch, plugins) or [batch]) if rejected else [batch]
        self.land(slot, fs, batch, self.rejected(slot, rr, batch, records, result))
        self.commit(store, slot)
        return True

    def isolate(self, store: CheckpointStore, slot: Slot, fs: FileState, batch: Batch,
                plugins: dict[str, str], rr: RunReport, error: DestinationError) -> bool:
        records = record_batches(batch, plugins)
        if not records or not same_points(merge(records), batch):  # the file changed under us
            slot.fail(error)
            self.commit(store, slot)
            return False
        # Sub-batches move the destination's own state (W&B point ordinals, ClearML copy
        # numbers); if the destination is found guilty, that state goes back to what the
        # checkpoint holds, and the next sync resends the range with dedupe.
        saved = copy.deepcopy(slot.handle.identity)
        kinds = slot.dest.capabilities.kinds

        def send(items: list[Batch]) -> Any:
            sub = merge(items)
            result = self.retry(
                slot, slot.dest.send, slot.handle, supported_view(sub, kinds), dedupe=True,
                what=f"send {sub.points} points of {batch.path} (bytes {sub.start_offset}-"
                     f"{sub.end_offset}, isolating a refused record)")
            crash_point("after_send")
            return result

        iso = Isolation(send, wrote_before=slot.name in self.wrote)
        try:
            outcomes = iso.run(records, error)
        except (Suspect, DestinationError) as e:
            slot.handle.identity.clear()
            slot.handle.identity.update(saved)
            slot.fail(DestinationError(f"{slot.name}: {e}") if isinstance(e, Suspect) else e)
            self.commit(store, slot)
            return False
        if iso.landed:
            self.wrote.add(slot.name)
        for status, items, result in outcomes:
            sub = merge(items)
            if status == "ok":
                quarantined = self.rejected(slot, rr, sub, items, result)
            else:
                quarantined = {k: n for k, n in point_counts(sub).items()
                               if k in kinds or k == HPARAMS}
                self.quarantine(slot, rr, f"{describe_points(sub)} rejected by {slot.name}: "
                                f"{cause_text(result)} ({self.where(slot, sub)}); not retried")
            self.land(slot, fs, sub, quarantined)
        self.commit(store, slot)  # once: offsets and the destination's state move together
        return True

    def rejected(self, slot: Slot, rr: RunReport, batch: Batch, records: list[Batch],
                 result) -> dict[str, int]:
        """Quarantine the points ``send`` left out (layer 1: the mapping): one line each,
        naming the record that holds the point (``records``: ``batch`` record by record).
        Points the destination said it already held are counted as ``points_present``."""
        rejected, present = send_outcome(result)
        slot.report.points_present += present
        counts: dict[str, int] = {}
        for r in rejected:
            counts[r.kind] = counts.get(r.kind, 0) + 1
            rec = locate(records, r.kind, r.index) or batch
            p = point(batch, r.kind, r.index)
            tag, step = p if r.kind == SCALAR else (p.tag, p.step)
            self.quarantine(slot, rr, f"1 {r.kind} {tag!r} step {step} rejected by {slot.name}: "
                            f"{r.reason} ({self.where(slot, rec)}); not retried")
        return counts

    @staticmethod
    def where(slot: Slot, b: Batch) -> str:
        return where(b.path, b.start_offset, b.end_offset, slot.run_dir)

    def quarantine(self, slot: Slot, rr: RunReport | None, line: str) -> None:
        line = scrub(line)  # vendor error text: never a credential in a report or checkpoint
        log.info("%s: %s", slot.ck.run_path, line)
        for lines in (slot.report.quarantine, slot.ck.quarantine):
            lines.append(line)
            del lines[:-QUARANTINE_LINES]

    @staticmethod
    def count_quarantined(slot: Slot, counts: dict[str, int]) -> None:
        slot.ck.add_counts("quarantined", counts)
        slot.report.add("quarantined", counts)

    def land(self, slot: Slot, fs: FileState, batch: Batch, quarantined: dict[str, int]) -> None:
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
        note_wall_time(slot.ck, batch)  # a plain run's end time (--finish-idle)
        for name, counts in (("points_sent", sent), ("unsupported", unsupported),
                             ("other", batch.other), ("quarantined", quarantined)):
            slot.ck.add_counts(name, counts)
            slot.report.add(name, counts)
        slot.report.skipped_records += batch.skipped_records

    # -- key mapping notes ----------------------------------------------------------------------
    def note_keys(self, slot: Slot, batch: Batch) -> None:
        """Report each tag the destination renames, and tags that would meet (``keys.py``)."""
        tags = set(batch.scalars.tags)
        for name in ("histograms", "images", "texts", "audio"):
            tags.update(p.tag for p in getattr(batch, name))
        if tags:
            self.key_notes(slot, slot.ledger().note("m", sorted(tags), slot.dest.metric_key))

    def key_notes(self, slot: Slot, lines: list[str]) -> None:
        if not lines:
            return
        if slot.legacy_keys:
            slot.legacy_keys = False
            lines.append(f"this run was synced to {slot.name} before tracelet's key scheme "
                         f"{KEY_SCHEME}: the points a renamed tag sent then stay under its old "
                         "key (README: Key mapping)")
        slot.report.keys.extend(lines)
