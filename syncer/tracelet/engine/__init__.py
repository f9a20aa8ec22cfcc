"""The sync engine: discover runs, plan reads, drive the checkpoint protocol per destination.

::

    plan.py      discover runs (local walk or object listing) ─► shard ─► run ids ─► unchanged?
    protocol.py  per run (locked): checkpoints ─► open_run ─► facets ─► close ─► commit
    facets.py    params ─► events ─► sidecar ─► artifacts ─► status: pending → call → acknowledge
    delivery.py  retry policy, capability filter, quarantine, landing a batch
    pool.py      destinations per worker thread; target keys
    options.py   SyncOptions and the Progress observer;  report.py  reports and exit codes
    runner.py    SyncEngine (passes, workers) and run_sync;  signals.py  SIGTERM/SIGINT drain

    per event file:  size at start = signpost
                     pending_end := signpost  (committed BEFORE the first send)
                     read [min offset, signpost) once ─► each batch to every destination
                     whose offset it starts at ─► on success commit that destination's offset

Each destination has its own checkpoint, so a destination that is down fails alone and catches
up later from its own offset; the source is still read once per batch (segments are split at
each lagging destination's offset so it joins exactly where it stopped).

The engine imports destinations through their registry only, and never the presentation side
(``tracelet.output``): callers pass a :class:`Progress` observer.
"""
from __future__ import annotations

from ..faults import crash_point  # noqa: F401  (kept importable here)
from ..params import param_text  # noqa: F401
from ..reader import EventFileReader  # noqa: F401  (tests substitute it here; facets look it up)
from .options import (DEFAULT_BATCH_POINTS, Progress, SyncOptions, parse_destinations,
                      parse_duration, parse_run_name, parse_shard)
from .plan import in_shard, object_state_dir, run_id_for, source_signature, state_dir_for
from .report import EXIT_LOCKED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, DestReport, RunReport, SyncReport
from .reset import ResetReport, reset_runs
from .runner import SyncEngine, run_sync

__all__ = [
    "DEFAULT_BATCH_POINTS", "DestReport", "EXIT_LOCKED", "EXIT_OK", "EXIT_PARTIAL", "EXIT_USAGE",
    "Progress", "RunReport", "SyncEngine", "SyncOptions", "SyncReport", "in_shard",
    "object_state_dir", "parse_destinations", "parse_duration", "parse_run_name", "parse_shard",
    "run_id_for", "run_sync",
    "source_signature", "state_dir_for", "sync", "sync_run_dir",
]


def __getattr__(name: str):  # the Python API lives in tracelet.api (it chooses an observer)
    if name in ("sync", "sync_run_dir"):
        from .. import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
