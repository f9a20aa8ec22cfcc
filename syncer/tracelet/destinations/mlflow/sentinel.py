"""Is what the checkpoint says was sent still in the MLflow run? One point answers it: pure,
SDK-free.

A store restored from an older copy (a database backup, a copied ``mlruns/``) keeps the run the
checkpoint names — same id, same tags — but not the points sent since the copy was made; a
checkpoint trusted then leaves them out for good. So the identity keeps a *sentinel*: after
each batch lands, its point with the highest (step, timestamp) — ``[key, step, timestamp ms]``.
MLflow's run record carries, per metric key, its latest point by (step, timestamp, value) (both
the SQL and the file store), and ``open_run``/``check_run`` already read that record
(``get_run``). The sentinel was stored, so that key's latest point is at or after it; a latest
point before it (or no such key) means the sentinel, and the points sent with or after it, are
gone: drift, and the engine re-sends the whole run, deduplicated against what is still there.

A restore that lost only points of other keys, or of this key below an earlier, higher step (a
restarted training's steps go back), is not seen this way; ``--resync`` re-sends everything
with dedupe in any case.
"""
from __future__ import annotations

import math
from typing import Any, Sequence


def sentinel_of(metrics: Sequence[Any]) -> list | None:
    """``[key, step, timestamp]`` of the metric with the highest (step, timestamp) among
    ``metrics`` (``mlflow.entities.Metric``-like) whose value MLflow stores as is (finite);
    None if none is."""
    best = None
    for m in metrics:
        if not (isinstance(m.value, float) and math.isfinite(m.value)):
            continue
        if best is None or (m.step, m.timestamp) > (best.step, best.timestamp):
            best = m
    return None if best is None else [best.key, int(best.step), int(best.timestamp)]


def sentinel_gone(run: Any, sentinel: Any) -> str | None:
    """What of ``sentinel`` the MLflow ``run`` (its latest point per key) no longer holds, as
    words for the drift line; None when it holds it, or when the sentinel or the run's record
    cannot tell (an older checkpoint, a damaged one, another MLflow)."""
    if not (isinstance(sentinel, list) and len(sentinel) == 3 and isinstance(sentinel[0], str)
            and all(isinstance(x, int) and not isinstance(x, bool) for x in sentinel[1:])):
        return None
    key, step, ts = sentinel
    latest = getattr(getattr(run, "data", None), "_metric_objs", None)
    if not isinstance(latest, list):
        return None
    for m in latest:
        if getattr(m, "key", None) == key:
            if (m.step, m.timestamp) >= (step, ts):
                return None
            return (f"metric '{key}' at step {step} (its latest point is step {m.step}, "
                    f"timestamp {m.timestamp})")
    return f"metric '{key}' (step {step}; the run has no such metric)"
