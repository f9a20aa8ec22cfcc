"""The run's W&B Duration (``_wandb.runtime``) from the source, not from the sync.

W&B's Duration is the summary's ``_wandb.runtime``, and no client sends it: wandb-core (0.31)
writes it, with ``_runtime``, at every history flush and at the exit record from its own
stopwatch (``handler.go``: ``updateRunTiming`` ← ``handleExit``/``flushPartialHistory``), and
``wandb sync`` uploads the summary records of a ``.wandb`` file as written (``runsync`` sends
records to the Sender only). Offline, nothing moves that stopwatch's start: the offset a resumed
run starts from (``RunUpserter.StartRuntime``) is set only when there is a server to ask; so
every fragment of a synced run ends with the seconds its sync took.

The one switch wandb-core honours is ``x_server_side_derived_summary`` ("delegate automatic
computation of summary from history to the server; does not disable user-provided summary
updates"): with it, wandb-core writes neither the timing nor the derived summary, and the
summary records the client publishes are the only ones. A fragment without history rows has no
derived summary to lose, so ``close_run`` adds one more fragment to each run it wrote to,
holding only the run's summary (each scalar's last value, the environment record, the start
time) with ``_wandb.runtime``/``_runtime`` = :func:`duration`, under that setting, then the
run's state (preempting while it runs) and its exit record (the client's ``_close_fragment``).
It is the run's last fragment in ``wandb sync``'s upload order (the order of the fragments'
first Run records), and summary records are updates, so the history-derived summary of the
earlier fragments stays as it was. It costs ~14 ms a run offline (``scripts/bench_wandb.py
--runs 50``).

Online, this is not done: a second ``wandb.init`` per run and sync would cost a round of server
calls (UpsertBucket, the resume query, a file stream), and no W&B server is there to test it
against. An online run's Duration is W&B's own count (online, wandb-core starts a resumed run's
stopwatch at the runtime the server holds, so it is the sum of the syncs' seconds).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from ..base import RunRef

MAX_SECONDS = 2 ** 31 - 1  # W&B keeps a run's runtime as an int32 (RunRecord, RunExitRecord)


def duration(run: RunRef, ident: Mapping[str, Any]) -> int | None:
    """Whole seconds (as W&B counts them) from the run's start — ``RunRef.started_at``, else the
    first event's wall time — to its end: the end the status was set with (manifest
    ``ended_at``; ``--finish-idle``: the newest wall time delivered), else the newest scalar
    wall time delivered. None when the start is unknown; never negative, at most
    :data:`MAX_SECONDS` (the times come from files and checkpoints anyone may have written)."""
    start = run.started_at if run.started_at is not None else ident.get("first_wall")
    if not _usable(start):
        return None
    end = ident.get("ended_at")
    if not _usable(end):
        end = run.ended_at
    if not _usable(end):
        walls = [v[0] for v in (ident.get("summary") or {}).values()
                 if isinstance(v, (list, tuple)) and v and _usable(v[0])]
        end = max(walls) if walls else start
    return min(MAX_SECONDS, max(0, int(math.floor(float(end) - float(start)))))


def summary_record(seconds: int):
    """The summary record wandb-core's ``updateRunTiming`` writes, with ``seconds``."""
    from wandb.proto import wandb_internal_pb2 as pb

    rec = pb.SummaryRecord()
    rec.update.add(nested_key=["_wandb", "runtime"], value_json=str(seconds))
    rec.update.add(key="_runtime", value_json=str(seconds))
    return rec


def _usable(t) -> bool:
    return isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0
