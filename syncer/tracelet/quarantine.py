"""Quarantine: a point, param, file or sidecar part a destination refuses for good is reported
and skipped, so it never fails its run on every sync while the rest of the run waits.

Two layers:

1. **At the mapping** each destination leaves out what its vendor can never take (an image it
   cannot decode: :mod:`tracelet.media`) and returns it from ``send`` as a ``Rejected``.
2. **The safety net** (this module, driven by ``SyncEngine``): when a call fails with a
   permanent (non-transient) vendor error, the batch is re-read record by record and resent in
   halves, in file order, with ``dedupe=True`` (a half-landed batch is never doubled) until the
   records that fail alone are found; the others land. Params and artifact files are split the
   same way; a sidecar part is one unit.

A refused item is counted per kind (``quarantined`` in the report and the checkpoint) and named
in one report line (destination, kind, tag, step, file and byte range, the error); its bytes
are committed as done, so it is never sent again. Telling a bad item from a destination that
refuses everything (:func:`destination_wide`, :class:`Isolation`):

- the destination's ``open_run`` failing, or a ``DestinationError`` Tracelet raises on purpose:
  the destination fails, as before;
- an error the vendor boundary classified as the destination's (``Destination.classify``:
  permission / 401 / 403, not found or deleted, not active, read-only, disk full, or a
  programming error such as ``TypeError``: a bug must not drop data): the destination fails;
- otherwise, items that fail alone are quarantined, unless nothing of the unit landed and two
  or more items failed alone while no other write to that destination succeeded in this sync
  ("every single point fails alone"), or 16 failed alone before any landed (this also bounds
  the calls spent on a destination refusing everything): then the destination fails (it is
  retried at the next sync; nothing is quarantined). A unit holding one item that fails is
  quarantined: it cannot be told apart otherwise, and retrying it forever is what this
  module exists to prevent.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .errors import PermanentDestinationError, SourceError
from .reader.points import AUDIO, HISTOGRAM, HPARAMS, IMAGE, SCALAR, TEXT, Batch

# A unit (batch, param set, file list) where nothing landed: this many items failing alone make
# the destination the suspect, not the items (two without any other write in this sync).
SUSPECT_WITHOUT_WRITES = 2
SUSPECT_ALWAYS = 16
MAX_LINES = 100  # report lines kept per destination and run (counts are always complete)

_LISTS = {HISTOGRAM: "histograms", IMAGE: "images", TEXT: "texts", AUDIO: "audio",
          HPARAMS: "hparams"}
_POINT_KINDS = (SCALAR, HISTOGRAM, IMAGE, TEXT, AUDIO)

def destination_wide(exc: BaseException) -> bool:
    """True when a failure is the destination's rather than the content's: anything but a
    :class:`PermanentDestinationError`. The vendor boundary (``Destination.classify``) decided
    that from the vendor's error type, errno, HTTP status or error code."""
    return not isinstance(exc, PermanentDestinationError)


# ---------------------------------------------------------------------------------------------
# batches: records, halves, where a point lives
# ---------------------------------------------------------------------------------------------
def record_batches(batch: Batch, tag_plugins: dict[str, str]) -> list[Batch]:
    """``batch`` re-read as one batch per event record (``max_points=1``: the reader seals a
    batch after each record with a point), each with its own byte range. ``tag_plugins`` is the
    map as of ``batch.start_offset``. Empty when the file cannot be read again."""
    from .reader import EventFileReader

    reader = EventFileReader(batch.path, batch.start_offset, tag_plugins)
    try:
        out = [b for b in reader.batches(end=batch.end_offset, max_points=1)]
    except (OSError, SourceError):  # gone or unreadable since: the caller cannot isolate
        return []
    for b in out:
        b.clamp_wall_times()  # as the engine did to the batch (every destination gets 0)
    # Records without points (the file header, graphs) ride with the next record; a trailing
    # one joins the last record so the ranges still cover the batch exactly.
    if len(out) > 1 and not out[-1].points:
        out[-2:] = [merge(out[-2:])]
    return out


def merge(parts: Sequence[Batch]) -> Batch:
    """Consecutive batches of one file as one batch (their byte ranges must touch)."""
    if len(parts) == 1:
        return parts[0]
    first, last = parts[0], parts[-1]
    out = Batch(path=first.path, start_offset=first.start_offset, end_offset=last.end_offset,
                tag_plugins=dict(last.tag_plugins))
    for p in parts:
        c = p.scalars
        out.scalars.tags.extend(c.tags)
        out.scalars.steps.extend(c.steps)
        out.scalars.wall_times.extend(c.wall_times)
        out.scalars.values.extend(c.values)
        for name in _LISTS.values():
            getattr(out, name).extend(getattr(p, name))
        for k, n in p.other.items():
            out.count_other(k, n)
        out.records += p.records
        out.skipped_records += p.skipped_records
    return out


def same_points(a: Batch, b: Batch) -> bool:
    """The re-read holds what the failed batch held (the file did not change under us)."""
    return (a.point_counts() == b.point_counts() and a.start_offset == b.start_offset
            and a.end_offset == b.end_offset)


