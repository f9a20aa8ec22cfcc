"""One sync at a time writes a ClearML run's offline sessions.

The engine locks each (run, target) in the state dir, but two syncs can write the same ClearML
run without sharing that lock: the same plain-run files synced from two LOGDIR levels (run
``exp/r1`` of ``sub``, run ``r1`` of ``sub/exp``: found to be one run by their source id, see
:mod:`.sources`) or from one level with two state dirs. Started together, both would list the
run's sessions, find the same ones (or none), and both write: into the same next session folder,
or into two tasks. So the destination takes its own lock, keyed by what identifies the ClearML
run in the offline folder: the run's session prefix (and the one its checkpoint names) and,
for a plain run, its source id with the last part of its run path (what every LOGDIR level of
the same files shares). It is taken in ``open_run`` before the sessions are listed and released
in ``close_run`` once the session is zipped, so the listing, the dedupe read-back and the
writes of one sync are never interleaved with another's.

Lock files: ``<cache>/.tracelet-offline-locks/<sha1 of the key>.lock``, next to the offline
folder ``<cache>/offline`` (which stays ClearML's own: nothing but sessions in it),
``fcntl.lockf`` through :func:`tracelet._fs.exclusive_lock` (NFS-safe, gone with the process:
a kill -9 leaves nothing stale). Held by another process: the run is skipped at once with a
"Busy" line and exit 75 (EX_TEMPFAIL), like a (run, target) lock, and synced by the next pass.
``lockf`` does not exclude the threads of one process (``--workers``, two LOGDIRs in one sync),
so this process's claims are also kept in a set: a thread waits for another thread of the same
sync (all keys at once: no deadlock; at most 10 minutes), which is not "busy".
"""
from __future__ import annotations

import hashlib
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Iterable

from ..._fs import exclusive_lock
from ...errors import LockedError

LOCK_DIR = ".tracelet-offline-locks"  # next to the offline folder
_HINT = ("Busy: another sync (another LOGDIR level of the same files, or another state dir) is "
         "writing this ClearML run now; this run is skipped and retried at the next sync "
         "(exit 75).")

_THREAD_WAIT_S = 600.0  # a run's sync in another thread of this process (a big run: minutes)
_held: set[str] = set()  # lock files this process holds (lockf does not exclude its threads)
_cond = threading.Condition()


class Claim:
    """The locks of one run's sync; :meth:`release` (idempotent) frees them."""

    def __init__(self, paths: list[str], stack: ExitStack):
        self._paths, self._stack = paths, stack
        self._done = False

    def release(self) -> None:
        with _cond:
            if self._done:
                return
            self._done = True
            try:
                self._stack.close()  # closing the lock files releases the lockf locks
            finally:
                _held.difference_update(self._paths)
                _cond.notify_all()


def lock_paths(folder: Path, keys: Iterable[str]) -> list[str]:
    """The lock files of ``keys`` for the offline folder ``folder`` (each key hashed: keys come
    from checkpoints and files), sorted."""
    return sorted({str(folder.parent / LOCK_DIR / (hashlib.sha1(k.encode()).hexdigest()[:24] + ".lock"))
                   for k in keys if k})


def claim(folder: Path, keys: Iterable[str], what: str) -> Claim:
    """Hold every lock of ``keys`` or raise :class:`~tracelet.errors.LockedError` (another
    process holds one: nothing stays held)."""
    paths = lock_paths(folder, keys)
    with _cond:
        deadline = time.monotonic() + _THREAD_WAIT_S
        while _held.intersection(paths):  # another thread of this sync: it finishes the run
            left = deadline - time.monotonic()
            if left <= 0:  # bounded: a claim never released (a bug) must not hang the sync
                raise LockedError(f"{what} is being written by another worker thread of this "
                                  "sync (the same ClearML run under another name in this "
                                  "pass). " + _HINT)
            _cond.wait(left)
        _held.update(paths)
    stack = ExitStack()
    try:
        for p in paths:
            stack.enter_context(exclusive_lock(p, what, hint=_HINT))
    except BaseException:
        with _cond:
            try:
                stack.close()
            finally:
                _held.difference_update(paths)
                _cond.notify_all()
        raise
    return Claim(paths, stack)
