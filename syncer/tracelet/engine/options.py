"""Options of a sync: what to sync where, and the seams a caller injects (retry policy,
clock, progress observer)."""
from __future__ import annotations

import os
import re
import string
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..destinations import is_known, known_destinations
from ..errors import UsageError

# Large enough to amortise one checkpoint commit (an fsync) per batch; TRACELET_BATCH_POINTS
# lowers it for fault-injection tests that need many commits in a small logdir.
DEFAULT_BATCH_POINTS = int(os.environ.get("TRACELET_BATCH_POINTS", "20000"))


class Progress:
    """What the engine tells its caller while it works (the CLI draws a bar or prints log
    lines from it: ``tracelet.output``). Every method may be called from worker threads; the
    default does nothing."""

    def begin(self, runs: int, bytes_behind: Callable[[], int] | None = None) -> None:
        """A pass starts with ``runs`` runs to look at. ``bytes_behind()`` gives the bytes of
        event files the pass has to read (the size of each changed run's files past the offset
        its destinations' checkpoints hold): it reads checkpoints, so only an observer that
        draws a bar calls it; a cron pass never does."""

    def bytes(self, n: int) -> None:
        """``n`` more bytes of event files were read (once, whatever the destinations)."""

    def points(self, n: int) -> None:
        """``n`` more source points were delivered (counted once, whatever the destinations)."""

    def run_done(self, report: Any) -> None:
        """One run's :class:`~tracelet.engine.report.RunReport` is complete."""

    def problem(self, line: str) -> None:
        """A warning outside any run (an unreadable folder, a FIFO)."""

    def error(self, line: str) -> None:
        """An error outside any run (a logdir that could not be listed): exit 1."""

    def end(self, interrupted: bool = False) -> None:
        """The pass is over; ``interrupted``: a signal cut it short (what was sent is
        committed, the rest waits for the next sync)."""


@dataclass
class SyncOptions:
    destinations: list[str] | None = None  # None: each run's manifest `backends`
    state_dir: str | None = None
    project: str | None = None
    dest_config: dict[str, Any] = field(default_factory=dict)
    shard: tuple[int, int] | None = None
    workers: int = 1
    dry_run: bool = False
    follow: bool = False
    interval_s: float = 30.0
    json_output: bool = False
    batch_points: int = DEFAULT_BATCH_POINTS
    progress: bool | None = None  # None: a progress line on a TTY, log lines otherwise
    run_filter: Any = None  # callable(RunSource) -> bool, for sync_run_dir
    stop: threading.Event | None = None  # set to drain: finish the batch in hand, commit, return
    # the one redaction rule (tracelet.redact) on params (manifest and TensorBoard hparams from
    # any writer) and manifest tags: True (default names) | False (as written) | list (these names)
    redact_secrets: bool | list[str] = True
    secret_patterns: list[str] = field(default_factory=list)
    verbose: bool = False  # an unexpected error in a run keeps its traceback (printed, in JSON)
    quiet: bool = False  # print only errors
    follow_artifact_links: bool = False  # read a run's files through links that leave the run
    # --resync: ignore the checkpoints for this pass (each run is reconciled with what the
    # destination holds, as after a lost state dir: everything is sent with dedupe)
    resync: bool = False
    # --finish-idle: a run without a manifest whose event files have not changed for this many
    # seconds is finished on every destination (end = its last event's wall time); None: never
    finish_idle_s: float | None = None
    # --run-name: the run's display name on destinations, a template of RUN_NAME_FIELDS
    # (parse_run_name); None: the default rule (tracelet.engine.naming.display_name)
    run_name: str | None = None
    # Seams (tests, embedding programs): the progress observer, the retry policy's sleep and
    # the clock the engine uses for report times.
    observer: Progress | None = None
    sleep: Callable[[float], Any] | None = None  # None: wait on ``stop`` (a signal ends it)
    clock: Callable[[], float] = time.monotonic


def parse_destinations(text: str | None, allow_empty: bool = False) -> list[str] | None:
    if text is None or not text.strip():
        return None
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if not is_known(n)]
    if unknown:
        names_known = known_destinations()
        import difflib  # only for a name that is wrong: ~13 ms at start

        close = difflib.get_close_matches(unknown[0], names_known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UsageError(f"--to: unknown destination(s) {', '.join(unknown)}; {hint}"
                         f"choose from {', '.join(names_known)}")
    return list(dict.fromkeys(names))


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r}: expected K/N, e.g. 0/4") from None
    if n < 1 or not 0 <= k < n:
        raise UsageError(f"--shard {text!r}: need 0 <= K < N")
    return k, n


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(s|m|h|d)")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | None, option: str = "--finish-idle") -> float | None:
    """``24h``, ``90m``, ``3600s``, ``2d`` (a number and one unit, nothing else) as seconds > 0."""
    if text is None:
        return None
    m = _DURATION.fullmatch(text.strip())
    seconds = float(m.group(1)) * _UNIT_S[m.group(2)] if m else 0.0
    if not m or seconds <= 0:
        raise UsageError(f"{option} {text!r}: expected a duration above zero: a number and a "
                         "unit s, m, h or d (e.g. 24h, 90m, 3600s)")
    return seconds


RUN_NAME_FIELDS = ("run_path", "name", "project")


def parse_run_name(template: str | None) -> str | None:
    """Check a ``--run-name`` template: only the fields :data:`RUN_NAME_FIELDS`, by name (no
    attribute or index access, no positional ``{}``); a format spec is allowed
    (``{name:.40}``). Returns the template."""
    if template is None:
        return None
    fields = ", ".join("{" + f + "}" for f in RUN_NAME_FIELDS)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:  # a lone "{" or "}"
        raise UsageError(f"--run-name {template!r}: {e}; write {{{{ and }}}} for braces, "
                         f"fields are {fields}") from None
    for _, field_name, spec, _ in parsed:
        if field_name is None:
            continue
        if field_name not in RUN_NAME_FIELDS:
            raise UsageError(f"--run-name {template!r}: unknown field {{{field_name}}}; the "
                             f"fields are {fields}")
        if spec and ("{" in spec or "}" in spec):
            raise UsageError(f"--run-name {template!r}: a field inside a format spec is not "
                             "allowed")
    try:
        sample = template.format(run_path="p/r", name="r", project="p")
    except (ValueError, TypeError) as e:  # a spec strings do not take ({name:d})
        raise UsageError(f"--run-name {template!r}: {e}") from None
    if not sample.strip() and not any(f for _, f, _, _ in parsed if f):
        raise UsageError(f"--run-name {template!r}: empty; use fields such as {fields}")
    return template
