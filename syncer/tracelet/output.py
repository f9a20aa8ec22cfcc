"""What a sync shows while it runs (the presentation side of the engine's :class:`Progress`).

On a TTY a progress line on stderr; otherwise (cron) one log line per run and destination that
changed; ``--json`` off a TTY: nothing (the report says it all). Every line is scrubbed of
credentials. The engine never imports this module: the CLI and :mod:`tracelet.api` pass an
:class:`Output` as ``SyncOptions.observer``.
"""
from __future__ import annotations

import sys
import threading
import time

from .engine.options import Progress, SyncOptions
from .engine.report import RunReport
from .redact import scrub

MAX_PRINTED_LINES = 10  # per run, destination and kind of line on stderr; all are in --json


class Output(Progress):
    """stderr lines. ``quiet`` (``-q``): errors only; ``verbose`` (``-v``): with tracebacks;
    ``--json`` off a TTY: nothing (the report says it all)."""

    def __init__(self, options: SyncOptions):
        self.tty = options.progress if options.progress is not None else sys.stderr.isatty()
        self.silent = options.json_output and not self.tty
        self.quiet = options.quiet
        self.verbose = options.verbose
        self.lock = threading.Lock()
        self.total = 0
        self.done = 0
        self.npoints = 0
        self.t0 = time.monotonic()

    def begin(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.monotonic()

    def points(self, n: int) -> None:
        with self.lock:
            self.npoints += n
            if self.tty:
                self._bar()

    def _bar(self) -> None:
        width = 30
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(frac * width)
        rate = self.npoints / max(time.monotonic() - self.t0, 1e-6)
        sys.stderr.write(f"\r[{bar:<{width}}] {self.done}/{self.total} runs  "
                         f"{self.npoints:,} points  {rate:,.0f} pts/s ")
        sys.stderr.flush()

    def run_done(self, rr: RunReport) -> None:
        with self.lock:
            self.done += 1
            if self.tty:
                self._bar()
                for d in rr.destinations.values():
                    if d.state == "failed":
                        sys.stderr.write(scrub(f"\n{rr.run} -> {d.destination}: FAILED: {d.error}\n"))
                for p in rr.errors:
                    sys.stderr.write(scrub(f"\n{rr.run}: ERROR: {p}\n"))
                for p in rr.usage:
                    sys.stderr.write(scrub(f"\nERROR: {p}\n"))
                if self.verbose and rr.traceback:
                    sys.stderr.write(scrub(rr.traceback))
                return
            if self.silent:  # --json: the report says it all; -v still shows tracebacks
                if self.verbose and rr.traceback:
                    print(scrub(rr.traceback), file=sys.stderr, end="", flush=True)
                return
            for d in rr.destinations.values():
                if d.state == "unchanged" or (self.quiet and d.state != "failed"):
                    continue
                if d.state == "skipped" and not self.verbose:
                    continue  # its destination is down: one line for the pass says it (runner)
                line = f"tracelet: {rr.run} -> {d.destination}: {d.state}"
                if d.points_sent:
                    line += " " + ", ".join(f"{k} {n}" for k, n in sorted(d.points_sent.items()))
                if d.unsupported:
                    line += " (unsupported: " + ", ".join(
                        f"{k} {n}" for k, n in sorted(d.unsupported.items())) + ")"
                if d.quarantined:
                    line += " (quarantined: " + ", ".join(
                        f"{k} {n}" for k, n in sorted(d.quarantined.items())) + ")"
                if d.error:
                    line += f": {d.error}"
                print(scrub(line), file=sys.stderr, flush=True)
                if self.verbose and d.error_detail:
                    print(scrub(f"tracelet: {rr.run} -> {d.destination}: cause chain: "
                                f"{d.error_detail}"), file=sys.stderr, flush=True)
                for label, lines in (("quarantined", d.quarantine), ("key", d.keys)):
                    for text in lines[:MAX_PRINTED_LINES]:
                        print(scrub(f"tracelet: {rr.run} -> {d.destination}: {label}: {text}"),
                              file=sys.stderr, flush=True)
                    if len(lines) > MAX_PRINTED_LINES:
                        print(f"tracelet: {rr.run} -> {d.destination}: {len(lines) - MAX_PRINTED_LINES} "
                              f"more {label} line(s) in the --json report", file=sys.stderr, flush=True)
            for p in rr.errors:
                print(scrub(f"tracelet: {rr.run}: error: {p}"), file=sys.stderr, flush=True)
            for p in rr.usage:  # exit 2: the configuration, not the data
                print(scrub(f"tracelet: error: {p}"), file=sys.stderr, flush=True)
            if not self.quiet:
                for p in rr.problems:
                    print(scrub(f"tracelet: {rr.run}: {p}"), file=sys.stderr, flush=True)
            if self.verbose and rr.traceback:
                print(scrub(rr.traceback), file=sys.stderr, end="", flush=True)

    def problem(self, line: str) -> None:
        """A warning outside any run (unreadable folder, FIFO named like an event file)."""
        if self.silent or self.quiet:
            return
        with self.lock:
            print(scrub(f"{chr(10) if self.tty else ''}tracelet: {line}"), file=sys.stderr,
                  flush=True)

    def error(self, line: str) -> None:
        """An error outside any run (a logdir whose runs could not be found): even with -q."""
        if self.silent:
            return
        with self.lock:
            print(scrub(f"{chr(10) if self.tty else ''}tracelet: error: {line}"), file=sys.stderr,
                  flush=True)

    def end(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()
