"""MLflow timestamps that keep every point: pure, SDK-free.

MLflow's SQL stores (the local ``mlflow.db`` and every ``mlflow server`` on a database) key a
metric row by (run, key, timestamp in ms, step, value): two points of one tag at one step with
one value less than 1 ms apart (the Hugging Face Trainer logs ``epoch`` like that) would be one
row, while the engine counts two as sent. So within an event file the timestamp of such a
point moves forward by 1 ms until it is free: the point's timestamp is the first ms at or after
its wall time that no earlier point of the file with the same key, step and value holds.

The assignment must come out the same however the file is cut into batches and syncs (a
re-send with dedupe compares the timestamps it computes with what landed). What decides a
point's timestamp is the points before it that are still at or after the newest wall time ms
of the file (its *frontier*: a point earlier than that can no longer be reached by a later
point whose wall time moves forward; points whose clock went back stay in it until the newest
ms moves on). The frontier at a batch's end is committed with the
checkpoint (the handle's identity, ``stamps[file] = [end offset, newest ms, [[key, step,
value, ms], ...]]``, usually a handful of entries) and taken up by the batch that starts there.

Limits (README): a point whose wall time goes back more than that (a clock stepped back) is
only compared with the frontier, and points of two different event files are never compared
(their sync order differs between a first sync and a re-send); MLflow keeps one row of such a
pair. A missing or damaged state only ever leaves a pair merged as before, never a point twice:
without it a point gets its plain wall time ms, the value a first send would have given it.
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

from .mapping import canon

MAX_FRONTIER = 100_000  # entries kept per file (a state beyond it is not trusted: dropped)


def file_key(source_dir: str, path: str) -> str:
    """An event file's name in ``stamps``: relative to the run folder (a moved logdir keeps its
    state), or ``linked:<absolute path>`` for a file outside it."""
    p = os.path.abspath(path)
    try:
        rel = os.path.relpath(p, source_dir)
    except ValueError:
        rel = ".."
    return "linked:" + p if rel.startswith("..") else rel.replace(os.sep, "/")


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _frontier(state: Any, start_offset: int) -> tuple[int, list[list]]:
    """The newest ms and the frontier a batch starting at ``start_offset`` continues; nothing
    (a first batch, a state for another offset, a damaged state) starts empty."""
    if (start_offset <= 0 or not isinstance(state, list) or len(state) != 3
            or not _int(state[0]) or not 0 < state[0] <= start_offset
            or not _int(state[1]) or not isinstance(state[2], list)
            or len(state[2]) > MAX_FRONTIER):
        # state[0] < start_offset: records between were quarantined (never landed): kept
        return -1, []
    entries = []
    for e in state[2]:
        if not (isinstance(e, list) and len(e) == 4 and isinstance(e[0], str) and _int(e[1])
                and (e[2] == "nan" or (isinstance(e[2], (int, float)) and not isinstance(e[2], bool)
                                       and math.isfinite(e[2]))) and _int(e[3])):
            return -1, []
        entries.append(e)
    return state[1], entries


def stamp(state: Any, start_offset: int, end_offset: int, keys: Sequence[str],
          steps: Sequence[int], ms: Sequence[int], values: Sequence[float]
          ) -> tuple[list[int], list]:
    """Timestamps (ms) for the points of one batch ``[start_offset, end_offset)`` of one file,
    in order, and the state the next batch of the file continues (commit it only once the
    batch landed). ``state`` is what the previous batch returned (or None); ``ms`` the points'
    wall times in ms."""
    hi, entries = _frontier(state, start_offset)
    taken: dict[tuple, set[int]] = {}
    for k, s, v, t in entries:
        taken.setdefault((k, s, v), set()).add(t)
    out: list[int] = []
    for key, step, base, value in zip(keys, steps, ms, values):
        if base > hi:
            hi = base
            # what is below the newest ms can no longer be reached by a later point: forget it
            for sig in [sig for sig, ts in taken.items() if min(ts) < hi]:
                kept = {t for t in taken[sig] if t >= hi}
                if kept:
                    taken[sig] = kept
                else:
                    del taken[sig]
        sig = (key, step, canon(value))
        ts = taken.get(sig)
        t = base
        if ts is None:
            taken[sig] = {t}
        else:
            while t in ts:
                t += 1
            ts.add(t)
        out.append(t)
    # exactly what a batch going on from here would hold (points of a clock that went back are
    # in it until the newest ms moves on): a batch cut here computes what one batch would
    frontier = [[k, s, v, t] for (k, s, v), ts in taken.items() for t in sorted(ts)]
    if len(frontier) > MAX_FRONTIER:
        frontier = []  # never seen in practice; an empty state only risks a merge
    return out, [end_offset, hi, frontier]