def point(batch: Batch, kind: str, index: int) -> Any:
    if kind == SCALAR:
        c = batch.scalars
        return (c.tags[index], c.steps[index])
    return getattr(batch, _LISTS[kind])[index]


def locate(records: Sequence[Batch], kind: str, index: int) -> Batch | None:
    """The record holding the ``index``-th point of ``kind`` of the records' concatenation."""
    for r in records:
        n = len(r.scalars) if kind == SCALAR else len(getattr(r, _LISTS[kind]))
        if index < n:
            return r
        index -= n
    return None


def point_counts(batch: Batch) -> dict[str, int]:
    """Points of each kind ``send`` carries (hparams travel as params)."""
    return {k: n for k, n in batch.point_counts().items() if n and k != HPARAMS}


# ---------------------------------------------------------------------------------------------
# report lines
# ---------------------------------------------------------------------------------------------
def _plural(kind: str, n: int) -> str:
    return kind if n == 1 else {"audio": "audio clips", "hparams": "hparams"}.get(kind, kind + "s")


def where(path: str, start: int, end: int, run_dir: str | None = None) -> str:
    name = path
    if run_dir:
        try:
            rel = os.path.relpath(path, run_dir)
            name = path if rel.startswith("..") else rel
        except ValueError:
            pass
    return f"{name}: bytes {start}\u2013{end}"


def describe_points(batch: Batch) -> str:
    """``1 image 'samples' step 40`` / ``3 points ('loss' steps 1-3, ...)`` for a record."""
    items = []
    for kind in _POINT_KINDS:
        if kind == SCALAR:
            pts = list(zip(batch.scalars.tags, batch.scalars.steps))
        else:
            pts = [(p.tag, p.step) for p in getattr(batch, _LISTS[kind])]
        if pts:
            items.append((kind, pts))
    if not items:
        return "no points"
    parts = []
    for kind, pts in items:
        tags = sorted({t for t, _ in pts})
        steps = sorted({s for _, s in pts})
        step_text = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}..{steps[-1]}"
        tag_text = repr(tags[0]) if len(tags) == 1 else f"{len(tags)} tags ({tags[0]!r}, ...)"
        parts.append(f"{len(pts)} {_plural(kind, len(pts))} {tag_text} {step_text}")
    return ", ".join(parts)


def cause_text(err: BaseException) -> str:
    """The vendor's own error (``Type: message``) behind a wrapped destination error, with any
    credential scrubbed (``redact.scrub``)."""
    from .redact import scrub

    cause = err.__cause__ if isinstance(err, PermanentDestinationError) and err.__cause__ else None
    return one_line(scrub(f"{type(cause).__name__}: {cause}" if cause is not None else str(err)))


def one_line(err: BaseException | str, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# isolation: bisect a refused unit, in order
# ---------------------------------------------------------------------------------------------
class Suspect(Exception):
    """The destination, not the items, is refusing: fail it (nothing is quarantined)."""

    def __init__(self, message: str, cause: BaseException):
        super().__init__(message)
        self.cause = cause


@dataclass
class Isolation:
    """Send ``items`` (consecutive units: records, params, files) in order, in halves, until
    each failing item is alone. ``send(items)`` raises on refusal. Outcomes come back in order
    as ``("ok", items, result)`` / ``("bad", [item], error)``; nothing is decided while an
    item is suspect, so the caller commits only after :meth:`run` returned."""

    send: Callable[[list], Any]
    wrote_before: bool  # a write to this destination succeeded earlier in this sync
    outcomes: list[tuple[str, list, Any]] = field(default_factory=list)
    landed: int = 0
    failed: int = 0

    def run(self, items: list, first_error: BaseException) -> list[tuple[str, list, Any]]:
        self._split(items, first_error)
        if self.landed == 0 and self.failed >= SUSPECT_WITHOUT_WRITES and not self.wrote_before:
            raise Suspect(self._suspect_text(first_error), first_error)
        return self.outcomes

    def _split(self, items: list, error: BaseException) -> None:
        if len(items) == 1:
            self._bad(items, error)
            return
        mid = len(items) // 2
        for part in (items[:mid], items[mid:]):
            self._try(part)

    def _try(self, items: list) -> None:
        try:
            result = self.send(items)
        except PermanentDestinationError as e:
            if destination_wide(e):
                raise  # the destination's own failure, as it was raised
            self._split(items, e)
            return
        self.landed += 1
        self.outcomes.append(("ok", items, result))

    def _bad(self, items: list, error: BaseException) -> None:
        self.failed += 1
        if self.landed == 0 and self.failed >= SUSPECT_ALWAYS:  # bounds the calls spent
            raise Suspect(self._suspect_text(error), error)
        self.outcomes.append(("bad", items, error))

    def _suspect_text(self, error: BaseException) -> str:
        return (f"{self.failed} items were each refused alone and none landed: taken as a "
                f"failure of the destination, not of the items; retried at the next sync "
                f"(last error: {one_line(error)})")
