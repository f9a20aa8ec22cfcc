"""The Python API of ``tracelet sync``: :func:`sync` and the recorder's :func:`sync_run_dir`.

Both print one line per run and destination that changed to stderr (``tracelet.output``) unless
``json_output=True``, and return the :class:`~tracelet.engine.SyncReport`; :func:`sync` ends
each pass with the summary line of ``tracelet sync``, :func:`sync_run_dir` (live mode) does not.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .engine import SyncOptions, SyncReport, parse_destinations, run_sync


def _options(summary: bool = True, **kw: Any) -> SyncOptions:
    opts = SyncOptions(**kw)
    if opts.observer is None:
        from .output import Output

        opts.observer = Output(opts, summary=summary)
    return opts


def sync(logdir: str | os.PathLike, to: str | list[str] | None = None, **kw: Any) -> SyncReport:
    """``tracelet.sync("runs", to="mlflow")``: ``to`` a name, a comma-separated string or a
    list; None or empty: each run's manifest ``backends``. Other keywords: ``SyncOptions``."""
    text = to if isinstance(to, str) or to is None else ",".join(to)
    kw.setdefault("progress", False)
    return run_sync([os.fspath(logdir)], _options(destinations=parse_destinations(text), **kw))


def sync_run_dir(run_dir: str | os.PathLike, backends: list[str] | str | None = None,
                 logdir: str | os.PathLike | None = None, **kw: Any) -> SyncReport:
    """Sync one run directory (the recorder's live mode). Its name on destinations is its path
    relative to ``logdir`` (default: two levels up, ``<logdir>/<project>/<name>``), the same as
    a later ``tracelet sync <logdir>`` would use, so both share checkpoints."""
    run_dir = Path(run_dir).resolve()
    root = Path(logdir).resolve() if logdir else run_dir.parent.parent
    dests = None
    if backends:
        dests = parse_destinations(backends if isinstance(backends, str) else ",".join(backends))
    kw.setdefault("progress", False)
    # live mode syncs every interval from the training process: its log gets the lines of
    # what changed, not a summary line per pass
    opts = _options(summary=False, destinations=dests,
                    run_filter=lambda r: r.path.resolve() == run_dir, **kw)
    return run_sync([str(root)], opts)
