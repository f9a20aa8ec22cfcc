"""Bytes behind: how much of a run's event files a sync still has to read, from ``stat`` (or
the object-store listing) and the offsets checkpoints hold. One rule for the progress bar's
total (:meth:`~.plan.Planner.bytes_behind`) and for ``tracelet status``."""
from __future__ import annotations

import os

from ..checkpoint import FileState


def event_file_size(run, path) -> int:
    """The size of one of ``run``'s event files now: ``stat``, or the pass's listing for a run
    in object storage (:class:`FileNotFoundError` when the listing no longer has it)."""
    if run.location is None:
        return os.stat(path).st_size
    entry = run.location.entry(path)
    if entry is None:
        raise FileNotFoundError(str(path))
    return entry.size


def file_key(run, path) -> str:
    """The name a checkpoint keeps an event file's state under (``linked:`` + path for the
    files of a linked logdir, which lie outside the run folder)."""
    try:
        return path.relative_to(run.path).as_posix()
    except ValueError:
        return "linked:" + str(path)


def unread(fs: FileState | None, size: int) -> int:
    """Bytes of a file (``size`` now) that a sync resuming from ``fs`` reads; a file without a
    state is read whole, one marked corrupt or replaced is never read again (0)."""
    if fs is None:
        return size
    if fs.corrupt_offset is not None or fs.replaced:
        return 0
    return max(size - fs.offset, 0)
