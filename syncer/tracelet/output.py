"""What a sync shows while it runs (the presentation side of the engine's :class:`Progress`).

* On a TTY: a progress bar on stderr (``rich``, imported only then) that advances by the bytes
  of event files read, with the runs done, the points delivered (once, whatever the number of
  destinations) and an ETA. Errors and warnings print above it as they happen; ``-v`` adds the
  per-destination lines.
* Otherwise (cron): one line per run and destination that changed, one per warning or error,
  each starting with an ISO-8601 UTC timestamp and naming the destination's target.
* Every pass ends with one summary line (also when nothing changed; with ``--follow`` one per
  pass), and a pass cut short by a signal says ``interrupted — run sync again``.

``-q`` prints errors only (no summary); ``--json`` off a TTY prints nothing (the report says it
all). Every line is scrubbed of credentials. The engine never imports this module: the CLI and
:mod:`tracelet.api` pass an :class:`Output` as ``SyncOptions.observer``.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .engine.options import Progress, SyncOptions
from .engine.report import DestReport, RunReport
from .redact import scrub

MAX_PRINTED_LINES = 10  # per run, destination and kind of line on stderr; all are in --json

ERROR, WARNING, INFO = "error", "warning", "info"

INTERRUPTED = ("interrupted — run sync again: what was sent is committed, the next sync "
               "continues from there")


def iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def dest_label(d: DestReport) -> str:
    """``mlflow (http://host:5000)``: the destination and its target (no credentials)."""
    return f"{d.destination} ({d.target})" if d.target and d.target != d.destination \
        else d.destination


def dest_text(d: DestReport) -> str:
    """What happened on one destination: ``synced scalar 120, system 9``, ``confirmed 120
    already present`` (a dedupe send that found every point there), ``failed: ...``."""
    present = min(d.points_present, d.points)
    if d.state == "synced" and present and present == d.points:
        text = f"confirmed {present:,} already present"
    else:
        text = d.state
        if d.points_sent:
            text += " " + _counts(d.points_sent)
        if present:
            text += f" ({present:,} of them already present)"
    if d.unsupported:
        text += f" (unsupported: {_counts(d.unsupported)})"
    if d.quarantined:
        text += f" (quarantined: {_counts(d.quarantined)})"
    if d.error:
        text += f": {d.error}"
    return text


def run_lines(rr: RunReport, verbose: bool = False) -> list[tuple[str, str]]:
    """Every line one run's report gives, with its level (error, warning, info), in order:
    per destination its state line, param conflicts, quarantined items and renamed keys; then
    records of kinds no destination takes; then the run's errors and problems. A destination
    skipped because it is down has no line of its own (one line for the pass says it, see
    ``SyncReport.destinations_down``) unless ``verbose``, which also adds each error's whole
    cause chain."""
    out: list[tuple[str, str]] = []
    other: dict[str, int] = {}
    for d in rr.destinations.values():
        head = f"tracelet: {rr.run} -> {dest_label(d)}"
        for k, n in d.other.items():  # the same records for every destination: once per run
            other[k] = max(other.get(k, 0), n)
        if d.state == "skipped" and not verbose:
            continue
        if d.state != "unchanged":
            level = ERROR if d.state == "failed" else \
                WARNING if d.state == "locked" or d.unsupported or d.quarantined else INFO
            out.append((level, f"{head}: {dest_text(d)}"))
            if verbose and d.error_detail:
                out.append((level, f"{head}: cause chain: {d.error_detail}"))
        for text in d.param_conflicts:
            out.append((WARNING, f"{head}: {text}"))
        for label, lines in (("quarantined", d.quarantine), ("key", d.keys)):
            for text in lines[:MAX_PRINTED_LINES]:
                out.append((WARNING, f"{head}: {label}: {text}"))
            if len(lines) > MAX_PRINTED_LINES:
                out.append((WARNING, f"{head}: {len(lines) - MAX_PRINTED_LINES} more {label} "
                                     "line(s) in the --json report"))
    if other:
        out.append((WARNING, f"tracelet: {rr.run}: records of kinds no destination takes, "
                             f"counted and not sent (`other` in --json): {_counts(other)}"))
    for p in rr.errors:
        out.append((ERROR, f"tracelet: {rr.run}: error: {p}"))
    for p in rr.usage:  # exit 2: the configuration, not the data
        out.append((ERROR, f"tracelet: error: {p}"))
    for p in rr.problems:
        out.append((WARNING, f"tracelet: {rr.run}: {p}"))
    return out


@dataclass
class PassTally:
    """One pass, as its summary line tells it."""

    runs: int = 0
    synced: int = 0
    unchanged: int = 0
    failed: int = 0
    locked: int = 0
    interrupted: int = 0
    dry_run: int = 0
    dry_points: int = 0  # what a --dry-run pass would send
    points: int = 0  # per run, the most any destination newly stored (a point counts once)
    present: int = 0  # per run, the most any destination confirmed already there
    warnings: int = 0
    errors: int = 0  # outside any run (a logdir that could not be listed)
    t0: float = field(default_factory=time.monotonic)

    def add(self, rr: RunReport, lines: list[tuple[str, str]]) -> None:
        states = {d.state for d in rr.destinations.values()}
        dests = list(rr.destinations.values())
        present = [min(d.points_present, d.points) for d in dests]
        new = max((d.points - p for d, p in zip(dests, present)), default=0)
        self.warnings += sum(level == WARNING for level, _ in lines)
        if "dry-run" in states:
            self.dry_run += 1
            self.dry_points += new
            return
        self.points += new
        self.present += max(present, default=0)
        if rr.failed or rr.usage:
            self.failed += 1
        elif "interrupted" in states:
            self.interrupted += 1
        elif rr.locked or "locked" in states:
            self.locked += 1
        elif states and states <= {"unchanged"}:
            self.unchanged += 1
        else:
            self.synced += 1

    def line(self) -> str:
        done = f"{self.synced:,} synced ({_plural(self.points, 'point')}"
        if self.present:
            done += f", {self.present:,} confirmed present"
        parts = [done + ")", f"{self.unchanged:,} unchanged", f"{self.failed:,} failed"]
        for n, word in ((self.locked, "locked"), (self.interrupted, "interrupted")):
            if n:
                parts.append(f"{n:,} {word}")
        if self.dry_run:
            parts.append(f"{self.dry_run:,} dry-run (would send "
                         f"{_plural(self.dry_points, 'point')})")
        parts.append(_plural(self.warnings, "warning"))
        if self.errors:
            parts.append(_plural(self.errors, "error"))
        elapsed = time.monotonic() - self.t0
        return f"tracelet: {_plural(self.runs, 'run')}: {', '.join(parts)} — {elapsed:.1f} s"


class Output(Progress):
    """stderr lines and the TTY bar. ``quiet`` (``-q``): errors only; ``verbose`` (``-v``):
    with tracebacks (and, on a TTY, the per-destination lines); ``--json`` off a TTY: nothing.
    ``summary=False``: no summary line (the recorder's live mode: a line every interval in the
    training's log would be noise)."""

    def __init__(self, options: SyncOptions, summary: bool = True):
        self.tty = options.progress if options.progress is not None else sys.stderr.isatty()
        self.silent = options.json_output and not self.tty
        self.quiet = options.quiet
        self.verbose = options.verbose
        self.summary = summary
        self.lock = threading.RLock()
        self.tally = PassTally()
        self.bar: _Bar | None = None

    # -- the engine's calls -------------------------------------------------------------------
    def begin(self, runs: int, bytes_behind: Callable[[], int] | None = None) -> None:
        with self.lock:
            self.tally = PassTally(runs=runs)
            if self.tty and not self.silent:
                total = bytes_behind() if bytes_behind is not None else 0
                self.bar = _Bar(runs, total)

    def bytes(self, n: int) -> None:
        with self.lock:
            if self.bar is not None:
                self.bar.advance(n)

    def points(self, n: int) -> None:
        with self.lock:
            if self.bar is not None:
                self.bar.add_points(n)

    def run_done(self, rr: RunReport) -> None:
        lines = run_lines(rr, self.verbose)
        with self.lock:
            self.tally.add(rr, lines)
            if self.bar is not None:
                self.bar.run_done()
            for level, text in lines:
                self._emit(level, text)
            if self.verbose and rr.traceback:
                self._write(scrub(rr.traceback).rstrip("\n"))

    def problem(self, line: str) -> None:
        """A warning outside any run (unreadable folder, FIFO named like an event file)."""
        with self.lock:
            self.tally.warnings += 1
            self._emit(WARNING, f"tracelet: {line}")

    def error(self, line: str) -> None:
        """An error outside any run (a logdir whose runs could not be found): even with -q."""
        with self.lock:
            self.tally.errors += 1
            self._emit(ERROR, f"tracelet: error: {line}")

    def end(self, interrupted: bool = False) -> None:
        with self.lock:
            if self.bar is not None:
                self.bar.stop()
                self.bar = None
            if self.summary and not self.quiet:
                self._emit(INFO, self.tally.line(), always=True)
            if interrupted:
                self._emit(ERROR, f"tracelet: {INTERRUPTED}")

    # -- printing -------------------------------------------------------------------------------
    def _emit(self, level: str, text: str, always: bool = False) -> None:
        """One line, if this mode shows its level: errors always (but ``--json`` off a TTY),
        warnings unless ``-q``, info lines off a TTY unless ``-q`` (on a TTY with ``-v``)."""
        if self.silent:
            return
        if level == WARNING and self.quiet:
            return
        if level == INFO and not always and (self.quiet or (self.tty and not self.verbose)):
            return
        self._write(scrub(text) if self.tty else f"{iso_now()} {scrub(text)}")

    def _write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.print(text)  # above the bar
        else:
            print(text, file=sys.stderr, flush=True)


class _Bar:
    """The TTY progress bar: bytes of event files read out of the bytes behind at the start of
    the pass, runs done, points delivered, ETA. Lines printed through it appear above it."""

    def __init__(self, runs: int, total_bytes: int):
        from rich.console import Console  # only when a bar is drawn: cron never imports it
        from rich.progress import (BarColumn, DownloadColumn, Progress as RichProgress,
                                   TextColumn, TimeRemainingColumn)

        self.console = Console(stderr=True, highlight=False, emoji=False, markup=False)
        self.progress = RichProgress(
            TextColumn("{task.fields[runs]}"), BarColumn(), DownloadColumn(),
            TextColumn("{task.fields[points]}"), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=True)
        self.runs, self.done, self.npoints = runs, 0, 0
        self.task = self.progress.add_task("sync", total=total_bytes or None,
                                           runs=self._runs(), points=self._points())
        self.progress.start()

    def _runs(self) -> str:
        return f"{self.done}/{self.runs} runs"

    def _points(self) -> str:
        return f"{self.npoints:,} points"

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)

    def add_points(self, n: int) -> None:
        self.npoints += n
        self.progress.update(self.task, points=self._points())

    def run_done(self) -> None:
        self.done += 1
        self.progress.update(self.task, runs=self._runs())

    def print(self, text: str) -> None:
        self.console.print(text, soft_wrap=True)

    def stop(self) -> None:
        self.progress.stop()
